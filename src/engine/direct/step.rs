//! One training step's forward and backward passes through the whole model on plain slices:
//! the forward pass keeps what the backward pass reads (a tape, allocated once per run), the
//! backward pass writes every weight's gradient straight into its place in one flat buffer.

use std::ops::Range;

use candle_core::{bail, Result};

use super::rows;
use crate::engine::attention::{Kernel, Saved};
use crate::engine::loss::{head_loss, Wanted};
use crate::engine::matmul::{product, View};

/// Where one block's weights lie in the flat buffers.
pub struct BlockSlots {
    pub attn_norm: Range<usize>,
    pub q: Range<usize>,
    pub k: Range<usize>,
    pub v: Range<usize>,
    pub o: Range<usize>,
    pub mlp_norm: Range<usize>,
    pub gate: Range<usize>,
    pub up: Range<usize>,
    pub down: Range<usize>,
}

/// Where every weight lies in the flat buffers; a tied head is the embedding's range.
pub struct Slots {
    pub embed: Range<usize>,
    pub norm: Range<usize>,
    pub head: Range<usize>,
    pub blocks: Vec<BlockSlots>,
}

/// The model's sizes: width, key/value width, MLP width, vocabulary, and the norm's epsilon.
#[derive(Clone, Copy)]
pub struct Dims {
    pub d: usize,
    pub kv: usize,
    pub f: usize,
    pub vocab: usize,
    pub eps: f32,
}

/// What one block's forward pass keeps for the backward pass, for up to `rows` positions.
struct LayerTape {
    /// The block's input (residual stream), its attention norm and that norm's `1 / rms`.
    x: Vec<f32>,
    n1: Vec<f32>,
    inv1: Vec<f32>,
    v: Vec<f32>,
    att: Option<Saved>,
    /// The attention's output, the residual after it, its MLP norm and `1 / rms`.
    y: Vec<f32>,
    mid: Vec<f32>,
    n2: Vec<f32>,
    inv2: Vec<f32>,
    /// Gate, up and their SwiGLU product.
    g: Vec<f32>,
    u: Vec<f32>,
    a: Vec<f32>,
}

/// The buffers of a step, allocated once for the largest batch: the tape, and the backward
/// pass's working space.
pub struct Tape {
    pub rows: usize,
    layers: Vec<LayerTape>,
    last: Vec<f32>,
    normed: Vec<f32>,
    inv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    dx: Vec<f32>,
    dn: Vec<f32>,
    dy: Vec<f32>,
    da: Vec<f32>,
    dg: Vec<f32>,
    du: Vec<f32>,
}

impl Tape {
    /// What a tape and the attention state its blocks save take per position, for sequences
    /// of `t` through `layers` blocks with `query_heads` heads (each keeps its weights over `t`
    /// positions).
    pub fn bytes_per_row(dims: Dims, layers: usize, query_heads: usize, t: usize) -> usize {
        let Dims { d, kv, f, .. } = dims;
        // x, n1, y, mid, n2, v, g, u, a and two norms; the rotated queries and keys, the weights.
        let block = 5 * d + kv + 3 * f + 2 + (d + kv + query_heads * t);
        // last, normed, q, dx, dn, dy; inv, k; da, dg, du.
        let shared = 6 * d + 1 + kv + 3 * f;
        (layers * block + shared) * std::mem::size_of::<f32>()
    }

    pub fn new(dims: Dims, layers: usize, rows: usize) -> Tape {
        let Dims { d, kv, f, .. } = dims;
        let z = |n: usize| vec![0f32; rows * n];
        Tape {
            rows,
            layers: (0..layers)
                .map(|_| LayerTape {
                    x: z(d),
                    n1: z(d),
                    inv1: z(1),
                    v: z(kv),
                    att: None,
                    y: Vec::new(),
                    mid: z(d),
                    n2: z(d),
                    inv2: z(1),
                    g: z(f),
                    u: z(f),
                    a: z(f),
                })
                .collect(),
            last: z(d),
            normed: z(d),
            inv: z(1),
            q: z(d),
            k: z(kv),
            dx: z(d),
            dn: z(d),
            dy: z(d),
            da: z(f),
            dg: z(f),
            du: z(f),
        }
    }
}

/// `out[n, o] = x[n, i] · w[o, i]ᵀ`.
fn linear(out: &mut [f32], x: &[f32], w: &[f32], n: usize, i: usize, o: usize) -> Result<()> {
    Ok(product(&mut out[..n * o], View::new(x, n, i)?, View::new(w, o, i)?.t(), 1.0, false)?)
}

/// `dw[o, i] += dy[n, o]ᵀ · x[n, i]`.
fn weight_grad(dw: &mut [f32], dy: &[f32], x: &[f32], n: usize, i: usize, o: usize) -> Result<()> {
    Ok(product(dw, View::new(dy, n, o)?.t(), View::new(x, n, i)?, 1.0, true)?)
}

/// `dx[n, i] = dy[n, o] · w[o, i]`, or `+=` with `accumulate`.
fn input_grad(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    i: usize,
    o: usize,
    accumulate: bool,
) -> Result<()> {
    Ok(product(&mut dx[..n * i], View::new(dy, n, o)?, View::new(w, o, i)?, 1.0, accumulate)?)
}

/// Logits the head loss holds at once (16 MB): chunks of 512 rows or more for this project's
/// vocabularies, still efficient products.
const LOGIT_CHUNK: usize = 1 << 22;

/// The mean cross-entropy of `targets` after `ids` (`b` sequences of `t`), with the gradient of
/// every weight, times `weight`, added into `grads` (several batches weighted by their shares of
/// the rows sum to the gradient of their mean).
#[allow(clippy::too_many_arguments)]
pub fn loss_and_grads(
    tape: &mut Tape,
    slots: &Slots,
    dims: Dims,
    kernel: &Kernel,
    params: &[f32],
    grads: &mut [f32],
    ids: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
    weight: f32,
) -> Result<f32> {
    let n = b * t;
    let Dims { d, kv, f, eps, .. } = dims;
    if ids.len() != n || targets.len() != n || n > tape.rows {
        bail!(
            "a batch of {b} × {t} for {} IDs, {} targets and room for {}",
            ids.len(),
            targets.len(),
            tape.rows
        )
    }
    let p = |r: &Range<usize>| &params[r.clone()];

    // Forwards.
    let first = match tape.layers.first_mut() {
        Some(l) => &mut l.x,
        None => &mut tape.last,
    };
    if !rows::gather(&mut first[..n * d], p(&slots.embed), ids, d) {
        bail!("a token ID outside the vocabulary of {}", dims.vocab)
    }
    for i in 0..slots.blocks.len() {
        let s = &slots.blocks[i];
        let (done, rest) = tape.layers.split_at_mut(i + 1);
        let l = &mut done[i];
        let x = &l.x[..n * d];
        rows::rms_norm(&mut l.n1[..n * d], &mut l.inv1[..n], x, p(&s.attn_norm), eps);
        linear(&mut tape.q, &l.n1, p(&s.q), n, d, d)?;
        linear(&mut tape.k, &l.n1, p(&s.k), n, d, kv)?;
        linear(&mut l.v, &l.n1, p(&s.v), n, d, kv)?;
        let (y, saved) = kernel.forward(&tape.q[..n * d], &tape.k[..n * kv], &l.v[..n * kv], b, t)?;
        (l.y, l.att) = (y, Some(saved));
        linear(&mut l.mid, &l.y, p(&s.o), n, d, d)?;
        l.mid[..n * d].iter_mut().zip(&l.x[..n * d]).for_each(|(m, &x)| *m += x);
        rows::rms_norm(&mut l.n2[..n * d], &mut l.inv2[..n], &l.mid[..n * d], p(&s.mlp_norm), eps);
        linear(&mut l.g, &l.n2, p(&s.gate), n, d, f)?;
        linear(&mut l.u, &l.n2, p(&s.up), n, d, f)?;
        rows::swiglu(&mut l.a[..n * f], &l.g[..n * f], &l.u[..n * f]);
        let out = match rest.first_mut() {
            Some(next) => &mut next.x,
            None => &mut tape.last,
        };
        linear(out, &l.a, p(&s.down), n, f, d)?;
        out[..n * d].iter_mut().zip(&l.mid[..n * d]).for_each(|(o, &m)| *o += m);
    }
    rows::rms_norm(&mut tape.normed[..n * d], &mut tape.inv[..n], &tape.last[..n * d], p(&slots.norm), eps);
    let wanted = Wanted { x: true, w: true };
    let (loss, (dnormed, dhead)) =
        head_loss(&tape.normed[..n * d], p(&slots.head), targets, d, wanted, LOGIT_CHUNK)?;
    let (Some(mut dnormed), Some(dhead)) = (dnormed, dhead) else { bail!("the head loss gave no gradients") };
    // Every gradient below is linear in the states' gradient: weighting it weights them all.
    if weight != 1.0 {
        dnormed.iter_mut().for_each(|g| *g *= weight);
    }
    grads[slots.head.clone()].iter_mut().zip(&dhead).for_each(|(g, h)| *g += h * weight);

    // Backwards: `dx` is the residual stream's gradient.
    let dx = &mut tape.dx[..n * d];
    dx.fill(0.0);
    rows::rms_norm_backward(
        dx,
        &mut grads[slots.norm.clone()],
        &tape.last[..n * d],
        p(&slots.norm),
        &tape.inv[..n],
        &dnormed,
    );
    for (s, l) in slots.blocks.iter().zip(&mut tape.layers).rev() {
        // The MLP.
        input_grad(&mut tape.da, dx, p(&s.down), n, f, d, false)?;
        weight_grad(&mut grads[s.down.clone()], dx, &l.a[..n * f], n, f, d)?;
        rows::swiglu_backward(
            &mut tape.dg[..n * f],
            &mut tape.du[..n * f],
            &l.g[..n * f],
            &l.u[..n * f],
            &tape.da[..n * f],
        );
        input_grad(&mut tape.dn, &tape.dg, p(&s.gate), n, d, f, false)?;
        input_grad(&mut tape.dn, &tape.du, p(&s.up), n, d, f, true)?;
        weight_grad(&mut grads[s.gate.clone()], &tape.dg[..n * f], &l.n2[..n * d], n, d, f)?;
        weight_grad(&mut grads[s.up.clone()], &tape.du[..n * f], &l.n2[..n * d], n, d, f)?;
        rows::rms_norm_backward(
            dx,
            &mut grads[s.mlp_norm.clone()],
            &l.mid[..n * d],
            p(&s.mlp_norm),
            &l.inv2[..n],
            &tape.dn[..n * d],
        );
        // The attention.
        input_grad(&mut tape.dy, dx, p(&s.o), n, d, d, false)?;
        weight_grad(&mut grads[s.o.clone()], dx, &l.y[..n * d], n, d, d)?;
        let Some(saved) = l.att.take() else { bail!("a block's attention was not saved") };
        let (dq, dk, dv) = kernel.backward(&saved, &l.v[..n * kv], &tape.dy[..n * d], b, t)?;
        input_grad(&mut tape.dn, &dq, p(&s.q), n, d, d, false)?;
        input_grad(&mut tape.dn, &dk, p(&s.k), n, d, kv, true)?;
        input_grad(&mut tape.dn, &dv, p(&s.v), n, d, kv, true)?;
        let n1 = &l.n1[..n * d];
        weight_grad(&mut grads[s.q.clone()], &dq, n1, n, d, d)?;
        weight_grad(&mut grads[s.k.clone()], &dk, n1, n, d, kv)?;
        weight_grad(&mut grads[s.v.clone()], &dv, n1, n, d, kv)?;
        rows::rms_norm_backward(
            dx,
            &mut grads[s.attn_norm.clone()],
            &l.x[..n * d],
            p(&s.attn_norm),
            &l.inv1[..n],
            &tape.dn[..n * d],
        );
    }
    rows::scatter_add(&mut grads[slots.embed.clone()], dx, ids, d);
    Ok(loss)
}
