//! The training slot: at most one training run at a time across the process (the machine has
//! few cores), its live progress for stats and the CLI, and its cancellation flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

use crate::engine::train::Progress;
use crate::store::RunOutcome;

/// Whether a training run holds the slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingState {
    #[default]
    Idle,
    Running,
}

/// How the last finished run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finished {
    pub run_id: i64,
    pub guild_id: String,
    /// Succeeded, failed or cancelled.
    pub outcome: RunOutcome,
    pub error: Option<String>,
    pub val_bits_per_byte: Option<f64>,
    pub seconds: f64,
}

/// What is training now, as shown by stats and `/api/ml/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrainingView {
    pub state: TrainingState,
    pub guild_id: Option<String>,
    pub run_id: Option<i64>,
    pub progress: Option<Progress>,
    pub last: Option<Finished>,
}

/// The slot itself.
#[derive(Debug)]
pub struct Trainer {
    view: watch::Sender<TrainingView>,
    cancel: Mutex<Option<Arc<AtomicBool>>>,
}

impl Default for Trainer {
    fn default() -> Self {
        Self::new()
    }
}

/// Holding the slot; dropping it frees the slot (also when a run panics or fails).
pub struct Slot {
    trainer: Arc<Trainer>,
    pub cancel: Arc<AtomicBool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.trainer.cancel.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.trainer.view.send_modify(|v| {
            v.state = TrainingState::Idle;
            v.guild_id = None;
            v.run_id = None;
            v.progress = None;
        });
    }
}

impl Trainer {
    pub fn new() -> Trainer {
        let (view, _) = watch::channel(TrainingView::default());
        Trainer { view, cancel: Mutex::new(None) }
    }

    pub fn view(&self) -> TrainingView {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<TrainingView> {
        self.view.subscribe()
    }

    pub fn is_running(&self) -> bool {
        self.cancel.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Takes the slot for `guild`, or `None` if a run holds it.
    pub fn try_begin(self: &Arc<Self>, guild: &str) -> Option<Slot> {
        let mut cancel = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
        if cancel.is_some() {
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        *cancel = Some(flag.clone());
        self.view.send_modify(|v| {
            v.state = TrainingState::Running;
            v.guild_id = Some(guild.to_string());
            v.run_id = None;
            v.progress = None;
        });
        Some(Slot { trainer: self.clone(), cancel: flag })
    }

    pub fn set_run(&self, run_id: i64) {
        self.view.send_modify(|v| v.run_id = Some(run_id));
    }

    pub fn report(&self, p: &Progress) {
        crate::metrics::training_progress(p);
        self.view.send_modify(|v| v.progress = Some(p.clone()));
    }

    pub fn finish(&self, finished: Finished) {
        self.view.send_modify(|v| v.last = Some(finished));
    }

    /// Asks the running training to stop; `false` if none runs.
    pub fn cancel(&self) -> bool {
        match &*self.cancel.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(flag) => {
                flag.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}
