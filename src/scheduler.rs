//! The in-process retraining scheduler: every few minutes it asks the one retraining policy
//! about each guild and starts at most one training at a time across the process, taking the
//! guilds that are due in turn (the one that waited longest first).

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
        if core.trainer.is_running() {
            return Ok(None);
        }
        let mut due: Vec<String> = core
            .should_train_all()
            .await?
            .into_iter()
            .filter(|(_, d)| d.should_train)
            .map(|(g, _)| g)
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
pub fn spawn(
    core: Arc<Core>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut scheduler = Scheduler::default();
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if let Err(e) = scheduler.tick(&core).await {
                        tracing::warn!(error = %e, "scheduler round failed");
                    }
                }
                // The guard `wait_for` returns must not live across the next await.
                _ = async { drop(stop.wait_for(|s| *s).await) } => return,
            }
        }
    })
}
