//! The channels' kept contexts ([`crate::engine::prompt`]), owned by the generation thread: at
//! most [`KEPT_BYTES`] in all, the least recently used dropped first. An entry serves only the
//! model that made it, and only until the guild's messages change by a removal (its epoch is
//! the guild's voice ticket, which every removal bumps): a kept cache may hold a message that
//! was deleted since.

use std::collections::HashMap;

use crate::engine::prompt::Prefilled;

/// Bytes of kept contexts, all channels together (a pretrained base's context of a few hundred
/// tokens takes some 10 MB; a small model's, a few hundred kB).
pub const KEPT_BYTES: usize = 128 << 20;

/// Which context: the guild and channel.
pub type Key = (String, String);

#[derive(Default)]
pub struct KeptPrompts {
    entries: HashMap<Key, Entry>,
    clock: u64,
    bytes: usize,
}

struct Entry {
    /// The model it was computed by (its address while it is loaded).
    model: usize,
    epoch: u64,
    used: u64,
    prefilled: Prefilled,
}

impl KeptPrompts {
    /// The channel's kept context, if it was made by `model` at `epoch` (taken out: it is kept
    /// again, continued, after the reply).
    pub fn take(&mut self, key: &Key, model: usize, epoch: u64) -> Option<Prefilled> {
        let entry = self.entries.remove(key)?;
        self.bytes -= entry.prefilled.bytes();
        (entry.model == model && entry.epoch == epoch).then_some(entry.prefilled)
    }

    /// Keeps the channel's context, dropping the least recently used ones beyond the budget.
    pub fn keep(&mut self, key: Key, model: usize, epoch: u64, prefilled: Prefilled) {
        let size = prefilled.bytes();
        if size > KEPT_BYTES {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.entries.insert(key, Entry { model, epoch, used: self.clock, prefilled }) {
            self.bytes -= old.prefilled.bytes();
        }
        self.bytes += size;
        while self.bytes > KEPT_BYTES {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.prefilled.bytes();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fast::FastModel;
    use crate::engine::{train, Preset};

    fn prefilled(model: &FastModel, tokens: usize) -> Prefilled {
        let ids: Vec<u32> = (0..tokens as u32).map(|i| i % 300).collect();
        let (mut cache, mut logits) = (model.new_cache(), Vec::new());
        model.forward(&ids, &mut cache, &mut logits).unwrap();
        Prefilled { computed: ids.len(), settled: ids.len(), ids, cache }
    }

    #[test]
    fn a_kept_context_serves_only_its_model_and_epoch_within_the_budget() {
        let cfg = Preset::tiny().model_config(320);
        let (model, _) = train::init_model(&cfg, &candle_core::Device::Cpu, 0).unwrap();
        let fast = FastModel::from_model(&model).unwrap();
        let mut kept = KeptPrompts::default();
        let key = |c: &str| ("g".to_string(), c.to_string());
        kept.keep(key("a"), 1, 7, prefilled(&fast, 20));
        assert!(kept.take(&key("a"), 2, 7).is_none(), "another model");
        assert!(kept.is_empty(), "a stale entry is dropped when looked up");
        kept.keep(key("a"), 1, 7, prefilled(&fast, 20));
        assert!(kept.take(&key("a"), 1, 8).is_none(), "messages were removed since");
        kept.keep(key("a"), 1, 7, prefilled(&fast, 20));
        assert_eq!(kept.take(&key("a"), 1, 7).map(|p| p.ids.len()), Some(20));

        // Beyond the budget, the least recently used go first.
        let one = prefilled(&fast, 40);
        let fits = KEPT_BYTES / one.bytes();
        for i in 0..fits + 3 {
            kept.keep(key(&format!("c{i}")), 1, 7, one.clone());
        }
        assert!(kept.len() <= fits && kept.bytes <= KEPT_BYTES);
        assert!(kept.take(&key("c0"), 1, 7).is_none(), "the oldest went");
        assert!(kept.take(&key(&format!("c{}", fits + 2)), 1, 7).is_some(), "the newest stayed");
    }
}
