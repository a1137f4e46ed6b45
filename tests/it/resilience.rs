//! Faults: the real `mynah run` binary, connected to the devserver, killed with SIGKILL at
//! random moments or stopped with SIGTERM. Nothing said on Discord may be lost, the current
//! model must stay loadable, and a stop must be quick and clean.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use mynah::devserver::DevServer;

struct World {
    server: DevServer,
    guild: u64,
    general: u64,
    member: u64,
    dir: tempfile::TempDir,
    port: u16,
}

impl World {
    async fn new() -> World {
        let server = DevServer::start().await.unwrap();
        let guild = server.create_guild("Resilience");
        let general = server.create_channel(guild, "general");
        let member = server.create_user("bob");
        server.add_member(guild, member, 0);
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("sample.jsonl");
        std::fs::write(&corpus, mynah::playground::SAMPLE).unwrap();
        let port = free_port();
        let w = World { server, guild, general, member, dir, port };
        let out = w
            .command()
            .args(["corpus", "import", "--guild"])
            .arg(guild.to_string())
            .arg(&corpus)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        w
    }

    fn database(&self) -> String {
        crate::support::database_url(self.dir.path())
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mynah"));
        cmd.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", self.database())
            .env("MYNAH_MODELS_DIR", self.models())
            .env("MYNAH_API_ADDR", format!("127.0.0.1:{}", self.port))
            .env("DISCORD_TOKEN", self.server.token())
            .env("DISCORD_API_BASE", self.server.base_url())
            .env("MYNAH_COLLECT_CHANNELS", self.general.to_string())
            .env("MYNAH_PRESET", "tiny")
            .env("MYNAH_BASE", "none")
            .env("MYNAH_TRAIN_EPOCHS", "2")
            .env("MYNAH_SCHEDULE_MINUTES", "0")
            .env("MYNAH_BACKFILL_MESSAGES", "100000")
            .env("RUST_LOG", "mynah=info,warn")
            .kill_on_drop(true);
        cmd
    }

    /// Starts `mynah run` and waits until it is connected to the devserver.
    async fn start(&self, log: &str) -> tokio::process::Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child =
            self.command().arg("run").stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap();
        assert!(self.server.wait_until_ready(Duration::from_secs(60)).await, "the bot connected");
        child
    }

    /// Kills the child without warning and waits until the devserver saw it go.
    async fn kill(&self, mut child: tokio::process::Child) {
        // It may be dead already (see kill_now); it is reaped here either way.
        let _ = child.start_kill();
        child.wait().await.unwrap();
        let gone = self
            .server
            .wait_for(Duration::from_secs(10), || (self.server.sessions() == 0).then_some(()))
            .await;
        assert!(gone.is_some(), "the killed bot's session ended");
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut req = reqwest::Client::new().request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json().await.unwrap()
    }

    async fn train(&self) -> Value {
        let body = json!({ "force": true, "guild_id": self.guild.to_string() });
        self.api(reqwest::Method::POST, "/api/ml/train", Some(body)).await
    }

    async fn status(&self) -> Value {
        self.api(reqwest::Method::GET, "/api/ml/status", None).await
    }

    async fn stored(&self) -> u64 {
        let store = mynah::store::Store::open(&self.database()).await.unwrap();
        let n = store.counts(&self.guild.to_string(), None).await.unwrap().messages;
        store.close().await;
        n
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The guild's current model loads, whatever moment the process died at.
fn assert_current_model_loads(models: &Path, guild: u64) {
    let guild_dir = models.join(guild.to_string());
    let run = std::fs::read_to_string(guild_dir.join("CURRENT")).expect("a CURRENT pointer");
    mynah::engine::checkpoint::load(&guild_dir.join(run.trim()), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("the current model {} does not load: {e}", run.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_no_message_and_keeps_a_loadable_model() {
    let w = World::new().await;
    let child = w.start("first.log").await;
    assert_eq!(w.train().await["started"], true);
    let deadline = Instant::now() + Duration::from_secs(120);
    while w.status().await["mode"] != "model" {
        assert!(Instant::now() < deadline, "the first model was trained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.kill(child).await;

    let seed: u64 = rand::random();
    eprintln!("kill -9 schedule seed: {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut said = 0u64;
    for round in 0..4 {
        let child = w.start(&format!("round-{round}.log")).await;
        if round % 2 == 0 {
            // Training (and its model swap) is under way when the kill comes.
            assert_eq!(w.train().await["started"], true, "round {round}");
        }
        let kill_after = Duration::from_millis(rng.random_range(50..2500));
        let killed_at = Instant::now() + kill_after;
        let mut n = 0;
        while Instant::now() < killed_at || n < 200 {
            w.server.say(w.general, w.member, &format!("round {round} message {n}"));
            n += 1;
            if Instant::now() >= killed_at && w.server.sessions() > 0 {
                w.kill_now(&child);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        said += n;
        w.kill(child).await;
        assert_current_model_loads(&w.models(), w.guild);
    }

    let child = w.start("last.log").await;
    let want = 1500 + said;
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.stored().await != want {
        assert!(Instant::now() < deadline, "stored {} of {want} messages", w.stored().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = w.status().await;
    assert_eq!(status["mode"], "model", "{status}");
    let store = mynah::store::Store::open(&w.database()).await.unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    let runs = store.runs(None, 20).await.unwrap();
    assert!(
        runs.iter().all(|r| r.outcome != mynah::store::RunOutcome::Running),
        "no run is left running: {runs:?}"
    );
    store.close().await;
    w.kill(child).await;
    assert_current_model_loads(&w.models(), w.guild);
}

impl World {
    /// SIGKILL without waiting (the burst goes on, as Discord would).
    fn kill_now(&self, child: &tokio::process::Child) {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_training_cleanly_and_exits_within_seconds() {
    let w = World::new().await;
    let mut cmd = w.command();
    // A training long enough to be certainly running when the signal comes.
    cmd.env("MYNAH_PRESET", "small").env("MYNAH_TRAIN_EPOCHS", "500").env("MYNAH_TRAIN_MAX_MINUTES", "10");
    let log = std::fs::File::create(w.dir.path().join("term.log")).unwrap();
    let mut child = cmd.arg("run").stdout(std::process::Stdio::null()).stderr(log).spawn().unwrap();
    assert!(w.server.wait_until_ready(Duration::from_secs(60)).await);
    assert_eq!(w.train().await["started"], true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.status().await["training"]["progress"]["phase"] != "training" {
        assert!(Instant::now() < deadline, "training started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pid = child.id().unwrap().to_string();
    let signalled = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exited").unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let store = mynah::store::Store::open(&w.database()).await.unwrap();
    let runs = store.runs(None, 5).await.unwrap();
    assert_eq!(
        runs[0].outcome,
        mynah::store::RunOutcome::Cancelled,
        "recorded as cancelled, not interrupted: {runs:?}"
    );
    store.close().await;
    let log = std::fs::read_to_string(w.dir.path().join("term.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_10_000_messages_is_stored_completely_while_mentions_are_answered() {
    let h = crate::support::Harness::start().await;
    let bot = h.server.bot_id();
    let started = Instant::now();
    let mut mentions = Vec::new();
    for i in 0..10_000 {
        h.server.say(h.general, h.member, &format!("burst message {i}"));
        if i % 2_500 == 1_000 {
            mentions.push(h.server.say(h.general, h.admin, &format!("<@{bot}> still there?")));
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for m in &mentions {
        let reply = h.server.wait_for_bot_message(h.general, *m, Duration::from_secs(60)).await;
        assert!(reply.is_some(), "a mention during the burst was answered");
    }
    let want = 10_000 + mentions.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while h.stored().await != want {
        assert!(Instant::now() < deadline, "stored {} of {want}", h.stored().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("10 000 messages stored in {:.1} s (debug build)", started.elapsed().as_secs_f64());
    h.stop().await;
}
