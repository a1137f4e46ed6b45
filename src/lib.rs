//! mynah: a Discord bot that learns to talk like its server.
//!
//! The crate is laid out by responsibility:
//! - [`config`]: typed configuration parsed once from environment variables.
//! - [`corpus`]: the JSONL interchange format for chat messages (parsing and rendering).
//! - [`store`]: everything persisted in SQL (messages, training runs, models); the only module with SQL.
//! - [`engine`]: the language model: tokenizer, transformer, training, checkpoints, sampling.
//! - [`consent`]: which channels are collected and who opted out, cached for the hot path.
//! - [`scrub`]: credentials, e-mail addresses and phone numbers out of messages before storage.
//! - [`ratelimit`]: reply cool-downs per user and channel, and the per-channel cap.
//! - [`policy`]: the single should-we-train decision with its reasons.
//! - [`fallback`]: the keyword responder used while a guild has no model.
//! - [`models`]: the on-disk model registry under `models/` (current-model pointers per guild).
//! - [`render`]: plain-text renderings of service results for Discord and the CLI.
//! - [`serving`]: the per-guild models that answer, and the generation thread.
//! - [`training`]: the one-at-a-time training slot with its progress and cancellation.
//! - [`scheduler`]: periodic retraining through the policy, one guild at a time.
//! - [`service`]: the operations that Discord commands, the HTTP API and the CLI share.
//! - [`api`]: the axum HTTP API, a thin adapter over [`service`].
//! - [`discord`]: the poise/serenity layer, a thin adapter over [`service`].
//! - [`devserver`]: a local Discord-compatible server for tests and the playground.
//! - [`playground`]: the terminal front-end that runs the real bot against the devserver.
//! - [`bench`]: `mynah bench`, the latency, throughput, quality and memory figures.
//! - [`bundle`]: model bundles (a checkpoint as one tar archive) with strict unpacking.
//! - [`remote`]: training for another instance: pull its corpus, train here, push the model.
//! - [`cli`]: command-line parsing and the entry points of each subcommand.

pub mod api;
pub mod bench;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod consent;
pub mod corpus;
pub mod devserver;
pub mod discord;
pub mod engine;
pub mod fallback;
pub mod models;
pub mod playground;
pub mod policy;
pub mod ratelimit;
pub mod remote;
pub mod render;
pub mod scheduler;
pub mod scrub;
pub mod service;
pub mod serving;
pub mod store;
pub mod text;
pub mod training;

/// The crate version, reported by the API and stats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
