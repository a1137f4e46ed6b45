//! `mynah bench load`: mention replies while clients hammer the HTTP API, next to replies with
//! the API idle. The real bot on the local Discord-compatible server, a small model trained on
//! the bundled sample so replies are generated, the API on a loopback port with a token; all
//! bounded in time and local.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::devserver::DevServer;
use crate::service::{TrainRequest, Trigger};

const TOKEN: &str = "bench-load-token-0123456789";
/// Mentions measured in each phase.
const MENTIONS: usize = 40;

pub async fn run(clients: usize, seconds: u64) -> anyhow::Result<()> {
    let server = DevServer::start().await?;
    let guild = server.create_guild("Bench");
    let channel = server.create_channel(guild, "general");
    let asker = server.create_user("asker");
    server.add_member(guild, asker, 0);
    let dir = tempfile::tempdir()?;
    let mut config = super::bot_config(dir.path(), &server, channel);
    config.api_token = Some(Secret::new(TOKEN));
    config.engine.preset = crate::engine::Preset::tiny();
    config.engine.max_minutes = 0.5;
    let running = crate::app::start(config).await?;
    let core = running.core().clone();
    anyhow::ensure!(server.wait_until_ready(Duration::from_secs(30)).await, "the bot did not connect");

    // A model, so mentions are answered by generation as in a trained guild.
    let guild_id = guild.to_string();
    core.import_jsonl(crate::playground::SAMPLE, Some(&guild_id), true).await?;
    let request = TrainRequest { force: true, ..TrainRequest::new(Some(guild_id.clone()), Trigger::Command) };
    core.request_training(request).await?;
    let mut watch = core.watch_training();
    watch.wait_for(|v| v.state == crate::models::trainer::TrainingState::Idle).await?;
    anyhow::ensure!(core.model(&guild_id).is_some(), "the bench model did not train");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(core.clone(), listener, async {
        let _ = api_stopped.await;
    }));
    let bot = server.bot_id();

    let mut idle = Vec::with_capacity(MENTIONS);
    for _ in 0..MENTIONS {
        idle.push(super::mention_ms(&server, channel, asker, bot, "what is everyone working on?").await?);
    }

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (done, failed) = (done.clone(), failed.clone());
        let http = reqwest::Client::new();
        let routes = ["/api/ml/status", "/api/ml/should-train", "/api/ml/runs"];
        tasks.push(tokio::spawn(async move {
            let mut n = i;
            while Instant::now() < deadline {
                let url = format!("http://{addr}{}", routes[n % routes.len()]);
                n += 1;
                match http.get(url).bearer_auth(TOKEN).send().await {
                    Ok(r) if r.status().is_success() => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let started = Instant::now();
    let mut loaded = Vec::with_capacity(MENTIONS);
    while loaded.len() < MENTIONS && Instant::now() < deadline {
        loaded.push(super::mention_ms(&server, channel, asker, bot, "what is everyone working on?").await?);
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_api.send(());
    api.await??;

    let (p50, p99) = super::p50_p99(&mut idle);
    println!(
        "mention replies, API idle:          p50 {p50:.1} ms  p99 {p99:.1} ms  ({} replies)",
        idle.len()
    );
    let (lp50, lp99) = super::p50_p99(&mut loaded);
    println!(
        "mention replies, {clients} API clients:   p50 {lp50:.1} ms  p99 {lp99:.1} ms  ({} replies)",
        loaded.len()
    );
    println!(
        "API: {} requests answered ({:.0}/s), {} failed; p99 under load is {:.2}x idle (target < 2x)",
        done.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed) as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        lp99 / p99
    );
    running.shutdown().await;
    Ok(())
}
