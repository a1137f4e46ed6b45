//! Reading a collected channel's history back from Discord: its recent past when it is first
//! collected, and whatever was said (or deleted) while the bot was away after a restart or a
//! lost connection. Each channel remembers how far it was read (`channel_sync`), so catching up
//! reads only the new part.

use std::collections::HashSet;

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
    if !data.backfilling.lock().unwrap_or_else(|p| p.into_inner()).insert(key) {
        return None;
    }
    let result = run(ctx, data, guild, channel).await;
    data.backfilling.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
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
    if let (true, Some(s), Some(n)) = (complete, synced, newest) {
        report.purged = core.reconcile_channel(&g, &c, s, n, &present).await?.messages;
    }
    if let Some(n) = newest.filter(|&n| synced.is_none_or(|s| n > s)) {
        core.set_synced_through(&g, &c, n).await?;
    }
    Ok(report)
}
