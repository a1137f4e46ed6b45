//! Shared test fixtures: a devserver with a guild, channels and users, and the real bot
//! connected to it.

use std::sync::Arc;
use std::time::Duration;

use mynah::app::Running;
use mynah::config::{Collect, Config, Secret};
use mynah::devserver::{DevServer, Posted, MANAGE_GUILD};
use mynah::service::Core;

pub const WAIT: Duration = Duration::from_secs(20);

/// The `mynah` binary run in `dir` with nothing of the environment but `PATH`: its database
/// and models in `dir`, no API socket, and models from scratch (`MYNAH_BASE=none`: the tests'
/// tiny presets train in seconds; the bases tests unset it).
pub fn mynah(dir: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mynah"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url(&dir.join("db")))
        .env("MYNAH_MODELS_DIR", dir.join("models"))
        .env("MYNAH_API_ADDR", "off")
        .env("MYNAH_BASE", "none");
    cmd
}

/// The database of a test working in `dir`: the SQLite file `dir/mynah.db`, or, when
/// `MYNAH_TEST_POSTGRES` names a PostgreSQL server (as in CI's second pass), a database of its
/// own on it, the same one for the same `dir`.
pub fn database_url(dir: &std::path::Path) -> String {
    let Some(server) = std::env::var("MYNAH_TEST_POSTGRES").ok().filter(|s| !s.is_empty()) else {
        return sqlite_url(dir);
    };
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("mynah_it_{:016x}", hasher.finish());
    // Called from sync code inside the tests' runtimes: a thread with a runtime of its own.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(mynah::store::create_postgres_database(&server, &name))
    })
    .join()
    .expect("the database is created")
    .expect("MYNAH_TEST_POSTGRES accepts CREATE DATABASE")
}

/// The SQLite file database in `dir`, for the tests that stand SQLite's own locks and triggers
/// in for a failing database.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}/mynah.db", dir.display())
}

/// Puts a test's bot on SQLite whatever the pass: for the tests that stand SQLite's own locks
/// and triggers in for a failing database.
pub fn on_sqlite(cfg: &mut Config) {
    let dir = cfg.models_dir.parent().expect("models sit in the test's dir").to_path_buf();
    cfg.database_url = sqlite_url(&dir);
}

/// Waits until `check` holds, polling the bot's database.
pub async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bundled sample corpus, as shipped in `data/sample/`.
pub fn sample() -> &'static str {
    mynah::playground::SAMPLE
}

/// A config for tests: a file database in `dir`, models in `dir/models`, no API socket.
pub fn config(dir: &std::path::Path) -> Config {
    let mut cfg = Config {
        database_url: database_url(dir),
        models_dir: dir.join("models"),
        api_addr: None,
        ..Config::default()
    };
    // Tiny models and few steps: the suite must stay quick on two cores.
    cfg.engine.preset = mynah::engine::Preset::tiny();
    cfg.engine.epochs = 1;
    cfg.engine.max_minutes = 0.5;
    // From scratch, not from the embedded base (the end-to-end tests of bases choose theirs).
    cfg.engine.base = mynah::models::bases::Choice::None;
    // Tests mention the bot in quick succession; the cool-down tests set their own limits.
    cfg.limits = mynah::ratelimit::Limits::off();
    // Tests start trainings themselves.
    cfg.schedule_minutes = None;
    cfg
}

pub struct Harness {
    pub server: DevServer,
    pub core: Arc<Core>,
    running: Option<Running>,
    pub guild: u64,
    pub general: u64,
    pub offtopic: u64,
    /// Has Manage Server through a role.
    pub admin: u64,
    /// Listed in MYNAH_ADMIN_IDS, with no permissions on Discord.
    pub listed_admin: u64,
    pub member: u64,
    pub other_bot: u64,
    /// New models are announced in `#general`.
    announces: bool,
    database_url: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test configuration changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        let server = DevServer::start().await.expect("devserver starts");
        let guild = server.create_guild("Test Guild");
        let general = server.create_channel(guild, "general");
        let offtopic = server.create_channel(guild, "off-topic");
        let admin = server.create_user("alice");
        let listed_admin = server.create_user("olga");
        let member = server.create_user("bob");
        let other_bot = server.create_bot_user("otherbot");
        server.add_member(guild, admin, MANAGE_GUILD);
        server.add_member(guild, listed_admin, 0);
        server.add_member(guild, member, 0);
        server.add_member(guild, other_bot, 0);

        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path());
        cfg.discord_token = Some(Secret::new(server.token()));
        cfg.discord_api_base = Some(server.base_url());
        cfg.collect = Collect::Channels([general.to_string()].into());
        cfg.admin_ids = [listed_admin].into();
        cfg.announce_channels = [general.to_string()].into();
        tweak(&mut cfg);
        let announces = cfg.announce_channels.contains(&general.to_string());
        let database_url = cfg.database_url.clone();
        let running = mynah::app::start(cfg).await.expect("the bot starts");
        let core = running.core().clone();
        assert!(server.wait_until_ready(WAIT).await, "the bot identified with the devserver");
        Harness {
            server,
            core,
            running: Some(running),
            guild,
            general,
            offtopic,
            admin,
            listed_admin,
            member,
            other_bot,
            announces,
            database_url,
            _dir: dir,
        }
    }

    /// Says something and waits for the bot's next message in that channel.
    pub async fn ask(&self, channel: u64, user: u64, text: &str) -> Posted {
        let sent = self.server.say(channel, user, text);
        match self.server.wait_for_bot_message(channel, sent, WAIT).await {
            Some(reply) => reply,
            None => panic!("no reply to {text:?} within {WAIT:?}"),
        }
    }

    pub async fn stored(&self) -> u64 {
        self.core.counts(&self.guild.to_string(), None).await.expect("counts").messages
    }

    /// Waits until the store holds `n` messages of the guild.
    pub async fn wait_stored(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.stored().await != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} stored messages, have {}",
                self.stored().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no training runs and returns how the last one ended. A new model is
    /// announced in `#general` a moment later: that is waited for too (for a while), so the
    /// announcement can't be taken for the answer to whatever the test says next.
    pub async fn wait_training_done(&self) -> mynah::models::trainer::Finished {
        let finished = wait_training_done(&self.core).await;
        let here = finished.guild_id == self.guild.to_string();
        if finished.outcome == mynah::store::RunOutcome::Succeeded && self.announces && here {
            let tag = format!("model run-{} ", finished.run_id);
            let announced = || {
                let posts = self.server.bot_messages(self.general);
                posts.into_iter().find(|m| m.content.starts_with("I've learned") && m.content.contains(&tag))
            };
            self.server.wait_for(WAIT, announced).await;
        }
        finished
    }

    /// The bot's database, for tests that hold its write lock.
    pub fn database_url(&self) -> String {
        self.database_url.clone()
    }

    /// Stops the bot and checks that it called only routes the devserver serves and that
    /// Discord would have refused none of its requests.
    pub async fn stop(self) {
        self.stop_allowing(&[]).await;
    }

    /// [`Harness::stop`], where the test staged refusals with these Discord error codes.
    pub async fn stop_allowing(mut self, codes: &[u64]) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        assert_eq!(
            self.server.unknown_routes(),
            Vec::<String>::new(),
            "the bot called routes the devserver does not serve"
        );
        let refused: Vec<_> =
            self.server.rejections().into_iter().filter(|r| !codes.contains(&r.code)).collect();
        assert!(refused.is_empty(), "Discord would have refused these requests of the bot: {refused:#?}");
    }
}

/// Waits until the core's training slot is free again and returns how the last run ended.
pub async fn wait_training_done(core: &Core) -> mynah::models::trainer::Finished {
    let mut watch = core.watch_training();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        {
            let view = watch.borrow_and_update();
            if view.state == mynah::models::trainer::TrainingState::Idle {
                if let Some(last) = &view.last {
                    return last.clone();
                }
            }
        }
        assert!(
            tokio::time::timeout_at(deadline, watch.changed()).await.is_ok(),
            "training did not finish in time"
        );
    }
}

/// A devserver with one guild on each of two gateway shards (Discord's rule: `(guild_id >> 22) %
/// 2` picks the shard), each with a `#general`, and a member in both; for bots running one shard
/// each on one database in `dir`.
pub struct TwoShards {
    pub server: DevServer,
    pub even: u64,
    pub odd: u64,
    pub c_even: u64,
    pub c_odd: u64,
    pub member: u64,
    pub dir: tempfile::TempDir,
}

impl TwoShards {
    pub async fn start() -> TwoShards {
        let server = DevServer::start().await.expect("devserver starts");
        let even = server.create_guild_with_id("Even", 2 << 22);
        let odd = server.create_guild_with_id("Odd", 3 << 22);
        let (c_even, c_odd) = (server.create_channel(even, "general"), server.create_channel(odd, "general"));
        let member = server.create_user("bob");
        server.add_member(even, member, 0);
        server.add_member(odd, member, 0);
        TwoShards { server, even, odd, c_even, c_odd, member, dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A bot process's config: running `shards` (e.g. `0-0/2`), collecting everything, on the
    /// database of `dir` that every process of the test shares.
    pub fn config(&self, shards: &str) -> Config {
        let mut cfg = config(self.dir.path());
        cfg.discord_token = Some(Secret::new(self.server.token()));
        cfg.discord_api_base = Some(self.server.base_url());
        cfg.collect = Collect::All;
        cfg.shards = mynah::shards::ShardRange::parse(shards).expect("a shard range");
        cfg
    }

    /// Waits until both shards' sessions identified.
    pub async fn wait_for_both_sessions(&self) {
        let both = || (self.server.sessions() == 2).then_some(());
        self.server.wait_for(WAIT, both).await.expect("both shards identified");
    }
}
