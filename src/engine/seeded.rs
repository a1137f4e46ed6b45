//! Seeded initial weights: the same seed gives the same untrained model.
//!
//! candle draws a fresh variable's values from its device's generator, which cannot be seeded
//! on the CPU, so a training's seed fixed only the order of its batches. This backend draws each
//! variable from a generator seeded by the run's seed and the variable's name, so the values do
//! not depend on the order in which the model asks for its variables either. No crate does this.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// A variable builder that creates the variables it is asked for in `varmap`, drawn under `seed`.
/// Variables already in `varmap` are returned as they are.
pub fn var_builder(varmap: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend = Seeded { varmap: varmap.clone(), seed };
    VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
}

struct Seeded {
    varmap: VarMap,
    seed: u64,
}

/// A missing variable is drawn here and put in the map; the rest (the shape check, what is
/// returned) is the plain `VarMap` backend's.
impl SimpleBackend for Seeded {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        {
            let mut vars = self
                .varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("variable map poisoned".into()))?;
            if !vars.contains_key(name) {
                let mut rng = StdRng::seed_from_u64(self.seed ^ name_hash(name));
                let values = draw(&init, &shape, &mut rng)?;
                let t = Tensor::from_vec(values, shape.clone(), &Device::Cpu)?
                    .to_dtype(dtype)?
                    .to_device(device)?;
                vars.insert(name.to_string(), Var::from_tensor(&t)?);
            }
        }
        self.varmap.get(shape, name, init, dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        SimpleBackend::get_unchecked(&self.varmap, name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        SimpleBackend::contains_tensor(&self.varmap, name)
    }
}

/// `init`'s distribution (as candle-nn's `Init::var` reads it) drawn for `shape` from `rng`.
fn draw(init: &Init, shape: &Shape, rng: &mut StdRng) -> candle_core::Result<Vec<f32>> {
    let n = shape.elem_count();
    let normal = |mean: f64, stdev: f64, rng: &mut StdRng| {
        let d = Normal::new(mean, stdev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    let uniform = |lo: f64, up: f64, rng: &mut StdRng| {
        (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect()
    };
    match *init {
        Init::Const(c) => Ok(vec![c as f32; n]),
        Init::Randn { mean, stdev } => normal(mean, stdev, rng),
        Init::Uniform { lo, up } => Ok(uniform(lo, up, rng)),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(0.0, std, rng),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    Ok(uniform(-bound, bound, rng))
                }
            }
        }
    }
}

/// FNV-1a: a hash that stays the same across Rust versions and platforms, unlike std's.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::{FanInOut, NonLinearity};

    fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
        let vars = varmap.data().lock().unwrap();
        vars[name].as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn a_seed_fixes_every_variable_whatever_the_order_they_are_asked_for() {
        let kaiming = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::ReLU,
        };
        let build = |seed: u64, names: [&str; 2]| {
            let varmap = VarMap::new();
            let vb = var_builder(&varmap, seed, &Device::Cpu);
            for name in names {
                vb.get_with_hints((64, 32), name, kaiming).unwrap();
            }
            vb.get_with_hints(8, "norm", Init::Const(1.0)).unwrap();
            vb.get_with_hints(4096, "embed", Init::Randn { mean: 0.0, stdev: 0.02 }).unwrap();
            varmap
        };
        let (a, b, c) = (build(7, ["q", "k"]), build(7, ["k", "q"]), build(8, ["q", "k"]));
        for name in ["q", "k", "norm", "embed"] {
            assert_eq!(values(&a, name), values(&b, name), "{name}");
        }
        assert_ne!(values(&a, "q"), values(&c, "q"));
        assert_ne!(values(&a, "q"), values(&a, "k"));
        assert!(values(&a, "norm").iter().all(|&v| v == 1.0));
        // The distributions are candle's: Kaiming uniform within sqrt(6 / fan_in), the normal
        // with its standard deviation.
        let bound = (6.0f32 / 32.0).sqrt();
        assert!(values(&a, "q").iter().all(|v| v.abs() <= bound));
        let e = values(&a, "embed");
        let sd = (e.iter().map(|v| v * v).sum::<f32>() / e.len() as f32).sqrt();
        assert!((sd - 0.02).abs() < 0.002, "{sd}");
    }

    #[test]
    fn a_variable_that_exists_is_returned_and_a_wrong_shape_is_refused() {
        let varmap = VarMap::new();
        let vb = var_builder(&varmap, 1, &Device::Cpu);
        let first = vb.get_with_hints((3, 2), "w", Init::Const(0.5)).unwrap();
        let again = vb.get_with_hints((3, 2), "w", Init::Const(9.0)).unwrap();
        assert_eq!(first.to_vec2::<f32>().unwrap(), again.to_vec2::<f32>().unwrap());
        assert!(vb.get_with_hints((2, 3), "w", Init::Const(0.5)).is_err());
    }
}
