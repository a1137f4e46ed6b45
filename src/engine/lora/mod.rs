//! Low-rank adapters (LoRA): fine-tuning a pretrained base by training, beside each frozen
//! projection `w`, two small matrices `a` `[r, in]` and `b` `[out, r]` whose product, scaled by
//! `alpha / r`, is added to `w`. A run stores only the adapters (a few MB) and names its base.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::EngineError;

mod linear;

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

    /// `x wᵀ + scale · (x aᵀ) bᵀ` for the frozen weight `w` this adapter sits beside, as one
    /// op whose backward pass computes no gradient for `w` (CPU only).
    pub fn project(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        linear::LoraLinear::apply(x, w, &self.a, &self.b, self.scale)
    }

    /// `scale · b a`, the change the adapter makes to its weight.
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.b.matmul(&self.a)? * self.scale
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
        let (mut model, _) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
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
