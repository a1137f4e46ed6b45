//! mynah: a Discord bot that learns to talk like its server.
//!
//! The crate is laid out by responsibility:
//! - [`config`]: typed configuration parsed once from environment variables.
//! - [`corpus`]: the JSONL interchange format for chat messages (parsing and rendering).
//! - [`store`]: everything persisted in SQL (messages, training runs, models, the training job
//!   queue), on SQLite or PostgreSQL; the only module with SQL.
//! - [`engine`]: the language model: tokenizer, transformer, training, checkpoints, sampling.
//! - [`consent`]: which channels are collected and who opted out, cached for the hot path.
//! - [`shards`]: which gateway shards a process runs and which guilds that gives it.
//! - [`scrub`]: credentials, e-mail addresses and phone numbers out of messages before storage.
//! - [`ratelimit`]: reply cool-downs per user and channel, and the per-channel cap.
//! - [`reply_modes`]: where mynah speaks: answering mentions, joining in now and then, or not.
//! - [`policy`]: the single should-we-train decision with its reasons.
//! - [`fallback`]: the keyword responder used while a guild has no model.
//! - [`models`]: the model lifecycle: the registry under `models/`, the training slot, serving,
//!   bundles and remote training.
//! - [`render`]: plain-text renderings of service results for Discord and the CLI.
//! - [`plot`]: the PNG pictures (a guild's learning, a run's loss curve); pure, with a bundled font.
//! - [`text`]: making text safe to send to Discord: length limits, mentions that cannot ping.
//! - [`scheduler`]: periodic retraining through the policy, one guild at a time.
//! - [`service`]: the operations that Discord commands, the HTTP API and the CLI share.
//! - [`app`]: starting and stopping a whole mynah (store, core, API, Discord, schedules).
//! - [`api`]: the axum HTTP API and the admins' status page, a thin adapter over [`service`].
//! - [`metrics`]: the Prometheus metrics' names, the recorder, and the text of a scrape.
//! - [`discord`]: the poise/serenity layer, a thin adapter over [`service`].
//! - [`devserver`]: a local Discord-compatible server for tests and the playground.
//! - [`playground`]: the terminal front-end that runs the real bot against the devserver.
//! - [`bench`]: `mynah bench`, the latency, throughput, quality and memory figures.
//! - [`worker`]: `mynah worker`, which trains the job queue's trainings on its own machine.
//! - [`cli`]: command-line parsing and the entry points of each subcommand.

pub mod api;
pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod consent;
pub mod corpus;
pub mod devserver;
pub mod discord;
pub mod engine;
pub mod fallback;
pub mod metrics;
pub mod models;
pub mod playground;
pub mod plot;
pub mod policy;
pub mod ratelimit;
pub mod render;
pub mod reply_modes;
pub mod scheduler;
pub mod scrub;
pub mod service;
pub mod shards;
pub mod store;
pub mod text;
pub mod worker;

/// The crate version, reported by the API and stats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
