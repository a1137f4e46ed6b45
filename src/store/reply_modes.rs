//! The SQL of where mynah speaks: each channel's reply mode chosen by an admin.

use sqlx::Row;

use super::{now_ms, Result, Store};
use crate::reply_modes::{ChannelReply, ReplyMode};

impl Store {
    /// Every channel with a reply mode other than the default. A row this version cannot read
    /// (written by a newer one) is left out with a warning rather than failing the start.
    pub async fn channel_replies(&self) -> Result<Vec<ChannelReply>> {
        let rows = sqlx::query("SELECT guild_id, channel_id, mode, percent FROM channel_replies")
            .fetch_all(&self.read)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (guild_id, channel_id, mode): (String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            match ReplyMode::from_parts(&mode, r.try_get(3)?) {
                Ok(mode) => out.push(ChannelReply { guild_id, channel_id, mode }),
                Err(e) => tracing::warn!(guild_id, channel_id, error = %e, "ignoring a stored reply mode"),
            }
        }
        Ok(out)
    }

    /// Sets a channel's reply mode; the default (mentions) removes the row.
    pub async fn set_channel_reply(
        &self,
        guild: &str,
        channel: &str,
        mode: ReplyMode,
        by: Option<&str>,
    ) -> Result<()> {
        if mode == ReplyMode::Mention {
            sqlx::query("DELETE FROM channel_replies WHERE guild_id = $1 AND channel_id = $2")
                .bind(guild)
                .bind(channel)
                .execute(&self.pool)
                .await?;
            return self.notify_settings(guild).await;
        }
        let (name, percent) = mode.to_parts();
        sqlx::query(
            "INSERT INTO channel_replies (guild_id, channel_id, mode, percent, changed_by, changed_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (guild_id, channel_id) DO UPDATE
             SET mode = excluded.mode, percent = excluded.percent, changed_by = excluded.changed_by,
                 changed_ms = excluded.changed_ms",
        )
        .bind(guild)
        .bind(channel)
        .bind(name)
        .bind(percent)
        .bind(by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.notify_settings(guild).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reply_modes_persist_and_the_default_leaves_no_row() {
        let store = Store::open_for_test().await.unwrap();
        store.set_channel_reply("g", "a", ReplyMode::Sometimes { percent: 5 }, Some("admin")).await.unwrap();
        store.set_channel_reply("g", "b", ReplyMode::Off, None).await.unwrap();
        store.set_channel_reply("g", "b", ReplyMode::Sometimes { percent: 50 }, None).await.unwrap();
        store.set_channel_reply("g", "c", ReplyMode::Off, None).await.unwrap();
        store.set_channel_reply("g", "c", ReplyMode::Mention, None).await.unwrap();
        let mut rows = store.channel_replies().await.unwrap();
        rows.sort_by(|x, y| x.channel_id.cmp(&y.channel_id));
        let modes: Vec<(&str, ReplyMode)> = rows.iter().map(|r| (r.channel_id.as_str(), r.mode)).collect();
        assert_eq!(
            modes,
            vec![("a", ReplyMode::Sometimes { percent: 5 }), ("b", ReplyMode::Sometimes { percent: 50 })]
        );
        store.purge_guild("g").await.unwrap();
        assert!(store.channel_replies().await.unwrap().is_empty());
    }
}
