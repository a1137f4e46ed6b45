//! Gateway events: collecting messages and answering mentions.

use poise::serenity_prelude as serenity;

use super::{no_pings, Data, Error};
use crate::corpus::Record;
use crate::service::{Incoming, ReplyRequest};

pub async fn handle(
    framework: poise::FrameworkContext<'_, Data, Error>,
    event: &serenity::FullEvent,
) -> Result<(), Error> {
    if let serenity::FullEvent::Message { new_message } = event {
        on_message(framework, new_message).await?;
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
    if msg.author.bot || msg.webhook_id.is_some() {
        return Ok(());
    }
    let incoming = Incoming {
        record: record(ctx, guild_id, msg),
        author_is_bot: false,
        is_command: is_command(&msg.content, &core.config.prefix, framework.options),
    };
    match core.ingest(&incoming).await {
        Ok(outcome) => tracing::debug!(message = %msg.id, ?outcome, "ingest"),
        Err(e) => tracing::error!(message = %msg.id, error = %e, "could not store a message"),
    }
    let me = ctx.cache.current_user().id;
    if !incoming.is_command && msg.mentions.iter().any(|u| u.id == me) {
        if let Err(e) = msg.channel_id.broadcast_typing(&ctx.http).await {
            tracing::debug!(error = %e, "typing indicator failed");
        }
        let request = ReplyRequest {
            guild_id: guild_id.to_string(),
            channel_id: Some(msg.channel_id.to_string()),
            message_id: Some(msg.id.to_string()),
            author: incoming.record.author.clone(),
            text: msg.content.clone(),
            bot_user_id: Some(me.to_string()),
        };
        let reply = core.reply(&request).await?;
        let reply = serenity::CreateMessage::new()
            .content(reply.text)
            .reference_message(msg)
            .allowed_mentions(no_pings());
        msg.channel_id.send_message(&ctx.http, reply).await?;
    }
    Ok(())
}

/// The message as a corpus record, with the channel's name from the cache when known.
fn record(ctx: &serenity::Context, guild_id: serenity::GuildId, msg: &serenity::Message) -> Record {
    let channel = ctx
        .cache
        .guild(guild_id)
        .and_then(|g| g.channels.get(&msg.channel_id).map(|c| c.name.clone()))
        .unwrap_or_default();
    Record {
        id: msg.id.to_string(),
        guild_id: guild_id.to_string(),
        channel_id: msg.channel_id.to_string(),
        channel,
        author_id: msg.author.id.to_string(),
        author: msg.author.global_name.clone().unwrap_or_else(|| msg.author.name.clone()),
        content: msg.content.clone(),
        timestamp: msg.timestamp.to_rfc3339().unwrap_or_default(),
    }
}

/// Whether `content` invokes one of the bot's commands (these are not chat to learn from).
fn is_command(content: &str, prefix: &str, options: &poise::FrameworkOptions<Data, Error>) -> bool {
    let Some(rest) = content.strip_prefix(prefix) else {
        return false;
    };
    let word = rest.split_whitespace().next().unwrap_or("");
    options
        .commands
        .iter()
        .any(|c| c.name.eq_ignore_ascii_case(word) || c.aliases.iter().any(|a| a.eq_ignore_ascii_case(word)))
}
