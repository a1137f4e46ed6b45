//! Weight matrices kept in panels of [`WIDTH`] output rows, and the product that reads them.
//! gemm packs its operands on every call: for a decoding step (a few reply candidates against a
//! 2 M-parameter base) that repacking of every weight, not the arithmetic, was most of the time.
//! Here the weights are packed once, when a model is loaded, into the order the kernel reads
//! them, so a product streams each weight once and keeps its sums in registers. gemm has no API
//! for operands packed ahead (nor for `f16` or `i8` weights against `f32` activations), which is
//! why this is written by hand. A decoding step is bound by reading the weights from memory, so
//! mid-sized models keep them as `f16` (half the bytes; F16C widens them in registers) and large
//! ones as 4-bit blocks, read by [`q4`]'s own integer product (`i8` with a scale per row
//! remains for rows that are not whole blocks). A prefill reuses each widened weight for six
//! token rows.

use super::kernels::Precision;
use super::q4::{self, Acts, Q4};

/// Output rows per panel: two AVX vectors of 8.
pub(super) const WIDTH: usize = 16;
/// Token rows per block: 6 rows × 2 vectors of sums, with the 2 weight vectors, fill 14 of the
/// 16 AVX registers.
const ROWS: usize = 6;
/// Weight bytes from which a product splits across the two threads of [`super::pair`]: a
/// decoding step is bound by reading the weights, and two cores read them faster than one
/// (a 135 M-parameter `i8` base: 13.4 ms a token on one thread, 7.4 on two).
pub(super) const SPLIT_BYTES: usize = 1 << 17;
/// Multiply-adds from which a product splits however small its weights (a prefill).
pub(super) const SPLIT_WORK: usize = 1 << 20;
/// How far ahead of its use each cache line of weights is asked for. The hardware prefetcher
/// stops at page boundaries; asking ahead took a decoding step of a 135 M-parameter `i8` base
/// from 19 ms to 12 (1 KB ahead) and 11.5 (2 KB; 4 KB: no better).
pub(super) const PREFETCH: usize = 2048;

/// A matrix `[n_out, n_in]` as panels: panel `p` holds rows `p·WIDTH..` column by column
/// (element `p·n_in·WIDTH + k·WIDTH + j` is `w[p·WIDTH + j][k]`), the last one padded with zeros.
pub(super) struct Panels {
    data: Data,
    n_out: usize,
    n_in: usize,
}

enum Data {
    F32(Vec<f32>),
    /// `f16` bits.
    F16(Vec<u16>),
    /// Symmetric `i8`, row `o` scaled by `scale[o]` (padded to whole panels).
    I8 {
        q: Vec<i8>,
        scale: Vec<f32>,
    },
    /// Rows of 4-bit blocks ([`q4`]), not panels.
    Q4(Q4),
}

impl Panels {
    /// Packs the row-major `w` (rows of `n_in`), held as `precision` says.
    pub(super) fn new(w: &[f32], n_in: usize, precision: Precision) -> Panels {
        let n_out = w.len().checked_div(n_in).unwrap_or(0);
        Panels::gather(n_out, n_in, precision, |o, k| w[o * n_in + k])
    }

    /// Packs the matrix `[n_out, n_in]` whose element `(o, k)` is `at(o, k)`.
    pub(super) fn gather(
        n_out: usize,
        n_in: usize,
        precision: Precision,
        at: impl Fn(usize, usize) -> f32,
    ) -> Panels {
        let len = n_out.div_ceil(WIDTH) * n_in * WIDTH;
        let place = |o: usize, k: usize| (o / WIDTH) * n_in * WIDTH + k * WIDTH + o % WIDTH;
        let data = match precision {
            Precision::Q4 if n_in > 0 && n_in.is_multiple_of(q4::GROUP) => {
                Data::Q4(Q4::gather(n_out, n_in, at))
            }
            // Rows that are not whole blocks: `i8`.
            Precision::I8 | Precision::Q4 => {
                let mut q = vec![0i8; len];
                let mut scale = vec![1f32; n_out.div_ceil(WIDTH) * WIDTH];
                for (o, s) in scale.iter_mut().enumerate().take(n_out) {
                    let max = (0..n_in).fold(0f32, |m, k| m.max(at(o, k).abs()));
                    *s = if max > 0.0 { max / 127.0 } else { 1.0 };
                    for k in 0..n_in {
                        q[place(o, k)] = (at(o, k) / *s).round().clamp(-127.0, 127.0) as i8;
                    }
                }
                Data::I8 { q, scale }
            }
            Precision::F16 => {
                let mut d = vec![0u16; len];
                for o in 0..n_out {
                    for k in 0..n_in {
                        d[place(o, k)] = half::f16::from_f32(at(o, k)).to_bits();
                    }
                }
                Data::F16(d)
            }
            Precision::F32 => {
                let mut d = vec![0f32; len];
                for o in 0..n_out {
                    for k in 0..n_in {
                        d[place(o, k)] = at(o, k);
                    }
                }
                Data::F32(d)
            }
        };
        Panels { data, n_out, n_in }
    }

    /// `(n_out, n_in)`.
    pub(super) fn dims(&self) -> (usize, usize) {
        (self.n_out, self.n_in)
    }

    pub(super) fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(d) => d.len() * 4,
            Data::F16(d) => d.len() * 2,
            Data::I8 { q, scale } => q.len() + scale.len() * 4,
            Data::Q4(w) => w.bytes(),
        }
    }

    /// Row `r` into `out` (an embedding lookup).
    pub(super) fn row_into(&self, r: usize, out: &mut [f32]) {
        let (p, j) = (r / WIDTH, r % WIDTH);
        let at = |k: usize| p * self.n_in * WIDTH + k * WIDTH + j;
        for (o, k) in out.iter_mut().zip(0..self.n_in) {
            *o = match &self.data {
                Data::F32(d) => d[at(k)],
                Data::F16(d) => half::f16::from_bits(d[at(k)]).to_f32(),
                Data::I8 { q, scale } => f32::from(q[at(k)]) * scale[r],
                Data::Q4(w) => w.weight(r, k),
            };
        }
    }

    /// Panel `p`'s elements.
    fn panel(&self, p: usize) -> Panel<'_> {
        let range = p * self.n_in * WIDTH..(p + 1) * self.n_in * WIDTH;
        match &self.data {
            Data::F32(d) => Panel::F32(&d[range]),
            Data::F16(d) => Panel::F16(&d[range]),
            Data::I8 { q, .. } => Panel::I8(&q[range]),
            // Read by rows in `panels_into`.
            Data::Q4(_) => Panel::F32(&[]),
        }
    }

    /// `y[t, n_out] = x[t, n_in] · wᵀ`, split by panels across two threads when large.
    /// `FMA` may only be set on a CPU with AVX2, FMA and F16C.
    pub(super) fn product<const FMA: bool>(&self, x: &[f32], t: usize, y: &mut [f32]) {
        let (n_in, n_out) = (self.n_in, self.n_out);
        if x.len() < t * n_in || y.len() < t * n_out {
            return;
        }
        if n_in == 0 {
            y[..t * n_out].fill(0.0);
            return;
        }
        // This thread's buffers, kept between products: fresh ones the size of a prefill's
        // cost page faults every time.
        thread_local! {
            static BUFFERS: std::cell::RefCell<(Acts, Vec<f32>)> = Default::default();
        }
        BUFFERS.with_borrow_mut(|(acts, part)| {
            // 4-bit weights multiply `x` quantized.
            if let (Data::Q4(_), true) = (&self.data, FMA) {
                acts.fill(x, t, n_in);
            }
            let acts = &*acts;
            let panels = n_out.div_ceil(WIDTH);
            if panels < 2 || (self.bytes() < SPLIT_BYTES && t * n_in * n_out < SPLIT_WORK) {
                self.panels_into::<FMA>(x, acts, t, 0..panels, y, n_out, 0);
                return;
            }
            // Half the panels on the helper thread, into its own buffer.
            let half = panels / 2;
            let cols = half * WIDTH;
            part.resize(t * cols, 0.0);
            super::pair::join(
                || self.panels_into::<FMA>(x, acts, t, 0..half, part, cols, 0),
                || self.panels_into::<FMA>(x, acts, t, half..panels, y, n_out, 0),
            );
            for (i, row) in part.chunks_exact(cols).enumerate() {
                y[i * n_out..i * n_out + cols].copy_from_slice(row);
            }
        });
    }

    /// Panels `range` of the product into `y`, whose rows are `stride` long and whose column 0
    /// is output row `col0` (`acts`: `x` quantized, for 4-bit weights).
    #[allow(clippy::too_many_arguments)]
    fn panels_into<const FMA: bool>(
        &self,
        x: &[f32],
        acts: &Acts,
        t: usize,
        range: std::ops::Range<usize>,
        y: &mut [f32],
        stride: usize,
        col0: usize,
    ) {
        let n_in = self.n_in;
        if let Data::Q4(w) = &self.data {
            let rows = range.start * WIDTH..(range.end * WIDTH).min(self.n_out);
            w.rows_into::<FMA>(x, acts, t, rows, y, stride, col0);
            return;
        }
        let mut sums = [[0f32; WIDTH]; ROWS];
        for p in range {
            let panel = self.panel(p);
            let valid = (self.n_out - p * WIDTH).min(WIDTH);
            let mut i = 0;
            while i < t {
                let rows = (t - i).min(ROWS);
                block::<FMA>(&x[i * n_in..(i + rows) * n_in], n_in, rows, &panel, &mut sums);
                if let Data::I8 { scale, .. } = &self.data {
                    let scale = &scale[p * WIDTH..(p + 1) * WIDTH];
                    for s in &mut sums[..rows] {
                        s.iter_mut().zip(scale).for_each(|(v, f)| *v *= f);
                    }
                }
                for (r, s) in sums[..rows].iter().enumerate() {
                    let at = (i + r) * stride + p * WIDTH - col0;
                    y[at..at + valid].copy_from_slice(&s[..valid]);
                }
                i += rows;
            }
        }
    }
}

/// One panel's elements.
enum Panel<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    /// Unscaled: the caller applies the rows' scales to the sums.
    I8(&'a [i8]),
}

/// `sums[r] = x[r] · panel` for the `rows` rows of `x` (each `n_in` long).
#[inline(always)]
fn block<const FMA: bool>(
    x: &[f32],
    n_in: usize,
    rows: usize,
    panel: &Panel<'_>,
    sums: &mut [[f32; WIDTH]; ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is only set on a CPU with AVX2, FMA and F16C; `x` holds `rows` rows of
        // `n_in` and the panel holds `n_in` columns of WIDTH (the callers slice them so).
        unsafe {
            // Each block function is compiled for each row count: its sums stay in registers.
            macro_rules! by_rows {
                ($block:ident, $p:expr) => {
                    match rows {
                        6 => $block::<6>(x, n_in, $p, sums),
                        5 => $block::<5>(x, n_in, $p, sums),
                        4 => $block::<4>(x, n_in, $p, sums),
                        3 => $block::<3>(x, n_in, $p, sums),
                        2 => $block::<2>(x, n_in, $p, sums),
                        _ => $block::<1>(x, n_in, $p, sums),
                    }
                };
            }
            match panel {
                Panel::F32(p) => by_rows!(block_f32, p),
                Panel::F16(p) => by_rows!(block_f16, p),
                Panel::I8(p) => by_rows!(block_i8, p),
            }
        }
        return;
    }
    let weight = |k: usize, j: usize| match panel {
        Panel::F32(p) => p[k * WIDTH + j],
        Panel::F16(p) => half::f16::from_bits(p[k * WIDTH + j]).to_f32(),
        Panel::I8(p) => f32::from(p[k * WIDTH + j]),
    };
    for (r, s) in sums[..rows].iter_mut().enumerate() {
        *s = [0f32; WIDTH];
        for k in 0..n_in {
            let xv = x[r * n_in + k];
            for (j, s) in s.iter_mut().enumerate() {
                *s += xv * weight(k, j);
            }
        }
    }
}

/// The AVX2 block for one element type: `$load(pointer, k)` gives the two vectors of column `k`.
macro_rules! avx_block {
    ($name:ident, $elem:ty, $load:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(
            x: &[f32],
            n_in: usize,
            panel: &[$elem],
            sums: &mut [[f32; WIDTH]; ROWS],
        ) {
            use std::arch::x86_64::*;
            assert!(x.len() >= R * n_in && panel.len() >= n_in * WIDTH && R <= ROWS);
            let (px, pw) = (x.as_ptr(), panel.as_ptr());
            if R == 1 {
                // One row (a decoding step) has only two chains of sums, each waiting on its
                // last multiply-add: four columns at a time keep eight chains in flight.
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut k = 0;
                while k + 4 <= n_in {
                    for u in 0..4 {
                        if (u * WIDTH * std::mem::size_of::<$elem>()) % 64 == 0 {
                            let ahead = pw.wrapping_add((k + u) * WIDTH) as *const i8;
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(PREFETCH));
                        }
                        // SAFETY: k + u < n_in, as below.
                        let (w0, w1): (__m256, __m256) = $load(pw, k + u);
                        let xv = _mm256_broadcast_ss(&*px.add(k + u));
                        acc[2 * u] = _mm256_fmadd_ps(xv, w0, acc[2 * u]);
                        acc[2 * u + 1] = _mm256_fmadd_ps(xv, w1, acc[2 * u + 1]);
                    }
                    k += 4;
                }
                while k < n_in {
                    // SAFETY: k < n_in.
                    let (w0, w1): (__m256, __m256) = $load(pw, k);
                    let xv = _mm256_broadcast_ss(&*px.add(k));
                    acc[0] = _mm256_fmadd_ps(xv, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(xv, w1, acc[1]);
                    k += 1;
                }
                let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[4], acc[6]));
                let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[3]), _mm256_add_ps(acc[5], acc[7]));
                _mm256_storeu_ps(sums[0].as_mut_ptr(), lo);
                _mm256_storeu_ps(sums[0].as_mut_ptr().add(8), hi);
                return;
            }
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            // Columns per cache line of weights.
            let per_line = (64 / (WIDTH * std::mem::size_of::<$elem>())).max(1);
            for k in 0..n_in {
                if k % per_line == 0 {
                    let ahead = pw.wrapping_add(k * WIDTH) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(PREFETCH));
                }
                // SAFETY: k < n_in, so the loads stay within the panel and every x read within
                // its row (checked above).
                let (w0, w1): (__m256, __m256) = $load(pw, k);
                for r in 0..R {
                    let xv = _mm256_broadcast_ss(&*px.add(r * n_in + k));
                    lo[r] = _mm256_fmadd_ps(xv, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(xv, w1, hi[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(sums[r].as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(sums[r].as_mut_ptr().add(8), hi[r]);
            }
        }
    };
}

avx_block!(block_f32, f32, |pw: *const f32, k: usize| unsafe {
    use std::arch::x86_64::*;
    (_mm256_loadu_ps(pw.add(k * WIDTH)), _mm256_loadu_ps(pw.add(k * WIDTH + 8)))
});
avx_block!(block_f16, u16, |pw: *const u16, k: usize| unsafe {
    use std::arch::x86_64::*;
    let at = pw.add(k * WIDTH) as *const __m128i;
    (_mm256_cvtph_ps(_mm_loadu_si128(at)), _mm256_cvtph_ps(_mm_loadu_si128(at.add(1))))
});

avx_block!(block_i8, i8, |pw: *const i8, k: usize| unsafe {
    use std::arch::x86_64::*;
    let v = _mm_loadu_si128(pw.add(k * WIDTH) as *const __m128i);
    (
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v))),
    )
});

#[cfg(test)]
mod tests;
