//! The products of every precision against the plain definition.

use super::*;

fn reference(x: &[f32], w: &[f32], t: usize, n_in: usize) -> Vec<f32> {
    let n_out = w.len() / n_in;
    let mut y = vec![0f32; t * n_out];
    for i in 0..t {
        for o in 0..n_out {
            y[i * n_out + o] = (0..n_in).map(|k| x[i * n_in + k] * w[o * n_in + k]).sum();
        }
    }
    y
}

#[test]
fn products_match_the_plain_definition_for_every_shape() {
    // Output counts around the panel width, token counts around the block, and one product
    // large enough to be split across threads.
    for (t, n_in, n_out) in [
        (1, 3, 1),
        (1, 16, 17),
        (2, 33, 15),
        (6, 40, 32),
        (7, 24, 50),
        (13, 64, 100),
        (8, 128, 1100),
        (1, 64, 40),
        (2, 32, 16),
        (4, 96, 33),
        (1, 96, 37),
        (2, 64, 35),
    ] {
        let w: Vec<f32> = (0..n_out * n_in).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let x: Vec<f32> = (0..t * n_in).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let want = reference(&x, &w, t, n_in);
        for (precision, tolerance) in
            [(Precision::F32, 1e-4), (Precision::F16, 2e-2), (Precision::I8, 0.2), (Precision::Q4, 1.5)]
        {
            let p = Panels::new(&w, n_in, precision);
            for fma in [false, true] {
                #[cfg(target_arch = "x86_64")]
                if fma && !super::super::kernels::has_avx2_fma_f16c() {
                    continue;
                }
                #[cfg(not(target_arch = "x86_64"))]
                if fma {
                    continue;
                }
                let mut y = vec![f32::NAN; t * n_out];
                if fma {
                    p.product::<true>(&x, t, &mut y);
                } else {
                    p.product::<false>(&x, t, &mut y);
                }
                let diff = want.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(diff < tolerance, "t {t}, {n_in} → {n_out}, fma {fma}, {precision:?}: off by {diff}");
            }
            let mut row = vec![0f32; n_in];
            p.row_into(n_out - 1, &mut row);
            let diff =
                row.iter().zip(&w[(n_out - 1) * n_in..]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let exact = match precision {
                Precision::F32 => 0.0,
                Precision::F16 => 1e-3,
                Precision::I8 => 1.0 / 127.0,
                // Half a step of 2/15, or i8's when the rows are not whole blocks.
                Precision::Q4 => 1.0 / 15.0 + 1e-3,
            };
            assert!(diff <= exact, "{precision:?} row {diff}");
        }
    }
}
