//! Installing a model trained elsewhere (remote training): a bundle is validated whole before
//! it is recorded and serves; a refused bundle changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;

use super::{check_guild_id, Core, ServiceError, TrainAccepted, Trigger};
use crate::engine::checkpoint::{Loaded, Meta};
use crate::engine::EngineError;
use crate::models::registry;
use crate::store::{RunOutcome, RunResult};

/// Deletes a path when dropped: an upload's file or directory goes whatever happens to it
/// (after a successful install the directory has moved away and nothing is left to delete).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ =
            if self.0.is_dir() { std::fs::remove_dir_all(&self.0) } else { std::fs::remove_file(&self.0) };
    }
}

/// Where a bundle's bytes are: in memory, or in an upload file on disk.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Core {
    /// Validates a model bundle trained elsewhere and, only if it is sound, records it as a
    /// `remote` run and makes it the guild's current model.
    pub async fn install_bundle(
        self: &Arc<Self>,
        guild_id: &str,
        bytes: Vec<u8>,
    ) -> Result<TrainAccepted, ServiceError> {
        check_guild_id(guild_id)?;
        let _one = self.uploads.try_lock().map_err(|_| ServiceError::UploadInProgress)?;
        let (run_id, meta) = self.install(guild_id, Source::Bytes(bytes), None).await?;
        self.accepted(guild_id, run_id, &meta).await
    }

    /// Validates and serves the bundle of run `run_id`, which its trainer (a worker) recorded
    /// already; waits for an upload in progress.
    pub(super) async fn install_recorded_bundle(
        self: &Arc<Self>,
        guild_id: &str,
        run_id: i64,
        bytes: Vec<u8>,
    ) -> Result<(), ServiceError> {
        check_guild_id(guild_id)?;
        let _one = self.uploads.lock().await;
        self.install(guild_id, Source::Bytes(bytes), Some(run_id)).await.map(|_| ())
    }

    /// The answer to an upload that now serves as run `run_id`.
    async fn accepted(
        &self,
        guild_id: &str,
        run_id: i64,
        meta: &Meta,
    ) -> Result<TrainAccepted, ServiceError> {
        Ok(TrainAccepted {
            guild_id: guild_id.to_string(),
            run_id,
            epochs: meta.epochs.ceil() as u32,
            corpus_messages: meta.corpus_messages,
            decision: self.should_train(guild_id).await?,
        })
    }

    /// [`Core::install_bundle`] for a bundle arriving as a stream of chunks (an HTTP upload):
    /// written to disk as it comes, up to the bundle limit, never held in memory whole.
    pub async fn install_bundle_stream<S, E>(
        self: &Arc<Self>,
        guild_id: &str,
        mut chunks: S,
    ) -> Result<TrainAccepted, ServiceError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        check_guild_id(guild_id)?;
        let _one = self.uploads.try_lock().map_err(|_| ServiceError::UploadInProgress)?;
        let guild_dir = self.config.models_dir.join(guild_id);
        tokio::fs::create_dir_all(&guild_dir).await.map_err(EngineError::Io)?;
        let path = guild_dir.join(format!(".incoming-{:016x}.tar", rand::random::<u64>()));
        let _cleanup = RemoveOnDrop(path.clone());
        let mut file = tokio::fs::File::create(&path).await.map_err(EngineError::Io)?;
        let mut total = 0usize;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ServiceError::BadBundle(format!("the upload broke off: {e}")))?;
            total += chunk.len();
            if total > crate::models::bundle::MAX_BUNDLE_BYTES {
                return Err(ServiceError::BadBundle(
                    crate::models::bundle::BundleError::TooLarge.to_string(),
                ));
            }
            file.write_all(&chunk).await.map_err(EngineError::Io)?;
        }
        file.flush().await.map_err(EngineError::Io)?;
        drop(file);
        let (run_id, meta) = self.install(guild_id, Source::File(path.clone()), None).await?;
        self.accepted(guild_id, run_id, &meta).await
    }

    /// Validates and installs a bundle; the caller holds the upload lock. `recorded`: the run
    /// it came from, recorded by its trainer; else it is recorded here as a `remote` run.
    /// Returns the run that serves now, and what its model says of itself.
    async fn install(
        self: &Arc<Self>,
        guild_id: &str,
        source: Source,
        recorded: Option<i64>,
    ) -> Result<(i64, Meta), ServiceError> {
        let guild_dir = self.config.models_dir.join(guild_id);
        let tmp = guild_dir.join(format!(".incoming-{:016x}", rand::random::<u64>()));
        let _cleanup = RemoveOnDrop(tmp.clone());
        let (device, check_dir) = (self.device.clone(), tmp.clone());
        let models_dir = self.config.models_dir.clone();
        let checked =
            tokio::task::spawn_blocking(move || validate_bundle(source, &check_dir, &models_dir, &device))
                .await
                .map_err(|e| ServiceError::BadBundle(format!("validation panicked: {e}")))?;
        let mut loaded = match checked {
            Ok(loaded) => loaded,
            Err(reason) => return Err(ServiceError::BadBundle(reason)),
        };
        let meta = loaded.meta.clone();
        let run_id = match recorded {
            Some(run_id) => run_id,
            None => {
                self.store
                    .start_run(
                        guild_id,
                        Trigger::Remote.as_str(),
                        Some("remote"),
                        meta.epochs.ceil() as i64,
                        meta.corpus_messages as i64,
                        None,
                    )
                    .await?
            }
        };
        let run = registry::run_name(&guild_dir, run_id);
        let dir = guild_dir.join(&run);
        // The validated model is what serves: it only moves to its final directory.
        let placed = std::fs::rename(&tmp, &dir)
            .map_err(EngineError::Io)
            .and_then(|_| registry::set_current(&guild_dir, &run));
        if let Err(e) = placed {
            if recorded.is_none() {
                let failed = RunResult {
                    outcome: RunOutcome::Failed,
                    error: Some(e.to_string()),
                    ..RunResult::default()
                };
                self.store.finish_run(run_id, &failed).await?;
            }
            return Err(e.into());
        }
        loaded.dir = dir;
        self.serve_new_model(guild_id, run_id, Arc::new(loaded.serving_only())).await;
        if recorded.is_none() {
            self.store.finish_run(run_id, &super::training::succeeded(&meta)).await?;
        }
        let from = if recorded.is_some() { "a training worker" } else { "a remote trainer" };
        tracing::info!(guild = %guild_id, run = run_id, "model from {from} serving");
        Ok((run_id, meta))
    }
}

/// Unpacks and fully validates a bundle in `tmp`: files, config, tokenizer, every tensor's
/// shape, and one test generation. A bundle of adapters needs its base installed here.
fn validate_bundle(
    source: Source,
    tmp: &std::path::Path,
    models_dir: &std::path::Path,
    device: &Device,
) -> Result<Loaded, String> {
    std::fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
    match source {
        Source::Bytes(bytes) => crate::models::bundle::unpack(&bytes, tmp),
        Source::File(path) => std::fs::File::open(&path)
            .map_err(crate::models::bundle::BundleError::from)
            .and_then(|f| crate::models::bundle::unpack_from(std::io::BufReader::new(f), tmp)),
    }
    .map_err(|e| e.to_string())?;
    let loaded = crate::models::bases::load_run(tmp, device, models_dir, false).map_err(|e| e.to_string())?;
    let history = vec![("someone".to_string(), "hello, how is everyone?".to_string())];
    let sampling = crate::engine::generate::Sampling { max_tokens: 8, ..Default::default() };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    crate::engine::generate::reply(&loaded.fast, &loaded.tokenizer, &history, &sampling, &mut rng)
        .map_err(|e| format!("the test generation failed: {e}"))?;
    Ok(loaded)
}
