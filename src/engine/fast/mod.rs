//! The lean inference path for serving on CPU: the same weights as [`super::model::Model`],
//! copied into plain row-major buffers, with a preallocated KV cache and no per-step
//! allocation, masks or kernel launches. Per-token work on small models is dominated by
//! framework overhead otherwise (about 80 ms for a 40-token reply in candle vs a target of
//! 25 ms). The kernels are compiled twice, with AVX2+FMA selected at run time when present.
//! Tests hold it to the candle path's logits. A pretrained base's weights are shared by every
//! guild fine-tuned from it ([`FastWeights`] behind an `Arc`), each guild's low-rank adapters
//! applied beside them as it decodes. Models of [`QUANTIZE_MIN_PARAMS`] parameters or more keep
//! their matrices as `i8` with a scale per row.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use self::kernels::*;
use super::lora::LoraSpec;
use super::model::{Model, ModelConfig};
use super::EngineError;

mod kernels;

/// Models this large serve from `i8` matrices: a pretrained base reads a quarter of the bytes
/// per token and takes a quarter of the memory, for a small loss of precision; small models,
/// whose weights fit in cache anyway, stay exact.
pub const QUANTIZE_MIN_PARAMS: u64 = 20_000_000;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    mlp_norm: Vec<f32>,
    wgate: Mat,
    wup: Mat,
    wdown: Mat,
}

/// A model's weights in host buffers, shareable between models (a base and its guilds).
pub struct FastWeights {
    embed: Mat,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when the output layer is the embedding (tied): one copy serves both.
    lm_head: Option<Mat>,
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
            + self.lm_head.as_ref().map_or(0, Mat::bytes)
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

/// One generation's state: the KV cache and scratch space, allocated once. Cloning it forks a
/// generation (candidates share their prompt's prefill).
#[derive(Clone)]
pub struct FastCache {
    /// Per layer, the keys and values of positions `0..pos`, `[pos][kv]`: they grow with the
    /// sequence, so a cache costs what its context holds.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    pub pos: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    kk: Vec<f32>,
    vv: Vec<f32>,
    att: Vec<f32>,
    scores: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    tmp: Vec<f32>,
    /// An adapter's `x aᵀ`.
    lr: Vec<f32>,
}

impl FastCache {
    /// Forgets every position from `pos` on: the next tokens continue from there.
    pub fn rewind(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Bytes its keys and values hold.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|l| l.len() * 4).sum()
    }
}

fn host(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

impl FastWeights {
    /// Copies the weights of `model` (on any device) into host buffers, as `i8` matrices when
    /// `quantize` is set.
    pub fn from_model(model: &Model, quantize: bool) -> Result<FastWeights, EngineError> {
        let w = model.weights();
        let (d, f) = (model.cfg.hidden_size, model.cfg.intermediate_size);
        let mat =
            |t: &Tensor, n_in: usize| -> Result<Mat, EngineError> { Ok(Mat::new(host(t)?, n_in, quantize)) };
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

    /// Whether a model of `cfg` serves from `i8` matrices.
    pub fn quantized(cfg: &ModelConfig) -> bool {
        cfg.params() >= QUANTIZE_MIN_PARAMS
    }
}

impl FastModel {
    /// Copies the weights of `model` (on any device) into host buffers (`i8` for a large model).
    pub fn from_model(model: &Model) -> Result<FastModel, EngineError> {
        let quantize = FastWeights::quantized(&model.cfg);
        FastModel::from_model_as(model, quantize)
    }

    /// [`FastModel::from_model`] with the choice of `i8` matrices made by the caller.
    pub fn from_model_as(model: &Model, quantize: bool) -> Result<FastModel, EngineError> {
        Ok(FastModel::new(model.cfg.clone(), Arc::new(FastWeights::from_model(model, quantize)?), None))
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
                Ok(LowRank { a: Mat::F32(host(a)?), b: host(b)?, rank, scale: spec.scale() as f32 })
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
                if lr.a.bytes() != 4 * lr.rank * inp || lr.b.len() != out * lr.rank {
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

    pub fn new_cache(&self) -> FastCache {
        let layers = self.weights.layers.len();
        FastCache {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            pos: 0,
            x: Vec::new(),
            xn: Vec::new(),
            q: Vec::new(),
            kk: Vec::new(),
            vv: Vec::new(),
            att: Vec::new(),
            scores: Vec::new(),
            g: Vec::new(),
            u: Vec::new(),
            tmp: Vec::new(),
            lr: Vec::new(),
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
        if cache.pos + ids.len() > self.cfg.max_position_embeddings {
            return Err(EngineError::ContextFull(self.cfg.max_position_embeddings));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(EngineError::Tokenizer(format!("token {bad} is outside the model's vocabulary")));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function was compiled for.
            unsafe { self.forward_fma(ids, cache, logits) };
            return Ok(());
        }
        self.forward_impl::<false>(ids, cache, logits);
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_fma(&self, ids: &[u32], cache: &mut FastCache, logits: &mut Vec<f32>) {
        self.forward_impl::<true>(ids, cache, logits)
    }

    #[inline(always)]
    fn forward_impl<const FMA: bool>(&self, ids: &[u32], c: &mut FastCache, logits: &mut Vec<f32>) {
        let cfg = &self.cfg;
        let (d, f, t) = (cfg.hidden_size, cfg.intermediate_size, ids.len());
        let (h, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let kv = kvh * hd;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let pos = c.pos;
        let w = &*self.weights;
        resize(&mut c.x, t * d);
        for (i, &id) in ids.iter().enumerate() {
            w.embed.row_into(id as usize, d, &mut c.x[i * d..(i + 1) * d]);
        }
        for (li, l) in w.layers.iter().enumerate() {
            let ad = self.adapters.as_ref().map(|a| &a[li]);
            rms_norm_rows::<FMA>(&c.x, &l.attn_norm, d, eps, &mut c.xn);
            matmul::<FMA>(&c.xn, &l.wq, t, d, d, &mut c.q);
            matmul::<FMA>(&c.xn, &l.wk, t, d, kv, &mut c.kk);
            matmul::<FMA>(&c.xn, &l.wv, t, d, kv, &mut c.vv);
            if let Some(ad) = ad {
                low_rank::<FMA>(&ad[0], &c.xn, t, d, d, &mut c.q, &mut c.lr);
                low_rank::<FMA>(&ad[1], &c.xn, t, d, kv, &mut c.kk, &mut c.lr);
                low_rank::<FMA>(&ad[2], &c.xn, t, d, kv, &mut c.vv, &mut c.lr);
            }
            for i in 0..t {
                let p = pos + i;
                let (cos, sin) =
                    (&self.cos[p * hd / 2..(p + 1) * hd / 2], &self.sin[p * hd / 2..(p + 1) * hd / 2]);
                for head in c.q[i * d..(i + 1) * d].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
                for head in c.kk[i * kv..(i + 1) * kv].chunks_exact_mut(hd) {
                    rope(head, cos, sin);
                }
            }
            // Positions past `pos` may hold a rewound continuation: they are replaced.
            c.k[li].truncate(pos * kv);
            c.k[li].extend_from_slice(&c.kk[..t * kv]);
            c.v[li].truncate(pos * kv);
            c.v[li].extend_from_slice(&c.vv[..t * kv]);
            resize(&mut c.att, t * d);
            let group = h / kvh;
            let (layer_k, layer_v) = (&c.k[li], &c.v[li]);
            for i in 0..t {
                let seen = pos + i + 1;
                for hh in 0..h {
                    let q = &c.q[i * d + hh * hd..i * d + (hh + 1) * hd];
                    let off = (hh / group) * hd;
                    resize(&mut c.scores, seen);
                    let mut max = f32::NEG_INFINITY;
                    for j in 0..seen {
                        let s = dot::<FMA>(q, &layer_k[j * kv + off..j * kv + off + hd]) * scale;
                        c.scores[j] = s;
                        max = max.max(s);
                    }
                    let mut sum = 0.0;
                    for s in c.scores[..seen].iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut c.att[i * d + hh * hd..i * d + (hh + 1) * hd];
                    out.fill(0.0);
                    for j in 0..seen {
                        axpy::<FMA>(c.scores[j] / sum, &layer_v[j * kv + off..j * kv + off + hd], out);
                    }
                }
            }
            matmul::<FMA>(&c.att, &l.wo, t, d, d, &mut c.tmp);
            if let Some(ad) = ad {
                low_rank::<FMA>(&ad[3], &c.att, t, d, d, &mut c.tmp, &mut c.lr);
            }
            add(&mut c.x, &c.tmp);
            rms_norm_rows::<FMA>(&c.x, &l.mlp_norm, d, eps, &mut c.xn);
            matmul::<FMA>(&c.xn, &l.wgate, t, d, f, &mut c.g);
            matmul::<FMA>(&c.xn, &l.wup, t, d, f, &mut c.u);
            if let Some(ad) = ad {
                low_rank::<FMA>(&ad[4], &c.xn, t, d, f, &mut c.g, &mut c.lr);
                low_rank::<FMA>(&ad[5], &c.xn, t, d, f, &mut c.u, &mut c.lr);
            }
            for (g, u) in c.g.iter_mut().zip(&c.u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            matmul::<FMA>(&c.g, &l.wdown, t, f, d, &mut c.tmp);
            if let Some(ad) = ad {
                low_rank::<FMA>(&ad[6], &c.g, t, f, d, &mut c.tmp, &mut c.lr);
            }
            add(&mut c.x, &c.tmp);
        }
        c.pos += t;
        // Only the last position's logits are needed.
        let last = &c.x[(t - 1) * d..t * d];
        rms_norm_rows::<FMA>(last, &w.norm, d, eps, &mut c.xn);
        let head = w.lm_head.as_ref().unwrap_or(&w.embed);
        matmul::<FMA>(&c.xn, head, 1, d, cfg.vocab_size, logits);
    }
}

#[cfg(test)]
mod tests;
