//! Sample and rank: K candidate replies drawn from one shared prefill, each token from the
//! network's distribution mixed with the guild's count model, never completing an 8-word run of
//! a stored message (the copy guard decides while decoding, so nothing is re-rolled), and the
//! candidate with the best mean log-probability, less penalties for non-words and loops, wins.

use rand::rngs::StdRng;

use super::fast::{self, FastCache, FastModel};
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
/// to keep for the channel's next reply (the history and the message replied to).
pub fn reply_with(
    model: &FastModel,
    tok: &ChatTokenizer,
    history: &[(String, String)],
    s: &Sampling,
    voice: Option<&Voice>,
    rng: &mut StdRng,
    kept: Option<Prefilled>,
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
    let (ids, cache, logits, keep) = prompt::start_reply(model, tok, context, &then)?;
    let context_text = [history.iter().map(|(a, c)| format!("{a} {c}\n")).collect::<String>()];
    let k = candidates_for(s, model.cfg.params());
    let mut out = Vec::with_capacity(k);
    let (mut batch, mut all_junk) = (k, true);
    // The candidates, decoded side by side; then more while every one is junk (a large model
    // draws only one).
    for _ in 0..=JUNK_REDRAWS {
        let mut forks: Vec<Fork> = (0..batch).map(|_| Fork::new(&cache, &logits, &ids, voice)).collect();
        decode_together(&mut forks, model, tok, s, voice, rng)?;
        for fork in forks {
            let reply = fork.finish(tok)?;
            let real = real_share(&reply.0.text, voice, &context_text);
            all_junk &= is_junk(&reply.0.text, real);
            let score = score(&reply, real);
            out.push(Candidate { reply: reply.0, score });
        }
        if !all_junk {
            break;
        }
        batch = 1;
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok((out, keep))
}

/// Decodes every fork to its end, one token of each per step through one batched pass.
fn decode_together(
    forks: &mut [Fork<'_>],
    model: &FastModel,
    tok: &ChatTokenizer,
    s: &Sampling,
    voice: Option<&Voice>,
    rng: &mut StdRng,
) -> Result<(), EngineError> {
    loop {
        let mut ids = Vec::with_capacity(forks.len());
        let mut live: Vec<&mut Fork> = Vec::with_capacity(forks.len());
        for fork in forks.iter_mut() {
            if let Some(next) = fork.choose(tok, s, voice, rng)? {
                fork.seq.push(next);
                ids.push(next);
                live.push(fork);
            }
        }
        if live.is_empty() {
            return Ok(());
        }
        let (mut caches, mut logits): (Vec<&mut FastCache>, Vec<&mut Vec<f32>>) =
            live.into_iter().map(|f| (&mut f.cache, &mut f.logits)).unzip();
        model.forward_batch(&ids, &mut caches, &mut logits)?;
    }
}

/// Where a candidate is: writing the speaker's name, the message, or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Author,
    Content,
    Done,
}

/// One candidate's decoding state.
struct Fork<'v> {
    cache: FastCache,
    logits: Vec<f32>,
    /// Every token so far, prompt included (the count model's context).
    seq: Vec<u32>,
    stage: Stage,
    author: Vec<u32>,
    content: Vec<u32>,
    /// Natural log-probabilities of the content tokens under the mixture.
    logp: Vec<f64>,
    text: String,
    finished: bool,
    guard: Option<CopyGuard<'v>>,
    probs: Vec<f32>,
    mixture: Vec<f32>,
    /// Scratch space: the counts' distribution, and the tokens that survive min-p.
    counts: Vec<f32>,
    survivors: Vec<usize>,
}

/// A decoded candidate and the natural log-probabilities of its content tokens.
type Decoded = (Generated, Vec<f64>);

impl<'v> Fork<'v> {
    fn new(cache: &FastCache, logits: &[f32], seq: &[u32], voice: Option<&'v Voice>) -> Fork<'v> {
        Fork {
            cache: cache.clone(),
            logits: logits.to_vec(),
            seq: seq.to_vec(),
            stage: Stage::Author,
            author: Vec::new(),
            content: Vec::new(),
            logp: Vec::new(),
            text: String::new(),
            finished: false,
            guard: voice.map(|v| CopyGuard::new(&v.copies)),
            probs: vec![0f32; logits.len()],
            mixture: vec![0f32; logits.len()],
            counts: Vec::new(),
            survivors: Vec::new(),
        }
    }

    /// The next token to feed the network, or `None` once the candidate is done.
    fn choose(
        &mut self,
        tok: &ChatTokenizer,
        s: &Sampling,
        voice: Option<&Voice>,
        rng: &mut StdRng,
    ) -> Result<Option<u32>, EngineError> {
        match self.stage {
            Stage::Done => Ok(None),
            Stage::Author => {
                let next = if self.author.len() >= MAX_AUTHOR_TOKENS {
                    tok.says
                } else {
                    generate::sample(&mut self.logits, tok.banned_in_author(), &[], &[], s, rng)
                };
                if next == tok.says {
                    self.stage = Stage::Content;
                } else {
                    self.author.push(next);
                }
                Ok(Some(next))
            }
            Stage::Content => {
                if self.content.len() >= s.max_tokens {
                    self.stage = Stage::Done;
                    return Ok(None);
                }
                let (mut mixture, mut probs) =
                    (std::mem::take(&mut self.mixture), std::mem::take(&mut self.probs));
                self.distribution(tok, s, voice, &mut mixture, &mut probs);
                let mut refusals = 0;
                // The accepted token, and the text it adds (`None` for the end of the message).
                let next = loop {
                    let t = generate::draw(&probs, s, rng);
                    let added =
                        if t == tok.eom { None } else { Some(piece(tok, &self.content, &self.text, t)?) };
                    let allowed = match (&self.guard, &added) {
                        // A message never ends inside a character: half of a multi-byte one
                        // decodes as U+FFFD until the token that completes it.
                        (_, None) if pending_character(tok, &self.content)? => false,
                        // Nor goes on past half of one ("��" in a reply).
                        (_, Some(None)) => false,
                        (None, _) => true,
                        (Some(g), None) => g.allows_end(),
                        (Some(g), Some(Some(added))) => g.allows(added),
                    };
                    if allowed {
                        break Some((t, added.flatten()));
                    }
                    probs[t as usize] = 0.0;
                    refusals += 1;
                    if refusals >= MAX_REFUSALS || probs.iter().all(|&p| p <= 0.0) {
                        break None;
                    }
                };
                let logp = next.as_ref().map(|(t, _)| f64::from(mixture[*t as usize].max(1e-12)).ln());
                (self.mixture, self.probs) = (mixture, probs);
                let Some((next, added)) = next else {
                    self.stage = Stage::Done;
                    return Ok(None);
                };
                self.logp.extend(logp);
                let Some(added) = added else {
                    self.finished = true;
                    self.stage = Stage::Done;
                    return Ok(None);
                };
                if let Some(g) = self.guard.as_mut() {
                    g.advance(&added);
                }
                self.text.push_str(&added);
                self.content.push(next);
                if self.content.len() < s.max_tokens {
                    Ok(Some(next))
                } else {
                    self.stage = Stage::Done;
                    Ok(None)
                }
            }
        }
    }

    fn finish(self, tok: &ChatTokenizer) -> Result<Decoded, EngineError> {
        let text = match &self.guard {
            Some(g) if !self.finished => g.finish().to_string(),
            _ => tok.decode(&self.content)?,
        };
        let text = whole_characters(&text).trim().to_string();
        let reply = Generated {
            author: tok.decode(&self.author)?.trim().to_string(),
            text,
            tokens: self.content.len(),
            finished: self.finished,
        };
        Ok((reply, self.logp))
    }

    /// The sampling distribution of the next content token: the network's (repetition-penalised)
    /// mixed with the counts', sharpened by the temperature, control tokens but the end out.
    /// Also leaves the unsharpened mixture, which candidates are scored by, in `mixture`. The
    /// logits are used up (the next pass replaces them).
    fn distribution(
        &mut self,
        tok: &ChatTokenizer,
        s: &Sampling,
        voice: Option<&Voice>,
        mixture: &mut [f32],
        out: &mut [f32],
    ) {
        let recent = self.seq.iter().rev().take(64).chain(&self.content).copied();
        generate::penalize_repeats(&mut self.logits, recent, &tok.framing_tokens(), s.repetition_penalty);
        mixed(&mut self.logits, voice, &self.seq, &mut self.counts, mixture);
        out.copy_from_slice(mixture);
        for &b in tok.banned_in_content() {
            if let Some(p) = out.get_mut(b as usize) {
                *p = 0.0;
            }
        }
        let t = s.temperature.max(1e-3);
        // min-p: tokens far less likely than the best are out. On the sharpened values that is
        // `p^(1/t) < max^(1/t) · min_p`, i.e. `p < max · min_p^t`: applied first, so only the
        // few survivors of a large vocabulary are sharpened (by index: a loop over all of them
        // would be vectorised into a power for every token).
        let max = out.iter().copied().fold(0.0f32, f32::max);
        let floor = max * s.min_p.max(0.0).powf(t);
        self.survivors.clear();
        self.survivors.extend((0..out.len()).filter(|&i| out[i] >= floor && out[i] > 0.0));
        out.fill(0.0);
        for &i in &self.survivors {
            out[i] = mixture[i].powf(1.0 / t);
        }
    }
}

/// The mixture of the network's softmax over `logits` (which become the network's
/// probabilities) and the counts' distribution after `seq` (`counts` is scratch space).
fn mixed(logits: &mut [f32], voice: Option<&Voice>, seq: &[u32], counts: &mut Vec<f32>, out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = fast::exp_shifted(logits, max);
    // The most likely token's probability (the mixer's confidence class), in the same pass.
    let mut top = 0f32;
    for p in logits.iter_mut() {
        *p /= sum;
        top = top.max(*p);
    }
    let net = &*logits;
    match voice {
        Some(v) if v.counts.vocab() == net.len() => {
            let context = &seq[seq.len().saturating_sub(v.counts.order().saturating_sub(1))..];
            counts.clear();
            counts.resize(net.len(), 0.0);
            v.counts.probs(context, counts);
            v.mixer.mix(v.counts.evidence(context), top, counts, net, out);
        }
        _ => out.copy_from_slice(net),
    }
}

/// `text` without a character cut in half at its end (a reply stopped by its length can end
/// between the tokens of one character, which decodes as U+FFFD).
fn whole_characters(text: &str) -> &str {
    text.trim_end_matches(char::REPLACEMENT_CHARACTER)
}

/// Whether `content` ends inside a character (its last bytes decode as U+FFFD).
fn pending_character(tok: &ChatTokenizer, content: &[u32]) -> Result<bool, EngineError> {
    Ok(tok.decode(content)?.ends_with(char::REPLACEMENT_CHARACTER))
}

/// The whole characters token `t` adds after `content` (whose whole characters are `text`):
/// the bytes of a character split across tokens count once it is complete, so the text a reply
/// accumulates never holds half of one. `None` when `t` leaves a character broken off inside the
/// reply (a U+FFFD that no later token can complete).
fn piece(tok: &ChatTokenizer, content: &[u32], text: &str, t: u32) -> Result<Option<String>, EngineError> {
    let mut ids = content.to_vec();
    ids.push(t);
    let decoded = tok.decode(&ids)?;
    let longer = whole_characters(&decoded);
    if longer.contains(char::REPLACEMENT_CHARACTER) {
        return Ok(None);
    }
    Ok(Some(match longer.strip_prefix(text) {
        Some(rest) => rest.to_string(),
        // Should the decoder rewrite the text before (a completed character no longer does:
        // its first bytes were never added), what lies past its length.
        None => longer.chars().skip(text.chars().count()).collect(),
    }))
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
    fn a_reply_never_ends_in_half_a_character() {
        let tok =
            crate::engine::tokenizer::ChatTokenizer::train(&crate::engine::tests::sample_lines(40), 300)
                .unwrap();
        // "🎉" is four bytes: byte-level tokens of its first bytes alone decode as U+FFFD.
        let ids = tok.encode_text("yay 🎉").unwrap();
        let cut = tok.decode(&ids[..ids.len() - 1]).unwrap();
        assert!(cut.ends_with(char::REPLACEMENT_CHARACTER), "{cut:?}");
        assert_eq!(whole_characters(&cut).trim(), "yay");
        assert_eq!(whole_characters("fine 🎉"), "fine 🎉");
        // A token after half of it leaves it broken: refused. The token that completes it adds
        // the whole character, which the half before it had not added.
        let content = &ids[..ids.len() - 1];
        let space = tok.encode_text(" ").unwrap();
        let before = whole_characters(&cut);
        assert!(pending_character(&tok, content).unwrap());
        assert_eq!(piece(&tok, content, before, space[0]).unwrap(), None, "{:?}", tok.decode(&space));
        let last = ids[ids.len() - 1];
        assert_eq!(piece(&tok, content, before, last).unwrap().as_deref(), Some("🎉"));
        assert!(!pending_character(&tok, &ids).unwrap());
        assert_eq!(piece(&tok, &ids, "yay 🎉", space[0]).unwrap().as_deref(), Some(" "));
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
