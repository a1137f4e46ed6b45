//! Tests of the parent module.

use super::*;

/// xorshift64: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn unit(&mut self) -> f64 {
        self.below(1 << 53) as f64 / (1u64 << 53) as f64
    }

    /// A message of 1..=max tokens below `vocab`, skewed towards small IDs so n-grams repeat.
    fn message(&mut self, vocab: u64, max: u64) -> Vec<u32> {
        let len = 1 + self.below(max);
        (0..len)
            .map(|_| {
                let top = 1 + self.below(vocab);
                self.below(top) as u32
            })
            .collect()
    }
}

/// Everything the model holds, in a canonical order (list slots may differ).
type Dump = (Vec<Vec<(Key, Vec<Follower>)>>, Vec<[[u64; 5]; 2]>);

fn dump(m: &CountModel) -> Dump {
    let maps = m
        .maps
        .iter()
        .map(|map| {
            let mut v: Vec<_> = map.iter().map(|(&k, &n)| (k, m.view(n).all().to_vec())).collect();
            v.sort_by_key(|e| e.0);
            v
        })
        .collect();
    (maps, m.hist.clone())
}

fn distribution_bits(m: &CountModel, contexts: &[Vec<u32>]) -> Vec<u32> {
    let mut out = vec![0.0; m.vocab()];
    let mut bits = Vec::new();
    for c in contexts {
        m.probs(c, &mut out);
        bits.extend(out.iter().map(|p| p.to_bits()));
        bits.push(m.log2_prob(c, 1).to_bits() as u32);
    }
    bits
}

/// A channel of random messages, each with the tokens before it as context.
fn channel(rng: &mut Rng, n: usize, vocab: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut stream: Vec<u32> = Vec::new();
    (0..n)
        .map(|_| {
            let msg = rng.message(vocab, 12);
            let ctx = stream[stream.len().saturating_sub(5)..].to_vec();
            stream.extend(&msg);
            (ctx, msg)
        })
        .collect()
}

/// Brute-force raw counts of every n-gram of the messages, context included.
fn recount(msgs: &[(Vec<u32>, Vec<u32>)], order: usize) -> HashMap<Vec<u32>, u64> {
    let mut counts = HashMap::new();
    for (ctx, msg) in msgs {
        let keep = ctx.len().min(order - 1);
        let seq: Vec<u32> = ctx[ctx.len() - keep..].iter().chain(msg).copied().collect();
        for i in keep..seq.len() {
            for n in 1..=order.min(i + 1) {
                *counts.entry(seq[i + 1 - n..=i].to_vec()).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn a_packed_context_takes_four_bytes() {
    assert_eq!(std::mem::size_of::<Node>(), 4);
    assert_eq!(std::mem::size_of::<(Key, Node)>(), 8);
    let f = Follower { tok: (1 << 16) - 1, raw: (1 << 8) - 1, cont: (1 << 7) - 1 };
    assert_eq!(Node::pack(f).and_then(Node::inline), Some(f));
    assert_eq!(Node::pack(Follower { raw: 1 << 8, ..f }), None);
    assert_eq!(Node::pack(Follower { tok: 1 << 16, ..f }), None);
    assert_eq!(Node::pack(Follower { cont: 1 << 7, ..f }), None);
}

#[test]
fn counts_match_a_brute_force_recount() {
    let mut rng = Rng(7);
    let msgs = channel(&mut rng, 300, 9);
    let mut m = CountModel::new(4, 9);
    msgs.iter().for_each(|(c, t)| m.add_with_context(c, t));
    let truth = recount(&msgs, 4);
    for (ngram, &c) in &truth {
        assert_eq!(m.count(ngram), c, "{ngram:?}");
    }
    assert_eq!(m.tokens(), msgs.iter().map(|(_, t)| t.len() as u64).sum::<u64>());
    assert_eq!(m.count(&[1, 2, 3, 4, 5]), 0);
    assert_eq!(m.count(&[]), 0);
}

#[test]
fn continuation_counts_are_the_distinct_tokens_before_an_ngram() {
    let mut rng = Rng(11);
    let msgs = channel(&mut rng, 400, 8);
    let mut m = CountModel::new(4, 8);
    msgs.iter().for_each(|(c, t)| m.add_with_context(c, t));
    for (c, t) in msgs.iter().step_by(3) {
        m.remove_with_context(c, t);
    }
    let kept: Vec<_> = msgs.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, x)| x.clone()).collect();
    let truth = recount(&kept, 4);
    let mut cont: HashMap<Vec<u32>, u32> = HashMap::new();
    for ngram in truth.keys().filter(|g| g.len() >= 2) {
        *cont.entry(ngram[1..].to_vec()).or_default() += 1;
    }
    let mut keys = [0; MAX_ORDER];
    for (ngram, _) in truth.iter().filter(|(g, _)| g.len() < 4) {
        let (&tok, ctx) = ngram.split_last().unwrap();
        m.context_keys(ctx, &mut keys);
        let node = m.maps[ctx.len()][&keys[ctx.len()]];
        let f = m.view(node).find(tok).unwrap();
        assert_eq!(f.cont, cont.get(ngram).copied().unwrap_or(0), "{ngram:?}");
    }
}

#[test]
fn removing_a_message_restores_every_count() {
    let mut rng = Rng(3);
    let mut m = CountModel::new(5, 16);
    let msgs = channel(&mut rng, 200, 16);
    msgs.iter().for_each(|(c, t)| m.add_with_context(c, t));
    let contexts: Vec<Vec<u32>> = (0..40).map(|_| rng.message(16, 6)).collect();
    for _ in 0..300 {
        let before = (dump(&m), distribution_bits(&m, &contexts));
        let (ctx, msg) = (rng.message(16, 7), rng.message(16, 12));
        m.add_with_context(&ctx, &msg);
        m.remove_with_context(&ctx, &msg);
        assert!(before == (dump(&m), distribution_bits(&m, &contexts)), "{ctx:?} {msg:?}");
    }
}

#[test]
fn removing_a_message_later_is_as_if_it_never_came() {
    let mut rng = Rng(5);
    let msgs = channel(&mut rng, 150, 12);
    let contexts: Vec<Vec<u32>> = (0..40).map(|_| rng.message(12, 6)).collect();
    for gone in [0, 17, 80, 149] {
        let (mut with, mut without) = (CountModel::new(4, 12), CountModel::new(4, 12));
        for (i, (c, t)) in msgs.iter().enumerate() {
            with.add_with_context(c, t);
            if i != gone {
                without.add_with_context(c, t);
            }
        }
        with.remove_with_context(&msgs[gone].0, &msgs[gone].1);
        assert!(dump(&with) == dump(&without));
        assert_eq!(distribution_bits(&with, &contexts), distribution_bits(&without, &contexts));
    }
}

#[test]
fn a_deleted_messages_unique_ngrams_are_gone_at_once() {
    let mut m = CountModel::new(6, 100);
    m.add(&[1, 2, 3, 4, 5, 6]);
    let secret = [1, 2, 42, 43, 44, 5];
    m.add_with_context(&[9, 9], &secret);
    assert_eq!(m.count(&[42, 43, 44]), 1);
    m.remove_with_context(&[9, 9], &secret);
    for ngram in [&[42][..], &[2, 42], &[9, 9, 1], &[42, 43, 44, 5]] {
        assert_eq!(m.count(ngram), 0, "{ngram:?}");
    }
    assert_eq!(m.count(&[1, 2]), 1);
    assert_eq!(m.evidence(&[42, 43]).depth, 0);
    // Removing what was never added changes nothing.
    m.remove(&[77, 78]);
    assert_eq!(m.tokens(), 6);
}

#[test]
fn big_counts_move_to_a_list_and_back() {
    let mut m = CountModel::new(2, 8);
    let before = dump(&m);
    for _ in 0..1 << 20 {
        m.add_with_context(&[3], &[5]);
    }
    assert!(m.maps[1].values().all(|n| n.inline().is_none()));
    assert_eq!(m.count(&[3, 5]), 1 << 20);
    for _ in 0..1 << 20 {
        m.remove_with_context(&[3], &[5]);
    }
    assert!(dump(&m) == before);
    assert!(m.lists.iter().all(Vec::is_empty));
}

#[test]
fn probabilities_sum_to_one_and_are_all_positive() {
    let mut rng = Rng(9);
    let mut m = CountModel::new(DEFAULT_ORDER, 300);
    let mut out = vec![0.0; 300];
    m.probs(&[1, 2], &mut out);
    assert!(out.iter().all(|&p| (p - 1.0 / 300.0).abs() < 1e-7));
    for _ in 0..500 {
        m.add(&rng.message(300, 30));
    }
    m.add(&[299, 300, 5000]);
    for ctx in [vec![], vec![0], vec![1, 2, 3, 4, 5, 6, 7], vec![299, 299, 299], rng.message(300, 9)] {
        m.probs(&ctx, &mut out);
        let sum: f64 = out.iter().map(|&p| f64::from(p)).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{ctx:?}: {sum}");
        assert!(out.iter().all(|&p| p > 0.0));
    }
}

#[test]
fn log2_prob_agrees_with_probs() {
    let mut rng = Rng(13);
    let mut m = CountModel::new(5, 40);
    for _ in 0..300 {
        m.add(&rng.message(40, 20));
    }
    let mut out = vec![0.0; 40];
    for _ in 0..50 {
        let ctx = rng.message(40, 6);
        m.probs(&ctx, &mut out);
        for tok in 0..40 {
            let diff = m.log2_prob(&ctx, tok) - f64::from(out[tok as usize]).log2();
            assert!(diff.abs() < 1e-4, "{ctx:?} {tok}: {diff}");
        }
    }
}

#[test]
fn what_followed_a_context_is_favoured() {
    let mut m = CountModel::new(4, 10);
    for _ in 0..5 {
        m.add(&[1, 2, 3, 4]);
    }
    m.add(&[7, 2, 3, 5]);
    let p = |ctx: &[u32], t| m.log2_prob(ctx, t);
    assert!(p(&[1, 2, 3], 4) > p(&[1, 2, 3], 5));
    assert!(p(&[7, 2, 3], 5) > p(&[7, 2, 3], 4));
    assert!(p(&[2, 3], 4) > p(&[2, 3], 6));
    assert!(p(&[1, 2, 3], 4) > -0.5);
}

#[test]
fn evidence_reports_the_longest_seen_context() {
    let mut m = CountModel::new(4, 10);
    assert_eq!(m.evidence(&[1, 2]), Evidence::default());
    m.add(&[1, 2, 3, 4]);
    m.add(&[1, 2, 3, 5]);
    m.add(&[8, 2, 3, 5]);
    assert_eq!(m.evidence(&[1, 2, 3]), Evidence { depth: 3, count: 2, distinct: 2 });
    assert_eq!(m.evidence(&[6, 2, 3]), Evidence { depth: 2, count: 3, distinct: 2 });
    assert_eq!(m.evidence(&[9, 9, 9, 9, 1]), Evidence { depth: 1, count: 2, distinct: 1 });
    assert_eq!(m.evidence(&[9]), Evidence { depth: 0, count: 12, distinct: 6 });
    let b = |depth, count, distinct| Evidence { depth, count, distinct }.bucket();
    assert!(b(3, 1, 1) < b(3, 3, 1) && b(3, 3, 1) < b(3, 9, 1) && b(3, 9, 1) < b(3, 9, 2));
    assert_eq!(b(200, u32::MAX, u32::MAX), EVIDENCE_BUCKETS - 1);
    let ev = Evidence { depth: 200, count: u32::MAX, distinct: u32::MAX };
    assert_eq!(bucket(ev, 1.0), BUCKETS - 1);
    assert_eq!(bucket(ev, 0.0), BUCKETS - CONFIDENCE_CLASSES);
    assert!(bucket(ev, 0.1) < bucket(ev, 0.5) && bucket(ev, 0.5) < bucket(ev, 0.8));
}

#[test]
fn mixing_sums_to_one() {
    let counts = [0.7, 0.2, 0.1, 0.0];
    let net = [0.1, 0.1, 0.3, 0.5];
    let mut out = [0.0; 4];
    for depth in 0..9 {
        for (count, distinct) in [(1, 1), (3, 1), (9, 1), (9, 4)] {
            let ev = Evidence { depth, count, distinct };
            Mixer::default().mix(ev, 0.5, &counts, &net, &mut out);
            assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            let w = Mixer::default().weight(ev, 0.5);
            assert!((out[0] - (w * 0.7 + (1.0 - w) * 0.1)).abs() < 1e-6);
        }
    }
}

#[test]
fn default_weights_grow_with_evidence() {
    let w = Mixer::default().weights;
    // One class of depth further: four evidence classes, each of every confidence class.
    let step = 4 * CONFIDENCE_CLASSES;
    for b in 0..BUCKETS - step {
        assert!(w[b] < w[b + step] || w[b + step] == 0.9, "bucket {b}");
    }
    assert!(w.iter().all(|&w| (0.01..=0.99).contains(&w)));
}

#[test]
fn fitting_recovers_a_planted_weight() {
    let mut rng = Rng(17);
    let planted = [(2, 0.2), (9, 0.5), (30, 0.85)];
    let mut samples = Vec::new();
    for &(bucket, w) in &planted {
        for _ in 0..4000 {
            // Two random distributions over 8 tokens; the actual token comes from their blend.
            let mut pc: Vec<f64> = (0..8).map(|_| rng.unit() + 0.01).collect();
            let mut pn: Vec<f64> = (0..8).map(|_| rng.unit().powi(3) + 0.01).collect();
            for p in [&mut pc, &mut pn] {
                let s: f64 = p.iter().sum();
                p.iter_mut().for_each(|x| *x /= s);
            }
            let (mut u, mut tok) = (rng.unit(), 0);
            while tok < 7 && u > w * pc[tok] + (1.0 - w) * pn[tok] {
                u -= w * pc[tok] + (1.0 - w) * pn[tok];
                tok += 1;
            }
            samples.push((bucket, pc[tok] as f32, pn[tok] as f32));
        }
    }
    let fitted = Mixer::fit(&samples);
    for &(bucket, w) in &planted {
        assert!((f64::from(fitted.weights[bucket]) - w).abs() < 0.05, "{bucket}: {}", fitted.weights[bucket]);
    }
    assert_eq!(fitted.weights[0], Mixer::default().weights[0]);
    let always_counts = Mixer::fit(&[(5, 0.9, 0.01); 10]);
    assert!((always_counts.weights[5] - 0.99).abs() < 1e-3);
}

#[test]
fn weights_saved_by_evidence_alone_apply_at_every_confidence() {
    let old: Vec<f32> = (0..EVIDENCE_BUCKETS).map(|b| b as f32 / 100.0).collect();
    let m = Mixer::from_saved(&old).unwrap();
    let ev = Evidence { depth: 2, count: 3, distinct: 1 };
    for top in [0.1, 0.5, 0.7, 0.95] {
        assert_eq!(m.weight(ev, top), old[ev.bucket()]);
    }
    let all: Vec<f32> = (0..BUCKETS).map(|b| b as f32 / 1000.0).collect();
    assert_eq!(Mixer::from_saved(&all).unwrap().weights.to_vec(), all);
    assert_eq!(Mixer::from_saved(&[0.5; 7]), None);
}
