//! `mynah bench scale`: how fast several processes store messages into one database, SQLite
//! against PostgreSQL, with 1, 2 and 4 writer processes on this machine. Each writer is this
//! binary (`mynah bench scale-writer`, hidden) storing messages one by one as the bot's ingest
//! does (a transaction each, with the consent check in the INSERT) for a fixed time; the figure
//! is all writers' messages over the wall time. Then, on PostgreSQL, training jobs per minute
//! with 1 and 2 `mynah worker` processes (each job one epoch of a tiny model on the bundled
//! sample). Loopback only, bounded in time.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::corpus::Record;
use crate::store::{create_postgres_database, Store};

/// What one writer process reports on its standard output: the messages it stored.
const STORED: &str = "stored ";

pub async fn run(postgres: Option<&str>, seconds: u64, processes: &[usize]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe().context("Failed to find this program")?;
    println!("{:<12} {:>9} {:>12} {:>14}", "database", "processes", "messages/s", "per process/s");
    for &n in processes {
        let sqlite = format!("sqlite://{}/scale-{n}.db", dir.path().display());
        let rate = measure(&exe, &sqlite, n, seconds).await?;
        println!("{:<12} {n:>9} {rate:>12.0} {:>14.0}", "SQLite", rate / n as f64);
        if let Some(server) = postgres {
            let name = format!("mynah_bench_scale_{}_{n}", std::process::id());
            let url = create_postgres_database(server, &name).await?;
            let rate = measure(&exe, &url, n, seconds).await?;
            println!("{:<12} {n:>9} {rate:>12.0} {:>14.0}", "PostgreSQL", rate / n as f64);
        }
    }
    if let Some(server) = postgres {
        println!();
        println!("{:<12} {:>7} {:>5} {:>12}", "training", "workers", "jobs", "jobs/minute");
        for workers in [1, 2] {
            let name = format!("mynah_bench_jobs_{}_{workers}", std::process::id());
            let url = create_postgres_database(server, &name).await?;
            let (jobs, per_minute) = jobs_per_minute(&exe, &url, workers, dir.path()).await?;
            println!("{:<12} {workers:>7} {jobs:>5} {per_minute:>12.1}", "PostgreSQL");
        }
    }
    if postgres.is_none() {
        println!("(PostgreSQL not measured: pass --postgres postgres://user@host/db, a server the bench may create databases on)");
    }
    Ok(())
}

/// Starts `n` writers on `url` at once and returns their messages per second together.
async fn measure(exe: &std::path::Path, url: &str, n: usize, seconds: u64) -> anyhow::Result<f64> {
    // The schema first, so the writers don't all migrate at once.
    Store::open(url).await?.close().await;
    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        let child = tokio::process::Command::new(exe)
            .args(["bench", "scale-writer", "--database", url, "--seconds", &seconds.to_string()])
            .args(["--guild", &format!("{}", 1000 + i)])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("Failed to start a writer process")?;
        children.push(child);
    }
    let mut stored = 0u64;
    for child in children {
        let out = child.wait_with_output().await?;
        anyhow::ensure!(out.status.success(), "a writer failed ({})", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find_map(|l| l.strip_prefix(STORED)).context("a writer reported nothing")?;
        stored += line.trim().parse::<u64>()?;
    }
    Ok(stored as f64 / started.elapsed().as_secs_f64())
}

/// Trainings of this many guilds are queued at once for the workers.
const JOBS: usize = 4;

/// Queues [`JOBS`] trainings (the bundled sample as each guild's corpus), starts `workers`
/// worker processes on them and returns the jobs and the jobs finished per minute.
async fn jobs_per_minute(
    exe: &std::path::Path,
    url: &str,
    workers: usize,
    tmp: &std::path::Path,
) -> anyhow::Result<(usize, f64)> {
    let store = Store::open(url).await?;
    for g in 0..JOBS {
        let guild = format!("{}", 2000 + g);
        crate::service::import_jsonl(&store, crate::playground::SAMPLE, Some(&guild), false, true).await?;
        store
            .enqueue_job(&crate::store::JobRequest {
                guild_id: guild,
                trigger: "cli".into(),
                requested_by: Some("bench".into()),
                epochs: Some(1),
                max_minutes: Some(5.0),
            })
            .await?;
    }
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let models = tmp.join(format!("worker-models-{w}"));
        let child = tokio::process::Command::new(exe)
            .args(["worker", "--name", &format!("bench-{w}")])
            .env("DATABASE_URL", url)
            .env("MYNAH_MODELS_DIR", &models)
            .env("MYNAH_PRESET", "tiny")
            .env("MYNAH_BASE", "none")
            .env("MYNAH_API_ADDR", "off")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("Failed to start a worker process")?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while store.open_jobs().await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the workers did not finish within 10 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let runs = store.runs(None, 100).await?;
    let succeeded = runs.iter().filter(|r| r.outcome == crate::store::RunOutcome::Succeeded).count();
    store.close().await;
    anyhow::ensure!(succeeded == JOBS, "{succeeded} of {JOBS} trainings succeeded: {runs:?}");
    for child in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    for mut child in children {
        let _ = child.wait().await;
    }
    Ok((JOBS, JOBS as f64 / minutes))
}

/// One writer: stores messages of its own guild for `seconds`, then prints how many.
pub async fn writer(database: &str, guild: &str, seconds: u64) -> anyhow::Result<()> {
    let store = Store::open(database).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let record = Record {
            id: (1_000_000 + n).to_string(),
            guild_id: guild.to_string(),
            channel_id: "1".into(),
            channel: "general".into(),
            author_id: (n % 50).to_string(),
            author: format!("member{}", n % 50),
            content: format!("message {n} with some ordinary chat text in it"),
            timestamp: "2026-12-01T12:00:00Z".into(),
            parent_channel_id: None,
        };
        store.insert_message(&record).await?;
        n += 1;
    }
    store.close().await;
    println!("{STORED}{n}");
    Ok(())
}
