//! The corpus interchange format: JSONL, one chat message per line, exactly the shape of
//! `shared/corpus/*.jsonl`:
//! `{"id","guild_id","channel_id","channel","author_id","author","content","timestamp"}`, plus
//! `parent_channel_id` for messages in threads. Its submodules read other inputs into the same
//! records: [`discord_chat_exporter`] reads DiscordChatExporter's JSON exports, and [`input`]
//! tells the formats apart by content and accounts for what was left out.

pub mod discord_chat_exporter;
pub mod input;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One message as it travels in JSONL. Field order is the format's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub guild_id: String,
    pub channel_id: String,
    #[serde(default)]
    pub channel: String,
    pub author_id: String,
    pub author: String,
    pub content: String,
    /// RFC 3339, kept exactly as received so export reproduces it.
    pub timestamp: String,
    /// For a message in a thread: the channel the thread belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_channel_id: Option<String>,
}

/// Why one line could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("not a JSON message object: {0}")]
    Json(String),
    #[error("field `{0}` is empty")]
    Empty(&'static str),
    #[error("timestamp {0:?} is not RFC 3339")]
    Timestamp(String),
}

impl Record {
    /// Parses and validates one JSONL line. `guild` overrides the line's own guild.
    pub fn parse_line(line: &str, guild: Option<&str>) -> Result<Record, LineError> {
        let mut record: Record = serde_json::from_str(line).map_err(|e| LineError::Json(e.to_string()))?;
        if let Some(g) = guild {
            record.guild_id = g.to_string();
        }
        record.validate()?;
        Ok(record)
    }

    pub fn validate(&self) -> Result<(), LineError> {
        let required = [
            ("id", &self.id),
            ("guild_id", &self.guild_id),
            ("channel_id", &self.channel_id),
            ("author_id", &self.author_id),
            ("author", &self.author),
            ("content", &self.content),
        ];
        for (name, value) in required {
            if value.trim().is_empty() {
                return Err(LineError::Empty(name));
            }
        }
        self.created_ms()?;
        Ok(())
    }

    /// The timestamp as Unix milliseconds, used for ordering and time windows.
    pub fn created_ms(&self) -> Result<i64, LineError> {
        parse_timestamp_ms(&self.timestamp)
    }

    /// The message as the engine sees it.
    pub fn chat_line(&self) -> crate::engine::tokenizer::ChatLine {
        crate::engine::tokenizer::ChatLine {
            channel: self.channel_id.clone(),
            author: self.author.clone(),
            content: self.content.clone(),
            time_ms: self.created_ms().unwrap_or(0),
        }
    }

    pub fn to_line(&self) -> String {
        // Serializing a struct of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

pub fn parse_timestamp_ms(ts: &str) -> Result<i64, LineError> {
    DateTime::parse_from_rfc3339(ts)
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
        .map_err(|_| LineError::Timestamp(ts.to_string()))
}

/// A line that was skipped, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    pub line: usize,
    pub error: String,
}

/// Parses a whole JSONL text: good records and the bad lines (blank lines are ignored).
pub fn parse_all(text: &str, guild: Option<&str>) -> (Vec<Record>, Vec<BadLine>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Record::parse_line(line, guild) {
            Ok(r) => good.push(r),
            Err(e) => bad.push(BadLine { line: n + 1, error: e.to_string() }),
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id": "55949c27a3aa0fa2043cd518", "guild_id": "fcc-city", "channel_id": "559399cb15522ed4b3e326b2", "channel": "Seattle", "author_id": "5586531515522ed4b3e2399f", "author": "briguy75", "content": "Woo hoo", "timestamp": "2015-07-02T02:04:23.899Z"}"#;

    #[test]
    fn a_corpus_line_round_trips() {
        let r = Record::parse_line(LINE, None).unwrap();
        assert_eq!(r.author, "briguy75");
        assert_eq!(r.created_ms().unwrap(), 1435802663899);
        let again = Record::parse_line(&r.to_line(), None).unwrap();
        assert_eq!(r, again);
    }

    #[test]
    fn the_guild_can_be_overridden() {
        let r = Record::parse_line(LINE, Some("42")).unwrap();
        assert_eq!(r.guild_id, "42");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let text = format!(
            "{LINE}\nnot json\n\n{}\n{}\n",
            LINE.replace("Woo hoo", ""),
            LINE.replace("2015-07-02T02:04:23.899Z", "yesterday")
        );
        let (good, bad) = parse_all(&text, None);
        assert_eq!(good.len(), 1);
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 4, 5]);
        assert!(bad[1].error.contains("content"));
        assert!(bad[2].error.contains("RFC 3339"));
    }
}
