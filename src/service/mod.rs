//! The operations the Discord commands, the HTTP API and the CLI share. Adapters translate their
//! input into these calls and the results into their own output; nothing here knows about
//! Discord or HTTP, and the adapters reach the store, the models and the consent cache only
//! through [`Core`]'s operations. One file per kind of operation:
//!
//! - [`types`]: the requests and answers.
//! - `status`: stats, status, the retraining policy's decisions, the run history.
//! - `training`: starting, watching and cancelling a training run; `curves` records its loss
//!   curve as it trains.
//! - `plots`: the pictures (a guild's learning, a run's loss curve) from the store's figures.
//! - `models`: installing a model trained elsewhere.
//! - `replies`: answering mentions, cool-downs, replies in flight.
//! - `corpus`: ingest, import, export and read-back bookkeeping.
//! - `privacy`: consent and deletion.
//! - `overview`: what the status page and a metrics scrape read at the time they are served.
//! - `voices`: each serving model's voice (counts, words, copy index), kept in step with the store.

mod corpus;
mod curves;
mod deleted;
mod models;
mod overview;
mod plots;
mod privacy;
mod queue;
mod removals;
mod replies;
mod shared;
mod status;
mod training;
pub mod types;
mod voices;
mod workers;

pub use corpus::{import_jsonl, import_text, ImportSummary};
pub use overview::{Scrape, ScrapedModel};
pub use privacy::{ChannelChange, ChannelList, MyData};
pub use queue::Cancelled;
pub use replies::InFlight;
pub use types::*;
pub use workers::Worked;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::config::Config;
use crate::consent::Consent;
use crate::engine::checkpoint::Loaded;
use crate::engine::EngineError;
use crate::models::serving::Serving;
use crate::models::trainer::{Trainer, TrainingState};
use crate::policy::Decision;
use crate::ratelimit::Limiter;
use crate::reply_modes::ReplyModes;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("not training: {} (use force to train anyway)", decision.reason)]
    NotNeeded { guild_id: String, decision: Decision },
    /// The slot is taken; `guild_id` is the guild training now, never shown to another guild.
    #[error("a training run is already in progress {}", if guild_id.as_deref() == Some(requested.as_str()) {
        "for this guild"
    } else {
        "for another guild; try again when it has finished"
    })]
    AlreadyRunning { guild_id: Option<String>, requested: String },
    #[error("no guild has any collected messages yet, so there is nothing to train on")]
    NothingToTrain,
    #[error("several guilds have messages: say which one with guild_id ({0})")]
    GuildAmbiguous(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("mynah is shutting down")]
    ShuttingDown,
    #[error("the model bundle was refused: {0}")]
    BadBundle(String),
    #[error("another model upload is being installed; try again when it has finished")]
    UploadInProgress,
    /// Another guild's run holds the slot: this request waits its turn (`position`, from 1).
    #[error("another server's model is training; this one is queued (position {position}) and starts as soon as it can")]
    Queued { guild_id: String, position: usize },
    /// Handed to the training workers (`MYNAH_TRAINING=workers`): queued as `job`, with
    /// `ahead` jobs of other guilds before it.
    #[error("handed to the training workers (job {job}, {ahead} ahead of it); the new model serves when it is ready")]
    Delegated { guild_id: String, job: i64, ahead: u64 },
    #[error("the training engine failed: {0}")]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not draw the picture: {0}")]
    Plot(crate::plot::PlotError),
}

impl ServiceError {
    /// Whether the error is about the request (its text is meant for the person who asked and
    /// is safe to show), rather than a fault of mynah's to log and apologise for.
    pub fn is_user_error(&self) -> bool {
        match self {
            ServiceError::NotNeeded { .. }
            | ServiceError::AlreadyRunning { .. }
            | ServiceError::NothingToTrain
            | ServiceError::GuildAmbiguous(_)
            | ServiceError::BadRequest(_)
            | ServiceError::ShuttingDown
            | ServiceError::BadBundle(_)
            | ServiceError::UploadInProgress
            | ServiceError::Queued { .. }
            | ServiceError::Delegated { .. }
            | ServiceError::Engine(EngineError::NotEnoughData(_)) => true,
            ServiceError::Engine(_) | ServiceError::Store(_) | ServiceError::Plot(_) => false,
        }
    }
}

/// Shared state of a running mynah, behind an `Arc`. Its parts are private: adapters use its
/// operations.
#[derive(Debug)]
pub struct Core {
    config: Arc<Config>,
    store: Store,
    serving: Serving,
    trainer: Arc<Trainer>,
    consent: Consent,
    /// Where mynah speaks: each channel's reply mode.
    reply_modes: ReplyModes,
    limiter: Limiter,
    events: tokio::sync::broadcast::Sender<CoreEvent>,
    device: Device,
    started: Instant,
    /// Set by [`Core::shutdown`]: no new replies or trainings start.
    closing: AtomicBool,
    replies_in_flight: AtomicUsize,
    /// Messages and channels Discord deleted lately; history read before cannot restore them.
    deleted: deleted::Deleted,
    /// Removals from Discord not applied to the store yet (it failed); retried until they are.
    pending: removals::PendingRemovals,
    /// Held while a model bundle is received and installed: one at a time.
    uploads: tokio::sync::Mutex<()>,
    /// Training requests waiting for the slot, one per guild.
    queue: queue::TrainQueue,
    /// Guild names as Discord last gave them (for people: the status page), by guild ID.
    guild_names: std::sync::RwLock<std::collections::HashMap<String, String>>,
}

impl Core {
    /// Builds the core: picks the device, marks runs a crash interrupted, loads the models.
    pub async fn open(config: Config, store: Store) -> Result<Arc<Core>, ServiceError> {
        let device = crate::engine::device(&config.engine.device)?;
        let interrupted = store.mark_interrupted_runs().await?;
        if interrupted > 0 {
            tracing::warn!(
                runs = interrupted,
                "training runs were interrupted by a stop; marked interrupted"
            );
        }
        let consent =
            Consent::new(config.collect.clone(), store.channel_settings().await?, store.opt_outs().await?);
        consent.set_forgotten(store.forget_marks().await?);
        let reply_modes = ReplyModes::new(store.channel_replies().await?);
        let core = Arc::new(Core {
            limiter: Limiter::new(config.limits),
            config: Arc::new(config),
            store,
            serving: Serving::new(),
            trainer: Arc::new(Trainer::new()),
            consent,
            reply_modes,
            events: tokio::sync::broadcast::channel(16).0,
            device,
            started: Instant::now(),
            closing: AtomicBool::new(false),
            replies_in_flight: AtomicUsize::new(0),
            deleted: deleted::Deleted::default(),
            pending: removals::PendingRemovals::default(),
            uploads: tokio::sync::Mutex::new(()),
            queue: queue::TrainQueue::default(),
            guild_names: Default::default(),
        });
        queue::TrainQueue::spawn_pump(&core);
        core.load_models().await;
        // Removals a previous run could not apply come before anything reads the corpus.
        core.load_pending_removals().await?;
        let left = core.apply_pending_removals().await;
        if left > 0 {
            tracing::warn!(pending = left, "removals from Discord still cannot be applied; retrying");
        }
        Ok(core)
    }

    /// The configuration the core was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Events from now on (new models), for announcements.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<CoreEvent> {
        self.events.subscribe()
    }

    /// Deletes what a stop interrupted under `models/`: half-written runs and bundle uploads.
    /// Only for the serving process at start-up (`app::start`), when nothing of its own writes
    /// them; a one-shot command next to a live bot must not.
    pub async fn remove_model_leftovers(&self) {
        let root = self.config.models_dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            crate::models::registry::guild_dirs(&root)
                .iter()
                .flat_map(|(_, dir)| crate::models::registry::remove_leftovers(dir))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if !removed.is_empty() {
            tracing::info!(leftovers = ?removed, "deleted what an interrupted training or upload left");
        }
    }

    /// Closes the database (after [`Core::shutdown`], or at the end of a one-shot command).
    pub async fn close(&self) {
        self.store.close().await;
    }

    async fn load_models(self: &Arc<Self>) {
        // Models beyond what may stay go before anything loads.
        let root = self.config.models_dir.clone();
        let guilds = tokio::task::spawn_blocking(move || crate::models::registry::guild_dirs(&root))
            .await
            .unwrap_or_default();
        for (guild, _) in guilds {
            self.prune_runs(&guild).await;
        }
        let core = self.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            core.serving.load_all(&core.config.models_dir, &core.device, |g| core.config.shards.holds(g))
        });
        if let Err(e) = loaded.await {
            tracing::error!(error = %e, "loading models panicked");
        }
    }

    /// Stops taking work and winds down: no new trainings or replies, the running training is
    /// cancelled and recorded, replies in flight finish; waits at most `grace` for all that.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + grace;
        if self.cancel_training() {
            tracing::info!("cancelled the running training; the current model stays");
        }
        let mut watch = self.trainer.subscribe();
        while watch.borrow_and_update().state != TrainingState::Idle {
            if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                tracing::warn!("the training did not stop in time");
                break;
            }
        }
        while self.replies_in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Guild IDs name directories under `models/`: only letters, digits, `-` and `_`.
pub fn check_guild_id(guild_id: &str) -> Result<(), ServiceError> {
    if guild_id.is_empty() || !guild_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ServiceError::BadRequest(format!("guild id {guild_id:?} is not a valid guild id")));
    }
    Ok(())
}

/// The run directory's name (`run-12`), which identifies a model.
fn run_name(m: &Loaded) -> String {
    m.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
