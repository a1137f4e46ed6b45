//! A channel's prompt kept as its key/value cache: the next reply in the channel prefills only
//! the messages said since, not the whole context again (for a pretrained base, the prefill is
//! most of a reply's time). The kept context grows as messages arrive until it no longer fits,
//! then starts over from the recent messages.

use super::fast::{FastCache, FastModel};
use super::generate;
use super::tokenizer::ChatTokenizer;
use super::EngineError;

/// A channel's context: its tokens (whole messages, without the start of the reply) and the
/// cache holding the first `cache.pos` of them (the rest are computed with the mention, in one
/// pass, by [`start_reply`]).
#[derive(Clone)]
pub struct Prefilled {
    pub ids: Vec<u32>,
    pub cache: FastCache,
    /// Tokens of the channel's history this reply computed (the rest came from the kept
    /// context; the message replied to is not counted).
    pub computed: usize,
    /// How many of `ids` are the channel's history; the message replied to follows. It is kept
    /// too, since the next reply's history usually holds it, but that copy may read otherwise
    /// (the store's): then the context continues from here.
    pub settled: usize,
}

impl Prefilled {
    /// Bytes it keeps.
    pub fn bytes(&self) -> usize {
        self.cache.bytes() + self.ids.len() * 4
    }
}

/// The context of `history` (oldest first) within `budget` tokens, continuing `kept` when the
/// messages of `history` not yet in it follow on from it and fit. Nothing is computed yet.
pub fn prefill(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    budget: usize,
    kept: Option<Prefilled>,
) -> Result<Prefilled, EngineError> {
    if let Some(mut kept) = kept {
        let mut ends = vec![kept.ids.len()];
        if kept.settled < kept.ids.len() {
            ends.push(kept.settled);
        }
        for end in ends {
            if let Some(new) = continuation(tok, history, &kept.ids[..end])? {
                if end + new.len() < budget {
                    kept.ids.truncate(end);
                    kept.cache.rewind(end);
                    kept.computed = new.len();
                    kept.ids.extend(new);
                    kept.settled = kept.ids.len();
                    return Ok(kept);
                }
            }
        }
    }
    if budget == 0 {
        return Ok(Prefilled { ids: Vec::new(), cache: model.new_cache(), computed: 0, settled: 0 });
    }
    // From scratch: the recent messages that fit, cut at a message boundary.
    let mut ids = generate::prompt(tok, history, budget)?;
    // The start of the reply is `start_reply`'s: mynah's own framing token comes off (with no
    // history it is all there is); a newline that ends the last line stays.
    if ids.last() == Some(&tok.msg) && tok.msg != tok.eom {
        ids.pop();
    }
    Ok(Prefilled { computed: ids.len(), settled: ids.len(), ids, cache: model.new_cache() })
}

/// The tokens of the messages of `history` that `kept` does not end with, when the ones it
/// does end with are a head of `history` (`None`: the kept context is not followed by this
/// history, e.g. a message in it was edited or deleted).
fn continuation(
    tok: &ChatTokenizer,
    history: &[(String, String)],
    kept: &[u32],
) -> Result<Option<Vec<u32>>, EngineError> {
    if kept.is_empty() {
        return Ok(None);
    }
    let encoded: Vec<Vec<u32>> =
        history.iter().map(|(a, c)| tok.encode_message(a, c)).collect::<Result<_, _>>()?;
    // The longest head of `history` whose tokens end the kept context.
    for j in (1..=encoded.len()).rev() {
        let head: Vec<u32> = encoded[..j].concat();
        if kept.ends_with(&head) {
            return Ok(Some(encoded[j..].concat()));
        }
    }
    Ok(None)
}

/// A reply's start after `context`: what the context's cache lacks, `then` (the mention's
/// tokens) and the start of a message, forwarded in one pass. Returns the sequence, the cache
/// (held as a [`FastCache::shared`] prefix) and the logits a reply is decoded from, and the
/// context to keep for the channel's next reply (the mention in it, after
/// [`Prefilled::settled`]).
pub fn start_reply(
    model: &FastModel,
    tok: &ChatTokenizer,
    context: Prefilled,
    then: &[u32],
) -> Result<(Vec<u32>, FastCache, Vec<f32>, Prefilled), EngineError> {
    let Prefilled { mut ids, mut cache, computed, .. } = context;
    let settled = ids.len();
    let mut new = ids[cache.pos.min(settled)..].to_vec();
    new.extend_from_slice(then);
    ids.extend_from_slice(then);
    let whole = ids.len();
    // mynah's own framing starts a message with a token; in `author: content` lines the newline
    // that ended the last message already has.
    if ids.last() != Some(&tok.msg) {
        new.push(tok.msg);
        ids.push(tok.msg);
    }
    if new.is_empty() {
        // All of it is cached: the last token again, for its logits.
        let last = cache.pos.checked_sub(1).filter(|&l| l < ids.len());
        let last = last.ok_or_else(|| EngineError::BadConfig("nothing to start a reply from".into()))?;
        cache.rewind(last);
        new.push(ids[last]);
    }
    let mut logits = Vec::new();
    model.forward(&new, &mut cache, &mut logits)?;
    // The candidates share the prompt's keys and values instead of each copying them, and so
    // does the kept context: the next reply's new rows attend to it as packed products.
    let cache = cache.shared();
    let mut kept = cache.clone();
    kept.rewind(whole);
    let keep = Prefilled { ids: ids[..whole].to_vec(), cache: kept, computed, settled };
    Ok((ids, cache, logits, keep))
}

#[cfg(test)]
mod tests;
