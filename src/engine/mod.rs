//! The language-model engine: tokenizer training, a llama-style transformer, training with
//! AdamW, checkpoints and sampling. It knows nothing about Discord, HTTP or SQL: it takes chat
//! lines and returns models, figures and text.
//!
//! - [`tokenizer`]: byte-level BPE with message/speaker framing tokens.
//! - [`model`]: the transformer, with a differentiable training path and a KV-cached one.
//! - [`train`]: the training loop (schedule, clipping, validation in bits per byte, budget).
//! - [`finetune`]: starting from a pretrained base: loading it, fine-tuning it whole or with LoRA.
//! - [`fast`]: the lean CPU inference path that serves replies.
//! - [`generate`]: sampling a reply from a chat history.
//! - [`decode`]: sample and rank: K candidates mixed with the guild's counts, never copying.
//! - [`prompt`]: a channel's context kept as its key/value cache between replies.
//! - [`ops`]: fused CPU kernels with backward passes for training.
//! - [`direct`]: a model's whole training step by hand on the CPU, without candle's graph.
//! - [`optim`]: how a training steps (by hand or through candle's graph), AdamW with saved moments.
//! - [`gguf`]: llama-family GGUF files read into Hugging Face tensors and tokenizer.
//! - [`lora`]: low-rank adapters that fine-tune a pretrained base.
//! - [`loss`]: the training loss, the output head and cross-entropy as one op.
//! - [`matmul`]: matrix products on slices for the hand-written training ops.
//! - [`ngram`]: a Kneser–Ney trigram baseline for the benchmarks.
//! - [`counts`]: the guild's variable-order count model (live, exactly removable) and the mixer
//!   that blends it with the network.
//! - [`words`]: words of chat text, the copy index and guard, readability figures.
//! - [`voice`]: a guild's count model, vocabulary and copy index, kept beside its network.
//! - [`attention`]: causal self-attention of the training path as one op.
//! - [`allocator`]: freed memory kept in the process while a model trains.
//! - [`checkpoint`]: atomic save and validated load of a run directory, and its manifest.
//! - [`pretrain`]: pretraining a small chat base from nothing, resumable across sittings.
//! - [`run`]: one whole training run, from chat lines to a saved checkpoint loaded back.
//! - [`sharing`]: one copy of what several guilds load alike (a base's weights, a tokenizer).

pub mod allocator;
pub mod attention;
pub mod checkpoint;
pub mod counts;
pub mod decode;
pub mod direct;
pub mod fast;
pub mod fill;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod lora;
pub mod loss;
pub mod matmul;
pub mod model;
pub mod ngram;
pub mod ops;
pub mod optim;
pub mod pretrain;
pub mod prompt;
pub mod run;
pub mod seeded;
pub mod sharing;
pub mod tokenizer;
pub mod train;
pub mod voice;
pub mod words;

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// The engine's version, written into every checkpoint's `meta.json`.
pub const ENGINE_VERSION: &str = concat!("mynah-engine/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("invalid model config: {0}")]
    BadConfig(String),
    #[error("the prompt does not fit the model's {0}-position context")]
    ContextFull(usize),
    #[error("not enough data to train: {0}")]
    NotEnoughData(String),
    #[error("training was cancelled")]
    Cancelled,
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("device {0}")]
    Device(String),
    #[error("generation failed unexpectedly: {0}")]
    Panicked(String),
}

/// Named model sizes. `tiny` is for tests, `small` trains on the playground's sample in about a
/// minute, `default` is what a server gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    pub name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub seq_len: usize,
    pub batch: usize,
    pub lr: f64,
}

impl Preset {
    pub fn tiny() -> Preset {
        Preset {
            name: "tiny".into(),
            vocab_size: 320,
            hidden_size: 32,
            layers: 2,
            heads: 2,
            ffn: 64,
            seq_len: 64,
            batch: 8,
            lr: 3e-3,
        }
    }

    pub fn small() -> Preset {
        Preset {
            name: "small".into(),
            vocab_size: 1024,
            hidden_size: 96,
            layers: 3,
            heads: 4,
            ffn: 256,
            seq_len: 128,
            batch: 16,
            lr: 2e-3,
        }
    }

    pub fn default_preset() -> Preset {
        Preset {
            name: "default".into(),
            vocab_size: 2048,
            hidden_size: 128,
            layers: 4,
            heads: 4,
            ffn: 384,
            seq_len: 128,
            batch: 16,
            lr: 2e-3,
        }
    }

    /// The embedded chat base mynah pretrains on public chat (`mynah base pretrain`): sized
    /// for about two hours of two CPU cores (compute-optimal for that is a couple of million
    /// parameters) and for replies as quick as the default model's.
    pub fn base_s() -> Preset {
        Preset {
            name: "base-s".into(),
            vocab_size: 8192,
            hidden_size: 128,
            layers: 6,
            heads: 4,
            ffn: 384,
            seq_len: 256,
            batch: 16,
            lr: 2e-3,
        }
    }

    pub fn by_name(name: &str) -> Option<Preset> {
        match name {
            "base-s" => Some(Self::base_s()),
            "tiny" => Some(Self::tiny()),
            "small" => Some(Self::small()),
            "default" => Some(Self::default_preset()),
            _ => None,
        }
    }

    /// The model shape for a tokenizer of `vocab_size` tokens.
    pub fn model_config(&self, vocab_size: usize) -> model::ModelConfig {
        model::ModelConfig {
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.ffn,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: None,
            max_position_embeddings: self.seq_len,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            model_type: "llama".into(),
        }
    }
}

/// Parses a device name: `cpu`, `cuda` or `cuda:N` (the latter need the `cuda` feature).
pub fn device(name: &str) -> Result<Device, EngineError> {
    match name.trim() {
        "" | "cpu" => Ok(Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let ordinal =
                cuda.strip_prefix("cuda:").map(str::parse::<usize>).transpose().map_err(|_| {
                    EngineError::Device(format!("{cuda:?}: expected cuda:N with a GPU number"))
                })?;
            if !candle_core::utils::cuda_is_available() {
                return Err(EngineError::Device(format!(
                    "{cuda}: this build has no CUDA support (build with --features cuda)"
                )));
            }
            Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| EngineError::Device(format!("{cuda}: {e}")))
        }
        other => Err(EngineError::Device(format!("{other:?} is not cpu, cuda or cuda:N"))),
    }
}

#[cfg(test)]
mod tests;
