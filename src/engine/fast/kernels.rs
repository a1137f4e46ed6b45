//! The CPU kernels of the serving path: products (split across threads when large),
//! dot products, norms, rotary embedding and low-rank adapters. Each is generic over `FMA`, so
//! it compiles once plainly and once inside the AVX2+FMA entry points.

use super::panels::Panels;

/// Whether this CPU runs the AVX2 kernels (`FMA = true`): AVX2, FMA and F16C.
pub(super) fn has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// How a model's weight matrices are held for serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Exact: small models, whose weights fit in cache anyway.
    F32,
    /// Half the bytes, about three significant digits: mid-sized models, whose decoding is
    /// bound by reading the weights from memory.
    F16,
    /// A quarter of the bytes, one scale per row: large models.
    I8,
}

/// A weight matrix `[out, in]`: panels packed for the product (`f32` or `f16`), or row-major
/// `i8` with one scale per row (large models: a quarter of the memory, and of the bytes each
/// token reads).
pub(super) enum Mat {
    Packed(Panels),
    I8 { q: Vec<i8>, scale: Vec<f32> },
}

impl Mat {
    /// `w` with rows of `n_in`, held as `precision` says (`i8`: symmetric, per row).
    pub(super) fn new(w: Vec<f32>, n_in: usize, precision: Precision) -> Mat {
        if precision != Precision::I8 || n_in == 0 {
            return Mat::Packed(Panels::new(&w, n_in, precision == Precision::F16));
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
            Mat::Packed(p) => p.bytes(),
            Mat::I8 { q, scale } => q.len() + scale.len() * 4,
        }
    }

    /// `(rows, columns)`: `(n_out, n_in)`.
    pub(super) fn dims(&self) -> (usize, usize) {
        match self {
            Mat::Packed(p) => p.dims(),
            Mat::I8 { q, scale } => (scale.len(), q.len().checked_div(scale.len()).unwrap_or(0)),
        }
    }

    /// Row `r` (of `n`) as `f32` into `out` (an embedding lookup).
    pub(super) fn row_into(&self, r: usize, n: usize, out: &mut [f32]) {
        match self {
            Mat::Packed(p) => p.row_into(r, out),
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
    matmul::<FMA>(x, &ad.a, t, n_in, ad.rank, tmp);
    for i in 0..t {
        let xa = &tmp[i * ad.rank..(i + 1) * ad.rank];
        let yi = &mut y[i * n_out..(i + 1) * n_out];
        for (o, yo) in yi.iter_mut().enumerate() {
            *yo += ad.scale * dot::<FMA>(xa, &ad.b[o * ad.rank..(o + 1) * ad.rank]);
        }
    }
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
    let (q, scale) = match w {
        Mat::Packed(p) => return p.product::<FMA>(x, t, y),
        Mat::I8 { q, scale } => (q, scale),
    };
    let parallel = t * n_in * n_out >= PARALLEL_MIN && rayon::current_num_threads() >= 2;
    if !parallel {
        rows::<FMA>(x, q, scale, t, n_in, 0, n_out, y, Layout::ByToken { n_out });
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
            unsafe { rows_fma(x, q, scale, t, n_in, first, count, out) };
            return;
        }
        rows::<false>(x, q, scale, t, n_in, first, count, out, Layout::ByRow);
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
#[allow(clippy::too_many_arguments)]
unsafe fn rows_fma(
    x: &[f32],
    q: &[i8],
    scale: &[f32],
    t: usize,
    n_in: usize,
    first: usize,
    count: usize,
    out: &mut [f32],
) {
    rows::<true>(x, q, scale, t, n_in, first, count, out, Layout::ByRow)
}

/// Output rows `first..first + count` of `x · wᵀ`, for the `i8` matrix `w` (`q` with a `scale`
/// per row), into `out`, laid out as `layout` says.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<const FMA: bool>(
    x: &[f32],
    q: &[i8],
    scale: &[f32],
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
    if t == 1 {
        for k in 0..count {
            let r = first + k;
            put(out, 0, k, scale[r] * dot_i8::<FMA>(&x[..n_in], &q[r * n_in..(r + 1) * n_in]));
        }
        return;
    }
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

#[inline(always)]
pub(super) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<FMA, f32>(a, b)
}

/// `a · b` in 16 lanes, `b`'s elements widened to `f32`.
#[inline(always)]
fn dot_lanes<const FMA: bool, T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let n = a.len().min(b.len());
    let whole = n / L * L;
    for (x, y) in a[..whole].chunks_exact(L).zip(b[..whole].chunks_exact(L)) {
        for i in 0..L {
            let y: f32 = y[i].into();
            acc[i] = if FMA { x[i].mul_add(y, acc[i]) } else { acc[i] + x[i] * y };
        }
    }
    let tail: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(x, &y)| x * y.into()).sum();
    reduce(acc) + tail
}

/// The sum of the lanes, pairwise: rounding stays close to a tree sum.
#[inline(always)]
fn reduce<const L: usize>(mut acc: [f32; L]) -> f32 {
    let mut width = L;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// `a · b` for an `i8` row `b`: with `FMA` (only ever set on a CPU with AVX2 and FMA), 32
/// elements a step with AVX2 (the compiler does not vectorise the widening on its own).
#[inline(always)]
pub(super) fn dot_i8<const FMA: bool>(a: &[f32], b: &[i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only true when the CPU has AVX2 and FMA (checked in `forward`).
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_lanes::<false, i8>(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8_avx2(a: &[f32], b: &[i8]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n, within both slices.
        let bytes = _mm_loadu_si128(pb.add(i) as *const __m128i);
        let more = _mm_loadu_si128(pb.add(i + 16) as *const __m128i);
        let parts = [bytes, _mm_srli_si128(bytes, 8), more, _mm_srli_si128(more, 8)];
        for (j, part) in parts.into_iter().enumerate() {
            let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
            acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), w, acc[j]);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum::<f32>() + dot_lanes::<false, i8>(&a[i..n], &b[i..n])
}

#[inline(always)]
pub(super) fn axpy<const FMA: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if FMA { x.mul_add(a, *y) } else { *y + a * x };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_avx2_int8_dot_matches_the_plain_one() {
        let a: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let b: Vec<i8> = (0..1000).map(|i| ((i * 53) % 255) as i16 as i8).collect();
        for n in [0, 1, 31, 32, 33, 64, 577, 1000] {
            let plain = dot_i8::<false>(&a[..n], &b[..n]);
            let reference: f32 = a[..n].iter().zip(&b[..n]).map(|(x, &y)| x * f32::from(y)).sum();
            assert!(
                (plain - reference).abs() <= 1e-3 * reference.abs().max(1.0),
                "{n}: {plain} vs {reference}"
            );
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma_f16c() {
                let fast = dot_i8::<true>(&a[..n], &b[..n]);
                assert!(
                    (fast - reference).abs() <= 1e-3 * reference.abs().max(1.0),
                    "{n}: {fast} vs {reference}"
                );
            }
        }
    }
}
