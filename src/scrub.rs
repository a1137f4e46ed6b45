//! Ingest scrubbing: credentials, e-mail addresses and phone numbers become placeholders before
//! a message is stored, so no model can learn (and later repeat) them. Deliberately greedy for
//! secrets and careful with numbers: Discord IDs, dates, times and versions stay intact.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

pub const TOKEN: &str = "[token]";
pub const SECRET: &str = "[secret]";
pub const EMAIL: &str = "[email]";
pub const PHONE: &str = "[phone]";
pub const CARD: &str = "[card]";
pub const IBAN: &str = "[iban]";

struct Rule {
    pattern: Regex,
    replacement: &'static str,
    /// Phone numbers must stand alone: not glued to letters, digits or a mention.
    standalone: bool,
    /// A check the match must also pass (a checksum, a mix of characters).
    accept: Option<fn(&str) -> bool>,
}

fn rule(pattern: &str, replacement: &'static str, standalone: bool) -> Rule {
    // The patterns are constants checked by the tests below.
    #[allow(clippy::unwrap_used)]
    let pattern = Regex::new(pattern).unwrap();
    Rule { pattern, replacement, standalone, accept: None }
}

fn checked(pattern: &str, replacement: &'static str, accept: fn(&str) -> bool) -> Rule {
    Rule { accept: Some(accept), ..rule(pattern, replacement, false) }
}

/// Names of settings whose value is a secret: `password`, `DB_PASSWORD`, `client_secret`,
/// `AWS_SECRET_ACCESS_KEY`, `api-key`, `auth_token`…
const SECRET_NAMES: &str = r"[A-Za-z\d_.-]*(?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?key|private[_-]?key|[a-z]+[_-]token|token)";

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let assigned = format!(r#"(?i)\b({SECRET_NAMES})(\s*=\s*)(?:"[^"]*"|'[^']*'|[^\s,;\[][^\s,;]*)"#);
    // After a colon (chat more than code), only a value with a digit or a symbol: `password:
    // hunter2` goes, `the password: forgotten` stays.
    let stated = format!(r"(?i)\b({SECRET_NAMES})(\s*:\s*)[^\s,;\[]*[\d_/+=!@#$%^&*.-][^\s,;]*");
    vec![
        // PGP private key blocks, to the end marker or the end of the message.
        rule(
            r"-----BEGIN PGP PRIVATE KEY BLOCK-----(?s:.*?)(?:-----END PGP PRIVATE KEY BLOCK-----|\z)",
            SECRET,
            false,
        ),
        // PEM private keys, to the end marker or the end of the message.
        rule(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z ]*PRIVATE KEY-----|\z)",
            SECRET,
            false,
        ),
        // Discord webhook URLs carry their own token.
        rule(
            r"https?://(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api/(?:v\d+/)?webhooks/\d+/[\w-]+",
            TOKEN,
            false,
        ),
        // Discord bot and user tokens: base64 user ID, timestamp, HMAC.
        rule(r"\b[MNO][A-Za-z\d_-]{23,27}\.[A-Za-z\d_-]{6,7}\.[A-Za-z\d_-]{27,40}\b", TOKEN, false),
        // JSON web tokens.
        rule(r"\beyJ[A-Za-z\d_-]{8,}\.eyJ[A-Za-z\d_-]{8,}\.[A-Za-z\d_-]{8,}", TOKEN, false),
        // Well-known API key shapes: GitHub, OpenAI-style, AWS, Slack, Google, Stripe.
        rule(r"\b(?:gh[pousr]_[A-Za-z\d]{36,255}|github_pat_[A-Za-z\d_]{22,255})\b", TOKEN, false),
        rule(r"\bsk-(?:proj-)?[A-Za-z\d_-]{20,}", TOKEN, false),
        rule(r"\b(?:AKIA|ASIA)[\dA-Z]{16}\b", TOKEN, false),
        rule(r"\bxox[abposr]-[A-Za-z\d-]{10,}", TOKEN, false),
        rule(r"\bAIza[\dA-Za-z_-]{35}\b", TOKEN, false),
        rule(r"\b[rs]k_(?:live|test)_[\dA-Za-z]{16,}", TOKEN, false),
        // Hugging Face, GitLab, Slack webhooks, Telegram bots.
        rule(r"\bhf_[A-Za-z\d]{30,}\b", TOKEN, false),
        rule(r"\bglpat-[A-Za-z\d_-]{20,}", TOKEN, false),
        rule(r"https://hooks\.slack\.com/services/[A-Za-z\d/]+", TOKEN, false),
        rule(r"\b\d{8,10}:AA[A-Za-z\d_-]{33}\b", TOKEN, false),
        // `Authorization: Bearer …`: the scheme stays, the credential goes.
        rule(r"(?i)\b(Bearer|Basic)\s+[A-Za-z\d._~+/-]{16,}=*", "${1} [token]", false),
        // AWS secret access keys: 40 characters of base64 with both cases and a digit (a git
        // hash is 40 lower-case hex digits and stays).
        checked(r"(?:^|[^A-Za-z\d/+])([A-Za-z\d/+]{40})(?:$|[^A-Za-z\d/+=])", "[token]", aws_secret),
        // Database and other URLs with a password: `postgres://user:pass@host`.
        rule(r"\b([a-z][a-z\d+.-]*://[^\s:/@]+):[^\s@/]+@", "${1}:[secret]@", false),
        // `password: hunter2`, `API_KEY=...`, `client_secret = "..."`: the name stays.
        rule(&assigned, "${1}${2}[secret]", false),
        rule(&stated, "${1}${2}[secret]", false),
        // Payment cards: 13 to 19 digits in groups, or 15–16 digits with a card prefix, and a
        // valid Luhn checksum (Discord IDs are 17 to 19 digits in one piece and stay).
        checked(r"\b\d{4}(?:[ -]\d{4}){2}[ -]\d{1,7}\b|\b\d{4}[ -]\d{6}[ -]\d{5}\b", CARD, luhn),
        checked(r"\b(?:4\d{15}|5[1-5]\d{14}|3[47]\d{13}|6(?:011|5\d\d)\d{12})\b", CARD, luhn),
        // IBANs, with their mod-97 checksum.
        checked(r"\b[A-Z]{2}\d{2}(?: ?[A-Z\d]{4}){2,7}(?: ?[A-Z\d]{1,3})?\b", IBAN, iban),
        rule(r"\b[A-Za-z\d._%+-]+@[A-Za-z\d-]+(?:\.[A-Za-z\d-]+)*\.[A-Za-z]{2,}\b", EMAIL, false),
        // International numbers: a + and 8 to 15 digits, optionally grouped.
        rule(r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}", PHONE, true),
        // North American style: (555) 123-4567, 555-123-4567, 555.123.4567.
        rule(r"\(?\b\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b", PHONE, true),
    ]
});

/// `text` with secrets, e-mail addresses and phone numbers replaced by placeholders.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for r in RULES.iter() {
        let replaced = if r.standalone {
            replace_where(&out, r, standalone)
        } else if let Some(accept) = r.accept {
            replace_where(&out, r, |_, m| accept(m.as_str()))
        } else {
            match r.pattern.replace_all(&out, r.replacement) {
                Cow::Borrowed(_) => None,
                Cow::Owned(s) => Some(s),
            }
        };
        if let Some(s) = replaced {
            out = Cow::Owned(s);
        }
    }
    out
}

/// Replaces the matches (group 1 if the pattern has one, else the whole match) that `wanted`
/// accepts, given the text around them; `None` if none was.
fn replace_where(text: &str, r: &Rule, wanted: impl Fn(&str, regex::Match<'_>) -> bool) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    for caps in r.pattern.captures_iter(text) {
        let Some(m) = caps.get(1).or_else(|| caps.get(0)) else { continue };
        if !wanted(text, m) {
            continue;
        }
        out.push_str(&text[last..m.start()]);
        out.push_str(r.replacement);
        last = m.end();
    }
    (last > 0).then(|| {
        out.push_str(&text[last..]);
        out
    })
}

/// The Luhn checksum of the digits in `s` (payment card numbers carry one).
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN's mod-97 check: the first four characters moved to the end, letters as 10–35.
fn iban(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(v) = c.to_digit(36) else { return false };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

/// An AWS secret access key rather than a hash or a word: both cases and a digit.
fn aws_secret(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_uppercase())
        && s.chars().any(|c| c.is_ascii_lowercase())
        && s.chars().any(|c| c.is_ascii_digit())
}

/// Whether a match stands alone: not glued to a word, a number or a mention on either side,
/// with 7 to 15 digits (a phone number, not an ID or a date).
fn standalone(text: &str, m: regex::Match<'_>) -> bool {
    let before = text[..m.start()].chars().next_back();
    let after = text[m.end()..].chars().next();
    let glued_before = before.is_some_and(|c| c.is_alphanumeric() || "_@#<:/&".contains(c));
    let glued_after = after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '>');
    let digits = m.as_str().chars().filter(char::is_ascii_digit).count();
    !glued_before && !glued_after && (7..=15).contains(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_become_placeholders() {
        let cases = [
            (
                "my token is MTA4NjYxNzE4ODkyNjkzNTE0MA.GxYzAb.abcdefghijklmnopqrstuvwxyz0123456789AB oops",
                "my token is [token] oops",
            ),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked", "[token] leaked"),
            ("key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx12", "key [token]"),
            ("AKIAABCDEFGHIJKLMNOP", "[token]"),
            ("xoxb-123456789012-abcdefghij", "[token]"),
            ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "[token]"),
            ("hook: https://discord.com/api/webhooks/123456789012345678/AbC-dEf_123 ok", "hook: [token] ok"),
            ("password: hunter2, thanks", "password: [secret], thanks"),
            ("API_KEY=abc123 done", "API_KEY=[secret] done"),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- there",
                "[secret] there",
            ),
            ("DB_PASSWORD=s3cr3t!", "DB_PASSWORD=[secret]"),
            (r#"client_secret = "abc def""#, "client_secret = [secret]"),
            (
                "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "export AWS_SECRET_ACCESS_KEY=[token]",
            ),
            ("the key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY leaked", "the key [token] leaked"),
            ("Authorization: Bearer abcdef1234567890abcdef.xyz", "Authorization: Bearer [token]"),
            ("hf_abcdefghijklmnopqrstuvwxyzABCDEFGH works", "[token] works"),
            ("glpat-abcdefghij0123456789 there", "[token] there"),
            ("https://hooks.slack.com/services/T000/B000/XXXXXXXX", "[token]"),
            ("xoxp-123456789012-abcdefghij", "[token]"),
            ("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0 here", "bot [token] here"),
            (
                "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----",
                "[secret]",
            ),
            ("use postgres://mynah:hunter2@db.local:5432/x", "use postgres://mynah:[secret]@db.local:5432/x"),
            ("card 4111 1111 1111 1111 ok", "card [card] ok"),
            ("card 4111-1111-1111-1111", "card [card]"),
            ("4012888888881881", "[card]"),
            ("amex 3782 822463 10005", "amex [card]"),
            ("pay to GB82 WEST 1234 5698 7654 32 please", "pay to [iban] please"),
            ("DE89370400440532013000", "[iban]"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "{input}");
        }
    }

    #[test]
    fn emails_and_phone_numbers_become_placeholders() {
        let cases = [
            ("mail me at jane.doe+bot@example.co.uk!", "mail me at [email]!"),
            ("call (555) 123-4567 today", "call [phone] today"),
            ("call 555-123-4567", "call [phone]"),
            ("or +44 20 7946 0958.", "or [phone]."),
            ("+4915123456789", "[phone]"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "{input}");
        }
    }

    #[test]
    fn ordinary_chat_is_left_alone() {
        for text in [
            "hey <@123456789012345678> look at <#987654321098765432>",
            "meeting on 2026-11-29 at 14:30, version 1.2.3",
            "id 1086617188926935140 and 3.14159",
            "it ended 12-3, then 4-5",
            "the password is something I forgot",
            "Привет, как дела? 🦜 `code block`",
            "sk-short",
            // Snowflakes (even Luhn-valid ones), versions, git hashes, ordinary numbers.
            "user 1086617188926935140 and <@1086617188926935140>",
            "see 4111111111111111111 in the logs",
            "fixed in 9fceb02d0ae598e95dc970b74767f19372d61af8, v2.10.3",
            "commit 9FCEB02D0AE598E95DC970B74767F19372D61AF8",
            "the password: forgotten",
            "tokens: 1500, passwords are hard",
            "4111 1111 1111 1112 fails its checksum",
            "GB82 WEST 1234 5698 7654 33 fails its checksum",
            "https://example.com/path?x=1",
        ] {
            assert!(matches!(scrub(text), Cow::Borrowed(_)), "{text} became {}", scrub(text));
        }
    }
}
