//! Engine tests on the bundled sample: tiny models, few steps.

use std::sync::atomic::AtomicBool;

use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::generate::{self, Sampling};
use super::tokenizer::ChatLine;
use super::train::{self, TrainOptions};
use super::{checkpoint, Preset};

pub(crate) fn sample_lines(n: usize) -> Vec<ChatLine> {
    crate::playground::SAMPLE
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            ChatLine {
                channel: v["channel_id"].as_str().unwrap().into(),
                author: v["author"].as_str().unwrap().into(),
                content: v["content"].as_str().unwrap().into(),
                time_ms: 0,
            }
        })
        .collect()
}

fn tiny_options(epochs: usize) -> TrainOptions {
    TrainOptions { epochs, ..TrainOptions::new(Preset::tiny()) }
}

#[test]
fn every_weight_gets_a_gradient() {
    let lines = sample_lines(300);
    let tok = super::tokenizer::ChatTokenizer::train(&lines, 320).unwrap();
    let data = train::prepare(&lines, &tok, 0.1).unwrap();
    let cfg = Preset::tiny().model_config(tok.vocab_size());
    let (model, varmap) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    let x = candle_core::Tensor::from_slice(&data.train[..64], (1, 64), &Device::Cpu).unwrap();
    let y = candle_core::Tensor::from_slice(&data.train[1..65], 64, &Device::Cpu).unwrap();
    let logits = model.forward_train(&x).unwrap().reshape((64, ())).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name} has a zero gradient");
    }
}

#[test]
fn fused_kernels_give_the_same_loss_and_gradients_as_candles_ops() {
    let lines = sample_lines(300);
    let tok = super::tokenizer::ChatTokenizer::train(&lines, 320).unwrap();
    let data = train::prepare(&lines, &tok, 0.1).unwrap();
    let cfg = Preset::tiny().model_config(tok.vocab_size());
    let (mut model, varmap) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    let x = candle_core::Tensor::from_slice(&data.train[..128], (2, 64), &Device::Cpu).unwrap();
    let y = candle_core::Tensor::from_slice(&data.train[1..129], 128, &Device::Cpu).unwrap();
    let mut results = Vec::new();
    for fused in [true, false] {
        model.fused_ops = fused;
        let logits = model.forward_train(&x).unwrap().reshape((128, ())).unwrap();
        let loss = if fused {
            super::ops::cross_entropy(&logits, &y).unwrap()
        } else {
            candle_nn::loss::cross_entropy(&logits, &y).unwrap()
        };
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        let mut per_var: Vec<(String, Vec<f32>)> = vars
            .iter()
            .map(|(n, v)| {
                (n.clone(), grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
            })
            .collect();
        per_var.sort_by(|a, b| a.0.cmp(&b.0));
        results.push((loss.to_scalar::<f32>().unwrap(), per_var));
    }
    let ((l1, g1), (l2, g2)) = (&results[0], &results[1]);
    assert!((l1 - l2).abs() < 1e-4, "losses {l1} vs {l2}");
    for ((name, a), (_, b)) in g1.iter().zip(g2) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff / scale < 1e-3, "{name}: gradients differ by {diff} (scale {scale})");
    }
}

/// A whole run through the hand-written step ends where the same run through candle's graph
/// does: same seed, so the same initial weights, data and schedule; the two differ only in
/// rounding. A seed gives the same run again.
#[test]
fn the_hand_written_step_trains_as_candles_graph_does() {
    let lines = sample_lines(600);
    let cancel = AtomicBool::new(false);
    let run = |through_graph: bool| {
        let opts = TrainOptions { through_graph, ..tiny_options(1) };
        train::train(&lines, &opts, &Device::Cpu, &cancel, |_| {}).unwrap().report
    };
    let (direct, graph, again) = (run(false), run(true), run(false));
    assert_eq!(direct.steps, graph.steps);
    assert!((direct.train_loss - graph.train_loss).abs() < 2e-3, "{direct:?} against {graph:?}");
    assert!(
        (direct.val_bits_per_byte - graph.val_bits_per_byte).abs() < 2e-3,
        "{direct:?} against {graph:?}"
    );
    assert_eq!(
        (direct.train_loss, direct.val_bits_per_byte),
        (again.train_loss, again.val_bits_per_byte),
        "the same seed trained to a different model"
    );
}

#[test]
fn training_lowers_the_validation_loss_and_the_checkpoint_reloads_identically() {
    let lines = sample_lines(1500);
    let cancel = AtomicBool::new(false);
    let opts = tiny_options(1);
    // Baseline: the same architecture before any step.
    let tok = super::tokenizer::ChatTokenizer::train(&lines[..1350], 320).unwrap();
    let data = train::prepare(&lines, &tok, 0.1).unwrap();
    let (untrained, _) =
        train::init_model(&Preset::tiny().model_config(tok.vocab_size()), &Device::Cpu, 0).unwrap();
    let before = train::bits_per_byte(&untrained, &tok, &data.val, 64, 16).unwrap();

    let (mut seen, mut evaluated) = (0, Vec::new());
    let trained = train::train(&lines, &opts, &Device::Cpu, &cancel, |p| {
        if p.phase == train::Phase::Training {
            seen += 1;
            assert!(p.step <= p.total_steps && p.tokens_per_second > 0.0 && p.tokens > 0);
            evaluated.extend(p.val_bits_per_byte);
        }
    })
    .unwrap();
    let r = &trained.report;
    assert!(seen > 10, "progress was reported for each step ({seen})");
    assert_eq!(evaluated.len(), opts.evals, "evaluations during training: {evaluated:?}");
    assert!(evaluated.iter().all(|v| v.is_finite() && *v > 0.0), "{evaluated:?}");
    assert!(r.val_bits_per_byte < before * 0.8, "val bpb {} not well below {before}", r.val_bits_per_byte);
    assert!(r.train_messages > r.val_messages && r.val_messages > 0);

    let dir = tempfile::tempdir().unwrap();
    let meta = checkpoint::Meta { params: trained.config.params(), ..Default::default() };
    let run =
        checkpoint::save(dir.path(), "run-1", &trained.varmap, &trained.config, &trained.tokenizer, &meta)
            .unwrap();
    let loaded = checkpoint::load(&run, &Device::Cpu).unwrap();
    let ids = trained.tokenizer.encode_message("alice", "hello there, anyone around?").unwrap();
    let a =
        trained.model.forward_cached(&ids, &mut trained.model.new_cache()).unwrap().to_vec1::<f32>().unwrap();
    let b = loaded
        .model()
        .unwrap()
        .forward_cached(&ids, &mut loaded.model().unwrap().new_cache())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b, "save -> load gives identical logits");

    // The cached path agrees with the training path on the last position.
    let x = candle_core::Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu).unwrap();
    let full = trained.model.forward_train(&x).unwrap();
    let last = full.narrow(1, ids.len() - 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max_diff = a.iter().zip(&last).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "cached and training paths differ by {max_diff}");

    // Token by token through the cache gives the same as one prefill.
    let mut cache = trained.model.new_cache();
    let mut stepwise = Vec::new();
    for &t in &ids {
        stepwise = trained.model.forward_cached(&[t], &mut cache).unwrap().to_vec1::<f32>().unwrap();
    }
    let max_diff = a.iter().zip(&stepwise).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "step-by-step and prefill differ by {max_diff}");

    // The serving path computes the same logits as candle's.
    let fast = super::fast::FastModel::from_model(&trained.model).unwrap();
    let mut fc = fast.new_cache();
    let mut fl = Vec::new();
    fast.forward(&ids, &mut fc, &mut fl).unwrap();
    let max_diff = a.iter().zip(&fl).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(max_diff < 1e-3, "fast and candle paths differ by {max_diff}");
    for &t in &ids[..3] {
        fast.forward(&[t], &mut fc, &mut fl).unwrap();
        let c = trained.model.forward_cached(&[t], &mut cache).unwrap().to_vec1::<f32>().unwrap();
        let max_diff = c.iter().zip(&fl).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-3, "fast and candle paths differ by {max_diff} while decoding");
    }

    // Generation: deterministic for a seed, within the cap, no control tokens in the text.
    let history = vec![("bob".to_string(), "anyone going to the meetup tonight?".to_string())];
    let s = Sampling { max_tokens: 12, ..Sampling::default() };
    let g1 = generate::reply(&fast, &trained.tokenizer, &history, &s, &mut StdRng::seed_from_u64(7)).unwrap();
    let g2 = generate::reply(&loaded.fast, &loaded.tokenizer, &history, &s, &mut StdRng::seed_from_u64(7))
        .unwrap();
    assert_eq!(g1, g2);
    assert!(g1.tokens <= 12);
    assert!(!g1.text.contains("<|"), "{}", g1.text);
    let greedy = Sampling { temperature: 0.0, max_tokens: 5, ..Sampling::default() };
    let g =
        generate::reply(&fast, &trained.tokenizer, &history, &greedy, &mut StdRng::seed_from_u64(1)).unwrap();
    assert!(g.tokens <= 5 && (g.finished || g.tokens == 5));
}

#[test]
fn a_cancelled_run_stops_with_an_error() {
    let lines = sample_lines(300);
    let cancel = AtomicBool::new(true);
    let err = train::train(&lines, &tiny_options(1), &Device::Cpu, &cancel, |_| {}).err().unwrap();
    assert!(matches!(err, super::EngineError::Cancelled), "{err}");
}

#[test]
fn too_little_data_is_refused_clearly() {
    let lines = sample_lines(5);
    let cancel = AtomicBool::new(false);
    let err = train::train(&lines, &tiny_options(1), &Device::Cpu, &cancel, |_| {}).err().unwrap();
    assert!(err.to_string().contains("at least 20"), "{err}");
}

#[test]
fn a_damaged_checkpoint_fails_to_load_with_the_reason() {
    let lines = sample_lines(300);
    let cancel = AtomicBool::new(false);
    let trained = train::train(
        &lines,
        &TrainOptions { max_seconds: Some(0.5), ..tiny_options(1) },
        &Device::Cpu,
        &cancel,
        |_| {},
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint::save(
        dir.path(),
        "r",
        &trained.varmap,
        &trained.config,
        &trained.tokenizer,
        &checkpoint::Meta::default(),
    )
    .unwrap();
    std::fs::write(run.join("model.safetensors"), b"garbage").unwrap();
    let err = checkpoint::load(&run, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let mut cfg = trained.config.clone();
    cfg.hidden_size = 48;
    std::fs::write(run.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    assert!(checkpoint::load(&run, &Device::Cpu).is_err());
}

#[test]
fn devices_parse() {
    assert!(matches!(super::device("cpu"), Ok(Device::Cpu)));
    assert!(super::device("tpu").is_err());
    #[cfg(not(feature = "cuda"))]
    assert!(super::device("cuda").unwrap_err().to_string().contains("--features cuda"));
}

#[test]
fn a_base_checkpoint_in_hf_layout_starts_training() {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::models::TrainerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    let lines = sample_lines(400);
    let base = tempfile::tempdir().unwrap();
    // A plain byte-level BPE without mynah's framing tokens, like a pretrained model's.
    let mut plain = tokenizers::Tokenizer::new(BPE::default());
    plain.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    plain.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(300)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    plain.train(&mut trainer, lines.iter().map(|l| l.content.as_str())).unwrap();
    plain.save(base.path().join("tokenizer.json"), false).unwrap();
    let base_vocab = plain.get_vocab_size(true);
    assert!(plain.token_to_id("<|msg|>").is_none());

    let mut cfg = Preset::tiny().model_config(base_vocab);
    cfg.tie_word_embeddings = false;
    let (_, varmap) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    varmap.save(base.path().join("model.safetensors")).unwrap();
    let mut json = serde_json::to_value(&cfg).unwrap();
    json["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    json["torch_dtype"] = serde_json::json!("float32");
    std::fs::write(base.path().join("config.json"), json.to_string()).unwrap();

    let cancel = AtomicBool::new(false);
    // Every weight trains (no adapters): the run holds a whole model and loads on its own.
    let opts = TrainOptions { max_seconds: Some(2.0), lora: None, ..tiny_options(1) };
    let trained =
        super::finetune::train_from_base(&lines, base.path(), &opts, &Device::Cpu, &cancel, |_| {}).unwrap();
    assert_eq!(trained.config.vocab_size, base_vocab, "the base's vocabulary is kept as it is");
    let tok = &trained.tokenizer;
    assert_eq!(tok.framing, super::tokenizer::Framing::Lines);
    let ids = tok.encode_message("ali:ce", "hi\nthere").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "ali_ce: hi there\n", "one `author: content` line per message");
    assert_eq!((ids.last(), ids.iter().filter(|&&t| t == tok.eom).count()), (Some(&tok.eom), 1));
    assert!(!trained.config.tie_word_embeddings);
    assert!(trained.report.val_bits_per_byte.is_finite());
    let dir = tempfile::tempdir().unwrap();
    let run = checkpoint::save(
        dir.path(),
        "r",
        &trained.varmap,
        &trained.config,
        &trained.tokenizer,
        &checkpoint::Meta::default(),
    )
    .unwrap();
    let loaded = checkpoint::load(&run, &Device::Cpu).unwrap();
    assert_eq!(loaded.tokenizer.vocab_size(), base_vocab);
    assert_eq!(
        loaded.tokenizer.framing,
        super::tokenizer::Framing::Lines,
        "a saved base tokenizer loads as lines"
    );

    // Adapters (the default): only they train and only they are saved; loading puts them on
    // the base's weights and serves exactly the model that trained.
    let reference = checkpoint::BaseRef { name: "b".into(), sha256: "0".repeat(64) };
    let spec = super::run::RunSpec {
        lines: &lines,
        opts: &TrainOptions { max_seconds: Some(3.0), full_fine_tune_below: 0, ..tiny_options(1) },
        base: Some(super::run::BaseRun { path: base.path(), reference: reference.clone() }),
        parent: dir.path(),
        name: "lora",
        preset_label: "tiny from base b".into(),
        corpus_span: (None, None),
    };
    let (loaded, report, run) = super::run::train_and_save(&spec, &Device::Cpu, &cancel, |_| {}).unwrap();
    assert!(report.steps > 0);
    assert_eq!(loaded.meta.base.as_ref(), Some(&reference));
    assert_eq!(loaded.meta.lora, Some(super::lora::LoraSpec::default()));
    let saved = candle_core::safetensors::load(run.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = saved.keys().collect();
    names.sort();
    let mut expected = super::lora::tensor_names(cfg.num_hidden_layers);
    expected.sort();
    assert_eq!(names, expected.iter().collect::<Vec<_>>(), "the run holds the adapters and nothing else");
    let b = &saved["model.layers.0.self_attn.q_proj.lora_b.weight"];
    assert!(b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "the adapters trained");
    let err = checkpoint::load(&run, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("base b") && err.contains("not installed"), "{err}");
    let again = checkpoint::load_with_bases(
        &run,
        &Device::Cpu,
        &|r| (r == &reference).then(|| base.path().to_path_buf()),
        true,
    )
    .unwrap();
    let prompt = [3u32, 7, 11, 5];
    let logits = |m: &super::model::Model| {
        let mut cache = m.new_cache();
        m.forward_cached(&prompt, &mut cache).unwrap().to_vec1::<f32>().unwrap()
    };
    let (x, y) = (logits(loaded.model().unwrap()), logits(again.model().unwrap()));
    assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4));
    let (mut fast_cache, mut fast_logits) = (again.fast.new_cache(), Vec::new());
    again.fast.forward(&prompt, &mut fast_cache, &mut fast_logits).unwrap();
    assert!(
        x.iter().zip(&fast_logits).all(|(a, b)| (a - b).abs() < 1e-3),
        "the served path has the adapters"
    );
    // Serving: no candle copy, and every model on the base shares one copy of its weights.
    let find = |r: &checkpoint::BaseRef| (r == &reference).then(|| base.path().to_path_buf());
    let served = checkpoint::load_with_bases(&run, &Device::Cpu, &find, false).unwrap();
    let other = checkpoint::load_with_bases(&run, &Device::Cpu, &find, false).unwrap();
    assert!(served.model.is_none());
    assert!(std::sync::Arc::ptr_eq(served.fast.weights(), other.fast.weights()), "one copy of the base");
    assert!(std::sync::Arc::ptr_eq(served.fast.weights(), again.fast.weights()));
    let (mut c, mut l) = (served.fast.new_cache(), Vec::new());
    served.fast.forward(&prompt[..2], &mut c, &mut l).unwrap();
    served.fast.forward(&prompt[2..], &mut c, &mut l).unwrap();
    let worst = x.iter().zip(&l).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "adapters beside the shared weights differ from merged ones by {worst}");

    // A base whose weights do not fit its config is refused with the reason.
    let mut wrong = json.clone();
    wrong["hidden_size"] = serde_json::json!(64);
    wrong["num_attention_heads"] = serde_json::json!(4);
    std::fs::write(base.path().join("config.json"), wrong.to_string()).unwrap();
    let err = super::finetune::train_from_base(&lines, base.path(), &opts, &Device::Cpu, &cancel, |_| {})
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// A tiny model and its voice, trained for `seconds` on `lines`.
fn model_and_voice(lines: &[ChatLine], seconds: f64) -> (super::checkpoint::Loaded, super::voice::Voice) {
    let cancel = AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions { max_seconds: Some(seconds), ..tiny_options(50) };
    let spec = super::run::RunSpec {
        lines,
        opts: &opts,
        base: None,
        parent: dir.path(),
        name: "r",
        preset_label: "tiny".into(),
        corpus_span: (None, None),
    };
    let (loaded, _, _) = super::run::train_and_save(&spec, &Device::Cpu, &cancel, |_| {}).unwrap();
    let voice =
        super::voice::Voice::from_lines(&loaded.tokenizer, loaded.meta.mixer.as_deref(), lines).unwrap();
    (loaded, voice)
}

#[test]
fn sample_and_rank_is_deterministic_under_a_seed() {
    let lines = sample_lines(300);
    let (m, voice) = model_and_voice(&lines, 1.0);
    let history = vec![("alice".to_string(), "anyone here know javascript?".to_string())];
    let s = Sampling { candidates: 4, ..Sampling::default() };
    let run = |seed| {
        let mut rng = StdRng::seed_from_u64(seed);
        super::decode::reply(&m.fast, &m.tokenizer, &history, &s, Some(&voice), &mut rng).unwrap()
    };
    let (a, b) = (run(7), run(7));
    assert_eq!(a, b, "the same seed gives the same candidates and choice");
    assert_eq!(a.len(), 4);
    assert!(a.windows(2).all(|w| w[0].score >= w[1].score), "best first");
}

#[test]
fn replies_never_copy_eight_words_of_a_stored_message() {
    const TEMPTING: &str = "the quick brown fox jumps over the lazy sleeping dog near the old river bank";
    // Mostly the one line, said by everyone: the network and the counts both learn it by heart.
    let mut lines = Vec::new();
    for (i, other) in sample_lines(60).into_iter().enumerate() {
        lines.push(other);
        for j in 0..5 {
            let author = format!("user{}", (i + j) % 3);
            lines.push(ChatLine { channel: "c".into(), author, content: TEMPTING.into(), time_ms: 0 });
        }
    }
    let (m, mut voice) = model_and_voice(&lines, 2.0);
    // The counts speak (a tiny network trained for seconds says little): they know the line.
    voice.mixer = super::counts::Mixer { weights: [0.99; super::counts::BUCKETS] };
    let history =
        vec![("bob".to_string(), TEMPTING.to_string()), ("alice".to_string(), TEMPTING.to_string())];
    let s = Sampling { candidates: 2, temperature: 0.3, ..Sampling::default() };
    let replies = |voice: &super::voice::Voice| -> Vec<String> {
        (0..8)
            .map(|seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                let ranked =
                    super::decode::reply(&m.fast, &m.tokenizer, &history, &s, Some(voice), &mut rng).unwrap();
                ranked[0].reply.text.clone()
            })
            .collect()
    };
    // The guard's own proof (a scripted decoder that would recite a stored sentence) is in
    // `words::tests`; here the whole decoder, driven by counts that know the line, keeps to it.
    let guarded = replies(&voice);
    for r in &guarded {
        assert!(!super::words::copies_run(r, &voice.copies), "an 8-word copy was sent: {r:?}");
    }
    assert!(guarded.iter().any(|r| !r.is_empty()), "{guarded:?}");
}

#[test]
fn a_removed_message_leaves_the_voice_at_once() {
    let lines = sample_lines(200);
    let tok = super::tokenizer::ChatTokenizer::train(&lines, 320).unwrap();
    let mut voice = super::voice::Voice::from_lines(&tok, None, &lines).unwrap();
    let secret = "zebra quartz mango violin falcon pebble lantern orchid tunnel";
    let said = super::voice::Said { id: 424242, author: "eve", content: secret };
    let ids = tok.encode_message("eve", secret).unwrap();
    let before = voice.counts.count(&ids[..6]);
    voice.add(&tok, said).unwrap();
    assert_eq!(voice.counts.count(&ids[..6]), before + 1);
    let words: Vec<String> = super::words::words(secret);
    assert!(voice.copies.contains_run(&words[..8]));
    voice.remove(&tok, said).unwrap();
    assert_eq!(voice.counts.count(&ids[..6]), before, "its n-grams left the counts");
    assert!(!voice.copies.contains_run(&words[..8]), "its runs left the copy index");
}

#[test]
fn a_trained_run_carries_mixer_weights_fitted_on_its_training_part() {
    let lines = sample_lines(400);
    let (m, voice) = model_and_voice(&lines, 1.0);
    let weights = m.meta.mixer.clone().expect("the manifest has fitted weights");
    assert_eq!(weights.len(), super::counts::BUCKETS);
    assert_ne!(weights, super::counts::Mixer::default().weights.to_vec(), "fitted, not the defaults");
    assert_eq!(voice.mixer.weights.to_vec(), weights, "the voice mixes with them");
}

#[test]
fn evaluations_during_training_split_the_run_evenly_and_leave_the_last_step_to_the_final_one() {
    let due = |total: usize, evals: usize| {
        let mut done = 0;
        let mut at = Vec::new();
        for step in 1..=total {
            if train::eval_due(step, total, done, evals) {
                done += 1;
                at.push(step);
            }
        }
        at
    };
    assert_eq!(due(100, 4), vec![20, 40, 60, 80]);
    assert_eq!(due(10, 4), vec![2, 4, 6, 8]);
    assert_eq!(due(3, 4), vec![1, 2], "no more than one a step, none on the last");
    assert_eq!(due(100, 0), Vec::<usize>::new());
    assert_eq!(due(1, 4), Vec::<usize>::new());
}

#[test]
fn every_token_after_the_first_is_scored_with_half_a_window_of_context_or_more() {
    let cfg = Preset::tiny().model_config(50);
    let (model, _) = train::init_model(&cfg, &Device::Cpu, 0).unwrap();
    // The network's probability of stream[p] after exactly the `c` tokens before it, and that of
    // its most likely token there.
    let after = |stream: &[u32], p: usize, c: usize| {
        let x = candle_core::Tensor::new(&stream[p - c..p], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward_train(&x).unwrap().squeeze(0).unwrap().get(c - 1).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, 0).unwrap().to_vec1::<f32>().unwrap();
        (logp[stream[p] as usize].exp(), logp.iter().copied().fold(f32::NEG_INFINITY, f32::max).exp())
    };
    let len = 8;
    for n in [5usize, 9, 29] {
        let stream: Vec<u32> = (0..n as u32).map(|i| (i * 7 + i * i) % 50).collect();
        let probs = train::token_probs(&model, &stream, len).unwrap();
        assert_eq!(probs.len(), n);
        assert!(probs[0].is_none(), "the first token has nothing before it");
        for (p, got) in probs.iter().enumerate().skip(1) {
            let got = got.unwrap_or_else(|| panic!("stream of {n}: token {p} was not scored"));
            let least = p.min(len / 2 + 1);
            let matched = (least..=p.min(len)).any(|c| {
                let (want, top) = after(&stream, p, c);
                (want - got.p).abs() < 1e-5 && (top - got.top).abs() < 1e-5
            });
            assert!(
                matched,
                "stream of {n}: token {p} was not scored as after {least} or more tokens before it"
            );
        }
    }
}

#[test]
fn scoring_then_learning_counts_each_message_only_after_its_last_token() {
    let lines = sample_lines(200);
    for tok in [
        super::tokenizer::ChatTokenizer::train(&lines, 320).unwrap(),
        super::tokenizer::ChatTokenizer::train_lines(&lines, 320).unwrap(),
    ] {
        let first = tok.encode_message("alice", "hello there everyone").unwrap();
        let second = tok.encode_message("bob", "hello again").unwrap();
        let stream: Vec<u32> = first.iter().chain(&second).copied().collect();
        let mut counts = super::counts::CountModel::new(4, tok.vocab_size());
        let mut seen = Vec::new();
        super::voice::score_then_learn(&stream, &tok, &mut counts, |_, c| seen.push(c.tokens()));
        // Nothing is known while the first message is scored; all of it while the second is.
        assert_eq!(seen[..first.len()], vec![0; first.len()][..]);
        let learnt = seen[first.len()];
        assert!(learnt >= first.len() as u64 - 1 && learnt <= first.len() as u64, "{learnt}");
        assert!(seen[first.len()..].iter().all(|&n| n == learnt), "{seen:?}");
        assert!(counts.tokens() > learnt, "the last message is learnt too");
    }
}

/// Scoring holds 16 MB of logits a pass: two windows of the embedded base, one of SmolLM2's
/// (whose window alone is larger), eight of the default model.
#[test]
fn scoring_passes_hold_a_bounded_number_of_logits() {
    assert_eq!(train::windows_per_pass(256, 8192), 2);
    assert_eq!(train::windows_per_pass(512, 49_152), 1);
    assert_eq!(train::windows_per_pass(128, 2048), 8);
}
