//! The training queue: a request that arrives while another guild trains waits its turn, one
//! entry per guild, first come first served, so one guild's `force` cannot starve the others.
//! When the slot frees, the next waiting request starts (its policy asked again unless forced).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::{Core, TrainRequest};

/// What `llmtrain cancel` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    Running,
    Queued,
    Nothing,
}

#[derive(Debug, Default)]
pub(super) struct TrainQueue {
    waiting: Mutex<VecDeque<TrainRequest>>,
    wake: Arc<Notify>,
}

impl TrainQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<TrainRequest>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a request (its `guild_id` resolved) unless its guild already waits; returns its
    /// place in line, from 1.
    pub(super) fn push(&self, req: TrainRequest) -> usize {
        let mut waiting = self.lock();
        if let Some(i) = waiting.iter().position(|r| r.guild_id == req.guild_id) {
            return i + 1;
        }
        waiting.push_back(req);
        let position = waiting.len();
        drop(waiting);
        // The slot may have freed since the caller looked.
        self.wake.notify_one();
        position
    }

    pub(super) fn remove(&self, guild: &str) -> bool {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.retain(|r| r.guild_id.as_deref() != Some(guild));
        waiting.len() != before
    }

    pub(super) fn waiting(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<TrainRequest> {
        self.lock().pop_front()
    }

    /// Starts the task that hands the slot to the next waiting request whenever woken. It
    /// holds the core weakly: it ends when the core is dropped.
    pub(super) fn spawn_pump(core: &Arc<Core>) {
        let (weak, wake) = (Arc::downgrade(core), core.queue.wake.clone());
        tokio::spawn(pump(weak, wake));
    }
}

async fn pump(core: Weak<Core>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(core) = core.upgrade() else { return };
        while !core.is_training() {
            if core.is_closing() {
                return;
            }
            let Some(req) = core.queue.pop() else { break };
            let guild = req.guild_id.clone().unwrap_or_default();
            match core.start_training(req, true).await {
                Ok(accepted) => {
                    tracing::info!(guild, run = accepted.run_id, "queued training started");
                    break;
                }
                Err(e) => tracing::info!(guild, reason = %e, "queued training not started"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Trigger;

    #[test]
    fn one_entry_per_guild_first_come_first_served() {
        let q = TrainQueue::default();
        let req = |g: &str| TrainRequest::new(Some(g.into()), Trigger::Command);
        assert_eq!(q.push(req("a")), 1);
        assert_eq!(q.push(req("b")), 2);
        assert_eq!(q.push(req("a")), 1, "asking again keeps its place, not a second one");
        assert!(q.remove("a"));
        assert!(!q.remove("a"));
        assert_eq!(q.pop().and_then(|r| r.guild_id), Some("b".into()));
        assert_eq!(q.waiting(), 0);
    }
}
