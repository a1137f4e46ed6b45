//! The row-wise passes of the hand-written training step on plain slices: RMSNorm and SwiGLU
//! forwards and backwards, and the embedding's gather and scatter. The arithmetic is that of the
//! fused candle ops in [`crate::engine::ops`], which `tests` holds to candle's autograd.

use rayon::prelude::*;

use crate::engine::fast::expf::sigmoid;
use crate::engine::ops::{dot3, inv_rms, silu};

/// Rows handed to one rayon task: enough work per task for a model of width 128.
const ROWS_PER_TASK: usize = 32;

/// `out = x / rms(x) · w` per row of width `w.len()`; `inv[row]` keeps `1 / rms` for the
/// backward pass.
pub fn rms_norm(out: &mut [f32], inv: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    out.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(inv.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .for_each(|((out, inv), x)| {
            for ((o, r), x) in out.chunks_exact_mut(d).zip(inv.iter_mut()).zip(x.chunks_exact(d)) {
                *r = inv_rms(x, eps);
                o.iter_mut().zip(x).zip(w).for_each(|((o, &x), &w)| *o = x * *r * w);
            }
        });
}

/// RMSNorm's backward pass: `dx += r·g·w − x·r³·mean(g·w·x)` per row, and
/// `dw += Σ_rows g · x·r`, for the output's gradient `g` and the forward pass's `inv` (`r`).
pub fn rms_norm_backward(dx: &mut [f32], dw: &mut [f32], x: &[f32], w: &[f32], inv: &[f32], g: &[f32]) {
    let d = w.len();
    let partial: Vec<Vec<f32>> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(g.par_chunks(d * ROWS_PER_TASK))
        .zip(inv.par_chunks(ROWS_PER_TASK))
        .map(|(((dx, x), g), inv)| {
            let mut dw = vec![0f32; d];
            for (((dx, x), g), &r) in
                dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)).zip(inv)
            {
                let mean = dot3(x, g, w) / d as f32;
                let r3 = r * r * r;
                for ((((dx, &x), &g), &w), dw) in dx.iter_mut().zip(x).zip(g).zip(w).zip(dw.iter_mut()) {
                    *dx += r * g * w - x * r3 * mean;
                    *dw += g * x * r;
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    // Summed in order, not in rayon's split: a seed gives the same weights every time.
    for part in partial {
        dw.iter_mut().zip(&part).for_each(|(dw, p)| *dw += p);
    }
}

/// Values per rayon task of the element-wise passes.
const CHUNK: usize = 1 << 12;

/// `a = silu(g) · u`.
pub fn swiglu(a: &mut [f32], g: &[f32], u: &[f32]) {
    a.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(u.par_chunks(CHUNK)).for_each(|((a, g), u)| {
        a.iter_mut().zip(g).zip(u).for_each(|((a, &g), &u)| *a = silu(g) * u);
    });
}

/// SwiGLU's backward pass: with `s = sigmoid(g)`, `dg = da · u · s · (1 + g · (1 − s))` and
/// `du = da · g · s`.
pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], da: &[f32]) {
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .zip(u.par_chunks(CHUNK))
        .zip(da.par_chunks(CHUNK))
        .for_each(|((((dg, du), g), u), da)| {
            for ((((dg, du), &g), &u), &da) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(da) {
                let s = sigmoid(g);
                *dg = da * u * s * (1.0 + g * (1.0 - s));
                *du = da * g * s;
            }
        });
}

/// The embedding rows of `ids` into `out` (`[ids.len(), d]`); false if an ID is outside the
/// table.
pub fn gather(out: &mut [f32], table: &[f32], ids: &[u32], d: usize) -> bool {
    let rows = table.len() / d;
    if ids.iter().any(|&i| i as usize >= rows) {
        return false;
    }
    for (o, &i) in out.chunks_exact_mut(d).zip(ids) {
        o.copy_from_slice(&table[i as usize * d..(i as usize + 1) * d]);
    }
    true
}

/// The embedding's backward pass: each row of `dx` summed into its ID's row of `dtable` (IDs
/// were checked by [`gather`]).
pub fn scatter_add(dtable: &mut [f32], dx: &[f32], ids: &[u32], d: usize) {
    for (g, &i) in dx.chunks_exact(d).zip(ids) {
        let row = &mut dtable[i as usize * d..(i as usize + 1) * d];
        row.iter_mut().zip(g).for_each(|(r, g)| *r += g);
    }
}
