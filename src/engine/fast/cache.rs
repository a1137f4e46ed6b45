//! A generation's state in the serving path: its keys and values (a prompt's possibly shared
//! between reply candidates) and the scratch buffers its passes reuse.

use std::sync::Arc;

use super::kernels::Precision;
use super::panels::Panels;

/// One generation's state: the KV cache and scratch space, allocated once. Cloning it forks a
/// generation; forks of a [`FastCache::shared`] cache hold their common prompt once.
#[derive(Clone)]
pub struct FastCache {
    /// Keys and values of the first positions, shared with other forks of the same prompt.
    pub(super) prefix: Option<Arc<Prefix>>,
    /// Per layer, the keys and values of the positions after the prefix up to `pos`,
    /// `[pos][kv]`: they grow with the sequence, so a cache costs what its context holds.
    pub(super) k: Vec<Vec<f32>>,
    pub(super) v: Vec<Vec<f32>>,
    pub pos: usize,
    /// Floats per position in one layer's keys (or values), and per head.
    pub(super) width: usize,
    pub(super) head_dim: usize,
    pub(super) scratch: Scratch,
}

/// The keys and values of a prompt's `len` positions, per layer.
pub(super) struct Prefix {
    pub(super) k: Vec<Vec<f32>>,
    pub(super) v: Vec<Vec<f32>>,
    pub(super) len: usize,
    /// The same per layer and key-value head, packed for products with the candidates' rows:
    /// the keys `[len, head_dim]` (scores), the values transposed, `[head_dim, len]` (outputs).
    pub(super) packed: Vec<Vec<(Panels, Panels)>>,
}

/// Working buffers of one forward pass, reused from pass to pass.
#[derive(Clone, Default)]
pub(super) struct Scratch {
    pub(super) x: Vec<f32>,
    pub(super) xn: Vec<f32>,
    pub(super) q: Vec<f32>,
    pub(super) kk: Vec<f32>,
    pub(super) vv: Vec<f32>,
    pub(super) att: Vec<f32>,
    pub(super) scores: Vec<f32>,
    pub(super) g: Vec<f32>,
    pub(super) u: Vec<f32>,
    pub(super) tmp: Vec<f32>,
    /// An adapter's `x aᵀ`.
    pub(super) lr: Vec<f32>,
    /// An adapter's `(x aᵀ) bᵀ`.
    pub(super) lr_out: Vec<f32>,
    /// The normed last row of each cache, and their logits.
    pub(super) last: Vec<f32>,
    pub(super) out: Vec<f32>,
}

impl FastCache {
    /// Forgets every position from `pos` on: the next tokens continue from there.
    pub fn rewind(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
        if let Some(prefix) = self.prefix.as_ref().filter(|p| p.len > self.pos) {
            // Rewound into the shared part: this cache takes its own copy of what is left.
            let n = self.pos * self.width;
            self.k = prefix.k.iter().map(|l| l[..n].to_vec()).collect();
            self.v = prefix.v.iter().map(|l| l[..n].to_vec()).collect();
            self.prefix = None;
        }
    }

    /// This cache with its positions held once behind a shared pointer: its clones (reply
    /// candidates) share them instead of each copying them, and a batched pass reads each
    /// shared key and value once for all of them.
    pub fn shared(mut self) -> FastCache {
        let n = (self.pos - self.prefix_len()) * self.width;
        // This cache's own positions are moved, not copied (stale ones after a rewind dropped).
        let own = |l: &mut Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            l.iter_mut()
                .map(|x| {
                    let mut x = std::mem::take(x);
                    x.truncate(n);
                    x
                })
                .collect()
        };
        let (mut k, mut v) = (own(&mut self.k), own(&mut self.v));
        if let Some(p) = self.prefix.take() {
            // The shared positions first, then this cache's own.
            let join = |pre: &[Vec<f32>], own: &mut Vec<Vec<f32>>| {
                for (all, mine) in pre.iter().zip(own.iter_mut()) {
                    let mut joined = all.clone();
                    joined.append(mine);
                    *mine = joined;
                }
            };
            join(&p.k, &mut k);
            join(&p.v, &mut v);
        }
        let (len, width, hd) = (self.pos, self.width, self.head_dim);
        let packed = k
            .iter()
            .zip(&v)
            .map(|(k, v)| {
                (0..width / hd.max(1))
                    .map(|head| {
                        let off = head * hd;
                        (
                            Panels::gather(len, hd, Precision::F16, |j, e| k[j * width + off + e]),
                            Panels::gather(hd, len, Precision::F16, |e, j| v[j * width + off + e]),
                        )
                    })
                    .collect()
            })
            .collect();
        self.prefix = Some(Arc::new(Prefix { k, v, len, packed }));
        // A prefill's buffers are long; forks need a token's worth.
        self.scratch = Scratch::default();
        self
    }

    pub(super) fn prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len)
    }

    /// Bytes its keys and values hold (a shared prefix counted whole, packed copies too).
    pub fn bytes(&self) -> usize {
        let own: usize = self.k.iter().chain(&self.v).map(|l| l.len() * 4).sum();
        let packed =
            |p: &Prefix| -> usize { p.packed.iter().flatten().map(|(k, v)| k.bytes() + v.bytes()).sum() };
        own + self
            .prefix
            .as_ref()
            .map_or(0, |p| p.k.iter().chain(&p.v).map(|l| l.len() * 4).sum::<usize>() + packed(p))
    }
}
