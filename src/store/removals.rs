//! Removals seen on Discord that could not be applied yet (`pending_removals`): queued, listed
//! and crossed off once applied.

use sqlx::Row;

use super::{now_ms, Result, Store, StoreError};

/// One removal to mirror: a deleted message, a deleted channel, or an edit (the old text goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Message { guild: String, id: String },
    Channel { guild: String, channel: String },
    Edit { guild: String, id: String, content: String, edited_at: String },
}

impl Removal {
    pub fn guild(&self) -> &str {
        match self {
            Removal::Message { guild, .. } | Removal::Channel { guild, .. } | Removal::Edit { guild, .. } => {
                guild
            }
        }
    }
}

impl Store {
    /// Queues a removal; returns its queue ID.
    pub async fn queue_removal(&self, r: &Removal) -> Result<i64> {
        let (kind, target, content, edited_at) = match r {
            Removal::Message { id, .. } => ("message", id.as_str(), None, None),
            Removal::Channel { channel, .. } => ("channel", channel.as_str(), None, None),
            Removal::Edit { id, content, edited_at, .. } => {
                ("edit", id.as_str(), Some(content.as_str()), Some(edited_at.as_str()))
            }
        };
        Ok(sqlx::query_scalar(
            "INSERT INTO pending_removals (guild_id, kind, target, content, edited_at, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(r.guild())
        .bind(kind)
        .bind(target)
        .bind(content)
        .bind(edited_at)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every queued removal, oldest first, with its queue ID.
    pub async fn pending_removals(&self) -> Result<Vec<(i64, Removal)>> {
        let rows = sqlx::query(
            "SELECT id, guild_id, kind, target, content, edited_at FROM pending_removals ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let (guild, kind, target): (String, String, String) =
                    (r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
                let removal = match kind.as_str() {
                    "message" => Removal::Message { guild, id: target },
                    "channel" => Removal::Channel { guild, channel: target },
                    "edit" => Removal::Edit {
                        guild,
                        id: target,
                        content: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                        edited_at: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
                    },
                    other => {
                        return Err(StoreError::Unexpected(format!("unknown pending removal kind {other:?}")))
                    }
                };
                Ok((r.try_get(0)?, removal))
            })
            .collect()
    }

    /// Crosses off an applied removal.
    pub async fn removal_done(&self, queue_id: i64) -> Result<()> {
        sqlx::query("DELETE FROM pending_removals WHERE id = $1").bind(queue_id).execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removals_are_queued_listed_in_order_and_crossed_off() {
        let store = Store::open_for_test().await.unwrap();
        let edit =
            Removal::Edit { guild: "g".into(), id: "2".into(), content: "new".into(), edited_at: "t".into() };
        let first =
            store.queue_removal(&Removal::Message { guild: "g".into(), id: "1".into() }).await.unwrap();
        store.queue_removal(&edit).await.unwrap();
        store.queue_removal(&Removal::Channel { guild: "g".into(), channel: "c".into() }).await.unwrap();
        let pending = store.pending_removals().await.unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[1].1, edit);
        store.removal_done(first).await.unwrap();
        assert_eq!(store.pending_removals().await.unwrap().len(), 2);
    }
}
