//! The figures behind the pictures: each training run's loss curve (`run_curve`), written point
//! by point as it trains, and a guild's messages per day.

use serde::Serialize;
use sqlx::Row;

use super::{BindReal, Result, Store};

/// One point of a run's loss curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    pub step: i64,
    /// Milliseconds since the run started.
    pub elapsed_ms: i64,
    /// Training tokens seen up to this step.
    pub tokens: i64,
    /// Training loss (nats per token), the mean over the steps since the previous point.
    pub train_loss: f64,
    /// Validation bits per byte, where the run evaluated at this step.
    pub val_bpb: Option<f64>,
}

/// Messages written on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DayCount {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub messages: u64,
}

const DAY_MS: i64 = 86_400_000;

impl Store {
    /// Adds points to a run's curve in one transaction. A point at a step already stored
    /// replaces its loss and keeps a validation figure it had (the final evaluation lands on the
    /// last training step).
    pub async fn add_curve_points(&self, run_id: i64, points: &[CurvePoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for p in points {
            sqlx::query(
                "INSERT INTO run_curve (run_id, step, elapsed_ms, tokens, train_loss, val_bpb)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (run_id, step) DO UPDATE SET
                     elapsed_ms = excluded.elapsed_ms, tokens = excluded.tokens,
                     train_loss = excluded.train_loss,
                     val_bpb = COALESCE(excluded.val_bpb, run_curve.val_bpb)",
            )
            .bind(run_id)
            .bind(p.step)
            .bind(p.elapsed_ms)
            .bind(p.tokens)
            .bind(p.train_loss)
            .bind_real(p.val_bpb)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A run's curve, by step (empty for a run that recorded none).
    pub async fn run_curve(&self, run_id: i64) -> Result<Vec<CurvePoint>> {
        let rows = sqlx::query(
            "SELECT step, elapsed_ms, tokens, train_loss, val_bpb FROM run_curve
             WHERE run_id = $1 ORDER BY step",
        )
        .bind(run_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CurvePoint {
                    step: r.try_get(0)?,
                    elapsed_ms: r.try_get(1)?,
                    tokens: r.try_get(2)?,
                    train_loss: r.try_get(3)?,
                    val_bpb: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The guild's messages per UTC day (by when they were written), oldest first, for the
    /// `days` days up to its newest message; days without messages are left out.
    pub async fn messages_per_day(&self, guild: &str, days: i64) -> Result<Vec<DayCount>> {
        let rows = sqlx::query(
            "SELECT created_ms / $1 AS day, COUNT(*) FROM messages
             WHERE guild_id = $2
               AND created_ms >= (SELECT COALESCE(MAX(created_ms), 0) / $1 - $3 + 1
                                  FROM messages WHERE guild_id = $2) * $1
             GROUP BY day ORDER BY day",
        )
        .bind(DAY_MS)
        .bind(guild)
        .bind(days.max(1))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                let n: i64 = r.try_get(1)?;
                Ok(DayCount { day: r.try_get(0)?, messages: n.max(0) as u64 })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: i64, loss: f64, val: Option<f64>) -> CurvePoint {
        CurvePoint { step, elapsed_ms: step * 100, tokens: step * 64, train_loss: loss, val_bpb: val }
    }

    #[tokio::test]
    async fn a_curve_reads_back_by_step_and_keeps_a_validation_figure_on_rewrite() {
        let store = Store::open_for_test().await.unwrap();
        let run = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        store.add_curve_points(run, &[point(2, 4.0, None), point(1, 5.0, None)]).await.unwrap();
        store.add_curve_points(run, &[point(2, 3.9, Some(2.5))]).await.unwrap();
        store.add_curve_points(run, &[point(2, 3.8, None)]).await.unwrap();
        let curve = store.run_curve(run).await.unwrap();
        assert_eq!(curve, vec![point(1, 5.0, None), point(2, 3.8, Some(2.5))]);
        assert_eq!(store.run_curve(run + 1).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn messages_per_day_counts_the_newest_days_only() {
        let store = Store::open_for_test().await.unwrap();
        let line = |id: u32, ts: &str| {
            format!(
                r#"{{"id":"{id}","guild_id":"g","channel_id":"1","channel":"general","author_id":"7","author":"a","content":"hi {id}","timestamp":"{ts}"}}"#
            )
        };
        let jsonl = [
            line(1, "2026-11-01T10:00:00Z"),
            line(2, "2026-11-28T10:00:00Z"),
            line(3, "2026-11-30T09:00:00Z"),
            line(4, "2026-11-30T23:59:00Z"),
        ]
        .join("\n");
        let records: Vec<_> =
            jsonl.lines().map(|l| crate::corpus::Record::parse_line(l, None).unwrap()).collect();
        store.insert_many(&records).await.unwrap();
        let days = store.messages_per_day("g", 7).await.unwrap();
        let nov_30 = 1_795_996_800_000 / DAY_MS;
        assert_eq!(
            days,
            vec![DayCount { day: nov_30 - 2, messages: 1 }, DayCount { day: nov_30, messages: 2 }]
        );
        assert_eq!(store.messages_per_day("other", 7).await.unwrap(), vec![]);
    }
}
