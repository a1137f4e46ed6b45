//! Starting and stopping a whole mynah: the store, the core, and whatever the configuration
//! turns on (the HTTP API, the Discord connection, scheduled retraining, retention), in one
//! place that `mynah run`, the playground, the benchmarks and the tests all use.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::discord::BotHandle;
use crate::service::Core;
use crate::store::Store;

/// How long a stop waits for the running training and the replies in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// A started mynah. [`Running::shutdown`] stops it in order.
pub struct Running {
    core: Arc<Core>,
    bot: Option<BotHandle>,
    api: Option<JoinHandle<anyhow::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// Opens the store and the core (which marks runs a stopped process left unfinished), and starts
/// what `config` turns on: the HTTP API (`api_addr`), scheduled retraining
/// (`schedule_minutes`), retention (`retention_days`) and Discord (`discord_token`).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.check_api_exposure().map_err(anyhow::Error::msg)?;
    crate::metrics::install();
    // Bound before anything else starts, so a taken port is an error at once.
    let listener = match config.api_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (MYNAH_API_ADDR)"))?,
        ),
        None => None,
    };
    let store = Store::open(&config.database_url).await?;
    let core = match Core::open(config.clone(), store.clone()).await {
        Ok(core) => core,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    core.remove_model_leftovers().await;
    core.build_voices_later();
    let (stop, stopped) = watch::channel(false);
    let api = listener.map(|listener| {
        let (core, mut stopped) = (core.clone(), stopped.clone());
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            crate::api::serve(core, listener, shutdown).await
        })
    });
    let mut tasks = Vec::new();
    if let Some(minutes) = config.schedule_minutes {
        tracing::info!(minutes, "scheduled retraining is on");
        tasks.push(crate::scheduler::spawn(core.clone(), Duration::from_secs(minutes * 60), stopped.clone()));
    }
    tasks.push(crate::scheduler::spawn_removal_retries(core.clone(), config.removal_retry, stopped.clone()));
    if let Some(days) = config.retention_days {
        tracing::info!(days, "messages older than the retention period are deleted hourly");
        tasks.push(crate::scheduler::spawn_retention(core.clone(), stopped.clone()));
    }
    tasks.extend(core.spawn_shared_state_listener(stopped.clone()));
    let mut running = Running { core: core.clone(), bot: None, api, tasks, stop };
    if config.discord_token.is_some() {
        match crate::discord::start(core).await {
            Ok(bot) => running.bot = Some(bot),
            Err(e) => {
                running.shutdown().await;
                return Err(e);
            }
        }
    }
    Ok(running)
}

impl Running {
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Whether anything serves: the API or a Discord connection.
    pub fn serves_anything(&self) -> bool {
        self.api.is_some() || self.bot.is_some()
    }

    /// Resolves when the HTTP API or the Discord client stops by itself, which only happens
    /// when it failed (a lost port, a refused token, refused slash commands); never when
    /// neither runs.
    pub async fn failed(&mut self) -> anyhow::Result<()> {
        let bot = async {
            match self.bot.as_mut() {
                Some(bot) => bot.stopped().await,
                None => std::future::pending().await,
            }
        };
        let api = async {
            match self.api.as_mut() {
                Some(task) => {
                    let result = task.await;
                    self.api = None;
                    match result {
                        Ok(r) => r,
                        Err(e) => Err(anyhow::anyhow!("the HTTP API task failed: {e}")),
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = bot => r,
            r = api => r,
        }
    }

    /// Stops in order: new HTTP requests and scheduled runs first; then the core refuses new
    /// work, cancels the training (recorded as cancelled) and lets replies in flight be sent;
    /// then Discord disconnects and the database closes.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.core.shutdown(SHUTDOWN_GRACE).await;
        if let Some(bot) = self.bot {
            bot.shutdown().await;
        }
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(api) = self.api {
            // Graceful: requests under way finish; an idle keep-alive connection is not waited for.
            if tokio::time::timeout(Duration::from_secs(1), api).await.is_err() {
                tracing::debug!("the HTTP API had connections open at shutdown");
            }
        }
        self.core.close().await;
    }
}
