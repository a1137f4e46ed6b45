//! Training runs: the request (validated, checked against the policy), the run on its own
//! thread, and how its end is recorded and served.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use super::queue::Cancelled;
use super::{check_guild_id, Core, CoreEvent, ServiceError, TrainAccepted, TrainRequest};
use crate::corpus::Record;
use crate::engine::checkpoint::{Loaded, Meta};
use crate::engine::run::{self, RunSpec};
use crate::engine::tokenizer::ChatLine;
use crate::engine::train::{Report, TrainOptions};
use crate::engine::EngineError;
use crate::models::trainer::{Finished, Slot, Trainer};
use crate::models::{bases, registry};
use crate::store::{RunOutcome, RunResult, TrainingClaim};

/// The work of one training run, moved to its thread.
struct Job {
    lines: Vec<ChatLine>,
    opts: TrainOptions,
    /// The pretrained base to fine-tune (`models/base/<name>/`), if one is installed and chosen.
    base: Option<bases::Base>,
    guild_dir: PathBuf,
    run: String,
    corpus_span: (Option<String>, Option<String>),
}

impl Core {
    /// Starts a training run if the policy (or `force`) allows and none is running. The run
    /// goes on in the background; the new model serves as soon as it is saved.
    pub async fn request_training(
        self: &Arc<Self>,
        req: TrainRequest,
    ) -> Result<TrainAccepted, ServiceError> {
        self.start_training(req, false).await
    }

    /// [`Core::request_training`]; `from_queue` when the queue hands over its next request.
    pub(super) async fn start_training(
        self: &Arc<Self>,
        req: TrainRequest,
        from_queue: bool,
    ) -> Result<TrainAccepted, ServiceError> {
        if let Some(e) = req.epochs {
            if !(1..=1000).contains(&e) {
                return Err(ServiceError::BadRequest(format!("epochs must be 1 to 1000, not {e}")));
            }
        }
        if let Some(m) = req.max_minutes {
            if !(m > 0.0 && m <= 10_000.0) {
                return Err(ServiceError::BadRequest(format!("max_minutes must be above 0, not {m}")));
            }
        }
        if self.is_closing() {
            return Err(ServiceError::ShuttingDown);
        }
        let guild_id = self.resolve_guild(req.guild_id.as_deref()).await?;
        check_guild_id(&guild_id)?;
        let shards = self.config.shards;
        if !shards.holds(&guild_id) {
            // Its model would be trained here but served by the process that runs its shard.
            return Err(ServiceError::BadRequest(format!(
                "guild {guild_id} is served by gateway shard {}; this process runs shards {shards}: \
                 ask that process",
                shards.shard_of(&guild_id)
            )));
        }
        let decision = self.should_train(&guild_id).await?;
        if self.config.training == crate::config::TrainingMode::Workers {
            if !req.force && !decision.should_train {
                return Err(ServiceError::NotNeeded { guild_id, decision });
            }
            return Err(self.hand_to_workers(&req, &guild_id).await);
        }
        let busy = || ServiceError::AlreadyRunning {
            guild_id: self.trainer.view().guild_id,
            requested: guild_id.clone(),
        };
        if self.trainer.view().guild_id.as_deref() == Some(guild_id.as_str()) && self.trainer.is_running() {
            return Err(busy());
        }
        // Another guild trains (or others wait): this one waits its turn.
        if self.trainer.is_running() || (!from_queue && self.queue.waiting() > 0) {
            let wanted =
                req.force || decision.should_train || decision.code == crate::policy::Reason::AlreadyRunning;
            if !wanted {
                return Err(ServiceError::NotNeeded { guild_id, decision });
            }
            let position = self.queue.push(TrainRequest { guild_id: Some(guild_id.clone()), ..req });
            return Err(ServiceError::Queued { guild_id, position });
        }
        if !req.force && !decision.should_train {
            return Err(ServiceError::NotNeeded { guild_id, decision });
        }
        let slot = self.trainer.try_begin(&guild_id).ok_or_else(busy)?;
        // Across processes (bots on one PostgreSQL, a `mynah train` beside the bot), the
        // database decides who trains the guild.
        let claim = self.store.claim_training(&guild_id).await?.ok_or_else(|| {
            ServiceError::AlreadyRunning { guild_id: Some(guild_id.clone()), requested: guild_id.clone() }
        })?;
        let records = self.corpus_records(Some(&guild_id)).await?;
        if records.len() < 20 {
            return Err(ServiceError::Engine(EngineError::NotEnoughData(format!(
                "{} messages; at least 20 are needed",
                records.len()
            ))));
        }
        let lines: Vec<ChatLine> = records.iter().map(Record::chat_line).collect();
        let epochs = req.epochs.unwrap_or(self.config.engine.epochs as u32);
        let newest = self.store.newest_ms(&guild_id).await?;
        let run_id = self
            .store
            .start_run(
                &guild_id,
                req.trigger.as_str(),
                req.requested_by.as_deref(),
                epochs as i64,
                lines.len() as i64,
                newest,
            )
            .await?;
        self.trainer.set_run(run_id);
        tracing::info!(guild = %guild_id, run = run_id, trigger = ?req.trigger, force = req.force, "training started");
        let (opts, base) = self.training_setup(&guild_id, epochs, req.max_minutes);
        let guild_dir = self.config.models_dir.join(&guild_id);
        let job = Job {
            lines,
            opts,
            base,
            run: registry::run_name(&guild_dir, run_id),
            guild_dir,
            corpus_span: (
                records.first().map(|r| r.timestamp.clone()),
                records.last().map(|r| r.timestamp.clone()),
            ),
        };
        let accepted = TrainAccepted {
            guild_id: guild_id.clone(),
            run_id,
            epochs,
            corpus_messages: records.len() as u64,
            decision,
        };
        let core = self.clone();
        tokio::spawn(async move { core.run_training(job, guild_id, run_id, (slot, claim)).await });
        Ok(accepted)
    }

    /// The options of a run of `epochs` (at most `max_minutes`, else the configured limit) and
    /// the base it fine-tunes, if one is chosen and installed.
    pub(super) fn training_setup(
        &self,
        guild_id: &str,
        epochs: u32,
        max_minutes: Option<f64>,
    ) -> (TrainOptions, Option<bases::Base>) {
        let mut opts = TrainOptions::new(self.config.engine.preset.clone());
        opts.epochs = epochs as usize;
        opts.max_seconds = Some(max_minutes.unwrap_or(self.config.engine.max_minutes) * 60.0);
        opts.lora = self.config.engine.lora;
        let base = match bases::resolve(&self.config.models_dir, &self.config.engine.base) {
            Ok(base) => base,
            Err(e) => {
                // An operator's MYNAH_BASE names a base that is gone: say so, train from scratch.
                tracing::warn!(guild = %guild_id, "{e}; training from scratch");
                None
            }
        };
        (opts, base)
    }

    /// Asks a running training to stop; `false` if none runs.
    pub fn cancel_training(&self) -> bool {
        self.trainer.cancel()
    }

    /// Cancels `guild`'s running or queued training: an admin of one guild cannot stop
    /// another's run (nor learn that there is one).
    pub fn cancel_training_of(&self, guild: &str) -> Cancelled {
        if self.trainer.view().guild_id.as_deref() == Some(guild) && self.trainer.cancel() {
            Cancelled::Running
        } else if self.queue.remove(guild) {
            Cancelled::Queued
        } else {
            Cancelled::Nothing
        }
    }

    /// Runs one training on a dedicated thread and records what came of it.
    async fn run_training(
        self: Arc<Self>,
        job: Job,
        guild_id: String,
        run_id: i64,
        (slot, claim): (Slot, TrainingClaim),
    ) {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (device, trainer, cancel) = (self.device.clone(), self.trainer.clone(), slot.cancel.clone());
        let (mut curve, curve_writer) = super::curves::record(self.store.clone(), run_id);
        let spawned = std::thread::Builder::new().name("mynah-train".into()).spawn(move || {
            let result = train_and_install(job, &device, &cancel, &trainer, &mut curve);
            if let Ok((_, report)) = &result {
                curve.finish(report);
            }
            // The curve's sender goes with this thread: its writer then finishes.
            drop(curve);
            let _ = tx.send(result);
        });
        let outcome = match spawned {
            Ok(_) => rx
                .await
                .unwrap_or_else(|_| Err(EngineError::BadConfig("the training thread panicked".into()))),
            Err(e) => Err(EngineError::Io(e)),
        };
        let seconds = started.elapsed().as_secs_f64();
        // The whole curve is stored before the run reads as finished.
        if curve_writer.await.is_err() {
            tracing::warn!(run = run_id, "the loss-curve writer stopped early");
        }
        let (result, val) = match outcome {
            Ok((loaded, report)) => {
                let val = Some(report.val_bits_per_byte);
                let result = succeeded(&loaded.meta);
                self.serve_new_model(&guild_id, run_id, Arc::new(loaded.serving_only())).await;
                tracing::info!(guild = %guild_id, run = run_id, val_bpb = report.val_bits_per_byte, seconds, "new model serving");
                (result, val)
            }
            Err(EngineError::Cancelled) => {
                tracing::info!(guild = %guild_id, run = run_id, "training cancelled; the current model stays");
                (RunResult { outcome: RunOutcome::Cancelled, ..RunResult::default() }, None)
            }
            Err(e) => {
                tracing::error!(guild = %guild_id, run = run_id, error = %e, "training failed; the current model stays");
                (
                    RunResult {
                        outcome: RunOutcome::Failed,
                        error: Some(e.to_string()),
                        ..RunResult::default()
                    },
                    None,
                )
            }
        };
        if let Err(e) = self.store.finish_run(run_id, &result).await {
            tracing::error!(error = %e, "could not record the end of a training run");
        }
        metrics::counter!(crate::metrics::TRAINING_RUNS, "outcome" => result.outcome.as_str()).increment(1);
        self.trainer.finish(Finished {
            run_id,
            guild_id,
            outcome: result.outcome,
            error: result.error,
            val_bits_per_byte: val,
            seconds,
        });
        drop(slot);
        claim.release().await;
        // The next guild waiting, if any, starts now.
        self.queue.wake();
    }

    /// Deletes the guild's replaced models beyond `MYNAH_KEEP_RUNS`, and those that learned
    /// from messages removed since: weights must not keep what members took back.
    pub(super) async fn prune_runs(&self, guild_id: &str) {
        let stale = match self.store.stale_runs(guild_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(guild = guild_id, error = %e, "not pruning old models: staleness unknown");
                return;
            }
        };
        let (dir, keep) = (self.config.models_dir.join(guild_id), self.config.keep_runs);
        let pruned = tokio::task::spawn_blocking(move || {
            crate::models::registry::prune(&dir, keep, |run| stale.iter().any(|s| s == run))
        })
        .await
        .unwrap_or_default();
        if !pruned.is_empty() {
            tracing::info!(guild = guild_id, runs = ?pruned, "deleted replaced models");
        }
    }

    /// Records a model that is already current on disk, serves it and announces it.
    pub(super) async fn serve_new_model(&self, guild_id: &str, run_id: i64, loaded: Arc<Loaded>) {
        let meta = &loaded.meta;
        if let Err(e) = self
            .store
            .record_model(
                guild_id,
                run_id,
                &loaded.dir.display().to_string(),
                meta.params as i64,
                meta.val_bits_per_byte,
                meta.corpus_messages as i64,
            )
            .await
        {
            tracing::error!(error = %e, "could not record the new model");
        }
        let previous = self.serving.get(guild_id).and_then(|m| m.meta.val_bits_per_byte);
        let val_bits_per_byte = meta.val_bits_per_byte.unwrap_or(f64::NAN);
        self.serving.install(guild_id, loaded);
        self.prune_runs(guild_id).await;
        if let Err(e) = self.build_voice(guild_id).await {
            tracing::warn!(error = %e, "could not build the new model's voice");
        }
        // Nobody listening (no Discord connection) is fine.
        let _ = self.events.send(CoreEvent::ModelReady {
            guild_id: guild_id.to_string(),
            run_id,
            val_bits_per_byte,
            previous_val_bits_per_byte: previous,
        });
    }
}

/// The row of a run that produced the model described by `meta`.
pub(super) fn succeeded(meta: &Meta) -> RunResult {
    RunResult {
        outcome: RunOutcome::Succeeded,
        error: None,
        steps: Some(meta.steps as i64),
        tokens: Some(meta.tokens as i64),
        train_loss: meta.train_loss.map(f64::from),
        val_bpb: meta.val_bits_per_byte,
    }
}

/// Trains and saves the run, then makes it the guild's current one.
fn train_and_install(
    job: Job,
    device: &Device,
    cancel: &AtomicBool,
    trainer: &Trainer,
    curve: &mut super::curves::CurveSink,
) -> Result<(Loaded, Report), EngineError> {
    let preset_label = match &job.base {
        Some(base) => format!("fine-tuned from base {}", base.manifest.name),
        None => job.opts.preset.name.clone(),
    };
    let spec = RunSpec {
        lines: &job.lines,
        opts: &job.opts,
        base: job.base.as_ref().map(bases::Base::run),
        parent: &job.guild_dir,
        name: &job.run,
        preset_label,
        corpus_span: job.corpus_span.clone(),
    };
    let (loaded, report, _) = run::train_and_save(&spec, device, cancel, |p| {
        trainer.report(p);
        curve.observe(p);
    })?;
    registry::set_current(&job.guild_dir, &job.run)?;
    Ok((loaded, report))
}
