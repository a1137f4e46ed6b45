//! Installing a model trained elsewhere (remote training): a bundle is validated whole before
//! it is recorded and serves; a refused bundle changes nothing.

use std::sync::Arc;

use candle_core::Device;

use super::{check_guild_id, Core, ServiceError, TrainAccepted, Trigger};
use crate::engine::checkpoint::{self, Loaded};
use crate::engine::EngineError;
use crate::models::registry;
use crate::store::{RunOutcome, RunResult};

impl Core {
    /// Validates a model bundle trained elsewhere and, only if it is sound, records it as a
    /// `remote` run and makes it the guild's current model.
    pub async fn install_bundle(
        self: &Arc<Self>,
        guild_id: &str,
        bytes: Vec<u8>,
    ) -> Result<TrainAccepted, ServiceError> {
        check_guild_id(guild_id)?;
        let guild_dir = self.config.models_dir.join(guild_id);
        let tmp = guild_dir.join(format!(".incoming-{:016x}", rand::random::<u64>()));
        let (device, check_dir) = (self.device.clone(), tmp.clone());
        let checked = tokio::task::spawn_blocking(move || validate_bundle(&bytes, &check_dir, &device))
            .await
            .map_err(|e| ServiceError::BadBundle(format!("validation panicked: {e}")))?;
        let mut loaded = match checked {
            Ok(loaded) => loaded,
            Err(reason) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(ServiceError::BadBundle(reason));
            }
        };
        let meta = loaded.meta.clone();
        let run_id = self
            .store
            .start_run(
                guild_id,
                Trigger::Remote.as_str(),
                Some("remote"),
                meta.epochs.ceil() as i64,
                meta.corpus_messages as i64,
                None,
            )
            .await?;
        let run = registry::run_name(&guild_dir, run_id);
        let dir = guild_dir.join(&run);
        // The validated model is what serves: it only moves to its final directory.
        let placed = std::fs::rename(&tmp, &dir)
            .map_err(EngineError::Io)
            .and_then(|_| registry::set_current(&guild_dir, &run));
        if let Err(e) = placed {
            let _ = std::fs::remove_dir_all(&tmp);
            let failed =
                RunResult { outcome: RunOutcome::Failed, error: Some(e.to_string()), ..RunResult::default() };
            self.store.finish_run(run_id, &failed).await?;
            return Err(e.into());
        }
        loaded.dir = dir;
        self.serve_new_model(guild_id, run_id, Arc::new(loaded)).await;
        let result = super::training::succeeded(&meta);
        self.store.finish_run(run_id, &result).await?;
        tracing::info!(guild = %guild_id, run = run_id, "model from a remote trainer serving");
        Ok(TrainAccepted {
            guild_id: guild_id.to_string(),
            run_id,
            epochs: meta.epochs.ceil() as u32,
            corpus_messages: meta.corpus_messages,
            decision: self.should_train(guild_id).await?,
        })
    }
}

/// Unpacks and fully validates a bundle in `tmp`: files, config, tokenizer, every tensor's
/// shape, and one test generation.
fn validate_bundle(bytes: &[u8], tmp: &std::path::Path, device: &Device) -> Result<Loaded, String> {
    std::fs::create_dir_all(tmp).map_err(|e| e.to_string())?;
    crate::models::bundle::unpack(bytes, tmp).map_err(|e| e.to_string())?;
    let loaded = checkpoint::load(tmp, device).map_err(|e| e.to_string())?;
    let history = vec![("someone".to_string(), "hello, how is everyone?".to_string())];
    let sampling = crate::engine::generate::Sampling { max_tokens: 8, ..Default::default() };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    crate::engine::generate::reply(&loaded.fast, &loaded.tokenizer, &history, &sampling, &mut rng)
        .map_err(|e| format!("the test generation failed: {e}"))?;
    Ok(loaded)
}
