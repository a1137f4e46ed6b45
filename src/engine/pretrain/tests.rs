use super::*;

fn sources() -> Vec<Vec<ChatLine>> {
    let words = ["hello", "docker", "network", "thanks", "install", "the", "works", "now", "why", "ubuntu"];
    (0..2)
        .map(|s| {
            (0..300)
                .map(|i| ChatLine {
                    channel: format!("c{}", i % 3),
                    author: format!("user{}", (i * 7 + s) % 5),
                    content: (0..(3 + i % 6))
                        .map(|k| words[(i * 3 + k * 7 + s) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" "),
                    time_ms: i as i64,
                })
                .collect()
        })
        .collect()
}

fn options() -> Options {
    Options {
        preset: Preset::tiny(),
        epochs: 2,
        max_seconds: None,
        budget_seconds: None,
        checkpoint_seconds: 0.0,
        val_windows: 4,
        weight_decay: 0.1,
        clip_norm: 1.0,
        seed: 7,
    }
}

fn weights(work: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(work.join(CHECKPOINT).join(WEIGHTS), &Device::Cpu).unwrap()
}

#[test]
fn a_run_stopped_and_resumed_ends_where_an_uninterrupted_one_does() {
    let sources = sources();
    let tok = train_tokenizer(&sources, 320, 0.05).unwrap();
    assert_eq!(tok.framing, crate::engine::tokenizer::Framing::Lines);
    let corpus = Corpus::build(&sources, &tok, 0.05).unwrap();
    assert_eq!(corpus.train_messages + corpus.val_messages, 600);
    assert_eq!(corpus.val_messages, 30, "each source holds out its newest 5 %");
    let never = AtomicBool::new(false);

    // A sitting that takes no step still writes the initial weights: the run is reproducible.
    let init = tempfile::tempdir().unwrap();
    start(init.path(), &tok).unwrap();
    assert!(start(init.path(), &tok).is_err(), "a second start in the same place is refused");
    let stopped = AtomicBool::new(true);
    let none = run(init.path(), &tok, &corpus, &options(), &Device::Cpu, &stopped, &mut |_| {}).unwrap();
    assert_eq!((none.step, none.history.len()), (0, 0));
    let copy = |to: &Path| {
        for sub in ["", CHECKPOINT] {
            std::fs::create_dir_all(to.join(sub)).unwrap();
            for e in
                std::fs::read_dir(init.path().join(sub)).unwrap().flatten().filter(|e| e.path().is_file())
            {
                std::fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    };

    let whole = tempfile::tempdir().unwrap();
    copy(whole.path());
    let done = run(whole.path(), &tok, &corpus, &options(), &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert!(done.done() && done.step == done.total_steps && done.sittings == 1);
    assert_eq!(done.history.len(), done.step, "a checkpoint after every step here (checkpoint_seconds 0)");

    let parts = tempfile::tempdir().unwrap();
    copy(parts.path());
    let stop = AtomicBool::new(false);
    let first = run(parts.path(), &tok, &corpus, &options(), &Device::Cpu, &stop, &mut |p| {
        if p.step == 3 {
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert_eq!(first.step, 3);
    assert!(!first.done());
    let again = saved_tokenizer(parts.path()).unwrap().unwrap();
    let second = run(parts.path(), &again, &corpus, &options(), &Device::Cpu, &never, &mut |_| {}).unwrap();
    assert_eq!((second.step, second.sittings), (done.step, 2));
    let (a, b) = (weights(whole.path()), weights(parts.path()));
    for (name, t) in &a {
        let diff = crate::engine::ops::max_diff(t, &b[name]);
        assert!(diff < 1e-6, "{name} differs by {diff} after resuming");
    }

    // Another preset or corpus cannot resume this run.
    let other = Options { preset: Preset::small(), ..options() };
    assert!(run(parts.path(), &tok, &corpus, &other, &Device::Cpu, &never, &mut |_| {}).is_err());

    // The export is a base in Hugging Face layout that loads as one, with `author: content` lines.
    let out = tempfile::tempdir().unwrap();
    let cfg = export(parts.path(), out.path()).unwrap();
    let (loaded, base_tok, tensors) = crate::engine::finetune::load_base(out.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.vocab_size, cfg.vocab_size);
    assert_eq!(base_tok.framing, crate::engine::tokenizer::Framing::Lines);
    assert_eq!(tensors.len(), crate::engine::model::tensor_names(&cfg).len());
    let ids = base_tok.encode_message("user1", "hello docker").unwrap();
    assert_eq!(base_tok.decode(&ids).unwrap(), "user1: hello docker\n");

    // Loaded to serve, the weights stay as stored (`f16`) and serve exactly as widened ones.
    let (_, _, stored, dtype) =
        crate::engine::finetune::load_base_as(out.path(), &Device::Cpu, None).unwrap();
    assert_eq!(dtype, candle_core::DType::F16);
    assert!(stored.values().all(|t| t.dtype() == candle_core::DType::F16));
    let serve = |weights, dtype| {
        let vb = candle_nn::VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
        let fast = crate::engine::fast::FastModel::from_model(&Model::new(&loaded, vb).unwrap()).unwrap();
        let (mut cache, mut logits) = (fast.new_cache(), Vec::new());
        fast.forward(&ids, &mut cache, &mut logits).unwrap();
        logits
    };
    assert_eq!(serve(stored, dtype), serve(tensors, candle_core::DType::F32));
}
