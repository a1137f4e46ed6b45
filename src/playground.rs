//! `mynah playground`: the real bot against the built-in Discord-compatible server, with the
//! bundled sample corpus, driven from a terminal prompt where you type as a Discord user.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::{Collect, Config, Secret};
use crate::devserver::{DevServer, MANAGE_GUILD};

/// The sample corpus compiled into the binary (see `data/sample/README.md` for its license).
pub const SAMPLE: &str = include_str!("../data/sample/fcc-small-excerpt.jsonl");

/// Fixed IDs, so a model trained in one playground session is still there in the next.
pub const GUILD_ID: u64 = 1_000_000_000_000_000_001;
pub const GENERAL_ID: u64 = 1_000_000_000_000_000_002;
pub const OFFTOPIC_ID: u64 = 1_000_000_000_000_000_003;

/// How long to wait for the bot to answer a command or a mention before prompting again.
const REPLY_WAIT: Duration = Duration::from_secs(15);
/// How long to wait for the bot to join in where `llmchannel reply sometimes` lets it.
const JOIN_IN_WAIT: Duration = Duration::from_secs(3);

/// What the bot did about a line typed at the prompt.
enum Answered {
    Reply(crate::devserver::Posted),
    Reaction(String),
}

struct Room {
    server: DevServer,
    core: std::sync::Arc<crate::service::Core>,
    you: u64,
    guest: u64,
    bot_name: String,
}

impl Room {
    fn user_named(&self, name: &str) -> Option<u64> {
        match name {
            "you" => Some(self.you),
            "guest" => Some(self.guest),
            _ => None,
        }
    }

    /// Channel mentions as a Discord client shows them: `#name`.
    fn readable(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find("<#") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            let name = after[digits.len()..]
                .starts_with('>')
                .then(|| digits.parse().ok().and_then(|id| self.server.channel_name(id)))
                .flatten();
            match name {
                Some(name) => {
                    out.push('#');
                    out.push_str(&name);
                    rest = &after[digits.len() + 1..];
                }
                None => {
                    out.push_str("<#");
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn channel_named(&self, name: &str) -> Option<u64> {
        match name.trim_start_matches('#') {
            "general" => Some(GENERAL_ID),
            "off-topic" => Some(OFFTOPIC_ID),
            _ => None,
        }
    }
}

/// Runs the playground until `/quit`, end of input or Ctrl-C.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let server = DevServer::start().await.context("Failed to start the local Discord server")?;
    server.create_guild_with_id("Playground", GUILD_ID);
    server.create_channel_with_id(GUILD_ID, "general", GENERAL_ID);
    server.create_channel_with_id(GUILD_ID, "off-topic", OFFTOPIC_ID);
    let you = server.create_user("you");
    let guest = server.create_user("guest");
    server.add_member(GUILD_ID, you, MANAGE_GUILD);
    server.add_member(GUILD_ID, guest, 0);

    config.discord_token = Some(Secret::new(server.token()));
    config.discord_api_base = Some(server.base_url());
    config.collect = Collect::Channels([GENERAL_ID.to_string()].into());
    // A newcomer should see a trained model within a couple of minutes.
    if std::env::var_os("MYNAH_PRESET").is_none() {
        config.engine.preset = crate::engine::Preset::small();
    }
    if std::env::var_os("MYNAH_TRAIN_MAX_MINUTES").is_none() {
        config.engine.max_minutes = 1.5;
    }
    let base = crate::models::bases::resolve(&config.models_dir, &config.engine.base);
    if std::env::var_os("MYNAH_TRAIN_EPOCHS").is_none() {
        // The sample is small: a model from scratch gains from many passes in the time budget, a
        // pretrained base overfits it after a few (mynah-base-s, validation bits per byte on the
        // sample: 1.707 after 4 epochs, 1.719 after 6, 1.780 after 9, 1.844 after 11.5).
        config.engine.epochs = if matches!(base, Ok(Some(_))) { 4 } else { 20 };
    }

    // The playground trains when you ask it to, not on a schedule.
    config.schedule_minutes = None;
    config.retention_days = None;
    // A busy port gives a clear note instead of an error.
    let api_line = match config.api_addr {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(probe) => {
                drop(probe);
                format!("HTTP API:  curl http://{addr}/api/ml/status")
            }
            Err(e) => {
                config.api_addr = None;
                format!("HTTP API:  off ({addr} is not available: {e})")
            }
        },
        None => "HTTP API:  off (MYNAH_API_ADDR=off)".into(),
    };

    let running = crate::app::start(config.clone()).await?;
    let core = running.core().clone();
    let imported = match core.import_jsonl(SAMPLE, Some(&GUILD_ID.to_string()), true).await {
        Ok(imported) => imported,
        Err(e) => {
            running.shutdown().await;
            return Err(e.into());
        }
    };
    if !server.wait_until_ready(Duration::from_secs(20)).await {
        running.shutdown().await;
        anyhow::bail!("the bot did not connect to the local Discord server within 20 s");
    }
    let room = Room { bot_name: "mynah".into(), server, core: core.clone(), you, guest };
    let stats = core.stats(&GUILD_ID.to_string(), None).await?;
    println!("mynah playground: the real bot, connected to a local Discord-compatible server.");
    println!("Server \"Playground\": #general (collected) and #off-topic; you type as \"you\" (admin).");
    println!(
        "Sample corpus: {} messages in the guild ({} new from the bundled fcc-small excerpt, BSD-3-Clause).",
        stats.counts.messages, imported.imported
    );
    println!("{api_line}");
    let base_line = match base {
        Ok(Some(b)) => format!(
            "Base:      {} ({:.1} M parameters): !llmtrain fine-tunes it (MYNAH_BASE=none: a small model from scratch).",
            b.manifest.name,
            b.manifest.parameters as f64 / 1e6
        ),
        Ok(None) => "Base:      none, so !llmtrain trains a small model from scratch (`mynah base import` adds a pretrained one).".into(),
        Err(e) => format!("Base:      {e}; !llmtrain trains from scratch."),
    };
    println!("{base_line}");
    println!("Try: !help   !llmstats   @mynah hi   !llmtrain force   /as guest   /channel off-topic   /help   /quit");

    let result = prompt_loop(&room, &config.prefix).await;
    running.shutdown().await;
    result
}

async fn prompt_loop(room: &Room, prefix: &str) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let (mut user, mut user_name) = (room.you, "you".to_string());
    let (mut channel, mut channel_name) = (GENERAL_ID, "general".to_string());
    let bot_id = room.server.bot_id();
    loop {
        stdout.write_all(format!("#{channel_name} {user_name}> ").as_bytes()).await?;
        stdout.flush().await?;
        let line = tokio::select! {
            line = lines.next_line() => line?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else {
            println!();
            return Ok(());
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let mut parts = cmd.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("quit" | "exit"), _) => return Ok(()),
                (Some("as"), Some(name)) => match room.user_named(name) {
                    Some(id) => (user, user_name) = (id, name.to_string()),
                    None => println!("(no such user: try you or guest)"),
                },
                (Some("channel"), Some(name)) => match room.channel_named(name) {
                    Some(id) => (channel, channel_name) = (id, name.trim_start_matches('#').to_string()),
                    None => println!("(no such channel: try general or off-topic)"),
                },
                _ => println!(
                    "/as you|guest: speak as the admin or a plain member; /channel general|off-topic; \
                     /quit. Anything else is sent to the channel; write @{} to mention the bot.",
                    room.bot_name
                ),
            }
            continue;
        }
        let content = line.replace(&format!("@{}", room.bot_name), &format!("<@{bot_id}>"));
        let expects_reply = content.contains(&format!("<@{bot_id}>")) || content.starts_with(prefix);
        let sent = room.server.say(channel, user, &content);
        let guild = GUILD_ID.to_string();
        let may_join_in = matches!(
            room.core.reply_mode(&guild, &channel.to_string(), None),
            crate::reply_modes::ReplyMode::Sometimes { .. }
        ) && room.core.has_model(&guild);
        let wait = match (expects_reply, may_join_in) {
            (true, _) => REPLY_WAIT,
            (false, true) => JOIN_IN_WAIT,
            (false, false) => continue,
        };
        let answered = room
            .server
            .wait_for(wait, || {
                let reply = room.server.bot_messages(channel).into_iter().find(|p| p.id > sent);
                reply
                    .map(Answered::Reply)
                    .or_else(|| room.server.bot_reactions(sent).into_iter().next().map(Answered::Reaction))
            })
            .await;
        match answered {
            Some(Answered::Reply(posted)) => {
                for line in room.readable(&posted.content).lines() {
                    println!("  {}: {line}", room.bot_name);
                }
                // A terminal can't show the picture; say it came (`mynah stats --plot` draws it).
                for (name, bytes) in &posted.attachments {
                    println!("  {}: [attached {name}, {} KB]", room.bot_name, bytes.len().div_ceil(1024));
                }
            }
            Some(Answered::Reaction(emoji)) => println!(
                "  ({} reacted {emoji}: it answered a moment ago and is cooling down; try again in a few seconds)",
                room.bot_name
            ),
            None if expects_reply => println!("  (no reply from {})", room.bot_name),
            None => {}
        }
    }
}
