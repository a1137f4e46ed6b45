//! Exclusivity across processes: one training per guild, whichever process asks. On
//! PostgreSQL a session advisory lock held on a connection of its own for the whole run (the
//! server drops it if the process dies); on SQLite, where one process serves, nothing more than
//! the process's own training slot.

use sqlx::pool::PoolConnection;
use sqlx::Any;

use super::{Backend, Result, Store};

/// The right to train one guild, held until dropped.
#[derive(Debug)]
pub struct TrainingClaim {
    /// The connection holding the advisory lock (PostgreSQL only).
    conn: Option<PoolConnection<Any>>,
}

impl TrainingClaim {
    /// Gives the claim up at once (dropping it does too, a moment later, when the server sees
    /// the connection close).
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            match sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut *conn).await {
                // Back to the pool, holding nothing.
                Ok(_) => drop(conn),
                Err(_) => drop(conn.detach()),
            }
        }
    }
}

impl Drop for TrainingClaim {
    fn drop(&mut self) {
        // Closing the session releases its lock; such a connection never goes back to the pool.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// The advisory-lock key of a guild's training: a fixed namespace in the high bits, and the
/// guild (a snowflake, or any other text) hashed by FNV-1a into the rest.
fn training_key(guild: &str) -> i64 {
    let hash = guild
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    ((0x6d79_u64 << 48) | (hash & 0xffff_ffff_ffff)) as i64
}

impl Store {
    /// Claims the guild's training for this process; `None` if another process (or another
    /// claim of this one) holds it.
    pub async fn claim_training(&self, guild: &str) -> Result<Option<TrainingClaim>> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(TrainingClaim { conn: None }));
        }
        let mut conn = self.pool.acquire().await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(training_key(guild))
            .fetch_one(&mut *conn)
            .await?;
        Ok(held.then_some(TrainingClaim { conn: Some(conn) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guilds_training_is_claimed_once_until_the_claim_is_dropped() {
        let store = Store::open_for_test().await.unwrap();
        let first = store.claim_training("123").await.unwrap();
        assert!(first.is_some());
        let dropped = store.claim_training("789").await.unwrap();
        drop(dropped);
        let other_guild = store.claim_training("456").await.unwrap();
        assert!(other_guild.is_some());
        if store.backend() == Backend::Postgres {
            assert!(store.claim_training("123").await.unwrap().is_none(), "held by the first claim");
        }
        first.unwrap().release().await;
        assert!(store.claim_training("123").await.unwrap().is_some());
    }

    #[test]
    fn keys_are_stable_and_apart() {
        assert_eq!(training_key("123"), training_key("123"));
        assert_ne!(training_key("123"), training_key("124"));
        assert_eq!(training_key("123") >> 48, 0x6d79);
    }
}
