//! Output buffers the training ops write once, without zeroing them first. A `vec![0.0; n]` of
//! memory the allocator recycles (it keeps freed memory while training, see [`super::allocator`])
//! is a `memset` as long as the op's own writes: on a fine-tuning step of a 135 M base, some
//! 3 GB of zeros and about a tenth of the step. Every function here writes each value of what it
//! returns; gemm's products write theirs through [`super::matmul::product_new`].

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// `len` values computed in parallel, `chunk` at a time: chunk `c` holds what `values(c)`
/// yields (zeros after it if it yields too few; any more are ignored).
pub fn par_collect<I>(len: usize, chunk: usize, values: impl Fn(usize) -> I + Sync) -> Vec<f32>
where
    I: IntoIterator<Item = f32>,
{
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(c, dst)| {
        let mut written = 0;
        for (d, v) in dst.iter_mut().zip(values(c)) {
            d.write(v);
            written += 1;
        }
        dst[written..].iter_mut().for_each(|d| {
            d.write(0.0);
        });
    });
    // SAFETY: the loop above wrote each of the first `len` values (`spare_capacity_mut` holds at
    // least `len` of them, since the capacity is `len` and nothing is stored yet).
    unsafe { out.set_len(len) };
    out
}

/// Two vectors of `len` values filled in one pass, from pairs: [`par_collect`] for an op with
/// two outputs of the same size (both gradients of SwiGLU).
pub fn par_collect2<I>(len: usize, chunk: usize, values: impl Fn(usize) -> I + Sync) -> (Vec<f32>, Vec<f32>)
where
    I: IntoIterator<Item = (f32, f32)>,
{
    let (mut a, mut b) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let chunk = chunk.max(1);
    let (sa, sb): (&mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]) =
        (&mut a.spare_capacity_mut()[..len], &mut b.spare_capacity_mut()[..len]);
    sa.par_chunks_mut(chunk).zip(sb.par_chunks_mut(chunk)).enumerate().for_each(|(c, (da, db))| {
        let mut written = 0;
        for ((x, y), (va, vb)) in da.iter_mut().zip(db.iter_mut()).zip(values(c)) {
            x.write(va);
            y.write(vb);
            written += 1;
        }
        da[written..].iter_mut().chain(db[written..].iter_mut()).for_each(|d| {
            d.write(0.0);
        });
    });
    // SAFETY: as in `par_collect`, for both (their chunks have the same sizes, as do `da`, `db`).
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_written_short_chunks_padded_long_ones_cut() {
        let v = par_collect(10, 4, |c| (0..c + 3).map(move |i| (10 * c + i) as f32));
        // Chunk 0 yields 3 of 4 values, chunk 1 exactly 4, chunk 2 (2 values long) yields 5.
        assert_eq!(v, [0.0, 1.0, 2.0, 0.0, 10.0, 11.0, 12.0, 13.0, 20.0, 21.0]);
        // Chunks of 2, 2 and 1 values yielding 2, 1 and 0 pairs.
        let (a, b) = par_collect2(5, 2, |c| (0..[2, 1, 0][c]).map(move |i| (c as f32 + 1.0, i as f32 + 5.0)));
        assert_eq!(a, [1.0, 1.0, 2.0, 0.0, 0.0]);
        assert_eq!(b, [5.0, 6.0, 5.0, 0.0, 0.0]);
        assert!(par_collect(0, 0, |_| std::iter::empty()).is_empty());
    }
}
