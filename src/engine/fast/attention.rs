//! Attention in the serving path: a prompt's rows as matrix products, and reply candidates
//! attending together to the prompt they share.

use super::expf::exp_shifted;
use super::kernels::{axpy, dot, resize};
use super::panels::Panels;

/// Rows of a prompt prefilled at once need attention of every row over every earlier position:
/// from this many rows on, it is done as two matrix products per head (scores, then values).
pub(super) const PREFILL_ROWS: usize = 16;

/// Causal attention of `t` consecutive rows (positions `start..start + t`) over a cache's keys
/// and values `k`, `v` (`start + t` positions) as matrix products: `Q Kᵀ`, a causal softmax per
/// row, then `P V`, one head at a time.
#[allow(clippy::too_many_arguments)]
pub(super) fn prefill_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    t: usize,
    (h, kvh, hd): (usize, usize, usize),
    scale: f32,
    scores: &mut Vec<f32>,
    att: &mut [f32],
) {
    let (d, kv, group, seen) = (h * hd, kvh * hd, h / kvh, start + t);
    resize(scores, t * seen);
    if q.len() < t * d || k.len() < seen * kv || v.len() < seen * kv || att.len() < t * d {
        return;
    }
    for hh in 0..h {
        let off = (hh / group) * hd;
        // SAFETY: `q` is `[t, d]`, `k` and `v` are `[seen, kv]`, `scores` is `[t, seen]` and
        // `att` is `[t, d]` (checked above); the strides and head offsets stay inside them.
        unsafe {
            gemm::gemm(
                t,
                seen,
                hd,
                scores.as_mut_ptr(),
                1,
                seen as isize,
                false,
                q.as_ptr().add(hh * hd),
                1,
                d as isize,
                k.as_ptr().add(off),
                kv as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        for i in 0..t {
            let row = &mut scores[i * seen..(i + 1) * seen];
            let (visible, future) = row.split_at_mut(start + i + 1);
            let max = visible.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = exp_shifted(visible, max);
            visible.iter_mut().for_each(|x| *x /= sum);
            future.fill(0.0);
        }
        // SAFETY: as above; `att`'s rows are written at this head's columns only.
        unsafe {
            gemm::gemm(
                t,
                hd,
                seen,
                att.as_mut_ptr().add(hh * hd),
                1,
                d as isize,
                false,
                scores.as_ptr(),
                1,
                seen as isize,
                v.as_ptr().add(off),
                1,
                kv as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// One row of a pass as attention sees it: its index in the pass, the positions it sees, and
/// its cache's own keys and values for this layer (those after any shared prefix).
pub(super) struct Row<'a> {
    pub(super) index: usize,
    pub(super) seen: usize,
    pub(super) k: &'a [f32],
    pub(super) v: &'a [f32],
}

/// Causal attention of `rows` (queries in `q`, `[row][d]`) over an optional shared prefix
/// (per key-value head its packed keys and values, and its length) and then each row's own
/// positions, into `att`. The prefix is attended as two products per head for all rows at once.
#[inline(always)]
pub(super) fn attend<const FMA: bool>(
    q: &[f32],
    rows: &[Row<'_>],
    shared: Option<(&[(Panels, Panels)], usize)>,
    (h, kvh, hd): (usize, usize, usize),
    scale: f32,
    scores: &mut Vec<f32>,
    att: &mut [f32],
) {
    let (d, kv, group) = (h * hd, kvh * hd, h / kvh);
    let stride = rows.iter().map(|r| r.seen).max().unwrap_or(0);
    let shared = shared.filter(|s| s.1 > 0);
    let plen = shared.map_or(0, |s| s.1);
    resize(scores, rows.len() * h * stride);
    let at = |r: usize, hh: usize| (r * h + hh) * stride;
    let query = |r: &Row, hh: usize| &q[r.index * d + hh * hd..r.index * d + (hh + 1) * hd];
    let n = rows.len();
    // The rows' queries (or probabilities) of one head side by side, and a product's result.
    let (mut inp, mut out) = (Vec::new(), Vec::new());
    // Scores: the shared positions for all rows at once, then each row's own.
    // A key-value head's query heads go through its keys (and values) together: each is read
    // once per token, not once per query head.
    if let Some((packed, _)) = shared {
        for (g, (keys, _)) in packed.iter().enumerate().take(kvh) {
            let heads = g * group..(g + 1) * group;
            inp.clear();
            rows.iter().for_each(|row| heads.clone().for_each(|hh| inp.extend_from_slice(query(row, hh))));
            resize(&mut out, n * group * plen);
            keys.product::<FMA>(&inp, n * group, &mut out);
            let mut got = out.chunks_exact(plen.max(1));
            for r in 0..n {
                for hh in heads.clone() {
                    let Some(got) = got.next() else { return };
                    for (s, &g) in scores[at(r, hh)..at(r, hh) + plen].iter_mut().zip(got) {
                        *s = g * scale;
                    }
                }
            }
        }
    }
    for (r, row) in rows.iter().enumerate() {
        for hh in 0..h {
            let off = (hh / group) * hd;
            let q = query(row, hh);
            let base = at(r, hh);
            for j in plen..row.seen {
                let o = (j - plen) * kv + off;
                scores[base + j] = dot::<FMA>(q, &row.k[o..o + hd]) * scale;
            }
            let s = &mut scores[base..base + row.seen];
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum = exp_shifted(s, max);
            s.iter_mut().for_each(|x| *x /= sum);
            att[row.index * d + hh * hd..row.index * d + (hh + 1) * hd].fill(0.0);
        }
    }
    // Values, in the same order.
    if let Some((packed, _)) = shared {
        for (g, (_, values)) in packed.iter().enumerate().take(kvh) {
            let heads = g * group..(g + 1) * group;
            inp.clear();
            (0..n).for_each(|r| {
                heads.clone().for_each(|hh| inp.extend_from_slice(&scores[at(r, hh)..at(r, hh) + plen]))
            });
            resize(&mut out, n * group * hd);
            values.product::<FMA>(&inp, n * group, &mut out);
            let mut got = out.chunks_exact(hd);
            for row in rows {
                for hh in heads.clone() {
                    let Some(got) = got.next() else { return };
                    att[row.index * d + hh * hd..row.index * d + (hh + 1) * hd].copy_from_slice(got);
                }
            }
        }
    }
    for (r, row) in rows.iter().enumerate() {
        for hh in 0..h {
            let off = (hh / group) * hd;
            let out = &mut att[row.index * d + hh * hd..row.index * d + (hh + 1) * hd];
            for j in plen..row.seen {
                let o = (j - plen) * kv + off;
                axpy::<FMA>(scores[at(r, hh) + j], &row.v[o..o + hd], out);
            }
        }
    }
}
