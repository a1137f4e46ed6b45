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
    // Summed in 8 lanes: a single running sum would keep the loop from being vectorised.
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
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
    }
}
