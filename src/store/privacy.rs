//! The SQL of consent and deletion: channel choices, opt-outs, purges, edits, the history
//! reconciliation point of each channel and the staleness of models.

use serde::Serialize;
use sqlx::Row;

use super::{count, now_ms, Result, Store};
use crate::corpus::Record;

/// An admin's decision about one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSetting {
    pub guild_id: String,
    pub channel_id: String,
    pub collect: bool,
    pub changed_by: Option<String>,
    pub changed_ms: i64,
}

/// What a purge removed: how many messages, and when each was written (a model whose training
/// data reaches past that time saw it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub messages: u64,
    #[serde(skip)]
    times: Vec<i64>,
}

impl Purged {
    fn from_times(times: &[i64]) -> Purged {
        Purged { messages: times.len() as u64, times: times.to_vec() }
    }

    /// How many of the removed messages a model trained on messages up to `until_ms` saw.
    pub fn seen_by(&self, until_ms: i64) -> u64 {
        self.times.iter().filter(|&&t| t <= until_ms).count() as u64
    }
}

/// Why and since when a guild's model contains removed messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Staleness {
    pub since_ms: i64,
    pub reason: String,
    pub removed: u64,
}

impl Store {
    pub async fn channel_settings(&self) -> Result<Vec<ChannelSetting>> {
        let rows = sqlx::query(
            "SELECT guild_id, channel_id, collect, changed_by, changed_ms FROM channel_settings
             ORDER BY guild_id, channel_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ChannelSetting {
                    guild_id: r.try_get(0)?,
                    channel_id: r.try_get(1)?,
                    collect: r.try_get::<i64, _>(2)? != 0,
                    changed_by: r.try_get(3)?,
                    changed_ms: r.try_get(4)?,
                })
            })
            .collect()
    }

    pub async fn set_channel(
        &self,
        guild: &str,
        channel: &str,
        collect: bool,
        by: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO channel_settings (guild_id, channel_id, collect, changed_by, changed_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (guild_id, channel_id) DO UPDATE
             SET collect = excluded.collect, changed_by = excluded.changed_by, changed_ms = excluded.changed_ms",
        )
        .bind(guild)
        .bind(channel)
        .bind(collect as i64)
        .bind(by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.notify_settings(guild).await
    }

    /// Every (guild, user) pair that opted out.
    pub async fn opt_outs(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT guild_id, user_id FROM opt_outs").fetch_all(&self.read).await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Records the opt-out and purges the user's messages in the guild, in one transaction.
    pub async fn opt_out(&self, guild: &str, user: &str) -> Result<Purged> {
        let mark =
            "INSERT INTO opt_outs (guild_id, user_id, since_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
        Ok(self.mark_and_purge_author(mark, guild, user, now_ms()).await?.1)
    }

    /// Runs `mark` (an insert taking guild, user and time) and deletes the user's messages of
    /// the guild, in one transaction; returns the time `mark` returns, if it returns one.
    async fn mark_and_purge_author(
        &self,
        mark: &str,
        guild: &str,
        user: &str,
        now: i64,
    ) -> Result<(Option<i64>, Purged)> {
        let mut tx = self.pool.begin().await?;
        let marked: Option<i64> =
            sqlx::query_scalar(mark).bind(guild).bind(user).bind(now).fetch_optional(&mut *tx).await?;
        let times: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM messages WHERE guild_id = $1 AND author_id = $2 RETURNING created_ms",
        )
        .bind(guild)
        .bind(user)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify_settings(guild).await?;
        Ok((marked, Purged::from_times(&times)))
    }

    /// `false` if the user had not opted out.
    pub async fn opt_in(&self, guild: &str, user: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM opt_outs WHERE guild_id = $1 AND user_id = $2")
            .bind(guild)
            .bind(user)
            .execute(&self.pool)
            .await?;
        self.notify_settings(guild).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes the given messages of a guild (deleted on Discord).
    pub async fn purge_messages(&self, guild: &str, ids: &[String]) -> Result<Purged> {
        let mut tx = self.pool.begin().await?;
        let mut times = Vec::new();
        for id in ids {
            let t: Option<i64> = sqlx::query_scalar(
                "DELETE FROM messages WHERE guild_id = $1 AND id = $2 RETURNING created_ms",
            )
            .bind(guild)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            times.extend(t);
        }
        tx.commit().await?;
        Ok(Purged::from_times(&times))
    }

    /// Removes everything a user has stored in a guild, and remembers that what they wrote
    /// until `before_ms` must not come back; returns the mark now in force (a later request
    /// never moves it back) with what was removed.
    pub async fn forget_author(&self, guild: &str, user: &str, before_ms: i64) -> Result<(i64, Purged)> {
        let mark = "INSERT INTO forget_marks (guild_id, user_id, before_ms) VALUES ($1, $2, $3)
                    ON CONFLICT (guild_id, user_id) DO UPDATE SET before_ms =
                        CASE WHEN excluded.before_ms > forget_marks.before_ms
                             THEN excluded.before_ms ELSE forget_marks.before_ms END
                    RETURNING before_ms";
        let (in_force, purged) = self.mark_and_purge_author(mark, guild, user, before_ms).await?;
        Ok((in_force.unwrap_or(before_ms), purged))
    }

    /// Every (guild, user) → time before which their messages stay forgotten.
    pub async fn forget_marks(&self) -> Result<Vec<((String, String), i64)>> {
        let rows = sqlx::query("SELECT guild_id, user_id, before_ms FROM forget_marks")
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?))).collect()
    }

    /// Removes a channel's (or thread's) messages, its threads' included.
    pub async fn purge_channel(&self, guild: &str, channel: &str) -> Result<Purged> {
        let times: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM messages WHERE guild_id = $1 AND (channel_id = $2 OR parent_channel_id = $2)
             RETURNING created_ms",
        )
        .bind(guild)
        .bind(channel)
        .fetch_all(&self.pool)
        .await?;
        Ok(Purged::from_times(&times))
    }

    /// Removes everything of a guild: messages, channel choices, reply modes, sync points and
    /// staleness records. Training runs stay as history (they hold no message content).
    pub async fn purge_guild(&self, guild: &str) -> Result<Purged> {
        let mut tx = self.pool.begin().await?;
        let times: Vec<i64> =
            sqlx::query_scalar("DELETE FROM messages WHERE guild_id = $1 RETURNING created_ms")
                .bind(guild)
                .fetch_all(&mut *tx)
                .await?;
        // Opt-outs and forget requests stay (IDs and a time, no content): if the bot is invited
        // back, reading the history back must not store those members' messages again.
        for table in ["channel_settings", "channel_replies", "channel_sync", "model_staleness"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE guild_id = $1"))
                .bind(guild)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE models SET is_current = 0 WHERE guild_id = $1")
            .bind(guild)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.notify_settings(guild).await?;
        Ok(Purged::from_times(&times))
    }

    /// Replaces a stored message's content after an edit on Discord; the message's time if it
    /// was stored with a different text.
    pub async fn update_content(
        &self,
        guild: &str,
        id: &str,
        content: &str,
        edited_at: &str,
    ) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(
            "UPDATE messages SET content = $1, edited_at = $2
             WHERE guild_id = $3 AND id = $4 AND content != $1 RETURNING created_ms",
        )
        .bind(content)
        .bind(edited_at)
        .bind(guild)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Removes the messages written before `before_ms`, per guild (retention).
    pub async fn purge_older_than(&self, before_ms: i64) -> Result<Vec<(String, Purged)>> {
        let rows = sqlx::query("DELETE FROM messages WHERE created_ms < $1 RETURNING guild_id, created_ms")
            .bind(before_ms)
            .fetch_all(&self.pool)
            .await?;
        let mut by_guild: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for r in rows {
            by_guild.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
        }
        Ok(by_guild.into_iter().map(|(g, times)| (g, Purged::from_times(&times))).collect())
    }

    /// A user's stored messages in a guild, oldest first.
    pub async fn author_messages(&self, guild: &str, user: &str) -> Result<Vec<Record>> {
        let rows = sqlx::query(
            "SELECT id, guild_id, channel_id, channel_name, author_id, author_name, content, created_at,
                    parent_channel_id
             FROM messages WHERE guild_id = $1 AND author_id = $2 ORDER BY created_ms, length(id), id",
        )
        .bind(guild)
        .bind(user)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(super::record_from_row).collect()
    }

    /// The IDs of a channel's stored messages in `(after, through]`, compared as snowflakes.
    pub async fn channel_ids_between(
        &self,
        guild: &str,
        channel: &str,
        after: u64,
        through: u64,
    ) -> Result<Vec<String>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM messages WHERE guild_id = $1 AND channel_id = $2")
                .bind(guild)
                .bind(channel)
                .fetch_all(&self.read)
                .await?;
        Ok(ids.into_iter().filter(|id| id.parse::<u64>().is_ok_and(|n| n > after && n <= through)).collect())
    }

    pub async fn synced_through(&self, guild: &str, channel: &str) -> Result<Option<u64>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT synced_through FROM channel_sync WHERE guild_id = $1 AND channel_id = $2",
        )
        .bind(guild)
        .bind(channel)
        .fetch_optional(&self.read)
        .await?;
        Ok(id.and_then(|s| s.parse().ok()))
    }

    pub async fn set_synced_through(&self, guild: &str, channel: &str, id: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO channel_sync (guild_id, channel_id, synced_through, synced_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (guild_id, channel_id) DO UPDATE
             SET synced_through = excluded.synced_through, synced_ms = excluded.synced_ms",
        )
        .bind(guild)
        .bind(channel)
        .bind(id.to_string())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes that the model in `run` saw `removed` messages that are gone now; the first
    /// time keeps its date, later ones add up.
    pub async fn mark_stale(&self, guild: &str, run: &str, reason: &str, removed: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_staleness (guild_id, run, since_ms, reason, removed) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (guild_id, run) DO UPDATE
             SET reason = excluded.reason, removed = model_staleness.removed + excluded.removed",
        )
        .bind(guild)
        .bind(run)
        .bind(now_ms())
        .bind(reason)
        .bind(removed as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The guild's runs marked stale (they learned from messages removed since).
    pub async fn stale_runs(&self, guild: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT run FROM model_staleness WHERE guild_id = $1")
            .bind(guild)
            .fetch_all(&self.read)
            .await?)
    }

    pub async fn staleness(&self, guild: &str, run: &str) -> Result<Option<Staleness>> {
        let row = sqlx::query(
            "SELECT since_ms, reason, removed FROM model_staleness WHERE guild_id = $1 AND run = $2",
        )
        .bind(guild)
        .bind(run)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(Staleness { since_ms: r.try_get(0)?, reason: r.try_get(1)?, removed: count(r.try_get(2)?) })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, channel: &str, author: &str, minute: u32) -> Record {
        Record {
            id: id.into(),
            guild_id: "g".into(),
            channel_id: channel.into(),
            channel: "c".into(),
            author_id: author.into(),
            author: author.into(),
            content: format!("message {id}"),
            timestamp: format!("2020-01-01T00:{minute:02}:00Z"),
            parent_channel_id: None,
        }
    }

    async fn store_with_messages() -> Store {
        let store = Store::open_for_test().await.unwrap();
        let batch = vec![
            record("10", "c1", "ann", 1),
            record("11", "c1", "bob", 2),
            record("12", "c2", "ann", 3),
            record("13", "c2", "bob", 4),
        ];
        store.insert_many(&batch).await.unwrap();
        store
    }

    #[tokio::test]
    async fn opting_out_purges_and_keeps_future_imports_out() {
        let store = store_with_messages().await;
        let purged = store.opt_out("g", "ann").await.unwrap();
        assert_eq!(purged.messages, 2);
        assert_eq!((purged.seen_by(1_577_836_860_000), purged.seen_by(1_577_836_980_000)), (1, 2));
        let again =
            store.insert_many(&[record("14", "c1", "ann", 5), record("15", "c1", "bob", 6)]).await.unwrap();
        assert_eq!((again.inserted, again.opted_out), (1, 1));
        assert!(store.export(Some("g")).await.unwrap().iter().all(|r| r.author_id == "bob"));
        assert!(store.opt_in("g", "ann").await.unwrap());
        assert!(!store.opt_in("g", "ann").await.unwrap());
        assert_eq!(store.insert_many(&[record("14", "c1", "ann", 5)]).await.unwrap().inserted, 1);
    }

    #[tokio::test]
    async fn purges_remove_exactly_what_they_name() {
        let store = store_with_messages().await;
        let p = store.purge_messages("g", &["11".into(), "404".into()]).await.unwrap();
        assert_eq!(p.messages, 1);
        assert_eq!(store.purge_channel("g", "c2").await.unwrap().messages, 2);
        // Asked at 00:30 on 2020-01-01 (the records' clock).
        let asked = 1_577_838_600_000;
        let (mark, purged) = store.forget_author("g", "ann", asked).await.unwrap();
        assert_eq!((mark, purged.messages), (asked, 1));
        assert_eq!(store.counts("g", None).await.unwrap().messages, 0);
        let again = store.forget_author("g", "ann", asked - 600_000).await.unwrap();
        assert_eq!(again, (asked, Purged::default()), "an older request never moves the mark back");
        assert_eq!(store.forget_marks().await.unwrap()[0].1, asked);
        let again = store.insert_many(&[record("10", "c1", "ann", 1)]).await.unwrap();
        assert_eq!((again.inserted, again.opted_out), (0, 1), "forgotten messages stay out of imports");
        assert!(!store.insert_message(&record("10", "c1", "ann", 30)).await.unwrap(), "and out of ingest");
        assert!(store.insert_message(&record("15", "c1", "ann", 31)).await.unwrap(), "what came after stays");
        store.opt_out("g", "bob").await.unwrap();
        assert!(!store.insert_message(&record("20", "c1", "bob", 9)).await.unwrap(), "opted out: not stored");
    }

    #[tokio::test]
    async fn retention_removes_old_messages_per_guild() {
        let store = store_with_messages().await;
        let purged = store.purge_older_than(1_577_836_980_000).await.unwrap();
        assert_eq!(purged.len(), 1);
        assert_eq!((purged[0].0.as_str(), purged[0].1.messages), ("g", 2));
        assert_eq!(store.counts("g", None).await.unwrap().messages, 2);
    }

    #[tokio::test]
    async fn a_guild_purge_forgets_everything_about_it() {
        let store = store_with_messages().await;
        store.set_channel("g", "c1", true, Some("admin")).await.unwrap();
        store.opt_out("g", "bob").await.unwrap();
        store.set_synced_through("g", "c1", 11).await.unwrap();
        store.mark_stale("g", "run-1", "deleted", 1).await.unwrap();
        assert_eq!(store.purge_guild("g").await.unwrap().messages, 2);
        assert!(store.channel_settings().await.unwrap().is_empty());
        assert_eq!(store.opt_outs().await.unwrap().len(), 1, "who opted out outlives the guild's data");
        assert_eq!(store.synced_through("g", "c1").await.unwrap(), None);
        assert_eq!(store.staleness("g", "run-1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn edits_replace_content_and_staleness_accumulates() {
        let store = store_with_messages().await;
        assert!(store.update_content("g", "10", "edited", "2020-01-02T00:00:00Z").await.unwrap().is_some());
        assert_eq!(store.update_content("g", "404", "x", "2020-01-02T00:00:00Z").await.unwrap(), None);
        assert_eq!(store.author_messages("g", "ann").await.unwrap()[0].content, "edited");
        assert_eq!(store.update_content("g", "10", "edited", "2020-01-03T00:00:00Z").await.unwrap(), None);
        store.mark_stale("g", "run-1", "a message was deleted on Discord", 1).await.unwrap();
        let first = store.staleness("g", "run-1").await.unwrap().unwrap();
        store.mark_stale("g", "run-1", "a user opted out", 3).await.unwrap();
        let s = store.staleness("g", "run-1").await.unwrap().unwrap();
        assert_eq!((s.since_ms, s.removed, s.reason.as_str()), (first.since_ms, 4, "a user opted out"));
        assert_eq!(store.staleness("g", "run-2").await.unwrap(), None);
    }

    #[tokio::test]
    async fn channel_settings_and_sync_points_persist() {
        let store = store_with_messages().await;
        store.set_channel("g", "c1", true, Some("a")).await.unwrap();
        store.set_channel("g", "c1", false, Some("b")).await.unwrap();
        let s = store.channel_settings().await.unwrap();
        assert_eq!((s.len(), s[0].collect, s[0].changed_by.as_deref()), (1, false, Some("b")));
        store.set_synced_through("g", "c1", 12).await.unwrap();
        assert_eq!(store.synced_through("g", "c1").await.unwrap(), Some(12));
        assert_eq!(store.channel_ids_between("g", "c1", 10, 99).await.unwrap(), vec!["11".to_string()]);
    }
}
