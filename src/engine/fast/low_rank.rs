//! A guild's low-rank adapters on the serving path: `y += (x aᵀ) bᵀ` beside each projection of
//! the shared base. `a` has only `rank` rows (8 by default), too few for the product's panels of
//! 16 output rows, which would pad it to twice its size (2.4 MB a guild on SmolLM2-135M): it is
//! kept as plain `f16` rows and multiplied by dot products, a few thousand multiply-adds a token.

use super::kernels::{add, matmul, resize, Precision};
use super::panels::Panels;

/// One projection's adapter, its scale folded into `b`.
pub(super) struct LowRank {
    /// `[rank, in]`
    pub(super) a: Rows,
    /// `[out, rank]`
    pub(super) b: Panels,
}

impl LowRank {
    /// `a` (`[rank, in]`, row-major) and `b` (`[out, rank]`, row-major, scaled), both kept as `f16`.
    pub(super) fn new(a: &[f32], b: &[f32], rank: usize) -> LowRank {
        LowRank {
            a: Rows::new(a, a.len().checked_div(rank).unwrap_or(0)),
            b: Panels::new(b, rank, Precision::F16),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.a.bits.len() * 2 + self.b.bytes()
    }
}

/// A small matrix as `f16` rows.
pub(super) struct Rows {
    bits: Vec<u16>,
    n_in: usize,
}

impl Rows {
    fn new(w: &[f32], n_in: usize) -> Rows {
        Rows { bits: w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(), n_in }
    }

    /// `(rows, n_in)`.
    pub(super) fn dims(&self) -> (usize, usize) {
        (self.bits.len().checked_div(self.n_in).unwrap_or(0), self.n_in)
    }

    /// `y[t, rows] = x[t, n_in] · selfᵀ`. `FMA` may only be set on a CPU with AVX2, FMA and F16C.
    #[inline(always)]
    fn product<const FMA: bool>(&self, x: &[f32], t: usize, y: &mut Vec<f32>) {
        let (rows, n_in) = self.dims();
        resize(y, t * rows);
        if n_in == 0 {
            y.fill(0.0);
            return;
        }
        for (xr, yr) in x.chunks_exact(n_in).take(t).zip(y.chunks_exact_mut(rows.max(1))) {
            for (o, w) in yr.iter_mut().zip(self.bits.chunks_exact(n_in)) {
                *o = dot_f16::<FMA>(xr, w);
            }
        }
    }
}

/// `x · w`, `w` as `f16` bits.
#[inline(always)]
fn dot_f16<const FMA: bool>(x: &[f32], w: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only set on a CPU with AVX2, FMA and F16C.
        return unsafe { dot_f16_avx(x, w) };
    }
    x.iter().zip(w).map(|(&a, &b)| a * half::f16::from_bits(b).to_f32()).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx(x: &[f32], w: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(w.len());
    let (px, pw) = (x.as_ptr(), w.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut k = 0;
    while k + 16 <= n {
        // SAFETY: k + 16 <= n, so both loads stay within `x` and `w`.
        for (h, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(k + 8 * h) as *const __m128i));
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(k + 8 * h)), wv, *a);
        }
        k += 16;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[0], acc[1]));
    let tail: f32 = x[k..n].iter().zip(&w[k..n]).map(|(&a, &b)| a * half::f16::from_bits(b).to_f32()).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `y[t, out] += (x[t, in] aᵀ) bᵀ`: an adapter beside its projection.
#[inline(always)]
pub(super) fn low_rank<const FMA: bool>(
    ad: &LowRank,
    x: &[f32],
    t: usize,
    y: &mut [f32],
    xa: &mut Vec<f32>,
    out: &mut Vec<f32>,
) {
    ad.a.product::<FMA>(x, t, xa);
    matmul::<FMA>(xa, &ad.b, t, out);
    add(y, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fast::kernels::has_avx2_fma_f16c;

    #[test]
    fn rows_multiply_like_the_rounded_matrix_with_and_without_avx() {
        // 37 inputs: two whole blocks of 16 and a tail; 3 token rows, rank 5.
        let (rank, n_in, t) = (5, 37, 3);
        let a: Vec<f32> = (0..rank * n_in).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
        let x: Vec<f32> = (0..t * n_in).map(|i| ((i * 104_729) % 300) as f32 / 150.0 - 1.0).collect();
        let rows = Rows::new(&a, n_in);
        assert_eq!(rows.dims(), (rank, n_in));
        // Two bytes a weight, no padding (panels would have held 16 rows).
        let b = vec![0.5f32; 32 * rank];
        assert_eq!(LowRank::new(&a, &b, rank).bytes(), rank * n_in * 2 + 32 * rank * 2);
        let rounded = |v: f32| f64::from(half::f16::from_f32(v).to_f32());
        let want: Vec<f64> = (0..t * rank)
            .map(|i| {
                let (r, j) = (i / rank, i % rank);
                (0..n_in).map(|k| f64::from(x[r * n_in + k]) * rounded(a[j * n_in + k])).sum()
            })
            .collect();
        let mut y = Vec::new();
        let check = |y: &[f32]| {
            let worst = y.iter().zip(&want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-4, "off by {worst}");
        };
        rows.product::<false>(&x, t, &mut y);
        check(&y);
        if has_avx2_fma_f16c() {
            y.clear();
            rows.product::<true>(&x, t, &mut y);
            check(&y);
        }
    }
}
