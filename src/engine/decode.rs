//! Sample and rank: K candidate replies drawn from one shared prefill, each token from the
//! network's distribution mixed with the guild's count model, never completing an 8-word run of
//! a stored message (the copy guard decides while decoding, so nothing is re-rolled), and the
//! candidate with the best mean log-probability, less penalties for non-words and loops, wins.

use rand::rngs::StdRng;

use super::fast::{FastCache, FastModel};
use super::generate::{self, Generated, Sampling, MAX_AUTHOR_TOKENS};
use super::prompt::{self, Prefilled};
use super::tokenizer::ChatTokenizer;
use super::voice::Voice;
use super::words::{self, CopyGuard};
use super::EngineError;

/// Score lost per share of a candidate's words that are neither the guild's nor the prompt's.
const NON_WORD_PENALTY: f64 = 1.5;
/// Weight of the length prior: the mean log-probability alone favours one-word replies
/// ("yeah", "lol"), which members' own replies are not. A reply of `LENGTH_TARGET` words or
/// more loses nothing; shorter ones lose `LENGTH_WEIGHT * ln((words + 1) / (target + 1))`.
const LENGTH_WEIGHT: f64 = 0.5;
const LENGTH_TARGET: usize = 12;
/// Score lost by a candidate that repeats a word 4-gram.
const LOOP_PENALTY: f64 = 1.0;
/// Draws refused by the copy guard before the message is ended instead.
const MAX_REFUSALS: usize = 32;

/// Decoding work a reply may take, in parameters × candidates: each candidate runs the whole
/// network for every token, so a pretrained base gets fewer candidates than a guild's small
/// model (a 1 M model keeps all 8, SmolLM2-135M gets 1) and its replies stay within seconds.
const CANDIDATE_BUDGET: u64 = 200_000_000;

/// The candidates a reply with `s` draws from a model of `params` parameters.
pub fn candidates_for(s: &Sampling, params: u64) -> usize {
    (CANDIDATE_BUDGET / params.max(1)).clamp(1, s.candidates.max(1) as u64) as usize
}

/// A reply whose words are mostly neither the guild's nor the prompt's ("0xaABAACBDAE8FFF-fabcd")
/// is junk: while every candidate is, up to this many more are drawn.
const JUNK_REDRAWS: usize = 2;
/// The share of real words below which a reply is junk.
const JUNK_REAL_SHARE: f64 = 0.5;

/// The share of `text`'s words that the guild's voice or the prompt's `context` knows (`None`
/// without a voice to tell).
fn real_share(text: &str, voice: Option<&Voice>, context: &[String]) -> Option<f64> {
    voice.map(|v| words::real_word_share(&[text.to_string()], &v.vocab, context))
}

/// Whether a reply with this share of real words is junk (never an empty one, nor one that
/// could not be judged).
fn is_junk(text: &str, real: Option<f64>) -> bool {
    !text.trim().is_empty() && real.is_some_and(|r| r < JUNK_REAL_SHARE)
}

/// One candidate with its score (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub reply: Generated,
    /// Mean natural log-probability per token under the mixture, less penalties.
    pub score: f64,
}

/// The best of `s.candidates` candidates (at least one; fewer for a large model, see
/// [`candidates_for`]), and all of them, best first. The last message of `history` is the one
/// replied to.
pub fn reply(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    s: &Sampling,
    voice: Option<&Voice>,
    rng: &mut StdRng,
) -> Result<Vec<Candidate>, EngineError> {
    reply_with(model, tok, history, s, voice, rng, None).map(|(candidates, _)| candidates)
}

/// [`reply`] continuing the channel's `kept` context (see [`prompt`]); also returns the context
/// to keep for the channel's next reply (the history without the message replied to).
pub fn reply_with(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    s: &Sampling,
    voice: Option<&Voice>,
    rng: &mut StdRng,
    kept: Option<&Prefilled>,
) -> Result<(Vec<Candidate>, Prefilled), EngineError> {
    let ctx = model.cfg.max_position_embeddings;
    let room = s.max_tokens + MAX_AUTHOR_TOKENS + 2;
    if ctx <= room + 1 {
        return Err(EngineError::ContextFull(ctx));
    }
    let (context, last) = history.split_at(history.len().saturating_sub(1));
    let mut then = match last.first() {
        Some((author, content)) => tok.encode_message(author, content)?,
        None => Vec::new(),
    };
    // A message longer than the whole context keeps its end.
    let budget = ctx - room - 1;
    if then.len() > budget {
        then.drain(..then.len() - budget);
    }
    let context = prompt::prefill(model, tok, context, budget - then.len(), kept)?;
    let (ids, cache, logits) = prompt::start_reply(model, tok, &context, &then)?;
    let context_text = [history.iter().map(|(a, c)| format!("{a} {c}\n")).collect::<String>()];
    let k = candidates_for(s, model.cfg.params());
    let mut out = Vec::with_capacity(k);
    let (mut redraws, mut all_junk) = (0, true);
    // The candidates, and more while every one is junk (a large model draws only one).
    while out.len() < k || (redraws < JUNK_REDRAWS && all_junk) {
        if out.len() >= k {
            redraws += 1;
        }
        let mut fork = Fork { cache: cache.clone(), logits: logits.clone(), seq: ids.clone() };
        let reply = fork.decode(model, tok, s, voice, rng)?;
        let real = real_share(&reply.0.text, voice, &context_text);
        all_junk &= is_junk(&reply.0.text, real);
        let score = score(&reply, real);
        out.push(Candidate { reply: reply.0, score });
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok((out, context))
}

/// One candidate's decoding state.
struct Fork {
    cache: FastCache,
    logits: Vec<f32>,
    /// Every token so far, prompt included (the count model's context).
    seq: Vec<u32>,
}

/// A decoded candidate and the natural log-probabilities of its content tokens.
type Decoded = (Generated, Vec<f64>);

impl Fork {
    fn decode(
        &mut self,
        model: &FastModel,
        tok: &ChatTokenizer,
        s: &Sampling,
        voice: Option<&Voice>,
        rng: &mut StdRng,
    ) -> Result<Decoded, EngineError> {
        let mut author = Vec::new();
        loop {
            let next = if author.len() >= MAX_AUTHOR_TOKENS {
                tok.says
            } else {
                generate::sample(&mut self.logits, tok.banned_in_author(), &[], s, rng)
            };
            self.step(model, next)?;
            if next == tok.says {
                break;
            }
            author.push(next);
        }
        let mut guard = voice.map(|v| CopyGuard::new(&v.copies));
        let (mut content, mut logp) = (Vec::new(), Vec::new());
        let mut finished = false;
        let mut probs = vec![0f32; self.logits.len()];
        let mut mixture = vec![0f32; self.logits.len()];
        let mut text = String::new();
        while content.len() < s.max_tokens {
            self.distribution(tok, s, voice, &content, &mut mixture, &mut probs);
            let mut refusals = 0;
            // The accepted token, and the text it adds (`None` for the end of the message).
            let next = loop {
                let t = generate::draw(&probs, s, rng);
                let added = if t == tok.eom { None } else { Some(piece(tok, &content, &text, t)?) };
                let allowed = match (&guard, &added) {
                    (None, _) => true,
                    (Some(g), None) => g.allows_end(),
                    (Some(g), Some(added)) => g.allows(added),
                };
                if allowed {
                    break Some((t, added));
                }
                probs[t as usize] = 0.0;
                refusals += 1;
                if refusals >= MAX_REFUSALS || probs.iter().all(|&p| p <= 0.0) {
                    break None;
                }
            };
            let Some((next, added)) = next else { break };
            logp.push(f64::from(mixture[next as usize].max(1e-12)).ln());
            let Some(added) = added else {
                finished = true;
                break;
            };
            if let Some(g) = guard.as_mut() {
                g.advance(&added);
            }
            text.push_str(&added);
            content.push(next);
            if content.len() < s.max_tokens {
                self.step(model, next)?;
            }
        }
        let text = match &guard {
            Some(g) if !finished => g.finish().trim().to_string(),
            _ => tok.decode(&content)?.trim().to_string(),
        };
        let reply = Generated {
            author: tok.decode(&author)?.trim().to_string(),
            text,
            tokens: content.len(),
            finished,
        };
        Ok((reply, logp))
    }

    fn step(&mut self, model: &FastModel, next: u32) -> Result<(), EngineError> {
        self.seq.push(next);
        model.forward(&[next], &mut self.cache, &mut self.logits)
    }

    /// The sampling distribution of the next content token: the network's (repetition-penalised)
    /// mixed with the counts', sharpened by the temperature, control tokens but the end out.
    /// Also leaves the unsharpened mixture, which candidates are scored by, in `mixture`.
    fn distribution(
        &self,
        tok: &ChatTokenizer,
        s: &Sampling,
        voice: Option<&Voice>,
        content: &[u32],
        mixture: &mut [f32],
        out: &mut [f32],
    ) {
        let mut logits = self.logits.clone();
        let recent = self.seq.iter().rev().take(64).chain(content).copied();
        generate::penalize_repeats(&mut logits, recent, s.repetition_penalty);
        mixed(&logits, voice, &self.seq, mixture);
        out.copy_from_slice(mixture);
        for &b in tok.banned_in_content() {
            if let Some(p) = out.get_mut(b as usize) {
                *p = 0.0;
            }
        }
        let t = s.temperature.max(1e-3);
        out.iter_mut().for_each(|p| *p = p.powf(1.0 / t));
        let max = out.iter().copied().fold(0.0f32, f32::max);
        // min-p: tokens far less likely than the best are out.
        out.iter_mut().for_each(|p| {
            if *p < max * s.min_p {
                *p = 0.0
            }
        });
    }
}

/// The mixture of the network's softmax over `logits` and the counts' distribution after `seq`.
fn mixed(logits: &[f32], voice: Option<&Voice>, seq: &[u32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut net: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = net.iter().sum();
    net.iter_mut().for_each(|p| *p /= sum);
    match voice {
        Some(v) if v.counts.vocab() == net.len() => {
            let context = &seq[seq.len().saturating_sub(v.counts.order().saturating_sub(1))..];
            let mut counts = vec![0f32; net.len()];
            v.counts.probs(context, &mut counts);
            v.mixer.mix(v.counts.evidence(context), &counts, &net, out);
        }
        _ => out.copy_from_slice(&net),
    }
}

/// The text token `t` adds after `content` (whose text is `text`).
fn piece(tok: &ChatTokenizer, content: &[u32], text: &str, t: u32) -> Result<String, EngineError> {
    let mut ids = content.to_vec();
    ids.push(t);
    let longer = tok.decode(&ids)?;
    Ok(match longer.strip_prefix(text) {
        Some(rest) => rest.to_string(),
        // A byte-level token that completes a character changes the text before it.
        None => longer.chars().skip(text.chars().count()).collect(),
    })
}

/// Mean log-probability, less the penalties; an empty reply never wins.
/// A candidate's score; `real` is the share of its words the guild or the prompt knows.
fn score(decoded: &Decoded, real: Option<f64>) -> f64 {
    let (reply, logp) = decoded;
    if reply.text.trim().is_empty() || logp.is_empty() {
        return f64::NEG_INFINITY;
    }
    let mut score = logp.iter().sum::<f64>() / logp.len() as f64;
    let words = reply.text.split_whitespace().count().min(LENGTH_TARGET);
    score += LENGTH_WEIGHT * ((words + 1) as f64 / (LENGTH_TARGET + 1) as f64).ln();
    if let Some(real) = real {
        score -= NON_WORD_PENALTY * (1.0 - real);
    }
    if words::has_loop(&reply.text) {
        score -= LOOP_PENALTY;
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_of_mostly_unknown_words_is_junk() {
        let lines: Vec<super::super::tokenizer::ChatLine> =
            ["is anyone going to the meetup tonight", "yes i will be there"]
                .iter()
                .map(|t| super::super::tokenizer::ChatLine {
                    channel: "c".into(),
                    author: "a".into(),
                    content: t.to_string(),
                    time_ms: 0,
                })
                .collect();
        let tok = super::super::tokenizer::ChatTokenizer::train(&lines, 300).unwrap();
        let voice = Voice::from_lines(&tok, None, &lines).unwrap();
        let reply =
            |text: &str| Generated { author: "a".into(), text: text.into(), tokens: 3, finished: true };
        let junk = |reply: &Generated, voice: Option<&Voice>, context: &str| {
            is_junk(&reply.text, real_share(&reply.text, voice, &[context.to_string()]))
        };
        assert!(junk(&reply("0xaABAACBDAE8FFF-fabcd.dll,vb_1 = vcdbgwrmmrb"), Some(&voice), ""));
        assert!(!junk(&reply("i will be at the meetup"), Some(&voice), ""));
        assert!(
            !junk(&reply("zorblax quimfrey"), Some(&voice), "who said zorblax quimfrey?"),
            "the prompt's words count"
        );
        assert!(!junk(&reply("0xaABAAC"), None, ""), "without a voice nothing is judged");
        assert!(!junk(&reply(""), Some(&voice), ""));
    }

    #[test]
    fn a_large_model_draws_fewer_candidates() {
        let s = Sampling::default();
        assert_eq!(s.candidates, 8);
        assert_eq!(candidates_for(&s, 1_100_000), 8, "the default model keeps all of them");
        assert_eq!(candidates_for(&s, 50_000_000), 4);
        assert_eq!(candidates_for(&s, 134_515_008), 1, "SmolLM2-135M");
        assert_eq!(candidates_for(&Sampling { candidates: 0, ..s }, 1_000), 1);
    }

    fn decoded(text: &str, logp: f64) -> Decoded {
        let reply = Generated { author: "a".into(), text: text.into(), tokens: 3, finished: true };
        (reply, vec![logp; 3])
    }

    #[test]
    fn a_one_word_reply_needs_a_clearly_better_likelihood_to_beat_a_sentence() {
        let short = decoded("yeah", -2.0);
        let sentence = decoded("i think the tests pass on my machine now", -2.0);
        assert!(score(&sentence, None) > score(&short, None), "equal likelihood: the sentence wins");
        // Twelve words or more lose nothing to the prior.
        let long = "one two three four five six seven eight nine ten eleven twelve thirteen";
        assert_eq!(score(&decoded(long, -2.0), None), -2.0);
        // A far likelier short reply still wins.
        assert!(score(&decoded("yeah", -0.5), None) > score(&sentence, None));
        assert_eq!(score(&decoded("  ", -1.0), None), f64::NEG_INFINITY);
    }
}
