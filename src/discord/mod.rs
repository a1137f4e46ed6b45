//! The Discord layer (poise on serenity). It only adapts: events and commands become calls
//! into [`crate::service::Core`], results become messages. Every message it sends parses no
//! mentions, so nothing the bot says can ping anyone.

mod backfill;
mod channels;
mod commands;
mod events;
mod help;
mod message;
mod permissions;
mod telemetry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use poise::serenity_prelude as serenity;

use crate::service::{Core, ServiceError};

/// Shared state handed to every command and event (cheap to clone for background tasks).
#[derive(Clone)]
pub struct Data {
    pub core: Arc<Core>,
    /// The read-backs of channels' history running now.
    backfills: Arc<backfill::Backfills>,
    /// `llmforgetme` asked, waiting for its confirmation: (guild, user) → when.
    forget_requests: Arc<Mutex<HashMap<(u64, u64), Instant>>>,
    /// Tells command invocations from chat; the command list is fixed at start.
    filter: Arc<message::Filter>,
}

impl Data {
    fn new(core: Arc<Core>, options: &poise::FrameworkOptions<Data, Error>) -> Data {
        let filter = Arc::new(message::Filter::new(options, &core.config().prefix));
        Data { core, backfills: Arc::default(), forget_requests: Arc::default(), filter }
    }
}

pub type Error = anyhow::Error;
pub type Context<'a> = poise::Context<'a, Data, Error>;

/// A running bot; [`BotHandle::shutdown`] disconnects it.
pub struct BotHandle {
    shard_manager: Arc<serenity::ShardManager>,
    /// The client; ends with an error when it stopped by itself.
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl BotHandle {
    pub async fn shutdown(mut self) {
        self.shard_manager.shutdown_all().await;
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("the Discord client did not stop within 5 s");
            }
        }
    }

    /// True once the client task has ended (it failed or was shut down).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Resolves when the client stops by itself (Discord refused the token or the commands):
    /// the error says why.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        let Some(task) = self.task.as_mut() else { return std::future::pending().await };
        let result = task.await;
        self.task = None;
        match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("the Discord client stopped")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the Discord client task failed: {e}")),
        }
    }
}

/// Checks the commands as Discord checks a registration (names, description lengths, option
/// counts), so a doc comment that grew too long stops the start instead of failing
/// registration in production with only a warning.
pub fn check_commands(commands: &[poise::Command<Data, Error>]) -> anyhow::Result<()> {
    let list = serde_json::to_value(poise::builtins::create_application_commands(commands))?;
    let list = list.as_array().map(Vec::as_slice).unwrap_or_default();
    crate::devserver::rules::check_commands(list)
        .map_err(|r| anyhow::anyhow!("Discord would refuse the slash commands: {}", r.message))
}

/// Allowed mentions that parse nothing: no @everyone, no roles, no users, no reply ping.
pub fn no_pings() -> serenity::CreateAllowedMentions {
    serenity::CreateAllowedMentions::new().empty_users().empty_roles().everyone(false).replied_user(false)
}

/// The intents the bot needs: guild messages with their content.
pub fn intents() -> serenity::GatewayIntents {
    serenity::GatewayIntents::GUILDS
        | serenity::GatewayIntents::GUILD_MESSAGES
        | serenity::GatewayIntents::MESSAGE_CONTENT
}

/// Connects the bot to Discord (or to `DISCORD_API_BASE`) and runs it in the background.
pub async fn start(core: Arc<Core>) -> anyhow::Result<BotHandle> {
    let shards = core.config().shards;
    let token = core.config().discord_token.clone().context("DISCORD_TOKEN is not set")?;
    let mut http = serenity::HttpBuilder::new(token.expose());
    if let Some(base) = &core.config().discord_api_base {
        // serenity ignores the proxy while its ratelimiter is on (serenity#1739).
        http = http.proxy(base.as_str()).ratelimiter_disabled(true);
    }
    let prefix = core.config().prefix.clone();
    let commands = commands::all();
    check_commands(&commands)?;
    // Set when Discord refuses the registration: the client then stops with this error.
    let refused: Arc<Mutex<Option<String>>> = Arc::default();
    let refused_in_setup = refused.clone();
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands,
            prefix_options: poise::PrefixFrameworkOptions {
                prefix: Some(prefix.into()),
                // A mention is a conversation with the bot, not a command invocation.
                mention_as_prefix: false,
                ..Default::default()
            },
            allowed_mentions: Some(no_pings()),
            on_error: |error| Box::pin(on_error(error)),
            event_handler: |framework, event| Box::pin(events::handle(framework, event)),
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            Box::pin(async move {
                tracing::info!(user = %ready.user.name, guilds = ready.guilds.len(), "connected to Discord");
                if let Err(e) = poise::builtins::register_globally(ctx, &framework.options().commands).await {
                    // Discord refusing the commands (4xx) is a bug to fix, not a blip: stop loudly.
                    if let serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(r)) = &e {
                        if r.status_code.is_client_error() {
                            let details: Vec<String> =
                                r.error.errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
                            let why = format!(
                                "Discord refused the slash commands: {} {}",
                                r.error.message,
                                details.join("; ")
                            );
                            tracing::error!("{why}");
                            *refused_in_setup.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                            framework.shard_manager().shutdown_all().await;
                            anyhow::bail!("slash-command registration refused");
                        }
                    }
                    tracing::warn!(error = %e, "could not register slash commands; prefix commands still work");
                }
                if !core.config().announce_channels.is_empty() {
                    tokio::spawn(announce(ctx.clone(), core.clone()));
                }
                Ok(Data::new(core, framework.options()))
            })
        })
        .build();
    let mut client = serenity::ClientBuilder::new_with_http(http.build(), intents())
        .framework(framework)
        .event_handler(telemetry::Telemetry)
        .await
        .context("Failed to build the Discord client")?;
    let shard_manager = client.shard_manager.clone();
    let task = tokio::spawn(async move {
        let started = if shards.is_all() && shards.total == 1 {
            client.start().await
        } else {
            // serenity takes the range's end as the last shard (inclusive).
            client.start_shard_range(shards.first..shards.last, shards.total).await
        };
        if let Some(why) = refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(anyhow::anyhow!(why));
        }
        started.map_err(|e| {
            tracing::error!(error = %e, "the Discord client stopped");
            anyhow::Error::from(e).context("the Discord client stopped")
        })
    });
    Ok(BotHandle { shard_manager, task: Some(task) })
}

/// Posts each new model of a guild in that guild's announcement channel.
async fn announce(ctx: serenity::Context, core: Arc<Core>) {
    let mut events = core.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let crate::service::CoreEvent::ModelReady {
            guild_id,
            run_id,
            val_bits_per_byte,
            previous_val_bits_per_byte,
        } = event;
        let channel = core.config().announce_channels.iter().find_map(|c| {
            let id = serenity::ChannelId::new(c.parse().ok()?);
            let guild = ctx.cache.guild(serenity::GuildId::new(guild_id.parse().ok()?))?;
            guild.channels.contains_key(&id).then_some(id)
        });
        let Some(channel) = channel else { continue };
        let was = previous_val_bits_per_byte.map(|p| format!(" (was {p:.3})")).unwrap_or_default();
        let text = format!(
            "I've learned some more: model run-{run_id} now answers mentions here, at {val_bits_per_byte:.3} bits per byte on held-out messages{was}."
        );
        let message = serenity::CreateMessage::new().content(text).allowed_mentions(no_pings());
        if let Err(e) = channel.send_message(&ctx.http, message).await {
            tracing::warn!(error = %e, "could not announce a new model");
        }
    }
}

/// The one error handler: user mistakes get a short explanation, everything else is logged
/// and answered with a generic message.
async fn on_error(error: poise::FrameworkError<'_, Data, Error>) {
    match error {
        poise::FrameworkError::Command { error, ctx, .. } => {
            // A mistake or a refusal the asker can act on is shown as such; anything else is
            // mynah's fault: logged, and answered with an apology.
            let text = match error.downcast_ref::<ServiceError>() {
                Some(e) if e.is_user_error() => crate::text::for_discord(&e.to_string()),
                _ => {
                    tracing::error!(command = %ctx.command().name, error = ?error, "command failed");
                    "Sorry, something went wrong on my side; the operator can find details in the log.".into()
                }
            };
            reply(ctx, text).await;
        }
        poise::FrameworkError::CommandCheckFailed { error, ctx, .. } => {
            if let Some(e) = error {
                tracing::error!(command = %ctx.command().name, error = ?e, "permission check failed");
            }
            let text = format!(
                "Only server admins (Manage Server permission, or listed in MYNAH_ADMIN_IDS) can use `{}`.",
                ctx.command().name
            );
            reply(ctx, text).await;
        }
        poise::FrameworkError::ArgumentParse { error, input, ctx, .. } => {
            let usage = commands::usage(&ctx.data().core.config().prefix, &ctx.command().name);
            let what = input.map(|i| format!("`{i}`: ")).unwrap_or_default();
            reply(ctx, format!("I didn't understand {what}{error}. Usage: {usage}")).await;
        }
        poise::FrameworkError::Setup { error, .. } => {
            tracing::error!(error = %error, "the bot could not set up; disconnecting");
        }
        poise::FrameworkError::GuildOnly { ctx, .. } => {
            reply(ctx, "This command only works in a server channel.".into()).await;
        }
        other => {
            if let Err(e) = poise::builtins::on_error(other).await {
                tracing::warn!(error = %e, "error while handling an error");
            }
        }
    }
}

async fn reply(ctx: Context<'_>, text: String) {
    let message = poise::CreateReply::default().content(text).allowed_mentions(no_pings());
    if let Err(e) = ctx.send(message).await {
        tracing::warn!(error = %e, "could not send an error reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_pass_discords_registration_rules() {
        check_commands(&commands::all()).expect("the real commands register");
        let mut long = commands::llmstats();
        long.description = Some("a doc comment that grew ".repeat(5).into());
        let e = check_commands(&[long]).expect_err("Discord refuses descriptions over 100 characters");
        assert!(e.to_string().contains("0.description"), "{e}");
    }
}
