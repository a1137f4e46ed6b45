//! A guild's voice beside its network: the count model over the network's tokens, the words
//! its members use, and the index of their messages' 8-word runs that replies must not copy.
//! Built from the guild's messages in seconds, kept up to date message by message, and
//! removable message by message (a removed message's n-grams leave at once).

use super::counts::{CountModel, Mixer, DEFAULT_ORDER};
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
    /// An empty voice for `tok`'s vocabulary.
    pub fn new(tok: &ChatTokenizer) -> Voice {
        Voice {
            counts: CountModel::new(DEFAULT_ORDER, tok.vocab_size()),
            mixer: Mixer::default(),
            vocab: Vocabulary::default(),
            copies: CopyIndex::new(),
        }
    }

    /// The voice of `messages`.
    pub fn build<'a>(
        tok: &ChatTokenizer,
        messages: impl IntoIterator<Item = Said<'a>>,
    ) -> Result<Voice, EngineError> {
        let mut voice = Voice::new(tok);
        for m in messages {
            voice.add(tok, m)?;
        }
        Ok(voice)
    }

    /// The voice of training lines (no message IDs: their position stands in).
    pub fn from_lines(tok: &ChatTokenizer, lines: &[ChatLine]) -> Result<Voice, EngineError> {
        Voice::build(
            tok,
            lines.iter().enumerate().map(|(i, l)| Said {
                id: i as u64,
                author: &l.author,
                content: &l.content,
            }),
        )
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
