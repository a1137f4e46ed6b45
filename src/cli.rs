//! Command-line parsing and the entry point of each subcommand.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::service::Core;
use crate::store::Store;

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
    /// Try the real bot against a built-in local Discord server, from this terminal.
    Playground {
        /// The playground's own database, kept apart from the real bot's.
        #[arg(long, default_value = "sqlite://data/playground.db")]
        database: String,
    },
    /// Import or export the corpus as JSONL (one message per line).
    #[command(subcommand)]
    Corpus(CorpusCommand),
    /// Show what has been collected and learned.
    Stats {
        /// Only this guild.
        #[arg(long)]
        guild: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Import a JSONL file (`-` for standard input); replayed messages are skipped.
    Import {
        file: PathBuf,
        /// Store every message under this guild instead of the one on its line.
        #[arg(long)]
        guild: Option<String>,
        /// Import nothing if any line is malformed.
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
        Command::Playground { database } => {
            crate::playground::run(Config { database_url: database, ..config }).await
        }
        Command::Corpus(CorpusCommand::Import { file, guild, strict }) => {
            import(&config, &file, guild.as_deref(), strict).await
        }
        Command::Corpus(CorpusCommand::Export { guild, output }) => {
            export(&config, guild.as_deref(), output).await
        }
        Command::Stats { guild, json } => stats(config, guild.as_deref(), json).await,
    }
}

async fn run_bot(config: Config) -> anyhow::Result<()> {
    config.check_api_exposure().map_err(anyhow::Error::msg)?;
    let store = Store::open(&config.database_url).await?;
    let core = Core::new(config.clone(), store.clone());
    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let api = config.api_addr.map(|addr| {
        let core = core.clone();
        let mut stopped = api_stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            crate::api::serve(core, addr, shutdown).await
        })
    });
    let bot = if config.discord_token.is_some() {
        Some(crate::discord::start(core.clone()).await?)
    } else {
        println!("DISCORD_TOKEN is not set: running the HTTP API only (no Discord connection).");
        None
    };
    if api.is_none() && bot.is_none() {
        anyhow::bail!("nothing to run: set DISCORD_TOKEN, or MYNAH_API_ADDR to something other than off");
    }
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        Some(result) = async { match api { Some(task) => Some(task.await), None => None } } => {
            // The API only ends early when it failed (e.g. the port is taken).
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the HTTP API task failed: {e}")),
            }
        }
    };
    tracing::info!("shutting down");
    let _ = stop_api.send(true);
    if let Some(bot) = bot {
        bot.shutdown().await;
    }
    store.close().await;
    outcome
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

/// What `mynah corpus import` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub imported: u64,
    pub skipped: u64,
    pub already_present: u64,
}

/// Parses a JSONL text and stores its good lines. Bad lines are reported on stderr with their
/// numbers; with `strict`, any bad line means nothing is stored.
pub async fn import_text(
    store: &Store,
    text: &str,
    guild: Option<&str>,
    strict: bool,
) -> anyhow::Result<ImportSummary> {
    let (records, bad) = crate::corpus::parse_all(text, guild);
    for b in bad.iter().take(20) {
        eprintln!("line {}: {}", b.line, b.error);
    }
    if bad.len() > 20 {
        eprintln!("... and {} more malformed lines", bad.len() - 20);
    }
    if strict && !bad.is_empty() {
        anyhow::bail!("{} malformed line(s); --strict: nothing was imported", bad.len());
    }
    let done = store.insert_many(&records).await?;
    Ok(ImportSummary {
        imported: done.inserted,
        skipped: bad.len() as u64,
        already_present: done.already_present,
    })
}

async fn import(config: &Config, file: &PathBuf, guild: Option<&str>, strict: bool) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("Failed to read standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("Failed to read {}", file.display()))?
    };
    let store = Store::open(&config.database_url).await?;
    let summary = import_text(&store, &text, guild, strict).await;
    store.close().await;
    let s = summary?;
    println!(
        "imported {}, skipped {} malformed, {} already present",
        s.imported, s.skipped, s.already_present
    );
    Ok(())
}

async fn export(config: &Config, guild: Option<&str>, output: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url).await?;
    let records = store.export(guild).await;
    store.close().await;
    let records = records?;
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

async fn stats(config: Config, guild: Option<&str>, json: bool) -> anyhow::Result<()> {
    let prefix = config.prefix.clone();
    let store = Store::open(&config.database_url).await?;
    let core = Core::new(config, store.clone());
    let result = async {
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
    }
    .await;
    store.close().await;
    result
}

/// Drops Discord's bold markers for the terminal.
fn plain(text: &str) -> String {
    text.replace("**", "")
}
