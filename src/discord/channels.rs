//! `llmchannel`: the admins' choice of the channels mynah learns from (`add`, `remove`,
//! `list`) and of how it answers in each (`reply mention|sometimes P|off`).

use poise::serenity_prelude as serenity;

use super::commands::is_admin;
use super::{backfill, message};
use super::{Context, Error};
use crate::reply_modes::ReplyMode;

/// Choose the channels mynah learns from and how it answers in each (admins only).
#[poise::command(
    prefix_command,
    slash_command,
    guild_only,
    check = "is_admin",
    default_member_permissions = "MANAGE_GUILD",
    subcommands("channel_add", "channel_remove", "channel_list", "channel_reply"),
    subcommand_required
)]
pub async fn llmchannel(_ctx: Context<'_>) -> Result<(), Error> {
    Ok(())
}

/// Start collecting a channel (this one if none is named) and read back its recent history.
#[poise::command(prefix_command, slash_command, guild_only, check = "is_admin", rename = "add")]
async fn channel_add(
    ctx: Context<'_>,
    #[description = "The channel (default: this one)"] channel: Option<serenity::ChannelId>,
) -> Result<(), Error> {
    ctx.defer().await?;
    let Some((guild, channel)) = guild_channel(ctx, channel).await? else { return Ok(()) };
    let core = &ctx.data().core;
    let change = core
        .set_channel(&guild.to_string(), &channel.to_string(), true, Some(&ctx.author().id.to_string()))
        .await?;
    let read = backfill::run_logged(ctx.serenity_context(), ctx.data(), guild, channel).await;
    let mut text = if change.was_collected {
        format!("<#{channel}> was already collected; it stays collected.")
    } else {
        format!(
            "Collecting <#{channel}> from now on. Members can opt out with `{}llmoptout`.",
            core.config().prefix
        )
    };
    if let Some(r) = read.filter(|r| r.stored > 0) {
        text.push_str(&format!(" I read back {} earlier messages.", r.stored));
    }
    match super::permissions::bot_in(ctx.serenity_context(), guild, channel).map(|c| c.permissions) {
        Some(p) if !p.view_channel() => text.push_str(
            " But I can't see that channel: nothing is collected until I get View Channel there.",
        ),
        Some(p) if !p.read_message_history() => text.push_str(
            " I can't read its earlier messages (I need Read Message History there), so I collect from now on.",
        ),
        _ => {}
    }
    ctx.say(text).await?;
    Ok(())
}

/// Stop collecting a channel (this one if none is named) and delete what was stored from it.
#[poise::command(prefix_command, slash_command, guild_only, check = "is_admin", rename = "remove")]
async fn channel_remove(
    ctx: Context<'_>,
    #[description = "The channel (default: this one)"] channel: Option<serenity::ChannelId>,
) -> Result<(), Error> {
    ctx.defer().await?;
    let Some((guild, channel)) = guild_channel(ctx, channel).await? else { return Ok(()) };
    let core = &ctx.data().core;
    let change = core
        .set_channel(&guild.to_string(), &channel.to_string(), false, Some(&ctx.author().id.to_string()))
        .await?;
    let text = match (change.was_collected, change.purged) {
        (false, 0) => format!("<#{channel}> is not collected."),
        (_, 0) => format!("Stopped collecting <#{channel}>."),
        (_, n) => format!(
            "Stopped collecting <#{channel}> and deleted the {n} messages I had stored from it. \
             The current model is marked stale until it is retrained."
        ),
    };
    ctx.say(text).await?;
    Ok(())
}

/// List the channels mynah collects in this server and how it answers in each.
#[poise::command(prefix_command, slash_command, guild_only, check = "is_admin", rename = "list")]
async fn channel_list(ctx: Context<'_>) -> Result<(), Error> {
    let known: Vec<String> = ctx
        .guild()
        .map(|g| g.channels.values().filter(|c| message::is_text(c)).map(|c| c.id.to_string()).collect())
        .unwrap_or_default();
    let guild = ctx.guild_id().map(|g| g.to_string()).unwrap_or_default();
    let core = &ctx.data().core;
    let list = core.channels(&guild, &known);
    let text = if list.channels.is_empty() {
        format!(
            "No channel is collected here. `{}llmchannel add #channel` opts one in. (Default: {}.)",
            core.config().prefix,
            list.default
        )
    } else {
        let lines: Vec<String> = list
            .channels
            .iter()
            .map(|c| match c.source {
                crate::consent::Source::Admin => format!("- <#{}> (opted in by an admin)", c.channel_id),
                crate::consent::Source::Default => format!("- <#{}> (MYNAH_COLLECT_CHANNELS)", c.channel_id),
            })
            .collect();
        format!("Collected channels:\n{}", lines.join("\n"))
    };
    let replies = core.reply_modes(&guild);
    let text = if replies.is_empty() {
        format!(
            "{text}\nReplies: I answer mentions in every channel (`{}llmchannel reply` changes that).",
            core.config().prefix
        )
    } else {
        let lines: Vec<String> =
            replies.iter().map(|r| format!("- <#{}>: {}", r.channel_id, describe(r.mode))).collect();
        format!("{text}\nReplies (elsewhere I answer mentions):\n{}", lines.join("\n"))
    };
    // Channel mentions ping nobody; they are what makes the list readable.
    ctx.say(crate::text::clamp(&text, 2000)).await?;
    Ok(())
}

/// The channel named (or the current one), if it belongs to this server; says so if not.
async fn guild_channel(
    ctx: Context<'_>,
    channel: Option<serenity::ChannelId>,
) -> Result<Option<(serenity::GuildId, serenity::ChannelId)>, Error> {
    let Some(guild) = ctx.guild_id() else { return Ok(None) };
    let channel = channel.unwrap_or(ctx.channel_id());
    let known =
        ctx.guild().map(|g| g.channels.contains_key(&channel) || g.threads.iter().any(|t| t.id == channel));
    if known == Some(false) {
        ctx.say("That channel is not in this server.").await?;
        return Ok(None);
    }
    Ok(Some((guild, channel)))
}

/// How mynah answers in a channel, as `llmchannel reply` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poise::ChoiceParameter)]
pub enum ReplyChoice {
    #[name = "mention"]
    Mention,
    #[name = "sometimes"]
    Sometimes,
    #[name = "off"]
    Off,
}

/// Choose how mynah answers in a channel: mentions only, also now and then, or never.
#[poise::command(prefix_command, slash_command, guild_only, check = "is_admin", rename = "reply")]
async fn channel_reply(
    ctx: Context<'_>,
    #[description = "mention: answer mentions; sometimes: also join in now and then; off: never answer"]
    mode: ReplyChoice,
    #[description = "With sometimes: the chance to answer a message nobody addressed to me, in % (default 2)"]
    #[min = 1]
    #[max = 100]
    percent: Option<i64>,
    #[description = "The channel (default: this one)"] channel: Option<serenity::ChannelId>,
) -> Result<(), Error> {
    ctx.defer().await?;
    let Some((guild, channel)) = guild_channel(ctx, channel).await? else { return Ok(()) };
    let core = &ctx.data().core;
    let mode = match (mode, percent) {
        (ReplyChoice::Sometimes, percent) => {
            ReplyMode::sometimes(percent.unwrap_or(i64::from(crate::reply_modes::DEFAULT_PERCENT)))
                .map_err(|e| crate::service::ServiceError::BadRequest(e.to_string()))?
        }
        (_, Some(_)) => {
            ctx.say(format!(
                "A chance only goes with `sometimes`, as in `{}llmchannel reply sometimes 5`.",
                core.config().prefix
            ))
            .await?;
            return Ok(());
        }
        (ReplyChoice::Mention, None) => ReplyMode::Mention,
        (ReplyChoice::Off, None) => ReplyMode::Off,
    };
    let (g, c) = (guild.to_string(), channel.to_string());
    core.set_reply_mode(&g, &c, mode, Some(&ctx.author().id.to_string())).await?;
    let mut text = format!("In <#{channel}> I now {}.", describe(mode));
    match mode {
        ReplyMode::Sometimes { .. } if !core.has_model(&g) => text
            .push_str(" I only join in once this server has a trained model; until then I answer mentions."),
        ReplyMode::Off if core.collects(&g, &c, None) => {
            text.push_str(" Its messages are still collected (`llmchannel remove` stops that).")
        }
        _ => {}
    }
    ctx.say(text).await?;
    Ok(())
}

/// A reply mode for people: what mynah does in the channel.
fn describe(mode: ReplyMode) -> String {
    match mode {
        ReplyMode::Mention => "answer mentions only".into(),
        ReplyMode::Sometimes { percent } => format!(
            "answer mentions and join in on about {percent}% of other messages (never twice in a row)"
        ),
        ReplyMode::Off => "never answer, not even mentions".into(),
    }
}
