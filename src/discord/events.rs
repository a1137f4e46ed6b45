//! Gateway events: collecting messages, answering mentions, and mirroring deletions and edits
//! into the corpus.

use poise::serenity_prelude as serenity;

use super::message::{self, record};
use super::{backfill, no_pings, Data, Error};
use crate::reply_modes::ReplyMode;
use crate::service::{Incoming, Mode, ReplyRequest, ServiceError};

/// How long leaving a guild waits for its read-backs to stop before deleting its data (one
/// message's write, or one page of history from Discord).
const LEFT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// The reaction on a mention that a cool-down dropped.
const COOLING_DOWN: &str = "\u{23f3}";

pub async fn handle(
    framework: poise::FrameworkContext<'_, Data, Error>,
    event: &serenity::FullEvent,
) -> Result<(), Error> {
    super::telemetry::gateway_event(event);
    let core = &framework.user_data.core;
    use serenity::FullEvent as E;
    match event {
        E::Message { new_message } => on_message(framework, new_message).await?,
        E::MessageDelete { deleted_message_id, guild_id: Some(guild), .. } => {
            let purged = core.messages_deleted(&guild.to_string(), &[deleted_message_id.to_string()]).await?;
            tracing::debug!(removed = purged.messages, "message deleted on Discord");
        }
        E::MessageDeleteBulk { multiple_deleted_messages_ids, guild_id: Some(guild), .. } => {
            let ids: Vec<String> = multiple_deleted_messages_ids.iter().map(|id| id.to_string()).collect();
            let purged = core.messages_deleted(&guild.to_string(), &ids).await?;
            tracing::debug!(removed = purged.messages, "messages deleted in bulk on Discord");
        }
        E::MessageUpdate { event, .. } => {
            // Updates without content are embeds being resolved, not edits.
            if let (Some(guild), Some(content)) = (event.guild_id, &event.content) {
                let edited_at = event
                    .edited_timestamp
                    .and_then(|t| t.to_rfc3339())
                    .unwrap_or_else(|| chrono::Utc::now().to_rfc3339());
                core.message_edited(&guild.to_string(), &event.id.to_string(), content, &edited_at).await?;
            }
        }
        E::ChannelDelete { channel, .. } => {
            core.channel_deleted(&channel.guild_id.to_string(), &channel.id.to_string()).await?;
        }
        E::ThreadDelete { thread, .. } => {
            core.channel_deleted(&thread.guild_id.to_string(), &thread.id.to_string()).await?;
        }
        E::GuildDelete { incomplete, .. } if !incomplete.unavailable => {
            // A read-back still running would write after the purge.
            framework.user_data.backfills.left(incomplete.id.get(), LEFT_PATIENCE).await;
            core.guild_removed(&incomplete.id.to_string()).await?;
        }
        E::GuildCreate { guild, .. } => {
            // Each connection (and reconnection) announces the guilds: catch up on what was
            // said meanwhile, in the background.
            let g = guild.id.to_string();
            core.guild_seen(&g, &guild.name);
            let channels: Vec<serenity::ChannelId> = guild
                .channels
                .values()
                .chain(guild.threads.iter())
                .filter(|c| message::is_text(c))
                .filter(|c| {
                    let parent = c.parent_id.filter(|_| c.thread_metadata.is_some()).map(|p| p.to_string());
                    core.collects(&g, &c.id.to_string(), parent.as_deref())
                })
                .map(|c| c.id)
                .collect();
            let (ctx, data, guild_id) =
                (framework.serenity_context.clone(), framework.user_data.clone(), guild.id);
            tokio::spawn(async move {
                for channel in channels {
                    backfill::run_logged(&ctx, &data, guild_id, channel).await;
                }
            });
        }
        _ => {}
    }
    Ok(())
}

async fn on_message(
    framework: poise::FrameworkContext<'_, Data, Error>,
    msg: &serenity::Message,
) -> Result<(), Error> {
    let ctx = framework.serenity_context;
    let core = &framework.user_data.core;
    let Some(guild_id) = msg.guild_id else {
        return Ok(());
    };
    // Bots (this one included) are never collected nor answered: that is how reply loops and
    // models trained on their own output start.
    if msg.author.bot || msg.webhook_id.is_some() || !message::is_chat(msg) {
        return Ok(());
    }
    let incoming = Incoming {
        record: record(ctx, guild_id, msg),
        author_is_bot: false,
        is_command: framework.user_data.filter.is_command(&msg.content),
    };
    let ingest = async {
        match core.ingest(&incoming).await {
            Ok(outcome) => tracing::debug!(message = %msg.id, ?outcome, "ingest"),
            Err(e) => tracing::error!(message = %msg.id, error = %e, "could not store a message"),
        }
    };
    // The reply does not wait for the write: under a burst of ingest it would queue behind it.
    let (_, answered) = tokio::join!(ingest, answer(framework, msg, &incoming));
    answered
}

/// Why mynah answers a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prompt {
    /// The member mentioned it.
    Mention,
    /// Nobody asked: the channel's `sometimes` mode drew this message.
    JoinIn,
}

/// Replies to `msg` if it mentions the bot, or now and then where an admin asked mynah to join
/// in; never where its channel's mode is off, and only as the cool-downs allow.
async fn answer(
    framework: poise::FrameworkContext<'_, Data, Error>,
    msg: &serenity::Message,
    incoming: &Incoming,
) -> Result<(), Error> {
    let ctx = framework.serenity_context;
    let core = &framework.user_data.core;
    let me = ctx.cache.current_user().id;
    let Some(guild) = msg.guild_id else { return Ok(()) };
    if incoming.is_command {
        return Ok(());
    }
    let r = &incoming.record;
    let parent = r.parent_channel_id.as_deref();
    let prompt = match core.reply_mode(&r.guild_id, &r.channel_id, parent) {
        ReplyMode::Off => return Ok(()),
        _ if msg.mentions.iter().any(|u| u.id == me) => Prompt::Mention,
        // Only the guild's own model joins in: the fallback's "still learning" is for people
        // who asked.
        mode @ ReplyMode::Sometimes { .. }
            if core.has_model(&r.guild_id) && core.draws_join_in(&r.channel_id, mode) =>
        {
            Prompt::JoinIn
        }
        _ => return Ok(()),
    };
    // A channel the bot may not write in gets no answer (and no typing): Discord would refuse.
    let here = super::permissions::bot_in(ctx, guild, msg.channel_id);
    if here.is_some_and(|c| !c.may_send()) {
        tracing::debug!(channel = %msg.channel_id, "not answered: no permission to send here");
        return Ok(());
    }
    // Held until the reply is sent, so a shutdown lets it go out.
    let Ok(_sending) = core.begin_reply() else { return Ok(()) };
    if let Err(limited) = core.admit_reply(&msg.channel_id.to_string(), &msg.author.id.to_string()) {
        tracing::debug!(message = %msg.id, ?limited, ?prompt, "not answered: rate limited");
        if prompt == Prompt::Mention {
            // A hint instead of silence: the member sees the mention was noticed.
            let may_react = here.is_none_or(|c| c.reads_history() && c.permissions.add_reactions());
            if may_react {
                if let Err(e) =
                    msg.react(&ctx.http, serenity::ReactionType::Unicode(COOLING_DOWN.into())).await
                {
                    tracing::debug!(error = %e, "could not react to a mention dropped by a cool-down");
                }
            }
        }
        return Ok(());
    }
    if let Err(e) = msg.channel_id.broadcast_typing(&ctx.http).await {
        tracing::debug!(error = %e, "typing indicator failed");
    }
    let request = ReplyRequest {
        guild_id: r.guild_id.clone(),
        channel_id: Some(msg.channel_id.to_string()),
        message_id: Some(msg.id.to_string()),
        author: r.author.clone(),
        text: msg.content.clone(),
        bot_user_id: Some(me.to_string()),
    };
    let reply = match core.reply(&request).await {
        Ok(reply) => reply,
        Err(ServiceError::ShuttingDown) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if prompt == Prompt::JoinIn && reply.mode != Mode::Model {
        tracing::debug!(message = %msg.id, "not joining in: the model did not answer");
        return Ok(());
    }
    let mut out = serenity::CreateMessage::new().content(reply.text).allowed_mentions(no_pings());
    // A reply shows the message it answers, which takes Read Message History; without it the
    // answer goes out as a plain message. Joining in is a plain message too, as a member's is.
    if prompt == Prompt::Mention && here.is_none_or(|c| c.reads_history()) {
        // If the member deleted their message meanwhile, the answer goes out as a plain
        // message (Discord refuses a reply to a deleted message unless told it may drop the
        // reference).
        out = out.reference_message(serenity::MessageReference::from(msg).fail_if_not_exists(false));
    }
    send_retrying(ctx, msg.channel_id, out).await?;
    Ok(())
}

/// Sends a message, trying again a few times when Discord answers 429. serenity's rate limiter
/// waits out 429s by itself, but only when it is on, and it is off against `DISCORD_API_BASE`:
/// serenity 0.12 builds rate-limited requests without the proxy (`http/ratelimiting.rs`,
/// serenity#1739). The 429's `retry_after` does not reach serenity's error, so the waits back
/// off from half a second.
async fn send_retrying(
    ctx: &serenity::Context,
    channel: serenity::ChannelId,
    message: serenity::CreateMessage,
) -> serenity::Result<serenity::Message> {
    use backon::{ExponentialBuilder, Retryable};
    let backoff =
        ExponentialBuilder::default().with_min_delay(std::time::Duration::from_millis(500)).with_max_times(4);
    (|| channel.send_message(&ctx.http, message.clone()))
        .retry(backoff)
        .when(|e| {
            let limited = matches!(e, serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(r))
                if r.status_code == serenity::StatusCode::TOO_MANY_REQUESTS);
            if limited {
                metrics::counter!(crate::metrics::DISCORD_RATE_LIMITED, "scope" => "refused").increment(1);
                tracing::info!(%channel, "Discord rate-limited the reply; trying again shortly");
            }
            limited
        })
        .await
}
