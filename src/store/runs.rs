//! Training runs and the models they made: a row per run with its outcome and figures, and
//! which model is each guild's current one.

use serde::Serialize;
use sqlx::Row;

use super::{now_ms, BindReal, Result, Store, StoreError};

/// The columns of `training_runs` that [`run_row`] reads, in its order.
macro_rules! run_columns {
    () => {
        "id, guild_id, trigger, requested_by, started_ms, finished_ms, outcome, error, epochs, \
         steps, tokens, train_loss, val_bpb, corpus_messages"
    };
}

/// How a training run ended (or that it has not): stored as text in `training_runs.outcome`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    #[default]
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The process stopped during the run (found at the next start).
    Interrupted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
        }
    }

    /// The outcome a stored text names; `None` for text no version of mynah writes.
    pub fn parse(text: &str) -> Option<RunOutcome> {
        [
            RunOutcome::Running,
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Cancelled,
            RunOutcome::Interrupted,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last successful training run of a guild, as the policy needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastRun {
    pub id: i64,
    pub finished_ms: i64,
    pub corpus_until_ms: Option<i64>,
}

/// What a finished training run achieved, for its row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunResult {
    pub outcome: RunOutcome,
    pub error: Option<String>,
    pub steps: Option<i64>,
    pub tokens: Option<i64>,
    pub train_loss: Option<f64>,
    pub val_bpb: Option<f64>,
}

/// One row of `training_runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub guild_id: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub outcome: RunOutcome,
    pub error: Option<String>,
    pub epochs: Option<i64>,
    pub steps: Option<i64>,
    pub tokens: Option<i64>,
    pub train_loss: Option<f64>,
    pub val_bpb: Option<f64>,
    pub corpus_messages: Option<i64>,
    /// Milliseconds from start to end, once the run has ended.
    pub duration_ms: Option<i64>,
}

impl Store {
    pub async fn last_successful_run(&self, guild: &str) -> Result<Option<LastRun>> {
        let row = sqlx::query(
            "SELECT id, finished_ms, corpus_until_ms FROM training_runs
             WHERE guild_id = $1 AND outcome = 'succeeded' AND finished_ms IS NOT NULL
             ORDER BY finished_ms DESC LIMIT 1",
        )
        .bind(guild)
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| {
            Ok(LastRun {
                id: row.try_get(0)?,
                finished_ms: row.try_get(1)?,
                corpus_until_ms: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// Records a training run as started; returns its ID.
    pub async fn start_run(
        &self,
        guild: &str,
        trigger: &str,
        requested_by: Option<&str>,
        epochs: i64,
        corpus_messages: i64,
        corpus_until_ms: Option<i64>,
    ) -> Result<i64> {
        let id = sqlx::query_scalar(
            "INSERT INTO training_runs (guild_id, trigger, requested_by, started_ms, outcome, epochs,
                                        corpus_messages, corpus_until_ms, owner_pid)
             VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8) RETURNING id",
        )
        .bind(guild)
        .bind(trigger)
        .bind(requested_by)
        .bind(now_ms())
        .bind(epochs)
        .bind(corpus_messages)
        .bind(corpus_until_ms)
        .bind(std::process::id() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn finish_run(&self, id: i64, r: &RunResult) -> Result<()> {
        sqlx::query(
            "UPDATE training_runs SET finished_ms = $1, outcome = $2, error = $3, steps = $4, tokens = $5,
                                      train_loss = $6, val_bpb = $7
             WHERE id = $8",
        )
        .bind(now_ms())
        .bind(r.outcome.as_str())
        .bind(&r.error)
        .bind(r.steps)
        .bind(r.tokens)
        .bind_real(r.train_loss)
        .bind_real(r.val_bpb)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Runs still marked running belong to a process that died: mark them interrupted.
    pub async fn mark_interrupted_runs(&self) -> Result<u64> {
        let running: Vec<(i64, String, Option<i64>)> =
            sqlx::query_as("SELECT id, guild_id, owner_pid FROM training_runs WHERE outcome = 'running'")
                .fetch_all(&self.pool)
                .await?;
        let mut marked = 0;
        for (id, guild, owner) in running {
            // Another live process is still training it: on PostgreSQL, whichever machine it
            // runs on, it holds the guild's training lock; on SQLite it is on this machine.
            let claim = match self.backend {
                super::Backend::Postgres => match self.claim_training(&guild).await? {
                    Some(claim) => Some(claim),
                    None => continue,
                },
                super::Backend::Sqlite => {
                    if owner.is_some_and(|pid| pid != std::process::id() as i64 && process_alive(pid)) {
                        continue;
                    }
                    None
                }
            };
            marked += sqlx::query(
                "UPDATE training_runs SET outcome = 'interrupted', finished_ms = $1,
                        error = 'the process stopped during training'
                 WHERE id = $2 AND outcome = 'running'",
            )
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if let Some(claim) = claim {
                claim.release().await;
            }
        }
        Ok(marked)
    }

    /// The newest runs, of one guild or all.
    pub async fn runs(&self, guild: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM training_runs WHERE ($1 IS NULL OR guild_id = $1) ORDER BY id DESC LIMIT $2"
        ))
        .bind(guild)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// One run by its ID; `None` if there is no such run.
    pub async fn run(&self, id: i64) -> Result<Option<RunRow>> {
        let row = sqlx::query(concat!("SELECT ", run_columns!(), " FROM training_runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// Records a trained model as the guild's current one (the previous one stops being current).
    pub async fn record_model(
        &self,
        guild: &str,
        run_id: i64,
        path: &str,
        params: i64,
        val_bpb: Option<f64>,
        corpus_messages: i64,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE models SET is_current = 0 WHERE guild_id = $1 AND is_current = 1")
            .bind(guild)
            .execute(&mut *tx)
            .await?;
        let id = sqlx::query_scalar(
            "INSERT INTO models (guild_id, run_id, path, created_ms, params, val_bpb, corpus_messages, is_current)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1) RETURNING id",
        )
        .bind(guild)
        .bind(run_id)
        .bind(path)
        .bind(now_ms())
        .bind(params)
        .bind_real(val_bpb)
        .bind(corpus_messages)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }
}

fn run_row(r: &sqlx::any::AnyRow) -> Result<RunRow> {
    Ok(RunRow {
        id: r.try_get(0)?,
        guild_id: r.try_get(1)?,
        trigger: r.try_get(2)?,
        requested_by: r.try_get(3)?,
        started_ms: r.try_get(4)?,
        finished_ms: r.try_get(5)?,
        outcome: {
            let text: String = r.try_get(6)?;
            RunOutcome::parse(&text).ok_or_else(|| StoreError::Unexpected(format!("run outcome {text:?}")))?
        },
        error: r.try_get(7)?,
        epochs: r.try_get(8)?,
        steps: r.try_get(9)?,
        tokens: r.try_get(10)?,
        train_loss: r.try_get(11)?,
        val_bpb: r.try_get(12)?,
        corpus_messages: r.try_get(13)?,
        duration_ms: r.try_get::<Option<i64>, _>(5)?.map(|f| f - r.try_get::<i64, _>(4).unwrap_or(f)),
    })
}

/// Whether a process with this ID runs on this machine (Linux's `/proc`; elsewhere unknown,
/// taken as gone, which marks the run as before).
fn process_alive(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_runs_whose_process_is_gone_are_marked_interrupted() {
        let store = Store::open_for_test().await.unwrap();
        let ours = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        let live = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        let gone = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        if store.backend() == crate::store::Backend::Postgres {
            // There a run is live while someone, on any machine, holds its guild's lock.
            let other = store.start_run("h", "command", None, 1, 10, None).await.unwrap();
            let held = store.claim_training("h").await.unwrap().unwrap();
            assert_eq!(store.mark_interrupted_runs().await.unwrap(), 3, "g's runs: nobody trains g");
            let runs = store.runs(None, 10).await.unwrap();
            assert_eq!(runs.iter().find(|r| r.id == other).unwrap().outcome, RunOutcome::Running);
            held.release().await;
            assert_eq!(store.mark_interrupted_runs().await.unwrap(), 1, "h's, once its lock is gone");
            return;
        }
        // `live` belongs to another process that is alive (this test's parent, say); `gone` to
        // a process ID no system hands out.
        let parent = std::os::unix::process::parent_id() as i64;
        for (id, pid) in [(live, parent), (gone, i64::from(u32::MAX))] {
            sqlx::query("UPDATE training_runs SET owner_pid = $1 WHERE id = $2")
                .bind(pid)
                .bind(id)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        assert_eq!(store.mark_interrupted_runs().await.unwrap(), 2, "this process's own run and the orphan");
        let runs = store.runs(Some("g"), 10).await.unwrap();
        let outcome = |id| runs.iter().find(|r| r.id == id).unwrap().outcome;
        assert_eq!(outcome(ours), RunOutcome::Interrupted);
        assert_eq!(outcome(live), RunOutcome::Running);
        assert_eq!(outcome(gone), RunOutcome::Interrupted);
    }
}
