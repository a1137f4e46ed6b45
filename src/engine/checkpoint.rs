//! Checkpoints on disk: a run directory holds `model.safetensors`, `config.json`,
//! `tokenizer.json` and `meta.json` (the manifest). A new run is written to a temporary sibling
//! directory, synced and renamed into place, so a crash or a failed run never leaves half a
//! checkpoint. Which run serves is the app's business (`crate::models`), not the engine's.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::fast::{FastModel, FastWeights};
use super::model::{Model, ModelConfig};
use super::sharing::Shared;
use super::tokenizer::ChatTokenizer;
use super::EngineError;

/// The files every checkpoint directory holds.
pub const FILES: [&str; 4] = ["model.safetensors", "config.json", "tokenizer.json", "meta.json"];

/// What kind of model a checkpoint directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A llama-style transformer with its own tokenizer (trained here or from a base).
    #[default]
    Transformer,
}

/// The manifest of a run directory (`meta.json`): what the model is and how it was made.
/// Fields missing from an older manifest take their defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub kind: Kind,
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
    /// The weights mixing the network with the guild's count model, fitted on the newest slice
    /// of the training part; defaults when absent.
    pub mixer: Option<Vec<f32>>,
    /// The pretrained base the run was fine-tuned from; with `lora`, `model.safetensors` holds
    /// only the adapters and the base's weights are needed to load it.
    pub base: Option<BaseRef>,
    pub lora: Option<super::lora::LoraSpec>,
}

/// A pretrained base, as a run refers to it: by the hash of its weights (names differ between
/// machines), with its name for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub name: String,
    pub sha256: String,
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
            train_loss: Some(report.train_loss).filter(|l| l.is_finite()),
            ..Meta::default()
        }
    }
}

/// A loaded checkpoint, ready to generate.
pub struct Loaded {
    /// The weights as a candle model, for scoring text (benchmarks, the mixer's fit); `None`
    /// once the model only serves ([`Loaded::serving_only`]): for a pretrained base it would
    /// double the memory.
    pub model: Option<Model>,
    /// The same weights in the lean CPU layout that serves replies.
    pub fast: FastModel,
    pub tokenizer: ChatTokenizer,
    pub meta: Meta,
    pub dir: PathBuf,
}

impl Loaded {
    /// The model without its candle copy of the weights: what replies need.
    pub fn serving_only(mut self) -> Loaded {
        self.model = None;
        self
    }

    /// The candle model, unless it was dropped for serving.
    pub fn model(&self) -> Result<&Model, EngineError> {
        self.model.as_ref().ok_or_else(|| ck_err(&self.dir, "the model was loaded for serving only"))
    }
}

fn ck_err(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint { path: path.display().to_string(), reason: reason.to_string() }
}

/// Writes a checkpoint as the new directory `parent/name` (refused if it exists). Returns it.
pub fn save(
    parent: &Path,
    name: &str,
    varmap: &VarMap,
    config: &ModelConfig,
    tokenizer: &ChatTokenizer,
    meta: &Meta,
) -> Result<PathBuf, EngineError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(ck_err(parent, format!("invalid run name {name:?}")));
    }
    std::fs::create_dir_all(parent).map_err(|e| ck_err(parent, e))?;
    let tmp = parent.join(format!(".tmp-{name}"));
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
    sync_dir(&tmp);
    let dir = parent.join(name);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(ck_err(&dir, "a run of this name already exists"));
    }
    std::fs::rename(&tmp, &dir).map_err(|e| ck_err(&dir, e))?;
    sync_dir(parent);
    Ok(dir)
}

/// Writes `bytes` to `path` and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let mut f = File::create(path).map_err(|e| ck_err(path, e))?;
    f.write_all(bytes).map_err(|e| ck_err(path, e))?;
    f.sync_all().map_err(|e| ck_err(path, e))
}

/// Makes renames inside `dir` durable, where the platform supports directory fsync.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Loads and validates a run directory that needs no base (see [`load_with_bases`]).
pub fn load(dir: &Path, device: &Device) -> Result<Loaded, EngineError> {
    load_with_bases(dir, device, &|_| None, true)
}

/// Loads and validates a run directory: config, tokenizer and every tensor's shape. A run of
/// adapters is put on the weights of its base, which `find_base` locates; serving models share
/// one copy of a base. Without `keep_model`, no candle model is kept (serving needs none).
pub fn load_with_bases(
    dir: &Path,
    device: &Device,
    find_base: &dyn Fn(&BaseRef) -> Option<PathBuf>,
    keep_model: bool,
) -> Result<Loaded, EngineError> {
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
    let (model, fast) = match (&meta.lora, &meta.base) {
        (Some(spec), Some(base)) => {
            let path = find_base(base).ok_or_else(|| {
                ck_err(
                    dir,
                    format!(
                        "it was fine-tuned from base {} (sha256 {}), which is not installed",
                        base.name, base.sha256
                    ),
                )
            })?;
            let shared = SHARED_BASES.get(&base.sha256);
            let (shared, model) = match shared {
                // Another guild on this base already serves: only the adapters are loaded.
                Some(shared) if !keep_model => (shared, None),
                shared => {
                    // As `f32` only for a candle model to keep; to pack serving weights, as
                    // stored (`f16`), converted one tensor at a time by the packing.
                    let dtype = keep_model.then_some(DType::F32);
                    let (base_cfg, _, base_weights, dtype) =
                        super::finetune::load_base_as(&path, device, dtype)?;
                    if base_cfg != config {
                        return Err(ck_err(dir, format!("its config does not match base {}'s", base.name)));
                    }
                    let mut model =
                        Model::new(&config, VarBuilder::from_tensors(base_weights, dtype, device))?;
                    let shared = match shared {
                        Some(shared) => shared,
                        None => SHARED_BASES.share(
                            base.sha256.clone(),
                            FastWeights::from_model(&model, FastWeights::precision(&config))?,
                        ),
                    };
                    let model = if keep_model {
                        let adapters = VarBuilder::from_tensors(tensors.clone(), DType::F32, device);
                        model.attach_lora(spec, &adapters).map_err(|e| ck_err(&weights, e))?;
                        model.merge_lora()?;
                        Some(model)
                    } else {
                        None
                    };
                    (shared, model)
                }
            };
            let fast = FastModel::with_adapters(config.clone(), shared, spec, &tensors)
                .map_err(|e| ck_err(&weights, e))?;
            (model, fast)
        }
        (Some(_), None) => return Err(ck_err(dir, "it holds adapters but names no base")),
        _ => {
            let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
            let model = Model::new(&config, vb).map_err(|e| ck_err(&weights, e))?;
            let fast = FastModel::from_model(&model)?;
            (keep_model.then_some(model), fast)
        }
    };
    Ok(Loaded { model, fast, tokenizer, meta, dir: dir.to_path_buf() })
}

/// Bases' serving weights by hash, shared by every model fine-tuned from them while any of
/// those is loaded (ten guilds on one base hold one copy of it).
static SHARED_BASES: LazyLock<Shared<String, FastWeights>> = LazyLock::new(Shared::default);

pub(crate) fn pretty<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}
