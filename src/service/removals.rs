//! Mirroring Discord's removals into the store, durably. A deletion, an edit or a channel's
//! deletion that cannot be written now is queued (in `pending_removals`, or only in memory if
//! even that write fails), kept out of every corpus read meanwhile (training, the voice,
//! exports), and retried in the background and at start-up until it is applied.

use std::sync::Mutex;

use super::{Core, ServiceError};
use crate::corpus::Record;
use crate::store::{Purged, Removal, StoreError};

/// Why a model that learned removed messages is stale, as `!llmstats` shows it.
const MESSAGES_DELETED: &str = "messages were deleted on Discord";
const CHANNEL_DELETED: &str = "a channel was deleted on Discord";

/// A removal not applied yet, and its row in `pending_removals` if it has one.
#[derive(Debug, Clone)]
struct Pending {
    removal: Removal,
    queued: Option<i64>,
}

/// The removals not applied yet, in arrival order.
#[derive(Debug, Default)]
pub(super) struct PendingRemovals {
    list: Mutex<Vec<Pending>>,
}

impl PendingRemovals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a stored message must stay out of what is read from the corpus: it, or its
    /// channel, was removed on Discord (an edit's old text included).
    fn hides(&self, r: &Record) -> bool {
        self.lock().iter().any(|p| match &p.removal {
            Removal::Message { guild, id } | Removal::Edit { guild, id, .. } => {
                *guild == r.guild_id && *id == r.id
            }
            Removal::Channel { guild, channel } => {
                *guild == r.guild_id
                    && (*channel == r.channel_id || r.parent_channel_id.as_deref() == Some(channel.as_str()))
            }
        })
    }
}

impl Core {
    /// Messages deleted on Discord (one, or a bulk deletion).
    pub async fn messages_deleted(&self, guild: &str, ids: &[String]) -> Result<Purged, ServiceError> {
        // Remembered first: a history page read before this cannot store them again.
        self.deleted.messages(guild, ids);
        let purge = self.store.purge_messages(guild, ids).await;
        self.purged_or_deferred(guild, purge, MESSAGES_DELETED, || {
            ids.iter().map(|id| Removal::Message { guild: guild.into(), id: id.clone() }).collect()
        })
        .await
    }

    /// A message edited on Discord: the stored copy takes the new text (scrubbed); the old text
    /// counts as removed. False if the message is not stored.
    pub async fn message_edited(
        &self,
        guild: &str,
        id: &str,
        content: &str,
        edited_at: &str,
    ) -> Result<bool, ServiceError> {
        let content =
            if self.config.scrub { crate::scrub::scrub(content).into_owned() } else { content.to_string() };
        let edit = Removal::Edit { guild: guild.into(), id: id.into(), content, edited_at: edited_at.into() };
        match self.apply(&edit).await {
            Ok(changed) => Ok(changed),
            Err(ServiceError::Store(e)) => {
                self.defer_removals(vec![edit], e).await;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// A channel or thread was deleted on Discord.
    pub async fn channel_deleted(&self, guild: &str, channel: &str) -> Result<Purged, ServiceError> {
        self.deleted.channel(guild, channel);
        let purge = self.store.purge_channel(guild, channel).await;
        self.purged_or_deferred(guild, purge, CHANNEL_DELETED, || {
            vec![Removal::Channel { guild: guild.into(), channel: channel.into() }]
        })
        .await
    }

    /// After a purge: the bookkeeping of what it removed, or, if the store refused it, the
    /// removals queued for later.
    async fn purged_or_deferred(
        &self,
        guild: &str,
        purge: Result<Purged, StoreError>,
        reason: &str,
        removals: impl FnOnce() -> Vec<Removal>,
    ) -> Result<Purged, ServiceError> {
        match purge {
            Ok(purged) => {
                self.removed(guild, &purged, reason).await?;
                Ok(purged)
            }
            Err(e) => {
                self.defer_removals(removals(), e).await;
                Ok(Purged::default())
            }
        }
    }

    /// Applies one removal; for an edit, whether the message was stored.
    async fn apply(&self, r: &Removal) -> Result<bool, ServiceError> {
        match r {
            Removal::Message { guild, id } => {
                let purged = self.store.purge_messages(guild, std::slice::from_ref(id)).await?;
                self.removed(guild, &purged, MESSAGES_DELETED).await?;
                Ok(true)
            }
            Removal::Channel { guild, channel } => {
                let purged = self.store.purge_channel(guild, channel).await?;
                self.removed(guild, &purged, CHANNEL_DELETED).await?;
                Ok(true)
            }
            Removal::Edit { guild, id, content, edited_at } => {
                let Some(created_ms) = self.store.update_content(guild, id, content, edited_at).await? else {
                    return Ok(false);
                };
                self.build_voice(guild).await?;
                self.mark_if_seen(
                    guild,
                    |until| u64::from(created_ms <= until),
                    "a message was edited on Discord",
                )
                .await?;
                Ok(true)
            }
        }
    }

    /// Keeps removals that could not be written: queued in the store if it takes them, in
    /// memory in any case, hidden from every corpus read until applied.
    async fn defer_removals(&self, removals: Vec<Removal>, why: StoreError) {
        tracing::warn!(error = %why, count = removals.len(), "could not apply a removal from Discord; it is queued and retried");
        for removal in removals {
            let queued = match self.store.queue_removal(&removal).await {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::error!(error = %e, "could not queue a removal either; it is kept in memory until applied");
                    None
                }
            };
            self.pending.lock().push(Pending { removal, queued });
        }
    }

    /// Loads the removals queued in the store that this process does not hold yet: a previous
    /// run's (at start-up), or, for a training worker, those serving processes queued since.
    pub(super) async fn load_pending_removals(&self) -> Result<(), ServiceError> {
        let queued = self.store.pending_removals().await?;
        let mut pending = self.pending.lock();
        for (id, removal) in queued {
            if !pending.iter().any(|p| p.queued == Some(id)) {
                pending.push(Pending { removal, queued: Some(id) });
            }
        }
        Ok(())
    }

    /// Tries every pending removal once, in order; returns how many are still pending.
    pub async fn apply_pending_removals(&self) -> usize {
        let todo: Vec<Pending> = self.pending.lock().clone();
        for p in todo {
            match self.apply(&p.removal).await {
                Ok(_) => {
                    if let Some(id) = p.queued {
                        if let Err(e) = self.store.removal_done(id).await {
                            // Applying it again later is harmless.
                            tracing::warn!(error = %e, "could not cross off an applied removal");
                        }
                    }
                    self.pending.lock().retain(|q| q.removal != p.removal);
                    tracing::info!(guild = p.removal.guild(), "applied a removal that had been queued");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a queued removal still cannot be applied");
                    break;
                }
            }
        }
        self.pending.lock().len()
    }

    /// Stored records of one guild or all, oldest first, without any a pending removal covers.
    pub(super) async fn corpus_records(&self, guild: Option<&str>) -> Result<Vec<Record>, ServiceError> {
        let mut records = self.store.export(guild).await?;
        if !self.pending.lock().is_empty() {
            records.retain(|r| !self.pending.hides(r));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removals_queued_in_the_store_are_held_once_however_often_they_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config { models_dir: dir.path().join("models"), ..Default::default() };
        let store = crate::store::Store::open_for_test().await.unwrap();
        let core = Core::open(config, store.clone()).await.unwrap();
        // Queued by another process since this one started (a worker reloads before each job).
        store.queue_removal(&Removal::Message { guild: "g".into(), id: "1".into() }).await.unwrap();
        core.load_pending_removals().await.unwrap();
        core.load_pending_removals().await.unwrap();
        assert_eq!(core.pending.lock().len(), 1);
    }
}
