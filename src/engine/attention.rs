//! Causal self-attention of the training path as one op with a hand-written backward pass
//! (CPU): rotary positions, grouped key/value heads, the causal softmax and the weighted sum of
//! values, from the projections' `[b, t, heads · head_dim]` outputs to the `[b, t, d]` input of
//! the output projection. Through candle this was some fifteen nodes a layer (transposes, copies
//! of the key/value heads for each query head, batched products whose backward passes copy
//! again), each allocating and each summed into a zeroed gradient buffer. `tests` holds it to
//! candle's autograd on the composed version.

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{product, product_strided, View};
use super::ops::{f32s, with_values, Stash};

/// The heads of a model: query heads, key/value heads, values per head.
#[derive(Clone, Copy)]
pub struct Heads {
    pub query: usize,
    pub kv: usize,
    pub dim: usize,
}

/// The rotary tables of positions `0..t`, `[t, dim / 2]` each, read once per forward pass.
pub struct Rotary {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Rotary {
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Rotary> {
        Ok(Rotary {
            cos: Arc::new(cos.flatten_all()?.to_vec1::<f32>()?),
            sin: Arc::new(sin.flatten_all()?.to_vec1::<f32>()?),
        })
    }
}

/// `softmax(scale · rope(q) rope(k)ᵀ, causal) v` per head, for `q` `[b, t, query · dim]` and
/// `k`, `v` `[b, t, kv · dim]`, at positions `0..t`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rotary: &Rotary,
    heads: Heads,
    scale: f32,
) -> Result<Tensor> {
    let op = Attention { kernel: Kernel::new(rotary, heads, scale), saved: Stash::default() };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// What the backward pass reuses: rotated queries `[b, query, t, dim]`, rotated keys
/// `[b, kv, t, dim]` and the attention weights `[b, query, t, t]`.
pub struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    p: Vec<f32>,
}

/// One task's gradients: queries `[group, t, dim]`, keys and values `[t, dim]`.
type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The attention's passes on plain slices, for this op and for the hand-written training step
/// of [`super::direct`].
pub struct Kernel {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    heads: Heads,
    scale: f32,
}

/// The op candle's graph sees: the kernel, and what its forward pass left for the backward one.
struct Attention {
    kernel: Kernel,
    saved: Stash<Saved>,
}

/// Rows of a sequence in blocks: a causal block of rows sees keys up to its own end only.
const BLOCK: usize = 64;

fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// One head's `[t, dim]` columns of a `[t, width]` row-major block, rotated by position
/// (`sign` -1 rotates back: the rotation's transpose).
fn rotate(dst: &mut [f32], src: &[f32], width: usize, dim: usize, cos: &[f32], sin: &[f32], sign: f32) {
    let half = dim / 2;
    for (p, out) in dst.chunks_exact_mut(2 * half).enumerate() {
        let row = &src[p * width..p * width + 2 * half];
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for i in 0..half {
            let (x1, x2, sn) = (row[i], row[i + half], sign * s[i]);
            out[i] = x1 * c[i] - x2 * sn;
            out[i + half] = x2 * c[i] + x1 * sn;
        }
    }
}

impl Kernel {
    pub fn new(rotary: &Rotary, heads: Heads, scale: f32) -> Kernel {
        Kernel { cos: rotary.cos.clone(), sin: rotary.sin.clone(), heads, scale }
    }

    /// Checks that `b` sequences of `t` positions fit the heads, the rotary tables and the
    /// given numbers of query, key and value values.
    fn check(&self, b: usize, t: usize, q: usize, k: usize, v: usize) -> Result<()> {
        let Heads { query, kv, dim } = self.heads;
        if kv == 0 || query % kv != 0 || dim % 2 != 0 {
            bail!("attention: {query} query heads, {kv} key/value heads of {dim}")
        }
        if q != b * t * query * dim || k != b * t * kv * dim || v != k {
            bail!("attention: {q}, {k} and {v} values do not fit {b} × {t} positions")
        }
        if self.cos.len() < t * dim / 2 || self.sin.len() < t * dim / 2 {
            bail!("attention: rotary tables shorter than {t} positions")
        }
        Ok(())
    }

    /// The output `[b, t, query · dim]` for `b` sequences of `t` positions, and what the
    /// backward pass needs.
    pub fn forward(&self, q: &[f32], k: &[f32], v: &[f32], b: usize, t: usize) -> Result<(Vec<f32>, Saved)> {
        self.check(b, t, q.len(), k.len(), v.len())?;
        let Heads { query, kv, dim } = self.heads;
        let (qw, kw, group) = (query * dim, kv * dim, query / kv);
        let (cos, sin) = (&self.cos[..t * dim / 2], &self.sin[..t * dim / 2]);
        let mut saved =
            Saved { q: vec![0.0; b * qw * t], k: vec![0.0; b * kw * t], p: vec![0.0; b * query * t * t] };
        // One task per batch row and key/value head: its keys, its group's queries and weights.
        let outputs: Vec<Vec<f32>> = saved
            .q
            .par_chunks_exact_mut(group * t * dim)
            .zip(saved.k.par_chunks_exact_mut(t * dim))
            .zip(saved.p.par_chunks_exact_mut(group * t * t))
            .enumerate()
            .map(|(task, ((qr, kr), p))| -> Result<Vec<f32>> {
                let (bi, g) = (task / kv, task % kv);
                rotate(kr, &k[bi * t * kw + g * dim..], kw, dim, cos, sin, 1.0);
                let mut y = vec![0f32; group * t * dim];
                let values = |rows: usize| View::strided(&v[bi * t * kw + g * dim..], rows, dim, kw);
                for j in 0..group {
                    let (qh, ph) =
                        (&mut qr[j * t * dim..(j + 1) * t * dim], &mut p[j * t * t..(j + 1) * t * t]);
                    rotate(qh, &q[bi * t * qw + (g * group + j) * dim..], qw, dim, cos, sin, 1.0);
                    // Rows of a block see keys up to the block's end only: the masked corner
                    // beyond is never computed (it stays 0).
                    for (r0, r1) in blocks(t) {
                        let (qb, keys) = (View::new(&qh[r0 * dim..], r1 - r0, dim)?, View::new(kr, r1, dim)?);
                        product_strided(&mut ph[r0 * t..], t, qb, keys.t(), self.scale, false)?;
                        for i in r0..r1 {
                            let seen = &mut ph[i * t..i * t + i + 1];
                            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let sum = super::fast::expf::exp_shifted(seen, max);
                            seen.iter_mut().for_each(|x| *x /= sum);
                            ph[i * t + i + 1..i * t + r1].fill(0.0);
                        }
                        let weights = View::strided(&ph[r0 * t..], r1 - r0, r1, t)?;
                        product(
                            &mut y[(j * t + r0) * dim..(j * t + r1) * dim],
                            weights,
                            values(r1)?,
                            1.0,
                            false,
                        )?;
                    }
                }
                Ok(y)
            })
            .collect::<Result<_>>()?;
        let mut out = vec![0f32; b * t * qw];
        scatter(&mut out, &outputs, t, kv, group, dim);
        Ok((out, saved))
    }

    /// The gradients of the queries, keys and values for the output's gradient `dy`, given the
    /// values `v` and what the forward pass saved.
    pub fn backward(&self, saved: &Saved, v: &[f32], dy: &[f32], b: usize, t: usize) -> Result<Grads> {
        let Heads { query, kv, dim } = self.heads;
        let (qw, kw, group) = (query * dim, kv * dim, query / kv);
        self.check(b, t, dy.len(), v.len(), v.len())?;
        if saved.q.len() != b * t * qw || saved.p.len() != b * query * t * t {
            bail!("attention: the saved forward pass is of another size")
        }
        let parts = self.backward_tasks(saved, v, dy, t)?;
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; b * t * qw], vec![0f32; b * t * kw], vec![0f32; b * t * kw]);
        let (dqs, rest): (Vec<_>, Vec<_>) = parts.into_iter().map(|(a, b, c)| (a, (b, c))).unzip();
        let (dks, dvs): (Vec<_>, Vec<_>) = rest.into_iter().unzip();
        scatter(&mut dq, &dqs, t, kv, group, dim);
        scatter(&mut dk, &dks, t, kv, 1, dim);
        scatter(&mut dv, &dvs, t, kv, 1, dim);
        Ok((dq, dk, dv))
    }

    /// The backward pass per task (batch row, key/value head): the group's query gradients
    /// `[group, t, dim]`, then its keys' and values' `[t, dim]` (sizes checked by the caller).
    fn backward_tasks(&self, saved: &Saved, v: &[f32], dy: &[f32], t: usize) -> Result<Vec<Grads>> {
        let Heads { query, kv, dim } = self.heads;
        let (qw, kw, group) = (query * dim, kv * dim, query / kv);
        let (cos, sin) = (&self.cos[..t * dim / 2], &self.sin[..t * dim / 2]);
        saved
            .q
            .par_chunks_exact(group * t * dim)
            .zip(saved.k.par_chunks_exact(t * dim))
            .zip(saved.p.par_chunks_exact(group * t * t))
            .enumerate()
            .map(|(task, ((qr, kr), p))| -> Result<_> {
                let (bi, g) = (task / kv, task % kv);
                let (mut dq, mut dkr, mut dv) =
                    (vec![0f32; group * t * dim], vec![0f32; t * dim], vec![0f32; t * dim]);
                let (mut ds, mut dqr) = (vec![0f32; t * t], vec![0f32; t * dim]);
                for j in 0..group {
                    let head = g * group + j;
                    let dyh = |from: usize, rows: usize| {
                        View::strided(&dy[(bi * t + from) * qw + head * dim..], rows, dim, qw)
                    };
                    let (ph, qh) = (&p[j * t * t..(j + 1) * t * t], &qr[j * t * dim..(j + 1) * t * dim]);
                    let acc = j > 0;
                    // Row blocks: the weights' gradient, through the softmax, then the queries'.
                    for (r0, r1) in blocks(t) {
                        let vals = View::strided(&v[bi * t * kw + g * dim..], r1, dim, kw)?;
                        product_strided(&mut ds[r0 * t..], t, dyh(r0, r1 - r0)?, vals.t(), 1.0, false)?;
                        for i in r0..r1 {
                            // p ⊙ (dp − Σ dp ⊙ p), then the scores' scale (p is 0 past i).
                            let (dr, pr) = (&mut ds[i * t..i * t + r1], &ph[i * t..i * t + r1]);
                            let dot = super::fast::expf::dot(dr, pr);
                            dr.iter_mut().zip(pr).for_each(|(d, &p)| *d = p * (*d - dot) * self.scale);
                        }
                        let dsb = View::strided(&ds[r0 * t..], r1 - r0, r1, t)?;
                        product(&mut dqr[r0 * dim..r1 * dim], dsb, View::new(kr, r1, dim)?, 1.0, false)?;
                    }
                    // Key blocks: the values' and keys' gradients, from the rows that see them.
                    for (c0, c1) in blocks(t) {
                        let pb = View::strided(&ph[c0 * t + c0..], t - c0, c1 - c0, t)?.t();
                        product(&mut dv[c0 * dim..c1 * dim], pb, dyh(c0, t - c0)?, 1.0, acc)?;
                        let dsb = View::strided(&ds[c0 * t + c0..], t - c0, c1 - c0, t)?.t();
                        product(
                            &mut dkr[c0 * dim..c1 * dim],
                            dsb,
                            View::new(&qh[c0 * dim..], t - c0, dim)?,
                            1.0,
                            acc,
                        )?;
                    }
                    rotate(&mut dq[j * t * dim..(j + 1) * t * dim], &dqr, dim, dim, cos, sin, -1.0);
                }
                let mut dk = vec![0f32; t * dim];
                rotate(&mut dk, &dkr, dim, dim, cos, sin, -1.0);
                Ok((dq, dk, dv))
            })
            .collect()
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "mynah-causal-attention"
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
        let (b, t, _) = l1.shape().dims3()?;
        let (out, saved) = self.kernel.forward(f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?, b, t)?;
        self.saved.put(saved);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, _) = q.dims3()?;
        let Some(saved) = self.saved.take() else { bail!("the attention's backward pass ran twice") };
        let (v, dy) = (v.contiguous()?, dy.contiguous()?);
        let (dq, dk, dv) =
            with_values(&v, |v| with_values(&dy, |dy| self.kernel.backward(&saved, v, dy, b, t)))?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// Writes each task's `[group, t, dim]` heads (task = batch row · kv + key/value head) into the
/// `[b, t, kv · group · dim]` tensor they are columns of.
fn scatter(out: &mut [f32], parts: &[Vec<f32>], t: usize, kv: usize, group: usize, dim: usize) {
    let width = kv * group * dim;
    for (task, part) in parts.iter().enumerate() {
        let (bi, g) = (task / kv, task % kv);
        for j in 0..group {
            let head = g * group + j;
            for p in 0..t {
                let src = &part[(j * t + p) * dim..(j * t + p + 1) * dim];
                let at = (bi * t + p) * width + head * dim;
                out[at..at + dim].copy_from_slice(src);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::engine::ops::{self, max_diff};

    #[test]
    fn the_fused_attention_gives_candles_values_and_gradients() {
        let dev = Device::Cpu;
        let (b, t, heads) = (2, 2 * BLOCK + 7, Heads { query: 6, kv: 2, dim: 8 });
        let var = |w: usize| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, w * heads.dim), &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var(heads.query), var(heads.kv), var(heads.kv));
        let scale = 1.0 / (heads.dim as f32).sqrt();
        let inv: Vec<f32> =
            (0..heads.dim / 2).map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / heads.dim as f32)).collect();
        let angles: Vec<f32> = (0..t).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
        let cos =
            Tensor::from_vec(angles.iter().map(|a| a.cos()).collect(), (t, heads.dim / 2), &dev).unwrap();
        let sin =
            Tensor::from_vec(angles.iter().map(|a| a.sin()).collect(), (t, heads.dim / 2), &dev).unwrap();
        // The composition `Model::forward_train` used before this op.
        let split = |x: &Tensor, h: usize| x.reshape((b, t, h, heads.dim)).unwrap().transpose(1, 2).unwrap();
        let rope =
            |x: Tensor| candle_nn::rotary_emb::rope_slow(&x.contiguous().unwrap(), &cos, &sin).unwrap();
        let repeat = |x: Tensor| {
            let n = heads.query / heads.kv;
            x.unsqueeze(2)
                .unwrap()
                .expand((b, heads.kv, n, t, heads.dim))
                .unwrap()
                .reshape((b, heads.query, t, heads.dim))
                .unwrap()
        };
        let (qs, ks) =
            (rope(split(q.as_tensor(), heads.query)), repeat(rope(split(k.as_tensor(), heads.kv))));
        let vs = repeat(split(v.as_tensor(), heads.kv).contiguous().unwrap());
        let att = ops::reference::causal_softmax(&qs.matmul(&ks.t().unwrap()).unwrap(), scale).unwrap();
        let composed = att
            .matmul(&vs)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, heads.query * heads.dim))
            .unwrap();
        let rotary = Rotary::new(&cos, &sin).unwrap();
        let fused =
            causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &rotary, heads, scale).unwrap();
        assert!(max_diff(&composed, &fused) < 1e-5, "values differ");
        let r = Tensor::randn(0f32, 1.0, composed.shape(), &dev).unwrap();
        let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (want, got) = (grads(&composed), grads(&fused));
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(want.get(x.as_tensor()).unwrap(), got.get(x.as_tensor()).unwrap());
            assert!(d < 1e-4, "the gradient of {name} differs by {d}");
        }
    }
}
