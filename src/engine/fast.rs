//! The lean inference path for serving on CPU: the same weights as [`super::model::Model`],
//! copied into plain row-major buffers, with a preallocated KV cache and no per-step
//! allocation, masks or kernel launches. Per-token work on small models is dominated by
//! framework overhead otherwise (about 80 ms for a 40-token reply in candle vs a target of
//! 25 ms). The kernels are compiled twice, with AVX2+FMA selected at run time when present.
//! Tests hold it to the candle path's logits.

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

/// A model ready for fast single-stream generation.
pub struct FastModel {
    pub cfg: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Vec<f32>,
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
}

impl FastModel {
    /// Copies the weights of `model` (on any device) into host buffers.
    pub fn from_model(model: &Model) -> Result<FastModel, EngineError> {
        let w = model.weights();
        let host = |t: &candle_core::Tensor| -> Result<Vec<f32>, EngineError> {
            Ok(t.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let cfg = model.cfg.clone();
        let hd = cfg.head_dim();
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
        Ok(FastModel {
            embed: host(w.embed)?,
            layers,
            norm: host(w.norm)?,
            lm_head: host(w.lm_head)?,
            cos,
            sin,
            cfg,
        })
    }

    pub fn new_cache(&self) -> FastCache {
        let kv = self.cfg.kv_heads() * self.cfg.head_dim();
        let size = self.layers.len() * self.cfg.max_position_embeddings * kv;
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
        resize(&mut c.x, t * d);
        for (i, &id) in ids.iter().enumerate() {
            c.x[i * d..(i + 1) * d].copy_from_slice(&self.embed[id as usize * d..(id as usize + 1) * d]);
        }
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm_rows::<FMA>(&c.x, &l.attn_norm, d, eps, &mut c.xn);
            matmul::<FMA>(&c.xn, &l.wq, t, d, d, &mut c.q);
            matmul::<FMA>(&c.xn, &l.wk, t, d, kv, &mut c.kk);
            matmul::<FMA>(&c.xn, &l.wv, t, d, kv, &mut c.vv);
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
            add(&mut c.x, &c.tmp);
            rms_norm_rows::<FMA>(&c.x, &l.mlp_norm, d, eps, &mut c.xn);
            matmul::<FMA>(&c.xn, &l.wgate, t, d, f, &mut c.g);
            matmul::<FMA>(&c.xn, &l.wup, t, d, f, &mut c.u);
            for (g, u) in c.g.iter_mut().zip(&c.u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            matmul::<FMA>(&c.g, &l.wdown, t, f, d, &mut c.tmp);
            add(&mut c.x, &c.tmp);
        }
        c.pos += t;
        // Only the last position's logits are needed.
        let last = &c.x[(t - 1) * d..t * d];
        rms_norm_rows::<FMA>(last, &self.norm, d, eps, &mut c.xn);
        matmul::<FMA>(&c.xn, &self.lm_head, 1, d, cfg.vocab_size, logits);
    }
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

/// `y[t, out] = x[t, in] · w[out, in]ᵀ`, each weight row reused across all `t` rows of `x`.
#[inline(always)]
fn matmul<const FMA: bool>(x: &[f32], w: &[f32], t: usize, n_in: usize, n_out: usize, y: &mut Vec<f32>) {
    resize(y, t * n_out);
    for (o, row) in w.chunks_exact(n_in).enumerate().take(n_out) {
        for i in 0..t {
            y[i * n_out + o] = dot::<FMA>(&x[i * n_in..(i + 1) * n_in], row);
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
