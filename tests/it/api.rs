//! The HTTP API, driven through the router without a socket (and once over TCP).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mynah::config::Secret;
use mynah::models::trainer::TrainingState;
use mynah::service::Core;
use mynah::store::Store;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support;

struct Api {
    core: Arc<Core>,
    dir: tempfile::TempDir,
}

impl Api {
    async fn new(token: Option<&str>) -> Api {
        Self::with(|cfg| cfg.api_token = token.map(Secret::new)).await
    }

    async fn with(tweak: impl FnOnce(&mut mynah::config::Config)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::config(dir.path());
        tweak(&mut cfg);
        let store = Store::open(&cfg.database_url).await.unwrap();
        Api { core: Core::open(cfg, store).await.unwrap(), dir }
    }

    async fn with_sample(token: Option<&str>) -> Api {
        let api = Api::new(token).await;
        api.core.import_jsonl(support::sample(), Some("42"), true).await.unwrap();
        api
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(Body::from(body.unwrap_or("").to_string())).unwrap();
        let res = mynah::api::router(self.core.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
        (status, json)
    }
}

#[tokio::test]
async fn status_reports_mode_model_training_counts_uptime_and_version() {
    let api = Api::with_sample(None).await;
    let (status, body) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["mode"], "fallback");
    assert_eq!(body["model"], Value::Null);
    assert_eq!(body["training"]["state"], "idle");
    assert_eq!(body["guilds"][0]["guild_id"], "42");
    assert_eq!(body["guilds"][0]["messages"], 1500);
    assert_eq!(body["guilds"][0]["authors"], 110);
    assert!(body["uptime_seconds"].is_u64());
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_starts_a_run_refuses_a_second_and_serves_the_new_model() {
    let api = Api::with_sample(None).await;
    let (status, body) =
        api.call("POST", "/api/ml/train", Some(r#"{"epochs": 1, "force": true}"#), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["started"], true);
    assert_eq!(body["guild_id"], "42");
    assert_eq!(body["corpus_messages"], 1500);
    let run_id = body["run_id"].as_i64().unwrap();

    let (status, body) = api.call("POST", "/api/ml/train", Some(r#"{"force": true}"#), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already in progress"), "{body}");
    let (_, status_body) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!(status_body["training"]["state"], "running", "{status_body}");

    let last = support::wait_training_done(&api.core).await;
    assert_eq!((last.run_id, last.outcome.as_str()), (run_id, "succeeded"), "{last:?}");
    let (_, body) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!(body["mode"], "model", "{body}");
    assert_eq!(body["model"]["guild_id"], "42");
    assert_eq!(body["model"]["run"], format!("run-{run_id}"));
    assert!(body["model"]["val_bits_per_byte"].as_f64().unwrap() > 0.0);
    assert_eq!(body["training"]["last"]["outcome"], "succeeded");

    let (status, body) = api.call("GET", "/api/ml/runs", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let run = &body["runs"][0];
    assert_eq!(
        (run["id"].as_i64(), run["trigger"].as_str(), run["outcome"].as_str()),
        (Some(run_id), Some("api"), Some("succeeded")),
        "{body}"
    );
    assert!(run["val_bpb"].as_f64().is_some() && run["steps"].as_i64().unwrap() > 0, "{body}");
    assert_eq!(run["corpus_messages"], 1500);

    // Without force the policy decides: the model is fresh, so nothing is started.
    let (status, body) = api.call("POST", "/api/ml/train", Some("{}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["started"], false);
    assert_eq!(body["should_train"]["code"], "nothing_new", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_training_leaves_the_current_model() {
    let api = Api::with_sample(None).await;
    // Cancelled before any model exists: still none.
    let (status, _) = api.call("POST", "/api/ml/train", Some(r#"{"force": true, "epochs": 50}"#), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = api.call("DELETE", "/api/ml/train", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cancelled"], true, "{body}");
    assert_eq!(support::wait_training_done(&api.core).await.outcome, mynah::store::RunOutcome::Cancelled);
    let (_, body) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!((body["mode"].as_str(), &body["models"]), (Some("fallback"), &json!([])), "{body}");

    // With a model serving, a cancelled retraining leaves it in place.
    api.call("POST", "/api/ml/train", Some(r#"{"force": true, "epochs": 1}"#), None).await;
    assert_eq!(support::wait_training_done(&api.core).await.outcome, mynah::store::RunOutcome::Succeeded);
    let (_, before) = api.call("GET", "/api/ml/status", None, None).await;
    api.call("POST", "/api/ml/train", Some(r#"{"force": true, "epochs": 50}"#), None).await;
    api.call("DELETE", "/api/ml/train", None, None).await;
    assert_eq!(support::wait_training_done(&api.core).await.outcome, mynah::store::RunOutcome::Cancelled);
    let (_, after) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!(after["model"]["run"], before["model"]["run"], "{after}");
    assert_eq!(after["mode"], "model");
    let (_, body) = api.call("DELETE", "/api/ml/train", None, None).await;
    assert_eq!(body["cancelled"], false);
}

#[tokio::test]
async fn train_without_any_corpus_is_a_conflict() {
    let api = Api::new(None).await;
    let (status, body) = api.call("POST", "/api/ml/train", Some("{}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["error"].as_str().unwrap().contains("nothing to train on"), "{body}");
}

#[tokio::test]
async fn bad_bodies_get_400_with_an_error() {
    let api = Api::with_sample(None).await;
    for body in [
        "{not json",
        r#"{"epochs": "three"}"#,
        r#"{"epochs": -1}"#,
        r#"{"force": true, "colour": "blue"}"#,
        r#"{"epochs": 0}"#,
        "[]",
    ] {
        let (status, json) = api.call("POST", "/api/ml/train", Some(body), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {json}");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{body} -> {json}");
    }
    let (status, json) = api.call("GET", "/api/ml/should-train?colour=blue", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
}

#[tokio::test]
async fn should_train_answers_from_the_policy() {
    let api = Api::with_sample(None).await;
    let (status, body) = api.call("GET", "/api/ml/should-train", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["should_train"], true, "{body}");
    assert_eq!(body["code"], "first_training");
    assert_eq!(body["new_messages"], 1500);
    assert!(body["reason"].as_str().unwrap().contains("1500 messages"), "{body}");
    assert_eq!(body["guilds"].as_array().unwrap().len(), 1);

    let (_, body) = api.call("GET", "/api/ml/should-train?guild_id=7", None, None).await;
    assert_eq!(body["should_train"], false);
    assert_eq!(body["code"], "corpus_too_small");
    assert_eq!(body["messages_until_first_training"], 500);
}

#[tokio::test]
async fn initialize_rereads_the_models_directory() {
    let api = Api::with_sample(None).await;
    let (_, before) = api.call("POST", "/api/ml/initialize", None, None).await;
    assert_eq!(before["models"], json!([]));
    let run = api.dir.path().join("models/42/run-1");
    std::fs::create_dir_all(&run).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::write(run.join(f), "{}").unwrap();
    }
    std::fs::write(run.join("meta.json"), r#"{"params": 99}"#).unwrap();
    std::fs::write(api.dir.path().join("models/42/CURRENT"), "run-1").unwrap();
    let (status, after) = api.call("POST", "/api/ml/initialize", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // A damaged checkpoint means fallback mode with the reason, not a crash.
    assert_eq!(after["models"], json!([]));
    assert_eq!(after["guilds"][0]["mode"], "fallback");
    let reason = after["guilds"][0]["mode_reason"].as_str().unwrap();
    assert!(reason.contains("unusable"), "{after}");
    assert!(!reason.contains(&api.dir.path().display().to_string()), "no absolute paths: {reason}");
    let reply = api
        .core
        .reply(&mynah::service::ReplyRequest {
            guild_id: "42".into(),
            author: "bob".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        reply.text.contains("can't be used right now") && !reply.text.contains("models"),
        "{}",
        reply.text
    );

    // A real checkpoint dropped in by an operator starts serving.
    let lines: Vec<_> = mynah::corpus::parse_all(support::sample(), None)
        .0
        .iter()
        .map(mynah::corpus::Record::chat_line)
        .collect();
    let mut opts = mynah::engine::train::TrainOptions::new(mynah::engine::Preset::tiny());
    opts.max_seconds = Some(1.0);
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let guild_dir = api.dir.path().join("models/42");
    let spec = mynah::engine::run::RunSpec {
        lines: &lines,
        opts: &opts,
        base: None,
        parent: &guild_dir,
        name: "run-2",
        preset_label: "tiny".into(),
        corpus_span: (None, None),
    };
    mynah::engine::run::train_and_save(&spec, &candle_core::Device::Cpu, &cancel, |_| {}).unwrap();
    mynah::models::registry::set_current(&guild_dir, "run-2").unwrap();
    let (_, after) = api.call("POST", "/api/ml/initialize", None, None).await;
    assert_eq!(after["models"][0]["run"], "run-2", "{after}");
    assert_eq!(after["guilds"][0]["mode"], "model", "{after}");
}

#[tokio::test]
async fn every_route_needs_the_token_when_one_is_set_but_health() {
    const TOKEN: &str = "a-token-of-24-characters";
    let api = Api::new(Some(TOKEN)).await;
    let first = support::sample().lines().take(100).collect::<Vec<_>>().join("\n");
    api.core.import_jsonl(&first, Some("42"), true).await.unwrap();
    let (status, body) = api.call("POST", "/api/ml/train", Some("{}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, _) = api.call("POST", "/api/ml/initialize", None, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Reading is guarded too: status, runs and decisions name guilds, admins and errors.
    for path in ["/api/ml/status", "/api/ml/runs", "/api/ml/should-train", "/api/ml/nope"] {
        let (status, _) = api.call("GET", path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = api.call("GET", path, None, Some(&TOKEN[..23])).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: a token one character short");
    }
    let (status, body) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "ok": true })));
    let (status, body) = api.call("POST", "/api/ml/train", Some("{}"), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["started"], false, "the policy wants 500 messages for a first model: {body}");
    let (status, body) = api.call("GET", "/api/ml/status", None, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["guilds"][0]["guild_id"], "42");
}

#[tokio::test]
async fn a_public_status_shows_no_ids_and_posts_must_be_json() {
    let api = Api::with(|cfg| {
        cfg.api_token = Some(Secret::new("a-token-of-24-characters"));
        cfg.public_status = true;
    })
    .await;
    api.core.import_jsonl(support::sample(), Some("42"), true).await.unwrap();
    let (status, body) = api.call("GET", "/api/ml/status", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["guilds"], 1, "{body}");
    assert!(!body.to_string().contains("42"), "no guild IDs in public: {body}");
    let (status, _) = api.call("GET", "/api/ml/runs", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "only the status is public");

    // A web page can post text or a form to a loopback API without asking; not JSON.
    let req = Request::builder()
        .method("POST")
        .uri("/api/ml/train")
        .header("authorization", "Bearer a-token-of-24-characters")
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    let res = mynah::api::router(api.core.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let api = Api::new(None).await;
    let (status, body) = api.call("GET", "/api/ml/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/api/ml/nope"));
    let (status, body) = api.call("DELETE", "/api/ml/status", None, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn the_api_serves_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::new(None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mynah::api::serve(api.core.clone(), listener, async {
        let _ = stopped.await;
    }));
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut stream = stream.expect("the API accepts connections");
    stream
        .write_all(b"GET /api/ml/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"mode\":\"fallback\""), "{response}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::new(None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = mynah::api::Limits { header_read: std::time::Duration::from_millis(300) };
    let server = tokio::spawn(mynah::api::serve_with(
        api.core.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        limits,
    ));
    // A slowloris client: half a request, then nothing.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/ml/status HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server closed the connection");
    // Others are served as usual meanwhile.
    let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    ok.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_guilds_request_is_queued_and_starts_after_the_first() {
    let api = Api::with(|cfg| cfg.engine.epochs = 200).await;
    for guild in ["42", "43"] {
        api.core.import_jsonl(support::sample(), Some(guild), true).await.unwrap();
    }
    let (status, first) =
        api.call("POST", "/api/ml/train", Some(r#"{"force": true, "guild_id": "42"}"#), None).await;
    assert_eq!((status, &first["started"]), (StatusCode::ACCEPTED, &json!(true)), "{first}");
    let (status, second) =
        api.call("POST", "/api/ml/train", Some(r#"{"force": true, "guild_id": "43"}"#), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!((&second["queued"], &second["position"]), (&json!(true), &json!(1)), "{second}");

    api.call("DELETE", "/api/ml/train", None, None).await;
    let mut watch = api.core.watch_training();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        watch.wait_for(|v| v.guild_id.as_deref() == Some("43") && v.state == TrainingState::Running),
    )
    .await
    .expect("the queued guild trains next")
    .unwrap();
    drop(watch);
    api.call("DELETE", "/api/ml/train", None, None).await;
    support::wait_training_done(&api.core).await;
}
