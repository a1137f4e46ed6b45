//! The exponential of the serving path's softmaxes, written so the compiler vectorises it: libm's
//! `expf` is one call per element, and a reply takes a whole-vocabulary softmax per candidate
//! per token, and one over the prompt per head and layer. No crate offers a vectorisable `f32`
//! exp without pulling in a SIMD framework, so this is Cephes' `expf`, by hand.

/// `e^x`, within 4e-7 of it relatively; 0 below -87.3 (where `f32` runs out of normal
/// numbers), and never more than `e^88.3`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Rounds to the nearest integer with one add and one subtract (exact below 2^22).
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.3;
    let under = x < LOW;
    let x = x.clamp(LOW, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // x − n·ln 2 in two steps (Cody–Waite), so the reduced argument keeps its precision.
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // 2^n, built from its exponent bits (n is within the normal range after the clamp).
    let e = y * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        e
    }
}

/// `xs[i] = e^(xs[i] − max)`; returns their sum.
#[inline(always)]
pub fn exp_shifted(xs: &mut [f32], max: f32) -> f32 {
    xs.iter_mut().for_each(|x| *x = exp(*x - max));
    sum(xs)
}

/// `1 / (1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// The sum of `xs`, in 8 lanes: one running sum is a chain of dependent adds the compiler may
/// not reorder, so it is neither vectorised nor pipelined.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `Σ a[i]·b[i]` over the shorter of the two, in 8 lanes like [`sum`].
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(1000.0).is_finite());
        let mut xs = [1.0f32, 2.0, 3.0];
        let sum = exp_shifted(&mut xs, 3.0);
        assert!((sum - (1.0 + (-1f32).exp() + (-2f32).exp())).abs() < 1e-6);
        assert!((sigmoid(0.7) - 1.0 / (1.0 + (-0.7f32).exp())).abs() < 1e-7);
    }

    #[test]
    fn lane_sums_match_plain_sums_at_every_length() {
        for n in [0, 1, 7, 8, 9, 16, 23, 128] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-5, "dot at {n}");
            assert!((dot(&a, &b[..n / 2]) - dot(&a[..n / 2], &b)).abs() < 1e-6, "the shorter length");
            assert!((super::sum(&a) - a.iter().sum::<f32>()).abs() < 1e-5, "sum at {n}");
        }
    }
}
