//! Everything persisted in SQL: chat messages, training runs and models. SQLite in WAL mode by
//! default, PostgreSQL when `DATABASE_URL` names one; the schema of each lives in
//! `migrations/<backend>/` and is applied at open (`open`).
//! This is the only module that contains SQL; `privacy` holds the queries of consent and
//! deletion, `runs` those of training runs and models, `curves` the runs' loss curves and
//! messages per day, `overview` the database's size and each guild's channel names.

mod bundles;
mod copy;
mod curves;
mod jobs;
mod locks;
mod open;
mod overview;
mod privacy;
mod removals;
mod reply_modes;
mod runs;

pub use copy::TableCopy;
pub use curves::{CurvePoint, DayCount};
pub use jobs::{
    parse_model_payload, Enqueued, Job, JobRequest, JobState, Lease, JOBS_CHANNEL, MODELS_CHANNEL,
    SETTINGS_CHANNEL,
};
pub use locks::TrainingClaim;
pub use overview::ChannelSummary;
pub use privacy::{ChannelSetting, Purged, Staleness};
pub use removals::Removal;
pub use runs::{LastRun, RunOutcome, RunResult, RunRow};

pub use open::{create_postgres_database, redact, Backend};

use serde::Serialize;
use sqlx::{AnyPool, Row};

use crate::corpus::Record;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the database directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("invalid message: {0}")]
    Invalid(#[from] crate::corpus::LineError),
    #[error("unsupported DATABASE_URL {0:?}: expected sqlite:… or postgres://…")]
    Url(String),
    #[error("the database holds an unexpected {0}")]
    Unexpected(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A cheap, clonable handle on the database. Every query is written once, in the SQL both
/// backends accept (`$N` parameters, `ON CONFLICT`, `RETURNING`), and runs through sqlx's `Any`
/// driver; the few that must differ match on [`Backend`].
#[derive(Clone, Debug)]
pub struct Store {
    /// Writes. On SQLite one connection: it has one writer anyway, and queueing here instead of
    /// on its lock keeps bursts of ingest from timing out.
    pool: AnyPool,
    /// Reads (replies, stats, exports) never wait behind writes: on SQLite, WAL lets them run
    /// alongside; on PostgreSQL this is the same pool as `pool`.
    read: AnyPool,
    backend: Backend,
    url: open::DbUrl,
}

/// Message counts for one guild (and optionally one of its channels).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub messages: u64,
    pub authors: u64,
    pub channels: u64,
    /// Messages in the channel asked about, if one was.
    pub channel_messages: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuildSummary {
    pub guild_id: String,
    pub messages: u64,
    pub authors: u64,
    pub channels: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inserted {
    pub inserted: u64,
    pub already_present: u64,
    /// Left out because their author opted out of collection in that guild, or asked to be
    /// forgotten after writing them.
    pub opted_out: u64,
}

impl Store {
    /// SQLite's own consistency check: `ok`, or what is wrong. PostgreSQL checks its pages
    /// itself; there this only checks that the server answers.
    pub async fn integrity_check(&self) -> Result<String> {
        let sql = match self.backend {
            Backend::Sqlite => "PRAGMA integrity_check",
            Backend::Postgres => "SELECT 'ok'",
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&self.read).await?)
    }

    /// Which engine holds the data.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.pool.close().await;
    }

    /// Stores one message; `false` if it was already there (replayed events are harmless).
    pub async fn insert_message(&self, r: &Record) -> Result<bool> {
        r.validate()?;
        let mut conn = self.pool.acquire().await?;
        insert(&mut conn, r, now_ms()).await
    }

    /// Stores many messages in one transaction (all or nothing), leaving out those of authors
    /// who opted out.
    pub async fn insert_many(&self, records: &[Record]) -> Result<Inserted> {
        let opted_out: std::collections::HashSet<(String, String)> =
            self.opt_outs().await?.into_iter().collect();
        let forgotten: std::collections::HashMap<(String, String), i64> =
            self.forget_marks().await?.into_iter().collect();
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let mut out = Inserted::default();
        for r in records {
            r.validate()?;
            let who = (r.guild_id.clone(), r.author_id.clone());
            let written = r.created_ms()?;
            if opted_out.contains(&who) || forgotten.get(&who).is_some_and(|&t| written <= t) {
                out.opted_out += 1;
            } else if insert(&mut tx, r, now).await? {
                out.inserted += 1;
            } else {
                out.already_present += 1;
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Every stored message of `guild` (or of all guilds), oldest first, as JSONL records.
    pub async fn export(&self, guild: Option<&str>) -> Result<Vec<Record>> {
        let rows = sqlx::query(
            "SELECT id, guild_id, channel_id, channel_name, author_id, author_name, content, created_at,
                    parent_channel_id
             FROM messages m WHERE ($1 IS NULL OR guild_id = $1)
               AND NOT EXISTS (SELECT 1 FROM opt_outs o WHERE o.guild_id = m.guild_id AND o.user_id = m.author_id)
             ORDER BY guild_id, created_ms, length(id), id",
        )
        .bind(guild)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    pub async fn counts(&self, guild: &str, channel: Option<&str>) -> Result<Counts> {
        let row = sqlx::query(
            "SELECT COUNT(*), COUNT(DISTINCT author_id), COUNT(DISTINCT channel_id),
                    SUM(CASE WHEN channel_id = $2 THEN 1 ELSE 0 END)
             FROM messages WHERE guild_id = $1",
        )
        .bind(guild)
        .bind(channel)
        .fetch_one(&self.read)
        .await?;
        Ok(Counts {
            messages: count(row.try_get(0)?),
            authors: count(row.try_get(1)?),
            channels: count(row.try_get(2)?),
            channel_messages: channel
                .map(|_| row.try_get::<Option<i64>, _>(3).map(|n| count(n.unwrap_or(0))))
                .transpose()?,
        })
    }

    pub async fn guild_summaries(&self) -> Result<Vec<GuildSummary>> {
        let rows = sqlx::query(
            "SELECT guild_id, COUNT(*), COUNT(DISTINCT author_id), COUNT(DISTINCT channel_id)
             FROM messages GROUP BY guild_id ORDER BY guild_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(GuildSummary {
                    guild_id: row.try_get(0)?,
                    messages: count(row.try_get(1)?),
                    authors: count(row.try_get(2)?),
                    channels: count(row.try_get(3)?),
                })
            })
            .collect()
    }

    /// Messages of `guild` stored after the given instant (by message time).
    pub async fn messages_after(&self, guild: &str, after_ms: i64) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE guild_id = $1 AND created_ms > $2")
                .bind(guild)
                .bind(after_ms)
                .fetch_one(&self.read)
                .await?;
        Ok(count(n))
    }
}

/// A message of the recent history of a channel, for reply prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recent {
    pub id: String,
    pub author: String,
    pub content: String,
}

impl Store {
    /// The last `limit` messages of a channel (oldest first), without the message `except`.
    pub async fn recent(
        &self,
        guild: &str,
        channel: &str,
        limit: i64,
        except: Option<&str>,
    ) -> Result<Vec<Recent>> {
        let rows = sqlx::query(
            "SELECT id, author_name, content FROM messages
             WHERE guild_id = $1 AND channel_id = $2 AND ($3 IS NULL OR id != $3)
             ORDER BY created_ms DESC, length(id) DESC, id DESC LIMIT $4",
        )
        .bind(guild)
        .bind(channel)
        .bind(except)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        let mut out: Vec<Recent> = rows
            .into_iter()
            .map(|r| Ok(Recent { id: r.try_get(0)?, author: r.try_get(1)?, content: r.try_get(2)? }))
            .collect::<Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// The newest message time of a guild, in Unix ms.
    pub async fn newest_ms(&self, guild: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MAX(created_ms) FROM messages WHERE guild_id = $1")
            .bind(guild)
            .fetch_one(&self.read)
            .await?)
    }
}

/// Stores one message unless it is there already, or its author opted out or asked to be
/// forgotten. The service checks consent in memory first; this makes the store the guarantee,
/// also for changes another process (`mynah user …`) made meanwhile.
async fn insert(conn: &mut sqlx::AnyConnection, r: &Record, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO messages (guild_id, id, channel_id, channel_name, author_id, author_name,
                               content, created_at, created_ms, ingested_ms, parent_channel_id)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
         WHERE NOT EXISTS (SELECT 1 FROM opt_outs WHERE guild_id = $1 AND user_id = $5)
           AND NOT EXISTS (SELECT 1 FROM forget_marks WHERE guild_id = $1 AND user_id = $5 AND before_ms >= $9)
         ON CONFLICT (guild_id, id) DO NOTHING",
    )
    .bind(&r.guild_id)
    .bind(&r.id)
    .bind(&r.channel_id)
    .bind(&r.channel)
    .bind(&r.author_id)
    .bind(&r.author)
    .bind(&r.content)
    .bind(&r.timestamp)
    .bind(r.created_ms()?)
    .bind(now)
    .bind(&r.parent_channel_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// Messages written in the same millisecond keep Discord's order: snowflakes compare as
// numbers, which for decimal strings is by length first.

/// A message row selected as `id, guild_id, channel_id, channel_name, author_id, author_name,
/// content, created_at, parent_channel_id`.
fn record_from_row(row: &sqlx::any::AnyRow) -> Result<Record> {
    Ok(Record {
        id: row.try_get(0)?,
        guild_id: row.try_get(1)?,
        channel_id: row.try_get(2)?,
        channel: row.try_get(3)?,
        author_id: row.try_get(4)?,
        author: row.try_get(5)?,
        content: row.try_get(6)?,
        timestamp: row.try_get(7)?,
        parent_channel_id: row.try_get(8)?,
    })
}

/// Binds a number that may be missing. sqlx 0.8's `Any` driver sends a missing `f64` to
/// PostgreSQL as a `float4` NULL (its Real and Double are swapped there), and a statement it
/// prepared with that type garbles a present value bound later; a missing `f32` goes as the
/// `float8` NULL it should be. On SQLite a NULL is a NULL.
trait BindReal {
    fn bind_real(self, value: Option<f64>) -> Self;
}

impl<'q> BindReal for sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    fn bind_real(self, value: Option<f64>) -> Self {
        match value {
            Some(x) => self.bind(x),
            None => self.bind(None::<f32>),
        }
    }
}

impl<'q, O> BindReal for sqlx::query::QueryScalar<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    fn bind_real(self, value: Option<f64>) -> Self {
        match value {
            Some(x) => self.bind(x),
            None => self.bind(None::<f32>),
        }
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, channel: &str, author: &str, ts: &str) -> Record {
        Record {
            id: id.into(),
            guild_id: "g1".into(),
            channel_id: channel.into(),
            channel: format!("chan-{channel}"),
            author_id: author.into(),
            author: format!("user-{author}"),
            content: format!("message {id}"),
            timestamp: ts.into(),
            parent_channel_id: None,
        }
    }

    #[tokio::test]
    async fn migrations_apply_to_a_fresh_file_and_reopen_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/dir/m.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        store.insert_message(&record("1", "c", "a", "2020-01-01T00:00:00Z")).await.unwrap();
        store.close().await;
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.counts("g1", None).await.unwrap().messages, 1);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&again.pool).await.unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_replayed_message_is_stored_once() {
        let store = Store::open_for_test().await.unwrap();
        let r = record("1", "c", "a", "2020-01-01T00:00:00Z");
        assert!(store.insert_message(&r).await.unwrap());
        assert!(!store.insert_message(&r).await.unwrap());
        assert_eq!(store.counts("g1", None).await.unwrap().messages, 1);
    }

    #[tokio::test]
    async fn counts_cover_guild_channel_and_authors() {
        let store = Store::open_for_test().await.unwrap();
        let batch = vec![
            record("1", "c1", "a", "2020-01-01T00:00:00Z"),
            record("2", "c1", "b", "2020-01-01T00:01:00Z"),
            record("3", "c2", "a", "2020-01-01T00:02:00Z"),
        ];
        let done = store.insert_many(&batch).await.unwrap();
        assert_eq!(done, Inserted { inserted: 3, already_present: 0, opted_out: 0 });
        let c = store.counts("g1", Some("c1")).await.unwrap();
        assert_eq!((c.messages, c.authors, c.channels, c.channel_messages), (3, 2, 2, Some(2)));
        assert_eq!(store.counts("other", None).await.unwrap().messages, 0);
        assert_eq!(store.messages_after("g1", 1577836800000).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn an_invalid_record_in_a_batch_writes_nothing() {
        let store = Store::open_for_test().await.unwrap();
        let batch =
            vec![record("1", "c1", "a", "2020-01-01T00:00:00Z"), record("2", "c1", "b", "not a time")];
        assert!(store.insert_many(&batch).await.is_err());
        assert_eq!(store.counts("g1", None).await.unwrap().messages, 0);
    }
}
