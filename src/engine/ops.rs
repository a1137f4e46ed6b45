//! Fused CPU kernels with backward passes for the training path. candle composes RMSNorm,
//! SwiGLU and cross-entropy from many element-wise ops, each allocating and each with its own
//! backward; on small models that overhead, not the matmuls, sets the speed. These do each in
//! one pass forwards and one or two passes backwards (rotary positions and the causal softmax
//! are part of [`super::attention`]). Other devices keep the composed ops (see
//! `Model::forward_train`); tests hold both to the same gradients.

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

use super::fast::expf::{dot, sigmoid};
use super::fill::{par_collect, par_collect2};

/// The contiguous `f32` values of a CPU storage (the fused ops take nothing else).
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
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
pub(crate) fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt()
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
        if w.len() != d || x.len() % d != 0 {
            bail!("rms-norm: a weight of {} for rows of {d}", w.len())
        }
        let out = par_collect(x.len(), d, |i| {
            let row = &x[i * d..(i + 1) * d];
            let r = inv_rms(row, self.eps);
            row.iter().zip(w).map(move |(&v, &g)| v * r * g)
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
        // A frozen weight (a base's, beside adapters) gets no gradient computed.
        if !w.track_op() {
            return Ok((Some(dx), None));
        }
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
        if x.len() % d != 0 {
            bail!("rms-normalize: {} values in rows of {d}", x.len())
        }
        let out = par_collect(x.len(), d, |i| {
            let row = &x[i * d..(i + 1) * d];
            let r = inv_rms(row, self.eps);
            row.iter().map(move |&v| v * r)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `Σ a[i]·b[i]·c[i]`, in 8 lanes (see [`dot`]).
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (mut ca, mut cb, mut cc) = (a.chunks_exact(8), b.chunks_exact(8), c.chunks_exact(8));
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        for (((l, &x), &y), &z) in lanes.iter_mut().zip(x).zip(y).zip(z) {
            *l += x * y * z;
        }
    }
    let tail: f32 =
        ca.remainder().iter().zip(cb.remainder()).zip(cc.remainder()).map(|((x, y), z)| x * y * z).sum();
    lanes.iter().sum::<f32>() + tail
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
        if w.len() != d || dy.len() != x.len() || x.len() % d != 0 {
            bail!("rms-norm gradient: states, weight and gradient do not fit")
        }
        let out = par_collect(x.len(), d, |i| {
            let (row, g) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let r = inv_rms(row, self.eps);
            let dot = dot3(row, g, w) / d as f32;
            let r3 = r * r * r;
            row.iter().zip(g).zip(w).map(move |((&x, &g), &w)| r * g * w - x * r3 * dot)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMSNorm over the last dimension with a backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps })
}

// ---------------------------------------------------------------- SwiGLU

/// `silu(g) · u`.
struct SwiGlu;

pub(crate) fn silu(x: f32) -> f32 {
    x * sigmoid(x)
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
        // Both gradients in one pass: with s = sigmoid(g), du = dy · g · s and
        // dg = dy · u · s · (1 + g · (1 − s)).
        let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
        let n = g.elem_count();
        let (dg, du) = with_values3(&g, &u, &dy, |g, u, dy| {
            if g.len() != n || u.len() != n || dy.len() != n {
                bail!("swiglu: gate, up and gradient differ in size")
            }
            const CHUNK: usize = 1 << 12;
            Ok(par_collect2(n, CHUNK, |c| {
                let at = c * CHUNK..((c + 1) * CHUNK).min(n);
                g[at.clone()].iter().zip(&u[at.clone()]).zip(&dy[at]).map(|((&g, &u), &dy)| {
                    let s = sigmoid(g);
                    (dy * u * s * (1.0 + g * (1.0 - s)), dy * g * s)
                })
            }))
        })?;
        let dev = g.device();
        Ok((Some(Tensor::from_vec(dg, g.shape(), dev)?), Some(Tensor::from_vec(du, u.shape(), dev)?)))
    }
}

/// What an op's forward pass leaves for its backward pass (the op value is shared by both, so
/// the hand-over needs interior mutability). A panic cannot happen while it is held, so a
/// poisoned lock still holds a consistent value and is used as it is.
pub(crate) struct Stash<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Stash<T> {
    fn default() -> Self {
        Stash(std::sync::Mutex::new(None))
    }
}

impl<T> Stash<T> {
    pub(crate) fn put(&self, value: T) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    }

    /// The value the forward pass left, once.
    pub(crate) fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// The largest absolute difference between two tensors, for the tests that hold the fused ops
/// to candle's compositions.
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Runs `f` on the contiguous `f32` values of a CPU tensor.
pub(crate) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32s(s, layout)?),
        _ => bail!("fused ops run on the CPU"),
    }
}

/// Runs `f` on the contiguous `f32` values of three CPU tensors.
pub(crate) fn with_values3<R>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    f: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<R>,
) -> Result<R> {
    let ((sa, la), (sb, lb), (sc, lc)) =
        (a.storage_and_layout(), b.storage_and_layout(), c.storage_and_layout());
    match (&*sa, &*sb, &*sc) {
        (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)) => f(f32s(a, la)?, f32s(b, lb)?, f32s(c, lc)?),
        _ => bail!("fused ops run on the CPU"),
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// A base's norm weight beside adapters is a constant: its gradient is not computed, while a
    /// trained one still gets candle's.
    #[test]
    fn a_frozen_norm_weight_gets_no_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.1, 8, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let grads = |w: &Tensor| {
            (rms_norm(x.as_tensor(), w, 1e-5).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap()
        };
        let frozen = w.as_tensor().detach();
        let g = grads(&frozen);
        assert!(g.get(x.as_tensor()).is_some() && g.get(&frozen).is_none());
        let trained = grads(w.as_tensor());
        let composed = (candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_diff(trained.get(w.as_tensor()).unwrap(), composed.get(w.as_tensor()).unwrap());
        assert!(d < 1e-4, "the trained weight's gradient differs by {d}");
    }
}
