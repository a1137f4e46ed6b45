//! Making text safe to send to Discord: length limits and mentions that cannot ping.

/// Discord's limit on a message's content, in characters.
pub const DISCORD_MAX_CHARS: usize = 2000;

/// Cuts `text` to at most `max` characters (on a character boundary), marking a cut with `…`.
pub fn clamp(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Renders mention syntax inert, so even a client that ignored `allowed_mentions` could not
/// ping anyone: `@everyone`/`@here` get a zero-width space, `<@id>`-style tokens become `@user`,
/// `@role` or `#channel`.
pub fn defuse_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        match mention_token(tail) {
            Some((len, replacement)) => {
                out.push_str(replacement);
                rest = &tail[len..];
            }
            None => {
                out.push('<');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out.replace("@everyone", "@\u{200B}everyone").replace("@here", "@\u{200B}here")
}

/// A generated reply without the `@name` addresses it opens with. Models learn members' habit of
/// addressing each other ("@alex try this"), but a reply already goes to its asker: someone
/// else's name there (or a bare `@`) reads as a mistake. Text that is nothing but addresses is
/// left as it is.
pub fn without_leading_address(text: &str) -> &str {
    let mut rest = text.trim_start();
    while let Some(after_at) = rest.strip_prefix('@') {
        let end = after_at.find(char::is_whitespace).unwrap_or(after_at.len());
        let next = after_at[end..].trim_start();
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    // Still at an `@`: the loop stopped at the last word, so it was addresses only.
    if rest.starts_with('@') {
        return text;
    }
    rest
}

/// If `s` starts with `<@123>`, `<@!123>`, `<@&123>` or `<#123>`, its length and replacement.
fn mention_token(s: &str) -> Option<(usize, &'static str)> {
    let (body, replacement) = if let Some(b) = s.strip_prefix("<@&") {
        (b, "@role")
    } else if let Some(b) = s.strip_prefix("<@!") {
        (b, "@user")
    } else if let Some(b) = s.strip_prefix("<@") {
        (b, "@user")
    } else if let Some(b) = s.strip_prefix("<#") {
        (b, "#channel")
    } else {
        return None;
    };
    let digits = body.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && body.as_bytes().get(digits) == Some(&b'>'))
        .then(|| (s.len() - body.len() + digits + 1, replacement))
}

/// Everything a reply needs before it is sent.
pub fn for_discord(text: &str) -> String {
    clamp(&defuse_mentions(text), DISCORD_MAX_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_to_the_limit_on_a_char_boundary() {
        let long = "é".repeat(2500);
        let cut = clamp(&long, DISCORD_MAX_CHARS);
        assert_eq!(cut.chars().count(), DISCORD_MAX_CHARS);
        assert!(cut.ends_with('…'));
        assert_eq!(clamp("short", 10), "short");
    }

    #[test]
    fn a_reply_does_not_open_by_addressing_someone_else() {
        assert_eq!(without_leading_address("@RazzaFrazza I'm not a fan yet."), "I'm not a fan yet.");
        assert_eq!(without_leading_address("@, I hope so!"), "I hope so!");
        assert_eq!(without_leading_address("@a @b: hi there"), "hi there");
        assert_eq!(without_leading_address("ask @alex about it"), "ask @alex about it");
        assert_eq!(without_leading_address("@alex"), "@alex");
        assert_eq!(without_leading_address("@alex @bo"), "@alex @bo");
    }

    #[test]
    fn mentions_are_made_harmless() {
        let s = defuse_mentions("hey <@123> and <@!45> <@&6> in <#7> @everyone @here <@x> <3");
        assert_eq!(s, "hey @user and @user @role in #channel @\u{200B}everyone @\u{200B}here <@x> <3");
    }
}
