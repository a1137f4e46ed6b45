//! The in-process periodic jobs. The retraining scheduler: every few minutes it asks the one
//! retraining policy about each guild and starts at most one training at a time across the
//! process, taking the guilds that are due in turn (the one that waited longest first). And
//! retention: hourly deletion of messages older than `MYNAH_RETENTION_DAYS`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::service::{Core, ServiceError, TrainRequest, Trigger};

/// Remembers when each guild was last started, so due guilds take turns.
#[derive(Debug, Default)]
pub struct Scheduler {
    last_started: HashMap<String, Instant>,
}

impl Scheduler {
    /// One round: starts a training for the due guild that waited longest, if none runs.
    /// Returns the guild started.
    pub async fn tick(&mut self, core: &Arc<Core>) -> Result<Option<String>, ServiceError> {
        if core.is_training() {
            return Ok(None);
        }
        let mut due: Vec<String> = core
            .should_train_all()
            .await?
            .into_iter()
            .filter(|(_, d)| d.should_train)
            .map(|(g, _)| g)
            // Another process serves (and trains) the guilds of the other shards.
            .filter(|g| core.config().shards.holds(g))
            .collect();
        // Never started first, then the longest wait; guild order breaks ties.
        due.sort_by_key(|g| (self.last_started.get(g).copied(), g.clone()));
        for guild in due {
            let request = TrainRequest {
                requested_by: Some("scheduler".into()),
                ..TrainRequest::new(Some(guild.clone()), Trigger::Schedule)
            };
            match core.request_training(request).await {
                Ok(accepted) => {
                    tracing::info!(guild = %guild, run = accepted.run_id, "scheduled training started");
                    self.last_started.insert(guild.clone(), Instant::now());
                    return Ok(Some(guild));
                }
                // Another run slipped in: it waits in the queue and starts after it.
                Err(ServiceError::Queued { .. } | ServiceError::Delegated { .. }) => {
                    self.last_started.insert(guild.clone(), Instant::now());
                    return Ok(Some(guild));
                }
                // The policy changed its mind or another run slipped in: try again next round.
                Err(ServiceError::NotNeeded { .. } | ServiceError::AlreadyRunning { .. }) => return Ok(None),
                Err(e) => {
                    tracing::warn!(guild = %guild, error = %e, "scheduled training could not start");
                    self.last_started.insert(guild, Instant::now());
                }
            }
        }
        Ok(None)
    }
}

/// Runs the scheduler every `every` until `stop` turns true.
pub fn spawn(core: Arc<Core>, every: Duration, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    // Rounds never overlap (see `periodic`); the mutex only lets each round own the state.
    let scheduler = Arc::new(tokio::sync::Mutex::new(Scheduler::default()));
    periodic(every, stop, move || {
        let (core, scheduler) = (core.clone(), scheduler.clone());
        async move {
            if let Err(e) = scheduler.lock().await.tick(&core).await {
                tracing::warn!(error = %e, "scheduler round failed");
            }
        }
    })
}

/// Applies the retention period every hour until `stop` turns true.
pub fn spawn_retention(core: Arc<Core>, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    periodic(Duration::from_secs(3600), stop, move || {
        let core = core.clone();
        async move {
            if let Err(e) = core.apply_retention().await {
                tracing::warn!(error = %e, "retention round failed");
            }
        }
    })
}

/// Retries the removals from Discord that could not be applied yet, every `every`.
pub fn spawn_removal_retries(
    core: Arc<Core>,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    periodic(every, stop, move || {
        let core = core.clone();
        async move {
            let left = core.apply_pending_removals().await;
            if left > 0 {
                tracing::warn!(pending = left, "removals from Discord still wait to be applied");
            }
        }
    })
}

/// Runs `round` now and then every `every`, one at a time, until `stop` turns true.
fn periodic<F, Fut>(
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut round: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => round().await,
                // The guard `wait_for` returns must not live across the next await.
                _ = async { drop(stop.wait_for(|s| *s).await) } => return,
            }
        }
    })
}
