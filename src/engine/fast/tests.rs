use candle_core::Device;

use super::*;
use crate::engine::train;

/// A model whose prompt products are large enough to be split across threads, with
/// grouped-query attention and an untied head, held exactly (`f32`).
#[test]
fn products_split_across_threads_give_the_candle_paths_logits() {
    let cfg = ModelConfig {
        vocab_size: 4096,
        hidden_size: 256,
        intermediate_size: 4096,
        num_hidden_layers: 2,
        num_attention_heads: 8,
        num_key_value_heads: Some(2),
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: false,
        model_type: "llama".into(),
    };
    // The MLP's products are split, for the prompt and for each token after it; those of the
    // keys and values never.
    let kv = cfg.kv_heads() * cfg.head_dim();
    assert!(cfg.hidden_size * cfg.intermediate_size * 4 >= panels::SPLIT_BYTES);
    assert!(cfg.hidden_size * kv * 4 < panels::SPLIT_BYTES && 40 * cfg.hidden_size * kv < panels::SPLIT_WORK);
    let (model, _) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    let fast = FastModel::from_model_as(&model, Precision::F32).unwrap();
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 97) % 4096).collect();
    let (mut cache, mut fc, mut logits) = (model.new_cache(), fast.new_cache(), Vec::new());
    let want = model.forward_cached(&ids, &mut cache).unwrap().to_vec1::<f32>().unwrap();
    fast.forward(&ids, &mut fc, &mut logits).unwrap();
    let diff = want.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-3, "prefill differs by {diff}");
    for &t in &[5u32, 4095, 17] {
        let want = model.forward_cached(&[t], &mut cache).unwrap().to_vec1::<f32>().unwrap();
        fast.forward(&[t], &mut fc, &mut logits).unwrap();
        let diff = want.iter().zip(&logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-3, "decoding differs by {diff}");
    }
}

/// `f16`, `i8` and 4-bit matrices (what mid-sized and large models serve from) stay close to
/// the exact logits and take about a half, a quarter and a fifth of the memory.
#[test]
fn half_int8_and_4_bit_matrices_stay_close_to_the_exact_logits() {
    let cfg = crate::engine::Preset::small().model_config(1024);
    let (model, _) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    assert_eq!(FastWeights::precision(&cfg), Precision::F32, "small models stay exact by default");
    let exact = FastModel::from_model_as(&model, Precision::F32).unwrap();
    for (precision, most_bytes, tolerance) in
        [(Precision::F16, 0.55, 0.005), (Precision::I8, 0.3, 0.05), (Precision::Q4, 0.22, 0.15)]
    {
        let fewer = FastModel::from_model_as(&model, precision).unwrap();
        let ratio = fewer.weights().bytes() as f64 / exact.weights().bytes() as f64;
        assert!(ratio < most_bytes, "{precision:?} weights take {ratio:.2} of the f32 ones");
        let ids: Vec<u32> = (0..30u32).map(|i| (i * 37) % 1024).collect();
        let (mut a, mut b) = (exact.new_cache(), fewer.new_cache());
        let (mut la, mut lb) = (Vec::new(), Vec::new());
        for chunk in [&ids[..20], &ids[20..21], &ids[21..22], &ids[22..]] {
            exact.forward(chunk, &mut a, &mut la).unwrap();
            fewer.forward(chunk, &mut b, &mut lb).unwrap();
            let spread = la.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(
                worst < tolerance * spread + 1e-4,
                "{precision:?} logits differ by {worst} (logits up to {spread})"
            );
        }
    }
}

/// The embedded base's size serves from `f16`; SmolLM2's from 4-bit blocks.
#[test]
fn the_precision_follows_the_model_size() {
    let base = ModelConfig {
        vocab_size: 8192,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 4,
        num_key_value_heads: None,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
        model_type: "llama".into(),
    };
    assert!(base.params() > HALF_MIN_PARAMS && base.params() < QUANTIZE_MIN_PARAMS, "{}", base.params());
    assert_eq!(FastWeights::precision(&base), Precision::F16);
    let large =
        ModelConfig { hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30, ..base.clone() };
    assert_eq!(FastWeights::precision(&large), Precision::Q4);
}

/// Candidates decoded side by side (one batched pass per token, caches of different lengths)
/// get the logits each would get alone.
#[test]
fn a_batch_of_generations_gets_what_each_gets_alone() {
    let cfg = crate::engine::Preset::small().model_config(1024);
    let (model, _) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    let fast = FastModel::from_model(&model).unwrap();
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9, 8], &[100, 200, 300, 400, 500, 600, 700]];
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for p in prompts {
        let (mut c, mut l) = (fast.new_cache(), Vec::new());
        fast.forward(p, &mut c, &mut l).unwrap();
        alone.push((c.clone(), l.clone()));
        together.push((c, l));
    }
    // Two more forks of the last prompt, sharing its keys and values (as reply candidates do),
    // one of them after a token of its own before sharing again.
    let (c, l) = together.pop().unwrap();
    let shared = c.shared();
    let (mut own, mut own_logits) = (shared.clone(), l.clone());
    fast.forward(&[42], &mut own, &mut own_logits).unwrap();
    let (mut plain, mut plain_logits) = (alone[2].0.clone(), alone[2].1.clone());
    fast.forward(&[42], &mut plain, &mut plain_logits).unwrap();
    together.push((shared.clone(), l.clone()));
    for _ in 0..2 {
        alone.push(alone[2].clone());
        together.push((shared.clone(), l.clone()));
    }
    alone.push((plain, plain_logits));
    together.push((own.shared(), own_logits));
    assert!(together[2].0.bytes() > 0);
    for step in 0..4u32 {
        let ids: Vec<u32> = (0..alone.len() as u32).map(|i| 7 + step * 31 + i * 101).collect();
        for (i, (c, l)) in alone.iter_mut().enumerate() {
            fast.forward(&[ids[i]], c, l).unwrap();
        }
        let (mut caches, mut logits): (Vec<&mut FastCache>, Vec<&mut Vec<f32>>) =
            together.iter_mut().map(|(c, l)| (c, l)).unzip();
        fast.forward_batch(&ids, &mut caches, &mut logits).unwrap();
        for ((ca, la), (cb, lb)) in alone.iter().zip(&together) {
            assert_eq!(ca.pos, cb.pos);
            let diff = la.iter().zip(lb.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "step {step}: batched logits differ by {diff}");
        }
    }
    // Rewinding into the shared part gives a cache of its own that continues correctly.
    let (mut c, mut l) = together.pop().unwrap();
    let (mut a, mut la) = alone.pop().unwrap();
    c.rewind(3);
    a.rewind(3);
    fast.forward(&[5, 6], &mut c, &mut l).unwrap();
    fast.forward(&[5, 6], &mut a, &mut la).unwrap();
    let diff = la.iter().zip(&l).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4 && c.pos == 5, "after rewinding into the prefix: {diff}");
    let mut one = fast.new_cache();
    let (mut c, mut l) = (fast.new_cache(), Vec::new());
    assert!(
        fast.forward_batch(&[1, 2], &mut [&mut one, &mut c], &mut [&mut l]).is_err(),
        "mismatched batch refused"
    );
}
