//! The lean inference path for serving on CPU: the same weights as [`super::model::Model`],
//! copied into host buffers packed for the product ([`panels`]), with a preallocated KV cache and no per-step
//! allocation, masks or kernel launches. Per-token work on small models is dominated by
//! framework overhead otherwise (about 80 ms for a 40-token reply in candle vs a target of
//! 25 ms). The kernels are compiled twice, with AVX2+FMA selected at run time when present.
//! Tests hold it to the candle path's logits. A pretrained base's weights are shared by every
//! guild fine-tuned from it ([`FastWeights`] behind an `Arc`), each guild's low-rank adapters
//! applied beside them as it decodes. Models of [`QUANTIZE_MIN_PARAMS`] parameters or more keep
//! their matrices as 4-bit blocks ([`q4`]). Reply candidates decode side by side
//! ([`FastModel::forward_batch`]): each weight row, and each key and value of the prompt they
//! share, is read once per token for all of them.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use self::kernels::*;
use self::low_rank::{low_rank, LowRank};
use self::panels::Panels;
use super::lora::LoraSpec;
use super::model::{Model, ModelConfig};
use super::EngineError;

mod attention;
mod cache;
pub(crate) mod expf;
mod kernels;
mod low_rank;
mod pair;
mod panels;
mod q4;

use self::attention::{attend, prefill_attention, Row, PREFILL_ROWS};
pub use self::cache::FastCache;
use self::cache::Scratch;
pub use self::expf::{exp, exp_shifted};
pub use self::kernels::Precision;

/// Models this large serve from 4-bit matrices: a pretrained base reads about a sixth of the
/// bytes per token and takes a sixth of the memory, and a GGUF `Q4_1` base loses nothing.
pub const QUANTIZE_MIN_PARAMS: u64 = 20_000_000;
/// Models from this size (below [`QUANTIZE_MIN_PARAMS`]) serve from `f16` matrices: a decoding
/// step of the embedded base reads its weights from memory, and half the bytes made it about
/// twice as fast; smaller models, whose weights fit in cache anyway, stay exact.
pub const HALF_MIN_PARAMS: u64 = 2_000_000;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Panels,
    wk: Panels,
    wv: Panels,
    wo: Panels,
    mlp_norm: Vec<f32>,
    wgate: Panels,
    wup: Panels,
    wdown: Panels,
}

/// A model's weights in host buffers, shareable between models (a base and its guilds).
pub struct FastWeights {
    embed: Panels,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when the output layer is the embedding (tied): one copy serves both.
    lm_head: Option<Panels>,
}

impl FastWeights {
    /// Bytes of the weights (what sharing them saves per guild).
    pub fn bytes(&self) -> usize {
        let layer = |l: &Layer| {
            (l.attn_norm.len() + l.mlp_norm.len()) * 4
                + [&l.wq, &l.wk, &l.wv, &l.wo, &l.wgate, &l.wup, &l.wdown]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
        };
        self.embed.bytes()
            + self.norm.len() * 4
            + self.lm_head.as_ref().map_or(0, Panels::bytes)
            + self.layers.iter().map(layer).sum::<usize>()
    }
}

/// A model ready for fast single-stream generation.
pub struct FastModel {
    pub cfg: ModelConfig,
    weights: Arc<FastWeights>,
    /// Per layer, the adapters of q, k, v, o, gate, up and down, when the model is a base with
    /// a guild's adapters on top.
    adapters: Option<Vec<[LowRank; 7]>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn host(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

impl FastWeights {
    /// Copies the weights of `model` (on any device) into host buffers, held as `precision`
    /// says.
    pub fn from_model(model: &Model, precision: Precision) -> Result<FastWeights, EngineError> {
        let w = model.weights();
        let (d, f) = (model.cfg.hidden_size, model.cfg.intermediate_size);
        let mat = |t: &Tensor, n_in: usize| -> Result<Panels, EngineError> {
            Ok(Panels::new(&host(t)?, n_in, precision))
        };
        let mut layers = Vec::with_capacity(w.blocks.len());
        for b in w.blocks {
            layers.push(Layer {
                attn_norm: host(b[0])?,
                wq: mat(b[1], d)?,
                wk: mat(b[2], d)?,
                wv: mat(b[3], d)?,
                wo: mat(b[4], d)?,
                mlp_norm: host(b[5])?,
                wgate: mat(b[6], d)?,
                wup: mat(b[7], d)?,
                wdown: mat(b[8], f)?,
            });
        }
        Ok(FastWeights {
            embed: mat(w.embed, d)?,
            layers,
            norm: host(w.norm)?,
            lm_head: if model.cfg.tie_word_embeddings { None } else { Some(mat(w.lm_head, d)?) },
        })
    }

    /// How a model of `cfg` holds its matrices for serving.
    pub fn precision(cfg: &ModelConfig) -> Precision {
        match cfg.params() {
            p if p >= QUANTIZE_MIN_PARAMS => Precision::Q4,
            p if p >= HALF_MIN_PARAMS => Precision::F16,
            _ => Precision::F32,
        }
    }
}

impl FastModel {
    /// Copies the weights of `model` (on any device) into host buffers (`f16` or 4-bit for
    /// larger models: [`FastWeights::precision`]).
    pub fn from_model(model: &Model) -> Result<FastModel, EngineError> {
        FastModel::from_model_as(model, FastWeights::precision(&model.cfg))
    }

    /// [`FastModel::from_model`] with the precision chosen by the caller.
    pub fn from_model_as(model: &Model, precision: Precision) -> Result<FastModel, EngineError> {
        Ok(FastModel::new(model.cfg.clone(), Arc::new(FastWeights::from_model(model, precision)?), None))
    }

    /// A base's shared weights with a guild's adapters (`tensors` as [`super::lora`] names them).
    pub fn with_adapters(
        cfg: ModelConfig,
        weights: Arc<FastWeights>,
        spec: &LoraSpec,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<FastModel, EngineError> {
        let mut adapters = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let one = |target: &str| -> Result<LowRank, EngineError> {
                let get = |ab: &str| {
                    let name = format!("model.layers.{i}.{target}.{ab}.weight");
                    tensors
                        .get(&name)
                        .ok_or_else(|| EngineError::BadConfig(format!("the adapters lack {name}")))
                };
                let (a, b) = (get("lora_a")?, get("lora_b")?);
                let (rank, _) = a.dims2()?;
                let (_, rank_b) = b.dims2()?;
                if rank != spec.rank || rank_b != spec.rank {
                    return Err(EngineError::BadConfig(format!(
                        "{target} adapters of rank {rank}/{rank_b}, expected {}",
                        spec.rank
                    )));
                }
                // The scale is folded into `b`.
                let scale = spec.scale() as f32;
                let b: Vec<f32> = host(b)?.into_iter().map(|v| v * scale).collect();
                // As `f16`: a decoding step reads the adapters beside the base's weights (rank 8
                // on SmolLM2-135M: 10 MB as `f32`, a tenth of a step's bytes; about 7 % faster).
                Ok(LowRank::new(&host(a)?, &b, rank))
            };
            let t = super::lora::TARGETS;
            adapters.push([
                one(t[0])?,
                one(t[1])?,
                one(t[2])?,
                one(t[3])?,
                one(t[4])?,
                one(t[5])?,
                one(t[6])?,
            ]);
        }
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let kv = cfg.kv_heads() * cfg.head_dim();
        for (layer, l) in adapters.iter().enumerate() {
            for (lr, (out, inp)) in l.iter().zip([(d, d), (kv, d), (kv, d), (d, d), (f, d), (f, d), (d, f)]) {
                if lr.a.dims() != (spec.rank, inp) || lr.b.dims() != (out, spec.rank) {
                    return Err(EngineError::BadConfig(format!(
                        "layer {layer}: an adapter does not fit the model"
                    )));
                }
            }
        }
        Ok(FastModel::new(cfg, weights, Some(adapters)))
    }

    fn new(cfg: ModelConfig, weights: Arc<FastWeights>, adapters: Option<Vec<[LowRank; 7]>>) -> FastModel {
        let hd = cfg.head_dim();
        let n = cfg.max_position_embeddings;
        let (mut cos, mut sin) = (Vec::with_capacity(n * hd / 2), Vec::with_capacity(n * hd / 2));
        for p in 0..n {
            for i in 0..hd / 2 {
                let inv = 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32);
                let a = p as f32 * inv;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        FastModel { cfg, weights, adapters, cos, sin }
    }

    /// The weights, to share with other models on the same base.
    pub fn weights(&self) -> &Arc<FastWeights> {
        &self.weights
    }

    /// Bytes of the guild's own adapters (0 without them).
    pub fn adapter_bytes(&self) -> usize {
        self.adapters.iter().flatten().flatten().map(LowRank::bytes).sum()
    }

    pub fn new_cache(&self) -> FastCache {
        let layers = self.weights.layers.len();
        FastCache {
            prefix: None,
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            pos: 0,
            width: self.cfg.kv_heads() * self.cfg.head_dim(),
            head_dim: self.cfg.head_dim(),
            scratch: Scratch::default(),
        }
    }

    /// Writes the logits for the last of `ids` (which continue the cached sequence) into `logits`.
    /// To continue from an earlier position instead, [`FastCache::rewind`] first.
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut FastCache,
        logits: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let slots = vec![0; ids.len()];
        self.forward_rows(ids, &slots, &mut [cache], &mut [logits])
    }

    /// One token for each of several generations (reply candidates) in one pass: `ids[i]`
    /// continues `caches[i]`, whose next logits go to `logits[i]`. Each weight row is read once
    /// for all of them, which makes K candidates cost far less than K single passes.
    pub fn forward_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut FastCache],
        logits: &mut [&mut Vec<f32>],
    ) -> Result<(), EngineError> {
        if ids.len() != caches.len() || ids.len() != logits.len() {
            return Err(EngineError::BadConfig("a batch needs one cache and one output per token".into()));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let slots: Vec<usize> = (0..ids.len()).collect();
        self.forward_rows(ids, &slots, caches, logits)
    }

    /// Row `i` of `ids` continues `caches[slots[i]]` (a cache's rows in order); each cache's
    /// last row gives its logits.
    fn forward_rows(
        &self,
        ids: &[u32],
        slots: &[usize],
        caches: &mut [&mut FastCache],
        logits: &mut [&mut Vec<f32>],
    ) -> Result<(), EngineError> {
        let max = self.cfg.max_position_embeddings;
        for (i, c) in caches.iter().enumerate() {
            if c.pos + slots.iter().filter(|&&s| s == i).count() > max {
                return Err(EngineError::ContextFull(max));
            }
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::Tokenizer(format!("token {bad} is outside the model's vocabulary")));
        }
        let mut scratch = std::mem::take(&mut caches[0].scratch);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: the CPU supports the features the function was compiled for.
            unsafe { self.forward_fma(ids, slots, caches, &mut scratch, logits) };
            caches[0].scratch = scratch;
            return Ok(());
        }
        self.forward_impl::<false>(ids, slots, caches, &mut scratch, logits);
        caches[0].scratch = scratch;
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn forward_fma(
        &self,
        ids: &[u32],
        slots: &[usize],
        caches: &mut [&mut FastCache],
        scratch: &mut Scratch,
        logits: &mut [&mut Vec<f32>],
    ) {
        self.forward_impl::<true>(ids, slots, caches, scratch, logits)
    }

    #[inline(always)]
    fn forward_impl<const FMA: bool>(
        &self,
        ids: &[u32],
        slots: &[usize],
        caches: &mut [&mut FastCache],
        c: &mut Scratch,
        logits: &mut [&mut Vec<f32>],
    ) {
        let cfg = &self.cfg;
        let (d, t) = (cfg.hidden_size, ids.len());
        let (h, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let kv = kvh * hd;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        // Each row's position in its own sequence.
        let starts: Vec<usize> = caches.iter().map(|c| c.pos).collect();
        let mut next = starts.clone();
        let positions: Vec<usize> = slots
            .iter()
            .map(|&s| {
                next[s] += 1;
                next[s] - 1
            })
            .collect();
        let w = &*self.weights;
        resize(&mut c.x, t * d);
        for (i, &id) in ids.iter().enumerate() {
            w.embed.row_into(id as usize, &mut c.x[i * d..(i + 1) * d]);
        }
        for (li, l) in w.layers.iter().enumerate() {
            let ad = self.adapters.as_ref().map(|a| &a[li]);
            rms_norm_rows::<FMA>(&c.x, &l.attn_norm, d, eps, &mut c.xn);
            matmul::<FMA>(&c.xn, &l.wq, t, &mut c.q);
            matmul::<FMA>(&c.xn, &l.wk, t, &mut c.kk);
            matmul::<FMA>(&c.xn, &l.wv, t, &mut c.vv);
            if let Some(ad) = ad {
                low_rank::<FMA>(&ad[0], &c.xn, t, &mut c.q, &mut c.lr, &mut c.lr_out);
                low_rank::<FMA>(&ad[1], &c.xn, t, &mut c.kk, &mut c.lr, &mut c.lr_out);
                low_rank::<FMA>(&ad[2], &c.xn, t, &mut c.vv, &mut c.lr, &mut c.lr_out);
            }
            for (i, &p) in positions.iter().enumerate() {
                let (cos, sin) =
                    (&self.cos[p * hd / 2..(p + 1) * hd / 2], &self.sin[p * hd / 2..(p + 1) * hd / 2]);
                for head in c.q[i * d..(i + 1) * d].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
                for head in c.kk[i * kv..(i + 1) * kv].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
            }
            // Positions past a cache's start may hold a rewound continuation: they are replaced.
            for (cache, &start) in caches.iter_mut().zip(&starts) {
                let own = (start - cache.prefix_len()) * kv;
                cache.k[li].truncate(own);
                cache.v[li].truncate(own);
            }
            for (i, &s) in slots.iter().enumerate() {
                caches[s].k[li].extend_from_slice(&c.kk[i * kv..(i + 1) * kv]);
                caches[s].v[li].extend_from_slice(&c.vv[i * kv..(i + 1) * kv]);
            }
            resize(&mut c.att, t * d);
            if caches.len() == 1 && t >= PREFILL_ROWS && caches[0].prefix.is_none() {
                let (k, v) = (&caches[0].k[li], &caches[0].v[li]);
                prefill_attention(&c.q, k, v, starts[0], t, (h, kvh, hd), scale, &mut c.scores, &mut c.att);
                continue_layer::<FMA>(self, li, t, c);
                continue;
            }
            // Rows whose caches share a prefix attend to it together, each shared key and
            // value read once for all of them.
            let mut done = vec![false; t];
            for first in 0..t {
                if done[first] {
                    continue;
                }
                let prefix = caches[slots[first]].prefix.clone();
                let group: Vec<usize> = (first..t)
                    .filter(|&i| {
                        let other = &caches[slots[i]].prefix;
                        match (&prefix, other) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => i == first,
                            _ => false,
                        }
                    })
                    .collect();
                group.iter().for_each(|&i| done[i] = true);
                let rows: Vec<Row> = group
                    .iter()
                    .map(|&i| Row {
                        index: i,
                        seen: positions[i] + 1,
                        k: &caches[slots[i]].k[li],
                        v: &caches[slots[i]].v[li],
                    })
                    .collect();
                let shared = prefix.as_ref().map(|p| (&p.packed[li][..], p.len));
                attend::<FMA>(&c.q, &rows, shared, (h, kvh, hd), scale, &mut c.scores, &mut c.att);
            }
            continue_layer::<FMA>(self, li, t, c);
        }
        for (cache, &end) in caches.iter_mut().zip(&next) {
            cache.pos = end;
        }
        // Only each sequence's last position needs logits.
        let n = caches.len();
        c.tmp.clear();
        for s in 0..n {
            let last = slots.iter().rposition(|&x| x == s).unwrap_or(0);
            c.tmp.extend_from_slice(&c.x[last * d..(last + 1) * d]);
        }
        rms_norm_rows::<FMA>(&c.tmp, &w.norm, d, eps, &mut c.last);
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        let vocab = cfg.vocab_size;
        if n == 1 {
            matmul::<FMA>(&c.last, head, 1, &mut *logits[0]);
            return;
        }
        matmul::<FMA>(&c.last, head, n, &mut c.out);
        for (s, out) in logits.iter_mut().enumerate() {
            out.clear();
            out.extend_from_slice(&c.out[s * vocab..(s + 1) * vocab]);
        }
    }
}

/// A layer after its attention: the output projection, the residual, and the MLP.
#[inline(always)]
fn continue_layer<const FMA: bool>(m: &FastModel, li: usize, t: usize, c: &mut Scratch) {
    let cfg = &m.cfg;
    let d = cfg.hidden_size;
    let eps = cfg.rms_norm_eps as f32;
    let l = &m.weights.layers[li];
    let ad = m.adapters.as_ref().map(|a| &a[li]);
    matmul::<FMA>(&c.att, &l.wo, t, &mut c.tmp);
    if let Some(ad) = ad {
        low_rank::<FMA>(&ad[3], &c.att, t, &mut c.tmp, &mut c.lr, &mut c.lr_out);
    }
    add(&mut c.x, &c.tmp);
    rms_norm_rows::<FMA>(&c.x, &l.mlp_norm, d, eps, &mut c.xn);
    matmul::<FMA>(&c.xn, &l.wgate, t, &mut c.g);
    matmul::<FMA>(&c.xn, &l.wup, t, &mut c.u);
    if let Some(ad) = ad {
        low_rank::<FMA>(&ad[4], &c.xn, t, &mut c.g, &mut c.lr, &mut c.lr_out);
        low_rank::<FMA>(&ad[5], &c.xn, t, &mut c.u, &mut c.lr, &mut c.lr_out);
    }
    for (g, u) in c.g.iter_mut().zip(&c.u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    matmul::<FMA>(&c.g, &l.wdown, t, &mut c.tmp);
    if let Some(ad) = ad {
        low_rank::<FMA>(&ad[6], &c.g, t, &mut c.tmp, &mut c.lr, &mut c.lr_out);
    }
    add(&mut c.x, &c.tmp);
}

#[cfg(test)]
mod tests;
