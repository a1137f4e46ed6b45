//! The `mynah` binary itself: configuration errors, corpus import/export, the playground.

use std::io::Write;
use std::process::Stdio;

use crate::support::mynah;

#[test]
fn a_malformed_env_var_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = mynah(dir.path()).env("MYNAH_ADMIN_IDS", "alice").arg("stats").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("MYNAH_ADMIN_IDS=\"alice\"") && stderr.contains("expected"), "{stderr}");
}

#[test]
fn an_open_api_without_a_token_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = mynah(dir.path()).env("MYNAH_API_ADDR", "0.0.0.0:0").arg("run").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MYNAH_API_TOKEN"), "{stderr}");
}

#[test]
fn corpus_import_and_export_round_trip_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let sample: String = mynah::playground::SAMPLE.lines().take(50).map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, format!("{sample}oops\n")).unwrap();

    let out = mynah(dir.path()).args(["corpus", "import"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 50, skipped 1 malformed, 0 already present"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 51:"));

    let out = mynah(dir.path()).args(["corpus", "import", "--strict"]).arg(&input).output().unwrap();
    assert!(!out.status.success());

    let output = dir.path().join("out.jsonl");
    let out = mynah(dir.path())
        .args(["corpus", "export", "--guild", "fcc-city", "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = std::fs::read_to_string(&output).unwrap();
    let parse =
        |t: &str| -> Vec<serde_json::Value> { t.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    assert_eq!(parse(&exported), parse(&sample));

    let out = mynah(dir.path()).args(["stats", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["guilds"][0]["messages"], 50);
}

#[test]
fn the_playground_runs_the_bot_from_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = mynah(dir.path())
        .args(["playground", "--database"])
        .arg(format!("sqlite://{}/playground.db", dir.path().display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"!llmstats\n@mynah hi there\n/as guest\n!llmtrain force\n/quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Messages collected:** 1500"), "{stdout}");
    assert!(stdout.contains("still learning how this server talks"), "{stdout}");
    assert!(stdout.contains("Only server admins"), "{stdout}");
}

#[test]
fn a_training_killed_mid_run_is_marked_interrupted_and_the_old_model_keeps_serving() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sample.jsonl");
    std::fs::write(&corpus, mynah::playground::SAMPLE).unwrap();
    assert!(mynah(dir.path()).args(["corpus", "import"]).arg(&corpus).output().unwrap().status.success());
    let out = mynah(dir.path()).args(["train", "--preset", "tiny", "--epochs", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut child = mynah(dir.path())
        .args(["train", "--preset", "small", "--epochs", "500", "--max-minutes", "5"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let started = lines.by_ref().map_while(Result::ok).any(|l| l.contains("training guild fcc-city"));
    assert!(started, "the second training started");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    let out = mynah(dir.path()).args(["stats", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["last_runs"][0]["outcome"], "interrupted", "{status}");
    assert_eq!(status["last_runs"][1]["outcome"], "succeeded", "{status}");
    assert_eq!(status["mode"], "model", "the first model still serves: {status}");
    assert_eq!(status["model"]["run"], "run-1", "{status}");
}

#[test]
fn an_operator_handles_a_users_request_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sample.jsonl");
    std::fs::write(&corpus, mynah::playground::SAMPLE).unwrap();
    assert!(mynah(dir.path()).args(["corpus", "import"]).arg(&corpus).output().unwrap().status.success());
    let briguy = ["--guild", "fcc-city", "--user", "5586531515522ed4b3e2399f"];
    let out = mynah(dir.path()).args(["user", "data"]).args(briguy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines > 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"author\":\"briguy75\""));

    let out = mynah(dir.path()).args(["user", "forget"]).args(briguy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("deleted {lines} messages")));
    let out = mynah(dir.path()).args(["user", "data"]).args(briguy).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    // Importing the same corpus again does not bring them back.
    assert!(mynah(dir.path()).args(["corpus", "import"]).arg(&corpus).output().unwrap().status.success());
    let out = mynah(dir.path()).args(["user", "data"]).args(briguy).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_passes_against_a_live_api_and_fails_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::support::config(dir.path());
    let store = mynah::store::Store::open(&cfg.database_url).await.unwrap();
    let core = mynah::service::Core::open(cfg, store).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mynah::api::serve(core, listener, async {
        let _ = stopped.await;
    }));
    let health = |addr: String| {
        let mut cmd = mynah(dir.path());
        cmd.env("MYNAH_API_ADDR", addr).arg("health");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let alive = health(addr.to_string()).await.unwrap();
    assert!(alive.status.success(), "{}", String::from_utf8_lossy(&alive.stderr));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let gone = health(addr.to_string()).await.unwrap();
    assert!(!gone.status.success(), "nothing listens any more");
}
