//! How a training takes its steps, and AdamW whose moments can be saved and restored (so a
//! pretraining run stopped after hours resumes exactly where it was). A model whose every weight
//! trains on the CPU steps by hand ([`super::direct::Trainer`]); any other (adapters, other
//! devices) steps through candle's graph with the [`AdamW`] here, which is candle-nn's `AdamW`
//! (same formula and defaults) written out only because candle keeps that optimiser's moments
//! private.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::{ParamsAdamW, VarMap};

use crate::engine::EngineError;

struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
}

pub struct AdamW {
    slots: Vec<Slot>,
    /// Steps taken so far (bias correction depends on it).
    pub step_t: usize,
    pub params: ParamsAdamW,
}

impl AdamW {
    /// An optimiser over named variables, with zero moments.
    pub fn new(vars: Vec<(String, Var)>, params: ParamsAdamW) -> Result<AdamW, EngineError> {
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let m = Var::zeros(var.shape(), var.dtype(), var.device())?;
            let v = Var::zeros(var.shape(), var.dtype(), var.device())?;
            slots.push(Slot { name, var, m, v });
        }
        Ok(AdamW { slots, step_t: 0, params })
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<(), EngineError> {
        self.step_t += 1;
        let ParamsAdamW { lr, beta1, beta2, eps, weight_decay } = self.params;
        let scale_m = 1.0 / (1.0 - beta1.powi(self.step_t as i32));
        let scale_v = 1.0 / (1.0 - beta2.powi(self.step_t as i32));
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let m = ((s.m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((s.v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let adjusted = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + eps)?)?;
            let theta = ((s.var.as_tensor() * (1.0 - lr * weight_decay))? - (adjusted * lr)?)?;
            s.m.set(&m)?;
            s.v.set(&v)?;
            s.var.set(&theta)?;
        }
        Ok(())
    }

    /// The moments, named `m.<var>` and `v.<var>`.
    pub fn moments(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.as_tensor().clone());
            out.insert(format!("v.{}", s.name), s.v.as_tensor().clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::moments`]; every variable must have both, of its shape.
    pub fn restore(&mut self, moments: &HashMap<String, Tensor>, step_t: usize) -> Result<(), EngineError> {
        for s in &self.slots {
            for (prefix, slot) in [("m", &s.m), ("v", &s.v)] {
                let t = crate::engine::direct::saved_moment(moments, prefix, &s.name, slot.shape())?;
                slot.set(t)?;
            }
        }
        self.step_t = step_t;
        Ok(())
    }
}

/// How a run takes its steps: by hand on the CPU ([`crate::engine::direct::Trainer`]), or
/// through candle's graph and the [`AdamW`] above. Both save and restore the same moments.
pub enum Optimiser {
    Direct(Box<crate::engine::direct::Trainer>),
    Graph(AdamW, Vec<Var>),
}

impl Optimiser {
    /// The optimiser of `model`, whose variables are `varmap`'s, for batches of `batch`
    /// sequences of `len`: by hand where [`crate::engine::direct::Trainer`] takes the model
    /// (unless `through_graph`), through candle's graph otherwise.
    pub fn new(
        model: &crate::engine::model::Model,
        varmap: &VarMap,
        params: ParamsAdamW,
        batch: usize,
        len: usize,
        through_graph: bool,
    ) -> Result<Optimiser, EngineError> {
        if !through_graph {
            let direct = crate::engine::direct::Trainer::new(model, varmap, params.clone(), batch, len)?;
            if let Some(trainer) = direct {
                return Ok(Optimiser::Direct(Box::new(trainer)));
            }
        }
        let mut named: Vec<(String, Var)> = {
            let data =
                varmap.data().lock().map_err(|_| EngineError::BadConfig("variable map poisoned".into()))?;
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let vars = named.iter().map(|(_, v)| v.clone()).collect();
        Ok(Optimiser::Graph(AdamW::new(named, params)?, vars))
    }

    /// One step on the windows at `starts` of `stream` at learning rate `lr`, gradients clipped
    /// to `clip_norm`: the loss and the tokens it scored.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        model: &crate::engine::model::Model,
        stream: &[u32],
        starts: &[usize],
        len: usize,
        lr: f64,
        clip_norm: f64,
        device: &candle_core::Device,
    ) -> Result<(f32, usize), EngineError> {
        use crate::engine::train::{batch_ids, gradients};
        match self {
            Optimiser::Direct(trainer) => {
                let (ids, targets) = batch_ids(stream, starts, len);
                let (loss, _) = trainer.gradients(&ids, &targets, clip_norm)?;
                trainer.update(lr);
                Ok((loss, targets.len()))
            }
            Optimiser::Graph(opt, vars) => {
                opt.params.lr = lr;
                let (loss, grads, n) = gradients(model, stream, starts, len, vars, clip_norm, device)?;
                opt.step(&grads)?;
                Ok((loss, n))
            }
        }
    }

    /// Writes the weights into the model's variables (the graph's optimiser updates them there).
    pub fn sync(&self) -> Result<(), EngineError> {
        match self {
            Optimiser::Direct(trainer) => trainer.sync(),
            Optimiser::Graph(..) => Ok(()),
        }
    }

    pub fn moments(&self) -> Result<HashMap<String, Tensor>, EngineError> {
        match self {
            Optimiser::Direct(trainer) => trainer.moments(),
            Optimiser::Graph(opt, _) => Ok(opt.moments()),
        }
    }

    pub fn restore(&mut self, moments: &HashMap<String, Tensor>, steps: usize) -> Result<(), EngineError> {
        match self {
            Optimiser::Direct(trainer) => trainer.restore(moments, steps),
            Optimiser::Graph(opt, _) => opt.restore(moments, steps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn params() -> ParamsAdamW {
        ParamsAdamW { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }

    #[test]
    fn it_takes_the_same_steps_as_candles_adamw_and_resumes_exactly() {
        use candle_nn::Optimizer;
        let dev = Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.0, 2.0], [0.1, 0.2, -0.3]], &dev).unwrap();
        let loss = |x: &Var| (x.as_tensor().sqr().unwrap() * 3.0).unwrap().sum_all().unwrap();
        let ours = Var::from_tensor(&init).unwrap();
        let theirs = Var::from_tensor(&init).unwrap();
        let mut a = AdamW::new(vec![("w".into(), ours.clone())], params()).unwrap();
        let p = params();
        let mut b = candle_nn::AdamW::new(
            vec![theirs.clone()],
            candle_nn::ParamsAdamW {
                lr: p.lr,
                beta1: p.beta1,
                beta2: p.beta2,
                eps: p.eps,
                weight_decay: p.weight_decay,
            },
        )
        .unwrap();
        for _ in 0..5 {
            a.step(&loss(&ours).backward().unwrap()).unwrap();
            b.step(&loss(&theirs).backward().unwrap()).unwrap();
        }
        let diff = (ours.as_tensor() - theirs.as_tensor()).unwrap().abs().unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);

        // Saved after 5 steps and restored into a fresh optimiser, 3 more steps match.
        let resumed = Var::from_tensor(ours.as_tensor()).unwrap();
        let mut c = AdamW::new(vec![("w".into(), resumed.clone())], params()).unwrap();
        c.restore(&a.moments(), a.step_t).unwrap();
        for _ in 0..3 {
            a.step(&loss(&ours).backward().unwrap()).unwrap();
            c.step(&loss(&resumed).backward().unwrap()).unwrap();
        }
        let diff = (ours.as_tensor() - resumed.as_tensor()).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

        let wrong = HashMap::from([
            ("m.w".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap()),
            ("v.w".to_string(), Tensor::zeros(3, DType::F32, &dev).unwrap()),
        ]);
        assert!(c.restore(&wrong, 1).is_err(), "a state of another shape is refused");
    }
}
