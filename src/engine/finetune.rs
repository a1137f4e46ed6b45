//! Starting from a pretrained base instead of from scratch: loading its config, tokenizer and
//! weights, the fine-tuning settings (whole for small bases, LoRA adapters for large ones), the
//! fine-tuning run itself and a base's zero-shot figure.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::model::{Model, ModelConfig};
use super::tokenizer::{ChatLine, ChatTokenizer};
use super::train::{bits_per_byte, fit, prepare, Phase, Progress, Report, TrainOptions, Trained};
use super::{EngineError, Preset};

/// How a base is fine-tuned, whatever the preset says (presets size from-scratch models): more
/// context per window, small batches so a time budget of minutes still makes many steps, and a
/// learning rate for adapters.
pub const BASE_SEQ_LEN: usize = 256;
pub const BASE_BATCH: usize = 4;
pub const BASE_LR: f64 = 1e-3;

pub fn base_options(opts: &TrainOptions, cfg: &ModelConfig) -> TrainOptions {
    if cfg.params() < opts.full_fine_tune_below {
        let preset = Preset {
            seq_len: BASE_SEQ_LEN.min(cfg.max_position_embeddings),
            batch: SMALL_BASE_BATCH,
            lr: SMALL_BASE_LR,
            ..opts.preset.clone()
        };
        return TrainOptions { preset, lora: None, ..opts.clone() };
    }
    let preset = Preset { seq_len: BASE_SEQ_LEN, batch: BASE_BATCH, lr: BASE_LR, ..opts.preset.clone() };
    // Validation of a large model is costly: 32 windows of 256 tokens are enough for a figure.
    TrainOptions { preset, max_val_windows: opts.max_val_windows.min(32), ..opts.clone() }
}

/// A base smaller than this (like mynah's own embedded one) is fine-tuned whole by default: adapters would
/// save little memory there, and every weight of a small model trains in the same minutes.
pub const FULL_FINE_TUNE_MAX_PARAMS: u64 = 20_000_000;
pub const SMALL_BASE_BATCH: usize = 16;
/// Half the embedded base's pretraining peak: enough to learn a guild's voice in minutes without
/// washing out what the base knows.
pub const SMALL_BASE_LR: f64 = 1e-3;

/// Positions a model made from a base keeps: chat context is a few hundred tokens, and every
/// position costs key/value cache in each reply candidate.
pub const BASE_CONTEXT: usize = 512;

/// A base's config (for chat: [`BASE_CONTEXT`] positions), tokenizer and `f32` weights.
pub fn load_base(
    base: &std::path::Path,
    device: &Device,
) -> Result<(ModelConfig, ChatTokenizer, HashMap<String, Tensor>), EngineError> {
    let (cfg, tok, weights, _) = load_base_as(base, device, Some(DType::F32))?;
    Ok((cfg, tok, weights))
}

/// [`load_base`] with the weights in `dtype`, or as stored (`None`: the embedding's type, which
/// all take), and that type. Serving packs a base's weights one tensor at a time from what is
/// stored: as `f32` first, a 135 M-parameter base took 900 MB while it loaded.
pub fn load_base_as(
    base: &std::path::Path,
    device: &Device,
    dtype: Option<DType>,
) -> Result<(ModelConfig, ChatTokenizer, HashMap<String, Tensor>, DType), EngineError> {
    let bad = |reason: String| EngineError::Checkpoint { path: base.display().to_string(), reason };
    let tok = ChatTokenizer::load_base(&base.join("tokenizer.json"))?;
    let text =
        std::fs::read_to_string(base.join("config.json")).map_err(|e| bad(format!("config.json: {e}")))?;
    let mut cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| bad(format!("config.json: {e}")))?;
    if tok.vocab_size() != cfg.vocab_size {
        return Err(bad(format!(
            "the tokenizer has {} tokens, the model {}",
            tok.vocab_size(),
            cfg.vocab_size
        )));
    }
    cfg.max_position_embeddings = cfg.max_position_embeddings.min(BASE_CONTEXT);
    cfg.validate()?;
    let mut tensors = candle_core::safetensors::load(base.join("model.safetensors"), device)
        .map_err(|e| bad(format!("model.safetensors: {e}")))?;
    let dtype =
        dtype.or_else(|| tensors.get("model.embed_tokens.weight").map(Tensor::dtype)).unwrap_or(DType::F32);
    let mut out = HashMap::new();
    for name in super::model::tensor_names(&cfg) {
        // Each stored tensor is dropped once converted: the base is never held twice.
        let t = tensors.remove(&name).ok_or_else(|| bad(format!("model.safetensors lacks {name}")))?;
        out.insert(name, t.to_dtype(dtype)?);
    }
    drop(tensors);
    // Shapes are checked against the config here, before any training starts.
    Model::new(&cfg, VarBuilder::from_tensors(out.clone(), dtype, device))
        .map_err(|e| bad(format!("does not fit its config: {e}")))?;
    Ok((cfg, tok, out, dtype))
}

/// A model of `cfg` on a base's weights, ready to fine-tune: with `lora`, the weights are
/// constants and fresh adapters are the only variables; without, every weight is a variable.
pub fn base_model(
    cfg: &ModelConfig,
    weights: HashMap<String, Tensor>,
    lora: Option<&super::lora::LoraSpec>,
    device: &Device,
    seed: u64,
) -> Result<(Model, VarMap), EngineError> {
    let varmap = VarMap::new();
    match lora {
        Some(spec) => {
            spec.validate()?;
            let mut model = Model::new(cfg, VarBuilder::from_tensors(weights, DType::F32, device))?;
            model.attach_lora(spec, &super::seeded::var_builder(&varmap, seed, device))?;
            Ok((model, varmap))
        }
        None => {
            {
                let mut vars = varmap
                    .data()
                    .lock()
                    .map_err(|_| EngineError::BadConfig("variable map poisoned".into()))?;
                for (name, t) in weights {
                    vars.insert(name, candle_core::Var::from_tensor(&t)?);
                }
            }
            let model = Model::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
            Ok((model, varmap))
        }
    }
}

/// Trains on `lines` starting from the pretrained llama checkpoint in `base` (HF layout:
/// `config.json`, `model.safetensors`, `tokenizer.json`) instead of from scratch. The base's
/// tokenizer is kept, and chat is rendered as `author: content` lines, the way it read chat.
pub fn train_from_base(
    lines: &[ChatLine],
    base: &std::path::Path,
    opts: &TrainOptions,
    device: &Device,
    cancel: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Trained, EngineError> {
    let started = Instant::now();
    let (cfg, tok, weights) = load_base(base, device)?;
    let opts = &base_options(opts, &cfg);
    let (model, varmap) = base_model(&cfg, weights, opts.lora.as_ref(), device, opts.seed)?;
    progress(&Progress::starting(Phase::Preparing));
    let data = prepare(lines, &tok, opts.val_fraction)?;
    let trained = fit(model, varmap, &tok, &data, opts, device, cancel, &mut progress, started)?;
    Ok(Trained { config: cfg, tokenizer: tok, lora: opts.lora, ..trained })
}

/// A base as it is, without training, with its validation figure on `lines`: what a guild
/// gets from a base before its first fine-tuning (and the zero-shot figure of the benchmarks).
pub fn zero_shot(
    lines: &[ChatLine],
    base: &std::path::Path,
    opts: &TrainOptions,
    device: &Device,
) -> Result<Trained, EngineError> {
    let started = Instant::now();
    let (cfg, tok, weights) = load_base(base, device)?;
    let opts = &base_options(opts, &cfg);
    let (model, varmap) = base_model(&cfg, weights, opts.lora.as_ref(), device, opts.seed)?;
    let data = prepare(lines, &tok, opts.val_fraction)?;
    let len = opts.preset.seq_len.min(cfg.max_position_embeddings);
    let val = bits_per_byte(&model, &tok, &data.val, len, opts.max_val_windows)?;
    let report = Report {
        steps: 0,
        epochs: 0.0,
        tokens: 0,
        train_loss: f32::NAN,
        val_bits_per_byte: val,
        seconds: started.elapsed().as_secs_f64(),
        tokens_per_second: 0.0,
        train_messages: data.train_messages,
        val_messages: data.val_messages,
        stopped_by_budget: false,
    };
    Ok(Trained { model, varmap, tokenizer: tok, config: cfg, report, lora: opts.lora })
}
