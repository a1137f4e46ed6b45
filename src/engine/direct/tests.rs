use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use super::Trainer;
use crate::engine::model::{tensor_names, ModelConfig};
use crate::engine::train::init_model;

fn config(tied: bool, kv_heads: usize) -> ModelConfig {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": kv_heads, "max_position_embeddings": 80,
        "tie_word_embeddings": tied
    }))
    .unwrap()
}

fn adam() -> ParamsAdamW {
    ParamsAdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
}

/// A batch of `b` sequences of `t` (longer than one attention block, so the blocked causal
/// passes are crossed) with their next tokens.
fn batch(b: usize, t: usize, vocab: u32) -> (Vec<u32>, Vec<u32>) {
    let stream: Vec<u32> = (0..(b * t + 1) as u32).map(|i| (i * 7919 + i * i) % vocab).collect();
    let ids = (0..b).flat_map(|s| stream[s * t..s * t + t].to_vec()).collect();
    let targets = (0..b).flat_map(|s| stream[s * t + 1..s * t + t + 1].to_vec()).collect();
    (ids, targets)
}

/// The loss and every weight's gradient against candle's autograd through the fused ops, with
/// a tied and an untied head, and with grouped key/value heads.
#[test]
fn gradients_match_candles_autograd() {
    let dev = Device::Cpu;
    let (b, t) = (3, 70);
    for (tied, kv) in [(true, 4), (false, 2)] {
        let cfg = config(tied, kv);
        let (model, varmap) = init_model(&cfg, &dev, 0).unwrap();
        let (ids, targets) = batch(b, t, cfg.vocab_size as u32);
        let x = Tensor::from_vec(ids.clone(), (b, t), &dev).unwrap();
        let y = Tensor::from_vec(targets.clone(), b * t, &dev).unwrap();
        let want_loss = model.loss(&x, &y).unwrap();
        let want = want_loss.backward().unwrap();

        let mut trainer = Trainer::new(&model, &varmap, adam(), b, t).unwrap().expect("trains whole");
        let (loss, norm) = trainer.gradients(&ids, &targets, f64::INFINITY).unwrap();
        let want_loss = want_loss.to_scalar::<f32>().unwrap();
        assert!((loss - want_loss).abs() < 1e-5, "loss {loss} against {want_loss}");
        assert!(norm > 0.0 && norm.is_finite());
        let vars = varmap.data().lock().unwrap().clone();
        for name in tensor_names(&cfg) {
            let var = &vars[&name];
            let (_, ours, range) = trainer.vars.iter().find(|(n, _, _)| *n == name).unwrap();
            assert_eq!(ours.as_tensor().id(), var.as_tensor().id(), "{name} is the model's variable");
            let got = &trainer.grads[range.clone()];
            let want = want.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let scale = want.iter().fold(0f32, |m, g| m.max(g.abs())).max(1e-3);
            let diff = want.iter().zip(got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-3 * scale, "{name} (tied {tied}, {kv} kv heads): off by {diff} of {scale}");
        }
    }
}

/// Steps of the fused optimiser, with clipping, take the weights where candle's `AdamW` takes
/// them, and the model's variables see the result after a sync.
#[test]
fn steps_match_candles_adamw_and_reach_the_variables() {
    let dev = Device::Cpu;
    let (b, t) = (2, 16);
    let cfg = config(true, 4);
    let (model, varmap) = init_model(&cfg, &dev, 0).unwrap();
    let (theirs, their_vars) = init_model(&cfg, &dev, 0).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        their_vars.data().lock().unwrap()[name].set(var.as_tensor()).unwrap();
    }
    let (ids, targets) = batch(b, t, cfg.vocab_size as u32);
    let mut trainer = Trainer::new(&model, &varmap, adam(), b, t).unwrap().unwrap();
    let mut opt = AdamW::new(their_vars.all_vars(), adam()).unwrap();
    let all = their_vars.all_vars();
    let x = Tensor::from_vec(ids.clone(), (b, t), &dev).unwrap();
    let y = Tensor::from_vec(targets.clone(), b * t, &dev).unwrap();
    for lr in [1e-2, 5e-3, 1e-3] {
        let (_, norm) = trainer.gradients(&ids, &targets, 0.5).unwrap();
        trainer.update(lr);
        let mut grads = theirs.loss(&x, &y).unwrap().backward().unwrap();
        let their_norm = crate::engine::train::clip_gradients(&mut grads, &all, 0.5).unwrap();
        assert!((norm - their_norm).abs() < 1e-3 * their_norm, "norms {norm} and {their_norm}");
        opt.set_learning_rate(lr);
        opt.step(&grads).unwrap();
    }
    trainer.sync().unwrap();
    let (ours, theirs) = (varmap.data().lock().unwrap().clone(), their_vars.data().lock().unwrap().clone());
    for name in tensor_names(&cfg) {
        let d = crate::engine::ops::max_diff(ours[&name].as_tensor(), theirs[&name].as_tensor());
        assert!(d < 1e-4, "{name} differs by {d} after three steps");
    }
}

#[test]
fn bad_batches_are_errors() {
    let cfg = config(true, 4);
    let (model, varmap) = init_model(&cfg, &Device::Cpu, 0).unwrap();
    let mut trainer = Trainer::new(&model, &varmap, adam(), 2, 16).unwrap().unwrap();
    let (mut ids, targets) = batch(2, 16, cfg.vocab_size as u32);
    ids[5] = cfg.vocab_size as u32;
    assert!(trainer.gradients(&ids, &targets, 1.0).is_err(), "an ID outside the vocabulary");
    let (ids, targets) = batch(2, 16, cfg.vocab_size as u32);
    assert!(trainer.gradients(&ids[..31], &targets[..31], 1.0).is_err(), "not whole sequences");
    assert!(trainer.gradients(&ids, &targets[..16], 1.0).is_err(), "fewer targets than IDs");
}

/// A batch larger than the trainer's tape goes through in parts (here one sequence, then two):
/// their weighted gradients sum to those of the whole batch at once.
#[test]
fn a_batch_in_parts_gives_the_gradients_of_the_whole() {
    let cfg = config(false, 2);
    let (model, varmap) = init_model(&cfg, &Device::Cpu, 0).unwrap();
    let (ids, targets) = batch(3, 20, cfg.vocab_size as u32);
    let mut whole = Trainer::new(&model, &varmap, adam(), 3, 20).unwrap().unwrap();
    let (loss, norm) = whole.gradients(&ids, &targets, f64::INFINITY).unwrap();
    let scale = whole.grads.iter().fold(0f32, |m, g| m.max(g.abs()));
    // In parts of one sequence each, and of one and two.
    for room in [1, 2] {
        let mut parts = Trainer::new(&model, &varmap, adam(), room, 20).unwrap().unwrap();
        assert_eq!((whole.tape.rows, parts.tape.rows), (60, 20 * room));
        let (part_loss, part_norm) = parts.gradients(&ids, &targets, f64::INFINITY).unwrap();
        assert!((loss - part_loss).abs() < 1e-5, "losses {loss} and {part_loss}");
        assert!((norm - part_norm).abs() < 1e-4 * norm, "norms {norm} and {part_norm}");
        let diff = whole.grads.iter().zip(&parts.grads).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4 * scale, "gradients differ by {diff} of {scale}");
    }
}

/// The embedded base's batches (16 × 256) go through in parts of whole sequences whose
/// activations stay within the tape's budget.
#[test]
fn a_large_batch_keeps_its_activations_within_the_budget() {
    let p = crate::engine::Preset::base_s();
    let cfg = p.model_config(p.vocab_size);
    let (model, varmap) = init_model(&cfg, &Device::Cpu, 0).unwrap();
    let trainer = Trainer::new(&model, &varmap, adam(), p.batch, p.seq_len).unwrap().unwrap();
    let rows = trainer.tape.rows;
    assert!(rows.is_multiple_of(p.seq_len) && rows >= p.seq_len && rows < p.batch * p.seq_len, "{rows}");
    let per_row =
        super::Tape::bytes_per_row(trainer.dims, cfg.num_hidden_layers, cfg.num_attention_heads, p.seq_len);
    assert!(rows * per_row <= super::TAPE_BYTES, "{rows} rows of {per_row} bytes");
    assert!((rows + p.seq_len) * per_row > super::TAPE_BYTES, "room for another sequence");
}

/// Moments saved after some steps and restored into a fresh trainer over the same weights
/// continue exactly; a state of another shape is refused.
#[test]
fn a_trainer_resumes_from_its_saved_moments() {
    let dev = Device::Cpu;
    let (b, t) = (2, 16);
    let cfg = config(true, 4);
    let (ids, targets) = batch(b, t, cfg.vocab_size as u32);
    let (model, varmap) = init_model(&cfg, &dev, 0).unwrap();
    let mut first = Trainer::new(&model, &varmap, adam(), b, t).unwrap().unwrap();
    for _ in 0..2 {
        first.gradients(&ids, &targets, 1.0).unwrap();
        first.update(1e-2);
    }
    first.sync().unwrap();
    let mut second = Trainer::new(&model, &varmap, adam(), b, t).unwrap().unwrap();
    let moments = first.moments().unwrap();
    second.restore(&moments, first.steps).unwrap();
    for trainer in [&mut first, &mut second] {
        trainer.gradients(&ids, &targets, 1.0).unwrap();
        trainer.update(1e-3);
    }
    assert_eq!(first.params, second.params, "the resumed trainer takes the same step");

    let mut wrong = moments.clone();
    let key = "m.model.norm.weight".to_string();
    wrong.insert(key.clone(), Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap());
    assert!(second.restore(&wrong, 3).is_err(), "{key} of another shape");
    wrong.remove(&key);
    assert!(second.restore(&wrong, 3).is_err(), "{key} missing");
}
