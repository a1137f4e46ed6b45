//! A channel's prompt kept as its key/value cache: the next reply in the channel prefills only
//! the messages said since, not the whole context again (for a pretrained base, the prefill is
//! most of a reply's time). The kept context grows as messages arrive until it no longer fits,
//! then starts over from the recent messages.

use super::fast::{FastCache, FastModel};
use super::generate;
use super::tokenizer::ChatTokenizer;
use super::EngineError;

/// A prefilled context: its tokens (whole messages, without the start of the reply), the cache
/// holding them, and the logits after its last token.
#[derive(Clone)]
pub struct Prefilled {
    pub ids: Vec<u32>,
    pub cache: FastCache,
    pub logits: Vec<f32>,
    /// Tokens this prefill computed (the rest came from the kept context).
    pub computed: usize,
}

impl Prefilled {
    /// Bytes it keeps.
    pub fn bytes(&self) -> usize {
        self.cache.bytes() + self.ids.len() * 4 + self.logits.len() * 4
    }
}

/// The context of `history` (oldest first) within `budget` tokens, continuing `kept` when the
/// messages of `history` not yet in it follow on from it and fit.
pub fn prefill(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    budget: usize,
    kept: Option<&Prefilled>,
) -> Result<Prefilled, EngineError> {
    if let Some(kept) = kept {
        if let Some(new) = continuation(tok, history, &kept.ids)? {
            if kept.ids.len() + new.len() < budget {
                let mut next = kept.clone();
                next.computed = new.len();
                if !new.is_empty() {
                    model.forward(&new, &mut next.cache, &mut next.logits)?;
                    next.ids.extend(new);
                }
                return Ok(next);
            }
        }
    }
    if budget == 0 {
        return Ok(Prefilled { ids: Vec::new(), cache: model.new_cache(), logits: Vec::new(), computed: 0 });
    }
    // From scratch: the recent messages that fit, cut at a message boundary.
    let mut ids = generate::prompt(tok, history, budget)?;
    // The start of the reply is `start_reply`'s: mynah's own framing token comes off (with no
    // history it is all there is); a newline that ends the last line stays.
    if ids.last() == Some(&tok.msg) && tok.msg != tok.eom {
        ids.pop();
    }
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    model.forward(&ids, &mut cache, &mut logits)?;
    Ok(Prefilled { computed: ids.len(), ids, cache, logits })
}

/// The tokens of the messages of `history` that `kept` does not end with, when the ones it
/// does end with are a head of `history` (`None`: the kept context is not followed by this
/// history, e.g. a message in it was edited or deleted).
fn continuation(
    tok: &ChatTokenizer,
    history: &[(String, String)],
    kept: &[u32],
) -> Result<Option<Vec<u32>>, EngineError> {
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

/// Starts a reply after a prefilled context: `then` (the mention's tokens) and the start of a
/// message are forwarded on a copy, so the kept context stays what the store holds. Returns the
/// sequence, the cache and the logits a reply is decoded from.
pub fn start_reply(
    model: &FastModel,
    tok: &ChatTokenizer,
    context: &Prefilled,
    then: &[u32],
) -> Result<(Vec<u32>, FastCache, Vec<f32>), EngineError> {
    let mut ids = context.ids.clone();
    ids.extend_from_slice(then);
    let mut cache = context.cache.clone();
    let mut logits = context.logits.clone();
    let mut new = then.to_vec();
    // mynah's own framing starts a message with a token; in `author: content` lines the newline
    // that ended the last message already has.
    if ids.last() != Some(&tok.msg) {
        new.push(tok.msg);
        ids.push(tok.msg);
    }
    model.forward(&new, &mut cache, &mut logits)?;
    Ok((ids, cache, logits))
}

#[cfg(test)]
mod tests;
