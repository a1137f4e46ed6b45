//! Training on workers (`MYNAH_TRAINING=workers`, PostgreSQL): a serving process hands a
//! training request to the job queue; a `mynah worker` process claims it, trains, and stores the
//! model as a bundle in the database; the process serving the guild hears of it by `NOTIFY`
//! (`shared`), validates the bundle like any upload and serves it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::queue::Cancelled;
use super::{Core, ServiceError, TrainRequest};
use crate::config::TrainingMode;
use crate::corpus::Record;
use crate::engine::run::{self, RunSpec};
use crate::engine::tokenizer::ChatLine;
use crate::engine::EngineError;
use crate::store::{Enqueued, Job, JobRequest, JobState, Lease, RunOutcome, RunResult};

/// What [`Core::work_one`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Worked {
    /// No job waited.
    Idle,
    /// Another process trains the guild now: the job went back to the queue.
    Busy { job: i64 },
    /// The job ended so (succeeded, failed, cancelled; interrupted when the worker stops).
    Ran { job: i64, guild_id: String, run_id: i64, outcome: RunOutcome },
}

impl Core {
    /// Queues `req` for the workers. The answer to the request is an error either way:
    /// [`ServiceError::Delegated`], or why it was not queued.
    pub(super) async fn hand_to_workers(&self, req: &TrainRequest, guild_id: &str) -> ServiceError {
        let job = JobRequest {
            guild_id: guild_id.to_string(),
            trigger: req.trigger.as_str().to_string(),
            requested_by: req.requested_by.clone(),
            epochs: req.epochs.map(i64::from),
            max_minutes: req.max_minutes,
        };
        match self.store.enqueue_job(&job).await {
            Ok(Enqueued::New { job, ahead }) => {
                tracing::info!(guild = guild_id, job, ahead, "training handed to the workers");
                ServiceError::Delegated { guild_id: guild_id.to_string(), job, ahead }
            }
            Ok(Enqueued::AlreadyOpen { .. }) => ServiceError::AlreadyRunning {
                guild_id: Some(guild_id.to_string()),
                requested: guild_id.to_string(),
            },
            Err(e) => e.into(),
        }
    }

    /// Cancels `guild`'s training, here or on the workers.
    pub async fn cancel_training_for(&self, guild: &str) -> Result<Cancelled, ServiceError> {
        if self.config.training == TrainingMode::Here {
            return Ok(self.cancel_training_of(guild));
        }
        Ok(match self.store.cancel_job(guild).await? {
            Some(JobState::Running) => Cancelled::Running,
            Some(_) => Cancelled::Queued,
            None => Cancelled::Nothing,
        })
    }

    /// Claims the oldest waiting job and trains it, as the worker `worker`; `stop` asks the run
    /// to end (its job then goes back to the queue for another worker).
    pub async fn work_one(
        self: &Arc<Self>,
        worker: &str,
        stop: &Arc<AtomicBool>,
    ) -> Result<Worked, ServiceError> {
        let lease = self.config.worker_lease;
        let Some(job) = self.store.claim_job(worker, lease.as_millis() as i64).await? else {
            return Ok(Worked::Idle);
        };
        let guild = job.request.guild_id.clone();
        let Some(claim) = self.store.claim_training(&guild).await? else {
            self.store.release_job(job.id, worker).await?;
            return Ok(Worked::Busy { job: job.id });
        };
        if let Some(previous) = job.previous_run {
            let interrupted = RunResult {
                outcome: RunOutcome::Interrupted,
                error: Some("its worker stopped; the job was claimed again".into()),
                ..RunResult::default()
            };
            self.store.finish_run(previous, &interrupted).await?;
        }
        let worked = self.train_job(&job, worker, stop).await;
        claim.release().await;
        worked
    }

    async fn train_job(
        self: &Arc<Self>,
        job: &Job,
        worker: &str,
        stop: &Arc<AtomicBool>,
    ) -> Result<Worked, ServiceError> {
        let guild = job.request.guild_id.clone();
        // Removals the serving processes queued but could not apply stay out of the corpus.
        self.load_pending_removals().await?;
        self.apply_pending_removals().await;
        let records = self.corpus_records(Some(&guild)).await?;
        if records.len() < 20 {
            let error = format!("{} messages; at least 20 are needed", records.len());
            self.store.finish_job(job.id, worker, JobState::Failed, Some(&error)).await?;
            return Err(EngineError::NotEnoughData(error).into());
        }
        let lines: Vec<ChatLine> = records.iter().map(Record::chat_line).collect();
        let epochs = job.request.epochs.map_or(self.config.engine.epochs as u32, |e| e.clamp(1, 1000) as u32);
        let run_id = self
            .store
            .start_run(
                &guild,
                &job.request.trigger,
                job.request.requested_by.as_deref(),
                i64::from(epochs),
                lines.len() as i64,
                self.store.newest_ms(&guild).await?,
            )
            .await?;
        self.store.set_job_run(job.id, run_id).await?;
        tracing::info!(guild = %guild, job = job.id, run = run_id, attempt = job.attempts, "training a job");

        // The lease is renewed while the run trains; a cancel asked of the job, a lost lease or
        // the worker stopping ends the run.
        let cancel = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (store, worker, cancel, stop, id) =
                (self.store.clone(), worker.to_string(), cancel.clone(), stop.clone(), job.id);
            let lease = self.config.worker_lease;
            tokio::spawn(async move {
                loop {
                    for _ in 0..10 {
                        tokio::time::sleep(lease / 30).await;
                        if stop.load(Ordering::SeqCst) {
                            cancel.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                    match store.renew_lease(id, &worker, lease.as_millis() as i64).await {
                        Ok(Lease::Held) => {}
                        Ok(Lease::CancelAsked | Lease::Lost) => {
                            cancel.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!(job = id, error = %e, "could not renew the lease"),
                    }
                }
            })
        };
        let (opts, base) = self.training_setup(&guild, epochs, job.request.max_minutes);
        let (mut curve, curve_writer) = super::curves::record(self.store.clone(), run_id);
        let (device, flag) = (self.device.clone(), cancel.clone());
        let corpus_span =
            (records.first().map(|r| r.timestamp.clone()), records.last().map(|r| r.timestamp.clone()));
        let trained = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let dir = tempfile::tempdir()?;
            let spec = RunSpec {
                lines: &lines,
                opts: &opts,
                base: base.as_ref().map(crate::models::bases::Base::run),
                parent: dir.path(),
                name: "bundle",
                preset_label: match &base {
                    Some(b) => format!("fine-tuned from base {} (worker)", b.manifest.name),
                    None => format!("{} (worker)", opts.preset.name),
                },
                corpus_span,
            };
            let (loaded, report, run_dir) = run::train_and_save(&spec, &device, &flag, |p| curve.observe(p))?;
            curve.finish(&report);
            drop(curve);
            let bundle =
                crate::models::bundle::pack(&run_dir).map_err(|e| EngineError::BadConfig(e.to_string()))?;
            Ok((loaded.meta, bundle))
        })
        .await
        .unwrap_or_else(|e| Err(EngineError::BadConfig(format!("the training thread panicked: {e}"))));
        renewer.abort();
        if curve_writer.await.is_err() {
            tracing::warn!(run = run_id, "the loss-curve writer stopped early");
        }
        let max = self.config.bundle_max_bytes;
        let (result, state) = match trained {
            Ok((_, bundle)) if bundle.len() > max => {
                let error =
                    format!("the model bundle is {} MB, above MYNAH_BUNDLE_MAX_MB", bundle.len() >> 20);
                (
                    RunResult { outcome: RunOutcome::Failed, error: Some(error), ..RunResult::default() },
                    JobState::Failed,
                )
            }
            Ok((meta, bundle)) => {
                self.store.put_bundle(run_id, &guild, &bundle).await?;
                (super::training::succeeded(&meta), JobState::Done)
            }
            Err(EngineError::Cancelled) if stop.load(Ordering::SeqCst) => {
                let result = RunResult {
                    outcome: RunOutcome::Interrupted,
                    error: Some("its worker stopped; the job went back to the queue".into()),
                    ..RunResult::default()
                };
                self.store.finish_run(run_id, &result).await?;
                self.store.release_job(job.id, worker).await?;
                return Ok(Worked::Ran {
                    job: job.id,
                    guild_id: guild,
                    run_id,
                    outcome: RunOutcome::Interrupted,
                });
            }
            Err(EngineError::Cancelled) => {
                (RunResult { outcome: RunOutcome::Cancelled, ..RunResult::default() }, JobState::Cancelled)
            }
            Err(e) => {
                tracing::error!(guild = %guild, run = run_id, error = %e, "training a job failed");
                let failed = RunResult {
                    outcome: RunOutcome::Failed,
                    error: Some(e.to_string()),
                    ..RunResult::default()
                };
                (failed, JobState::Failed)
            }
        };
        self.store.finish_run(run_id, &result).await?;
        self.store.finish_job(job.id, worker, state, result.error.as_deref()).await?;
        if state == JobState::Done {
            self.store.notify_model(&guild, run_id).await?;
        }
        tracing::info!(guild = %guild, job = job.id, run = run_id, outcome = %result.outcome, "job ended");
        Ok(Worked::Ran { job: job.id, guild_id: guild, run_id, outcome: result.outcome })
    }

    /// Serves the newest worker-made model of each guild this process holds, if newer than what
    /// serves.
    pub async fn catch_up_worker_models(self: &Arc<Self>) {
        let guilds = match self.store.guild_summaries().await {
            Ok(g) => g,
            Err(e) => return tracing::warn!(error = %e, "cannot look for new models"),
        };
        for g in guilds.into_iter().filter(|g| self.config.shards.holds(&g.guild_id)) {
            match self.store.newest_bundle(&g.guild_id).await {
                Ok(Some(run)) => self.serve_worker_model(&g.guild_id, run).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(guild = %g.guild_id, error = %e, "cannot look for new models"),
            }
        }
    }

    /// Fetches, validates and serves run `run_id` of `guild` from the database, unless a model
    /// as new serves already.
    pub(super) async fn serve_worker_model(self: &Arc<Self>, guild: &str, run_id: i64) {
        let serving =
            self.serving.get(guild).and_then(|m| crate::models::registry::run_id(&super::run_name(&m)));
        if serving.is_some_and(|current| current >= run_id) {
            return;
        }
        let bundle = match self.store.bundle(guild, run_id).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return tracing::warn!(
                    guild,
                    run = run_id,
                    "a new model was announced but its bundle is gone"
                )
            }
            Err(e) => return tracing::warn!(guild, run = run_id, error = %e, "cannot fetch the new model"),
        };
        match self.install_recorded_bundle(guild, run_id, bundle).await {
            Ok(()) => {
                if let Err(e) = self.store.prune_bundles(guild, run_id).await {
                    tracing::warn!(guild, error = %e, "could not delete older bundles");
                }
            }
            Err(e) => tracing::error!(guild, run = run_id, error = %e, "a worker's model was refused"),
        }
    }
}
