//! Models that workers trained, as bundles (`models::bundle`) in the `model_bundles` table,
//! until the process serving their guild has fetched them.

use super::jobs::MODELS_CHANNEL;
use super::{now_ms, Result, Store};

impl Store {
    /// Stores a trained model's bundle for the serving processes to fetch.
    pub async fn put_bundle(&self, run_id: i64, guild: &str, bundle: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO model_bundles (run_id, guild_id, bundle, created_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(guild)
        .bind(bundle.to_vec())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A stored bundle of `guild`'s run, if there is one.
    pub async fn bundle(&self, guild: &str, run_id: i64) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::query_scalar("SELECT bundle FROM model_bundles WHERE run_id = $1 AND guild_id = $2")
            .bind(run_id)
            .bind(guild)
            .fetch_optional(&self.read)
            .await?)
    }

    /// The newest run of `guild` with a stored bundle.
    pub async fn newest_bundle(&self, guild: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar("SELECT MAX(run_id) FROM model_bundles WHERE guild_id = $1")
            .bind(guild)
            .fetch_one(&self.read)
            .await?)
    }

    /// Deletes the guild's bundles older than `run_id` (served models live on disk).
    pub async fn prune_bundles(&self, guild: &str, run_id: i64) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM model_bundles WHERE guild_id = $1 AND run_id < $2")
            .bind(guild)
            .bind(run_id)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Announces a new model to every process listening (PostgreSQL; nothing on SQLite, where
    /// one process trains and serves).
    pub async fn notify_model(&self, guild: &str, run_id: i64) -> Result<()> {
        self.notify(MODELS_CHANNEL, &format!("{guild} {run_id}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::parse_model_payload;

    #[tokio::test]
    async fn bundles_are_kept_per_run_and_pruned() {
        let store = Store::open_for_test().await.unwrap();
        let one = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        let two = store.start_run("g", "command", None, 1, 10, None).await.unwrap();
        store.put_bundle(one, "g", b"first").await.unwrap();
        store.put_bundle(two, "g", &[0, 159, 146, 150]).await.unwrap();
        assert_eq!(store.newest_bundle("g").await.unwrap(), Some(two));
        assert_eq!(store.bundle("g", two).await.unwrap().as_deref(), Some(&[0u8, 159, 146, 150][..]));
        assert_eq!(store.bundle("other", two).await.unwrap(), None);
        assert_eq!(store.prune_bundles("g", two).await.unwrap(), 1);
        assert_eq!(store.bundle("g", one).await.unwrap(), None);
        assert_eq!(parse_model_payload("123 45"), Some(("123".to_string(), 45)));
        assert_eq!(parse_model_payload("123"), None);
    }
}
