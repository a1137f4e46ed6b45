//! `mynah worker`: a training worker for `MYNAH_TRAINING=workers`. It claims training jobs from
//! the job queue in PostgreSQL, trains each on this machine (any machine, GPU or not), stores the
//! model for the serving processes, and waits for the next job: woken by `NOTIFY`, or after a
//! few seconds at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::service::{Core, Worked};
use crate::store::{Backend, Store, JOBS_CHANNEL};

/// The longest a worker waits before looking at the queue again without being woken.
const POLL: Duration = Duration::from_secs(5);

/// Works until `stop` is set (a running job is then handed back to the queue), as `name`
/// (default: host name and process ID).
pub async fn run(config: Config, stop: Arc<AtomicBool>, name: Option<String>) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url).await?;
    if store.backend() != Backend::Postgres {
        store.close().await;
        anyhow::bail!("mynah worker needs DATABASE_URL=postgres://… : the job queue lives in PostgreSQL");
    }
    // A worker serves no gateway shard: it trains any guild's job.
    let config = Config {
        shards: crate::shards::ShardRange::default(),
        discord_token: None,
        api_addr: None,
        ..config
    };
    let core = match Core::open(config, store.clone()).await {
        Ok(core) => core,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    let name = name.unwrap_or_else(default_name);
    tracing::info!(worker = %name, "training worker started");
    let mut listener = store.listen(&[JOBS_CHANNEL]).await?;
    while !stop.load(Ordering::SeqCst) {
        match core.work_one(&name, &stop).await {
            Ok(Worked::Ran { .. }) => continue,
            Ok(Worked::Idle | Worked::Busy { .. }) => {}
            Err(e) => tracing::warn!(worker = %name, error = %e, "a job failed"),
        }
        // Until a new job is announced, the poll interval passes, or the worker is stopped.
        let deadline = tokio::time::Instant::now() + POLL;
        while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            let tick = tokio::time::sleep(Duration::from_millis(200));
            match listener.as_mut() {
                Some(l) => tokio::select! {
                    heard = l.recv() => {
                        if let Err(e) = heard {
                            tracing::warn!(error = %e, "the job listener lost its connection");
                        }
                        break;
                    }
                    _ = tick => {}
                },
                None => tick.await,
            }
        }
    }
    tracing::info!(worker = %name, "training worker stopped");
    core.close().await;
    Ok(())
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}
