//! The status page in a real headless Chromium, driven through chromedriver (WebDriver): sign in
//! with the form, watch a training's progress bar move, and take a screenshot. Without Chromium
//! the test says it skipped, unless `MYNAH_REQUIRE_BROWSER=1` (CI) makes that a failure;
//! `MYNAH_SAVE_SCREENSHOT=1` also saves the screenshot as `docs/status-page.png`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mynah::config::Secret;
use mynah::service::{TrainRequest, Trigger};
use serde_json::json;

use crate::support::Harness;

const TOKEN: &str = "a-browser-token-of-31-characters";

/// The first of `names` that is a file, in `/usr/bin` or on `PATH`.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::iter::once(PathBuf::from("/usr/bin")).chain(std::env::split_paths(&path)).collect();
    names.iter().flat_map(|n| dirs.iter().map(move |d| d.join(n))).find(|p| p.is_file())
}

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(path: &PathBuf) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        for _ in 0..100 {
            if reqwest::get(&status).await.is_ok_and(|r| r.status().is_success()) {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer on port {port}");
    }

    async fn browser(&self, chromium: &PathBuf, profile: &std::path::Path) -> Client {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1400",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

/// The progress bar's value while the training section shows, read in the page.
async fn progress(client: &Client) -> Option<f64> {
    let script = "const p = document.getElementById('train-progress');
        return p && !p.closest('section').hidden && p.hasAttribute('value') ? p.value : null;";
    client.execute(script, vec![]).await.ok()?.as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_and_watches_the_training_progress_in_a_browser() {
    let (Some(chromium), Some(chromedriver)) =
        (find(&["chromium", "chromium-browser", "google-chrome"]), find(&["chromedriver"]))
    else {
        assert!(
            std::env::var("MYNAH_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "MYNAH_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed"
        );
        eprintln!("skipped: chromium not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let h = Harness::start_with(|cfg| cfg.api_token = Some(Secret::new(TOKEN))).await;
    h.core.import_jsonl(crate::support::sample(), Some(&h.guild.to_string()), true).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(mynah::api::serve(h.core.clone(), listener, async {
        let _ = stopped.await;
    }));

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().unwrap();
    let client = driver.browser(&chromium, profile.path()).await;
    client.goto(&format!("{base}/")).await.unwrap();
    // A wrong token: the form again, with the error.
    client.find(Locator::Id("token")).await.unwrap().send_keys("not the token").await.unwrap();
    client.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    let error = client.wait().for_element(Locator::Id("login-error")).await.unwrap();
    assert!(error.text().await.unwrap().contains("wrong token"));
    client.find(Locator::Id("token")).await.unwrap().send_keys(TOKEN).await.unwrap();
    client.find(Locator::Id("sign-in")).await.unwrap().click().await.unwrap();
    let guilds = client.wait().for_element(Locator::Id("guilds")).await.unwrap();
    assert!(guilds.text().await.unwrap().contains(&h.guild.to_string()));
    assert_eq!(client.current_url().await.unwrap().path(), "/");

    // A training bounded by time, so the bar has a few seconds to move.
    let mut request = TrainRequest::new(Some(h.guild.to_string()), Trigger::Api);
    (request.force, request.epochs, request.max_minutes) = (true, Some(100), Some(0.25));
    h.core.request_training(request).await.unwrap();
    let mut seen: Vec<f64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < 3 && tokio::time::Instant::now() < deadline {
        if let Some(v) = progress(&client).await.filter(|v| *v > 0.0) {
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(seen.len() >= 3, "the progress bar moved: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "forward: {seen:?}");
    let text = client.find(Locator::Id("train-text")).await.unwrap().text().await.unwrap();
    assert!(text.contains("training") && text.contains("tokens/s"), "{text}");
    // The page reloaded when the run started: it is in the runs, with its curve so far.
    let runs = client.find(Locator::Id("runs")).await.unwrap().text().await.unwrap();
    assert!(runs.contains("running"), "{runs}");
    client.find(Locator::Id("loss-plot")).await.expect("the running run's loss curve");

    // The running run's curve is fetched again every few seconds: wait for one refresh (or the
    // end of the run) so the screenshot shows a curve.
    let refreshed = "const p = document.getElementById('loss-plot');
        return !p || !p.hasAttribute('data-live') || (p.src.includes('?t=') && p.complete);";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline
        && client.execute(refreshed, vec![]).await.ok().and_then(|v| v.as_bool()) != Some(true)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shot = client.screenshot().await.unwrap();
    let png = png::Decoder::new(std::io::Cursor::new(shot.clone())).read_info().unwrap();
    assert!(png.info().width >= 800 && png.info().height >= 600, "{:?}", png.info().size());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &shot).unwrap();
    eprintln!("screenshot: {}", out.display());
    if std::env::var_os("MYNAH_SAVE_SCREENSHOT").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("status-page.png"), &shot).unwrap();
    }

    // When the run ends the page reloads with the new model, the run and its loss curve.
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    let models = client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#models table"))
        .await
        .expect("the page shows the new model");
    assert!(models.text().await.unwrap().contains("run-1"));
    let runs = client.find(Locator::Id("runs")).await.unwrap().text().await.unwrap();
    assert!(runs.contains("succeeded"), "{runs}");
    let plot = client.find(Locator::Id("loss-plot")).await.unwrap();
    assert_eq!(plot.attr("src").await.unwrap().as_deref(), Some("/api/ml/runs/1/loss.png"));
    let shot = client.screenshot().await.unwrap();
    std::fs::write(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page-done.png"), &shot).unwrap();

    client.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
    client.wait().for_element(Locator::Id("token")).await.expect("signed out: the form again");
    client.close().await.unwrap();
    drop(driver);
    let _ = stop.send(());
    let _ = api.await;
    h.stop().await;
}
