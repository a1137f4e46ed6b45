//! Command-line parsing and the entry point of each subcommand.

mod base;
mod db;
mod import;
mod pretrain;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::{Core, ServiceError};
use crate::store::{RunOutcome, Store};

#[derive(Debug, Parser)]
#[command(name = "mynah", version, about = "A Discord bot that learns to talk like its server")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot (when DISCORD_TOKEN is set) and the HTTP API.
    Run,
    /// Exit 0 if the running bot's HTTP API answers `GET /healthz` (a container health check).
    Health,
    /// Try the real bot against a built-in local Discord server, from this terminal.
    Playground {
        /// The playground's own database, kept apart from the real bot's.
        #[arg(long, default_value = "sqlite://data/playground.db")]
        database: String,
    },
    /// Import the corpus (JSONL or DiscordChatExporter JSON) or export it as JSONL.
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Train a guild's model now, in this process, with a progress bar.
    Train {
        /// The guild (optional when only one guild has messages).
        #[arg(long)]
        guild: Option<String>,
        #[arg(long)]
        epochs: Option<u32>,
        /// Stop training after this many minutes (MYNAH_TRAIN_MAX_MINUTES by default).
        #[arg(long)]
        max_minutes: Option<f64>,
        /// Model size: tiny, small or default (MYNAH_PRESET by default).
        #[arg(long)]
        preset: Option<String>,
        /// Train for the mynah instance at this URL (e.g. http://host:3000): pull its corpus,
        /// train here, push the model back.
        #[arg(long)]
        remote: Option<String>,
        /// The remote instance's MYNAH_API_TOKEN (better from MYNAH_REMOTE_TOKEN than on the
        /// command line, where other users of the machine can read it).
        #[arg(long, env = "MYNAH_REMOTE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Allow plain http:// to another machine (the token and corpus travel unencrypted).
        #[arg(long)]
        insecure: bool,
    },
    /// Models trained here for another instance.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Pretrained bases that trainings start from (`models/base/`).
    #[command(subcommand)]
    Base(base::BaseCommand),
    /// Print one reply to TEXT, as a mention in the guild would get.
    Reply {
        #[arg(long)]
        guild: Option<String>,
        /// The channel whose recent messages form the context.
        #[arg(long)]
        channel: Option<String>,
        /// Who is speaking.
        #[arg(long, default_value = "you")]
        author: String,
        text: String,
    },
    /// Measure reply latency, training throughput and quality, and memory (see README).
    #[command(subcommand)]
    Bench(crate::bench::Bench),
    /// Act on a user's request received outside Discord (by e-mail, say): the same operations
    /// as their own commands.
    #[command(subcommand)]
    User(UserCommand),
    /// Train the jobs of the PostgreSQL job queue (MYNAH_TRAINING=workers) on this machine, one
    /// at a time, until stopped (a job in progress then goes back to the queue).
    Worker {
        /// How the worker is named in the queue (default: host name and process ID).
        #[arg(long)]
        name: Option<String>,
    },
    /// The database: moving a store from SQLite to PostgreSQL.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Show what has been collected and learned.
    Stats {
        /// Only this guild.
        #[arg(long)]
        guild: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also draw the guild's picture (runs, loss curve, messages per day) into this PNG file.
        #[arg(long, value_name = "FILE.png")]
        plot: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Push a trained run directory (one kept after a failed push) to the instance at --remote.
    Push {
        dir: std::path::PathBuf,
        #[arg(long)]
        remote: String,
        #[arg(long)]
        guild: String,
        /// The remote instance's MYNAH_API_TOKEN.
        #[arg(long, env = "MYNAH_REMOTE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        insecure: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Print the user's stored messages in the guild as JSONL (like !llmmydata).
    Data {
        #[arg(long)]
        guild: String,
        #[arg(long)]
        user: String,
    },
    /// Delete everything the user wrote in the guild, for good (like !llmforgetme).
    Forget {
        #[arg(long)]
        guild: String,
        #[arg(long)]
        user: String,
    },
    /// Stop collecting the user's messages in the guild and delete them (like !llmoptout).
    OptOut {
        #[arg(long)]
        guild: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Import JSONL or DiscordChatExporter JSON exports (told apart by content): a file, `-` for
    /// standard input, or a directory, searched recursively for .json and .jsonl files. Replayed
    /// messages are skipped; bots' messages, system messages and messages without text are
    /// counted and left out.
    Import {
        /// A .jsonl or .json file, `-` for standard input, or a directory of them.
        file: PathBuf,
        /// Store every message under this guild instead of its own.
        #[arg(long)]
        guild: Option<String>,
        /// Import nothing if any file, line or message is malformed.
        #[arg(long)]
        strict: bool,
    },
    /// Export stored messages as JSONL, oldest first.
    Export {
        /// Only this guild.
        #[arg(long)]
        guild: Option<String>,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => run_bot(config).await,
        Command::Health => health(&config).await,
        Command::Playground { database } => {
            crate::playground::run(Config { database_url: database, ..config }).await
        }
        Command::Corpus(CorpusCommand::Import { file, guild, strict }) => {
            import::run(&config, &file, guild.as_deref(), strict).await
        }
        Command::Corpus(CorpusCommand::Export { guild, output }) => {
            export(&config, guild.as_deref(), output).await
        }
        Command::Stats { guild, json, plot } => stats(config, guild.as_deref(), json, plot).await,
        Command::Model(ModelCommand::Push { dir, remote, guild, token, insecure }) => {
            let url = crate::models::remote::check_url(&remote, insecure)?;
            let token = token.context("push needs --token (or MYNAH_REMOTE_TOKEN)")?;
            let pushed = crate::models::remote::push_dir(&url, &token, &guild, &dir).await?;
            println!("pushed: guild {} now serves run-{}", pushed.guild_id, pushed.run_id);
            Ok(())
        }
        Command::Train { guild, epochs, max_minutes, preset, remote, token, insecure } => {
            let mut config = config;
            if let Some(name) = preset {
                config.engine.preset = crate::engine::Preset::by_name(&name)
                    .with_context(|| format!("unknown preset {name:?}: use tiny, small or default"))?;
            }
            match remote {
                Some(url) => {
                    let url = crate::models::remote::check_url(&url, insecure)?;
                    let token = token.context("--remote needs MYNAH_REMOTE_TOKEN (or --token)")?;
                    let guild = match guild {
                        Some(g) => g,
                        None => crate::models::remote::only_guild(&url, &token).await?,
                    };
                    if let Some(e) = epochs {
                        config.engine.epochs = e as usize;
                    }
                    if let Some(m) = max_minutes {
                        config.engine.max_minutes = m;
                    }
                    let pushed = crate::models::remote::train_remote(&config, &url, &token, &guild, |p| {
                        if p.phase != crate::engine::train::Phase::Training || p.step % 50 == 0 {
                            eprintln!(
                                "  {} step {}/{} loss {:.3} {:.0} tok/s",
                                p.phase, p.step, p.total_steps, p.loss, p.tokens_per_second
                            );
                        }
                    })
                    .await?;
                    println!("pushed: guild {} now serves run-{}", pushed.guild_id, pushed.run_id);
                    Ok(())
                }
                None => train(config, guild, epochs, max_minutes).await,
            }
        }
        Command::Base(cmd) => base::run(&config, cmd).await,
        Command::Db(cmd) => db::run(&config.database_url, cmd).await,
        Command::Worker { name } => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let signalled = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                signalled.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            crate::worker::run(config, stop, name).await
        }
        Command::Reply { guild, channel, author, text } => reply(config, guild, channel, author, text).await,
        Command::User(cmd) => user(config, cmd).await,
        Command::Bench(crate::bench::Bench::Ingest { messages }) => crate::bench::ingest::run(messages).await,
        Command::Bench(crate::bench::Bench::Scale { postgres, seconds, processes }) => {
            crate::bench::scale::run(postgres.as_deref(), seconds, &processes).await
        }
        Command::Bench(crate::bench::Bench::ScaleWriter { database, guild, seconds }) => {
            crate::bench::scale::writer(&database, &guild, seconds).await
        }
        Command::Bench(crate::bench::Bench::Load { clients, seconds }) => {
            crate::bench::load::run(clients, seconds).await
        }
        Command::Bench(b) => tokio::task::spawn_blocking(move || crate::bench::run(b)).await?,
    }
}

/// Opens the store and the core for a one-shot command, runs `f`, and closes the store.
async fn with_core<T>(
    config: Config,
    f: impl AsyncFnOnce(&std::sync::Arc<Core>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let store = Store::open(&config.database_url).await?;
    let core = match Core::open(config, store.clone()).await {
        Ok(core) => core,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    let result = f(&core).await;
    core.close().await;
    result
}

async fn train(
    config: Config,
    guild: Option<String>,
    epochs: Option<u32>,
    max_minutes: Option<f64>,
) -> anyhow::Result<()> {
    with_core(config, async |core| {
        let mut watch = core.watch_training();
        let request = crate::service::TrainRequest {
            epochs,
            max_minutes,
            force: true,
            requested_by: Some("cli".into()),
            ..crate::service::TrainRequest::new(guild, crate::service::Trigger::Cli)
        };
        let accepted = core.request_training(request).await?;
        eprintln!(
            "training guild {} on {} messages (run {}, preset {}, up to {} epochs)",
            accepted.guild_id,
            accepted.corpus_messages,
            accepted.run_id,
            core.config().engine.preset.name,
            accepted.epochs
        );
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            watch.changed().await.context("the trainer stopped unexpectedly")?;
            let view = watch.borrow_and_update().clone();
            if let Some(p) = &view.progress {
                bar.set_length(p.total_steps.max(1) as u64);
                bar.set_position(p.step as u64);
                bar.set_message(format!(
                    "{} loss {:.3}  {:.0} tok/s  ETA {:.0}s",
                    p.phase, p.loss, p.tokens_per_second, p.eta_seconds
                ));
            }
            if let Some(last) = view.last.filter(|l| l.run_id == accepted.run_id) {
                bar.finish_and_clear();
                return match last.outcome {
                    RunOutcome::Succeeded => {
                        println!(
                            "run {} succeeded in {:.1} s: validation {:.3} bits/byte",
                            last.run_id,
                            last.seconds,
                            last.val_bits_per_byte.unwrap_or(f64::NAN)
                        );
                        Ok(())
                    }
                    other => anyhow::bail!("run {} {other}: {}", last.run_id, last.error.unwrap_or_default()),
                };
            }
        }
    })
    .await
}

async fn reply(
    config: Config,
    guild: Option<String>,
    channel: Option<String>,
    author: String,
    text: String,
) -> anyhow::Result<()> {
    with_core(config, async |core| {
        let guild = match guild {
            Some(g) => g,
            None => match core.resolve_guild(None).await {
                Ok(only) => only,
                Err(ServiceError::NothingToTrain) => anyhow::bail!("no guild has messages; pass --guild"),
                Err(ServiceError::GuildAmbiguous(_)) => {
                    anyhow::bail!("several guilds have messages; pass --guild")
                }
                Err(e) => return Err(e.into()),
            },
        };
        core.build_voice(&guild).await?;
        let request = crate::service::ReplyRequest {
            guild_id: guild,
            channel_id: channel,
            author,
            text,
            ..Default::default()
        };
        let out = core.reply(&request).await?;
        println!("{}", out.text);
        Ok(())
    })
    .await
}

/// Asks the local API whether it is alive; the image has no curl for its health check.
async fn health(config: &Config) -> anyhow::Result<()> {
    let mut addr = config.api_addr.context("the HTTP API is off (MYNAH_API_ADDR=off): nothing to check")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/healthz");
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(3)).build()?;
    let answer = client.get(&url).send().await.with_context(|| format!("{url} did not answer"))?;
    anyhow::ensure!(answer.status().is_success(), "{url} answered {}", answer.status());
    println!("ok");
    Ok(())
}

async fn run_bot(config: Config) -> anyhow::Result<()> {
    let mut running = crate::app::start(config).await?;
    if !running.serves_anything() {
        running.shutdown().await;
        anyhow::bail!("nothing to run: set DISCORD_TOKEN, or MYNAH_API_ADDR to something other than off");
    }
    if running.core().config().discord_token.is_none() {
        println!("DISCORD_TOKEN is not set: running the HTTP API only (no Discord connection).");
    }
    // The API and the Discord client only stop by themselves when they failed.
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        result = running.failed() => result,
    };
    tracing::info!("shutting down");
    let begun = std::time::Instant::now();
    running.shutdown().await;
    tracing::info!(seconds = begun.elapsed().as_secs_f64(), "stopped");
    outcome
}

async fn user(config: Config, cmd: UserCommand) -> anyhow::Result<()> {
    with_core(config, async |core| match cmd {
        UserCommand::Data { guild, user } => {
            let data = core.my_data(&guild, &user).await?;
            let mut out = std::io::stdout().lock();
            for line in &data.lines {
                writeln!(out, "{line}")?;
            }
            let status = if data.opted_out { "; opted out" } else { "" };
            eprintln!("{} stored messages of user {user} in guild {guild}{status}", data.lines.len());
            Ok(())
        }
        UserCommand::Forget { guild, user } => {
            let purged = core.forget_user(&guild, &user, crate::store::now_ms()).await?;
            println!(
                "deleted {} messages of user {user} in guild {guild}; reading history back will not restore them",
                purged.messages
            );
            Ok(())
        }
        UserCommand::OptOut { guild, user } => {
            let purged = core.opt_out(&guild, &user).await?;
            println!("user {user} is opted out in guild {guild}; deleted {} stored messages", purged.messages);
            Ok(())
        }
    })
    .await
}

/// Ctrl-C, or SIGTERM from a container runtime.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn export(config: &Config, guild: Option<&str>, output: Option<PathBuf>) -> anyhow::Result<()> {
    let records = with_core(config.clone(), async |core| Ok(core.export(guild).await?)).await?;
    let mut text = String::new();
    for r in &records {
        text.push_str(&r.to_line());
        text.push('\n');
    }
    match output {
        Some(path) => {
            // Write beside the target and rename, so a failed export never leaves half a file.
            let tmp = path.with_extension("jsonl.partial");
            std::fs::write(&tmp, &text).with_context(|| format!("Failed to write {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("Failed to write {}", path.display()))?;
            eprintln!("exported {} messages to {}", records.len(), path.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn stats(config: Config, guild: Option<&str>, json: bool, plot: Option<PathBuf>) -> anyhow::Result<()> {
    let prefix = config.prefix.clone();
    with_core(config, async |core| {
        if let Some(path) = &plot {
            plot_stats(core, guild, path).await?;
        }
        match (guild, json) {
            (Some(g), true) => println!("{}", serde_json::to_string_pretty(&core.stats(g, None).await?)?),
            (None, true) => println!("{}", serde_json::to_string_pretty(&core.status().await?)?),
            (Some(g), false) => {
                println!("{}", plain(&crate::render::stats(&core.stats(g, None).await?, &prefix)))
            }
            (None, false) => {
                let status = core.status().await?;
                if status.guilds.is_empty() {
                    println!("No messages collected yet.");
                }
                for g in status.guilds {
                    println!("Guild {}", g.guild_id);
                    println!(
                        "{}\n",
                        plain(&crate::render::stats(&core.stats(&g.guild_id, None).await?, &prefix))
                    );
                }
            }
        }
        anyhow::Ok(())
    })
    .await
}

/// Draws the guild's picture (the only guild's without `--guild`) into `path`.
async fn plot_stats(core: &Core, guild: Option<&str>, path: &std::path::Path) -> anyhow::Result<()> {
    let guild = match guild {
        Some(g) => g.to_string(),
        None => match core.resolve_guild(None).await {
            Ok(only) => only,
            Err(ServiceError::GuildAmbiguous(_)) => {
                anyhow::bail!("several guilds have messages; pass --guild")
            }
            Err(ServiceError::NothingToTrain) => anyhow::bail!("no guild has messages; pass --guild"),
            Err(e) => return Err(e.into()),
        },
    };
    let png = core.guild_picture(&guild, None).await?;
    std::fs::write(path, png).with_context(|| format!("Failed to write {}", path.display()))?;
    eprintln!("drew guild {guild}'s picture into {}", path.display());
    Ok(())
}

/// Drops Discord's bold markers for the terminal.
fn plain(text: &str) -> String {
    text.replace("**", "")
}
