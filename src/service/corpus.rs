//! The corpus: messages seen on Discord stored under the collection rules, imports (JSONL and
//! DiscordChatExporter exports) and exports, and the bookkeeping of how far each channel's
//! history was read back.

use super::{Core, Incoming, Ingested, ServiceError};
use crate::corpus::input::{Format, Malformed, Parsed, Skipped};
use crate::corpus::Record;
use crate::store::Store;

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub format: Format,
    pub imported: u64,
    /// Malformed lines (or export messages) skipped.
    pub skipped: u64,
    /// The first of them, with where they are and their errors.
    pub malformed: Vec<Malformed>,
    /// Read correctly but not chat: bots' messages, Discord's notices, messages without text.
    pub left_out: Skipped,
    pub already_present: u64,
    pub opted_out: u64,
}

impl Core {
    /// Applies the collection rules to a message seen on Discord and stores it, scrubbed, if
    /// they allow.
    pub async fn ingest(&self, m: &Incoming) -> Result<Ingested, ServiceError> {
        let r = &m.record;
        let outcome = if m.author_is_bot {
            Ingested::FromBot
        } else if m.is_command {
            Ingested::Command
        } else if r.content.trim().is_empty() {
            Ingested::Empty
        } else if !self.consent.collects_message(&r.guild_id, &r.channel_id, r.parent_channel_id.as_deref()) {
            Ingested::NotCollected
        } else if self.consent.is_opted_out(&r.guild_id, &r.author_id)
            || self.consent.is_forgotten(&r.guild_id, &r.author_id, r.created_ms().unwrap_or(i64::MAX))
        {
            Ingested::OptedOut
        } else if self.deleted.contains(&r.guild_id, &r.channel_id, &r.id) {
            Ingested::Deleted
        } else {
            let clean = self.scrubbed(r);
            if !self.store.insert_message(&clean).await? {
                Ingested::Duplicate
            } else if self.deleted.contains(&r.guild_id, &r.channel_id, &r.id) {
                // Deleted on Discord while it was being stored: the deletion's purge may have
                // run before the insert, so purge it again.
                self.store.purge_messages(&r.guild_id, std::slice::from_ref(&r.id)).await?;
                Ingested::Deleted
            } else {
                self.learn(&clean);
                Ingested::Stored
            }
        };
        crate::metrics::ingested(outcome);
        Ok(outcome)
    }

    /// The record as it may be stored: scrubbed unless scrubbing is off.
    pub fn scrubbed(&self, r: &Record) -> Record {
        if !self.config.scrub {
            return r.clone();
        }
        Record { content: crate::scrub::scrub(&r.content).into_owned(), ..r.clone() }
    }

    /// Parses a JSONL text and stores its good lines, scrubbed unless scrubbing is off; see
    /// [`import_jsonl`].
    pub async fn import_jsonl(
        &self,
        text: &str,
        guild: Option<&str>,
        strict: bool,
    ) -> Result<ImportSummary, ServiceError> {
        import_jsonl(&self.store, text, guild, strict, self.config.scrub).await
    }

    /// Stores an input of either format (told apart by content), scrubbed unless scrubbing is
    /// off; see [`import_text`].
    pub async fn import_text(
        &self,
        text: &str,
        guild: Option<&str>,
        strict: bool,
    ) -> Result<ImportSummary, ServiceError> {
        import_text(&self.store, text, guild, strict, self.config.scrub).await
    }

    /// Stored messages, of one guild or all, oldest first.
    pub async fn export(&self, guild_id: Option<&str>) -> Result<Vec<Record>, ServiceError> {
        self.corpus_records(guild_id).await
    }

    /// The guild's corpus as JSONL lines, oldest first (for training on another machine).
    pub async fn corpus_jsonl(&self, guild_id: &str) -> Result<Vec<String>, ServiceError> {
        Ok(self.export(Some(guild_id)).await?.iter().map(Record::to_line).collect())
    }

    /// Whether messages of `channel` (a thread of `parent`, maybe) are collected.
    pub fn collects(&self, guild: &str, channel: &str, parent: Option<&str>) -> bool {
        self.consent.collects_message(guild, channel, parent)
    }

    /// The newest message ID of the channel read back so far, if it ever was.
    pub async fn synced_through(&self, guild: &str, channel: &str) -> Result<Option<u64>, ServiceError> {
        Ok(self.store.synced_through(guild, channel).await?)
    }

    /// Records that the channel's history was read back through message `id`.
    pub async fn set_synced_through(&self, guild: &str, channel: &str, id: u64) -> Result<(), ServiceError> {
        Ok(self.store.set_synced_through(guild, channel, id).await?)
    }
}

/// Malformed lines listed in an import's report, at most.
const MALFORMED_SHOWN: usize = 20;

/// Parses a JSONL text and stores its good lines (scrubbed when `scrub`); with `strict`, any
/// malformed line means nothing is stored. Opted-out and forgotten authors' lines are left out
/// by the store itself.
pub async fn import_jsonl(
    store: &Store,
    text: &str,
    guild: Option<&str>,
    strict: bool,
    scrub: bool,
) -> Result<ImportSummary, ServiceError> {
    store_parsed(store, crate::corpus::input::parse_jsonl(text, guild), strict, scrub).await
}

/// Like [`import_jsonl`] for an input of either format: JSONL, or a DiscordChatExporter JSON
/// export, whose bots' messages, Discord notices and messages without text are counted and left
/// out. An export that cannot be read at all is a [`ServiceError::BadRequest`] and stores nothing.
pub async fn import_text(
    store: &Store,
    text: &str,
    guild: Option<&str>,
    strict: bool,
    scrub: bool,
) -> Result<ImportSummary, ServiceError> {
    let parsed =
        crate::corpus::input::parse(text, guild).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
    store_parsed(store, parsed, strict, scrub).await
}

/// Stores what an input held, in one transaction; with `strict`, nothing if any of it was
/// malformed.
async fn store_parsed(
    store: &Store,
    parsed: Parsed,
    strict: bool,
    scrub: bool,
) -> Result<ImportSummary, ServiceError> {
    let Parsed { format, mut records, skipped: left_out, malformed: bad } = parsed;
    let skipped = bad.len() as u64;
    let malformed: Vec<Malformed> = bad.into_iter().take(MALFORMED_SHOWN).collect();
    if strict && skipped > 0 {
        let listed: Vec<String> = malformed.iter().map(|m| format!("{}: {}", m.at, m.error)).collect();
        let what = match format {
            Format::Jsonl => "line(s)",
            Format::DiscordChatExporter => "message(s)",
        };
        return Err(ServiceError::BadRequest(format!(
            "{skipped} malformed {what}; strict: nothing was imported\n{}",
            listed.join("\n")
        )));
    }
    if scrub {
        for r in &mut records {
            if let std::borrow::Cow::Owned(clean) = crate::scrub::scrub(&r.content) {
                r.content = clean;
            }
        }
    }
    let done = store.insert_many(&records).await?;
    Ok(ImportSummary {
        format,
        imported: done.inserted,
        skipped,
        malformed,
        left_out,
        already_present: done.already_present,
        opted_out: done.opted_out,
    })
}
