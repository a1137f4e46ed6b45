//! Low-rank adapters (LoRA): fine-tuning a pretrained base by training, beside each frozen
//! projection `w`, two small matrices `a` `[r, in]` and `b` `[out, r]` whose product, scaled by
//! `alpha / r`, is added to `w`. A run stores only the adapters (a few MB) and names its base.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::EngineError;

/// The projections that get adapters, in every layer (attention and MLP).
pub const TARGETS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The adapters' shape (`MYNAH_LORA_RANK`, `MYNAH_LORA_ALPHA`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
}

impl Default for LoraSpec {
    fn default() -> Self {
        LoraSpec { rank: 8, alpha: 16.0 }
    }
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank.max(1) as f64
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        if !((1..=256).contains(&self.rank) && self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(EngineError::BadConfig(format!(
                "LoRA rank {} and alpha {} (expected a rank of 1 to 256 and a positive alpha)",
                self.rank, self.alpha
            )));
        }
        Ok(())
    }
}

/// One projection's adapter.
pub struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Adapter {
    /// Fresh variables `lora_a` (small random, as PEFT starts them) and `lora_b` (zero, so the
    /// adapted model starts exactly as the base).
    pub fn new(spec: &LoraSpec, inp: usize, out: usize, vb: &VarBuilder) -> Result<Adapter, EngineError> {
        let bound = 1.0 / (inp as f64).sqrt();
        let a = vb.pp("lora_a").get_with_hints(
            (spec.rank, inp),
            "weight",
            Init::Uniform { lo: -bound, up: bound },
        )?;
        let b = vb.pp("lora_b").get_with_hints((out, spec.rank), "weight", Init::Const(0.0))?;
        Ok(Adapter { a, b, scale: spec.scale() })
    }

    /// The adapter without gradient tracking.
    pub fn detached(&self) -> Adapter {
        Adapter { a: self.a.detach(), b: self.b.detach(), scale: self.scale }
    }

    /// `scale · (x a^T) b^T`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::model::linear(&super::model::linear(x, &self.a)?, &self.b)? * self.scale
    }

    /// `scale · b a`, the change the adapter makes to its weight.
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
    }
}

/// `x wᵀ` for a frozen weight `w` `[out, in]`, whose backward pass gives `x` its gradient and
/// computes none for `w`. candle's own matmul backward always computes both sides' gradients,
/// even for a constant: beside adapters that is a third of the training work thrown away. The
/// product itself is candle's (the copies in and out are small next to it). CPU only.
pub struct FrozenLinear {
    w: Tensor,
}

impl FrozenLinear {
    /// `x wᵀ` through the op, for a contiguous `x` on the CPU.
    pub fn apply(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(FrozenLinear { w: w.clone() })
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { bail!("frozen-linear takes f32 tensors") };
        let Some((a, b)) = l.contiguous_offsets() else { bail!("frozen-linear takes a contiguous tensor") };
        let x = Tensor::from_slice(&v[a..b], l.shape(), &candle_core::Device::Cpu)?;
        let y = super::model::linear(&x, &self.w)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // dx = dy · w (`linear` multiplies by the transpose of what it is given).
        Ok(Some(super::model::linear(dy, &self.w.t()?)?))
    }
}

/// The names of the adapter tensors of a model with `layers` layers.
pub fn tensor_names(layers: usize) -> Vec<String> {
    (0..layers)
        .flat_map(|i| {
            TARGETS
                .iter()
                .flat_map(move |t| ["lora_a", "lora_b"].map(|ab| format!("model.layers.{i}.{t}.{ab}.weight")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::engine::{train, Preset};

    fn last_logits(model: &crate::engine::model::Model, ids: &Tensor) -> Vec<f32> {
        model.forward_train(ids).unwrap().i((0, 3)).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn adapters_start_as_the_base_and_merge_into_the_same_model() {
        let cfg = Preset::tiny().model_config(300);
        let (mut model, _) = train::init_model(&cfg, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 2]], &Device::Cpu).unwrap();
        let base = last_logits(&model, &ids);
        let varmap = VarMap::new();
        let spec = LoraSpec { rank: 4, alpha: 8.0 };
        model.attach_lora(&spec, &VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(varmap.all_vars().len(), 2 * TARGETS.len() * cfg.num_hidden_layers);
        assert_eq!(last_logits(&model, &ids), base, "b starts at zero: the adapted model is the base");
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("lora_b") {
                var.set(&Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let side = last_logits(&model, &ids);
        assert!(side.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3), "the adapters change the model");
        model.merge_lora().unwrap();
        let merged = last_logits(&model, &ids);
        let worst = side.iter().zip(&merged).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "merged weights differ from the side paths by {worst}");
    }

    #[test]
    fn the_frozen_linear_gives_candles_values_and_input_gradients() {
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let plain = crate::engine::model::linear(x.as_tensor(), &w).unwrap();
        let frozen = FrozenLinear::apply(x.as_tensor(), &w).unwrap();
        let diff = (&plain - &frozen).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "values differ by {diff}");
        let grad = |y: &Tensor| {
            let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let (a, b) = (grad(&plain), grad(&frozen));
        let worst = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "input gradients differ by {worst}");
        let v = candle_core::Var::from_tensor(&w).unwrap();
        let through =
            (FrozenLinear::apply(x.as_tensor(), v.as_tensor()).unwrap() * &r).unwrap().sum_all().unwrap();
        assert!(
            through.backward().unwrap().get(v.as_tensor()).is_none(),
            "no gradient for the frozen weight"
        );
    }

    #[test]
    fn adapter_shapes_are_bounded() {
        assert!(LoraSpec::default().validate().is_ok());
        for bad in [
            LoraSpec { rank: 0, alpha: 1.0 },
            LoraSpec { rank: 1000, alpha: 1.0 },
            LoraSpec { rank: 8, alpha: f64::NAN },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(LoraSpec { rank: 8, alpha: 16.0 }.scale(), 2.0);
    }
}
