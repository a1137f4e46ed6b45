//! The one should-we-train decision. The scheduler, `GET /api/ml/should-train` and `!llmtrain`
//! all call [`should_train`], so they never disagree about why a guild is or isn't trained.

use serde::Serialize;

/// Tunable thresholds (env vars `MYNAH_TRAIN_*`, see `.env.example`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Messages a guild needs before its first model is trained.
    pub min_corpus: u64,
    /// New messages since the last successful run that justify retraining.
    pub min_new_messages: u64,
    /// Never retrain sooner than this after the last successful run (unless forced or stale).
    pub min_interval_hours: u64,
    /// Retrain after this long even with few new messages (as long as there are some).
    pub max_interval_hours: u64,
    /// A model that contains removed messages is retrained at the latest this long after the
    /// first removal, whatever the other thresholds say.
    pub stale_retrain_hours: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_corpus: 500,
            min_new_messages: 200,
            min_interval_hours: 6,
            max_interval_hours: 168,
            stale_retrain_hours: 24,
        }
    }
}

/// What the policy looks at for one guild.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub total_messages: u64,
    /// Messages stored since the last successful training run (all of them if there was none).
    pub new_messages: u64,
    /// Hours since the last successful run; `None` if there never was one.
    pub hours_since_last_run: Option<f64>,
    pub has_model: bool,
    /// Hours since the current model first lost messages it was trained on (deleted, edited,
    /// opted out); `None` while it has lost none.
    pub stale_hours: Option<f64>,
    pub training_running: bool,
}

/// Why the policy decided as it did; `code` is stable for clients, `message` is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    AlreadyRunning,
    CorpusTooSmall,
    FirstTraining,
    ModelStale,
    ModelStalePending,
    NothingNew,
    TooSoon,
    EnoughNewMessages,
    ModelTooOld,
    TooFewNewMessages,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub should_train: bool,
    pub reason: String,
    pub code: Reason,
    pub new_messages: u64,
    pub total_messages: u64,
    /// How many more messages until the first training can start (only while there is no model).
    pub messages_until_first_training: Option<u64>,
}

pub fn should_train(i: &Inputs, t: &Thresholds) -> Decision {
    let (should, code, reason) = match (decide(i, t), i.stale_hours) {
        // A stale model waiting for its deadline says so rather than why nothing else is due.
        ((false, code, reason), Some(hours))
            if i.has_model && !matches!(code, Reason::AlreadyRunning | Reason::CorpusTooSmall) =>
        {
            let left = (t.stale_retrain_hours as f64 - hours).max(0.0);
            (
                false,
                Reason::ModelStalePending,
                format!("{reason}; the model contains removed messages and is retrained within {left:.1} h"),
            )
        }
        (decided, _) => decided,
    };
    Decision {
        should_train: should,
        reason,
        code,
        new_messages: i.new_messages,
        total_messages: i.total_messages,
        messages_until_first_training: (!i.has_model).then(|| t.min_corpus.saturating_sub(i.total_messages)),
    }
}

fn decide(i: &Inputs, t: &Thresholds) -> (bool, Reason, String) {
    use Reason::*;
    let hours = i.hours_since_last_run.unwrap_or(f64::INFINITY);
    if i.training_running {
        return (false, AlreadyRunning, "a training run is already in progress".into());
    }
    if !i.has_model {
        return if i.total_messages >= t.min_corpus {
            (true, FirstTraining, format!("{} messages collected: ready for a first model", i.total_messages))
        } else {
            let missing = t.min_corpus - i.total_messages;
            (
                false,
                CorpusTooSmall,
                format!(
                    "{missing} more messages needed before the first training ({} of {})",
                    i.total_messages, t.min_corpus
                ),
            )
        };
    }
    if let Some(stale) = i.stale_hours.filter(|&h| h >= t.stale_retrain_hours as f64) {
        return (
            true,
            ModelStale,
            format!(
                "the model has contained removed messages for {stale:.1} h (deadline {} h)",
                t.stale_retrain_hours
            ),
        );
    }
    if i.new_messages == 0 {
        return (false, NothingNew, "no new messages since the last training".into());
    }
    if hours < t.min_interval_hours as f64 {
        return (
            false,
            TooSoon,
            format!("the last training was {hours:.1} h ago; waiting at least {} h", t.min_interval_hours),
        );
    }
    if i.new_messages >= t.min_new_messages {
        return (true, EnoughNewMessages, format!("{} new messages since the last training", i.new_messages));
    }
    if hours >= t.max_interval_hours as f64 {
        return (
            true,
            ModelTooOld,
            format!(
                "the model is older than {} h and there are {} new messages",
                t.max_interval_hours, i.new_messages
            ),
        );
    }
    (
        false,
        TooFewNewMessages,
        format!(
            "{} new messages since the last training; retraining at {}",
            i.new_messages, t.min_new_messages
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_model(new: u64, hours: f64) -> Inputs {
        Inputs {
            total_messages: 5000,
            new_messages: new,
            hours_since_last_run: Some(hours),
            has_model: true,
            ..Inputs::default()
        }
    }

    #[test]
    fn each_reason_comes_from_its_own_situation() {
        let t = Thresholds::default();
        let cases: Vec<(Inputs, bool, Reason)> = vec![
            (
                Inputs { training_running: true, total_messages: 9999, ..Inputs::default() },
                false,
                Reason::AlreadyRunning,
            ),
            (
                Inputs { total_messages: 10, new_messages: 10, ..Inputs::default() },
                false,
                Reason::CorpusTooSmall,
            ),
            (
                Inputs { total_messages: 500, new_messages: 500, ..Inputs::default() },
                true,
                Reason::FirstTraining,
            ),
            (Inputs { stale_hours: Some(24.0), ..with_model(0, 1.0) }, true, Reason::ModelStale),
            (Inputs { stale_hours: Some(2.0), ..with_model(0, 1.0) }, false, Reason::ModelStalePending),
            (Inputs { stale_hours: Some(2.0), ..with_model(300, 7.0) }, true, Reason::EnoughNewMessages),
            (with_model(0, 1000.0), false, Reason::NothingNew),
            (with_model(1000, 1.0), false, Reason::TooSoon),
            (with_model(200, 7.0), true, Reason::EnoughNewMessages),
            (with_model(5, 200.0), true, Reason::ModelTooOld),
            (with_model(5, 7.0), false, Reason::TooFewNewMessages),
        ];
        for (inputs, should, code) in cases {
            let d = should_train(&inputs, &t);
            assert_eq!((d.should_train, d.code), (should, code), "{inputs:?} -> {}", d.reason);
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn messages_until_first_training_counts_down_only_without_a_model() {
        let t = Thresholds::default();
        let d = should_train(&Inputs { total_messages: 120, ..Inputs::default() }, &t);
        assert_eq!(d.messages_until_first_training, Some(380));
        assert!(d.reason.starts_with("380 more messages"));
        let d = should_train(&with_model(0, 1.0), &t);
        assert_eq!(d.messages_until_first_training, None);
    }
}
