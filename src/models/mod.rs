//! The model lifecycle, from training to serving: a model is a directory with a manifest
//! (`meta.json`, [`crate::engine::checkpoint::Meta`]) under `models/<guild>/<run>/`, and
//! `models/<guild>/CURRENT` names the run that serves the guild.
//!
//! - [`bases`]: pretrained bases under `models/base/<name>/`: import, list, remove, choose.
//! - [`prompts`]: the channels' contexts kept between replies, bounded in memory.
//! - [`registry`]: the on-disk layout: finding each guild's current run, and switching it.
//! - [`trainer`]: the one-at-a-time training slot with its progress and cancellation.
//! - [`serving`]: the loaded models that answer, and the generation thread.
//! - [`bundle`]: a run directory as one tar archive, unpacked strictly.
//! - [`remote`]: training for another instance: pull its corpus, train here, push the bundle.

pub mod bases;
pub mod bundle;
pub mod prompts;
pub mod registry;
pub mod remote;
pub mod serving;
pub mod trainer;

pub use crate::engine::checkpoint::FILES as CHECKPOINT_FILES;
pub use registry::CURRENT;
