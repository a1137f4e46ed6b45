//! 4-bit weights: each row in blocks of [`GROUP`], each block with its own step and minimum
//! (`w ≈ d·q + m`, `q` in 0..=15): GGUF's `Q4_1`, five bits a weight against `i8`'s eight. A
//! GGUF `Q4_1` base comes back exactly (its blocks are these blocks, and each already spans
//! 0..=15). A decoding step reads every weight from memory and widening weights to `f32` kept
//! the cores busy, so the product works in integers as llama.cpp does: the activations are
//! quantized to `i8` per block, and one instruction multiplies 32 weights by them and sums pairs
//! (`Σ x·(d·q + m) ≈ d·dx·Σ q·qx + m·Σ x`); with AVX-VNNI one `vpdpbusd` does what takes AVX2
//! two instructions.

/// Weights per block (along a row).
pub(super) const GROUP: usize = 32;

/// Blocks' steps (or minimums) converted together.
const CHUNK: usize = 8;
/// Bytes of a block's nibbles.
const NIBBLES: usize = GROUP / 2;

/// A matrix `[n_out, n_in]` (`n_in` a multiple of [`GROUP`]) as rows of blocks.
pub(super) struct Q4 {
    /// Per row, its blocks' 16 bytes each: the low nibbles are a block's first 16 weights, the
    /// high nibbles its last 16.
    q: Vec<u8>,
    /// Per row, its blocks' steps then their minimums (`f16` bits), each run `padded` long
    /// (zeros past `per_row`).
    dm: Vec<u16>,
    per_row: usize,
    padded: usize,
}

/// Rows of `x` as the integer product reads them: per block, `i8` values, their scale, and the
/// exact sum of the block's `x` (scales and sums `padded` per row, as [`Q4::dm`]).
#[derive(Default)]
pub(super) struct Acts {
    q: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<f32>,
}

impl Acts {
    /// Quantizes the `t` rows of `x` (each `n_in` long, a multiple of [`GROUP`]) into `self`,
    /// whose buffers are reused.
    pub(super) fn fill(&mut self, x: &[f32], t: usize, n_in: usize) {
        let padded = (n_in / GROUP).div_ceil(CHUNK) * CHUNK;
        let a = self;
        a.q.resize(t * n_in, 0);
        a.scale.clear();
        a.scale.resize(t * padded, 0.0);
        a.sum.clear();
        a.sum.resize(t * padded, 0.0);
        for (r, row) in x[..t * n_in].chunks_exact(n_in).enumerate() {
            for (b, block) in row.chunks_exact(GROUP).enumerate() {
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let s = max / 127.0;
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let at = r * n_in + b * GROUP;
                // Adding and taking away 1.5·2²³ rounds to the nearest integer (|v| ≤ 127),
                // without a call to `round` per value.
                const ROUND: f32 = 12_582_912.0;
                for (q, v) in a.q[at..at + GROUP].iter_mut().zip(block) {
                    *q = ((v * inv + ROUND) - ROUND) as i8;
                }
                a.scale[r * padded + b] = s;
                a.sum[r * padded + b] = block.iter().sum();
            }
        }
    }
}

impl Q4 {
    /// Quantizes the matrix `[n_out, n_in]` whose element `(o, k)` is `at(o, k)`.
    pub(super) fn gather(n_out: usize, n_in: usize, at: impl Fn(usize, usize) -> f32) -> Q4 {
        let per_row = n_in / GROUP;
        let padded = per_row.div_ceil(CHUNK) * CHUNK;
        let mut q = vec![0u8; n_out * per_row * NIBBLES];
        let mut dm = vec![0u16; n_out * 2 * padded];
        for o in 0..n_out {
            for g in 0..per_row {
                let ks = g * GROUP..(g + 1) * GROUP;
                let (lo, hi) = ks.clone().fold((f32::MAX, f32::MIN), |(lo, hi), k| {
                    let v = at(o, k);
                    (lo.min(v), hi.max(v))
                });
                let (d, m) = (half::f16::from_f32((hi - lo) / 15.0), half::f16::from_f32(lo));
                dm[o * 2 * padded + g] = d.to_bits();
                dm[o * 2 * padded + padded + g] = m.to_bits();
                let (d, m) = (d.to_f32(), m.to_f32());
                let bytes = &mut q[(o * per_row + g) * NIBBLES..(o * per_row + g + 1) * NIBBLES];
                for (i, k) in ks.enumerate() {
                    let v = if d > 0.0 { ((at(o, k) - m) / d).round().clamp(0.0, 15.0) as u8 } else { 0 };
                    bytes[i % NIBBLES] |= v << (4 * (i / NIBBLES));
                }
            }
        }
        Q4 { q, dm, per_row, padded }
    }

    /// Weight `(o, k)`.
    pub(super) fn weight(&self, o: usize, k: usize) -> f32 {
        let (g, i) = (k / GROUP, k % GROUP);
        let byte = self.q[(o * self.per_row + g) * NIBBLES + i % NIBBLES];
        let q = (byte >> (4 * (i / NIBBLES))) & 15;
        let at = o * 2 * self.padded + g;
        let (d, m) = (half::f16::from_bits(self.dm[at]), half::f16::from_bits(self.dm[at + self.padded]));
        d.to_f32() * f32::from(q) + m.to_f32()
    }

    pub(super) fn bytes(&self) -> usize {
        self.q.len() + self.dm.len() * 2
    }

    /// Output rows `rows` of the product for the `t` rows of `x` (`acts` them quantized) into
    /// `y`, whose rows are `stride` long and whose column 0 is output row `col0`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub(super) fn rows_into<const FMA: bool>(
        &self,
        x: &[f32],
        acts: &Acts,
        t: usize,
        rows: std::ops::Range<usize>,
        y: &mut [f32],
        stride: usize,
        col0: usize,
    ) {
        let (nb, padded) = (self.per_row, self.padded);
        let n_in = nb * GROUP;
        // One token row alone would wait on one chain of sums: several weight rows at once keep
        // up to four chains in flight.
        let per_call = match t {
            1 => 4,
            2 => 2,
            _ => 1,
        };
        #[cfg(target_arch = "x86_64")]
        let vnni = FMA && has_avx_vnni();
        let mut o = rows.start;
        while o < rows.end {
            // The rows left over when fewer than `per_call` remain go one at a time.
            let m = if rows.end - o >= per_call { per_call } else { 1 };
            let mut i = 0;
            while i < t {
                let n = (t - i).min(TOKENS);
                #[cfg(target_arch = "x86_64")]
                if FMA {
                    let mut out = [[0f32; TOKENS]; 4];
                    let q = &self.q[o * nb * NIBBLES..(o + m) * nb * NIBBLES];
                    let dm = &self.dm[o * 2 * padded..(o + m) * 2 * padded];
                    let x = (
                        &acts.q[i * n_in..(i + n) * n_in],
                        &acts.scale[i * padded..(i + n) * padded],
                        &acts.sum[i * padded..(i + n) * padded],
                    );
                    // SAFETY: FMA is only set on a CPU with AVX2, FMA and F16C; the slices
                    // hold `m` rows of weights and `n` rows of activations.
                    unsafe { block_rows(m, n, vnni, q, dm, x, &mut out) };
                    for (j, row) in out[..m].iter().enumerate() {
                        for (r, v) in row[..n].iter().enumerate() {
                            y[(i + r) * stride + o + j - col0] = *v;
                        }
                    }
                    i += n;
                    continue;
                }
                // Without AVX2: one weight row at a time, exactly.
                for j in 0..m {
                    for r in 0..n {
                        let xr = &x[(i + r) * n_in..(i + r + 1) * n_in];
                        y[(i + r) * stride + o + j - col0] =
                            xr.iter().enumerate().map(|(k, xv)| xv * self.weight(o + j, k)).sum();
                    }
                }
                i += n;
            }
            o += m;
        }
    }
}

/// Token rows that share each widened block of weights.
const TOKENS: usize = 8;

/// Whether the CPU has AVX-VNNI, whose `vpdpbusd` multiplies and sums four byte pairs in one
/// instruction where AVX2 takes two (`vpmaddubsw`, `vpmaddwd`): a prefill, bound by that
/// arithmetic, took about 9 % less time (30 rows after 300 kept positions on SmolLM2-135M).
#[cfg(target_arch = "x86_64")]
fn has_avx_vnni() -> bool {
    std::is_x86_feature_detected!("avxvnni")
}

/// [`rows_kernel`] for `m` weight rows and `n` token rows, with AVX-VNNI when `vnni`.
///
/// # Safety
/// As [`rows_kernel`]; `vnni` only on a CPU with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_rows(
    m: usize,
    n: usize,
    vnni: bool,
    q: &[u8],
    dm: &[u16],
    x: (&[i8], &[f32], &[f32]),
    out: &mut [[f32; TOKENS]; 4],
) {
    macro_rules! pick {
        ($f:ident) => {
            match (m, n) {
                (4, _) => $f::<4, 1>(q, dm, x, out),
                (2, _) => $f::<2, 2>(q, dm, x, out),
                (_, 8) => $f::<1, 8>(q, dm, x, out),
                (_, 7) => $f::<1, 7>(q, dm, x, out),
                (_, 6) => $f::<1, 6>(q, dm, x, out),
                (_, 5) => $f::<1, 5>(q, dm, x, out),
                (_, 4) => $f::<1, 4>(q, dm, x, out),
                (_, 3) => $f::<1, 3>(q, dm, x, out),
                (_, 2) => $f::<1, 2>(q, dm, x, out),
                _ => $f::<1, 1>(q, dm, x, out),
            }
        };
    }
    if vnni {
        pick!(rows_vnni)
    } else {
        pick!(rows_avx)
    }
}

/// [`rows_kernel`] with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx<const O: usize, const R: usize>(
    q: &[u8],
    dm: &[u16],
    x: (&[i8], &[f32], &[f32]),
    out: &mut [[f32; TOKENS]; 4],
) {
    rows_kernel::<O, R, false>(q, dm, x, out)
}

/// [`rows_kernel`] with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn rows_vnni<const O: usize, const R: usize>(
    q: &[u8],
    dm: &[u16],
    x: (&[i8], &[f32], &[f32]),
    out: &mut [[f32; TOKENS]; 4],
) {
    rows_kernel::<O, R, true>(q, dm, x, out)
}

/// `out[o][r] = Σ_blocks d·dx·Σ q·qx + m·Σ x` for `O` rows of weights (`q`, `dm` as in
/// [`Q4`]) and `R` rows of activations (`x`: values, scales, sums as in [`Acts`]).
///
/// # Safety
/// Inlined only into [`rows_avx`] and [`rows_vnni`] (the CPU has their features); `O·R ≤
/// TOKENS` and `O ≤ 4`; `x` holds `R` rows of the blocks `q` and `dm` hold `O` rows of.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_kernel<const O: usize, const R: usize, const VNNI: bool>(
    q: &[u8],
    dm: &[u16],
    x: (&[i8], &[f32], &[f32]),
    out: &mut [[f32; TOKENS]; 4],
) {
    use std::arch::x86_64::*;
    let (xq, xs, xsum) = x;
    let (nb, padded) = (q.len() / NIBBLES / O, dm.len() / 2 / O);
    let n_in = nb * GROUP;
    assert!(O * R <= TOKENS && O <= 4 && R <= TOKENS && padded >= nb && padded % CHUNK == 0);
    assert!(q.len() >= O * nb * NIBBLES && dm.len() >= O * 2 * padded);
    assert!(xq.len() >= R * n_in && xs.len() >= R * padded && xsum.len() >= R * padded);
    // The low half of a block's 16 bytes keeps its low nibbles, the high half its high ones.
    let shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let (mask, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
    let mut acc = [[_mm256_setzero_ps(); R]; O];
    let mut mins = [[_mm256_setzero_ps(); R]; O];
    // Each block's `d·dx`, read back one at a time (a broadcast from memory costs no shuffle).
    let mut f = [[[0f32; CHUNK]; R]; O];
    let (pq, pdm, pxq) = (q.as_ptr(), dm.as_ptr(), xq.as_ptr());
    for c in 0..padded / CHUNK {
        for o in 0..O {
            let row = pdm.add(o * 2 * padded);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(row.add(c * CHUNK) as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(row.add(padded + c * CHUNK) as *const __m128i));
            for r in 0..R {
                let at = r * padded + c * CHUNK;
                _mm256_storeu_ps(
                    f[o][r].as_mut_ptr(),
                    _mm256_mul_ps(d, _mm256_loadu_ps(xs.as_ptr().add(at))),
                );
                mins[o][r] = _mm256_fmadd_ps(m, _mm256_loadu_ps(xsum.as_ptr().add(at)), mins[o][r]);
            }
        }
        for b in c * CHUNK..(c * CHUNK + CHUNK).min(nb) {
            for o in 0..O {
                let at = pq.add((o * nb + b) * NIBBLES);
                if b % 4 == 0 {
                    _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(PREFETCH));
                }
                let raw = _mm256_broadcastsi128_si256(_mm_loadu_si128(at as *const __m128i));
                let w = _mm256_and_si256(_mm256_srlv_epi32(raw, shift), mask);
                for r in 0..R {
                    let xv = _mm256_loadu_si256(pxq.add(r * n_in + b * GROUP) as *const __m256i);
                    let dot = if VNNI {
                        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, xv)
                    } else {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones)
                    };
                    let s = _mm256_broadcast_ss(&f[o][r][b - c * CHUNK]);
                    acc[o][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[o][r]);
                }
            }
        }
    }
    for o in 0..O {
        for r in 0..R {
            let v = _mm256_add_ps(acc[o][r], mins[o][r]);
            let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            out[o][r] = _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
        }
    }
}

#[cfg(target_arch = "x86_64")]
use super::panels::PREFETCH;

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix already on a `Q4_1` grid (what a GGUF `Q4_1` base dequantizes to) comes back
    /// exactly.
    #[test]
    fn weights_from_a_q4_1_checkpoint_come_back_exactly() {
        let (n_out, n_in) = (20, 64);
        let step = |o: usize, g: usize| half::f16::from_f32(0.01 + 0.003 * (o * 3 + g) as f32).to_f32();
        let min = |o: usize, g: usize| half::f16::from_f32(-0.1 - 0.01 * (o + g) as f32).to_f32();
        // Each block spans 0..=15, as `Q4_1`'s quantizer makes it.
        let q = |o: usize, k: usize| match k % GROUP {
            0 => 0,
            1 => 15,
            _ => (o * 7 + k * 5) % 16,
        };
        let w = |o: usize, k: usize| step(o, k / GROUP) * q(o, k) as f32 + min(o, k / GROUP);
        let m = Q4::gather(n_out, n_in, w);
        for o in 0..n_out {
            for k in 0..n_in {
                let got = m.weight(o, k);
                assert!((got - w(o, k)).abs() <= 1e-6, "({o}, {k}): {got} vs {}", w(o, k));
            }
        }
        // Five bits a weight (the steps and minimums padded to whole chunks).
        assert_eq!(m.bytes() * 8, n_out * n_in * 4 + n_out * 2 * CHUNK * 16);
    }

    /// Both integer kernels sum the same products exactly, for every shape a product calls.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_vnni_kernel_sums_as_the_avx2_one_does() {
        if !(super::super::kernels::has_avx2_fma_f16c() && has_avx_vnni()) {
            eprintln!("skipped: this CPU has no AVX-VNNI");
            return;
        }
        // Eleven blocks a row: a whole chunk of steps and a part of the next.
        let (n_out, n_in, t) = (4, 11 * GROUP, TOKENS);
        let m = Q4::gather(n_out, n_in, |o, k| ((o * 31 + k * 17) % 23) as f32 / 7.0 - 1.5);
        let x: Vec<f32> = (0..t * n_in).map(|i| ((i * 13) % 29) as f32 / 5.0 - 2.8).collect();
        let mut acts = Acts::default();
        acts.fill(&x, t, n_in);
        let (nb, padded) = (m.per_row, m.padded);
        for (rows, tokens) in [(4, 1), (2, 2), (1, 8), (1, 7), (1, 5), (1, 3), (1, 1)] {
            let (q, dm) = (&m.q[..rows * nb * NIBBLES], &m.dm[..rows * 2 * padded]);
            let x = (&acts.q[..tokens * n_in], &acts.scale[..tokens * padded], &acts.sum[..tokens * padded]);
            let (mut avx2, mut vnni) = ([[0f32; TOKENS]; 4], [[0f32; TOKENS]; 4]);
            // SAFETY: the CPU has both kernels' features (checked above); the slices hold
            // `rows` weight rows and `tokens` activation rows.
            unsafe {
                block_rows(rows, tokens, false, q, dm, x, &mut avx2);
                block_rows(rows, tokens, true, q, dm, x, &mut vnni);
            }
            assert_eq!(avx2, vnni, "{rows} rows × {tokens} tokens");
            assert!(avx2[0][0] != 0.0);
        }
    }
}
