//! Sampling a reply: the chat history is rendered exactly as in training, then the model picks
//! a speaker and writes that speaker's message, token by token with a KV cache, until it ends
//! the message or reaches the length cap.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::fast::{self, FastModel};
use super::tokenizer::ChatTokenizer;
use super::EngineError;

/// Sampling settings (env-configurable in the bot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    /// Content tokens at most.
    pub max_tokens: usize,
    /// Tokens less likely than this fraction of the likeliest are never drawn.
    #[serde(default = "default_min_p")]
    pub min_p: f32,
    /// Candidate replies drawn per mention; the best-scored one is sent.
    #[serde(default = "default_candidates")]
    pub candidates: usize,
}

fn default_min_p() -> f32 {
    0.05
}

fn default_candidates() -> usize {
    8
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.15,
            max_tokens: 40,
            min_p: default_min_p(),
            candidates: default_candidates(),
        }
    }
}

/// A generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The speaker the model chose.
    pub author: String,
    pub text: String,
    /// Content tokens generated (the end-of-message token not counted).
    pub tokens: usize,
    /// True if the model ended the message itself, false if the length cap did.
    pub finished: bool,
}

/// Speaker names longer than this are cut off (the model is then told the name is over).
pub(crate) const MAX_AUTHOR_TOKENS: usize = 12;

/// Prompt tokens for `history` (oldest first), trimmed from the left to leave room for the
/// reply, and ending with the start of a new message.
pub fn prompt(
    tok: &ChatTokenizer,
    history: &[(String, String)],
    budget: usize,
) -> Result<Vec<u32>, EngineError> {
    let mut ids = Vec::new();
    for (author, content) in history {
        ids.extend(tok.encode_message(author, content)?);
    }
    if ids.len() + 1 > budget {
        let cut = (ids.len() + 1 - budget).min(ids.len());
        ids.drain(..cut);
        // Start at a message boundary when there is one, so no message is seen half-way.
        if let Some(first) = ids.iter().position(|&t| t == tok.msg) {
            if first > 0 && first < ids.len() / 2 {
                ids.drain(..first);
            }
        }
    }
    // In `author: content` lines the last message's newline already starts the next one.
    if ids.last() != Some(&tok.msg) {
        ids.push(tok.msg);
    }
    Ok(ids)
}

pub fn reply(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    s: &Sampling,
    rng: &mut StdRng,
) -> Result<Generated, EngineError> {
    let ctx = model.cfg.max_position_embeddings;
    let room = s.max_tokens + MAX_AUTHOR_TOKENS + 2;
    if ctx <= room + 1 {
        return Err(EngineError::ContextFull(ctx));
    }
    let ids = prompt(tok, history, ctx - room)?;
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    model.forward(&ids, &mut cache, &mut logits)?;
    let mut recent: Vec<u32> = ids.iter().rev().take(64).copied().collect();

    let mut author = Vec::new();
    loop {
        let next = if author.len() >= MAX_AUTHOR_TOKENS {
            tok.says
        } else {
            sample(&mut logits, tok.banned_in_author(), &[], &[], s, rng)
        };
        model.forward(&[next], &mut cache, &mut logits)?;
        if next == tok.says {
            break;
        }
        author.push(next);
    }

    let mut content = Vec::new();
    let mut finished = false;
    while content.len() < s.max_tokens {
        recent.extend(content.last().copied());
        let next = sample(&mut logits, tok.banned_in_content(), &recent, &tok.framing_tokens(), s, rng);
        if next == tok.eom {
            finished = true;
            break;
        }
        content.push(next);
        if content.len() < s.max_tokens {
            model.forward(&[next], &mut cache, &mut logits)?;
        }
    }
    Ok(Generated {
        author: tok.decode(&author)?.trim().to_string(),
        text: tok.decode(&content)?.trim().to_string(),
        tokens: content.len(),
        finished,
    })
}

/// Picks the next token: banned tokens out, repetition penalty (never on `exempt`),
/// temperature, top-k, top-p.
pub(crate) fn sample(
    logits: &mut [f32],
    banned: &[u32],
    recent: &[u32],
    exempt: &[u32],
    s: &Sampling,
    rng: &mut StdRng,
) -> u32 {
    for &b in banned {
        if let Some(l) = logits.get_mut(b as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
    penalize_repeats(logits, recent.iter().copied(), exempt, s.repetition_penalty);
    if s.temperature <= 0.0 || !logits.iter().any(|l| l.is_finite()) {
        return argmax(logits);
    }
    let max = logits.iter().copied().filter(|l| l.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = logits
        .iter()
        .map(|&l| if l.is_finite() { fast::exp((l - max) / s.temperature) } else { 0.0 })
        .collect();
    draw(&weights, s, rng)
}

/// Makes the `recent` tokens less likely, but for the `exempt` ones: the tokens that frame
/// messages recur in every one, and penalising the end of a message made replies run on to
/// the length cap. A `penalty` of 1 or less changes nothing.
pub(crate) fn penalize_repeats(
    logits: &mut [f32],
    recent: impl Iterator<Item = u32>,
    exempt: &[u32],
    penalty: f32,
) {
    if penalty <= 1.0 {
        return;
    }
    let mut seen: Vec<u32> = recent.filter(|t| !exempt.contains(t)).collect();
    seen.sort_unstable();
    seen.dedup();
    for t in seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Draws a token from non-negative weights (zero means never), with top-k and top-p applied;
/// greedy when the temperature is 0.
pub(crate) fn draw(weights: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    let mut cands: Vec<(u32, f32)> =
        weights.iter().enumerate().filter(|(_, &w)| w > 0.0).map(|(i, &w)| (i as u32, w)).collect();
    if cands.is_empty() {
        return 0;
    }
    let by_weight = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // Only the top k are ever drawn from: they are selected first, and only they are sorted
    // (a whole vocabulary's sort was a tenth of a reply's time).
    if s.temperature > 0.0 && s.top_k > 0 && cands.len() > s.top_k {
        cands.select_nth_unstable_by(s.top_k - 1, by_weight);
        cands.truncate(s.top_k);
    }
    cands.sort_unstable_by(by_weight);
    if s.temperature <= 0.0 {
        return cands[0].0;
    }
    let total: f32 = cands.iter().map(|c| c.1).sum();
    let mut keep = cands.len();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, c) in cands.iter().enumerate() {
            acc += c.1 / total;
            if acc >= s.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    let kept: f32 = cands[..keep].iter().map(|c| c.1).sum();
    let mut r = rng.random::<f32>() * kept;
    for c in &cands[..keep] {
        r -= c.1;
        if r <= 0.0 {
            return c.0;
        }
    }
    cands[keep - 1].0
}

fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repetition_penalty_spares_the_tokens_that_frame_messages() {
        // Token 2 ends every message of the context; 0 and 1 were said; 3 was not.
        let mut logits = vec![3.0, -2.0, 3.0, 1.0];
        let recent = [0u32, 2, 1, 2, 0, 2];
        penalize_repeats(&mut logits, recent.iter().copied(), &[2], 1.5);
        assert_eq!(logits, vec![2.0, -3.0, 3.0, 1.0]);
    }

    #[test]
    fn a_penalty_of_one_changes_nothing() {
        let mut logits = vec![3.0, -2.0];
        penalize_repeats(&mut logits, [0u32, 1].into_iter(), &[], 1.0);
        assert_eq!(logits, vec![3.0, -2.0]);
    }
}
