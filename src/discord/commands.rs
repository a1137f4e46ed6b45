//! The bot's commands, each a small adapter over the service; available with the prefix and as
//! slash commands.

use std::time::{Duration, Instant};

use poise::serenity_prelude as serenity;

use super::{channels, help};
use super::{no_pings, Context, Error};
use crate::service::{Cancelled, ServiceError, TrainRequest, Trigger};

/// How long an `llmforgetme` waits for its confirmation.
const FORGET_CONFIRM_WITHIN: Duration = Duration::from_secs(300);
/// The size of one file of `llmmydata` (Discord accepts 10 MiB per upload for bots).
const DATA_FILE_BYTES: usize = 8 * 1024 * 1024;

pub fn all() -> Vec<poise::Command<super::Data, Error>> {
    vec![
        llmstats(),
        llmtrain(),
        channels::llmchannel(),
        llmoptout(),
        llmoptin(),
        llmforgetme(),
        llmmydata(),
        help::help(),
    ]
}

/// How to call a command, for error messages.
pub fn usage(prefix: &str, command: &str) -> String {
    match command {
        "llmtrain" => format!("`{prefix}llmtrain`, `{prefix}llmtrain force` or `{prefix}llmtrain cancel`"),
        "llmchannel" | "add" | "remove" | "list" => {
            format!("`{prefix}llmchannel add #channel`, `{prefix}llmchannel remove #channel`, `{prefix}llmchannel list` or `{prefix}llmchannel reply mention|sometimes [percent]|off [#channel]`")
        }
        "reply" => format!("`{prefix}llmchannel reply mention`, `{prefix}llmchannel reply sometimes 5` or `{prefix}llmchannel reply off`, optionally followed by #channel"),
        "llmforgetme" => format!("`{prefix}llmforgetme`, then `{prefix}llmforgetme confirm`"),
        other => format!("`{prefix}{other}`"),
    }
}

/// Show what mynah has collected and learned in this server, with a picture of it.
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmstats(ctx: Context<'_>) -> Result<(), Error> {
    // Everything that reads or writes the store is deferred first: under ingest load or right
    // after a restart it can outlast Discord's 3 s to acknowledge an interaction.
    ctx.defer().await?;
    let guild = ctx.guild_id().map(|g| g.to_string()).unwrap_or_default();
    let channel = ctx.channel_id().to_string();
    let name = ctx.guild().map(|g| g.name.clone());
    let core = &ctx.data().core;
    let stats = core.stats(&guild, Some(&channel)).await?;
    let text = crate::text::for_discord(&crate::render::stats(&stats, &core.config().prefix));
    let mut reply = poise::CreateReply::default().content(text).allowed_mentions(no_pings());
    // The picture is drawn off the async threads; without it the figures still go out.
    match core.guild_picture(&guild, name.as_deref()).await {
        Ok(png) => reply = reply.attachment(serenity::CreateAttachment::bytes(png, "mynah-stats.png")),
        Err(e) => tracing::warn!(guild = %guild, error = %e, "could not draw the stats picture"),
    }
    ctx.send(reply).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poise::ChoiceParameter)]
pub enum TrainOption {
    #[name = "force"]
    Force,
    #[name = "cancel"]
    Cancel,
}

/// Train this server's language model now (admins only).
#[poise::command(
    prefix_command,
    slash_command,
    guild_only,
    check = "is_admin",
    default_member_permissions = "MANAGE_GUILD"
)]
pub async fn llmtrain(
    ctx: Context<'_>,
    #[description = "force: train even if the policy says it is not needed; cancel: stop the running training"]
    option: Option<TrainOption>,
) -> Result<(), Error> {
    ctx.defer().await?;
    let core = &ctx.data().core;
    if option == Some(TrainOption::Cancel) {
        let guild = ctx.guild_id().map(|g| g.to_string()).unwrap_or_default();
        let text = match core.cancel_training_for(&guild).await? {
            Cancelled::Running => "Cancelling the running training; the current model stays.",
            Cancelled::Queued => "Took this server's training out of the queue; the current model stays.",
            Cancelled::Nothing => "No training is running for this server.",
        };
        ctx.say(text).await?;
        return Ok(());
    }
    let request = TrainRequest {
        force: option == Some(TrainOption::Force),
        requested_by: Some(ctx.author().id.to_string()),
        ..TrainRequest::new(ctx.guild_id().map(|g| g.to_string()), Trigger::Command)
    };
    let text = match core.request_training(request).await {
        Ok(a) => format!(
            "Training started (run {}, {} messages, up to {} epoch{}, at most {} minutes). \
             I keep replying as before until the new model is ready; `{}llmstats` shows progress.",
            a.run_id,
            a.corpus_messages,
            a.epochs,
            if a.epochs == 1 { "" } else { "s" },
            core.config().engine.max_minutes,
            core.config().prefix
        ),
        Err(ServiceError::Queued { position, .. }) => format!(
            "Another server's model is training right now; this server's training is queued \
             (position {position}) and starts by itself as soon as it can. `{}llmtrain cancel` takes it out.",
            core.config().prefix
        ),
        Err(ServiceError::Delegated { job, ahead, .. }) => format!(
            "Training handed to a training worker (job {job}, {ahead} ahead of it). I keep replying as \
             before and announce the new model when it serves. `{}llmtrain cancel` stops it.",
            core.config().prefix
        ),
        Err(ServiceError::NotNeeded { decision, .. }) => format!(
            "Not training now: {}. `{}llmtrain force` trains anyway.",
            decision.reason,
            core.config().prefix
        ),
        // Other refusals reach the asker through `on_error`, which shows user errors as they are.
        Err(e) => return Err(e.into()),
    };
    ctx.say(text).await?;
    Ok(())
}

/// Admins: members listed in `MYNAH_ADMIN_IDS`, and members with Manage Server.
pub(super) async fn is_admin(ctx: Context<'_>) -> Result<bool, Error> {
    if ctx.data().core.config().is_admin(ctx.author().id.get()) {
        return Ok(true);
    }
    let Some(guild_id) = ctx.guild_id() else {
        return Ok(false);
    };
    let Some(member) = ctx.author_member().await else {
        return Ok(false);
    };
    // Interactions carry the member's computed permissions; prefix commands compute them from
    // the guild's roles, cached from GUILD_CREATE or fetched.
    if let Some(p) = member.permissions {
        return Ok(p.manage_guild());
    }
    let cached = ctx.guild().map(|g| g.member_permissions(&member));
    let permissions = match cached {
        Some(p) => p,
        None => {
            let guild: serenity::PartialGuild = guild_id.to_partial_guild(ctx).await?;
            guild.member_permissions(&member)
        }
    };
    Ok(permissions.manage_guild())
}

/// Stop mynah from storing or learning from your messages here, and delete what it stored.
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmoptout(ctx: Context<'_>) -> Result<(), Error> {
    // Deferred ephemerally: the answer that follows a defer keeps the defer's visibility.
    ctx.defer_ephemeral().await?;
    let (guild, user) = ids(ctx);
    let core = &ctx.data().core;
    let purged = core.opt_out(&guild, &user).await?;
    let stale = if purged.messages > 0 {
        " The current model is marked stale and is retrained without them."
    } else {
        ""
    };
    let deleted = match purged.messages {
        0 => "I had none stored".to_string(),
        n => format!("I deleted the {n} I had"),
    };
    let text = format!(
        "You're opted out: I won't store or learn from your messages in this server, and {deleted}.{stale} `{}llmoptin` undoes this.",
        core.config().prefix
    );
    ctx.send(private_reply(text)).await?;
    Ok(())
}

/// Let mynah learn from your messages here again (after llmoptout).
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmoptin(ctx: Context<'_>) -> Result<(), Error> {
    // Deferred ephemerally: the answer that follows a defer keeps the defer's visibility.
    ctx.defer_ephemeral().await?;
    let (guild, user) = ids(ctx);
    let text = if ctx.data().core.opt_in(&guild, &user).await? {
        "You're opted back in: your new messages in collected channels are stored and learned from again."
    } else {
        "You weren't opted out; nothing changed."
    };
    ctx.send(private_reply(text.to_string())).await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poise::ChoiceParameter)]
pub enum Confirm {
    #[name = "confirm"]
    Confirm,
}

/// Delete every message of yours that mynah stored in this server (asks for a confirmation).
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmforgetme(
    ctx: Context<'_>,
    #[description = "confirm: go ahead (after a first llmforgetme)"] confirm: Option<Confirm>,
) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    let (guild, user) = ids(ctx);
    let core = &ctx.data().core;
    let key = (ctx.guild_id().map(|g| g.get()).unwrap_or(0), ctx.author().id.get());
    let asked = {
        let mut pending = ctx.data().forget_requests.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, at| at.elapsed() < FORGET_CONFIRM_WITHIN);
        match confirm {
            Some(Confirm::Confirm) => pending.remove(&key).is_some(),
            None => {
                pending.insert(key, Instant::now());
                false
            }
        }
    };
    let text = if asked {
        // The confirmation's own time, on Discord's clock, like the messages it forgets.
        let asked_ms = ctx.created_at().timestamp_millis();
        let purged = core.forget_user(&guild, &user, asked_ms).await?;
        format!(
            "Done: I deleted the {} of yours I had stored in this server. New messages are still collected; `{}llmoptout` stops that too.",
            crate::render::count(purged.messages, "message"),
            core.config().prefix
        )
    } else {
        let stored = core.my_data(&guild, &user).await?.lines.len();
        let again = if confirm.is_some() {
            "There is no pending request (they expire after 5 minutes). "
        } else {
            ""
        };
        let all = match stored {
            1 => "the 1 message".to_string(),
            n => format!("all {n} messages"),
        };
        format!(
            "{again}This deletes {all} of yours that I stored in this server, for good. \
             To go ahead, run `{}llmforgetme confirm` within 5 minutes.",
            core.config().prefix
        )
    };
    ctx.send(private_reply(text)).await?;
    Ok(())
}

/// Get the messages of yours that mynah stored in this server, as a JSONL file sent privately.
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmmydata(ctx: Context<'_>) -> Result<(), Error> {
    // Deferred ephemerally: the answer that follows a defer keeps the defer's visibility.
    ctx.defer_ephemeral().await?;
    let (guild, user) = ids(ctx);
    let data = ctx.data().core.my_data(&guild, &user).await?;
    let status = if data.opted_out { " You are opted out of collection." } else { "" };
    if data.lines.is_empty() {
        ctx.send(private_reply(format!("I have no messages of yours stored in this server.{status}")))
            .await?;
        return Ok(());
    }
    let files = data_files(&data.lines, &format!("mynah-{guild}-{user}"));
    let text = format!(
        "The {} of yours I stored in this server, one JSON object a line.{status}",
        crate::render::count(data.lines.len() as u64, "message")
    );
    if let Context::Application(_) = ctx {
        // Ephemeral: only the asker sees it.
        let mut reply = private_reply(text);
        for f in files {
            reply = reply.attachment(f);
        }
        ctx.send(reply).await?;
        return Ok(());
    }
    let mut sent = true;
    for (i, f) in files.into_iter().enumerate() {
        let content = if i == 0 { text.clone() } else { "(continued)".into() };
        let message =
            serenity::CreateMessage::new().content(content).add_file(f).allowed_mentions(no_pings());
        if let Err(e) = ctx.author().direct_message(ctx, message).await {
            tracing::info!(error = %e, "could not send a user their data by DM");
            sent = false;
            break;
        }
    }
    let text = if sent {
        format!(
            "I sent you your {} in a direct message.",
            crate::render::count(data.lines.len() as u64, "stored message")
        )
    } else {
        "I couldn't send you a direct message (are DMs from server members turned off?). \
         Nothing was posted here; try again once DMs are open, or use the slash command `/llmmydata`."
            .to_string()
    };
    ctx.say(text).await?;
    Ok(())
}

/// JSONL lines as attachments of at most [`DATA_FILE_BYTES`] each.
fn data_files(lines: &[String], stem: &str) -> Vec<serenity::CreateAttachment> {
    let mut chunks: Vec<String> = vec![String::new()];
    for line in lines {
        let last = chunks.len() - 1;
        if !chunks[last].is_empty() && chunks[last].len() + line.len() + 1 > DATA_FILE_BYTES {
            chunks.push(String::new());
        }
        let last = chunks.len() - 1;
        chunks[last].push_str(line);
        chunks[last].push('\n');
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let name = if n == 1 { format!("{stem}.jsonl") } else { format!("{stem}-{}.jsonl", i + 1) };
            serenity::CreateAttachment::bytes(c.into_bytes(), name)
        })
        .collect()
}

/// A reply only the author sees when the command came as a slash command.
fn private_reply(text: String) -> poise::CreateReply {
    poise::CreateReply::default().content(text).ephemeral(true).allowed_mentions(no_pings())
}

fn ids(ctx: Context<'_>) -> (String, String) {
    (ctx.guild_id().map(|g| g.to_string()).unwrap_or_default(), ctx.author().id.to_string())
}
