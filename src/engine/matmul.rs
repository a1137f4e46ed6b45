//! Row-major `f32` matrix products on plain slices, through the `gemm` crate candle's own
//! matmul uses, for the hand-written training ops: they write results straight into their
//! outputs (or add to them) where a composition of candle ops would allocate, copy and sum.

/// A matrix over a slice, with its strides, so a transposed matrix is a view too.
#[derive(Clone, Copy)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// The row-major `[rows, cols]` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<View<'a>, ShapeMismatch> {
        View::strided(data, rows, cols, cols)
    }

    /// A `[rows, cols]` matrix whose rows start `row_stride` values apart (columns of a wider
    /// matrix: one head of a `[t, heads · head_dim]` tensor).
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<View<'a>, ShapeMismatch> {
        let needed = if rows == 0 { 0 } else { (rows - 1) * row_stride + cols };
        if cols > row_stride || data.len() < needed {
            return Err(ShapeMismatch(format!(
                "{} values cannot hold [{rows}, {cols}] with rows {row_stride} apart",
                data.len()
            )));
        }
        Ok(View { data, rows, cols, row_stride, col_stride: 1 })
    }

    /// The transpose, without moving anything.
    pub fn t(self) -> View<'a> {
        View {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// The shapes did not fit: a bug of the caller, reported rather than read out of bounds.
#[derive(Debug, thiserror::Error)]
#[error("matrix shapes do not fit: {0}")]
pub struct ShapeMismatch(String);

impl From<ShapeMismatch> for candle_core::Error {
    fn from(e: ShapeMismatch) -> Self {
        candle_core::Error::wrap(e)
    }
}

/// `dst = lhs · rhs · scale`, or `dst += lhs · rhs · scale` with `accumulate`, for a row-major
/// `dst` of `[lhs.rows, rhs.cols]`. Large products use rayon's threads as candle's do.
pub fn product(
    dst: &mut [f32],
    lhs: View,
    rhs: View,
    scale: f32,
    accumulate: bool,
) -> Result<(), ShapeMismatch> {
    product_strided(dst, rhs.cols, lhs, rhs, scale, accumulate)
}

/// [`product`] into a `dst` whose rows start `row_stride` values apart.
pub fn product_strided(
    dst: &mut [f32],
    row_stride: usize,
    lhs: View,
    rhs: View,
    scale: f32,
    accumulate: bool,
) -> Result<(), ShapeMismatch> {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let needed = if m == 0 { 0 } else { (m - 1) * row_stride + n };
    if lhs.cols != rhs.rows || dst.len() < needed || n > row_stride {
        return Err(mismatch(lhs, rhs, dst.len(), row_stride));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(row_stride).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return Ok(());
    }
    // SAFETY: `dst` holds `m` rows of `n` values `row_stride` apart (checked above).
    unsafe { gemm_into(dst.as_mut_ptr(), row_stride, lhs, rhs, scale, accumulate) };
    Ok(())
}

/// `lhs · rhs · scale` as a new row-major `[lhs.rows, rhs.cols]` matrix, written once: not
/// zeroed first (see [`super::fill`]).
pub fn product_new(lhs: View, rhs: View, scale: f32) -> Result<Vec<f32>, ShapeMismatch> {
    let (m, n) = (lhs.rows, rhs.cols);
    if lhs.cols != rhs.rows {
        return Err(mismatch(lhs, rhs, m * n, n));
    }
    if m == 0 || n == 0 || lhs.cols == 0 {
        return Ok(vec![0.0; m * n]);
    }
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the spare capacity holds `m · n` values, the `m` rows of `n` written here; gemm
    // does not read what it writes unless asked to accumulate (a test holds it to that).
    unsafe {
        gemm_into(dst.spare_capacity_mut().as_mut_ptr().cast::<f32>(), n, lhs, rhs, scale, false);
        dst.set_len(m * n);
    }
    Ok(dst)
}

fn mismatch(lhs: View, rhs: View, len: usize, row_stride: usize) -> ShapeMismatch {
    ShapeMismatch(format!(
        "[{}, {}] by [{}, {}] into {len} values, rows {row_stride} apart",
        lhs.rows, lhs.cols, rhs.rows, rhs.cols
    ))
}

/// The product through gemm, large ones on rayon's threads as candle's are.
///
/// # Safety
/// `dst` must be valid for writes (and reads, with `accumulate`) of `lhs.rows` rows of
/// `rhs.cols` values `row_stride` apart, `lhs.cols == rhs.rows`, and all sizes non-zero.
unsafe fn gemm_into(dst: *mut f32, row_stride: usize, lhs: View, rhs: View, scale: f32, accumulate: bool) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let parallelism = if m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's promise for `dst`; `View::new` and `View::strided` checked that each
    // slice holds its matrix (a transpose swaps the strides with the sizes), and the strides
    // given to gemm are those, so every read stays inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m).flat_map(|i| (0..n).map(move |j| (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum())).collect()
    }

    #[test]
    fn a_product_that_does_not_accumulate_never_reads_its_destination() {
        // Thin, square and single-row shapes take different paths through gemm.
        for (m, k, n) in [(1, 9, 5), (64, 576, 8), (8, 1024, 40), (70, 33, 129)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let (va, vb) = (View::new(&a, m, k).unwrap(), View::new(&b, k, n).unwrap());
            let want = naive(&a, &b, m, k, n);
            let mut poisoned = vec![f32::NAN; m * n];
            product(&mut poisoned, va, vb, 1.0, false).unwrap();
            let new = product_new(va, vb, 1.0).unwrap();
            for got in [&poisoned, &new] {
                assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3), "[{m}, {k}] by [{k}, {n}]");
            }
        }
        assert!(product_new(View::new(&[1.0; 6], 2, 3).unwrap(), View::new(&[1.0; 6], 2, 3).unwrap(), 1.0)
            .is_err());
        assert_eq!(
            product_new(View::new(&[], 2, 0).unwrap(), View::new(&[], 0, 3).unwrap(), 1.0).unwrap(),
            [0.0; 6]
        );
    }

    #[test]
    fn products_and_transposed_views_agree_with_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut got = vec![1.0; m * n];
        product(&mut got, View::new(&a, m, k).unwrap(), View::new(&b, k, n).unwrap(), 1.0, false).unwrap();
        assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5));
        // bᵀ stored as [n, k] and read through a transposed view; accumulate twice the product.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        product(&mut got, View::new(&a, m, k).unwrap(), View::new(&bt, n, k).unwrap().t(), 2.0, true)
            .unwrap();
        assert!(got.iter().zip(&want).all(|(g, w)| (g - 3.0 * w).abs() < 1e-4));
        let short = product(&mut got, View::new(&a, m, k).unwrap(), View::new(&a, m, k).unwrap(), 1.0, false);
        assert!(short.is_err(), "[5, 7] by [5, 7] does not fit");
        assert!(View::new(&a, m, k + 1).is_err());
        // The middle three columns of a, as a strided view.
        let mid: Vec<f32> = (0..m).flat_map(|i| a[i * k + 2..i * k + 5].to_vec()).collect();
        let (mut x, mut y) = (vec![0.0; m * m], vec![0.0; m * m]);
        let strided = View::strided(&a[2..], m, 3, k).unwrap();
        product(&mut x, strided, strided.t(), 1.0, false).unwrap();
        product(&mut y, View::new(&mid, m, 3).unwrap(), View::new(&mid, m, 3).unwrap().t(), 1.0, false)
            .unwrap();
        assert_eq!(x, y);
        assert!(View::strided(&a[5..], m, 3, k).is_err(), "the last row runs past the end");
        // The same product into the left columns of a wider matrix.
        let mut wide = vec![7.0; m * (m + 2)];
        product_strided(&mut wide, m + 2, strided, strided.t(), 1.0, false).unwrap();
        for i in 0..m {
            assert_eq!(&wide[i * (m + 2)..i * (m + 2) + m], &y[i * m..(i + 1) * m]);
            assert_eq!(&wide[i * (m + 2) + m..(i + 1) * (m + 2)], &[7.0, 7.0], "the rest is untouched");
        }
    }
}
