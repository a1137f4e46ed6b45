//! What the status page and the metrics read beyond the counts: the database's size and the
//! names of each guild's channels.

use serde::Serialize;
use sqlx::Row;

use super::{count, Backend, Result, Store};

/// A channel of a guild with stored messages, under its latest stored name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSummary {
    pub channel_id: String,
    pub name: String,
    pub messages: u64,
}

impl Store {
    /// The database's size in bytes (its pages, without the write-ahead log).
    pub async fn database_bytes(&self) -> Result<u64> {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            Backend::Postgres => "SELECT pg_database_size(current_database())",
        };
        let bytes: i64 = sqlx::query_scalar(sql).fetch_one(&self.read).await?;
        Ok(count(bytes))
    }

    /// The guild's channels with stored messages, the busiest first.
    pub async fn channel_summaries(&self, guild: &str) -> Result<Vec<ChannelSummary>> {
        let rows = sqlx::query(
            "SELECT m.channel_id,
                    (SELECT channel_name FROM messages l WHERE l.guild_id = m.guild_id AND l.channel_id = m.channel_id
                     ORDER BY l.created_ms DESC LIMIT 1),
                    COUNT(*) AS n
             FROM messages m WHERE m.guild_id = $1 GROUP BY m.guild_id, m.channel_id ORDER BY n DESC, m.channel_id",
        )
        .bind(guild)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(ChannelSummary {
                    channel_id: row.try_get(0)?,
                    name: row.try_get(1)?,
                    messages: count(row.try_get(2)?),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_size_and_the_channels_of_a_guild_are_read_back() {
        let store = Store::open_for_test().await.unwrap();
        store.insert_many(&crate::corpus::parse_all(crate::playground::SAMPLE, Some("42")).0).await.unwrap();
        assert!(store.database_bytes().await.unwrap() > 4096);
        let channels = store.channel_summaries("42").await.unwrap();
        assert!(!channels.is_empty());
        assert_eq!(channels.iter().map(|c| c.messages).sum::<u64>(), 1500);
        assert!(store.channel_summaries("7").await.unwrap().is_empty());
    }
}
