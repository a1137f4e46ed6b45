//! A frozen projection with its adapter as one op with a hand-written backward pass (CPU):
//! `y = x wᵀ + s · (x aᵀ) bᵀ`. Composed from candle ops it took eight nodes forwards, each
//! allocating, and candle's backward computes the gradient of every product's right-hand side,
//! a frozen weight's included, then sums each contribution into a zeroed buffer. Here the
//! products write straight into the output and the backward pass computes only `x`'s, `a`'s and
//! `b`'s gradients. `tests` holds it to candle's autograd on the composed version.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use crate::engine::matmul::{product, product_new, View};
use crate::engine::ops::{f32s as values, with_values, with_values3, Stash};

/// The op for one frozen weight `w` `[out, in]` and the adapter's scale.
pub(super) struct LoraLinear {
    w: Tensor,
    scale: f32,
    /// `x aᵀ` from the forward pass, for the backward one.
    h: Stash<Vec<f32>>,
}

impl LoraLinear {
    /// `x wᵀ + scale · (x aᵀ) bᵀ` for `x` `[.., in]`, `a` `[r, in]` and `b` `[out, r]`.
    pub(super) fn apply(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
        let op = LoraLinear { w: w.contiguous()?, scale: scale as f32, h: Default::default() };
        x.contiguous()?.apply_op3(&a.contiguous()?, &b.contiguous()?, op)
    }

    /// The sizes `(rows, in, out, rank)`, checked against each other.
    fn sizes(&self, x: &Layout, a: &Layout, b: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (out, inp) = self.w.dims2()?;
        let (rank, a_in) = a.shape().dims2()?;
        let (b_out, b_rank) = b.shape().dims2()?;
        let x_in = x.dims().last().copied().unwrap_or(0);
        if (a_in, b_out, b_rank, x_in) != (inp, out, rank, inp) || inp == 0 {
            bail!(
                "lora-linear: x {:?}, w [{out}, {inp}], a {:?}, b {:?} do not fit",
                x.dims(),
                a.dims(),
                b.dims()
            )
        }
        Ok((x.shape().elem_count() / inp, inp, out, rank))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "mynah-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, inp, out, rank) = self.sizes(l1, l2, l3)?;
        let (x, a, b) =
            (View::new(values(s1, l1)?, n, inp)?, View::new(values(s2, l2)?, rank, inp)?, values(s3, l3)?);
        let mut y = with_values(&self.w, |w| Ok(product_new(x, View::new(w, out, inp)?.t(), 1.0)?))?;
        let h = product_new(x, a.t(), 1.0)?;
        product(&mut y, View::new(&h, n, rank)?, View::new(b, out, rank)?.t(), self.scale, true)?;
        self.h.put(h);
        let mut dims = l1.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, inp, out, rank) = self.sizes(x.layout(), a.layout(), b.layout())?;
        let s = self.scale;
        let x_needs = x.track_op();
        let saved = self.h.take();
        let dy = dy.contiguous()?;
        let (da, db, dx) = with_values3(x, a, b, |xv, av, bv| {
            with_values(&dy, |dyv| {
                let (xm, am, bm) =
                    (View::new(xv, n, inp)?, View::new(av, rank, inp)?, View::new(bv, out, rank)?);
                let dym = View::new(dyv, n, out)?;
                // h = x aᵀ as the forward pass left it, and g = s · dy b.
                let h = match saved {
                    Some(h) if h.len() == n * rank => h,
                    _ => product_new(xm, am.t(), 1.0)?,
                };
                let g = product_new(dym, bm, s)?;
                let (hm, gm) = (View::new(&h, n, rank)?, View::new(&g, n, rank)?);
                // db = s · dyᵀ h, da = gᵀ x, dx = dy w + g a.
                let db = product_new(dym.t(), hm, s)?;
                let da = product_new(gm.t(), xm, 1.0)?;
                let dx = if x_needs {
                    let mut dx =
                        with_values(&self.w, |w| Ok(product_new(dym, View::new(w, out, inp)?, 1.0)?))?;
                    product(&mut dx, gm, am, 1.0, true)?;
                    Some(dx)
                } else {
                    None
                };
                Ok((da, db, dx))
            })
        })?;
        let dev = x.device();
        let dx = dx.map(|dx| Tensor::from_vec(dx, x.shape(), dev)).transpose()?;
        Ok((dx, Some(Tensor::from_vec(da, (rank, inp), dev)?), Some(Tensor::from_vec(db, (out, rank), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::engine::ops::max_diff;

    #[test]
    fn the_fused_projection_gives_candles_values_and_gradients() {
        let dev = Device::Cpu;
        let (inp, out, rank, scale) = (12, 7, 3, 2.5);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, inp), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (rank, inp), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (out, rank), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 5, out), &dev).unwrap();
        let linear = crate::engine::model::linear;
        let composed = (linear(x.as_tensor(), &w).unwrap()
            + (linear(&linear(x.as_tensor(), a.as_tensor()).unwrap(), b.as_tensor()).unwrap() * scale)
                .unwrap())
        .unwrap();
        let fused = LoraLinear::apply(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), scale).unwrap();
        assert_eq!(fused.dims(), &[2, 5, out]);
        assert!(max_diff(&composed, &fused) < 1e-4, "values differ");
        let grads = |y: &Tensor| (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let (want, got) = (grads(&composed), grads(&fused));
        for (name, t) in [("x", x.as_tensor()), ("a", a.as_tensor()), ("b", b.as_tensor())] {
            let d = max_diff(want.get(t).unwrap(), got.get(t).unwrap());
            assert!(d < 1e-4, "the gradient of {name} differs by {d}");
        }
        // An input that needs no gradient gets none computed.
        let constant = x.as_tensor().detach();
        let y = LoraLinear::apply(&constant, &w, a.as_tensor(), b.as_tensor(), scale).unwrap();
        let g = grads(&y);
        assert!(g.get(&constant).is_none() && g.get(a.as_tensor()).is_some());
        let bad = LoraLinear::apply(x.as_tensor(), &w, b.as_tensor(), a.as_tensor(), scale);
        assert!(bad.is_err(), "swapped adapters do not fit");
    }
}
