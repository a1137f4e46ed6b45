//! Training every weight of a model on the CPU without candle's graph: the weights, their
//! gradients and AdamW's moments live in flat buffers, a step's forward and backward passes are
//! written by hand ([`step`]) from the same kernels as the fused candle ops, and the update is one
//! pass over the buffers. Through candle's autograd a step of the default model spent more time
//! zeroing gradient buffers and summing into them, node by node, than in its products.
//! The candle model's variables are written back whenever it is read (validation, the end).
//! `tests` holds the gradients to candle's autograd on a tiny configuration.

mod rows;
mod step;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{Device, Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};
use rayon::prelude::*;

use super::attention::{Heads, Kernel};
use super::model::{tensor_names, Model};
use super::EngineError;
use step::{BlockSlots, Dims, Slots, Tape};

/// The optimiser's values per rayon task.
const CHUNK: usize = 1 << 14;

/// What the activations kept for the backward pass may take (48 MB): a batch whose positions
/// need more goes through in parts whose gradients sum. A whole batch of the embedded base
/// (16 × 256) would keep some 350 MB, and a training must stay within the bot's memory. Parts
/// cost some throughput: the embedded base trains about 6 % slower in parts of 2 sequences
/// than in parts of 8 (and no faster in parts of 3).
pub const TAPE_BYTES: usize = 48 << 20;

pub struct Trainer {
    slots: Slots,
    dims: Dims,
    kernel: Kernel,
    tape: Tape,
    /// Each variable, by name, with the range of the flat buffers it owns.
    vars: Vec<(String, Var, Range<usize>)>,
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    adam: ParamsAdamW,
    /// Optimiser steps taken (bias correction depends on it).
    pub steps: usize,
    seq_len: usize,
}

/// The positions a part of a batch holds: whole sequences, as many of the batch's as
/// [`TAPE_BYTES`] allows, and one at least.
fn part_rows(dims: Dims, heads: &Heads, layers: usize, batch: usize, seq_len: usize) -> usize {
    let per_row = Tape::bytes_per_row(dims, layers, heads.query, seq_len);
    let sequences = (TAPE_BYTES / (per_row * seq_len).max(1)).clamp(1, batch.max(1));
    sequences * seq_len
}

impl Trainer {
    /// A trainer for `model`, whose variables are `varmap`'s, for batches of up to `batch`
    /// sequences of `seq_len`; `None` when the model is not one it trains (adapters, frozen
    /// weights, another device or type).
    pub fn new(
        model: &Model,
        varmap: &VarMap,
        adam: ParamsAdamW,
        batch: usize,
        seq_len: usize,
    ) -> Result<Option<Trainer>, EngineError> {
        if !model.trains_whole_on_cpu() {
            return Ok(None);
        }
        let cfg = &model.cfg;
        let names = tensor_names(cfg);
        let by_name: HashMap<String, Var> = {
            let data =
                varmap.data().lock().map_err(|_| EngineError::BadConfig("variable map poisoned".into()))?;
            if data.len() != names.len() {
                return Ok(None);
            }
            data.clone()
        };
        let (mut vars, mut params, mut ranges) = (Vec::new(), Vec::new(), HashMap::new());
        for name in &names {
            let Some(var) = by_name.get(name) else { return Ok(None) };
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let range = params.len()..params.len() + values.len();
            params.extend(values);
            ranges.insert(name.as_str(), range.clone());
            vars.push((name.clone(), var.clone(), range));
        }
        let at = |name: &str| -> Result<Range<usize>, EngineError> {
            ranges.get(name).cloned().ok_or_else(|| EngineError::BadConfig(format!("the model lacks {name}")))
        };
        let embed = at("model.embed_tokens.weight")?;
        let head = if cfg.tie_word_embeddings { embed.clone() } else { at("lm_head.weight")? };
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| {
                let w = |part: &str| at(&format!("model.layers.{i}.{part}.weight"));
                Ok(BlockSlots {
                    attn_norm: w("input_layernorm")?,
                    q: w("self_attn.q_proj")?,
                    k: w("self_attn.k_proj")?,
                    v: w("self_attn.v_proj")?,
                    o: w("self_attn.o_proj")?,
                    mlp_norm: w("post_attention_layernorm")?,
                    gate: w("mlp.gate_proj")?,
                    up: w("mlp.up_proj")?,
                    down: w("mlp.down_proj")?,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let slots = Slots { embed, norm: at("model.norm.weight")?, head, blocks };
        let dims = Dims {
            d: cfg.hidden_size,
            kv: cfg.kv_heads() * cfg.head_dim(),
            f: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            eps: cfg.rms_norm_eps as f32,
        };
        let seq_len = seq_len.min(cfg.max_position_embeddings);
        let heads = Heads { query: cfg.num_attention_heads, kv: cfg.kv_heads(), dim: cfg.head_dim() };
        let kernel = Kernel::new(&model.rotary(seq_len)?, heads, 1.0 / (cfg.head_dim() as f32).sqrt());
        let size = params.len();
        Ok(Some(Trainer {
            slots,
            dims,
            kernel,
            tape: Tape::new(
                dims,
                cfg.num_hidden_layers,
                part_rows(dims, &heads, cfg.num_hidden_layers, batch, seq_len),
            ),
            vars,
            params,
            grads: vec![0.0; size],
            m: vec![0.0; size],
            v: vec![0.0; size],
            adam,
            steps: 0,
            seq_len,
        }))
    }

    /// The loss of one batch (`b` sequences of the trainer's length) and its gradients,
    /// clipped to a global norm of `clip_norm`; returns the loss and the norm before clipping.
    /// A batch whose activations would take more than [`TAPE_BYTES`] goes through in parts whose
    /// gradients sum.
    pub fn gradients(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        clip_norm: f64,
    ) -> Result<(f32, f64), EngineError> {
        let t = self.seq_len;
        let b = ids.len() / t;
        if b == 0 || ids.len() != b * t || targets.len() != ids.len() {
            return Err(EngineError::BadConfig(format!(
                "a batch of {} IDs and {} targets in sequences of {t}",
                ids.len(),
                targets.len()
            )));
        }
        self.grads.par_chunks_mut(CHUNK).for_each(|g| g.fill(0.0));
        // Parts as even as the tape allows: 16 sequences with room for 6 go as 5, 5 and 6.
        let parts = b.div_ceil((self.tape.rows / t).max(1));
        let mut loss = 0f64;
        for i in 0..parts {
            let (first, end) = (b * i / parts, b * (i + 1) / parts);
            let part = end - first;
            let weight = part as f64 / b as f64;
            let at = first * t..(first + part) * t;
            let part_loss = step::loss_and_grads(
                &mut self.tape,
                &self.slots,
                self.dims,
                &self.kernel,
                &self.params,
                &mut self.grads,
                &ids[at.clone()],
                &targets[at],
                part,
                t,
                weight as f32,
            )?;
            loss += weight * part_loss as f64;
        }
        let loss = loss as f32;
        // Partial sums in order, not in rayon's split: a seed gives the same weights every time.
        let squares: Vec<f64> =
            self.grads.par_chunks(CHUNK).map(|g| super::fast::expf::dot(g, g) as f64).collect();
        let norm = squares.iter().sum::<f64>().sqrt();
        if norm > clip_norm && norm.is_finite() {
            let scale = (clip_norm / norm) as f32;
            self.grads.par_chunks_mut(CHUNK).for_each(|g| g.iter_mut().for_each(|g| *g *= scale));
        }
        Ok((loss, norm))
    }

    /// One AdamW step over every weight with the gradients of [`Trainer::gradients`], at
    /// learning rate `lr`: candle-nn's `AdamW`, fused into one pass.
    pub fn update(&mut self, lr: f64) {
        self.steps += 1;
        let ParamsAdamW { beta1, beta2, eps, weight_decay, .. } = self.adam;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let scale_m = (1.0 / (1.0 - beta1.powi(t))) as f32;
        let scale_v = (1.0 / (1.0 - beta2.powi(t))) as f32;
        let decay = (1.0 - lr * weight_decay) as f32;
        let (b1, b2, eps, lr) = (beta1 as f32, beta2 as f32, eps as f32, lr as f32);
        self.params
            .par_chunks_mut(CHUNK)
            .zip(self.grads.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let adjusted = (*m * scale_m) / ((*v * scale_v).sqrt() + eps);
                    *p = *p * decay - adjusted * lr;
                }
            });
    }

    /// Writes the weights into the model's variables, for anything that reads the model.
    pub fn sync(&self) -> Result<(), EngineError> {
        for (_, var, range) in &self.vars {
            let t = Tensor::from_slice(&self.params[range.clone()], var.shape(), &Device::Cpu)?;
            var.set(&t)?;
        }
        Ok(())
    }

    /// AdamW's moments, named `m.<weight>` and `v.<weight>` (as [`super::pretrain`] saves them).
    pub fn moments(&self) -> Result<HashMap<String, Tensor>, EngineError> {
        let mut out = HashMap::new();
        for (name, var, range) in &self.vars {
            for (prefix, values) in [("m", &self.m), ("v", &self.v)] {
                let t = Tensor::from_slice(&values[range.clone()], var.shape(), &Device::Cpu)?;
                out.insert(format!("{prefix}.{name}"), t);
            }
        }
        Ok(out)
    }

    /// Restores moments saved by [`Trainer::moments`] after `steps` steps; every weight must
    /// have both, of its shape (checked before anything changes).
    pub fn restore(&mut self, moments: &HashMap<String, Tensor>, steps: usize) -> Result<(), EngineError> {
        let mut found = Vec::with_capacity(2 * self.vars.len());
        for (name, var, range) in &self.vars {
            for prefix in ["m", "v"] {
                found.push((prefix, range.clone(), saved_moment(moments, prefix, name, var.shape())?));
            }
        }
        for (prefix, range, t) in found {
            let saved = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let values = if prefix == "m" { &mut self.m } else { &mut self.v };
            values[range].copy_from_slice(&saved);
        }
        self.steps = steps;
        Ok(())
    }
}

/// The saved moment `<prefix>.<name>` of an optimiser state, which must have `shape`.
pub(crate) fn saved_moment<'a>(
    moments: &'a HashMap<String, Tensor>,
    prefix: &str,
    name: &str,
    shape: &candle_core::Shape,
) -> Result<&'a Tensor, EngineError> {
    let key = format!("{prefix}.{name}");
    let t = moments
        .get(&key)
        .ok_or_else(|| EngineError::BadConfig(format!("the optimiser state lacks {key}")))?;
    if t.shape() != shape {
        return Err(EngineError::BadConfig(format!(
            "the optimiser state's {key} is {:?}, the model's {shape:?}",
            t.shape()
        )));
    }
    Ok(t)
}
