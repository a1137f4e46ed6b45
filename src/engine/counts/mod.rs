//! Count statistics of a guild's chat: a variable-order interpolated Kneser–Ney model over token IDs
//! that forgets a deleted message exactly, and the mixer that blends it with the network.
//!
//! Order k (1..=order) keeps a map from the hash of the k − 1 context tokens to the tokens seen
//! after that context, each with its raw count and its continuation count (how many distinct tokens
//! were seen just before the k-gram), plus counts of counts for the modified Kneser–Ney discounts.
//! All of it is integers that depend only on the multiset of counted n-grams, so removing a
//! message undoes adding it bit for bit.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The order (longest n-gram) the bot uses.
pub const DEFAULT_ORDER: usize = 6;
/// The longest order a model can have.
pub const MAX_ORDER: usize = 12;
/// How many classes of the counts' evidence ([`Evidence::bucket`]) there are.
pub const EVIDENCE_BUCKETS: usize = 32;
/// How many classes of the network's confidence (its most likely token's probability) there are.
pub const CONFIDENCE_CLASSES: usize = 4;
/// How many weights the mixer has: one per evidence and confidence class.
pub const BUCKETS: usize = EVIDENCE_BUCKETS * CONFIDENCE_CLASSES;

/// The smallest probability handed out.
const FLOOR: f64 = 1e-30;
/// Top bit of a [`Node`]: the rest is an index into `CountModel::lists`.
const LIST: u32 = 1 << 31;

/// splitmix64's finaliser: a bijection that spreads every input bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Map keys are hashes already, so the hasher only spreads them over all 64 bits (the table
/// takes its buckets from the low bits and a tag from the top seven).
#[derive(Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.0 = u64::from(x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A context's key: 32 bits of its 64-bit hash. Entries of 8 bytes instead of 16 halve the
/// tables, which are most of a guild's voice. Two contexts of one order may share a key (about
/// one pair in a map of 90 000 contexts): they then share their followers, a blur of the
/// statistics, never of the bookkeeping, since removing a message undoes adding it key by key.
type Key = u32;

type Map = HashMap<Key, Node, BuildHasherDefault<PassHasher>>;

impl std::fmt::Debug for CountModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountModel")
            .field("order", &self.order)
            .field("vocab", &self.vocab)
            .field("contexts", &self.maps.iter().map(|m| m.len()).sum::<usize>())
            .finish_non_exhaustive()
    }
}

/// A token seen after a context, with its raw and continuation counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Follower {
    tok: u32,
    raw: u32,
    cont: u32,
}

impl Follower {
    fn count(&self, cont: bool) -> u32 {
        [self.raw, self.cont][usize::from(cont)]
    }

    /// Adds one to or takes one from a count; returns the old count, `None` if there is none to take.
    fn step(&mut self, cont: bool, up: bool) -> Option<u32> {
        let c = if cont { &mut self.cont } else { &mut self.raw };
        let old = *c;
        *c = if up { old.checked_add(1)? } else { old.checked_sub(1)? };
        Some(old)
    }
}

/// The followers of one context in 4 bytes: most long contexts are seen once or a few times, so a
/// single follower is packed inline (token < 2^16, raw < 2^8, continuation < 2^7); otherwise
/// [`LIST`] | the index of a sorted list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Node(u32);

impl Node {
    fn pack(f: Follower) -> Option<Node> {
        (f.tok < 1 << 16 && f.raw < 1 << 8 && f.cont < 1 << 7)
            .then_some(Node(f.tok | (f.raw << 16) | (f.cont << 24)))
    }

    fn inline(self) -> Option<Follower> {
        let (tok, raw, cont) = (self.0 & 0xFFFF, (self.0 >> 16) & 0xFF, self.0 >> 24);
        (self.0 & LIST == 0).then_some(Follower { tok, raw, cont })
    }

    /// The index of the node's list.
    fn list(self) -> usize {
        (self.0 & !LIST) as usize
    }
}

/// A context's followers, unpacked or borrowed from their list.
enum View<'a> {
    One([Follower; 1]),
    List(&'a [Follower]),
}

impl View<'_> {
    fn all(&self) -> &[Follower] {
        match self {
            View::One(f) => f,
            View::List(l) => l,
        }
    }

    fn find(&self, tok: u32) -> Option<Follower> {
        let fs = self.all();
        fs.binary_search_by_key(&tok, |f| f.tok).ok().map(|i| fs[i])
    }
}

/// Stores a list in a free slot; returns its node.
fn alloc(lists: &mut Vec<Vec<Follower>>, free: &mut Vec<u32>, list: Vec<Follower>) -> Node {
    let i = free.pop().map_or(lists.len(), |i| i as usize);
    match lists.get_mut(i) {
        Some(slot) => *slot = list,
        None => lists.push(list),
    }
    // 2^31 lists would take 50 GB: an index always fits.
    Node(LIST | i as u32)
}

/// What the counts know about a context: how much of it was seen before, and how often.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Length of the longest suffix of the context seen before (at most order − 1).
    pub depth: u8,
    /// How often that suffix was seen.
    pub count: u32,
    /// How many distinct tokens followed it.
    pub distinct: u32,
}

impl Evidence {
    /// One of [`EVIDENCE_BUCKETS`]: the depth (capped at 7) times four classes: seen once, deterministic
    /// (one follower) seen 2–4 times, deterministic seen 5+ times, and branching.
    pub fn bucket(&self) -> usize {
        let class = match (self.count, self.distinct) {
            (0..=1, _) => 0,
            (_, 2..) => 3,
            (2..=4, _) => 1,
            _ => 2,
        };
        usize::from(self.depth.min(7)) * 4 + class
    }
}

/// One level of the interpolation: its discounts, denominator and the weight of the level below.
struct Level {
    d: [f64; 3],
    denom: f64,
    gamma: f64,
}

impl Level {
    fn alpha(&self, c: u32) -> f64 {
        (f64::from(c) - self.d[c.min(3) as usize - 1]).max(0.0) / self.denom
    }
}

/// A variable-order interpolated modified Kneser–Ney model over tokens below `vocab`.
#[derive(Clone)]
pub struct CountModel {
    order: usize,
    vocab: usize,
    /// `maps[j]`: contexts of j tokens, predicting n-grams of order j + 1.
    maps: Vec<Map>,
    /// Follower lists of contexts with several followers (or counts too big to pack), and the
    /// slots of lists that were dropped.
    lists: Vec<Vec<Follower>>,
    free: Vec<u32>,
    /// `hist[j][kind][c]`: how many n-grams of order j + 1 have count c (1..=4), raw (kind 0) and
    /// continuation (kind 1).
    hist: Vec<[[u64; 5]; 2]>,
}

impl CountModel {
    /// An empty model of n-grams up to `order` (clamped to 1..=[`MAX_ORDER`]) over `vocab` tokens.
    pub fn new(order: usize, vocab: usize) -> CountModel {
        let order = order.clamp(1, MAX_ORDER);
        CountModel {
            order,
            vocab: vocab.clamp(1, 1 << 24),
            maps: (0..order).map(|_| Map::default()).collect(),
            lists: Vec::new(),
            free: Vec::new(),
            hist: vec![[[0; 5]; 2]; order],
        }
    }

    pub fn order(&self) -> usize {
        self.order
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// How many tokens were counted.
    pub fn tokens(&self) -> u64 {
        let root = self.maps[0].values().next().map(|&n| self.view(n));
        root.map_or(0, |v| v.all().iter().map(|f| u64::from(f.raw)).sum())
    }

    /// Roughly how many bytes the counts take.
    pub fn approx_bytes(&self) -> usize {
        // A bucket holds an entry and a control byte; a table's capacity is 7/8 of its buckets.
        let bucket = std::mem::size_of::<(Key, Node)>() + 1;
        let maps: usize = self.maps.iter().map(|m| m.capacity() * 8 / 7 * bucket).sum();
        maps + self.lists.iter().map(|l| 24 + 12 * l.capacity()).sum::<usize>()
    }

    /// Counts one message with nothing before it.
    pub fn add(&mut self, tokens: &[u32]) {
        self.update(&[], tokens, true);
    }

    /// Undoes [`CountModel::add`] with the same tokens.
    pub fn remove(&mut self, tokens: &[u32]) {
        self.update(&[], tokens, false);
    }

    /// Counts every n-gram that predicts a token of `tokens` (tokens ≥ vocab are skipped), with up
    /// to order − 1 tokens of `context` (the end of the channel before the message) in front.
    pub fn add_with_context(&mut self, context: &[u32], tokens: &[u32]) {
        self.update(context, tokens, true);
    }

    /// Undoes [`CountModel::add_with_context`] with the same arguments (only the last order − 1
    /// tokens of `context` matter): afterwards the model is as if the message was never added.
    pub fn remove_with_context(&mut self, context: &[u32], tokens: &[u32]) {
        self.update(context, tokens, false);
    }

    /// The raw count of an n-gram of 1..=order tokens; 0 for any other length.
    pub fn count(&self, ngram: &[u32]) -> u64 {
        let Some((&tok, ctx)) = ngram.split_last() else { return 0 };
        if ctx.len() >= self.order {
            return 0;
        }
        let mut keys = [0; MAX_ORDER];
        self.context_keys(ctx, &mut keys);
        let node = self.maps[ctx.len()].get(&keys[ctx.len()]);
        node.and_then(|&n| self.view(n).find(tok)).map_or(0, |f| u64::from(f.raw))
    }

    /// How much of the context the counts have seen.
    pub fn evidence(&self, context: &[u32]) -> Evidence {
        let (found, nodes) = self.chain(context);
        let Some(depth) = found.checked_sub(1) else { return Evidence::default() };
        let view = self.view(nodes[depth]);
        let count = view.all().iter().map(|f| u64::from(f.raw)).sum::<u64>();
        let distinct = view.all().len() as u32;
        Evidence { depth: depth as u8, count: count.min(u64::from(u32::MAX)) as u32, distinct }
    }

    /// The next-token distribution after `context` into `out` (of length `vocab`): it sums to 1
    /// and every entry is positive.
    pub fn probs(&self, context: &[u32], out: &mut [f32]) {
        let (found, nodes) = self.chain(context);
        out.fill(1.0 / out.len().max(1) as f32);
        for (j, &node) in nodes[..found].iter().enumerate() {
            let view = self.view(node);
            let cont = j + 1 < self.order;
            let Some(lv) = self.level(j, view.all(), cont) else { continue };
            let g = lv.gamma as f32;
            out.iter_mut().for_each(|x| *x *= g);
            for f in view.all() {
                let c = f.count(cont);
                if let (true, Some(x)) = (c > 0, out.get_mut(f.tok as usize)) {
                    *x += lv.alpha(c) as f32;
                }
            }
        }
        out.iter_mut().for_each(|x| *x = x.max(FLOOR as f32));
    }

    /// log2 P(token | context), as [`CountModel::probs`] has it (computed in f64).
    pub fn log2_prob(&self, context: &[u32], token: u32) -> f64 {
        let (found, nodes) = self.chain(context);
        let mut p = 1.0 / self.vocab as f64;
        for (j, &node) in nodes[..found].iter().enumerate() {
            let view = self.view(node);
            let cont = j + 1 < self.order;
            let Some(lv) = self.level(j, view.all(), cont) else { continue };
            let c = view.find(token).map_or(0, |f| f.count(cont));
            p = p * lv.gamma + if c > 0 { lv.alpha(c) } else { 0.0 };
        }
        p.max(FLOOR).log2()
    }

    fn view(&self, node: Node) -> View<'_> {
        match node.inline() {
            Some(f) => View::One([f]),
            None => View::List(self.lists.get(node.list()).map_or(&[], Vec::as_slice)),
        }
    }

    /// Hashes of the last 0, 1, …, m tokens of `history` (m < order) into `keys`; returns m + 1.
    fn context_keys(&self, history: &[u32], keys: &mut [Key; MAX_ORDER]) -> usize {
        let m = history.len().min(self.order - 1);
        let mut h = 0x243F_6A88_85A3_08D3;
        keys[0] = (h >> 32) as Key;
        for j in 1..=m {
            h = mix(h ^ u64::from(history[history.len() - j]).wrapping_add(0x9E37_79B9_7F4A_7C15));
            keys[j] = (h >> 32) as Key;
        }
        m + 1
    }

    /// The nodes of the context's suffixes of 0, 1, … tokens, up to the first one never seen.
    fn chain(&self, context: &[u32]) -> (usize, [Node; MAX_ORDER]) {
        let mut keys = [0; MAX_ORDER];
        let levels = self.context_keys(context, &mut keys);
        let mut nodes = [Node(0); MAX_ORDER];
        let mut found = 0;
        while found < levels {
            let Some(&node) = self.maps[found].get(&keys[found]) else { break };
            nodes[found] = node;
            found += 1;
        }
        (found, nodes)
    }

    /// Modified Kneser–Ney discounts D1, D2, D3+ of order j + 1 from its counts of counts.
    fn discounts(&self, j: usize, cont: bool) -> [f64; 3] {
        let n = self.hist[j][usize::from(cont)].map(|x| x as f64);
        let y = if n[1] > 0.0 { n[1] / (n[1] + 2.0 * n[2]) } else { 0.5 };
        std::array::from_fn(|i| {
            let c = i as f64 + 1.0;
            let d = if n[i + 1] > 0.0 { c - (c + 1.0) * y * n[i + 2] / n[i + 1] } else { 0.5 * c };
            d.clamp(0.05, c - 0.05)
        })
    }

    /// The interpolation weights of one context's followers; `None` if they have no counts.
    fn level(&self, j: usize, followers: &[Follower], cont: bool) -> Option<Level> {
        let (mut total, mut n) = (0u64, [0u32; 3]);
        for f in followers {
            let c = f.count(cont);
            if c > 0 {
                total += u64::from(c);
                n[c.min(3) as usize - 1] += 1;
            }
        }
        if total == 0 {
            return None;
        }
        let d = self.discounts(j, cont);
        let mass = d[0] * f64::from(n[0]) + d[1] * f64::from(n[1]) + d[2] * f64::from(n[2]);
        Some(Level { d, denom: total as f64, gamma: mass / total as f64 })
    }

    fn update(&mut self, context: &[u32], tokens: &[u32], up: bool) {
        let keep = context.len().min(self.order - 1);
        let seq: Vec<u32> = context[context.len() - keep..].iter().chain(tokens).copied().collect();
        let mut keys = [0; MAX_ORDER];
        for (i, &tok) in seq.iter().enumerate().skip(keep) {
            if tok as usize >= self.vocab {
                continue;
            }
            let levels = self.context_keys(&seq[..i], &mut keys);
            // The raw counts of order j + 1 decide the continuation counts of order j, so adding
            // climbs the orders and removing descends: a continuation count is back to zero before
            // the raw count below it is.
            for step in 0..levels {
                let j = if up { step } else { levels - 1 - step };
                let Some(old) = self.bump(j, keys[j], tok, false, up) else { continue };
                self.note(j, false, old, up);
                if j > 0 && old == u32::from(!up) {
                    if let Some(old) = self.bump(j - 1, keys[j - 1], tok, true, up) {
                        self.note(j - 1, true, old, up);
                    }
                }
            }
        }
    }

    /// Adds one to (`up`) or takes one from the raw or continuation count of `tok` after the
    /// context `key` of `maps[j]`, creating and dropping entries and lists as needed. Returns the
    /// old count; `None` when there was nothing to change.
    fn bump(&mut self, j: usize, key: Key, tok: u32, cont: bool, up: bool) -> Option<u32> {
        let creating = up && !cont;
        let mut e = match self.maps[j].entry(key) {
            Entry::Occupied(e) => e,
            Entry::Vacant(e) if creating => {
                e.insert(Node::pack(Follower { tok, raw: 1, cont: 0 })?);
                return Some(0);
            }
            Entry::Vacant(_) => return None,
        };
        let at = match e.get().inline() {
            Some(mut f) if f.tok == tok => {
                let old = f.step(cont, up)?;
                if f.raw == 0 {
                    e.remove();
                } else {
                    *e.get_mut() =
                        Node::pack(f).unwrap_or_else(|| alloc(&mut self.lists, &mut self.free, vec![f]));
                }
                return Some(old);
            }
            Some(_) if !creating => return None,
            Some(f) => {
                let new = Follower { tok, raw: 1, cont: 0 };
                let list = if f.tok < tok { vec![f, new] } else { vec![new, f] };
                *e.get_mut() = alloc(&mut self.lists, &mut self.free, list);
                return Some(0);
            }
            None => e.get().list(),
        };
        let list = self.lists.get_mut(at)?;
        let i = match list.binary_search_by_key(&tok, |f| f.tok) {
            Ok(i) => i,
            Err(i) if creating => {
                if list.len() == list.capacity() {
                    list.reserve_exact(1 + list.len() / 8);
                }
                list.insert(i, Follower { tok, raw: 0, cont: 0 });
                i
            }
            Err(_) => return None,
        };
        let old = list[i].step(cont, up)?;
        if list[i].raw == 0 {
            list.remove(i);
        }
        match (list.len(), list.first().and_then(|&f| Node::pack(f))) {
            (0, _) => {
                e.remove();
            }
            (1, Some(node)) => *e.get_mut() = node,
            _ => return Some(old),
        }
        self.lists[at] = Vec::new();
        self.free.push(at as u32);
        Some(old)
    }

    /// Moves one n-gram in the counts of counts from `old` to its new count.
    fn note(&mut self, j: usize, cont: bool, old: u32, up: bool) {
        let new = if up { old + 1 } else { old - 1 };
        let h = &mut self.hist[j][usize::from(cont)];
        if (1..=4).contains(&old) {
            h[old as usize] -= 1;
        }
        if (1..=4).contains(&new) {
            h[new as usize] += 1;
        }
    }
}

/// The mixer's bucket for the counts' evidence and the network's confidence (the probability
/// of its most likely token): the counts deserve more weight where they saw the context often
/// and where the network is unsure.
pub fn bucket(ev: Evidence, top: f32) -> usize {
    let confidence = match top {
        t if t < 0.3 => 0,
        t if t < 0.6 => 1,
        t if t < 0.9 => 2,
        _ => 3,
    };
    ev.bucket() * CONFIDENCE_CLASSES + confidence
}

/// Blends the counts' and the network's next-token distributions with a weight per bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mixer {
    /// Weight of the counts in each [`bucket`]; the network gets the rest.
    pub weights: [f32; BUCKETS],
}

impl Default for Mixer {
    /// Trusts the counts more the longer the matched context and the more often it was seen.
    fn default() -> Mixer {
        Mixer::by_evidence(&std::array::from_fn::<f32, EVIDENCE_BUCKETS, _>(|b| {
            let class = [0.0, 0.1, 0.2, 0.05][b % 4];
            (0.05 + 0.08 * (b / 4) as f32 + class).min(0.9)
        }))
    }
}

impl Mixer {
    /// Weights that depend on the evidence only (what runs trained before the network's confidence
    /// had a say were saved with).
    pub fn by_evidence(weights: &[f32; EVIDENCE_BUCKETS]) -> Mixer {
        Mixer { weights: std::array::from_fn(|b| weights[b / CONFIDENCE_CLASSES]) }
    }

    /// Saved weights: one per bucket, or one per evidence class from an older run; `None` for
    /// any other length.
    pub fn from_saved(weights: &[f32]) -> Option<Mixer> {
        match <[f32; BUCKETS]>::try_from(weights) {
            Ok(weights) => Some(Mixer { weights }),
            Err(_) => <[f32; EVIDENCE_BUCKETS]>::try_from(weights).ok().map(|w| Mixer::by_evidence(&w)),
        }
    }

    /// The counts' weight for this evidence when the network's most likely token has probability
    /// `top`.
    pub fn weight(&self, ev: Evidence, top: f32) -> f32 {
        self.weights[bucket(ev, top)]
    }

    /// `out = w·counts + (1 − w)·net`, renormalised so it sums to 1; `top` is the largest of
    /// `net` (its caller has just computed `net`, and knows it).
    pub fn mix(&self, ev: Evidence, top: f32, counts: &[f32], net: &[f32], out: &mut [f32]) {
        let w = self.weight(ev, top);
        let mut sum = 0.0f64;
        for ((o, &c), &n) in out.iter_mut().zip(counts).zip(net) {
            *o = w * c + (1.0 - w) * n;
            sum += f64::from(*o);
        }
        if sum > 0.0 {
            let inv = (1.0 / sum) as f32;
            out.iter_mut().for_each(|o| *o *= inv);
        }
    }

    /// Per bucket, the weight in [0.01, 0.99] that maximises Σ log(w·p_counts + (1 − w)·p_net) over
    /// the samples `(bucket, p_counts(actual), p_net(actual))`; buckets without samples keep the
    /// default weight.
    pub fn fit(samples: &[(usize, f32, f32)]) -> Mixer {
        let mut by_bucket: Vec<Vec<(f64, f64)>> = vec![Vec::new(); BUCKETS];
        for &(b, c, n) in samples {
            if let Some(v) = by_bucket.get_mut(b) {
                v.push((f64::from(c), f64::from(n)));
            }
        }
        let mut mixer = Mixer::default();
        for (w, s) in mixer.weights.iter_mut().zip(&by_bucket) {
            if s.is_empty() {
                continue;
            }
            // The log-likelihood is concave in w, so bisect on the sign of its derivative.
            let slope =
                |w: f64| s.iter().map(|&(c, n)| (c - n) / (w * c + (1.0 - w) * n).max(FLOOR)).sum::<f64>();
            let (mut lo, mut hi) = (0.01, 0.99);
            for _ in 0..40 {
                let mid = 0.5 * (lo + hi);
                (lo, hi) = if slope(mid) > 0.0 { (mid, hi) } else { (lo, mid) };
            }
            *w = (0.5 * (lo + hi)) as f32;
        }
        mixer
    }
}

#[cfg(test)]
mod tests;
