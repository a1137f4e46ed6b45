//! Copying one store into another (`mynah db migrate-sqlite-to-postgres`): every table, in an
//! order that satisfies the foreign keys, in batches that each commit on their own. Rows the
//! target holds already are left alone, so a copy that stopped half-way is resumed by running
//! it again. Messages go through the same consent check as ingest: an author who opted out (or
//! asked to be forgotten) in the target is not copied back in.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Backend, BindReal, Result, Store, StoreError};

/// The type of a copied column, as both backends read and write it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    Real,
}

use Kind::{Int, Real, Text};

/// A table to copy: its columns, and the leading ones that form its primary key (the order in
/// which it is read, so a batch can start where the previous one ended).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    key: usize,
}

/// Parents before children: runs before the models and curves that point at them.
const TABLES: &[Table] = &[
    Table {
        name: "training_runs",
        columns: &[
            ("id", Int),
            ("guild_id", Text),
            ("trigger", Text),
            ("requested_by", Text),
            ("started_ms", Int),
            ("finished_ms", Int),
            ("outcome", Text),
            ("error", Text),
            ("epochs", Int),
            ("steps", Int),
            ("tokens", Int),
            ("train_loss", Real),
            ("val_bpb", Real),
            ("corpus_messages", Int),
            ("corpus_until_ms", Int),
            ("owner_pid", Int),
        ],
        key: 1,
    },
    Table {
        name: "models",
        columns: &[
            ("id", Int),
            ("guild_id", Text),
            ("run_id", Int),
            ("path", Text),
            ("created_ms", Int),
            ("params", Int),
            ("val_bpb", Real),
            ("corpus_messages", Int),
            ("is_current", Int),
        ],
        key: 1,
    },
    Table {
        name: "run_curve",
        columns: &[
            ("run_id", Int),
            ("step", Int),
            ("elapsed_ms", Int),
            ("tokens", Int),
            ("train_loss", Real),
            ("val_bpb", Real),
        ],
        key: 2,
    },
    // Consent before messages, so the messages' own check sees it.
    Table { name: "opt_outs", columns: &[("guild_id", Text), ("user_id", Text), ("since_ms", Int)], key: 2 },
    Table {
        name: "forget_marks",
        columns: &[("guild_id", Text), ("user_id", Text), ("before_ms", Int)],
        key: 2,
    },
    Table {
        name: "messages",
        columns: &[
            ("guild_id", Text),
            ("id", Text),
            ("channel_id", Text),
            ("channel_name", Text),
            ("author_id", Text),
            ("author_name", Text),
            ("content", Text),
            ("created_at", Text),
            ("created_ms", Int),
            ("edited_at", Text),
            ("ingested_ms", Int),
            ("parent_channel_id", Text),
        ],
        key: 2,
    },
    Table {
        name: "channel_settings",
        columns: &[
            ("guild_id", Text),
            ("channel_id", Text),
            ("collect", Int),
            ("changed_by", Text),
            ("changed_ms", Int),
        ],
        key: 2,
    },
    Table {
        name: "channel_sync",
        columns: &[("guild_id", Text), ("channel_id", Text), ("synced_through", Text), ("synced_ms", Int)],
        key: 2,
    },
    Table {
        name: "model_staleness",
        columns: &[("guild_id", Text), ("run", Text), ("since_ms", Int), ("reason", Text), ("removed", Int)],
        key: 2,
    },
    Table {
        name: "pending_removals",
        columns: &[
            ("id", Int),
            ("guild_id", Text),
            ("kind", Text),
            ("target", Text),
            ("content", Text),
            ("edited_at", Text),
            ("created_ms", Int),
        ],
        key: 1,
    },
    Table {
        name: "channel_replies",
        columns: &[
            ("guild_id", Text),
            ("channel_id", Text),
            ("mode", Text),
            ("percent", Int),
            ("changed_by", Text),
            ("changed_ms", Int),
        ],
        key: 2,
    },
];

/// Rows read and written per batch (and transaction).
const BATCH: i64 = 500;

/// What a copy did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableCopy {
    pub table: &'static str,
    /// Rows of the source.
    pub rows: u64,
    /// Rows written now.
    pub copied: u64,
    /// Rows the target held already (from an earlier, interrupted copy) or refused (messages of
    /// authors who opted out there).
    pub skipped: u64,
}

/// One value of a copied row.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
}

impl Store {
    /// Copies everything of this store into `target`. `progress` hears each table's name and
    /// the rows copied of it so far.
    pub async fn copy_into(
        &self,
        target: &Store,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> Result<Vec<TableCopy>> {
        self.check_runs_match(target).await?;
        let mut report = Vec::new();
        for table in TABLES {
            let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name))
                .fetch_one(&self.read)
                .await?;
            let mut done = TableCopy { table: table.name, rows: total.max(0) as u64, ..Default::default() };
            let mut after: Option<Vec<Value>> = None;
            loop {
                let rows = self.read_batch(table, after.as_deref()).await?;
                if rows.is_empty() {
                    break;
                }
                let values: Vec<Vec<Value>> =
                    rows.iter().map(|r| row_values(table, r)).collect::<Result<_>>()?;
                let written = target.write_batch(table, &values).await?;
                done.copied += written;
                done.skipped += values.len() as u64 - written;
                progress(table.name, done.copied + done.skipped, done.rows);
                after = values.into_iter().last().map(|mut v| {
                    v.truncate(table.key);
                    v
                });
            }
            report.push(done);
        }
        target.after_copy().await?;
        Ok(report)
    }

    /// Refuses a target whose training runs are not the source's: run IDs are copied as they
    /// are, and models and curves point at them.
    async fn check_runs_match(&self, target: &Store) -> Result<()> {
        let theirs: Vec<(i64, String, i64)> =
            sqlx::query_as("SELECT id, guild_id, started_ms FROM training_runs ORDER BY id")
                .fetch_all(&target.read)
                .await?;
        for (id, guild, started) in theirs {
            let ours: Option<(String, i64)> =
                sqlx::query_as("SELECT guild_id, started_ms FROM training_runs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.read)
                    .await?;
            if ours != Some((guild.clone(), started)) {
                return Err(StoreError::Unexpected(format!(
                    "training run {id} in the target that the source does not have: copy into an empty database \
                     (or one an earlier copy of this same source filled)"
                )));
            }
        }
        Ok(())
    }

    async fn read_batch(&self, table: &Table, after: Option<&[Value]>) -> Result<Vec<AnyRow>> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let key = &columns[..table.key];
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), table.name);
        if after.is_some() {
            let params: Vec<String> = (1..=key.len()).map(|i| format!("${i}")).collect();
            sql += &format!(" WHERE ({}) > ({})", key.join(", "), params.join(", "));
        }
        sql += &format!(" ORDER BY {} LIMIT {BATCH}", key.join(", "));
        let mut query = sqlx::query(&sql);
        for v in after.unwrap_or_default() {
            query = bind(query, v);
        }
        Ok(query.fetch_all(&self.read).await?)
    }

    /// Writes one batch in one transaction; returns the rows written.
    async fn write_batch(&self, table: &Table, rows: &[Vec<Value>]) -> Result<u64> {
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let width = columns.len();
        let tuples: Vec<String> = (0..rows.len())
            .map(|r| {
                let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let list = columns.join(", ");
        let guard = if table.name == "messages" {
            // The store's consent rule, as on every insert of a message.
            "NOT EXISTS (SELECT 1 FROM opt_outs o WHERE o.guild_id = v.guild_id AND o.user_id = v.author_id)
             AND NOT EXISTS (SELECT 1 FROM forget_marks f WHERE f.guild_id = v.guild_id
                             AND f.user_id = v.author_id AND f.before_ms >= v.created_ms)"
        } else {
            // SQLite needs a WHERE between an INSERT's SELECT and its ON CONFLICT.
            "true"
        };
        // A named VALUES list both backends accept: a common table expression.
        let sql = format!(
            "WITH v ({list}) AS (VALUES {values})
             INSERT INTO {name} ({list}) SELECT {list} FROM v WHERE {guard} ON CONFLICT DO NOTHING",
            name = table.name,
            values = tuples.join(", "),
        );
        let mut query = sqlx::query(&sql);
        for row in rows {
            for v in row {
                query = bind(query, v);
            }
        }
        let mut tx = self.pool.begin().await?;
        let written = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(written)
    }

    /// PostgreSQL hands out IDs from sequences, which copied rows did not advance.
    async fn after_copy(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            for table in ["training_runs", "models", "pending_removals"] {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
                ))
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

fn row_values(table: &Table, row: &AnyRow) -> Result<Vec<Value>> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            Ok(match kind {
                Text => Value::Text(row.try_get(i)?),
                Int => Value::Int(row.try_get(i)?),
                Real => Value::Real(row.try_get(i)?),
            })
        })
        .collect()
}

fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    v: &'q Value,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match v {
        Value::Text(t) => query.bind(t.as_deref()),
        Value::Int(i) => query.bind(*i),
        Value::Real(r) => query.bind_real(*r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Record;

    fn record(id: u32, author: &str) -> Record {
        Record {
            id: id.to_string(),
            guild_id: "g".into(),
            channel_id: "c".into(),
            channel: "general".into(),
            author_id: author.into(),
            author: author.into(),
            content: format!("message {id}"),
            timestamp: format!("2020-01-01T00:{:02}:{:02}Z", id / 60 % 60, id % 60),
            parent_channel_id: None,
        }
    }

    /// A source with more than a batch of messages, a run with a model and a curve, and some
    /// consent and settings.
    async fn source() -> Store {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let records: Vec<Record> =
            (1..=1203).map(|i| record(i, if i % 3 == 0 { "ann" } else { "bob" })).collect();
        store.insert_many(&records).await.unwrap();
        let run = store.start_run("g", "command", Some("admin"), 2, 1203, Some(5)).await.unwrap();
        store
            .add_curve_points(
                run,
                &[super::super::CurvePoint {
                    step: 1,
                    elapsed_ms: 10,
                    tokens: 64,
                    train_loss: 4.5,
                    val_bpb: Some(2.5),
                }],
            )
            .await
            .unwrap();
        store.record_model("g", run, "models/g/run-1", 1000, Some(2.5), 1203).await.unwrap();
        store.set_channel("g", "c", true, Some("admin")).await.unwrap();
        store.opt_out("g", "carl").await.unwrap();
        store
            .queue_removal(&super::super::Removal::Message { guild: "g".into(), id: "1".into() })
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn everything_is_copied_and_a_second_copy_adds_nothing() {
        let from = source().await;
        let to = Store::open_for_test().await.unwrap();
        let report = from.copy_into(&to, |_, _, _| {}).await.unwrap();
        let messages = report.iter().find(|t| t.table == "messages").unwrap();
        assert_eq!((messages.rows, messages.copied, messages.skipped), (1203, 1203, 0));
        assert_eq!(from.export(None).await.unwrap(), to.export(None).await.unwrap());
        assert_eq!(from.runs(None, 10).await.unwrap(), to.runs(None, 10).await.unwrap());
        assert_eq!(to.run_curve(1).await.unwrap().len(), 1);
        assert_eq!(to.channel_settings().await.unwrap(), from.channel_settings().await.unwrap());
        assert_eq!(to.opt_outs().await.unwrap(), vec![("g".to_string(), "carl".to_string())]);
        assert_eq!(to.pending_removals().await.unwrap().len(), 1);

        let again = from.copy_into(&to, |_, _, _| {}).await.unwrap();
        assert!(again.iter().all(|t| t.copied == 0 && t.skipped == t.rows), "{again:?}");
        // New rows in the target get IDs after the copied ones.
        let next = to.start_run("g", "command", None, 1, 1, None).await.unwrap();
        assert_eq!(next, 2);
    }

    #[tokio::test]
    async fn a_copy_respects_the_targets_opt_outs_and_refuses_foreign_runs() {
        let from = source().await;
        let to = Store::open_for_test().await.unwrap();
        to.opt_out("g", "ann").await.unwrap();
        let report = from.copy_into(&to, |_, _, _| {}).await.unwrap();
        let messages = report.iter().find(|t| t.table == "messages").unwrap();
        assert_eq!((messages.copied, messages.skipped), (802, 401));
        assert!(to.export(None).await.unwrap().iter().all(|r| r.author_id == "bob"));

        let other = Store::open_for_test().await.unwrap();
        other.start_run("h", "schedule", None, 1, 1, None).await.unwrap();
        let e = from.copy_into(&other, |_, _, _| {}).await.unwrap_err().to_string();
        assert!(e.contains("training run 1 in the target"), "{e}");
    }
}
