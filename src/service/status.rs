//! What the service reports: a guild's stats, the process-wide status, the retraining policy's
//! decisions and the history of training runs.

use std::sync::Arc;

use super::{
    run_name, Collection, Core, GuildStats, GuildStatus, Mode, ModeReason, ModelView, ServiceError, Status,
};
use crate::engine::checkpoint::Loaded;
use crate::models::trainer::TrainingView;
use crate::policy::{self, Decision, Inputs};
use crate::store::{Counts, RunRow, Staleness};

impl Core {
    /// The guild's mode, why, and its serving model's description.
    async fn mode_of(&self, guild_id: &str) -> Result<(Mode, ModeReason, Option<ModelView>), ServiceError> {
        if let Some(m) = self.serving.get(guild_id) {
            let view = self.view(guild_id, &m).await?;
            let run = view.run.clone();
            let (mode, reason) = match &view.stale {
                Some(s) if self.config.stale_fallback => {
                    (Mode::Fallback, ModeReason::StaleSilenced { run, reason: s.reason.clone() })
                }
                Some(s) => (Mode::Model, ModeReason::StaleModel { run, reason: s.reason.clone() }),
                None => (Mode::Model, ModeReason::Model { run }),
            };
            return Ok((mode, reason, Some(view)));
        }
        Ok(match self.serving.broken(guild_id) {
            Some(reason) => {
                // Paths relative to the models directory: where the operator keeps files is
                // nobody else's business.
                let root = self.config.models_dir.display().to_string();
                let reason = if root.is_empty() { reason } else { reason.replace(&root, "models") };
                (Mode::Fallback, ModeReason::Unusable { reason }, None)
            }
            None => (Mode::Fallback, ModeReason::NoModel, None),
        })
    }

    /// The model's public description, with its staleness from the store.
    async fn view(&self, guild_id: &str, m: &Loaded) -> Result<ModelView, ServiceError> {
        let mut v = view(guild_id, m);
        v.stale = self.store.staleness(guild_id, &v.run).await?;
        Ok(v)
    }

    /// The staleness of the guild's serving model, if it has one and it is stale.
    pub(super) async fn staleness(&self, guild_id: &str) -> Result<Option<Staleness>, ServiceError> {
        match self.serving.get(guild_id) {
            Some(m) => Ok(self.store.staleness(guild_id, &run_name(&m)).await?),
            None => Ok(None),
        }
    }

    /// The policy's decision for one guild, from the store and the serving models.
    pub async fn should_train(&self, guild_id: &str) -> Result<Decision, ServiceError> {
        let counts = self.store.counts(guild_id, None).await?;
        let last = self.store.last_successful_run(guild_id).await?;
        let new_messages = match &last {
            Some(run) => {
                self.store.messages_after(guild_id, run.corpus_until_ms.unwrap_or(run.finished_ms)).await?
            }
            None => counts.messages,
        };
        let inputs = Inputs {
            total_messages: counts.messages,
            new_messages,
            hours_since_last_run: last
                .map(|run| (crate::store::now_ms() - run.finished_ms) as f64 / 3_600_000.0),
            has_model: self.serving.get(guild_id).is_some(),
            stale_hours: self
                .staleness(guild_id)
                .await?
                .map(|s| (crate::store::now_ms() - s.since_ms).max(0) as f64 / 3_600_000.0),
            training_running: self.trainer.is_running(),
        };
        Ok(policy::should_train(&inputs, &self.config.thresholds))
    }

    /// The decisions for every guild that has messages.
    pub async fn should_train_all(&self) -> Result<Vec<(String, Decision)>, ServiceError> {
        let mut out = Vec::new();
        for g in self.store.guild_summaries().await? {
            let d = self.should_train(&g.guild_id).await?;
            out.push((g.guild_id, d));
        }
        Ok(out)
    }

    pub async fn stats(&self, guild_id: &str, channel_id: Option<&str>) -> Result<GuildStats, ServiceError> {
        let counts = self.store.counts(guild_id, channel_id).await?;
        let (mode, mode_reason, model) = self.mode_of(guild_id).await?;
        Ok(GuildStats {
            guild_id: guild_id.to_string(),
            counts,
            mode,
            mode_reason,
            model,
            training: self.training_of(guild_id),
            worker_job: self
                .store
                .open_job(guild_id)
                .await?
                .map(|(job, state)| super::WorkerJob { job, state }),
            collection: match channel_id {
                Some(c) => Collection::Channel { collected: self.consent.collects(guild_id, c) },
                None => Collection::Default { channels: self.consent.describe_default() },
            },
            should_train: self.should_train(guild_id).await?,
            last_runs: self.store.runs(Some(guild_id), 3).await?,
        })
    }

    pub async fn status(&self) -> Result<Status, ServiceError> {
        let mut guilds = Vec::new();
        for g in self.store.guild_summaries().await? {
            let (mode, mode_reason, _) = self.mode_of(&g.guild_id).await?;
            guilds.push(GuildStatus {
                guild_id: g.guild_id,
                messages: g.messages,
                authors: g.authors,
                channels: g.channels,
                mode,
                mode_reason,
            });
        }
        let mut models = Vec::new();
        for (g, m) in self.serving.all() {
            models.push(self.view(&g, &m).await?);
        }
        Ok(Status {
            mode: if models.is_empty() { Mode::Fallback } else { Mode::Model },
            model: if models.len() == 1 { models.first().cloned() } else { None },
            models,
            training: self.trainer.view(),
            guilds,
            last_runs: self.store.runs(None, 5).await?,
            collection: format!(
                "default: {}; admins' choices per channel apply",
                self.consent.describe_default()
            ),
            engine: format!("candle on {}", self.config.engine.device),
            uptime_seconds: self.started.elapsed().as_secs(),
            version: crate::VERSION,
        })
    }

    /// Re-reads `models/` (after an operator copied a model in, say) and returns the status.
    pub async fn initialize(self: &Arc<Self>) -> Result<Status, ServiceError> {
        self.load_models().await;
        self.build_voices_later();
        self.status().await
    }

    /// The newest training runs, of one guild or all.
    pub async fn runs(&self, guild_id: Option<&str>, limit: u32) -> Result<Vec<RunRow>, ServiceError> {
        Ok(self.store.runs(guild_id, i64::from(limit)).await?)
    }

    /// Message counts of a guild (and of one of its channels).
    pub async fn counts(&self, guild_id: &str, channel_id: Option<&str>) -> Result<Counts, ServiceError> {
        Ok(self.store.counts(guild_id, channel_id).await?)
    }

    /// The guild a one-guild request is about: the one named, or the only one with messages.
    pub async fn resolve_guild(&self, guild_id: Option<&str>) -> Result<String, ServiceError> {
        if let Some(g) = guild_id {
            return Ok(g.to_string());
        }
        let guilds = self.store.guild_summaries().await?;
        match guilds.as_slice() {
            [] => Err(ServiceError::NothingToTrain),
            [only] => Ok(only.guild_id.clone()),
            many => Err(ServiceError::GuildAmbiguous(
                many.iter().map(|g| g.guild_id.as_str()).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// The running training's progress, or how the last one ended.
    pub fn training(&self) -> TrainingView {
        self.trainer.view()
    }

    /// The training as one guild may see it: its own run, or its own last result; another
    /// guild's run shows as idle.
    pub fn training_of(&self, guild_id: &str) -> TrainingView {
        let view = self.trainer.view();
        let own = view.guild_id.as_deref() == Some(guild_id);
        TrainingView {
            state: if own { view.state } else { crate::models::trainer::TrainingState::Idle },
            guild_id: Some(guild_id.to_string()),
            run_id: view.run_id.filter(|_| own),
            progress: view.progress.filter(|_| own),
            last: view.last.filter(|l| l.guild_id == guild_id),
        }
    }

    /// Whether a training run holds the slot.
    pub fn is_training(&self) -> bool {
        self.trainer.is_running()
    }

    /// Every change of [`Core::training`] from now on.
    pub fn watch_training(&self) -> tokio::sync::watch::Receiver<TrainingView> {
        self.trainer.subscribe()
    }

    /// The guild's serving model, if it has one.
    pub fn model(&self, guild_id: &str) -> Option<Arc<Loaded>> {
        self.serving.get(guild_id)
    }
}

fn view(guild_id: &str, m: &Loaded) -> ModelView {
    ModelView {
        guild_id: guild_id.to_string(),
        run: run_name(m),
        stale: None,
        params: m.meta.params,
        preset: m.meta.preset.clone(),
        trained_at: m.meta.trained_at.clone(),
        val_bits_per_byte: m.meta.val_bits_per_byte,
        corpus_messages: m.meta.corpus_messages,
        training_seconds: m.meta.training_seconds,
    }
}
