//! A guild's voice beside its network: the count model over the network's tokens, the words
//! its members use, and the index of their messages' 8-word runs that replies must not copy.
//! Built from the guild's messages in seconds, kept up to date message by message, and
//! removable message by message (a removed message's n-grams leave at once).

use super::counts::{bucket, CountModel, Mixer, DEFAULT_ORDER};
use super::model::Model;
use super::tokenizer::{ChatLine, ChatTokenizer};
use super::words::{CopyIndex, Vocabulary};
use super::EngineError;

/// The count model, vocabulary and copy index of one guild.
#[derive(Debug, Clone)]
pub struct Voice {
    pub counts: CountModel,
    pub mixer: Mixer,
    pub vocab: Vocabulary,
    pub copies: CopyIndex,
}

/// A message as the voice learns it: an ID (for the copy index), who said it and what.
#[derive(Debug, Clone, Copy)]
pub struct Said<'a> {
    pub id: u64,
    pub author: &'a str,
    pub content: &'a str,
}

impl Said<'_> {
    /// A stable numeric key for a message ID of any form (Discord's are numbers already).
    pub fn key(id: &str) -> u64 {
        id.parse().unwrap_or_else(|_| {
            // FNV-1a: stable across processes, unlike std's keyed hasher.
            id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        })
    }
}

impl Voice {
    /// An empty voice for `tok`'s vocabulary, mixing with `mixer` (fitted weights from a model's
    /// manifest, or the defaults).
    pub fn new(tok: &ChatTokenizer, mixer: Option<&[f32]>) -> Voice {
        let mixer = mixer.and_then(Mixer::from_saved).unwrap_or_default();
        Voice {
            counts: CountModel::new(DEFAULT_ORDER, tok.vocab_size()),
            mixer,
            vocab: Vocabulary::default(),
            copies: CopyIndex::new(),
        }
    }

    /// The voice of `messages`.
    pub fn build<'a>(
        tok: &ChatTokenizer,
        mixer: Option<&[f32]>,
        messages: impl IntoIterator<Item = Said<'a>>,
    ) -> Result<Voice, EngineError> {
        let mut voice = Voice::new(tok, mixer);
        for m in messages {
            voice.add(tok, m)?;
        }
        Ok(voice)
    }

    /// The voice of training lines (no message IDs: their position stands in).
    pub fn from_lines(
        tok: &ChatTokenizer,
        mixer: Option<&[f32]>,
        lines: &[ChatLine],
    ) -> Result<Voice, EngineError> {
        Voice::build(tok, mixer, said(lines))
    }

    /// Learns one message. Each message is counted on its own (no n-gram spans two messages), so
    /// [`Voice::remove`] takes back exactly what this added.
    pub fn add(&mut self, tok: &ChatTokenizer, m: Said<'_>) -> Result<(), EngineError> {
        self.counts.add(&tok.encode_message(m.author, m.content)?);
        self.vocab.add(m.content);
        self.copies.add(m.id, m.content);
        Ok(())
    }

    /// Forgets one message that [`Voice::add`] learned. The vocabulary keeps its words (a word
    /// is no secret; the runs that could reveal a message are gone from the copy index).
    pub fn remove(&mut self, tok: &ChatTokenizer, m: Said<'_>) -> Result<(), EngineError> {
        self.counts.remove(&tok.encode_message(m.author, m.content)?);
        self.copies.remove(m.id, m.content);
        Ok(())
    }
}

/// Training lines as messages the voice learns (their position stands in for an ID).
pub fn said(lines: &[ChatLine]) -> impl Iterator<Item = Said<'_>> {
    lines.iter().enumerate().map(|(i, l)| Said { id: i as u64, author: &l.author, content: &l.content })
}

/// The lines as one token stream, channel by channel, as training renders them.
pub fn stream(lines: &[ChatLine], tok: &ChatTokenizer) -> Result<Vec<u32>, EngineError> {
    let mut by_channel: std::collections::BTreeMap<&str, Vec<&ChatLine>> = Default::default();
    for l in lines {
        by_channel.entry(&l.channel).or_default().push(l);
    }
    let mut out = Vec::new();
    for l in by_channel.values().flatten() {
        out.extend(tok.encode_message(&l.author, &l.content)?);
    }
    Ok(out)
}

/// The tokens before position `i` of `stream` that a count model of `order` looks at.
pub fn context(stream: &[u32], i: usize, order: usize) -> &[u32] {
    &stream[i.saturating_sub(order.saturating_sub(1))..i]
}

/// Scoring work the mixer's fit may take, in parameters × tokens: a small model scores the whole
/// slice; a pretrained base scores its newest few thousand tokens (a handful of weights needs no
/// more, and minutes of scoring would stretch the training run).
const MIXER_BUDGET: u64 = 1_000_000_000_000;

/// Fits the mixer of `model` with the counts as the bot serves them: counts of the training
/// part's older 90 % score its newest 10 % (as much as [`MIXER_BUDGET`] allows) next to the
/// network, learning each message of it once it is scored, as a guild's serving counts learn
/// every message stored (the held-out split is never looked at).
pub fn fit_mixer(model: &Model, tok: &ChatTokenizer, train_part: &[ChatLine]) -> Result<Mixer, EngineError> {
    let (older, slice) = super::train::split(train_part, 0.1)?;
    let mut counts = Voice::build(tok, None, said(older))?.counts;
    let stream = stream(slice, tok)?;
    let most = (MIXER_BUDGET / model.cfg.params().max(1)).max(1024) as usize;
    // The slice's older tokens are only learnt, its newest scored.
    let cut = stream.len().saturating_sub(most);
    let net = super::train::token_probs(model, &stream[cut..], model.cfg.max_position_embeddings)?;
    let mut samples = Vec::new();
    score_then_learn(&stream, tok, &mut counts, |i, counts| {
        if let Some(&Some(pn)) = i.checked_sub(cut).and_then(|j| net.get(j)) {
            let ctx = context(&stream, i, counts.order());
            let pc = counts.log2_prob(ctx, stream[i]).exp2() as f32;
            samples.push((bucket(counts.evidence(ctx), pn.top), pc, pn.p));
        }
    });
    Ok(Mixer::fit(&samples))
}

/// Walks `stream` as a guild's serving counts meet it: `score(i, counts)` for each token, and each
/// message learnt by `counts` once its last token is scored (what a compressor does, and the bot:
/// a stored message updates the counts at once).
pub fn score_then_learn(
    stream: &[u32],
    tok: &ChatTokenizer,
    counts: &mut CountModel,
    mut score: impl FnMut(usize, &CountModel),
) {
    let mut start = 0;
    for (i, &t) in stream.iter().enumerate() {
        score(i, counts);
        if t == tok.eom {
            counts.add(&stream[start..=i]);
        }
        // (In `author: content` lines the newline that ends a message also starts the next.)
        if t == tok.msg {
            start = i;
        }
    }
}
