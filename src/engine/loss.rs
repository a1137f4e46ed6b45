//! The training loss as one op (CPU): the output head and the mean cross-entropy together,
//! with their gradients computed in the same pass, a few rows at a time. A base's vocabulary
//! makes the logits of a batch large (4 × 256 tokens × 49 152 entries: 200 MB), and through
//! candle they were written, read for the loss, turned into a gradient of the same size, scaled,
//! summed into a zeroed buffer and read again for the products: most of a second per step. Here
//! no more than a few MB of logits exist at once, and a frozen head gets no gradient computed.
//! `tests` holds it to candle's autograd on the composed version.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast::expf::exp_shifted;
use super::matmul::{product, product_new, View};
use super::ops::{f32s, Stash};

/// Logits held at once, at most, in values (128 MB). The products of a chunk are only efficient
/// with enough rows: measured on SmolLM2's head, 85 rows at a time made the gradient's product
/// run at 88 GFLOP/s, 512 rows at 200 and more.
const CHUNK_VALUES: usize = 1 << 25;

/// Mean cross-entropy of `x wᵀ` `[n, vocab]` against `targets` `[n]` (u32), for hidden states
/// `x` `[n, d]` and a head `w` `[vocab, d]`: a scalar whose backward pass gives `x` and, when it
/// is trained, `w` their gradients.
pub fn head_cross_entropy(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    chunked(x, w, targets, CHUNK_VALUES)
}

fn chunked(x: &Tensor, w: &Tensor, targets: &Tensor, chunk_values: usize) -> Result<Tensor> {
    let op = HeadLoss { x_grad: x.track_op(), w_grad: w.track_op(), chunk_values, grads: Stash::default() };
    x.contiguous()?.apply_op3(&w.contiguous()?, &targets.contiguous()?, op)
}

/// The gradients of `x` and `w` (those asked for), for a loss gradient of 1.
pub type Grads = (Option<Vec<f32>>, Option<Vec<f32>>);

struct HeadLoss {
    x_grad: bool,
    w_grad: bool,
    chunk_values: usize,
    grads: Stash<Grads>,
}

/// Turns a row of logits into its loss gradient `(softmax − onehot(t)) / n`, returning the row's
/// loss `logsumexp − logit[t]`.
fn softmax_grad(row: &mut [f32], t: usize, n: f32) -> f32 {
    let target = row[t];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_shifted(row, max);
    let scale = 1.0 / (sum * n);
    row.iter_mut().for_each(|p| *p *= scale);
    row[t] -= 1.0 / n;
    max + sum.ln() - target
}

/// Which gradients [`head_loss`] computes.
#[derive(Clone, Copy)]
pub struct Wanted {
    pub x: bool,
    pub w: bool,
}

/// The mean cross-entropy of `x wᵀ` against `targets`, for states `x` `[n, d]` and a head `w`
/// `[vocab, d]`, with the gradients asked for (for a loss gradient of 1), holding at most
/// `chunk_values` logits at once.
pub fn head_loss(
    x: &[f32],
    w: &[f32],
    targets: &[u32],
    d: usize,
    wanted: Wanted,
    chunk_values: usize,
) -> Result<(f32, Grads)> {
    let n = targets.len();
    let vocab = w.len().checked_div(d).unwrap_or(0);
    if d == 0 || vocab == 0 || w.len() != vocab * d || x.len() != n * d || n == 0 {
        bail!("head loss: {} states of width {d} for {n} targets", x.len())
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("target {bad} outside the vocabulary of {vocab}")
    }
    let wm = View::new(w, vocab, d)?;
    let mut dx = wanted.x.then(|| vec![0f32; n * d]);
    let mut dw = wanted.w.then(|| vec![0f32; vocab * d]);
    // Rows a chunk; a trained head's gradient sums over the chunks.
    let rows = n.div_ceil(n.saturating_mul(vocab).div_ceil(chunk_values.max(1)).max(1));
    let mut losses = vec![0f32; n];
    // The first (largest) chunk's logits are written into new memory, not zeroed first; the
    // others reuse it.
    let mut logits = Vec::new();
    for start in (0..n).step_by(rows) {
        let m = rows.min(n - start);
        let xc = View::new(&x[start * d..(start + m) * d], m, d)?;
        if logits.is_empty() {
            logits = product_new(xc, wm.t(), 1.0)?;
        } else {
            product(&mut logits[..m * vocab], xc, wm.t(), 1.0, false)?;
        }
        let lc = &mut logits[..m * vocab];
        lc.par_chunks_exact_mut(vocab)
            .zip(losses[start..start + m].par_iter_mut())
            .zip(targets[start..start + m].par_iter())
            .for_each(|((row, loss), &t)| *loss = softmax_grad(row, t as usize, n as f32));
        let gc = View::new(lc, m, vocab)?;
        if let Some(dx) = dx.as_mut() {
            product(&mut dx[start * d..(start + m) * d], gc, wm, 1.0, false)?;
        }
        if let Some(dw) = dw.as_mut() {
            product(dw, gc.t(), xc, 1.0, start > 0)?;
        }
    }
    // Summed in order (not by rayon's split), so a seed gives the same loss every time.
    let loss = losses.iter().map(|&l| l as f64).sum::<f64>() / n as f64;
    Ok((loss as f32, (dx, dw)))
}

impl CustomOp3 for HeadLoss {
    fn name(&self) -> &'static str {
        "mynah-head-cross-entropy"
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
        let (_, d) = l2.shape().dims2()?;
        let (x, w) = (f32s(s1, l1)?, f32s(s2, l2)?);
        let CpuStorage::U32(t) = s3 else { bail!("the targets must be u32") };
        let Some((t0, t1)) = l3.contiguous_offsets() else { bail!("the targets must be contiguous") };
        let wanted = Wanted { x: self.x_grad, w: self.w_grad };
        let (loss, grads) = head_loss(x, w, &t[t0..t1], d, wanted, self.chunk_values)?;
        self.grads.put(grads);
        Ok((CpuStorage::F32(vec![loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _targets: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((dx, dw)) = self.grads.take() else { bail!("the head loss's backward pass ran twice") };
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let tensor = |v: Option<Vec<f32>>, like: &Tensor| -> Result<Option<Tensor>> {
            v.map(|mut v| {
                if g != 1.0 {
                    v.iter_mut().for_each(|a| *a *= g);
                }
                Tensor::from_vec(v, like.shape(), like.device())
            })
            .transpose()
        };
        Ok((tensor(dx, x)?, tensor(dw, w)?, None))
    }
}

/// Whether hidden states can go through [`head_cross_entropy`]: `f32` on the CPU.
pub fn fits(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::engine::ops::max_diff;

    /// Values and gradients against candle's composition, with a frozen or a trained head, and
    /// with the rows split into several chunks or taken at once.
    #[test]
    fn the_head_loss_gives_candles_values_and_gradients() {
        let dev = Device::Cpu;
        let (n, d, vocab, chunk) = (70, 6, 1 << 12, 1 << 16);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, d), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (vocab, d), &dev).unwrap()).unwrap();
        let y: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let y = Tensor::new(y.as_slice(), &dev).unwrap();
        assert!(chunk / vocab < n, "the test must span several chunks");
        for trained_head in [false, true] {
            let head = if trained_head { w.as_tensor().clone() } else { w.as_tensor().detach() };
            let composed = candle_nn::loss::cross_entropy(
                &crate::engine::model::linear(x.as_tensor(), &head).unwrap(),
                &y,
            )
            .unwrap();
            let fused = chunked(x.as_tensor(), &head, &y, chunk).unwrap();
            assert!(max_diff(&composed, &fused) < 1e-4, "losses differ");
            // A loss gradient other than 1 reaches both gradients.
            let (want, got) =
                ((composed * 3.0).unwrap().backward().unwrap(), (fused * 3.0).unwrap().backward().unwrap());
            let dx = max_diff(want.get(x.as_tensor()).unwrap(), got.get(x.as_tensor()).unwrap());
            assert!(dx < 1e-5, "x's gradient differs by {dx}");
            match trained_head {
                true => {
                    let dw = max_diff(want.get(w.as_tensor()).unwrap(), got.get(w.as_tensor()).unwrap());
                    assert!(dw < 1e-5, "w's gradient differs by {dw}");
                }
                false => assert!(got.get(&head).is_none(), "a frozen head gets no gradient"),
            }
        }
        let outside = Tensor::new(&[vocab as u32; 70], &dev).unwrap();
        assert!(head_cross_entropy(x.as_tensor(), w.as_tensor(), &outside).is_err());
    }
}
