//! One input file of either corpus format (JSONL or a DiscordChatExporter JSON export), told
//! apart by its content and read into records, with an account of every message left out and why.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::discord_chat_exporter::{self, ExportError};
use super::Record;

/// The formats an import understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// mynah's own format: one [`Record`] a line.
    Jsonl,
    /// One channel or thread exported by DiscordChatExporter as JSON.
    DiscordChatExporter,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "JSONL",
            Format::DiscordChatExporter => "DiscordChatExporter JSON",
        }
    }
}

/// Messages that were read correctly but are not chat to learn from, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Written by a bot.
    pub bots: u64,
    /// Discord's own notices: pins, joins, thread creations, calls…
    pub system: u64,
    /// No text: attachments, stickers or embeds only.
    pub empty: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.bots + self.system + self.empty
    }

    pub fn add(&mut self, other: &Skipped) {
        self.bots += other.bots;
        self.system += other.system;
        self.empty += other.empty;
    }
}

/// A message that could not be read, with where it is (`line 4`, `message 12 (id …)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Malformed {
    pub at: String,
    pub error: String,
}

/// What one input held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub format: Format,
    pub records: Vec<Record>,
    pub skipped: Skipped,
    pub malformed: Vec<Malformed>,
}

/// Tells the formats apart by content. A JSON document (pretty-printed, as DiscordChatExporter
/// writes it, or one object with a `messages` array on a single line) is an export; anything
/// else is read as JSONL, whose malformed lines are then reported one by one.
pub fn detect(text: &str) -> Format {
    let text = text.trim_start_matches('\u{feff}');
    let Some(first) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Format::Jsonl;
    };
    // A JSONL record is a whole object on its line and has no `guild` key (it has `guild_id`).
    let squeezed: String = first.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed == "{" || squeezed.starts_with("{\"guild\":") {
        return Format::DiscordChatExporter;
    }
    #[derive(Deserialize)]
    struct Probe {
        messages: Option<IgnoredAny>,
    }
    match serde_json::from_str::<Probe>(first) {
        Ok(Probe { messages: Some(_) }) => Format::DiscordChatExporter,
        _ => Format::Jsonl,
    }
}

/// Reads one input of either format; `guild` overrides the guild of every message. An error
/// means the whole input is unusable (an export that is not valid JSON); single bad messages
/// are listed in [`Parsed::malformed`] instead.
pub fn parse(text: &str, guild: Option<&str>) -> Result<Parsed, ExportError> {
    match detect(text) {
        Format::DiscordChatExporter => discord_chat_exporter::parse(text, guild),
        Format::Jsonl => Ok(parse_jsonl(text, guild)),
    }
}

/// Reads a JSONL input; its malformed lines are listed by number.
pub fn parse_jsonl(text: &str, guild: Option<&str>) -> Parsed {
    let (records, bad) = super::parse_all(text, guild);
    let malformed =
        bad.into_iter().map(|b| Malformed { at: format!("line {}", b.line), error: b.error }).collect();
    Parsed { format: Format::Jsonl, records, skipped: Skipped::default(), malformed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id": "1", "guild_id": "g", "channel_id": "c", "channel": "general", "author_id": "a", "author": "ann", "content": "hi", "timestamp": "2024-01-01T00:00:00Z"}"#;

    #[test]
    fn jsonl_is_told_from_an_export_by_content() {
        assert_eq!(detect(LINE), Format::Jsonl);
        assert_eq!(detect(&format!("\n\n{LINE}\n{LINE}\n")), Format::Jsonl);
        assert_eq!(detect("not json at all\n"), Format::Jsonl);
        assert_eq!(detect(""), Format::Jsonl);
        assert_eq!(detect("{\n  \"guild\": {\n"), Format::DiscordChatExporter);
        assert_eq!(detect("\u{feff}{\n"), Format::DiscordChatExporter);
        assert_eq!(detect(r#"{ "guild": { "id": "1","#), Format::DiscordChatExporter);
        let minified = r#"{"channel":{"id":"2"},"messages":[],"guild":{"id":"1"}}"#;
        assert_eq!(detect(minified), Format::DiscordChatExporter);
    }

    #[test]
    fn a_jsonl_record_starting_with_its_channel_stays_jsonl() {
        let line = r#"{"channel": "general", "id": "1", "guild_id": "g", "channel_id": "c", "author_id": "a", "author": "ann", "content": "hi", "timestamp": "2024-01-01T00:00:00Z"}"#;
        assert_eq!(detect(line), Format::Jsonl);
        let parsed = parse(line, None).unwrap();
        assert_eq!(parsed.records.len(), 1);
    }

    #[test]
    fn jsonl_problems_are_reported_by_line() {
        let parsed = parse(&format!("{LINE}\nnope\n"), Some("g2")).unwrap();
        assert_eq!(parsed.format, Format::Jsonl);
        assert_eq!(parsed.records[0].guild_id, "g2");
        assert_eq!(parsed.malformed.len(), 1);
        assert_eq!(parsed.malformed[0].at, "line 2");
        assert_eq!(parsed.skipped, Skipped::default());
    }
}
