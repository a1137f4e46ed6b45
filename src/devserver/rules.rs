//! Discord's validation rules for what the bot sends, as pure functions: message bodies
//! (content, embeds, upload size), slash-command registrations and history windows. Each
//! failure is Discord's status, error code and message, so the bot meets the same refusal here
//! as in production.

use axum::http::StatusCode;
use serde_json::Value;

/// A refusal: HTTP status, Discord's error code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl Refusal {
    fn invalid(field: &str, why: &str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: 50035,
            message: format!("Invalid Form Body ({field}: {why})"),
        }
    }
}

/// What a bot may upload in one message without a boosted server (10 MiB).
pub const UPLOAD_LIMIT: usize = 10 * 1024 * 1024;
/// Message content, embed and command limits from Discord's API reference.
const CONTENT_CHARS: usize = 2000;
const EMBEDS: usize = 10;
const EMBED_TOTAL_CHARS: usize = 6000;

fn chars(v: &Value) -> usize {
    v.as_str().map(|s| s.chars().count()).unwrap_or(0)
}

/// Checks a message body (a new message, an interaction answer or a follow-up): content length,
/// embeds, and that it is not empty. `file_bytes` are the sizes of its attachments.
pub fn check_message(payload: &Value, file_bytes: &[usize]) -> Result<(), Refusal> {
    let content = chars(&payload["content"]);
    if content > CONTENT_CHARS {
        return Err(Refusal::invalid("content", "Must be 2000 or fewer in length."));
    }
    let embeds = payload["embeds"].as_array().map(Vec::as_slice).unwrap_or_default();
    if embeds.len() > EMBEDS {
        return Err(Refusal::invalid("embeds", "Must be 10 or fewer in length."));
    }
    let mut embed_chars = 0;
    for (i, e) in embeds.iter().enumerate() {
        let limits = [("title", 256), ("description", 4096), ("footer/text", 2048), ("author/name", 256)];
        for (field, max) in limits {
            let n = e.pointer(&format!("/{field}")).map(chars).unwrap_or(0);
            if n > max {
                return Err(Refusal::invalid(
                    &format!("embeds.{i}.{}", field.replace('/', ".")),
                    &format!("Must be {max} or fewer in length."),
                ));
            }
            embed_chars += n;
        }
        let fields = e["fields"].as_array().map(Vec::as_slice).unwrap_or_default();
        if fields.len() > 25 {
            return Err(Refusal::invalid(&format!("embeds.{i}.fields"), "Must be 25 or fewer in length."));
        }
        for (j, f) in fields.iter().enumerate() {
            for (field, max) in [("name", 256), ("value", 1024)] {
                let n = chars(&f[field]);
                if n > max {
                    return Err(Refusal::invalid(
                        &format!("embeds.{i}.fields.{j}.{field}"),
                        &format!("Must be {max} or fewer in length."),
                    ));
                }
                embed_chars += n;
            }
        }
    }
    if embed_chars > EMBED_TOTAL_CHARS {
        return Err(Refusal::invalid("embeds", "Embed size exceeds maximum size of 6000"));
    }
    if file_bytes.iter().sum::<usize>() > UPLOAD_LIMIT {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: 40005,
            message: "Request entity too large".into(),
        });
    }
    if content == 0 && embeds.is_empty() && file_bytes.is_empty() {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: 50006,
            message: "Cannot send an empty message".into(),
        });
    }
    Ok(())
}

/// A command or option name: 1–32 letters, digits, `-` or `_`, lower-case where a letter has
/// a case (Discord's `^[-_\p{L}\p{N}]{1,32}$` for chat-input commands).
fn valid_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=32).contains(&n)
        && name.chars().all(|c| c == '-' || c == '_' || c.is_alphanumeric())
        && name.chars().all(|c| !c.is_uppercase())
}

fn check_description(v: &Value, at: &str) -> Result<(), Refusal> {
    let n = chars(v);
    if !(1..=100).contains(&n) {
        return Err(Refusal::invalid(&format!("{at}.description"), "Must be between 1 and 100 in length."));
    }
    Ok(())
}

/// Checks one chat-input command (or option) level: name, description, options and choices,
/// and returns the characters it counts towards the 4000-character total.
fn check_command_part(part: &Value, at: &str) -> Result<usize, Refusal> {
    let name = part["name"].as_str().unwrap_or("");
    if !valid_name(name) {
        return Err(Refusal::invalid(
            &format!("{at}.name"),
            "Must be 1-32 lower-case letters, digits, - or _.",
        ));
    }
    check_description(&part["description"], at)?;
    let mut total = name.chars().count() + chars(&part["description"]);
    let options = part["options"].as_array().map(Vec::as_slice).unwrap_or_default();
    if options.len() > 25 {
        return Err(Refusal::invalid(&format!("{at}.options"), "Must be 25 or fewer in length."));
    }
    let mut seen_optional = false;
    for (i, o) in options.iter().enumerate() {
        let at = format!("{at}.options.{i}");
        total += check_command_part(o, &at)?;
        let required = o["required"].as_bool().unwrap_or(false);
        if required && seen_optional {
            return Err(Refusal::invalid(&at, "Required options must be placed before non-required options"));
        }
        seen_optional |= !required && !matches!(o["type"].as_u64(), Some(1 | 2));
        let choices = o["choices"].as_array().map(Vec::as_slice).unwrap_or_default();
        if choices.len() > 25 {
            return Err(Refusal::invalid(&format!("{at}.choices"), "Must be 25 or fewer in length."));
        }
        for (j, c) in choices.iter().enumerate() {
            let n = chars(&c["name"]);
            if !(1..=100).contains(&n) {
                return Err(Refusal::invalid(
                    &format!("{at}.choices.{j}.name"),
                    "Must be between 1 and 100 in length.",
                ));
            }
            if chars(&c["value"]) > 100 {
                return Err(Refusal::invalid(
                    &format!("{at}.choices.{j}.value"),
                    "Must be 100 or fewer in length.",
                ));
            }
            total += n + chars(&c["value"]);
        }
    }
    Ok(total)
}

/// Checks a bulk registration (`PUT /applications/{app}/commands`) as Discord does.
pub fn check_commands(list: &[Value]) -> Result<(), Refusal> {
    if list.len() > 100 {
        return Err(Refusal::invalid("commands", "Must be 100 or fewer in length."));
    }
    let mut names = std::collections::HashSet::new();
    for (i, cmd) in list.iter().enumerate() {
        let at = i.to_string();
        // Only chat-input commands (type 1, the default) have descriptions and options.
        if cmd["type"].as_u64().unwrap_or(1) == 1 {
            if check_command_part(cmd, &at)? > 4000 {
                return Err(Refusal::invalid(&at, "Command exceeds maximum size (4000)"));
            }
        } else if !(1..=32).contains(&chars(&cmd["name"])) {
            return Err(Refusal::invalid(&format!("{at}.name"), "Must be between 1 and 32 in length."));
        }
        if !names.insert((cmd["type"].as_u64().unwrap_or(1), cmd["name"].as_str().unwrap_or(""))) {
            return Err(Refusal::invalid(&format!("{at}.name"), "Application command names must be unique"));
        }
    }
    Ok(())
}

/// Which messages `GET /channels/{id}/messages` returns, given its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The newest `limit` messages.
    Latest(usize),
    /// The `limit` messages right before the ID.
    Before(u64, usize),
    /// The `limit` messages right after the ID (still listed newest first).
    After(u64, usize),
    /// Up to `limit` messages centred on the ID, the message itself included.
    Around(u64, usize),
}

/// Reads the history query: `limit` 1–100 (default 50; out of range is a 400, not clamped),
/// and at most one of `before`, `after`, `around`.
pub fn history_window(
    limit: Option<i64>,
    before: Option<u64>,
    after: Option<u64>,
    around: Option<u64>,
) -> Result<Window, Refusal> {
    let limit = limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        let why = if limit < 1 {
            "int value must be greater than or equal to 1."
        } else {
            "int value must be less than or equal to 100."
        };
        return Err(Refusal::invalid("limit", why));
    }
    let limit = limit as usize;
    match (before, after, around) {
        (None, None, None) => Ok(Window::Latest(limit)),
        (Some(b), None, None) => Ok(Window::Before(b, limit)),
        (None, Some(a), None) => Ok(Window::After(a, limit)),
        (None, None, Some(c)) => Ok(Window::Around(c, limit)),
        _ => Err(Refusal::invalid("around", "before, after and around are mutually exclusive.")),
    }
}

impl Window {
    /// Applies the window to a channel's visible message IDs, oldest first; returns the chosen
    /// IDs newest first, as Discord lists them.
    pub fn select(self, ids: &[u64]) -> Vec<u64> {
        let mut chosen: Vec<u64> = match self {
            Window::Latest(n) => ids.iter().rev().take(n).copied().collect(),
            Window::Before(b, n) => ids.iter().rev().filter(|&&id| id < b).take(n).copied().collect(),
            Window::After(a, n) => ids.iter().filter(|&&id| id > a).take(n).copied().collect(),
            Window::Around(c, n) => {
                // Discord centres the window: about half before, the rest at and after.
                let older: Vec<u64> = ids.iter().rev().filter(|&&id| id < c).take(n / 2).copied().collect();
                let newer: Vec<u64> =
                    ids.iter().filter(|&&id| id >= c).take(n - older.len()).copied().collect();
                older.into_iter().chain(newer).collect()
            }
        };
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_bodies_follow_discords_limits() {
        assert!(check_message(&json!({ "content": "hi" }), &[]).is_ok());
        let long = "x".repeat(2001);
        assert_eq!(check_message(&json!({ "content": long }), &[]).unwrap_err().code, 50035);
        assert_eq!(check_message(&json!({ "content": "" }), &[]).unwrap_err().code, 50006);
        assert!(check_message(&json!({}), &[3]).is_ok(), "a file alone is a message");
        let big = check_message(&json!({ "content": "x" }), &[UPLOAD_LIMIT, 1]).unwrap_err();
        assert_eq!((big.status, big.code), (StatusCode::PAYLOAD_TOO_LARGE, 40005));
        let embed = json!({ "embeds": [{ "description": "d".repeat(4097) }] });
        assert!(check_message(&embed, &[]).unwrap_err().message.contains("embeds.0.description"));
    }

    fn command(description: &str) -> Value {
        json!({ "name": "llmstats", "description": description, "options": [
            { "type": 3, "name": "option", "description": "what", "required": false,
              "choices": [{ "name": "force", "value": "force" }] }
        ] })
    }

    #[test]
    fn registrations_follow_discords_limits() {
        assert!(check_commands(&[command("Show the stats")]).is_ok());
        let e = check_commands(&[command(&"d".repeat(101))]).unwrap_err();
        assert_eq!(e.code, 50035);
        assert!(e.message.contains("0.description"), "{}", e.message);
        assert!(check_commands(&[command("")]).is_err(), "chat-input commands need a description");
        let mut upper = command("ok");
        upper["name"] = json!("LLMStats");
        assert!(check_commands(&[upper]).is_err());
        let mut long = command("ok");
        long["name"] = json!("x".repeat(33));
        assert!(check_commands(&[long]).is_err());
        let mut option = command("ok");
        option["options"][0]["description"] = json!("o".repeat(101));
        assert!(check_commands(&[option]).unwrap_err().message.contains("0.options.0.description"));
        let mut many = command("ok");
        many["options"] = json!((0..26)
            .map(|i| json!({"type": 3, "name": format!("o{i}"), "description": "d"}))
            .collect::<Vec<_>>());
        assert!(check_commands(&[many]).is_err());
        let mut order = command("ok");
        order["options"] = json!([
            { "type": 3, "name": "a", "description": "d" },
            { "type": 3, "name": "b", "description": "d", "required": true },
        ]);
        assert!(check_commands(&[order]).is_err(), "required options come first");
        assert!(check_commands(&[command("ok"), command("ok")]).is_err(), "names are unique");
    }

    #[test]
    fn history_windows_are_discords() {
        assert!(history_window(Some(0), None, None, None).is_err(), "0 is refused, not clamped");
        assert!(history_window(Some(101), None, None, None).is_err());
        assert!(history_window(None, Some(1), Some(2), None).is_err());
        let ids: Vec<u64> = (1..=10).collect();
        let w = |l, b, a, c| history_window(Some(l), b, a, c).unwrap().select(&ids);
        assert_eq!(w(3, None, None, None), vec![10, 9, 8]);
        assert_eq!(w(3, Some(5), None, None), vec![4, 3, 2]);
        assert_eq!(w(3, None, Some(5), None), vec![8, 7, 6], "the messages right after, newest first");
        assert_eq!(w(4, None, None, Some(5)), vec![6, 5, 4, 3]);
        assert_eq!(history_window(None, None, None, None).unwrap(), Window::Latest(50));
    }
}
