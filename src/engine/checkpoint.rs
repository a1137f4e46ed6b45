//! Checkpoints on disk: `models/<guild>/<run>/` holds `model.safetensors`, `config.json`,
//! `tokenizer.json` and `meta.json`; `models/<guild>/CURRENT` names the run that serves. A new
//! run is written to a temporary directory, synced, renamed into place, and only then is the
//! pointer replaced (write, fsync, rename), so a crash or a failed run never touches the
//! current model.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::fast::FastModel;
use super::model::{Model, ModelConfig};
use super::tokenizer::ChatTokenizer;
use super::EngineError;
use crate::models::CURRENT;

/// What `meta.json` records about a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub params: u64,
    pub trained_at: String,
    pub val_bits_per_byte: Option<f64>,
    pub corpus_messages: u64,
    pub corpus_first: Option<String>,
    pub corpus_last: Option<String>,
    pub training_seconds: f64,
    pub engine_version: String,
    pub preset: String,
    pub steps: u64,
    pub epochs: f64,
    pub tokens: u64,
    pub train_loss: Option<f32>,
}

impl Meta {
    /// The record of a run that just trained `config` on `corpus_messages` messages.
    pub fn trained(
        config: &ModelConfig,
        report: &super::train::Report,
        corpus_messages: usize,
        preset: String,
    ) -> Meta {
        Meta {
            params: config.params(),
            trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            val_bits_per_byte: Some(report.val_bits_per_byte),
            corpus_messages: corpus_messages as u64,
            training_seconds: report.seconds,
            engine_version: super::ENGINE_VERSION.into(),
            preset,
            steps: report.steps as u64,
            epochs: report.epochs,
            tokens: report.tokens,
            train_loss: Some(report.train_loss),
            ..Meta::default()
        }
    }
}

/// A loaded checkpoint, ready to generate.
pub struct Loaded {
    pub model: Model,
    /// The same weights in the lean CPU layout that serves replies.
    pub fast: FastModel,
    pub tokenizer: ChatTokenizer,
    pub meta: Meta,
    pub dir: PathBuf,
}

fn ck_err(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint { path: path.display().to_string(), reason: reason.to_string() }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let mut f = File::create(path).map_err(|e| ck_err(path, e))?;
    f.write_all(bytes).map_err(|e| ck_err(path, e))?;
    f.sync_all().map_err(|e| ck_err(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    // Directory fsync makes the renames durable; not every platform supports it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes a run under `guild_dir` and makes it current. Returns the run's directory.
pub fn save(
    guild_dir: &Path,
    run: &str,
    varmap: &VarMap,
    config: &ModelConfig,
    tokenizer: &ChatTokenizer,
    meta: &Meta,
) -> Result<PathBuf, EngineError> {
    if run.is_empty() || run.contains(['/', '\\']) || run.starts_with('.') {
        return Err(ck_err(guild_dir, format!("invalid run name {run:?}")));
    }
    std::fs::create_dir_all(guild_dir).map_err(|e| ck_err(guild_dir, e))?;
    let tmp = guild_dir.join(format!(".tmp-{run}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ck_err(&tmp, e))?;
    let weights = tmp.join("model.safetensors");
    varmap.save(&weights).map_err(|e| ck_err(&weights, e))?;
    File::open(&weights).and_then(|f| f.sync_all()).map_err(|e| ck_err(&weights, e))?;
    write_synced(&tmp.join("config.json"), pretty(config).as_bytes())?;
    write_synced(&tmp.join("meta.json"), pretty(meta).as_bytes())?;
    let tok_path = tmp.join("tokenizer.json");
    tokenizer.save(&tok_path)?;
    File::open(&tok_path).and_then(|f| f.sync_all()).map_err(|e| ck_err(&tok_path, e))?;
    sync_dir(&tmp)?;
    let dir = guild_dir.join(run);
    if dir.exists() {
        return Err(ck_err(&dir, "a run of this name already exists"));
    }
    std::fs::rename(&tmp, &dir).map_err(|e| ck_err(&dir, e))?;
    sync_dir(guild_dir)?;
    set_current(guild_dir, run)?;
    Ok(dir)
}

/// Points `guild_dir/CURRENT` at `run`, atomically.
pub fn set_current(guild_dir: &Path, run: &str) -> Result<(), EngineError> {
    let tmp = guild_dir.join(format!("{CURRENT}.tmp"));
    write_synced(&tmp, run.as_bytes())?;
    std::fs::rename(&tmp, guild_dir.join(CURRENT)).map_err(|e| ck_err(guild_dir, e))?;
    sync_dir(guild_dir)
}

/// Loads and validates a run directory: config, tokenizer and every tensor's shape.
pub fn load(dir: &Path, device: &Device) -> Result<Loaded, EngineError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| ck_err(&dir.join(name), e));
    let config: ModelConfig =
        serde_json::from_str(&read("config.json")?).map_err(|e| ck_err(&dir.join("config.json"), e))?;
    config.validate()?;
    let meta: Meta =
        serde_json::from_str(&read("meta.json")?).map_err(|e| ck_err(&dir.join("meta.json"), e))?;
    let tokenizer = ChatTokenizer::load(&dir.join("tokenizer.json"))?;
    if tokenizer.vocab_size() != config.vocab_size {
        return Err(ck_err(
            dir,
            format!(
                "the tokenizer has {} tokens but the model {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    let weights = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, device).map_err(|e| ck_err(&weights, e))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let model = Model::new(&config, vb).map_err(|e| ck_err(&weights, e))?;
    let fast = FastModel::from_model(&model)?;
    Ok(Loaded { model, fast, tokenizer, meta, dir: dir.to_path_buf() })
}

fn pretty<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}
