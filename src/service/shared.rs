//! State that other processes on the same PostgreSQL change, heard with `LISTEN`: consent and
//! reply modes (any process, a `mynah user` command included, may change them: every process
//! reloads its caches), and, with `MYNAH_TRAINING=workers`, new models that workers made.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Core, ServiceError};
use crate::config::TrainingMode;
use crate::store::{MODELS_CHANNEL, SETTINGS_CHANNEL};

impl Core {
    /// Listens until `stopped` (PostgreSQL only; `None` on SQLite, where one process serves).
    pub fn spawn_shared_state_listener(
        self: &Arc<Self>,
        mut stopped: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self.store.backend() != crate::store::Backend::Postgres {
            return None;
        }
        let workers = self.config.training == TrainingMode::Workers;
        let channels: &'static [&'static str] =
            if workers { &[SETTINGS_CHANNEL, MODELS_CHANNEL] } else { &[SETTINGS_CHANNEL] };
        let core = self.clone();
        Some(tokio::spawn(async move {
            loop {
                let mut listener = match core.store.listen(channels).await {
                    Ok(Some(listener)) => listener,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen to the database; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                    }
                };
                // Listening first: whatever changed before is read now, whatever changes after
                // is heard.
                if let Err(e) = core.reload_settings().await {
                    tracing::warn!(error = %e, "could not reload consent and reply modes");
                }
                if workers {
                    core.catch_up_worker_models().await;
                }
                loop {
                    let heard = tokio::select! {
                        heard = listener.recv() => heard,
                        _ = stopped.wait_for(|s| *s) => return,
                    };
                    let n = match heard {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "the database listener lost its connection");
                            break;
                        }
                    };
                    if n.channel() == SETTINGS_CHANNEL {
                        if let Err(e) = core.reload_settings().await {
                            tracing::warn!(error = %e, "could not reload consent and reply modes");
                        }
                    } else if let Some((guild, run)) = crate::store::parse_model_payload(n.payload()) {
                        if core.config.shards.holds(&guild) {
                            core.serve_worker_model(&guild, run).await;
                        }
                    }
                }
            }
        }))
    }

    /// Replaces the cached consent and reply modes with what the store holds.
    async fn reload_settings(&self) -> Result<(), ServiceError> {
        let settings = self.store.channel_settings().await?;
        let opted_out = self.store.opt_outs().await?;
        let forgotten = self.store.forget_marks().await?;
        let replies = self.store.channel_replies().await?;
        self.consent.reload(settings, opted_out, forgotten);
        self.reply_modes.reload(replies);
        Ok(())
    }
}
