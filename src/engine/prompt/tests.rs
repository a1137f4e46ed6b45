use std::sync::atomic::AtomicBool;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::engine::decode;
use crate::engine::generate::Sampling;
use crate::engine::run::{train_and_save, RunSpec};
use crate::engine::tests::sample_lines;
use crate::engine::train::TrainOptions;
use crate::engine::Preset;

fn said(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, c)| (a.to_string(), c.to_string())).collect()
}

/// A tiny model trained for a second, with windows of `seq_len` tokens.
fn tiny(seq_len: usize, dir: &std::path::Path) -> crate::engine::checkpoint::Loaded {
    let lines = sample_lines(300);
    let mut preset = Preset::tiny();
    preset.seq_len = seq_len;
    let opts = TrainOptions { max_seconds: Some(1.0), ..TrainOptions::new(preset) };
    let spec = RunSpec {
        lines: &lines,
        opts: &opts,
        base: None,
        parent: dir,
        name: "r",
        preset_label: "tiny".into(),
        corpus_span: (None, None),
    };
    train_and_save(&spec, &candle_core::Device::Cpu, &AtomicBool::new(false), |_| {}).unwrap().0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn a_kept_context_prefills_only_what_was_said_since_and_replies_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny(256, dir.path());
    let (model, tok) = (&loaded.fast, &loaded.tokenizer);
    let s = Sampling { max_tokens: 10, candidates: 2, ..Sampling::default() };
    let enc = |a: &str, c: &str| tok.encode_message(a, c).unwrap();

    let first = said(&[("ann", "who is coming tonight"), ("bob", "me probably"), ("cy", "@mynah you?")]);
    let (_, kept) =
        decode::reply_with(model, tok, &first, &s, None, &mut StdRng::seed_from_u64(1), None).unwrap();
    assert_eq!(kept.computed, kept.settled, "nothing was kept yet");
    assert_eq!(&kept.ids[kept.settled..], &enc("cy", "@mynah you?")[..], "the mention is kept after it");

    // The window slid: the oldest message left, a new message and a mention arrived.
    let next = said(&[
        ("bob", "me probably"),
        ("cy", "@mynah you?"),
        ("dee", "i am in"),
        ("ann", "@mynah and then?"),
    ]);
    let (ranked, again) =
        decode::reply_with(model, tok, &next, &s, None, &mut StdRng::seed_from_u64(2), Some(kept.clone()))
            .unwrap();
    assert_eq!(again.computed, enc("dee", "i am in").len(), "only the message said since was prefilled");
    assert_eq!(&again.ids[..kept.ids.len()], &kept.ids[..], "the kept context continues");
    assert!(!ranked.is_empty());

    // The kept cache is what a fresh pass over the same tokens gives.
    let (mut fresh, mut expected, mut got) = (model.new_cache(), Vec::new(), Vec::new());
    model.forward(&again.ids, &mut fresh, &mut expected).unwrap();
    model.forward(&[tok.msg], &mut fresh, &mut expected).unwrap();
    let mut cache = again.cache.clone();
    assert_eq!(cache.pos, again.ids.len());
    model.forward(&[tok.msg], &mut cache, &mut got).unwrap();
    assert!(max_diff(&expected, &got) < 1e-4, "the kept cache is the context's cache");

    // The mention as the store holds it reads otherwise: the context continues from before it.
    let stored = said(&[
        ("bob", "me probably"),
        ("cy", "<@1> @mynah you?"),
        ("dee", "i am in"),
        ("ann", "@mynah and then?"),
    ]);
    let (_, other) =
        decode::reply_with(model, tok, &stored, &s, None, &mut StdRng::seed_from_u64(2), Some(kept.clone()))
            .unwrap();
    assert_eq!(other.computed, enc("cy", "<@1> @mynah you?").len() + enc("dee", "i am in").len());
    assert_eq!(&other.ids[..kept.settled], &kept.ids[..kept.settled]);

    // A mention with nothing before it keeps only itself (no stray start-of-message).
    let (_, alone) = decode::reply_with(
        model,
        tok,
        &said(&[("cy", "@mynah hi")]),
        &s,
        None,
        &mut StdRng::seed_from_u64(5),
        None,
    )
    .unwrap();
    assert_eq!((alone.settled, &alone.ids[..]), (0, &enc("cy", "@mynah hi")[..]));

    // The same mention again (a retry) prefills nothing.
    let (_, retry) =
        decode::reply_with(model, tok, &next, &s, None, &mut StdRng::seed_from_u64(3), Some(again.clone()))
            .unwrap();
    assert_eq!(retry.computed, 0);

    // A kept context this history does not follow (a message in it was edited) starts over.
    let edited =
        said(&[("bob", "me, surely"), ("cy", "@mynah you?"), ("dee", "i am in"), ("ann", "@mynah ok")]);
    let (_, over) =
        decode::reply_with(model, tok, &edited, &s, None, &mut StdRng::seed_from_u64(4), Some(again))
            .unwrap();
    assert_eq!(over.computed, over.settled);
}

#[test]
fn a_context_that_outgrows_the_model_starts_over_from_the_recent_messages() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = tiny(Preset::tiny().seq_len, dir.path());
    let (model, tok) = (&loaded.fast, &loaded.tokenizer);
    let s = Sampling { max_tokens: 8, candidates: 1, ..Sampling::default() };
    let mut history = said(&[("ann", "hello there")]);
    let mut kept = None;
    let ctx = model.cfg.max_position_embeddings;
    for i in 0..30 {
        history.push(("bob".into(), format!("message number {i} with a few words")));
        let (_, k) =
            decode::reply_with(model, tok, &history, &s, None, &mut StdRng::seed_from_u64(i), kept.take())
                .unwrap();
        assert!(k.ids.len() + 8 < ctx, "the kept context leaves room for a reply");
        kept = Some(k);
    }
}
