//! The bot's commands, each a small adapter over the service; available with the prefix and as
//! slash commands.

use poise::serenity_prelude as serenity;

use super::{Context, Error};
use crate::service::{ServiceError, TrainRequest, Trigger};

pub fn all() -> Vec<poise::Command<super::Data, Error>> {
    vec![llmstats(), llmtrain()]
}

/// How to call a command, for error messages.
pub fn usage(prefix: &str, command: &str) -> String {
    match command {
        "llmtrain" => format!("`{prefix}llmtrain`, `{prefix}llmtrain force` or `{prefix}llmtrain cancel`"),
        other => format!("`{prefix}{other}`"),
    }
}

/// Show what mynah has collected and learned in this server.
#[poise::command(prefix_command, slash_command, guild_only)]
pub async fn llmstats(ctx: Context<'_>) -> Result<(), Error> {
    let guild = ctx.guild_id().map(|g| g.to_string()).unwrap_or_default();
    let channel = ctx.channel_id().to_string();
    let core = &ctx.data().core;
    let stats = core.stats(&guild, Some(&channel)).await?;
    ctx.say(crate::text::for_discord(&crate::render::stats(&stats, &core.config.prefix))).await?;
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
#[poise::command(prefix_command, slash_command, guild_only, check = "is_admin")]
pub async fn llmtrain(
    ctx: Context<'_>,
    #[description = "force: train even if the policy says it is not needed; cancel: stop the running training"]
    option: Option<TrainOption>,
) -> Result<(), Error> {
    let core = &ctx.data().core;
    if option == Some(TrainOption::Cancel) {
        let text = if core.cancel_training() {
            "Cancelling the running training; the current model stays."
        } else {
            "No training is running."
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
            core.config.engine.max_minutes,
            core.config.prefix
        ),
        Err(ServiceError::NotNeeded { decision, .. }) => format!(
            "Not training now: {}. `{}llmtrain force` trains anyway.",
            decision.reason, core.config.prefix
        ),
        Err(
            e @ (ServiceError::BadRequest(_)
            | ServiceError::NothingToTrain
            | ServiceError::GuildAmbiguous(_)
            | ServiceError::AlreadyRunning { .. }
            | ServiceError::Engine(crate::engine::EngineError::NotEnoughData(_))),
        ) => crate::text::for_discord(&e.to_string()),
        Err(e) => return Err(e.into()),
    };
    ctx.say(text).await?;
    Ok(())
}

/// Admins: members listed in `MYNAH_ADMIN_IDS`, and members with Manage Server.
async fn is_admin(ctx: Context<'_>) -> Result<bool, Error> {
    if ctx.data().core.config.is_admin(ctx.author().id.get()) {
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
