//! The CPU kernels of the serving path: row-major products (split across threads when large),
//! dot products, norms, rotary embedding and low-rank adapters. Each is generic over `FMA`, so
//! it compiles once plainly and once inside the AVX2+FMA entry points.

/// A weight matrix `[out, in]`, row-major: `f32`, or `i8` with one scale per row (large models:
/// a quarter of the memory, and of the bytes each token reads).
pub(super) enum Mat {
    F32(Vec<f32>),
    I8 { q: Vec<i8>, scale: Vec<f32> },
}

impl Mat {
    /// `w` with rows of `n_in`, quantised to `i8` (symmetric, per row) when `quantize` is set.
    pub(super) fn new(w: Vec<f32>, n_in: usize, quantize: bool) -> Mat {
        if !quantize || n_in == 0 {
            return Mat::F32(w);
        }
        let mut q = Vec::with_capacity(w.len());
        let mut scale = Vec::with_capacity(w.len() / n_in);
        for row in w.chunks_exact(n_in) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            q.extend(row.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8));
            scale.push(s);
        }
        Mat::I8 { q, scale }
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Mat::F32(w) => w.len() * 4,
            Mat::I8 { q, scale } => q.len() + scale.len() * 4,
        }
    }

    /// Row `r` (of `n`) as `f32` into `out` (an embedding lookup).
    pub(super) fn row_into(&self, r: usize, n: usize, out: &mut [f32]) {
        match self {
            Mat::F32(w) => out.copy_from_slice(&w[r * n..(r + 1) * n]),
            Mat::I8 { q, scale } => {
                for (o, &v) in out.iter_mut().zip(&q[r * n..(r + 1) * n]) {
                    *o = f32::from(v) * scale[r];
                }
            }
        }
    }
}

/// One projection's low-rank adapter: `y += scale · (x aᵀ) bᵀ`.
pub(super) struct LowRank {
    /// `[rank, in]`
    pub(super) a: Mat,
    /// `[out, rank]`
    pub(super) b: Vec<f32>,
    pub(super) rank: usize,
    pub(super) scale: f32,
}

/// `y[t, out] += scale · (x[t, in] aᵀ) bᵀ`: an adapter beside its projection.
#[inline(always)]
pub(super) fn low_rank<const FMA: bool>(
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

pub(super) fn resized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    resize(v, n);
    v
}

pub(super) fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

pub(super) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// HF llama's rotary embedding (rotate-half pairing).
#[inline(always)]
pub(super) fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for i in 0..half {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

#[inline(always)]
pub(super) fn rms_norm_rows<const FMA: bool>(x: &[f32], w: &[f32], d: usize, eps: f32, out: &mut Vec<f32>) {
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
pub(super) const PARALLEL_MIN: usize = 1 << 20;
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
pub(super) fn matmul<const FMA: bool>(
    x: &[f32],
    w: &Mat,
    t: usize,
    n_in: usize,
    n_out: usize,
    y: &mut Vec<f32>,
) {
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
unsafe fn rows_fma(x: &[f32], w: &Mat, t: usize, n_in: usize, first: usize, count: usize, out: &mut [f32]) {
    rows::<true>(x, w, t, n_in, first, count, out, Layout::ByRow)
}

/// Output rows `first..first + count` of `x · wᵀ` into `out`, laid out as `layout` says.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<const FMA: bool>(
    x: &[f32],
    w: &Mat,
    t: usize,
    n_in: usize,
    first: usize,
    count: usize,
    out: &mut [f32],
    layout: Layout,
) {
    let put = |out: &mut [f32], i: usize, k: usize, v: f32| match layout {
        Layout::ByToken { n_out } => out[i * n_out + k] = v,
        Layout::ByRow => out[k * t + i] = v,
    };
    match w {
        Mat::F32(w) => {
            for k in 0..count {
                let row = &w[(first + k) * n_in..(first + k + 1) * n_in];
                for i in 0..t {
                    put(out, i, k, dot::<FMA>(&x[i * n_in..(i + 1) * n_in], row));
                }
            }
        }
        Mat::I8 { q, scale } if t == 1 => {
            for k in 0..count {
                let r = first + k;
                put(out, 0, k, scale[r] * dot_i8::<FMA>(&x[..n_in], &q[r * n_in..(r + 1) * n_in]));
            }
        }
        Mat::I8 { q, scale } => {
            // Several tokens (a prefill): each row is widened once, not once per token.
            let mut row = vec![0f32; n_in];
            for k in 0..count {
                let r = first + k;
                for (w, &v) in row.iter_mut().zip(&q[r * n_in..(r + 1) * n_in]) {
                    *w = f32::from(v) * scale[r];
                }
                for i in 0..t {
                    put(out, i, k, dot::<FMA>(&x[i * n_in..(i + 1) * n_in], &row));
                }
            }
        }
    }
}

#[inline(always)]
pub(super) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
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

/// `a · b` for an `i8` row `b` (the conversions vectorise inside the AVX2 entry points).
#[inline(always)]
pub(super) fn dot_i8<const FMA: bool>(a: &[f32], b: &[i8]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let n = a.len().min(b.len());
    let whole = n / L * L;
    for (x, y) in a[..whole].chunks_exact(L).zip(b[..whole].chunks_exact(L)) {
        for i in 0..L {
            let y = f32::from(y[i]);
            acc[i] = if FMA { x[i].mul_add(y, acc[i]) } else { acc[i] + x[i] * y };
        }
    }
    let mut sum = 0.0;
    for i in whole..n {
        sum += a[i] * f32::from(b[i]);
    }
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
pub(super) fn axpy<const FMA: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if FMA { x.mul_add(a, *y) } else { *y + a * x };
    }
}
