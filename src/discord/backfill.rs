//! Reading a collected channel's history back from Discord: its recent past when it is first
//! collected, and whatever was said (or deleted) while the bot was away after a restart or a
//! lost connection. Each channel remembers how far it was read (`channel_sync`), so catching up
//! reads only the new part.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use poise::serenity_prelude as serenity;

use super::{message, Data};
use crate::service::Incoming;

/// What one backfill did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub read: u64,
    pub stored: u64,
    /// Stored messages that Discord no longer has (deleted while the bot was away).
    pub purged: u64,
}

/// The read-backs running now, and how often the bot left each guild: a read-back of a guild the
/// bot left meanwhile stops before its next write, and the guild's data is deleted only once none
/// runs. Otherwise a read-back still going would store messages, or a sync point that hides the
/// history from the next read-back, after the guild's data was deleted.
#[derive(Default)]
pub struct Backfills(Mutex<Running>);

#[derive(Default)]
struct Running {
    channels: HashSet<(u64, u64)>,
    leaves: HashMap<u64, u64>,
}

impl Backfills {
    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often the bot left `guild` so far: a read-back goes on while this stays the same.
    fn leaves(&self, guild: u64) -> u64 {
        self.lock().leaves.get(&guild).copied().unwrap_or(0)
    }

    /// The bot left `guild`: its read-backs stop, and this waits (up to `patience`) until they
    /// have, so that deleting the guild's data comes after their last write.
    pub async fn left(&self, guild: u64, patience: Duration) {
        *self.lock().leaves.entry(guild).or_default() += 1;
        let deadline = tokio::time::Instant::now() + patience;
        while self.lock().channels.iter().any(|&(g, _)| g == guild) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(guild, "a read-back of a guild the bot left did not stop in time");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs a backfill unless one already runs for the channel; failures are logged only (the
/// next connection tries again).
pub async fn run_logged(
    ctx: &serenity::Context,
    data: &Data,
    guild: serenity::GuildId,
    channel: serenity::ChannelId,
) -> Option<Report> {
    // Discord would refuse (or list nothing): not an error to log on every connection.
    if super::permissions::bot_in(ctx, guild, channel).is_some_and(|c| !c.reads_history()) {
        tracing::debug!(%guild, %channel, "not reading back a channel whose history the bot may not read");
        return None;
    }
    let key = (guild.get(), channel.get());
    if !data.backfills.lock().channels.insert(key) {
        return None;
    }
    let result = run(ctx, data, guild, channel).await;
    data.backfills.lock().channels.remove(&key);
    match result {
        Ok(report) => {
            if report != Report::default() {
                tracing::info!(%guild, %channel, ?report, "caught up with the channel's history");
            }
            Some(report)
        }
        Err(e) => {
            tracing::warn!(%guild, %channel, error = %e, "could not read the channel's history");
            None
        }
    }
}

/// Walks the channel back from its newest message to where the last backfill stopped (or
/// `MYNAH_BACKFILL_MESSAGES` messages), storing what is missing.
async fn run(
    ctx: &serenity::Context,
    data: &Data,
    guild: serenity::GuildId,
    channel: serenity::ChannelId,
) -> anyhow::Result<Report> {
    let core = &data.core;
    let limit = core.config().backfill_messages;
    let (g, c) = (guild.to_string(), channel.to_string());
    if limit == 0 {
        return Ok(Report::default());
    }
    let leaves = data.backfills.leaves(guild.get());
    let here = || data.backfills.leaves(guild.get()) == leaves;
    let synced = core.synced_through(&g, &c).await?;
    let mut report = Report::default();
    let mut present = HashSet::new();
    let mut newest: Option<u64> = None;
    let mut before: Option<serenity::MessageId> = None;
    // Whether the walk met the previous sync point (or the channel's first message), so every
    // message in between was seen.
    let mut complete = false;
    'pages: while report.read < limit {
        let mut page = serenity::GetMessages::new().limit(100);
        if let Some(b) = before {
            page = page.before(b);
        }
        let messages = channel.messages(&ctx.http, page).await?;
        if messages.is_empty() {
            complete = true;
            break;
        }
        for m in &messages {
            let id = m.id.get();
            if synced.is_some_and(|s| id <= s) {
                complete = true;
                break 'pages;
            }
            newest.get_or_insert(id);
            present.insert(id);
            report.read += 1;
            if m.author.bot || m.webhook_id.is_some() || !message::is_chat(m) {
                continue;
            }
            if !here() {
                tracing::debug!(%guild, %channel, "the bot left the guild: its read-back stops");
                return Ok(report);
            }
            let incoming = Incoming {
                record: message::record(ctx, guild, m),
                author_is_bot: false,
                is_command: data.filter.is_command(&m.content),
            };
            if core.ingest(&incoming).await? == crate::service::Ingested::Stored {
                report.stored += 1;
            }
            if report.read >= limit {
                break 'pages;
            }
        }
        before = messages.last().map(|m| m.id);
        if messages.len() < 100 {
            complete = true;
            break;
        }
    }
    if !here() {
        return Ok(report);
    }
    if let (true, Some(s), Some(n)) = (complete, synced, newest) {
        report.purged = core.reconcile_channel(&g, &c, s, n, &present).await?.messages;
    }
    if let Some(n) = newest.filter(|&n| synced.is_none_or(|s| n > s)) {
        core.set_synced_through(&g, &c, n).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leaving_a_guild_stops_its_read_backs_and_waits_for_them() {
        let backfills = std::sync::Arc::new(Backfills::default());
        backfills.lock().channels.extend([(1, 10), (2, 20)]);
        let before = backfills.leaves(1);
        let leaving = tokio::spawn({
            let backfills = backfills.clone();
            async move { backfills.left(1, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backfills.leaves(1), before + 1, "the guild's read-backs see that it was left");
        assert_eq!(backfills.leaves(2), 0, "other guilds' go on");
        assert!(!leaving.is_finished(), "the purge waits for the read-back of channel 10");
        backfills.lock().channels.remove(&(1, 10));
        tokio::time::timeout(Duration::from_secs(5), leaving).await.unwrap().unwrap();
        // Channel 20 belongs to another guild: leaving guild 1 never waited for it.
        let quick = tokio::time::Instant::now();
        backfills.left(1, Duration::from_secs(10)).await;
        assert!(quick.elapsed() < Duration::from_secs(1));
    }
}
