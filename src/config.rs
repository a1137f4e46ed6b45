//! Typed configuration, parsed once at start-up from environment variables.
//!
//! Every variable is documented in `.env.example`. A malformed value stops start-up with one line
//! that names the variable and the form it expects.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::generate::Sampling;
use crate::engine::Preset;
use crate::policy::Thresholds;
use crate::ratelimit::Limits;

/// A configuration value that was present but malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// A secret string whose `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which channels the bot stores messages from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Collect {
    /// Collect nothing (the default: an operator must opt channels in).
    #[default]
    Nothing,
    /// Every channel the bot can read.
    All,
    /// Only these channel IDs.
    Channels(BTreeSet<String>),
}

impl Collect {
    pub fn includes(&self, channel_id: &str) -> bool {
        match self {
            Collect::Nothing => false,
            Collect::All => true,
            Collect::Channels(set) => set.contains(channel_id),
        }
    }

    /// A short human description for stats.
    pub fn describe(&self) -> String {
        match self {
            Collect::Nothing => "nothing (set MYNAH_COLLECT_CHANNELS to opt channels in)".into(),
            Collect::All => "all readable channels".into(),
            Collect::Channels(set) => format!("{} opted-in channel(s)", set.len()),
        }
    }
}

/// Where trainings run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingMode {
    /// In this process, one at a time (the default; the only mode on SQLite).
    #[default]
    Here,
    /// On `mynah worker` processes, through the job queue in PostgreSQL.
    Workers,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub discord_token: Option<Secret>,
    pub database_url: String,
    pub models_dir: PathBuf,
    /// `None` when the API is switched off (`MYNAH_API_ADDR=off`).
    pub api_addr: Option<SocketAddr>,
    pub api_token: Option<Secret>,
    /// With a token set: whether `GET /api/ml/status` answers without it, in a public form
    /// (no IDs, no error text) (`MYNAH_PUBLIC_STATUS`).
    pub public_status: bool,
    pub prefix: String,
    pub admin_ids: BTreeSet<u64>,
    pub collect: Collect,
    pub discord_api_base: Option<String>,
    pub thresholds: Thresholds,
    pub engine: EngineConfig,
    /// Minutes between scheduler rounds; `None` disables scheduled retraining.
    pub schedule_minutes: Option<u64>,
    /// Channels where new models are announced (one per guild at most; off when empty).
    pub announce_channels: BTreeSet<String>,
    /// Replace credentials, e-mail addresses and phone numbers before storing a message.
    pub scrub: bool,
    /// Reply cool-downs and the per-channel cap.
    pub limits: Limits,
    /// Answer with the fallback instead of a model that still contains removed messages.
    pub stale_fallback: bool,
    /// Messages read back from a channel's history when it is first collected (and at most
    /// this many when catching up after downtime); 0 reads nothing back.
    pub backfill_messages: u64,
    /// How many replaced models of a guild stay on disk besides the current one
    /// (`MYNAH_KEEP_RUNS`); the rest are deleted at each swap and at start-up.
    pub keep_runs: usize,
    /// How often removals from Discord that could not be applied are retried (30 s; tests
    /// shorten it).
    pub removal_retry: std::time::Duration,
    /// Messages older than this many days are deleted (`None`: kept until removed otherwise).
    pub retention_days: Option<u64>,
    /// The gateway shards this process runs (`MYNAH_SHARDS`); it serves only their guilds.
    pub shards: crate::shards::ShardRange,
    /// Where trainings run (`MYNAH_TRAINING`): in this process, or on `mynah worker`s.
    pub training: TrainingMode,
    /// The largest model bundle a worker stores in the database (`MYNAH_BUNDLE_MAX_MB`).
    pub bundle_max_bytes: usize,
    /// How long a worker's claim on a job lasts unrenewed (`MYNAH_WORKER_LEASE_SECONDS`); it
    /// renews it every third of that, and a job whose worker died is claimed again after it.
    pub worker_lease: std::time::Duration,
}

/// How models are trained and how replies are sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub preset: Preset,
    /// The pretrained base new trainings start from (`MYNAH_BASE`: a name, `none`, or unset for
    /// the installed one).
    pub base: crate::models::bases::Choice,
    /// Fine-tuning a base trains adapters of this shape (`MYNAH_LORA_RANK`, `MYNAH_LORA_ALPHA`);
    /// `None` (rank 0) trains every weight.
    pub lora: Option<crate::engine::lora::LoraSpec>,
    pub epochs: usize,
    pub max_minutes: f64,
    /// Messages of the channel's recent history given to the model with a mention.
    pub reply_context: usize,
    pub sampling: Sampling,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            preset: Preset::default_preset(),
            base: crate::models::bases::Choice::Auto,
            lora: Some(crate::engine::lora::LoraSpec::default()),
            epochs: 3,
            max_minutes: 10.0,
            reply_context: 8,
            sampling: Sampling::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            discord_token: None,
            database_url: "sqlite://data/mynah.db".into(),
            models_dir: PathBuf::from("models"),
            api_addr: Some(SocketAddr::from(([127, 0, 0, 1], 3000))),
            api_token: None,
            public_status: false,
            prefix: "!".into(),
            admin_ids: BTreeSet::new(),
            collect: Collect::Nothing,
            discord_api_base: None,
            thresholds: Thresholds::default(),
            engine: EngineConfig::default(),
            schedule_minutes: Some(30),
            announce_channels: BTreeSet::new(),
            shards: crate::shards::ShardRange::default(),
            training: TrainingMode::Here,
            bundle_max_bytes: 256 << 20,
            worker_lease: std::time::Duration::from_secs(30),
            scrub: true,
            limits: Limits::default(),
            stale_fallback: false,
            backfill_messages: 1000,
            keep_runs: 2,
            removal_retry: std::time::Duration::from_secs(30),
            retention_days: None,
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process environment.
    /// Unset and empty variables take their defaults.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let discord_token = secret(&get, "DISCORD_TOKEN", "DISCORD_TOKEN_FILE")?.map(Secret::new);
        let mut cfg = Config { discord_token, ..Config::default() };
        if let Some(url) = get("DATABASE_URL") {
            if crate::store::Backend::of(&url).is_err() {
                return Err(err(
                    "DATABASE_URL",
                    &crate::store::redact(&url),
                    "a SQLite URL like sqlite://data/mynah.db or a PostgreSQL one like postgres://user@host/mynah",
                ));
            }
            cfg.database_url = url;
        }
        if let Some(dir) = get("MYNAH_MODELS_DIR") {
            cfg.models_dir = PathBuf::from(dir);
        }
        if let Some(addr) = get("MYNAH_API_ADDR") {
            cfg.api_addr = if addr.eq_ignore_ascii_case("off") {
                None
            } else {
                Some(addr.parse().map_err(|_| {
                    err("MYNAH_API_ADDR", &addr, "a socket address like 127.0.0.1:3000, or off")
                })?)
            };
        }
        if let Some(token) = secret(&get, "MYNAH_API_TOKEN", "MYNAH_API_TOKEN_FILE")? {
            if token.chars().count() < MIN_TOKEN_CHARS {
                let shown = "*".repeat(token.chars().count());
                return Err(err(
                    "MYNAH_API_TOKEN",
                    &shown,
                    "at least 16 characters (e.g. the output of `openssl rand -hex 24`)",
                ));
            }
            cfg.api_token = Some(Secret::new(token));
        }
        if let Some(v) = get("MYNAH_PUBLIC_STATUS") {
            cfg.public_status = switch(&v).ok_or_else(|| err("MYNAH_PUBLIC_STATUS", &v, "on or off"))?;
        }
        if let Some(prefix) = get("MYNAH_PREFIX") {
            if prefix.chars().any(char::is_whitespace) || prefix.chars().count() > 8 {
                return Err(err("MYNAH_PREFIX", &prefix, "1 to 8 characters without spaces, like !"));
            }
            cfg.prefix = prefix;
        }
        if let Some(ids) = get("MYNAH_ADMIN_IDS") {
            cfg.admin_ids = parse_ids(&ids)
                .ok_or_else(|| err("MYNAH_ADMIN_IDS", &ids, "comma-separated Discord user IDs"))?
                .into_iter()
                .collect();
        }
        if let Some(channels) = get("MYNAH_COLLECT_CHANNELS") {
            cfg.collect = if channels.eq_ignore_ascii_case("all") {
                Collect::All
            } else {
                let ids = parse_ids(&channels).ok_or_else(|| {
                    err("MYNAH_COLLECT_CHANNELS", &channels, "all, or comma-separated channel IDs")
                })?;
                Collect::Channels(ids.into_iter().map(|id| id.to_string()).collect())
            };
        }
        if let Some(base) = get("DISCORD_API_BASE") {
            let ok = (base.starts_with("http://") || base.starts_with("https://"))
                && !base.trim_end_matches('/').ends_with("/api/v10");
            if !ok {
                return Err(err(
                    "DISCORD_API_BASE",
                    &base,
                    "a base URL without /api/v10, like http://127.0.0.1:8080",
                ));
            }
            cfg.discord_api_base = Some(base.trim_end_matches('/').to_string());
        }

        let t = &mut cfg.thresholds;
        t.min_corpus = number(&get, "MYNAH_TRAIN_MIN_MESSAGES", t.min_corpus)?;
        t.min_new_messages = number(&get, "MYNAH_TRAIN_MIN_NEW_MESSAGES", t.min_new_messages)?;
        t.min_interval_hours = number(&get, "MYNAH_TRAIN_MIN_HOURS", t.min_interval_hours)?;
        t.max_interval_hours = number(&get, "MYNAH_TRAIN_MAX_HOURS", t.max_interval_hours)?;
        t.stale_retrain_hours = number(&get, "MYNAH_STALE_RETRAIN_HOURS", t.stale_retrain_hours)?;
        if let Some(v) = get("MYNAH_STALE_MODELS") {
            cfg.stale_fallback = match v.to_ascii_lowercase().as_str() {
                "serve" => false,
                "fallback" => true,
                _ => return Err(err("MYNAH_STALE_MODELS", &v, "serve or fallback")),
            };
        }
        if let Some(v) = get("MYNAH_SCRUB") {
            cfg.scrub = switch(&v).ok_or_else(|| err("MYNAH_SCRUB", &v, "on or off"))?;
        }
        let l = &mut cfg.limits;
        l.user_cooldown = seconds(&get, "MYNAH_USER_COOLDOWN_SECONDS", l.user_cooldown)?;
        l.channel_cooldown = seconds(&get, "MYNAH_CHANNEL_COOLDOWN_SECONDS", l.channel_cooldown)?;
        l.channel_per_minute =
            number(&get, "MYNAH_CHANNEL_REPLIES_PER_MINUTE", l.channel_per_minute as u64)?.min(10_000) as u32;
        cfg.backfill_messages = number(&get, "MYNAH_BACKFILL_MESSAGES", cfg.backfill_messages)?;
        cfg.keep_runs = number(&get, "MYNAH_KEEP_RUNS", cfg.keep_runs as u64)? as usize;
        cfg.retention_days = match number(&get, "MYNAH_RETENTION_DAYS", 0)? {
            0 => None,
            n => Some(n.min(100_000)),
        };

        cfg.schedule_minutes = match number(&get, "MYNAH_SCHEDULE_MINUTES", 30)? {
            0 => None,
            // Beyond a year the interval would overflow the scheduler's clock arithmetic.
            n if n > 525_600 => {
                return Err(err("MYNAH_SCHEDULE_MINUTES", &n.to_string(), "0 (off) or 1 to 525600 (a year)"))
            }
            n => Some(n),
        };

        if let Some(mode) = get("MYNAH_TRAINING") {
            cfg.training = match mode.as_str() {
                "here" => TrainingMode::Here,
                "workers" => TrainingMode::Workers,
                _ => return Err(err("MYNAH_TRAINING", &mode, "here or workers")),
            };
            if cfg.training == TrainingMode::Workers
                && crate::store::Backend::of(&cfg.database_url).ok() != Some(crate::store::Backend::Postgres)
            {
                return Err(err(
                    "MYNAH_TRAINING",
                    &mode,
                    "here, unless DATABASE_URL names a PostgreSQL database",
                ));
            }
        }
        let bundle_mb = number(&get, "MYNAH_BUNDLE_MAX_MB", (cfg.bundle_max_bytes >> 20) as u64)?;
        let most = (crate::models::bundle::MAX_BUNDLE_BYTES >> 20) as u64;
        if !(1..=most).contains(&bundle_mb) {
            return Err(err(
                "MYNAH_BUNDLE_MAX_MB",
                &bundle_mb.to_string(),
                "a whole number of MB from 1 to 512",
            ));
        }
        cfg.bundle_max_bytes = (bundle_mb as usize) << 20;
        let lease = number(&get, "MYNAH_WORKER_LEASE_SECONDS", cfg.worker_lease.as_secs())?;
        if !(3..=3600).contains(&lease) {
            return Err(err(
                "MYNAH_WORKER_LEASE_SECONDS",
                &lease.to_string(),
                "a whole number of seconds from 3 to 3600",
            ));
        }
        cfg.worker_lease = std::time::Duration::from_secs(lease);
        if let Some(shards) = get("MYNAH_SHARDS") {
            cfg.shards = crate::shards::ShardRange::parse(&shards).map_err(|_| {
                err("MYNAH_SHARDS", &shards, "FIRST-LAST/TOTAL with FIRST <= LAST < TOTAL, e.g. 0-3/8")
            })?;
        }
        if let Some(list) = get("MYNAH_ANNOUNCE_CHANNELS") {
            cfg.announce_channels = parse_ids(&list)
                .ok_or_else(|| err("MYNAH_ANNOUNCE_CHANNELS", &list, "comma-separated channel IDs"))?
                .into_iter()
                .map(|id| id.to_string())
                .collect();
        }

        let e = &mut cfg.engine;
        if let Some(device) = get("MYNAH_DEVICE") {
            let ok = device == "cpu"
                || device == "cuda"
                || device.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
            if !ok {
                return Err(err("MYNAH_DEVICE", &device, "cpu, cuda or cuda:N"));
            }
            e.device = device;
        }
        if let Some(name) = get("MYNAH_PRESET") {
            e.preset =
                Preset::by_name(&name).ok_or_else(|| err("MYNAH_PRESET", &name, "tiny, small or default"))?;
        }
        if let Some(name) = get("MYNAH_BASE") {
            e.base = name.parse().map_err(|_| {
                err("MYNAH_BASE", &name, "the name of an installed base (`mynah base list`) or none")
            })?;
        }
        let rank = number(&get, "MYNAH_LORA_RANK", 8)?.min(256) as usize;
        let alpha = float(&get, "MYNAH_LORA_ALPHA", 16.0, 0.01, 10_000.0)?;
        e.lora = (rank > 0).then_some(crate::engine::lora::LoraSpec { rank, alpha });
        e.epochs = number(&get, "MYNAH_TRAIN_EPOCHS", e.epochs as u64)?.clamp(1, 1000) as usize;
        e.max_minutes = float(&get, "MYNAH_TRAIN_MAX_MINUTES", e.max_minutes, 0.01, 10_000.0)?;
        e.reply_context = number(&get, "MYNAH_REPLY_CONTEXT", e.reply_context as u64)?.min(100) as usize;
        let sm = &mut e.sampling;
        sm.temperature = float(&get, "MYNAH_TEMPERATURE", sm.temperature as f64, 0.0, 5.0)? as f32;
        sm.top_k = number(&get, "MYNAH_TOP_K", sm.top_k as u64)? as usize;
        sm.top_p = float(&get, "MYNAH_TOP_P", sm.top_p as f64, 0.01, 1.0)? as f32;
        sm.repetition_penalty =
            float(&get, "MYNAH_REPETITION_PENALTY", sm.repetition_penalty as f64, 1.0, 5.0)? as f32;
        sm.max_tokens = number(&get, "MYNAH_REPLY_MAX_TOKENS", sm.max_tokens as u64)?.clamp(1, 200) as usize;
        sm.min_p = float(&get, "MYNAH_MIN_P", sm.min_p as f64, 0.0, 1.0)? as f32;
        sm.candidates = number(&get, "MYNAH_REPLY_CANDIDATES", sm.candidates as u64)?.clamp(1, 64) as usize;
        Ok(cfg)
    }

    /// Refuses configurations that would be unsafe to run, such as an open, unauthenticated API.
    pub fn check_api_exposure(&self) -> Result<(), String> {
        match self.api_addr {
            Some(addr) if !addr.ip().is_loopback() && self.api_token.is_none() => Err(format!(
                "refusing to serve the HTTP API on {addr} without MYNAH_API_TOKEN: \
                 set a token or bind to 127.0.0.1"
            )),
            _ => Ok(()),
        }
    }

    pub fn is_admin(&self, user_id: u64) -> bool {
        self.admin_ids.contains(&user_id)
    }
}

/// A secret from `var`, or read from the file `file_var` names (Docker and Kubernetes mount
/// secrets as files, which keeps them out of `docker inspect` and the process environment).
fn secret(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<String>, ConfigError> {
    match (get(var), get(file_var)) {
        (Some(_), Some(_)) => {
            Err(err(file_var, "(set as well)", "either the variable or its _FILE, not both"))
        }
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|s| !s.is_empty())),
            Err(_) => Err(err(file_var, &path, "the path of a readable file holding the secret")),
        },
        (None, None) => Ok(None),
    }
}

fn err(var: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError { var, value: value.to_string(), expected }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| err(var, &v, "a whole number")),
    }
}

fn float(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: f64,
    min: f64,
    max: f64,
) -> Result<f64, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if (min..=max).contains(&x) => Ok(x),
            _ => Err(err(var, &v, "a number in its documented range (see .env.example)")),
        },
    }
}

/// A duration in (fractional) seconds, up to a day.
fn seconds(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    Ok(std::time::Duration::from_secs_f64(float(get, var, default.as_secs_f64(), 0.0, 86_400.0)?))
}

/// The shortest `MYNAH_API_TOKEN` accepted: a token that can be guessed protects nothing.
const MIN_TOKEN_CHARS: usize = 16;

fn switch(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Some(true),
        "off" | "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Parses `1, 2,3` into IDs; `None` if any part is not a positive integer.
fn parse_ids(list: &str) -> Option<Vec<u64>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().ok().filter(|&id| id > 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.database_url, "sqlite://data/mynah.db");
        assert_eq!(cfg.api_addr, Some("127.0.0.1:3000".parse().unwrap()));
        assert_eq!(cfg.prefix, "!");
        assert_eq!(cfg.collect, Collect::Nothing);
        assert!(cfg.discord_token.is_none());
    }

    #[test]
    fn a_malformed_value_names_the_variable_and_the_expected_form() {
        let e = config(&[("MYNAH_API_ADDR", "localhost")]).unwrap_err();
        let line = e.to_string();
        assert_eq!(e.var, "MYNAH_API_ADDR");
        assert!(line.contains("MYNAH_API_ADDR=\"localhost\""), "{line}");
        assert!(line.contains("expected a socket address"), "{line}");
        assert!(!line.contains('\n'));

        assert_eq!(config(&[("MYNAH_ADMIN_IDS", "12,abc")]).unwrap_err().var, "MYNAH_ADMIN_IDS");
        // An interval the scheduler's clock cannot hold is refused at start, not a dead scheduler.
        assert_eq!(
            config(&[("MYNAH_SCHEDULE_MINUTES", "18446744073709551615")]).unwrap_err().var,
            "MYNAH_SCHEDULE_MINUTES"
        );
        assert_eq!(config(&[("MYNAH_SCHEDULE_MINUTES", "525600")]).unwrap().schedule_minutes, Some(525_600));
        assert_eq!(
            config(&[("MYNAH_COLLECT_CHANNELS", "general")]).unwrap_err().var,
            "MYNAH_COLLECT_CHANNELS"
        );
        assert_eq!(config(&[("DATABASE_URL", "mysql://x")]).unwrap_err().var, "DATABASE_URL");
        let refused = config(&[("DATABASE_URL", "mysql://u:secret@h/db")]).unwrap_err().to_string();
        assert!(!refused.contains("secret"), "{refused}");
        assert_eq!(config(&[("DATABASE_URL", "postgres://x/db")]).unwrap().database_url, "postgres://x/db");
        assert_eq!(
            config(&[("MYNAH_TRAIN_MIN_MESSAGES", "-3")]).unwrap_err().var,
            "MYNAH_TRAIN_MIN_MESSAGES"
        );
        assert_eq!(config(&[("DISCORD_API_BASE", "http://x/api/v10")]).unwrap_err().var, "DISCORD_API_BASE");
        assert_eq!(config(&[("MYNAH_SCRUB", "maybe")]).unwrap_err().var, "MYNAH_SCRUB");
        assert_eq!(config(&[("MYNAH_SHARDS", "2-1/4")]).unwrap_err().var, "MYNAH_SHARDS");
        assert_eq!(config(&[("MYNAH_STALE_MODELS", "x")]).unwrap_err().var, "MYNAH_STALE_MODELS");
        assert_eq!(
            config(&[("MYNAH_USER_COOLDOWN_SECONDS", "-1")]).unwrap_err().var,
            "MYNAH_USER_COOLDOWN_SECONDS"
        );
    }

    #[test]
    fn lists_and_switches_parse() {
        let cfg = config(&[
            ("MYNAH_ADMIN_IDS", " 1, 22 ,333"),
            ("MYNAH_COLLECT_CHANNELS", "10,20"),
            ("MYNAH_API_ADDR", "off"),
            ("DISCORD_API_BASE", "http://127.0.0.1:9/"),
        ])
        .unwrap();
        assert!(cfg.is_admin(22) && !cfg.is_admin(2));
        assert!(cfg.collect.includes("20") && !cfg.collect.includes("30"));
        assert_eq!(cfg.api_addr, None);
        assert_eq!(cfg.discord_api_base.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(config(&[("MYNAH_COLLECT_CHANNELS", "ALL")]).unwrap().collect, Collect::All);
        let cfg = config(&[
            ("MYNAH_SCRUB", "off"),
            ("MYNAH_STALE_MODELS", "fallback"),
            ("MYNAH_CHANNEL_COOLDOWN_SECONDS", "0.5"),
        ])
        .unwrap();
        assert!(!cfg.scrub && cfg.stale_fallback);
        assert_eq!(config(&[("MYNAH_SHARDS", "0-3/8")]).unwrap().shards.to_string(), "0-3/8");
        assert_eq!(
            config(&[("MYNAH_TRAINING", "workers")]).unwrap_err().var,
            "MYNAH_TRAINING",
            "not on SQLite"
        );
        let workers = config(&[("MYNAH_TRAINING", "workers"), ("DATABASE_URL", "postgres://h/db")]).unwrap();
        assert_eq!(workers.training, TrainingMode::Workers);
        assert_eq!(config(&[("MYNAH_TRAINING", "gpu")]).unwrap_err().var, "MYNAH_TRAINING");
        assert_eq!(cfg.limits.channel_cooldown, std::time::Duration::from_millis(500));
    }

    #[test]
    fn an_open_api_without_a_token_is_refused() {
        let open = config(&[("MYNAH_API_ADDR", "0.0.0.0:3000")]).unwrap();
        assert!(open.check_api_exposure().unwrap_err().contains("MYNAH_API_TOKEN"));
        let guarded =
            config(&[("MYNAH_API_ADDR", "0.0.0.0:3000"), ("MYNAH_API_TOKEN", "a-long-enough-token")])
                .unwrap();
        let short = config(&[("MYNAH_API_TOKEN", "hunter2")]).unwrap_err();
        assert_eq!(short.var, "MYNAH_API_TOKEN");
        assert!(!short.to_string().contains("hunter2"), "the value is never echoed: {short}");
        assert!(guarded.check_api_exposure().is_ok());
        assert!(config(&[]).unwrap().check_api_exposure().is_ok());
    }

    #[test]
    fn env_example_documents_every_variable_with_a_valid_value() {
        let example = include_str!("../.env.example");
        let vars: HashMap<String, String> = example
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let cfg = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert_eq!(cfg.limits, Limits::default(), "the example shows the defaults");
        let source = include_str!("config.rs");
        for quoted in source.split('"').skip(1).step_by(2) {
            let is_var =
                (quoted.starts_with("MYNAH_") || quoted.starts_with("DISCORD_") || quoted == "DATABASE_URL")
                    && quoted.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
            if is_var {
                assert!(vars.contains_key(quoted), "{quoted} is read but not in .env.example");
            }
        }
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-a-file-0123456789\n").unwrap();
        let path = file.display().to_string();
        let cfg = config(&[("DISCORD_TOKEN_FILE", &path), ("MYNAH_API_TOKEN_FILE", &path)]).unwrap();
        assert_eq!(cfg.discord_token.unwrap().expose(), "from-a-file-0123456789");
        assert_eq!(cfg.api_token.unwrap().expose(), "from-a-file-0123456789");
        let both = config(&[("DISCORD_TOKEN", "x"), ("DISCORD_TOKEN_FILE", &path)]).unwrap_err();
        assert_eq!(both.var, "DISCORD_TOKEN_FILE");
        let missing = config(&[("DISCORD_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert_eq!(missing.var, "DISCORD_TOKEN_FILE");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cfg = config(&[("DISCORD_TOKEN", "very-secret")]).unwrap();
        assert!(!format!("{cfg:?}").contains("very-secret"));
    }
}
