//! Consent and deletion: admins choose the collected channels, users opt out, forget
//! themselves or take their data, and removals on Discord are mirrored. Whatever removes
//! messages a serving model was trained on marks that model stale.

use serde::Serialize;

use super::{run_name, Core, ServiceError};
use crate::consent::ChannelState;
use crate::corpus::Record;
use crate::store::{ChannelSetting, Purged};

/// The answer to `llmchannel add|remove`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelChange {
    pub channel_id: String,
    pub was_collected: bool,
    pub collected: bool,
    /// Messages removed because the channel stopped being collected.
    pub purged: u64,
}

/// The answer to `llmchannel list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelList {
    pub default: String,
    pub channels: Vec<ChannelState>,
}

/// A user's stored messages in a guild, as JSONL lines, and their collection status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MyData {
    pub lines: Vec<String>,
    pub opted_out: bool,
}

impl Core {
    /// Opts a channel in or out. Opting out also removes what was collected there: an admin
    /// taking a channel out of training wants its messages out of the next model too.
    pub async fn set_channel(
        &self,
        guild: &str,
        channel: &str,
        collect: bool,
        by: Option<&str>,
    ) -> Result<ChannelChange, ServiceError> {
        let was_collected = self.consent.collects(guild, channel);
        self.store.set_channel(guild, channel, collect, by).await?;
        self.consent.set_channel(guild, channel, collect);
        let purged = if collect {
            Purged::default()
        } else {
            let p = self.store.purge_channel(guild, channel).await?;
            self.removed(guild, &p, "a channel was taken out of collection").await?;
            p
        };
        tracing::info!(guild, channel, collect, purged = purged.messages, "channel collection changed");
        Ok(ChannelChange {
            channel_id: channel.to_string(),
            was_collected,
            collected: collect,
            purged: purged.messages,
        })
    }

    /// The guild's collected channels among `known` (its channels, as Discord lists them).
    pub fn channels(&self, guild: &str, known: &[String]) -> ChannelList {
        ChannelList {
            default: self.consent.describe_default(),
            channels: self.consent.collected_channels(guild, known),
        }
    }

    /// The admins' per-channel choices of every guild.
    pub async fn channel_settings(&self) -> Result<Vec<ChannelSetting>, ServiceError> {
        Ok(self.store.channel_settings().await?)
    }

    /// The user's messages are no longer stored nor trained on; what was stored is removed.
    pub async fn opt_out(&self, guild: &str, user: &str) -> Result<Purged, ServiceError> {
        // The cache first: a message arriving during the purge must not slip in after it.
        self.consent.set_opted_out(guild, user, true);
        let purged = self.store.opt_out(guild, user).await?;
        self.removed(guild, &purged, "a user opted out").await?;
        Ok(purged)
    }

    /// `false` if the user had not opted out.
    pub async fn opt_in(&self, guild: &str, user: &str) -> Result<bool, ServiceError> {
        let was = self.store.opt_in(guild, user).await?;
        self.consent.set_opted_out(guild, user, false);
        Ok(was)
    }

    /// Removes everything the user wrote in the guild until `asked_ms` (when they asked, in
    /// Unix ms on Discord's clock, which timestamps their messages; not this host's, which may
    /// be ahead and would swallow what they write next), for good: reading a channel's history
    /// back never restores it. Collection goes on unless they opt out.
    pub async fn forget_user(&self, guild: &str, user: &str, asked_ms: i64) -> Result<Purged, ServiceError> {
        let (mark, purged) = self.store.forget_author(guild, user, asked_ms).await?;
        self.consent.set_forgotten([((guild.to_string(), user.to_string()), mark)]);
        self.removed(guild, &purged, "a user asked to be forgotten").await?;
        tracing::info!(guild, removed = purged.messages, "a user's messages were forgotten");
        Ok(purged)
    }

    pub async fn my_data(&self, guild: &str, user: &str) -> Result<MyData, ServiceError> {
        let records = self.store.author_messages(guild, user).await?;
        Ok(MyData {
            lines: records.iter().map(Record::to_line).collect(),
            opted_out: self.consent.is_opted_out(guild, user),
        })
    }

    /// The bot was removed from a guild: its messages, settings and models go. Nobody there
    /// can talk to the model any more, and it was made of their messages.
    pub async fn guild_removed(&self, guild: &str) -> Result<Purged, ServiceError> {
        super::check_guild_id(guild)?;
        // A model being trained for the guild would otherwise arrive after the purge.
        if self.trainer.view().guild_id.as_deref() == Some(guild) {
            self.cancel_training();
        }
        let purged = self.store.purge_guild(guild).await?;
        self.consent.forget_guild(guild);
        self.reply_modes.forget_guild(guild);
        self.serving.remove(guild);
        let dir = self.config.models_dir.join(guild);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::error!(guild, error = %e, "could not delete the models of a guild the bot left");
            }
        }
        tracing::info!(guild, removed = purged.messages, "left a guild; its data was deleted");
        Ok(purged)
    }

    /// Deletes messages older than `MYNAH_RETENTION_DAYS` (if set); returns how many went.
    pub async fn apply_retention(&self) -> Result<u64, ServiceError> {
        let Some(days) = self.config.retention_days else { return Ok(0) };
        let before = crate::store::now_ms() - days as i64 * 86_400_000;
        let mut removed = 0;
        for (guild, purged) in self.store.purge_older_than(before).await? {
            removed += purged.messages;
            self.removed(&guild, &purged, "messages passed the retention period").await?;
        }
        if removed > 0 {
            tracing::info!(removed, days, "old messages deleted (retention)");
        }
        Ok(removed)
    }

    /// Messages that reached Discord while the bot was away: the stored messages of a channel
    /// in `(after, through]` that Discord no longer has were deleted meanwhile.
    pub async fn reconcile_channel(
        &self,
        guild: &str,
        channel: &str,
        after: u64,
        through: u64,
        present: &std::collections::HashSet<u64>,
    ) -> Result<Purged, ServiceError> {
        let stored = self.store.channel_ids_between(guild, channel, after, through).await?;
        let gone: Vec<String> =
            stored.into_iter().filter(|id| id.parse::<u64>().is_ok_and(|n| !present.contains(&n))).collect();
        if gone.is_empty() {
            return Ok(Purged::default());
        }
        self.messages_deleted(guild, &gone).await
    }

    pub(super) async fn removed(
        &self,
        guild: &str,
        purged: &Purged,
        reason: &str,
    ) -> Result<(), ServiceError> {
        if purged.messages == 0 {
            return Ok(());
        }
        // The counts forget at once: the operation ends after the voice no longer has them.
        self.build_voice(guild).await?;
        self.mark_if_seen(guild, |until| purged.seen_by(until), reason).await
    }

    /// Marks the guild's serving model stale if `seen` (given the time of the newest message
    /// the model was trained on) counts any removed message it learned from.
    pub(super) async fn mark_if_seen(
        &self,
        guild: &str,
        seen: impl Fn(i64) -> u64,
        reason: &str,
    ) -> Result<(), ServiceError> {
        if let Some(model) = self.serving.get(guild) {
            let seen = seen(model_until_ms(&model));
            if seen > 0 {
                self.store.mark_stale(guild, &run_name(&model), reason, seen).await?;
                tracing::info!(guild, seen, reason, "the serving model is stale");
                // Its predecessors learned from the same removed messages (or older ones): they
                // go now; the stale model itself goes once a retrained one replaces it.
                let dir = self.config.models_dir.join(guild);
                let pruned =
                    tokio::task::spawn_blocking(move || crate::models::registry::prune(&dir, 0, |_| true))
                        .await
                        .unwrap_or_default();
                if !pruned.is_empty() {
                    tracing::info!(guild, runs = ?pruned, "deleted the stale model's predecessors");
                }
            }
        }
        Ok(())
    }
}

/// The time of the newest message a model was trained on (its training time when unknown:
/// nothing newer than that can have been in it).
fn model_until_ms(m: &crate::engine::checkpoint::Loaded) -> i64 {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis());
    m.meta.corpus_last.as_deref().and_then(parse).or_else(|| parse(&m.meta.trained_at)).unwrap_or(i64::MAX)
}
