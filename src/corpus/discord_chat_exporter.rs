//! DiscordChatExporter's JSON exports (Tyrrrz/DiscordChatExporter: one file per channel or
//! thread) read as corpus records: which messages are chat, who wrote them under which name, and
//! which channel a thread belongs to.
//!
//! The export's shape, as its `JsonMessageWriter` writes it: `guild {id, name}`, `channel {id,
//! type, categoryId, category, name, topic}` (for a thread, `categoryId` and `category` name its
//! parent channel), `messages [{id, type, timestamp, timestampEdited, isPinned, content, author
//! {id, name, nickname, isBot, …}, attachments, embeds, stickers, reference, …}]`, `messageCount`.
//! Timestamps are ISO 8601 with an offset (`2020-01-01T12:00:00.123+00:00`) and are kept as
//! written.

use serde::Deserialize;

use super::input::{Format, Malformed, Parsed, Skipped};
use super::Record;

/// Why a whole export could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("not a valid DiscordChatExporter JSON export: {0}")]
    Json(String),
    #[error("the export's {0} has no id")]
    NoId(&'static str),
    /// DiscordChatExporter writes guild id 0 for direct messages and group DMs.
    #[error("a direct-message export belongs to no server: say which guild it is for with --guild ID")]
    DirectMessages,
}

#[derive(Deserialize)]
struct Export {
    guild: Guild,
    channel: Channel,
    messages: Vec<Entry>,
}

#[derive(Deserialize)]
struct Guild {
    id: String,
}

#[derive(Deserialize)]
struct Channel {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    /// The category of a channel, or the parent channel of a thread.
    #[serde(rename = "categoryId", default)]
    category_id: Option<String>,
    #[serde(default)]
    name: String,
}

/// A message, or whatever stood in its place when it is not one.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Message(Message),
    Other(serde_json::Value),
}

#[derive(Deserialize)]
struct Message {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    #[serde(default)]
    content: Option<String>,
    author: Author,
}

#[derive(Deserialize)]
struct Author {
    id: String,
    #[serde(default)]
    name: String,
    /// The member's display name in the guild; the exporter falls back to the user's.
    #[serde(default)]
    nickname: Option<String>,
    #[serde(rename = "isBot", default)]
    is_bot: bool,
}

/// Message types that are people talking; every other type is one of Discord's notices.
const CHAT_TYPES: [&str; 2] = ["Default", "Reply"];

/// Reads one export; `guild` overrides its guild.
pub fn parse(text: &str, guild: Option<&str>) -> Result<Parsed, ExportError> {
    let text = text.trim_start_matches('\u{feff}');
    let export: Export = serde_json::from_str(text).map_err(|e| ExportError::Json(e.to_string()))?;
    let guild_id = match guild {
        Some(g) => g.to_string(),
        None => export.guild.id,
    };
    if guild_id.trim().is_empty() {
        return Err(ExportError::NoId("guild"));
    }
    if guild_id.trim() == "0" {
        return Err(ExportError::DirectMessages);
    }
    let channel = export.channel;
    if channel.id.trim().is_empty() {
        return Err(ExportError::NoId("channel"));
    }
    let parent = if channel.kind.ends_with("Thread") {
        channel.category_id.filter(|p| !p.trim().is_empty())
    } else {
        None
    };
    let mut parsed = Parsed {
        format: Format::DiscordChatExporter,
        records: Vec::with_capacity(export.messages.len()),
        skipped: Skipped::default(),
        malformed: Vec::new(),
    };
    for (n, entry) in export.messages.into_iter().enumerate() {
        let m = match entry {
            Entry::Message(m) => m,
            Entry::Other(value) => {
                parsed.malformed.push(malformed_entry(n + 1, value));
                continue;
            }
        };
        if !CHAT_TYPES.contains(&m.kind.as_str()) {
            parsed.skipped.system += 1;
            continue;
        }
        if m.author.is_bot {
            parsed.skipped.bots += 1;
            continue;
        }
        let content = m.content.unwrap_or_default();
        if content.trim().is_empty() {
            parsed.skipped.empty += 1;
            continue;
        }
        let author = match m.author.nickname {
            Some(nick) if !nick.trim().is_empty() => nick,
            _ => m.author.name,
        };
        let record = Record {
            id: m.id,
            guild_id: guild_id.clone(),
            channel_id: channel.id.clone(),
            channel: channel.name.clone(),
            author_id: m.author.id,
            author,
            content,
            timestamp: m.timestamp,
            parent_channel_id: parent.clone(),
        };
        match record.validate() {
            Ok(()) => parsed.records.push(record),
            Err(e) => parsed.malformed.push(Malformed {
                at: format!("message {} (id {})", n + 1, record.id),
                error: e.to_string(),
            }),
        }
    }
    Ok(parsed)
}

/// Why the `n`th entry of `messages` is not a message, as precisely as serde can say.
fn malformed_entry(n: usize, value: serde_json::Value) -> Malformed {
    let at = match value.get("id").and_then(serde_json::Value::as_str) {
        Some(id) => format!("message {n} (id {id})"),
        None => format!("message {n}"),
    };
    let error = match serde_json::from_value::<Message>(value) {
        Err(e) => e.to_string(),
        Ok(_) => "not a message".to_string(),
    };
    Malformed { at, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(channel: &str, messages: &[&str]) -> String {
        format!(
            r#"{{
  "guild": {{ "id": "100", "name": "Test", "iconUrl": "x.png" }},
  "channel": {channel},
  "dateRange": {{ "after": null, "before": null }},
  "exportedAt": "2024-03-02T00:00:00+00:00",
  "messages": [{}],
  "messageCount": {}
}}"#,
            messages.join(",\n"),
            messages.len()
        )
    }

    const GENERAL: &str = r#"{ "id": "200", "type": "GuildTextChat", "categoryId": "900", "category": "Text Channels", "name": "general", "topic": null }"#;
    const THREAD: &str = r#"{ "id": "201", "type": "GuildPublicThread", "categoryId": "200", "category": "general", "name": "plans", "topic": null }"#;

    fn message(id: &str, kind: &str, content: &str, author: &str) -> String {
        format!(
            r#"{{ "id": "{id}", "type": "{kind}", "timestamp": "2024-03-01T09:00:00.123+01:00", "timestampEdited": null,
  "callEndedTimestamp": null, "isPinned": false, "content": "{content}", "author": {author},
  "attachments": [], "embeds": [], "stickers": [], "reactions": [], "mentions": [], "inlineEmojis": [] }}"#
        )
    }

    const ANN: &str = r#"{ "id": "1", "name": "ann", "discriminator": "0000", "nickname": "Annie", "color": null, "isBot": false, "roles": [], "avatarUrl": "a.png" }"#;
    const BEN: &str =
        r#"{ "id": "2", "name": "ben", "discriminator": "0000", "nickname": "", "isBot": false }"#;
    const BOT: &str =
        r#"{ "id": "3", "name": "helper", "discriminator": "1234", "nickname": "Helper", "isBot": true }"#;

    #[test]
    fn chat_messages_become_records_under_the_members_display_name() {
        let text = export(
            GENERAL,
            &[&message("10", "Default", "hello there", ANN), &message("11", "Reply", "hi", BEN)],
        );
        let parsed = parse(&text, None).unwrap();
        assert_eq!(parsed.format, Format::DiscordChatExporter);
        assert_eq!(parsed.records.len(), 2);
        let r = &parsed.records[0];
        assert_eq!(
            (r.id.as_str(), r.guild_id.as_str(), r.channel_id.as_str(), r.channel.as_str()),
            ("10", "100", "200", "general")
        );
        assert_eq!(
            (r.author_id.as_str(), r.author.as_str(), r.content.as_str()),
            ("1", "Annie", "hello there")
        );
        assert_eq!(r.timestamp, "2024-03-01T09:00:00.123+01:00");
        assert_eq!(r.created_ms().unwrap(), 1709280000123);
        assert_eq!(r.parent_channel_id, None);
        assert_eq!(parsed.records[1].author, "ben", "an empty nickname falls back to the name");
        assert!(parsed.malformed.is_empty() && parsed.skipped == Skipped::default());
    }

    #[test]
    fn a_threads_messages_name_the_parent_channel() {
        let parsed = parse(&export(THREAD, &[&message("10", "Default", "in a thread", ANN)]), None).unwrap();
        let r = &parsed.records[0];
        assert_eq!((r.channel_id.as_str(), r.channel.as_str()), ("201", "plans"));
        assert_eq!(r.parent_channel_id.as_deref(), Some("200"));
    }

    #[test]
    fn bots_notices_and_messages_without_text_are_counted_not_stored() {
        let text = export(
            GENERAL,
            &[
                &message("10", "Default", "from a bot", BOT),
                &message("11", "ChannelPinnedMessage", "Pinned a message.", ANN),
                &message("12", "GuildMemberJoin", "Joined the server.", BEN),
                &message("13", "ThreadCreated", "plans", ANN),
                &message("14", "Default", "", ANN),
                &message("15", "Default", "  ", BEN),
                &message("16", "Default", "kept", BEN),
            ],
        );
        let parsed = parse(&text, None).unwrap();
        assert_eq!(parsed.skipped, Skipped { bots: 1, system: 3, empty: 2 });
        let ids: Vec<&str> = parsed.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["16"]);
    }

    #[test]
    fn a_null_content_counts_as_empty() {
        let m = message("10", "Default", "x", ANN).replace(r#""content": "x""#, r#""content": null"#);
        let parsed = parse(&export(GENERAL, &[&m]), None).unwrap();
        assert_eq!(parsed.skipped.empty, 1);
    }

    #[test]
    fn a_bad_message_is_reported_and_the_others_are_kept() {
        let no_author = r#"{ "id": "12", "type": "Default", "timestamp": "2024-03-01T09:00:00+00:00", "content": "who?" }"#;
        let bad_time =
            message("13", "Default", "when?", BEN).replace("2024-03-01T09:00:00.123+01:00", "yesterday");
        let text = export(GENERAL, &[&message("10", "Default", "fine", ANN), no_author, "42", &bad_time]);
        let parsed = parse(&text, None).unwrap();
        assert_eq!(parsed.records.len(), 1);
        let at: Vec<&str> = parsed.malformed.iter().map(|m| m.at.as_str()).collect();
        assert_eq!(at, ["message 2 (id 12)", "message 3", "message 4 (id 13)"]);
        assert!(parsed.malformed[0].error.contains("author"), "{:?}", parsed.malformed[0]);
        assert!(parsed.malformed[2].error.contains("RFC 3339"), "{:?}", parsed.malformed[2]);
    }

    #[test]
    fn seven_digit_fractions_and_utc_offsets_are_read() {
        let m = message("10", "Default", "x", ANN)
            .replace("2024-03-01T09:00:00.123+01:00", "2024-03-01T08:00:00.1234567+00:00");
        let parsed = parse(&export(GENERAL, &[&m]), None).unwrap();
        assert_eq!(parsed.records[0].created_ms().unwrap(), 1709280000123);
    }

    #[test]
    fn the_guild_can_be_overridden() {
        let parsed = parse(&export(GENERAL, &[&message("10", "Default", "x", ANN)]), Some("42")).unwrap();
        assert_eq!(parsed.records[0].guild_id, "42");
        // A direct-message export (guild 0) needs one.
        let dm =
            export(GENERAL, &[&message("10", "Default", "x", ANN)]).replace(r#""id": "100""#, r#""id": "0""#);
        assert_eq!(parse(&dm, None).unwrap_err(), ExportError::DirectMessages);
        assert_eq!(parse(&dm, Some("42")).unwrap().records[0].guild_id, "42");
    }

    #[test]
    fn a_broken_export_is_one_clear_error() {
        let text = export(GENERAL, &[&message("10", "Default", "x", ANN)]);
        let truncated = &text[..text.len() / 2];
        let err = parse(truncated, None).unwrap_err();
        assert!(matches!(&err, ExportError::Json(e) if e.contains("EOF")), "{err}");
        let err = parse(r#"{ "guild": { "id": "1" }, "channel": { "id": "2" } }"#, None).unwrap_err();
        assert!(err.to_string().contains("messages"), "{err}");
        let err = parse(&text.replace(r#""id": "200""#, r#""id": """#), None).unwrap_err();
        assert_eq!(err, ExportError::NoId("channel"));
    }
}
