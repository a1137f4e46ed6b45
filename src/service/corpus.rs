//! The corpus: messages seen on Discord stored under the collection rules, JSONL imports and
//! exports, and the bookkeeping of how far each channel's history was read back.

use super::{Core, Incoming, Ingested, ServiceError};
use crate::corpus::Record;
use crate::store::Store;

/// What a JSONL import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportSummary {
    pub imported: u64,
    /// Malformed lines skipped.
    pub skipped: u64,
    /// The first of them, with their line numbers and errors.
    pub malformed: Vec<(usize, String)>,
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
    let (mut records, bad) = crate::corpus::parse_all(text, guild);
    let malformed: Vec<(usize, String)> =
        bad.iter().take(MALFORMED_SHOWN).map(|b| (b.line, b.error.clone())).collect();
    if strict && !bad.is_empty() {
        let listed: Vec<String> = malformed.iter().map(|(n, e)| format!("line {n}: {e}")).collect();
        return Err(ServiceError::BadRequest(format!(
            "{} malformed line(s); strict: nothing was imported\n{}",
            bad.len(),
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
        imported: done.inserted,
        skipped: bad.len() as u64,
        malformed,
        already_present: done.already_present,
        opted_out: done.opted_out,
    })
}
