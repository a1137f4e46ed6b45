//! The lean inference path for serving on CPU: the same weights as [`super::model::Model`],
//! copied into plain row-major buffers, with a preallocated KV cache and no per-step
//! allocation, masks or kernel launches. Per-token work on small models is dominated by
//! framework overhead otherwise (about 80 ms for a 40-token reply in candle vs a target of
//! 25 ms). The kernels are compiled twice, with AVX2+FMA selected at run time when present.
//! Tests hold it to the candle path's logits. A pretrained base's weights are shared by every
//! guild fine-tuned from it ([`FastWeights`] behind an `Arc`), each guild's low-rank adapters
//! applied beside them as it decodes.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::lora::LoraSpec;
use super::model::{Model, ModelConfig};
use super::EngineError;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    mlp_norm: Vec<f32>,
    wgate: Vec<f32>,
    wup: Vec<f32>,
    wdown: Vec<f32>,
}

/// A model's weights in host buffers, shareable between models (a base and its guilds).
pub struct FastWeights {
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when the output layer is the embedding (tied): one copy serves both.
    lm_head: Option<Vec<f32>>,
}

impl FastWeights {
    /// Bytes of the weights (what sharing them saves per guild).
    pub fn bytes(&self) -> usize {
        let layer = |l: &Layer| {
            [&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.mlp_norm, &l.wgate, &l.wup, &l.wdown]
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
        };
        let n = self.embed.len()
            + self.norm.len()
            + self.lm_head.as_ref().map_or(0, Vec::len)
            + self.layers.iter().map(layer).sum::<usize>();
        n * 4
    }
}

/// One projection's low-rank adapter: `y += scale · (x aᵀ) bᵀ`.
struct LowRank {
    /// `[rank, in]`
    a: Vec<f32>,
    /// `[out, rank]`
    b: Vec<f32>,
    rank: usize,
    scale: f32,
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
    k: Vec<f32>,
    v: Vec<f32>,
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

fn host(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

impl FastWeights {
    /// Copies the weights of `model` (on any device) into host buffers.
    pub fn from_model(model: &Model) -> Result<FastWeights, EngineError> {
        let w = model.weights();
        let mut layers = Vec::with_capacity(w.blocks.len());
        for b in w.blocks {
            layers.push(Layer {
                attn_norm: host(b[0])?,
                wq: host(b[1])?,
                wk: host(b[2])?,
                wv: host(b[3])?,
                wo: host(b[4])?,
                mlp_norm: host(b[5])?,
                wgate: host(b[6])?,
                wup: host(b[7])?,
                wdown: host(b[8])?,
            });
        }
        Ok(FastWeights {
            embed: host(w.embed)?,
            layers,
            norm: host(w.norm)?,
            lm_head: if model.cfg.tie_word_embeddings { None } else { Some(host(w.lm_head)?) },
        })
    }
}

impl FastModel {
    /// Copies the weights of `model` (on any device) into host buffers.
    pub fn from_model(model: &Model) -> Result<FastModel, EngineError> {
        Ok(FastModel::new(model.cfg.clone(), Arc::new(FastWeights::from_model(model)?), None))
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
                Ok(LowRank { a: host(a)?, b: host(b)?, rank, scale: spec.scale() as f32 })
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
                if lr.a.len() != lr.rank * inp || lr.b.len() != out * lr.rank {
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
        let kv = self.cfg.kv_heads() * self.cfg.head_dim();
        let size = self.weights.layers.len() * self.cfg.max_position_embeddings * kv;
        FastCache {
            k: vec![0.0; size],
            v: vec![0.0; size],
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
        let max_pos = cfg.max_position_embeddings;
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let pos = c.pos;
        let w = &*self.weights;
        resize(&mut c.x, t * d);
        for (i, &id) in ids.iter().enumerate() {
            c.x[i * d..(i + 1) * d].copy_from_slice(&w.embed[id as usize * d..(id as usize + 1) * d]);
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
                let at = (li * max_pos + p) * kv;
                c.k[at..at + kv].copy_from_slice(&c.kk[i * kv..(i + 1) * kv]);
                c.v[at..at + kv].copy_from_slice(&c.vv[i * kv..(i + 1) * kv]);
            }
            resize(&mut c.att, t * d);
            let group = h / kvh;
            let layer_k = &c.k[li * max_pos * kv..(li + 1) * max_pos * kv];
            let layer_v = &c.v[li * max_pos * kv..(li + 1) * max_pos * kv];
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
        let head = w.lm_head.as_deref().unwrap_or(&w.embed);
        matmul::<FMA>(&c.xn, head, 1, d, cfg.vocab_size, logits);
    }
}

/// `y[t, out] += scale · (x[t, in] aᵀ) bᵀ`: an adapter beside its projection.
#[inline(always)]
fn low_rank<const FMA: bool>(
    ad: &LowRank,
    x: &[f32],
    t: usize,
    n_in: usize,
    n_out: usize,
    y: &mut [f32],
    tmp: &mut Vec<f32>,
) {
    rows::<FMA>(x, &ad.a, t, n_in, 0, ad.rank, resized(tmp, t * ad.rank), Layout::ByToken { n_out: ad.rank });
    for i in 0..t {
        let xa = &tmp[i * ad.rank..(i + 1) * ad.rank];
        let yi = &mut y[i * n_out..(i + 1) * n_out];
        for (o, yo) in yi.iter_mut().enumerate() {
            *yo += ad.scale * dot::<FMA>(xa, &ad.b[o * ad.rank..(o + 1) * ad.rank]);
        }
    }
}

fn resized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    resize(v, n);
    v
}

fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// HF llama's rotary embedding (rotate-half pairing).
#[inline(always)]
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for i in 0..half {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

#[inline(always)]
fn rms_norm_rows<const FMA: bool>(x: &[f32], w: &[f32], d: usize, eps: f32, out: &mut Vec<f32>) {
    resize(out, x.len());
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot::<FMA>(row, row) / d as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * r * g;
        }
    }
}

/// Multiply-adds below which a product runs on the calling thread (small models: the work is
/// smaller than handing it to other threads).
const PARALLEL_MIN: usize = 1 << 20;
/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Where `rows` writes element `(i, k)` (token `i`, output row `first + k`).
#[derive(Clone, Copy)]
enum Layout {
    /// `out[i * n_out + k]`: the whole `[t, n_out]` result (`first` is 0).
    ByToken { n_out: usize },
    /// `out[k * t + i]`: a block of output rows, each with its `t` values.
    ByRow,
}

/// `y[t, out] = x[t, in] · w[out, in]ᵀ`, each weight row reused across all `t` rows of `x`.
/// Large products are split by output rows across rayon's threads.
#[inline(always)]
fn matmul<const FMA: bool>(x: &[f32], w: &[f32], t: usize, n_in: usize, n_out: usize, y: &mut Vec<f32>) {
    resize(y, t * n_out);
    if t * n_in * n_out < PARALLEL_MIN || rayon::current_num_threads() < 2 {
        rows::<FMA>(x, w, t, n_in, 0, n_out, y, Layout::ByToken { n_out });
        return;
    }
    use rayon::prelude::*;
    // With one token both layouts are the same; otherwise rows are computed `[o][t]` so each
    // task writes one slice, and transposed after.
    let mut by_row = if t == 1 { std::mem::take(y) } else { vec![0f32; t * n_out] };
    by_row.par_chunks_mut(ROWS_PER_TASK * t).enumerate().for_each(|(task, out)| {
        let (first, count) = (task * ROWS_PER_TASK, out.len() / t);
        // A closure does not inherit its caller's target features: the kernel is entered anew.
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: FMA is only true when the CPU has AVX2 and FMA (checked in `forward`).
            unsafe { rows_fma(x, w, t, n_in, first, count, out) };
            return;
        }
        rows::<false>(x, w, t, n_in, first, count, out, Layout::ByRow);
    });
    if t == 1 {
        *y = by_row;
    } else {
        for (o, row) in by_row.chunks_exact(t).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                y[i * n_out + o] = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_fma(x: &[f32], w: &[f32], t: usize, n_in: usize, first: usize, count: usize, out: &mut [f32]) {
    rows::<true>(x, w, t, n_in, first, count, out, Layout::ByRow)
}

/// Output rows `first..first + count` of `x · wᵀ` into `out`, laid out as `layout` says.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<const FMA: bool>(
    x: &[f32],
    w: &[f32],
    t: usize,
    n_in: usize,
    first: usize,
    count: usize,
    out: &mut [f32],
    layout: Layout,
) {
    for k in 0..count {
        let row = &w[(first + k) * n_in..(first + k + 1) * n_in];
        for i in 0..t {
            let v = dot::<FMA>(&x[i * n_in..(i + 1) * n_in], row);
            match layout {
                Layout::ByToken { n_out } => out[i * n_out + k] = v,
                Layout::ByRow => out[k * t + i] = v,
            }
        }
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let n = a.len().min(b.len());
    let whole = n / L * L;
    for (x, y) in a[..whole].chunks_exact(L).zip(b[..whole].chunks_exact(L)) {
        for i in 0..L {
            acc[i] = if FMA { x[i].mul_add(y[i], acc[i]) } else { acc[i] + x[i] * y[i] };
        }
    }
    let mut sum = 0.0;
    for i in whole..n {
        sum += a[i] * b[i];
    }
    // Pairwise reduction keeps the rounding close to a tree sum.
    let mut width = L;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0] + sum
}

#[inline(always)]
fn axpy<const FMA: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if FMA { x.mul_add(a, *y) } else { *y + a * x };
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::engine::train;

    /// A model whose projections are large enough to be split across threads (one token of
    /// its MLP is a million multiply-adds), with grouped-query attention and an untied head.
    #[test]
    fn products_split_across_threads_give_the_candle_paths_logits() {
        let cfg = ModelConfig {
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 4096,
            num_hidden_layers: 2,
            num_attention_heads: 8,
            num_key_value_heads: Some(2),
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            model_type: "llama".into(),
        };
        assert!(cfg.hidden_size * cfg.intermediate_size >= PARALLEL_MIN);
        let (model, _) = train::init_model(&cfg, &Device::Cpu).unwrap();
        let fast = FastModel::from_model(&model).unwrap();
        let ids: Vec<u32> = (0..40u32).map(|i| (i * 97) % 4096).collect();
        let (mut cache, mut fc, mut logits) = (model.new_cache(), fast.new_cache(), Vec::new());
        let want = model.forward_cached(&ids, &mut cache).unwrap().to_vec1::<f32>().unwrap();
        fast.forward(&ids, &mut fc, &mut logits).unwrap();
        let diff = want.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "prefill differs by {diff}");
        for &t in &[5u32, 4095, 17] {
            let want = model.forward_cached(&[t], &mut cache).unwrap().to_vec1::<f32>().unwrap();
            fast.forward(&[t], &mut fc, &mut logits).unwrap();
            let diff = want.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-3, "decoding differs by {diff}");
        }
    }
}
