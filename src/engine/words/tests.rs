//! Tests of the parent module.

use super::*;

const STORED: &str = "The quick brown fox jumps over the lazy sleeping dog.";

fn index_of(messages: &[&str]) -> CopyIndex {
    let mut index = CopyIndex::new();
    for (id, m) in messages.iter().enumerate() {
        assert!(index.add(id as u64, m));
    }
    index
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A deterministic generator for cutting texts into pieces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    /// `text` cut at random character boundaries into pieces of 1 to `max` characters.
    fn pieces(&mut self, text: &str, max: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let n = (1 + self.below(max)).min(chars.len() - i);
            out.push(chars[i..i + n].iter().collect());
            i += n;
        }
        out
    }
}

#[test]
fn words_are_lowercased_unicode_runs_with_inner_apostrophes() {
    let w = words("Don't STOP — it’s 'quoted' naïve Привет, cafe\u{301}! students' x_y");
    assert_eq!(
        w,
        ["don't", "stop", "it's", "quoted", "naïve", "привет", "cafe\u{301}", "students", "x", "y"]
    );
}

#[test]
fn urls_mentions_and_numbers_are_single_tokens_that_are_not_words() {
    let text = "see https://Example.com/a?b=1, <@123> <@!4> <#5> <:pog:6> @bob-the_1. 2,000.50 www.x.org.";
    let kinds: Vec<(&str, Kind)> = tokens(text).map(|t| (t.text, t.kind)).collect();
    use Kind::*;
    let expected = [
        ("see", Word),
        ("https://Example.com/a?b=1", Url),
        ("<@123>", Mention),
        ("<@!4>", Mention),
        ("<#5>", Mention),
        ("<:pog:6>", Mention),
        ("@bob-the_1", Mention),
        ("2,000.50", Number),
        ("www.x.org", Url),
    ];
    assert_eq!(kinds, expected);
    assert_eq!(words("mail a@b.com <@x> 9pm"), ["mail", "a", "b", "com", "@x", "9pm"]);
    assert_eq!(words("[a](http://x.io/b_(c)).<https://y.io>"), ["a", "http://x.io/b_(c", "https://y.io"]);
}

#[test]
fn code_fences_are_skipped_whole() {
    assert_eq!(words("look ```rust\nfn main() {}\n``` ok `inline` code"), ["look", "ok", "inline", "code"]);
    assert_eq!(words("a ```b c"), ["a"]);
}

#[test]
fn han_and_hiragana_are_one_word_per_character() {
    assert_eq!(words("我爱你 ok です カタカナ"), ["我", "爱", "你", "ok", "で", "す", "カタカナ"]);
}

#[test]
fn an_8_gram_in_two_messages_survives_removing_one() {
    let mut index = index_of(&[STORED, "Yes: the quick brown fox jumps over the lazy cat"]);
    let run = words("the quick brown fox jumps over the lazy");
    assert!(index.contains_run(&run));
    assert!(index.remove(0, STORED));
    assert!(index.contains_run(&run), "still in message 1");
    assert!(!index.contains_run(&words("quick brown fox jumps over the lazy sleeping")));
    assert!(index.remove(1, "Yes: the quick brown fox jumps over the lazy cat"));
    assert!(index.is_empty() && index.messages() == 0);
}

#[test]
fn remove_needs_the_id_and_words_that_were_added_and_add_is_once_per_id() {
    let mut index = index_of(&[STORED]);
    let grams = index.grams();
    assert_eq!(grams, 3);
    assert!(!index.add(0, STORED), "same id twice");
    assert!(!index.remove(0, "a quite different message of more than eight words here"));
    assert!(!index.remove(7, STORED));
    assert_eq!(index.grams(), grams);
    assert!(index.remove(0, "the QUICK brown fox — jumps over the lazy sleeping dog"), "same words");
    assert!(index.is_empty());
}

#[test]
fn a_copy_is_8_consecutive_words_whatever_the_case_and_punctuation() {
    let index = index_of(&[STORED]);
    assert!(copies_run("lol THE quick brown fox, jumps over the LAZY", &index));
    assert!(!copies_run("the quick brown fox jumps over the", &index), "7 words");
    assert!(!copies_run("quick brown fox jumps over the lazy cat sleeping dog", &index));
    assert!(!CopyIndex::new().contains_run(&["a"; 20]));
}

#[test]
fn a_loop_is_a_repeated_word_4_gram() {
    assert!(has_loop("i like it a lot and i like it a lot"));
    assert!(has_loop("ha ha ha ha ha"));
    assert!(!has_loop("ha ha ha ha"));
    assert!(!has_loop("i like it and i like cats"));
}

#[test]
fn readability_counts_real_words_copies_loops_length_and_bigrams() {
    let vocab = Vocabulary::from_messages(["hello there friend", STORED]);
    let index = index_of(&[STORED]);
    let replies = strings(&[
        "Hello there zorp https://x.io 42",
        "the quick brown fox jumps over the lazy sleeping",
        "blah blah blah blah blah",
    ]);
    let contexts = strings(&["zorp is my name"]);
    let r = Readability::measure(&replies, &vocab, &contexts, &index);
    // Words: hello there zorp (zorp from the context) | 9 known | blah x5 unknown.
    assert!((r.real_word_share - 12.0 / 17.0).abs() < 1e-9, "{r}");
    assert!((r.copy_share - 1.0 / 3.0).abs() < 1e-9);
    assert!((r.loop_share - 1.0 / 3.0).abs() < 1e-9);
    assert!((r.mean_words - 19.0 / 3.0).abs() < 1e-9);
    assert_eq!(r.distinct_bigrams, 4 + 8 + 1);
    assert_eq!(real_word_share(&replies[..1], &vocab, &[]), 2.0 / 3.0);
    assert!(r.to_string().starts_with("3 replies: real words 70.6%, copies 33.3%"), "{r}");
    assert_eq!(Readability::measure(&[], &vocab, &[], &index).mean_words, 0.0);
}

/// The decoder of the brief: each step offers the next piece of the stored sentence first,
/// then a few alternatives and the end of the message, and takes the first the guard allows.
fn decode<'i>(index: &'i CopyIndex, script: &[String]) -> (CopyGuard<'i>, bool) {
    let mut guard = CopyGuard::new(index);
    let mut next = 0;
    for _ in 0..200 {
        // `None` is the end of the message, offered first once the script is done.
        let first = script.get(next).map(String::as_str);
        let mut candidates = [first, Some(" and"), Some(","), Some("s"), None].into_iter();
        match candidates.find(|c| c.map_or(guard.allows_end(), |p| guard.allows(p))) {
            Some(Some(piece)) => {
                next += usize::from(first == Some(piece));
                guard.advance(piece);
            }
            _ => return (guard, true),
        }
    }
    (guard, false)
}

#[test]
fn a_decoder_taking_the_first_allowed_candidate_never_copies_8_words_but_can_copy_7() {
    let index = index_of(&[STORED, "an unrelated message that somebody else wrote in the channel"]);
    let stored = words(STORED);
    let trailing: Vec<String> = STORED.split_inclusive(' ').map(str::to_string).collect();
    let leading = STORED.split(' ').enumerate().map(|(i, w)| if i == 0 { w.into() } else { format!(" {w}") });
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // (pieces, whether each piece completes at most one word, so the first 7 are reachable)
    let mut scripts = vec![(trailing, true), (leading.collect(), true)];
    scripts.extend((0..200).map(|_| (rng.pieces(STORED, 3), true)));
    scripts.extend((0..300).map(|i| (rng.pieces(STORED, 4 + i % 12), false)));
    for (script, one_word_at_a_time) in scripts {
        assert_eq!(script.concat(), STORED);
        assert_eq!(decode(&CopyIndex::new(), &script).0.finish(), STORED, "unguarded, it copies");
        let (guard, finished) = decode(&index, &script);
        let out = words(guard.finish());
        assert!(finished, "{script:?} gave {:?}", guard.text());
        assert!(!index.contains_run(&out), "{script:?} gave {out:?}");
        let overlap = out.windows(COPY_RUN - 1).any(|w| stored.windows(COPY_RUN - 1).any(|s| s == w));
        assert!(overlap || !one_word_at_a_time, "{script:?} gave {out:?}");
    }
}

#[test]
fn the_guard_refuses_exactly_the_pieces_that_complete_a_copy_however_the_text_is_cut() {
    let index = index_of(&[
        STORED,
        "don't you think it's 3.14 or https://x.io/a in <@1> here, friend",
        "@ann ```code here``` one two three four five six seven eight",
    ]);
    let texts = [
        ("The quick brown fox jumps over the lazy sleeping cat", true),
        ("well the quick brown fox jumps over the lazy", true),
        ("the quick brown fox jumps over the lazy’s dog", false),
        ("the quick brown fox jumps over the lazy-dog", true),
        ("the quick brown fox jumps over the lazyish dog", false),
        ("Don’t you think it's 3.14 or https://x.io/a in <@1> there", true),
        ("don't you think it's 3.14 or https://x.io/ab in <@1>", false),
        ("don't you think it's 3.145 or https://x.io/a in", false),
        ("so don't you think it's 3.14 or <https://x.io/a>in <@1>", true),
        ("so don't you think it's 3.14 or https://x.io/a/in <@1>", false),
        ("@ann ```other code``` one two three four five six seven eight", true),
        ("ann one two three four five six seven", false),
        ("it is fine to write anything else at any length you like here", false),
    ];
    let mut rng = Rng(7);
    for (text, copies) in texts {
        assert_eq!(copies_run(text, &index), copies, "{text}");
        for max in 1..40 {
            let pieces = rng.pieces(text, max);
            let mut guard = CopyGuard::new(&index);
            let mut refused = false;
            for p in &pieces {
                refused |= !guard.allows(p);
                guard.advance(p);
            }
            refused |= !guard.allows_end();
            assert_eq!(refused, copies, "{text} cut as {pieces:?}");
        }
    }
}

#[test]
fn finish_drops_an_unfinished_last_word_that_would_complete_a_copy() {
    let index = index_of(&[STORED]);
    let mut guard = CopyGuard::new(&index);
    for p in [" the quick brown fox", " jumps over", " the la", "zy"] {
        assert!(guard.allows(p));
        guard.advance(p);
    }
    assert!(!guard.allows_end() && !guard.allows(" ") && !guard.allows("!") && guard.allows("s"));
    assert_eq!(guard.finish(), "the quick brown fox jumps over the");
    guard.advance("s");
    assert_eq!(guard.finish(), "the quick brown fox jumps over the lazys");
}

#[test]
fn a_mention_or_ideograph_that_completes_a_copy_is_refused_as_it_is_written() {
    let index = index_of(&["我爱你们大家好朋友们", "a b c d e f g <@42> h"]);
    let mut guard = CopyGuard::new(&index);
    for p in "我爱你们大家好".chars().map(String::from) {
        assert!(guard.allows(&p));
        guard.advance(&p);
    }
    assert!(!guard.allows("朋") && guard.allows("月"));
    let mut guard = CopyGuard::new(&index);
    for p in ["a b c d e f g <@4", "2"] {
        assert!(guard.allows(p));
        guard.advance(p);
    }
    assert!(!guard.allows(">") && guard.allows("3"));
    assert!(guard.allows("3>"));
    guard.advance("3>");
    assert!(guard.allows(" h") && guard.allows_end());
}

#[test]
fn the_guard_knows_only_the_store_not_the_mention() {
    let quoted = "a member quoting a long sentence that nobody has stored before today";
    let index = index_of(&[STORED]);
    for index in [&index, &CopyIndex::new()] {
        let mut guard = CopyGuard::new(index);
        assert!(guard.allows(quoted));
        guard.advance(quoted);
        assert!(guard.allows_end());
    }
    assert!(!CopyGuard::new(&index).allows(STORED), "one piece holding a whole copy");
}
