//! A decoder-only transformer of the llama family (RoPE, RMSNorm, SwiGLU) with Hugging Face
//! tensor names, so HF-layout llama checkpoints load too. The same weights serve two paths:
//! [`Model::forward_train`] uses only differentiable ops (candle 0.11's fused rms_norm, rope and
//! softmax_last_dim have no backward pass), [`Model::forward_cached`] uses the fused ops and a
//! KV cache for generation.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::EngineError;

/// The model's shape, stored as `config.json` in Hugging Face's llama layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_model_type() -> String {
    "llama".into()
}

/// The largest configurations accepted: far beyond what mynah trains, well below what would
/// exhaust memory or overflow size arithmetic.
const MAX_VOCAB: usize = 262_144;
const MAX_HIDDEN: usize = 8_192;
const MAX_INTERMEDIATE: usize = 65_536;
const MAX_LAYERS: usize = 128;
const MAX_HEADS: usize = 256;
const MAX_POSITIONS: usize = 32_768;
/// Weights or key/value cache of one model, in bytes.
const MAX_MODEL_BYTES: u64 = 2 << 30;

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Checks the configuration before anything is allocated from it: configs come from disk
    /// and from bundles uploaded over the network.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |why: String| Err(EngineError::BadConfig(why));
        if self.model_type != "llama" {
            return bad(format!("model_type {:?} is not llama", self.model_type));
        }
        let bounds = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("num_key_value_heads", self.kv_heads(), MAX_HEADS),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ];
        for (name, value, max) in bounds {
            if !(1..=max).contains(&value) {
                return bad(format!("{name} must be 1 to {max}, not {value}"));
            }
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.rms_norm_eps) || !positive(self.rope_theta) {
            return bad("rms_norm_eps and rope_theta must be positive numbers".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "hidden_size {} must split into an even head size over {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        // What loading it would take: the weights, and the key/value cache serving allocates.
        let weights = self.params().saturating_mul(4);
        let cache =
            (self.num_hidden_layers * self.max_position_embeddings * self.kv_heads() * self.head_dim())
                .saturating_mul(2 * 4) as u64;
        if weights > MAX_MODEL_BYTES || cache > MAX_MODEL_BYTES {
            return bad(format!(
                "the model would need {} MB of weights and {} MB of cache (at most {} MB each)",
                weights >> 20,
                cache >> 20,
                MAX_MODEL_BYTES >> 20
            ));
        }
        Ok(())
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn params(&self) -> u64 {
        let (d, f, v, l) =
            (self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers);
        let kv = self.kv_heads() * self.head_dim();
        let per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        (v * d + l * per_layer + d + head) as u64
    }
}

/// Borrowed weight tensors, in the order [`Model::weights`] documents.
pub struct Weights<'a> {
    pub embed: &'a Tensor,
    pub blocks: Vec<[&'a Tensor; 9]>,
    pub norm: &'a Tensor,
    pub lm_head: &'a Tensor,
}

/// A weight `[out, in]` and, while fine-tuning, its low-rank adapter.
struct Proj {
    w: Tensor,
    lora: Option<super::lora::Adapter>,
}

impl Proj {
    fn new(w: Tensor) -> Proj {
        Proj { w, lora: None }
    }

    fn detached(&self) -> Proj {
        Proj { w: self.w.detach(), lora: self.lora.as_ref().map(super::lora::Adapter::detached) }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.lora {
            None => linear(x, &self.w),
            // Beside adapters the weight is frozen: no gradient is computed for it.
            Some(l) if x.device().is_cpu() && !self.w.is_variable() => l.project(x, &self.w),
            Some(l) => linear(x, &self.w)? + l.forward(x)?,
        }
    }
}

struct Block {
    attn_norm: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    mlp_norm: Tensor,
    gate: Proj,
    up: Proj,
    down: Proj,
}

impl Block {
    /// The projections with their Hugging Face names, in [`super::lora::TARGETS`]' order.
    fn projections_mut(&mut self) -> [(&'static str, &mut Proj); 7] {
        [
            ("self_attn.q_proj", &mut self.q),
            ("self_attn.k_proj", &mut self.k),
            ("self_attn.v_proj", &mut self.v),
            ("self_attn.o_proj", &mut self.o),
            ("mlp.gate_proj", &mut self.gate),
            ("mlp.up_proj", &mut self.up),
            ("mlp.down_proj", &mut self.down),
        ]
    }
}

/// One layer's cached keys and values, `[1, kv_heads, positions, head_dim]`.
#[derive(Default, Clone)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

/// The KV cache of one generation.
#[derive(Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
    pub pos: usize,
}

pub struct Model {
    pub cfg: ModelConfig,
    /// Train with the fused CPU kernels of [`super::ops`] (on by default on the CPU); the
    /// composed candle ops otherwise.
    pub fused_ops: bool,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// `x @ w^T` for `x` of any rank and a `[out, in]` weight.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    match x.dims() {
        [b, t, d] => x.reshape((b * t, *d))?.matmul(&w.t()?)?.reshape((*b, *t, ())),
        _ => x.matmul(&w.t()?),
    }
}

impl Model {
    /// Builds the model from `vb`: fresh weights from a `VarMap`, or a checkpoint's tensors.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Model, EngineError> {
        cfg.validate()?;
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let kv = cfg.kv_heads() * cfg.head_dim();
        let std = 0.02;
        // Residual projections start smaller so the residual stream's variance stays put.
        let std_out = std / (2.0 * cfg.num_hidden_layers as f64).sqrt();
        let normal = |s: f64| Init::Randn { mean: 0.0, stdev: s };
        let ones = Init::Const(1.0);
        let embed = vb.pp("model.embed_tokens").get_with_hints((v, d), "weight", normal(std))?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("model.layers.{i}"));
            let a = l.pp("self_attn");
            let m = l.pp("mlp");
            blocks.push(Block {
                attn_norm: l.pp("input_layernorm").get_with_hints(d, "weight", ones)?,
                q: Proj::new(a.pp("q_proj").get_with_hints((d, d), "weight", normal(std))?),
                k: Proj::new(a.pp("k_proj").get_with_hints((kv, d), "weight", normal(std))?),
                v: Proj::new(a.pp("v_proj").get_with_hints((kv, d), "weight", normal(std))?),
                o: Proj::new(a.pp("o_proj").get_with_hints((d, d), "weight", normal(std_out))?),
                mlp_norm: l.pp("post_attention_layernorm").get_with_hints(d, "weight", ones)?,
                gate: Proj::new(m.pp("gate_proj").get_with_hints((f, d), "weight", normal(std))?),
                up: Proj::new(m.pp("up_proj").get_with_hints((f, d), "weight", normal(std))?),
                down: Proj::new(m.pp("down_proj").get_with_hints((d, f), "weight", normal(std_out))?),
            });
        }
        let norm = vb.pp("model.norm").get_with_hints(d, "weight", ones)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            vb.pp("lm_head").get_with_hints((v, d), "weight", normal(std))?
        };
        let device = vb.device().clone();
        let (cos, sin) = rope_tables(cfg, &device)?;
        let fused_ops = device.is_cpu();
        Ok(Model { cfg: cfg.clone(), fused_ops, embed, blocks, norm, lm_head, cos, sin, device })
    }

    /// The weight tensors, for [`super::fast::FastModel`]. Each block lists attention norm,
    /// q, k, v, o, MLP norm, gate, up, down.
    pub fn weights(&self) -> Weights<'_> {
        Weights {
            embed: &self.embed,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    [&b.attn_norm, &b.q.w, &b.k.w, &b.v.w, &b.o.w, &b.mlp_norm, &b.gate.w, &b.up.w, &b.down.w]
                })
                .collect(),
            norm: &self.norm,
            lm_head: &self.lm_head,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether every weight is an `f32` variable on the CPU with no adapter beside it: the model
    /// [`super::direct`] trains without candle's graph.
    pub(crate) fn trains_whole_on_cpu(&self) -> bool {
        let w = self.weights();
        let all = [w.embed, w.norm, w.lm_head].into_iter().chain(w.blocks.iter().flatten().copied());
        self.fused_ops
            && self.device.is_cpu()
            && self
                .blocks
                .iter()
                .all(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down].iter().all(|p| p.lora.is_none()))
            && all.into_iter().all(|t| t.is_variable() && t.dtype() == DType::F32)
    }

    /// The rotary tables of positions `0..t`, for the fused attention.
    pub(crate) fn rotary(&self, t: usize) -> candle_core::Result<super::attention::Rotary> {
        super::attention::Rotary::new(&self.cos.narrow(0, 0, t)?, &self.sin.narrow(0, 0, t)?)
    }

    /// Logits `[b, t, vocab]` for token IDs `[b, t]`, through differentiable ops only.
    pub fn forward_train(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        Ok(linear(&self.forward_hidden(ids)?, &self.lm_head)?)
    }

    /// The mean cross-entropy of the next tokens `targets` `[b · t]` after `ids` `[b, t]`, for
    /// training: on the CPU the head and the loss are one op that never holds the logits.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor, EngineError> {
        let x = self.forward_hidden(ids)?;
        let x = x.reshape((targets.dims1()?, self.cfg.hidden_size))?;
        if self.fused_ops && super::loss::fits(&x) {
            return Ok(super::loss::head_cross_entropy(&x, &self.lm_head, targets)?);
        }
        Ok(super::ops::cross_entropy(&linear(&x, &self.lm_head)?, targets)?)
    }

    /// The final normed hidden states `[b, t, hidden]` for token IDs `[b, t]`.
    fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor, EngineError> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let (h, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let eps = cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let fused = self.fused_ops;
        let rotary = if fused { Some(super::attention::Rotary::new(&cos, &sin)?) } else { None };
        let norm = |x: &Tensor, w: &Tensor| -> candle_core::Result<Tensor> {
            if fused {
                super::ops::rms_norm(x, w, eps)
            } else {
                candle_nn::ops::rms_norm_slow(x, w, eps)
            }
        };
        let heads = super::attention::Heads { query: h, kv: kvh, dim: hd };
        let mut x = self.embed.embedding(&ids.flatten_all()?)?.reshape((b, t, cfg.hidden_size))?;
        for blk in &self.blocks {
            let n = norm(&x, &blk.attn_norm)?;
            let (q, k, v) = (blk.q.forward(&n)?, blk.k.forward(&n)?, blk.v.forward(&n)?);
            let y = match &rotary {
                Some(rotary) => super::attention::causal_attention(&q, &k, &v, rotary, heads, scale)?,
                None => {
                    let rope = |x: Tensor| candle_nn::rotary_emb::rope_slow(&x.contiguous()?, &cos, &sin);
                    let q = rope(q.reshape((b, t, h, hd))?.transpose(1, 2)?)?;
                    let k = rope(k.reshape((b, t, kvh, hd))?.transpose(1, 2)?)?;
                    let v = v.reshape((b, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
                    let (k, v) = (repeat_kv(k, h / kvh)?, repeat_kv(v, h / kvh)?);
                    let att = super::ops::reference::causal_softmax(&q.matmul(&k.t()?)?, scale)?;
                    att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, cfg.hidden_size))?
                }
            };
            x = (x + blk.o.forward(&y)?)?;
            x = (&x + self.mlp(blk, &norm(&x, &blk.mlp_norm)?)?)?;
        }
        Ok(norm(&x, &self.norm)?)
    }

    /// The SwiGLU MLP of a block on normed states.
    fn mlp(&self, blk: &Block, n: &Tensor) -> candle_core::Result<Tensor> {
        let (g, u) = (blk.gate.forward(n)?, blk.up.forward(n)?);
        let a = if self.fused_ops { super::ops::swiglu(&g, &u)? } else { (candle_nn::ops::silu(&g)? * u)? };
        blk.down.forward(&a)
    }

    /// The same model with no gradient tracking: scoring text through it keeps no graph (with
    /// variables, a forward pass over a large model holds every activation for a backward pass
    /// that never comes: gigabytes for a pretrained base).
    pub fn detached(&self) -> Model {
        Model {
            cfg: self.cfg.clone(),
            fused_ops: self.fused_ops,
            embed: self.embed.detach(),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    attn_norm: b.attn_norm.detach(),
                    q: b.q.detached(),
                    k: b.k.detached(),
                    v: b.v.detached(),
                    o: b.o.detached(),
                    mlp_norm: b.mlp_norm.detach(),
                    gate: b.gate.detached(),
                    up: b.up.detached(),
                    down: b.down.detached(),
                })
                .collect(),
            norm: self.norm.detach(),
            lm_head: self.lm_head.detach(),
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            device: self.device.clone(),
        }
    }

    /// Puts a fresh low-rank adapter on every projection, its variables created in `vb` (the
    /// base weights stay as they are: only the adapters train).
    pub fn attach_lora(&mut self, spec: &super::lora::LoraSpec, vb: &VarBuilder) -> Result<(), EngineError> {
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            for (name, proj) in blk.projections_mut() {
                let (out, inp) = proj.w.dims2()?;
                let vb = vb.pp(format!("model.layers.{i}.{name}"));
                proj.lora = Some(super::lora::Adapter::new(spec, inp, out, &vb)?);
            }
        }
        Ok(())
    }

    /// Folds every adapter into its weight (`w + scale · b·a`), for serving.
    pub fn merge_lora(&mut self) -> Result<(), EngineError> {
        for blk in &mut self.blocks {
            for (_, proj) in blk.projections_mut() {
                if let Some(l) = proj.lora.take() {
                    proj.w = (&proj.w + l.delta()?)?;
                }
            }
        }
        Ok(())
    }

    pub fn new_cache(&self) -> Cache {
        Cache { layers: vec![LayerCache::default(); self.blocks.len()], pos: 0 }
    }

    /// Logits `[vocab]` for the last of `ids`, which continue the sequence held in `cache`.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut Cache) -> Result<Tensor, EngineError> {
        let t = ids.len();
        let cfg = &self.cfg;
        let (h, kvh, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
        let pos = cache.pos;
        if pos + t > cfg.max_position_embeddings {
            return Err(EngineError::ContextFull(cfg.max_position_embeddings));
        }
        let eps = cfg.rms_norm_eps as f32;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let ids = Tensor::new(ids, &self.device)?;
        let mut x = self.embed.embedding(&ids)?.unsqueeze(0)?;
        let mask = if t > 1 { Some(causal_mask(t, pos, &self.device)?) } else { None };
        for (blk, lc) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let n = candle_nn::ops::rms_norm(&x, &blk.attn_norm, eps)?;
            let q = blk.q.forward(&n)?.reshape((1, t, h, hd))?.transpose(1, 2)?.contiguous()?;
            let k = blk.k.forward(&n)?.reshape((1, t, kvh, hd))?.transpose(1, 2)?.contiguous()?;
            let v = blk.v.forward(&n)?.reshape((1, t, kvh, hd))?.transpose(1, 2)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let (k, v) = match (&lc.k, &lc.v) {
                (Some(pk), Some(pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                _ => (k, v.contiguous()?),
            };
            lc.k = Some(k.clone());
            lc.v = Some(v.clone());
            let (k, v) = (repeat_kv(k, h / kvh)?, repeat_kv(v, h / kvh)?);
            let mut att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            if let Some(mask) = &mask {
                att = att.broadcast_add(mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((1, t, cfg.hidden_size))?;
            x = (x + blk.o.forward(&y)?)?;
            let n = candle_nn::ops::rms_norm(&x, &blk.mlp_norm, eps)?;
            let g = candle_nn::ops::silu(&blk.gate.forward(&n)?)?;
            x = (x + blk.down.forward(&(g * blk.up.forward(&n)?)?)?)?;
        }
        cache.pos += t;
        let last = x.narrow(1, t - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        Ok(linear(&last, &self.lm_head)?.flatten_all()?)
    }
}

/// The tensor names of a checkpoint for `cfg`, in Hugging Face's llama naming.
pub fn tensor_names(cfg: &ModelConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    for i in 0..cfg.num_hidden_layers {
        for part in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            names.push(format!("model.layers.{i}.{part}.weight"));
        }
    }
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    names
}

fn repeat_kv(x: Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, n, t, d))?.reshape((b, h * n, t, d))
}

/// `[t, pos + t]` additive mask: query `i` (at position `pos + i`) sees keys up to `pos + i`.
fn causal_mask(t: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j <= pos + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_vec(mask, (t, total), device)
}

fn rope_tables(cfg: &ModelConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv: Vec<f32> =
        (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32)).collect();
    let n = cfg.max_position_embeddings;
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, n as u32, device)?.to_dtype(DType::F32)?.reshape((n, 1))?;
    let freqs = pos.broadcast_mul(&inv)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod config_tests {
    use super::*;

    fn config() -> ModelConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 128
        }))
        .unwrap()
    }

    #[test]
    fn configs_are_bounded_before_anything_is_allocated() {
        assert!(config().validate().is_ok());
        let cases: [(&str, serde_json::Value); 7] = [
            ("num_key_value_heads", serde_json::json!(0)),
            ("max_position_embeddings", serde_json::json!(1usize << 40)),
            ("vocab_size", serde_json::json!(0)),
            ("hidden_size", serde_json::json!(1usize << 20)),
            ("num_hidden_layers", serde_json::json!(100_000)),
            ("rope_theta", serde_json::json!(-1.0)),
            ("intermediate_size", serde_json::json!(0)),
        ];
        for (field, value) in cases {
            let mut v = serde_json::to_value(config()).unwrap();
            v[field] = value;
            let c: ModelConfig = serde_json::from_value(v).unwrap();
            assert!(c.validate().is_err(), "{field} accepted");
        }
        let mut huge = config();
        (huge.hidden_size, huge.intermediate_size, huge.num_hidden_layers, huge.num_attention_heads) =
            (8192, 65_536, 128, 64);
        assert!(huge.validate().unwrap_err().to_string().contains("MB"), "too large to load");
    }
}
