//! Fused CPU kernels with backward passes for the training path. candle composes RMSNorm,
//! RoPE, masked softmax, SwiGLU and cross-entropy from many element-wise ops, each allocating
//! and each with its own backward; on small models that overhead, not the matmuls, sets the
//! speed. These do each in one pass forwards and one or two passes backwards. Other devices
//! keep the composed ops (see `Model::forward_train`); tests hold both to the same gradients.

use std::sync::Arc;

use rayon::prelude::*;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};

fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { bail!("fused ops take f32 tensors") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused ops take contiguous tensors"),
    }
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else { bail!("targets must be u32") };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused ops take contiguous tensors"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("fused ops need a non-empty last dimension"),
    }
}

// ---------------------------------------------------------------- RMSNorm

/// `1 / sqrt(mean(row²) + eps)`.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32 + eps).sqrt()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "mynah-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, d) = (f32s(s1, l1)?, f32s(s2, l2)?, last_dim(l1)?);
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(d).zip(out.par_chunks_exact_mut(d)).for_each(|(row, o)| {
            let r = inv_rms(row, self.eps);
            for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
                *o = v * r * g;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &dy, &RmsNormGradX { eps: self.eps })?;
        let normed = x.apply_op1_no_bwd(&RmsNormalize { eps: self.eps })?;
        let d = w.dim(0)?;
        let dw = (dy * normed)?.reshape(((), d))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `x / rms(x)` per row.
struct RmsNormalize {
    eps: f32,
}

impl CustomOp1 for RmsNormalize {
    fn name(&self) -> &'static str {
        "mynah-rms-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, d) = (f32s(s, l)?, last_dim(l)?);
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(d).zip(out.par_chunks_exact_mut(d)).for_each(|(row, o)| {
            let r = inv_rms(row, self.eps);
            for (o, &v) in o.iter_mut().zip(row) {
                *o = v * r;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// dx of RMSNorm: `r·g − x·r³·mean(g·x)` with `g = dy·w`, per row.
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "mynah-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy, d) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?, last_dim(l1)?);
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(d).zip(dy.par_chunks_exact(d)).zip(out.par_chunks_exact_mut(d)).for_each(
            |((row, g), o)| {
                let r = inv_rms(row, self.eps);
                let dot: f32 = row.iter().zip(g).zip(w).map(|((x, g), w)| x * g * w).sum::<f32>() / d as f32;
                let r3 = r * r * r;
                for (((o, &x), &g), &w) in o.iter_mut().zip(row).zip(g).zip(w) {
                    *o = r * g * w - x * r3 * dot;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMSNorm over the last dimension with a backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps })
}

// ---------------------------------------------------------------- RoPE

/// Rotate-half rotary embedding of `[b, h, t, d]` with `cos`/`sin` of `[t, d/2]`.
#[derive(Clone)]
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "mynah-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l)?;
        let Ok((_, _, t, d)) = l.shape().dims4() else { bail!("rope takes [b, h, t, d]") };
        let half = d / 2;
        if self.cos.len() < t * half {
            bail!("rope tables are shorter than the sequence")
        }
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(t * d).zip(out.par_chunks_exact_mut(t * d)).for_each(|(seq, o)| {
            for p in 0..t {
                let (c, sn) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
                let (xi, oi) = (&seq[p * d..(p + 1) * d], &mut o[p * d..(p + 1) * d]);
                for i in 0..half {
                    let (x1, x2) = (xi[i], xi[i + half]);
                    oi[i] = x1 * c[i] - x2 * sn[i];
                    oi[i + half] = x2 * c[i] + x1 * sn[i];
                }
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // The rotation's transpose is the rotation by the opposite angle.
        let back = Rope { cos: self.cos.clone(), sin: Arc::new(self.sin.iter().map(|s| -s).collect()) };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Rotary tables for [`rope`], built once per forward pass.
pub struct RopeTables(Rope);

impl RopeTables {
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<RopeTables> {
        Ok(RopeTables(Rope {
            cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
            sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        }))
    }
}

pub fn rope(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    x.contiguous()?.apply_op1(tables.0.clone())
}

// ---------------------------------------------------------------- causal softmax

/// `softmax(scale · scores)` over the last dimension of `[b, h, t, t]`, key `j > i` masked.
struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "mynah-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l)?;
        let Ok((_, _, t, t2)) = l.shape().dims4() else { bail!("causal softmax takes [b, h, t, t]") };
        if t != t2 {
            bail!("causal softmax needs square scores")
        }
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(t).zip(out.par_chunks_exact_mut(t)).enumerate().for_each(|(row_i, (row, o))| {
            let i = row_i % t;
            let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * self.scale));
            let mut sum = 0.0;
            for (o, &v) in o[..=i].iter_mut().zip(&row[..=i]) {
                *o = (v * self.scale - max).exp();
                sum += *o;
            }
            for o in o[..=i].iter_mut() {
                *o /= sum;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxGrad { scale: self.scale })?))
    }
}

/// `scale · y · (dy − Σ dy·y)` per row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "mynah-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, dy, d) = (f32s(s1, l1)?, f32s(s2, l2)?, last_dim(l1)?);
        let mut out = vec![0f32; y.len()];
        y.par_chunks_exact(d).zip(dy.par_chunks_exact(d)).zip(out.par_chunks_exact_mut(d)).for_each(
            |((y, g), o)| {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                    *o = self.scale * y * (g - dot);
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn causal_softmax(scores: &Tensor, scale: f32) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax { scale })
}

// ---------------------------------------------------------------- SwiGLU

/// `silu(g) · u`.
struct SwiGlu;

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "mynah-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let out = g.par_iter().zip(u.par_iter()).map(|(&g, &u)| silu(g) * u).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dg = g.apply_op3_no_bwd(u, &dy, &SwiGluGradG)?;
        let du = g.apply_op2_no_bwd(&dy, &SwiGluGradU)?;
        Ok((Some(dg), Some(du)))
    }
}

struct SwiGluGradG;

impl CustomOp3 for SwiGluGradG {
    fn name(&self) -> &'static str {
        "mynah-swiglu-grad-g"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u, dy) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?);
        let out = g
            .par_iter()
            .zip(u.par_iter())
            .zip(dy.par_iter())
            .map(|((&g, &u), &dy)| {
                let s = 1.0 / (1.0 + (-g).exp());
                dy * u * s * (1.0 + g * (1.0 - s))
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct SwiGluGradU;

impl CustomOp2 for SwiGluGradU {
    fn name(&self) -> &'static str {
        "mynah-swiglu-grad-u"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, dy) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let out = g.par_iter().zip(dy.par_iter()).map(|(&g, &dy)| dy * silu(g)).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

// ---------------------------------------------------------------- cross-entropy

/// Mean cross-entropy of `[n, v]` logits against `[n]` u32 targets, as a scalar.
struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "mynah-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, v) = (f32s(s1, l1)?, u32s(s2, l2)?, last_dim(l1)?);
        let n = x.len() / v;
        if y.len() != n {
            bail!("cross-entropy: {n} rows but {} targets", y.len())
        }
        if let Some(t) = y.iter().find(|&&t| t as usize >= v) {
            bail!("target {t} outside the vocabulary")
        }
        let total: f64 = x
            .par_chunks_exact(v)
            .zip(y.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                let lse = max + row.iter().map(|&a| (a - max).exp()).sum::<f32>().ln();
                (lse - row[t as usize]) as f64
            })
            .sum();
        Ok((CpuStorage::F32(vec![(total / n as f64) as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op2_no_bwd(y, &CrossEntropyGrad)?.broadcast_mul(grad)?;
        Ok((Some(dx), None))
    }
}

/// `(softmax(x) − onehot(y)) / n`.
struct CrossEntropyGrad;

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "mynah-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, v) = (f32s(s1, l1)?, u32s(s2, l2)?, last_dim(l1)?);
        let n = (x.len() / v) as f32;
        let mut out = vec![0f32; x.len()];
        x.par_chunks_exact(v).zip(out.par_chunks_exact_mut(v)).zip(y.par_iter()).for_each(
            |((row, o), &t)| {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                let mut sum = 0.0;
                for (o, &a) in o.iter_mut().zip(row) {
                    *o = (a - max).exp();
                    sum += *o;
                }
                for o in o.iter_mut() {
                    *o /= sum * n;
                }
                if let Some(o) = o.get_mut(t as usize) {
                    *o -= 1.0 / n;
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Mean cross-entropy with a fused backward (CPU); candle's composition elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy)
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

/// Composed reference versions, used on non-CPU devices and by the tests.
pub mod reference {
    use super::*;

    pub fn causal_softmax(scores: &Tensor, scale: f32) -> Result<Tensor> {
        let t = scores.dim(D::Minus1)?;
        let mask: Vec<f32> =
            (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
        let mask = Tensor::from_vec(mask, (t, t), scores.device())?;
        candle_nn::ops::softmax(&(scores * scale as f64)?.broadcast_add(&mask)?, D::Minus1)
    }
}
