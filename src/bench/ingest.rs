//! `mynah bench ingest`: a burst of messages over the gateway of the local Discord-compatible
//! server into the real bot, and how long mention replies take meanwhile compared with an
//! idle bot. Uses a throwaway database and no model (replies are the fallback's), so the
//! figure is the pipeline's: gateway, event handling, SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::devserver::DevServer;
use crate::service::Core;

pub async fn run(messages: usize) -> anyhow::Result<()> {
    let server = DevServer::start().await?;
    let guild = server.create_guild("Bench");
    let channel = server.create_channel(guild, "general");
    let (talker, asker) = (server.create_user("talker"), server.create_user("asker"));
    server.add_member(guild, talker, 0);
    server.add_member(guild, asker, 0);
    let dir = tempfile::tempdir()?;
    let config = super::bot_config(dir.path(), &server, channel);
    let running = crate::app::start(config).await?;
    let core = running.core().clone();
    anyhow::ensure!(server.wait_until_ready(Duration::from_secs(30)).await, "the bot did not connect");
    let bot_id = server.bot_id();
    let guild_id = guild.to_string();

    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(super::mention_ms(&server, channel, asker, bot_id, "how is it going?").await?);
    }
    let before = stored(&core, &guild_id).await?;

    let started = Instant::now();
    let burst = {
        let server = Arc::new(server);
        let s = server.clone();
        let burst = tokio::spawn(async move {
            for i in 0..messages {
                s.say(channel, talker, &format!("burst message {i} with some ordinary chat text"));
                if i % 200 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut during = Vec::new();
        while !burst.is_finished() || during.len() < 5 {
            during.push(super::mention_ms(&server, channel, asker, bot_id, "how is it going?").await?);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        burst.await?;
        (server, during)
    };
    let (server, during) = burst;
    let want = before + messages as u64 + during.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored(&core, &guild_id).await? < want {
        anyhow::ensure!(Instant::now() < deadline, "the burst was not stored within 5 minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "ingest: {messages} messages over the gateway stored in {seconds:.2} s ({:.0} messages/s), none lost",
        messages as f64 / seconds
    );
    let (p50, p99) = super::p50_p99(&mut idle);
    println!("mention replies, idle bot:        p50 {p50:.1} ms  p99 {p99:.1} ms  ({} replies)", idle.len());
    let mut during = during;
    let (p50, p99) = super::p50_p99(&mut during);
    println!(
        "mention replies during the burst: p50 {p50:.1} ms  p99 {p99:.1} ms  ({} replies)",
        during.len()
    );
    running.shutdown().await;
    drop(server);
    Ok(())
}

async fn stored(core: &Core, guild: &str) -> anyhow::Result<u64> {
    Ok(core.counts(guild, None).await?.messages)
}
