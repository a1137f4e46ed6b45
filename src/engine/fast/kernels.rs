//! The CPU kernels of the serving path: products (split across threads when large),
//! dot products, norms and rotary embedding. Each is generic over `FMA`, so
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
    /// A quarter of the bytes, one scale per row.
    I8,
    /// Five bits a weight, a step and a minimum per 32 ([`super::q4`]): large models. Rows
    /// that are not whole groups of 32 fall back to [`Precision::I8`].
    Q4,
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

/// `y[t, out] = x[t, in] · w[out, in]ᵀ`, split across two threads when large.
#[inline(always)]
pub(super) fn matmul<const FMA: bool>(x: &[f32], w: &Panels, t: usize, y: &mut Vec<f32>) {
    resize(y, t * w.dims().0);
    w.product::<FMA>(x, t, y);
}

/// `a · b` in 16 lanes.
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
    let tail: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(x, y)| x * y).sum();
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

#[inline(always)]
pub(super) fn axpy<const FMA: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if FMA { x.mul_add(a, *y) } else { *y + a * x };
    }
}
