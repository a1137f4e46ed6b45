//! Remote training: one instance serves, another pulls the corpus, trains and pushes the model.

use std::sync::Arc;

use futures::StreamExt as _;

use mynah::config::Secret;
use mynah::service::{Core, Mode, ReplyRequest};
use mynah::store::Store;

use crate::support;

/// An instance serving the API on a free loopback port; returns its base URL.
async fn serve(core: Arc<Core>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mynah::api::serve(core, listener, async {
        let _ = stopped.await;
    }));
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (format!("http://{addr}"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_trained_elsewhere_is_validated_and_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::config(dir.path());
    cfg.api_token = Some(Secret::new("s3cret-s3cret-s3cret"));
    let store = Store::open(&cfg.database_url).await.unwrap();
    let serving = Core::open(cfg, store).await.unwrap();
    serving.import_jsonl(support::sample(), Some("42"), true).await.unwrap();
    let (url, _stop) = serve(serving.clone()).await;
    let client = reqwest::Client::new();

    // The corpus needs the token, even on loopback.
    let res = client.get(format!("{url}/api/training/corpus?guild_id=42")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .get(format!("{url}/api/training/corpus?guild_id=42"))
        .bearer_auth("s3cret-s3cret-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().lines().count(), 1500);

    // The second instance: its own config and models, no database of its own needed.
    let trainer_dir = tempfile::tempdir().unwrap();
    let trainer_cfg = support::config(trainer_dir.path());
    assert_eq!(mynah::models::remote::only_guild(&url, "s3cret-s3cret-s3cret").await.unwrap(), "42");
    let pushed =
        mynah::models::remote::train_remote(&trainer_cfg, &url, "s3cret-s3cret-s3cret", "42", |_| {})
            .await
            .unwrap();
    assert_eq!(pushed.guild_id, "42");

    let status = serving.status().await.unwrap();
    assert_eq!(status.mode, Mode::Model);
    assert_eq!(status.model.as_ref().unwrap().run, format!("run-{}", pushed.run_id));
    assert!(status.model.as_ref().unwrap().preset.contains("remote"));
    let runs = serving.runs(Some("42"), 5).await.unwrap();
    assert_eq!((runs[0].trigger.as_str(), runs[0].outcome.as_str()), ("remote", "succeeded"));
    assert!(runs[0].duration_ms.is_some() && runs[0].steps.unwrap() > 0, "{:?}", runs[0]);
    let reply = serving
        .reply(&ReplyRequest {
            guild_id: "42".into(),
            author: "bob".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.mode, Mode::Model);

    // A tampered bundle is refused with the reason, and nothing changes.
    let run_dir = dir.path().join("models/42").join(format!("run-{}", pushed.run_id));
    let tampered = tempfile::tempdir().unwrap();
    for f in mynah::models::CHECKPOINT_FILES {
        std::fs::copy(run_dir.join(f), tampered.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tampered.path().join("config.json")).unwrap()).unwrap();
    config["hidden_size"] = serde_json::json!(64);
    std::fs::write(tampered.path().join("config.json"), config.to_string()).unwrap();
    let bundle = mynah::models::bundle::pack(tampered.path()).unwrap();
    let push = |body: Vec<u8>, token: &'static str| {
        client
            .post(format!("{url}/api/training/model?guild_id=42"))
            .bearer_auth(token)
            .header("content-type", "application/x-tar")
            .body(body)
            .send()
    };
    let res = push(bundle.clone(), "s3cret-s3cret-s3cret").await.unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("refused"), "{body}");
    assert_eq!(push(b"not a tar archive".to_vec(), "s3cret-s3cret-s3cret").await.unwrap().status(), 400);
    assert_eq!(push(bundle, "wrong").await.unwrap().status(), 401);
    let after = serving.status().await.unwrap();
    assert_eq!(after.model.unwrap().run, format!("run-{}", pushed.run_id), "the current model stays");
    assert_eq!(serving.runs(Some("42"), 5).await.unwrap().len(), runs.len(), "no run was recorded");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("models/42"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "refused bundles leave nothing behind");
}

#[tokio::test]
async fn remote_training_is_off_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(dir.path());
    let store = Store::open(&cfg.database_url).await.unwrap();
    let core = Core::open(cfg, store).await.unwrap();
    let (url, _stop) = serve(core).await;
    let res = reqwest::get(format!("{url}/api/training/corpus?guild_id=42")).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.text().await.unwrap().contains("MYNAH_API_TOKEN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upload_at_a_time_and_an_abandoned_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::config(dir.path());
    let store = Store::open(&cfg.database_url).await.unwrap();
    let core = Core::open(cfg, store).await.unwrap();
    // An upload whose client sends a first chunk and then nothing more.
    let first = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"partial"))])
        .chain(futures::stream::pending());
    let slow = {
        let core = core.clone();
        tokio::spawn(async move { core.install_bundle_stream("42", Box::pin(first)).await })
    };
    let incoming = || -> Vec<String> {
        std::fs::read_dir(dir.path().join("models/42"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    for _ in 0..100 {
        if !incoming().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(incoming().len(), 1, "the upload goes to disk as it comes");
    let second = core.install_bundle("42", b"another".to_vec()).await.unwrap_err();
    assert!(matches!(second, mynah::service::ServiceError::UploadInProgress), "{second}");
    // The client goes away: its partial upload is deleted.
    slow.abort();
    let _ = slow.await;
    assert_eq!(incoming(), Vec::<String>::new());
    let third = core.install_bundle("42", b"not a tar".to_vec()).await.unwrap_err();
    assert!(matches!(third, mynah::service::ServiceError::BadBundle(_)), "{third}");
    assert_eq!(incoming(), Vec::<String>::new(), "a refused bundle leaves nothing either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_push_fails_is_kept_and_can_be_pushed_later() {
    const TOKEN: &str = "s3cret-s3cret-s3cret";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::config(dir.path());
    cfg.api_token = Some(Secret::new(TOKEN));
    let store = Store::open(&cfg.database_url).await.unwrap();
    let serving = Core::open(cfg, store).await.unwrap();
    serving.import_jsonl(support::sample(), Some("42"), true).await.unwrap();
    let (url, _stop) = serve(serving.clone()).await;
    // Another upload holds the serving instance's single upload slot: the push gets 409.
    let blocker = {
        let core = serving.clone();
        let stream = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
        tokio::spawn(async move { core.install_bundle_stream("42", stream).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let trainer_dir = tempfile::tempdir().unwrap();
    let trainer_cfg = support::config(trainer_dir.path());
    let e = mynah::models::remote::train_remote(&trainer_cfg, &url, TOKEN, "42", |_| {}).await.unwrap_err();
    let message = format!("{e:#}");
    assert!(message.contains("mynah model push"), "{message}");
    let kept = std::fs::read_dir(trainer_dir.path().join("models/.unpushed"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(message.contains(&kept.display().to_string()), "{message}");

    blocker.abort();
    let _ = blocker.await;
    let pushed = mynah::models::remote::push_dir(&url, TOKEN, "42", &kept).await.unwrap();
    assert_eq!(serving.status().await.unwrap().model.unwrap().run, format!("run-{}", pushed.run_id));
}
