//! The chat tokenizer: how chat becomes tokens. A guild's own byte-level BPE frames each message
//! with special tokens, `<|msg|>author<|says|>content<|eom|>`, so a model trained from scratch
//! learns who says what; a pretrained base's tokenizer renders chat the way it read chat on the
//! web, one `author: content` line per message ([`Framing`]).

use std::path::Path;
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::sharing::Shared;
use super::EngineError;

pub const PAD: &str = "<|pad|>";
pub const MSG: &str = "<|msg|>";
pub const SAYS: &str = "<|says|>";
pub const EOM: &str = "<|eom|>";
pub const SPECIALS: [&str; 4] = [PAD, MSG, SAYS, EOM];
/// The control token of a tokenizer for `author: content` lines that mynah trains itself.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The smallest vocabulary that holds every byte and the special tokens.
pub const MIN_VOCAB: usize = 256 + SPECIALS.len();

/// One chat message as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLine {
    pub channel: String,
    pub author: String,
    pub content: String,
    pub time_ms: i64,
}

/// How messages are marked in the token stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `<|msg|>author<|says|>content<|eom|>`: mynah's own tokenizers.
    Tokens,
    /// `author: content\n`: a pretrained base's tokenizer. `says` is the `:` token, `eom` (and
    /// `msg`, since a newline also starts the next line) the newline token.
    Lines,
}

/// A trained tokenizer with the IDs of its special tokens at hand.
#[derive(Clone)]
pub struct ChatTokenizer {
    /// Shared by every guild whose tokenizer file is the same (see [`read_shared`]).
    inner: Arc<Tokenizer>,
    pub framing: Framing,
    pub pad: u32,
    pub msg: u32,
    pub says: u32,
    pub eom: u32,
    /// UTF-8 bytes each token stands for (special tokens count as one byte, like a separator),
    /// for bits-per-byte figures that are comparable across tokenizers.
    byte_len: Vec<u32>,
    /// Tokens a speaker's name may not contain, and tokens a message's text may not contain.
    banned_in_author: Vec<u32>,
    banned_in_content: Vec<u32>,
    /// Framing and control tokens, which decoding drops.
    special: Vec<u32>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatTokenizer(vocab {}, {:?})", self.vocab_size(), self.framing)
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl ChatTokenizer {
    /// Trains a byte-level BPE of at most `vocab_size` tokens on the messages.
    pub fn train(lines: &[ChatLine], vocab_size: usize) -> Result<ChatTokenizer, EngineError> {
        let vocab_size = vocab_size.max(MIN_VOCAB);
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
        let specials: Vec<AddedToken> = SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let texts = lines.iter().flat_map(|l| [l.author.as_str(), l.content.as_str()]);
        tokenizer.train(&mut trainer, texts).map_err(tok_err)?;
        Self::wrap(Arc::new(tokenizer))
    }

    /// Trains a byte-level BPE of at most `vocab_size` tokens for `author: content` lines (the
    /// tokenizer of a base mynah pretrains itself), with one control token, [`END_OF_TEXT`].
    pub fn train_lines(lines: &[ChatLine], vocab_size: usize) -> Result<ChatTokenizer, EngineError> {
        let vocab_size = vocab_size.max(MIN_VOCAB);
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // The texts as `encode_message` renders them: the name, then the text after its space.
        let texts = lines.iter().flat_map(|l| {
            let content = l.content.split_whitespace().collect::<Vec<_>>().join(" ");
            [l.author.clone(), format!(" {content}")]
        });
        tokenizer.train(&mut trainer, texts).map_err(tok_err)?;
        Self::wrap_lines(Arc::new(tokenizer))
    }

    /// Loads a saved tokenizer: mynah's own (with framing tokens) or a base's (without).
    pub fn load(path: &Path) -> Result<ChatTokenizer, EngineError> {
        let inner = read_shared(path)?;
        if SPECIALS.iter().all(|s| inner.token_to_id(s).is_some()) {
            Self::wrap(inner)
        } else {
            Self::wrap_lines(inner)
        }
    }

    /// Loads a pretrained base's tokenizer, which renders chat as `author: content` lines.
    pub fn load_base(path: &Path) -> Result<ChatTokenizer, EngineError> {
        Self::wrap_lines(read_shared(path)?)
    }

    fn wrap_lines(inner: Arc<Tokenizer>) -> Result<ChatTokenizer, EngineError> {
        let id = |s: &str| {
            inner.token_to_id(s).ok_or_else(|| {
                EngineError::Tokenizer(format!("the base tokenizer has no single token for {s:?}"))
            })
        };
        // Byte-level BPE spells a newline `Ċ`.
        let (says, eom) = (id(":")?, id("\u{10a}")?);
        let control: Vec<u32> =
            inner.get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&i, _)| i).collect();
        let pad = ["<|endoftext|>", "</s>", "<pad>", "<|pad|>"]
            .iter()
            .find_map(|s| inner.token_to_id(s))
            .or_else(|| control.first().copied())
            .unwrap_or(0);
        let vocab = inner.get_vocab_size(true);
        let mut byte_len = vec![1u32; vocab];
        let mut newlines = Vec::new();
        for (i, len) in byte_len.iter_mut().enumerate() {
            let i = i as u32;
            if control.contains(&i) {
                continue;
            }
            if let Some(tok) = inner.id_to_token(i) {
                *len = tok.chars().count().max(1) as u32;
                if tok.contains('\u{10a}') && i != eom {
                    newlines.push(i);
                }
            }
        }
        let mut banned_in_content = control.clone();
        if !banned_in_content.contains(&pad) {
            banned_in_content.push(pad);
        }
        banned_in_content.extend(&newlines);
        let mut banned_in_author = banned_in_content.clone();
        banned_in_author.push(eom);
        Ok(ChatTokenizer {
            inner,
            framing: Framing::Lines,
            pad,
            msg: eom,
            says,
            eom,
            byte_len,
            banned_in_author,
            banned_in_content,
            special: control,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        self.inner.save(path, false).map_err(tok_err)
    }

    fn wrap(inner: Arc<Tokenizer>) -> Result<ChatTokenizer, EngineError> {
        let id = |s: &str| {
            inner
                .token_to_id(s)
                .ok_or_else(|| EngineError::Tokenizer(format!("the tokenizer lacks the special token {s}")))
        };
        let (pad, msg, says, eom) = (id(PAD)?, id(MSG)?, id(SAYS)?, id(EOM)?);
        let vocab = inner.get_vocab_size(true);
        let mut byte_len = vec![1u32; vocab];
        for (i, len) in byte_len.iter_mut().enumerate() {
            let i = i as u32;
            if [pad, msg, says, eom].contains(&i) {
                continue;
            }
            // Decoding a lone token of a multi-byte character yields U+FFFD; count raw bytes
            // through the byte-level alphabet instead.
            if let Some(tok) = inner.id_to_token(i) {
                *len = tok.chars().count().max(1) as u32;
            }
        }
        Ok(ChatTokenizer {
            inner,
            framing: Framing::Tokens,
            pad,
            msg,
            says,
            eom,
            byte_len,
            banned_in_author: vec![pad, msg, eom],
            banned_in_content: vec![pad, msg, says],
            special: vec![pad, msg, says, eom],
        })
    }

    /// Tokens a speaker's name may not contain (its end, `says`, is allowed).
    pub fn banned_in_author(&self) -> &[u32] {
        &self.banned_in_author
    }

    /// Tokens a message's text may not contain (its end, `eom`, is allowed).
    pub fn banned_in_content(&self) -> &[u32] {
        &self.banned_in_content
    }

    pub fn vocab_size(&self) -> usize {
        self.byte_len.len()
    }

    /// Framing and control tokens, which decoding drops. In `author: content` lines the colon
    /// and newline are text and only the base's control tokens are special.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The tokens that frame every message (start, end of the name, end of the message): the
    /// repetition penalty leaves them alone, or a reply's end would be penalised by every
    /// message before it.
    pub fn framing_tokens(&self) -> [u32; 3] {
        [self.msg, self.says, self.eom]
    }

    pub fn byte_len(&self, id: u32) -> u32 {
        self.byte_len.get(id as usize).copied().unwrap_or(1)
    }

    /// Plain text to tokens (no special tokens are recognised inside user text).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        // Special-token syntax typed by a user must not become a control token.
        let text = text.replace("<|", "< |");
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// One message as tokens: `<|msg|>author<|says|>content<|eom|>`, or `author: content\n`.
    pub fn encode_message(&self, author: &str, content: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = Vec::new();
        match self.framing {
            Framing::Tokens => {
                ids.push(self.msg);
                ids.extend(self.encode_text(author)?);
                ids.push(self.says);
                ids.extend(self.encode_text(content)?);
            }
            Framing::Lines => {
                // One line per message: a name without colons, a text without line breaks.
                let author: String =
                    author.chars().map(|c| if c == ':' || c.is_control() { '_' } else { c }).collect();
                let content = content.split_whitespace().collect::<Vec<_>>().join(" ");
                ids.extend(self.encode_text(author.trim())?);
                ids.push(self.says);
                ids.extend(self.encode_text(&format!(" {content}"))?);
            }
        }
        ids.push(self.eom);
        Ok(ids)
    }

    /// Tokens back to text, dropping framing and control tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let plain: Vec<u32> = ids.iter().copied().filter(|&i| !self.is_special(i)).collect();
        self.inner.decode(&plain, true).map_err(tok_err)
    }
}

/// Tokenizers read from files, by the SHA-256 of the file, while any is in use.
static LOADED: LazyLock<Shared<[u8; 32], Tokenizer>> = LazyLock::new(Shared::default);

/// The tokenizer in the file at `path`, shared with every other loaded from the same bytes:
/// the guilds fine-tuned from one base all hold its tokenizer (SmolLM2's 49 k tokens and merges
/// take some 12 MB in memory), and ten guilds held ten copies.
fn read_shared(path: &Path) -> Result<Arc<Tokenizer>, EngineError> {
    let failed = |e: &dyn std::fmt::Display| EngineError::Tokenizer(format!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| failed(&e))?;
    let key: [u8; 32] = Sha256::digest(&bytes).into();
    if let Some(shared) = LOADED.get(&key) {
        return Ok(shared);
    }
    Ok(LOADED.share(key, Tokenizer::from_bytes(&bytes).map_err(|e| failed(&e))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guilds_loading_the_same_tokenizer_file_share_one_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a.json"), dir.path().join("b.json"), dir.path().join("c.json"));
        let tok = ChatTokenizer::train(&lines(), 300).unwrap();
        tok.save(&a).unwrap();
        std::fs::copy(&a, &b).unwrap();
        ChatTokenizer::train(&lines()[..3], 280).unwrap().save(&c).unwrap();
        let (first, second, other) = (
            ChatTokenizer::load(&a).unwrap(),
            ChatTokenizer::load(&b).unwrap(),
            ChatTokenizer::load(&c).unwrap(),
        );
        assert!(Arc::ptr_eq(&first.inner, &second.inner), "the same bytes, one tokenizer");
        assert!(!Arc::ptr_eq(&first.inner, &other.inner));
        let text = "hello everyone";
        assert_eq!(second.encode_text(text).unwrap(), tok.encode_text(text).unwrap());
        // Once no guild holds it, it is read again.
        let weak = Arc::downgrade(&first.inner);
        drop((first, second));
        assert!(weak.upgrade().is_none());
        assert!(ChatTokenizer::load(&a).is_ok());
    }

    fn lines() -> Vec<ChatLine> {
        let texts = [
            "hello everyone, how is it going?",
            "```rust\nfn main() { println!(\"hi\"); }\n```",
            "that's great 🎉🎉 thanks!",
            "Привет, как дела? Всё хорошо.",
            "check https://example.com/path?q=1 for details",
            "multi\nline\n  indented text",
        ];
        (0..50)
            .flat_map(|i| texts.iter().map(move |t| (i, *t)))
            .map(|(i, t)| ChatLine {
                channel: "c".into(),
                author: format!("user{}", i % 5),
                content: t.into(),
                time_ms: i,
            })
            .collect()
    }

    #[test]
    fn chat_text_round_trips_through_the_tokenizer() {
        let tok = ChatTokenizer::train(&lines(), 400).unwrap();
        assert!(tok.vocab_size() <= 400 && tok.vocab_size() >= MIN_VOCAB);
        for l in lines().iter().take(6) {
            let ids = tok.encode_text(&l.content).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), l.content);
            let total: u32 = ids.iter().map(|&i| tok.byte_len(i)).sum();
            assert_eq!(total as usize, l.content.len(), "byte lengths add up for {:?}", l.content);
        }
        let unseen = "完全に新しいテキスト ✨ <|eom|> <|msg|>";
        let ids = tok.encode_text(unseen).unwrap();
        assert!(ids.iter().all(|&i| !tok.is_special(i)), "user text never yields control tokens");
        assert_eq!(tok.decode(&ids).unwrap(), unseen.replace("<|", "< |"));
    }

    #[test]
    fn messages_are_framed_by_special_tokens_and_the_tokenizer_saves() {
        let tok = ChatTokenizer::train(&lines(), 300).unwrap();
        let ids = tok.encode_message("alice", "hi there").unwrap();
        assert_eq!(ids[0], tok.msg);
        assert_eq!(*ids.last().unwrap(), tok.eom);
        assert!(ids.contains(&tok.says));
        assert_eq!(tok.decode(&ids).unwrap(), "alicehi there");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let again = ChatTokenizer::load(&path).unwrap();
        assert_eq!(again.encode_message("alice", "hi there").unwrap(), ids);
    }
}
