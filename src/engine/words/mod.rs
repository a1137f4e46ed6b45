//! Word-level text facts: how a chat message splits into words, the index of stored messages'
//! word 8-grams with the decoding guard that keeps replies from copying them, and the
//! readability figures (real words, copies, loops, length, variety) the quality benchmark reports.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// A reply may share at most `COPY_RUN - 1` consecutive words with any one stored message.
pub const COPY_RUN: usize = 8;
/// A reply that repeats a word n-gram of this length loops.
pub const LOOP_RUN: usize = 4;
/// Opens and closes a code block, whose contents are not words.
const FENCE: &str = "```";

/// What a token is. Only [`Kind::Word`] counts as a word for the real-word share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Word,
    /// Digits only, with inner `.` or `,` between digits: `42`, `3.14`, `2,000`.
    Number,
    /// `scheme://…` or `www.…` up to whitespace or one of `<>[]"` and a backtick, less trailing
    /// punctuation.
    Url,
    /// `<@123>`, `<@!123>`, `<@&123>`, `<#123>`, a custom emoji `<:name:123>`, or `@name`.
    Mention,
}

/// One token of a message, as it is written (see [`normalize`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    pub text: &'a str,
    /// Byte offset in the message.
    pub start: usize,
    pub kind: Kind,
}

/// The tokens of a chat message, in order. The rule:
/// - a word is a run of alphanumeric characters (any script; combining marks continue it) with
///   inner apostrophes (`don't`, `it’s`) — an apostrophe joins only between two alphanumerics;
///   each Han ideograph and each hiragana is a word of its own, as in Unicode's word boundaries;
/// - a number is such a run with no letter; `.` and `,` join digits (`3.14`, `2,000`);
/// - a URL (`https://…`, any `scheme://…`, `www.…`) is one token (see [`Kind::Url`]);
/// - Discord mentions and custom emoji (`<@123>`, `<#1>`, `<:name:1>`) and `@name` (not inside
///   an e-mail address) are one token each;
/// - a code fence (```` ``` ```` … ```` ``` ````, or to the end if unclosed) is skipped whole;
///   everything else (spaces, punctuation, emoji, single backticks) separates tokens.
///
/// Tokens never span whitespace, except that a fence is skipped across it.
pub fn tokens(text: &str) -> impl Iterator<Item = Token<'_>> {
    Tokens { text, pos: 0, in_fence: false }
}

/// The words of a chat message as [`tokens`] finds them, normalised: the sequence the copy,
/// loop and bigram figures work on. URLs, mentions and numbers stay in the sequence (a copied
/// link is still a copy) but do not count as words for [`real_word_share`].
pub fn words(text: &str) -> Vec<String> {
    tokens(text).map(|t| normalize(t.text)).collect()
}

/// A token's comparable form: lower-cased character by character, `’` written as `'`.
pub fn normalize(token: &str) -> String {
    normal_chars(token).collect()
}

fn normal_chars(token: &str) -> impl Iterator<Item = char> + '_ {
    token.chars().flat_map(char::to_lowercase).map(|c| if c == '’' { '\'' } else { c })
}

struct Tokens<'a> {
    text: &'a str,
    pos: usize,
    in_fence: bool,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let rest = self.text.get(self.pos..)?;
            if self.in_fence {
                let Some(close) = rest.find(FENCE) else {
                    self.pos = self.text.len();
                    return None;
                };
                self.pos += close + FENCE.len();
                self.in_fence = false;
                continue;
            }
            let c = rest.chars().next()?;
            if rest.starts_with(FENCE) {
                self.in_fence = true;
                self.pos += FENCE.len();
                continue;
            }
            let found = if c.is_alphanumeric() {
                url_len(rest).map(|n| (n, Kind::Url)).or_else(|| Some(word_len(rest)))
            } else if c == '<' {
                mention_len(rest).map(|n| (n, Kind::Mention))
            } else if c == '@'
                && !self.text[..self.pos].chars().next_back().is_some_and(char::is_alphanumeric)
            {
                handle_len(rest).map(|n| (n, Kind::Mention))
            } else {
                None
            };
            let start = self.pos;
            match found {
                Some((len, kind)) => {
                    self.pos += len;
                    return Some(Token { text: &self.text[start..start + len], start, kind });
                }
                None => self.pos += c.len_utf8(),
            }
        }
    }
}

fn is_mark(c: char) -> bool {
    matches!(c, '\u{300}'..='\u{36F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}' | '\u{200C}' | '\u{200D}')
}

fn is_ideograph(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{309F}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}'
        | '\u{F900}'..='\u{FAFF}' | '\u{20000}'..='\u{3134F}')
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '’'
}

/// Length and kind of the word or number that `rest` starts with (it starts alphanumeric).
fn word_len(rest: &str) -> (usize, Kind) {
    let mut chars = rest.char_indices().peekable();
    let (mut end, mut prev, mut letters) = (0, None::<char>, false);
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let joins = match (prev, next) {
            (None, _) => true,
            (Some(p), _) if is_ideograph(p) || is_ideograph(c) => is_mark(c),
            (Some(_), _) if c.is_alphanumeric() || is_mark(c) => true,
            (Some(p), Some(n)) if is_apostrophe(c) => p.is_alphanumeric() && n.is_alphanumeric(),
            (Some(p), Some(n)) if c == '.' || c == ',' => p.is_numeric() && n.is_numeric(),
            _ => false,
        };
        if !joins {
            break;
        }
        letters |= c.is_alphabetic();
        end = i + c.len_utf8();
        prev = Some(c);
    }
    (end, if letters { Kind::Word } else { Kind::Number })
}

/// Length of the URL `rest` starts with, if it starts with one.
fn url_len(rest: &str) -> Option<usize> {
    let scheme = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)).count();
    let body = if rest[scheme..].starts_with("://") {
        scheme + 3
    } else if rest.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("www.")) {
        4
    } else {
        return None;
    };
    let end = rest.find(ends_url).unwrap_or(rest.len());
    let url = rest[..end].trim_end_matches(|c: char| ".,;:!?'\"’”)]}>*_~|`".contains(c));
    (url.len() > body).then_some(url.len())
}

/// Whether `c` ends a URL (as in a markdown link `[text](url)` or Discord's `<url>`).
fn ends_url(c: char) -> bool {
    c.is_whitespace() || "<>[]\"`".contains(c)
}

/// Length of the Discord mention or custom emoji `rest` starts with (it starts with `<`).
fn mention_len(rest: &str) -> Option<usize> {
    let end = rest.bytes().take(64).position(|b| b == b'>')?;
    let inner = &rest[1..end];
    let emoji = || inner.strip_prefix("a:").or_else(|| inner.strip_prefix(':'))?.split_once(':');
    let id = ["@!", "@&", "@", "#"].into_iter().find_map(|p| inner.strip_prefix(p)).or_else(|| {
        emoji()
            .filter(|(name, _)| {
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !name.is_empty()
            })
            .map(|(_, id)| id)
    })?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some(end + 1)
}

/// Length of the `@name` handle `rest` starts with (it starts with `@`).
fn handle_len(rest: &str) -> Option<usize> {
    let body = &rest[1..];
    let n = body.find(|c: char| !(c.is_alphanumeric() || "_-.".contains(c))).unwrap_or(body.len());
    let name = body[..n].trim_end_matches(['_', '-', '.']);
    (!name.is_empty()).then_some(1 + name.len())
}

/// The word 8-grams of the stored messages, as 64-bit hashes with reference counts, so a reply
/// (or a reply being decoded, see [`CopyGuard`]) can be checked for copying any one of them.
///
/// Hashes are keyed per index (std's SipHash with a random key), so members cannot craft
/// colliding messages; an index lives in memory and is rebuilt from the store, never saved.
/// Each message also keeps a fingerprint of its words under its id, which makes `add` of a known
/// id and `remove` of an unknown id (or with other text) no-ops: `remove` is an exact inverse.
#[derive(Debug, Clone, Default)]
pub struct CopyIndex {
    keys: RandomState,
    grams: HashMap<u64, u32>,
    messages: HashMap<u64, u64>,
}

impl CopyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Indexes a stored message; false (and nothing changes) if `message_id` is already indexed.
    /// To index an edit, `remove` the old text, then `add` the new.
    pub fn add(&mut self, message_id: u64, text: &str) -> bool {
        let Entry::Vacant(slot) = self.messages.entry(message_id) else { return false };
        let (fingerprint, grams) = Self::grams_of(&self.keys, text);
        slot.insert(fingerprint);
        for g in grams {
            *self.grams.entry(g).or_insert(0) += 1;
        }
        true
    }

    /// Forgets a message `add`ed with the same id and the same words; false (and nothing
    /// changes) otherwise. An 8-gram stays indexed while another message still holds it.
    pub fn remove(&mut self, message_id: u64, text: &str) -> bool {
        let (fingerprint, grams) = Self::grams_of(&self.keys, text);
        if self.messages.get(&message_id) != Some(&fingerprint) {
            return false;
        }
        self.messages.remove(&message_id);
        for g in grams {
            if let Entry::Occupied(mut e) = self.grams.entry(g) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        true
    }

    /// Whether any [`COPY_RUN`] consecutive `words` are an indexed 8-gram.
    pub fn contains_run<S: AsRef<str>>(&self, words: &[S]) -> bool {
        let hashes: Vec<u64> = words.iter().map(|w| token_hash(&self.keys, w.as_ref())).collect();
        hashes.windows(COPY_RUN).any(|w| self.has(w))
    }

    /// Messages indexed.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Distinct 8-grams indexed.
    pub fn grams(&self) -> usize {
        self.grams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// Heap bytes of both tables, estimated from their capacity (a bucket per 7/8 slot, plus a
    /// control byte each).
    pub fn approx_heap_bytes(&self) -> usize {
        let table = |cap: usize, entry: usize| cap * 8 / 7 * (entry + 1);
        table(self.grams.capacity(), size_of::<(u64, u32)>())
            + table(self.messages.capacity(), size_of::<(u64, u64)>())
    }

    /// Whether the last [`COPY_RUN`] of `hashes` (token hashes) are an indexed 8-gram.
    fn has(&self, hashes: &[u64]) -> bool {
        hashes.len() >= COPY_RUN
            && self.grams.contains_key(&seq_hash(&self.keys, &hashes[hashes.len() - COPY_RUN..]))
    }

    /// The fingerprint of `text`'s token sequence and the hashes of its 8-grams.
    fn grams_of(keys: &RandomState, text: &str) -> (u64, Vec<u64>) {
        let hashes: Vec<u64> = tokens(text).map(|t| token_hash(keys, t.text)).collect();
        (seq_hash(keys, &hashes), hashes.windows(COPY_RUN).map(|w| seq_hash(keys, w)).collect())
    }
}

fn token_hash(keys: &RandomState, token: &str) -> u64 {
    if token.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        keys.hash_one(token.as_bytes())
    } else {
        keys.hash_one(normalize(token).as_bytes())
    }
}

/// A hash of a sequence of hashes (SipHash counts the bytes written, so lengths differ too).
fn seq_hash(keys: &RandomState, hashes: &[u64]) -> u64 {
    let mut h = keys.build_hasher();
    hashes.iter().for_each(|&w| h.write_u64(w));
    h.finish()
}

/// Keeps a reply being decoded from copying [`COPY_RUN`] consecutive words of one stored
/// message: a token whose text would *complete* the 8th word of an indexed 8-gram is refused.
/// A word is complete once a character that cannot continue it follows (a space, most
/// punctuation; a URL only at whitespace or `<>[]"`), or at the end of the message. The guard
/// re-checks the words since the last whitespace on every call, so a word that changes as it
/// grows (`http:` → a URL) is judged in its final form. The guard knows only
/// the index: a long quote in the mention is no reason to refuse (or allow) anything.
///
/// How the decoder uses it, per reply:
/// 1. `let mut guard = CopyGuard::new(&index);`
/// 2. each step, draw a token; if it is a content token whose decoded text `piece` fails
///    `guard.allows(piece)`, or the end-of-message token and `guard.allows_end()` is false, mask
///    that token and draw again (some token always passes: one that lengthens an unfinished last
///    word, or else a space);
/// 3. accept a content token with `guard.advance(piece)`;
/// 4. if the length cap stops the reply, send `guard.finish()`, which drops an unfinished last
///    word that would complete a copy.
///
/// `piece` is the text the token adds to the decoded reply; hold back a token that ends inside
/// a UTF-8 character until the character is whole. A call hashes only the words since the last
/// whitespace (usually one or two): the hashes of the 7 words before them are kept.
#[derive(Debug, Clone)]
pub struct CopyGuard<'a> {
    index: &'a CopyIndex,
    text: String,
    /// `text[..sealed]` ends in whitespace: its tokens are final.
    sealed: usize,
    /// Whether `sealed` is inside a code fence.
    in_fence: bool,
    /// Hashes of the last `COPY_RUN - 1` tokens of `text[..sealed]`, oldest first.
    recent: Vec<u64>,
}

impl<'a> CopyGuard<'a> {
    pub fn new(index: &'a CopyIndex) -> Self {
        CopyGuard { index, text: String::new(), sealed: 0, in_fence: false, recent: Vec::new() }
    }

    /// The text accepted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `piece` may be appended.
    pub fn allows(&self, piece: &str) -> bool {
        if self.index.is_empty() {
            return true;
        }
        let mut tail = String::with_capacity(self.text.len() - self.sealed + piece.len());
        tail.push_str(&self.text[self.sealed..]);
        tail.push_str(piece);
        self.clean(&tail, false)
    }

    /// Whether the message may end here.
    pub fn allows_end(&self) -> bool {
        self.index.is_empty() || self.clean(&self.text[self.sealed..], true)
    }

    /// Appends `piece` (which the decoder has checked with `allows`).
    pub fn advance(&mut self, piece: &str) {
        self.text.push_str(piece);
        let Some((ws, c)) = self.text[self.sealed..].char_indices().rfind(|(_, c)| c.is_whitespace()) else {
            return;
        };
        let end = self.sealed + ws + c.len_utf8();
        let mut new = Tokens { text: &self.text[self.sealed..end], pos: 0, in_fence: self.in_fence };
        for t in new.by_ref() {
            self.recent.push(token_hash(&self.index.keys, t.text));
        }
        let excess = self.recent.len().saturating_sub(COPY_RUN - 1);
        self.recent.drain(..excess);
        self.in_fence = new.in_fence;
        self.sealed = end;
    }

    /// The reply to send: the text, less its last word if ending on it would complete a copy
    /// (only that word can: every earlier one was checked when it was completed).
    pub fn finish(&self) -> &str {
        if self.allows_end() {
            return self.text.trim();
        }
        let tail = Tokens { text: &self.text[self.sealed..], pos: 0, in_fence: self.in_fence };
        let cut = tail.last().map_or(self.text.len(), |t| self.sealed + t.start);
        self.text[..cut].trim()
    }

    /// Whether no complete token of `tail` (the text after `sealed`) ends an indexed 8-gram.
    fn clean(&self, tail: &str, at_end: bool) -> bool {
        let mut hashes = Vec::with_capacity(COPY_RUN + 4);
        hashes.extend_from_slice(&self.recent);
        for t in (Tokens { text: tail, pos: 0, in_fence: self.in_fence }) {
            hashes.push(token_hash(&self.index.keys, t.text));
            let complete = at_end || is_complete(&t, &tail[t.start + t.text.len()..]);
            if complete && self.index.has(&hashes) {
                return false;
            }
        }
        true
    }
}

/// Whether a token followed by `after` (the rest of the text so far) counts as complete: once
/// nothing can continue it. `<…>` mentions and ideographs are complete at once, so their own
/// piece is refused (a decoder is never left with an unfinished token that cannot be finished).
fn is_complete(t: &Token, after: &str) -> bool {
    let mut rest = after.chars();
    match (t.kind, rest.next()) {
        (Kind::Mention, _) if t.text.ends_with('>') => true,
        (Kind::Word, _) if t.text.starts_with(is_ideograph) => true,
        (_, None) => false,
        (Kind::Url, _) => after.contains(ends_url),
        (_, Some(c)) => !(rest.next().is_none() && (is_apostrophe(c) || ".,-_".contains(c) || is_mark(c))),
    }
}

/// Normalised words known from training messages.
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    words: HashSet<String>,
}

impl Vocabulary {
    pub fn from_messages<'m>(messages: impl IntoIterator<Item = &'m str>) -> Self {
        let mut v = Vocabulary::default();
        messages.into_iter().for_each(|m| v.add(m));
        v
    }

    /// Learns the words (only [`Kind::Word`] tokens) of a message.
    pub fn add(&mut self, text: &str) {
        self.words.extend(tokens(text).filter(|t| t.kind == Kind::Word).map(|t| normalize(t.text)));
    }

    /// Whether a normalised word (as [`words`] gives it) is known.
    pub fn contains(&self, word: &str) -> bool {
        self.words.contains(word)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// Of the words ([`Kind::Word`] tokens) in `replies`, the share known from `vocab` or present in
/// that reply's prompt context (`contexts[i]` for `replies[i]`; missing means none); 0 if no words.
pub fn real_word_share(replies: &[String], vocab: &Vocabulary, contexts: &[String]) -> f64 {
    let (mut known, mut all) = (0, 0);
    for (i, reply) in replies.iter().enumerate() {
        let context: HashSet<String> =
            contexts.get(i).map(|c| words(c)).unwrap_or_default().into_iter().collect();
        for w in tokens(reply).filter(|t| t.kind == Kind::Word).map(|t| normalize(t.text)) {
            known += usize::from(vocab.contains(&w) || context.contains(&w));
            all += 1;
        }
    }
    share(known, all)
}

/// Whether the reply holds [`COPY_RUN`] consecutive words of one message in `index`.
pub fn copies_run(reply: &str, index: &CopyIndex) -> bool {
    index.contains_run(&words(reply))
}

/// Whether the reply repeats a word [`LOOP_RUN`]-gram (overlapping repeats count).
pub fn has_loop(reply: &str) -> bool {
    let w = words(reply);
    let mut seen = HashSet::new();
    w.windows(LOOP_RUN).any(|g| !seen.insert(g))
}

/// Mean number of tokens ([`words`]) per reply; 0 for no replies.
pub fn mean_words(replies: &[String]) -> f64 {
    share(replies.iter().map(|r| tokens(r).count()).sum(), replies.len())
}

/// Distinct pairs of adjacent words (within a reply, not across replies).
pub fn distinct_bigrams(replies: &[String]) -> usize {
    let all: Vec<Vec<String>> = replies.iter().map(|r| words(r)).collect();
    all.iter().flat_map(|w| w.windows(2)).collect::<HashSet<_>>().len()
}

fn share(part: usize, all: usize) -> f64 {
    if all == 0 {
        0.0
    } else {
        part as f64 / all as f64
    }
}

/// The readability figures of a set of replies; shares are fractions in `0..=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Readability {
    pub replies: usize,
    pub real_word_share: f64,
    /// Share of replies with a [`copies_run`].
    pub copy_share: f64,
    /// Share of replies with a [`has_loop`].
    pub loop_share: f64,
    pub mean_words: f64,
    pub distinct_bigrams: usize,
}

impl Readability {
    /// `contexts[i]` is the prompt context `replies[i]` was generated from.
    pub fn measure(replies: &[String], vocab: &Vocabulary, contexts: &[String], index: &CopyIndex) -> Self {
        let count = |f: &dyn Fn(&String) -> bool| replies.iter().filter(|r| f(r)).count();
        Readability {
            replies: replies.len(),
            real_word_share: real_word_share(replies, vocab, contexts),
            copy_share: share(count(&|r| copies_run(r, index)), replies.len()),
            loop_share: share(count(&|r| has_loop(r)), replies.len()),
            mean_words: mean_words(replies),
            distinct_bigrams: distinct_bigrams(replies),
        }
    }
}

impl fmt::Display for Readability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} replies: real words {:.1}%, copies {:.1}%, loops {:.1}%, {:.1} words/reply, {} distinct bigrams",
            self.replies,
            100.0 * self.real_word_share,
            100.0 * self.copy_share,
            100.0 * self.loop_share,
            self.mean_words,
            self.distinct_bigrams
        )
    }
}

#[cfg(test)]
mod tests;
