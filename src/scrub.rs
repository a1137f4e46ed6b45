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

struct Rule {
    pattern: Regex,
    replacement: &'static str,
    /// Phone numbers must stand alone: not glued to letters, digits or a mention.
    standalone: bool,
}

fn rule(pattern: &str, replacement: &'static str, standalone: bool) -> Rule {
    // The patterns are constants checked by the tests below.
    #[allow(clippy::unwrap_used)]
    let pattern = Regex::new(pattern).unwrap();
    Rule { pattern, replacement, standalone }
}

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    vec![
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
        // `password: hunter2`, `api_key=...`: keep the key, drop the value.
        rule(
            r"(?i)\b(password|passwd|pwd|passphrase|api[_-]?key|secret|access[_-]?token|auth[_-]?token)(\s*[:=]\s*)[^\s,;]+",
            "${1}${2}[secret]",
            false,
        ),
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
            replace_standalone(&out, r)
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

/// Replaces matches that are not glued to a word, a number or a mention on either side.
fn replace_standalone(text: &str, r: &Rule) -> Option<String> {
    let mut out = String::new();
    let mut last = 0;
    for m in r.pattern.find_iter(text) {
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        let glued_before = before.is_some_and(|c| c.is_alphanumeric() || "_@#<:/&".contains(c));
        let glued_after = after.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '>');
        let digits = m.as_str().chars().filter(char::is_ascii_digit).count();
        if glued_before || glued_after || !(7..=15).contains(&digits) {
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
        ] {
            assert!(matches!(scrub(text), Cow::Borrowed(_)), "{text} became {}", scrub(text));
        }
    }
}
