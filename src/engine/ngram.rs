//! An interpolated Kneser–Ney trigram model over token IDs: the baseline the transformer has to
//! beat on held-out bits per byte (benchmarks only).

use std::collections::HashMap;

/// Counts for interpolated Kneser–Ney with one absolute discount.
pub struct KneserNey {
    vocab: usize,
    d: f64,
    tri: HashMap<(u32, u32, u32), u32>,
    /// c(u v ·) and the number of distinct w after (u v).
    bi_ctx: HashMap<(u32, u32), (u32, u32)>,
    /// N1+(· v w): distinct u before (v w).
    cont_bi: HashMap<(u32, u32), u32>,
    /// N1+(· v ·) and N1+(v ·) for the middle order.
    cont_ctx: HashMap<u32, (u32, u32)>,
    /// N1+(· w): distinct v before w.
    cont_uni: HashMap<u32, u32>,
    cont_total: u32,
}

impl KneserNey {
    pub fn train(stream: &[u32], vocab: usize) -> KneserNey {
        let mut tri: HashMap<(u32, u32, u32), u32> = HashMap::new();
        for w in stream.windows(3) {
            *tri.entry((w[0], w[1], w[2])).or_default() += 1;
        }
        let mut bi_ctx: HashMap<(u32, u32), (u32, u32)> = HashMap::new();
        let mut cont_bi: HashMap<(u32, u32), u32> = HashMap::new();
        for (&(u, v, w), &c) in &tri {
            let e = bi_ctx.entry((u, v)).or_default();
            e.0 += c;
            e.1 += 1;
            *cont_bi.entry((v, w)).or_default() += 1;
        }
        let mut cont_ctx: HashMap<u32, (u32, u32)> = HashMap::new();
        let mut cont_uni: HashMap<u32, u32> = HashMap::new();
        for (&(v, w), &n) in &cont_bi {
            let e = cont_ctx.entry(v).or_default();
            e.0 += n;
            e.1 += 1;
            *cont_uni.entry(w).or_default() += 1;
        }
        let cont_total = cont_uni.values().sum();
        KneserNey { vocab, d: 0.75, tri, bi_ctx, cont_bi, cont_ctx, cont_uni, cont_total }
    }

    fn p_uni(&self, w: u32) -> f64 {
        // Interpolated with the uniform distribution so unseen tokens keep some mass.
        let seen = self.cont_uni.get(&w).copied().unwrap_or(0) as f64;
        let lambda = 1e-3;
        (1.0 - lambda) * seen / self.cont_total.max(1) as f64 + lambda / self.vocab as f64
    }

    fn p_bi(&self, v: u32, w: u32) -> f64 {
        match self.cont_ctx.get(&v) {
            Some(&(total, types)) if total > 0 => {
                let c = self.cont_bi.get(&(v, w)).copied().unwrap_or(0) as f64;
                (c - self.d).max(0.0) / total as f64 + self.d * types as f64 / total as f64 * self.p_uni(w)
            }
            _ => self.p_uni(w),
        }
    }

    /// P(w | u v).
    pub fn prob(&self, u: u32, v: u32, w: u32) -> f64 {
        match self.bi_ctx.get(&(u, v)) {
            Some(&(total, types)) if total > 0 => {
                let c = self.tri.get(&(u, v, w)).copied().unwrap_or(0) as f64;
                (c - self.d).max(0.0) / total as f64 + self.d * types as f64 / total as f64 * self.p_bi(v, w)
            }
            _ => self.p_bi(v, w),
        }
    }

    /// Total negative log-likelihood (nats) of `stream[2..]` given the two tokens before each.
    pub fn nll(&self, stream: &[u32]) -> (f64, usize) {
        let mut nats = 0.0;
        for w in stream.windows(3) {
            nats -= self.prob(w[0], w[1], w[2]).max(1e-12).ln();
        }
        (nats, stream.len().saturating_sub(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_sum_to_one_and_favour_what_was_seen() {
        let stream: Vec<u32> = [1, 2, 3, 1, 2, 3, 1, 2, 4, 0, 2, 3].to_vec();
        let kn = KneserNey::train(&stream, 6);
        for (u, v) in [(1, 2), (0, 2), (5, 5)] {
            let sum: f64 = (0..6).map(|w| kn.prob(u, v, w)).sum();
            assert!((sum - 1.0).abs() < 1e-9, "context ({u},{v}) sums to {sum}");
        }
        assert!(kn.prob(1, 2, 3) > kn.prob(1, 2, 4));
        assert!(kn.prob(1, 2, 4) > kn.prob(1, 2, 5));
    }
}
