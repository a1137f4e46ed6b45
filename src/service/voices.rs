//! Each serving model's voice (its guild's count model, vocabulary and copy index): built from
//! the store when a model starts serving, taught every message stored since, and rebuilt from
//! the store whenever messages are removed, so what was removed leaves the counts.

use std::sync::Arc;

use super::{Core, ServiceError};
use crate::corpus::Record;
use crate::engine::voice::{Said, Voice};

impl Core {
    /// Builds the guild's voice from its stored messages, for the model serving it now.
    pub async fn build_voice(&self, guild: &str) -> Result<(), ServiceError> {
        let Some(model) = self.serving.get(guild) else { return Ok(()) };
        // Taken before reading the store: a build that read it earlier cannot win over this one.
        let ticket = self.serving.voice_ticket(guild);
        let records = self.corpus_records(Some(guild)).await?;
        let for_model = model.clone();
        let built = tokio::task::spawn_blocking(move || {
            Voice::build(&for_model.tokenizer, for_model.meta.mixer.as_deref(), records.iter().map(said))
        })
        .await;
        match built {
            Ok(Ok(voice)) => {
                if !self.serving.set_voice(guild, &model, ticket, voice) {
                    tracing::debug!(guild, "a newer model or a newer build supersedes this voice");
                }
            }
            Ok(Err(e)) => tracing::warn!(guild, error = %e, "could not build the guild's voice"),
            Err(e) => tracing::error!(guild, error = %e, "building the guild's voice panicked"),
        }
        Ok(())
    }

    /// Builds the voice of every serving guild from the store, one after the other. Processes
    /// that answer mentions call it after opening the core (one-shot commands have no use for
    /// voices); replies meanwhile use the network alone.
    pub async fn build_voices(&self) {
        for (guild, _) in self.serving.all() {
            if let Err(e) = self.build_voice(&guild).await {
                tracing::warn!(guild = %guild, error = %e, "could not build the guild's voice");
            }
        }
    }

    /// [`Core::build_voices`] in the background.
    pub fn build_voices_later(self: &Arc<Self>) {
        let core = self.clone();
        tokio::spawn(async move { core.build_voices().await });
    }

    /// Whether the guild's voice holds a run of 8 words of `text` (`None` while it has none):
    /// what replies are kept from copying, and what must be gone once a message is removed.
    pub fn voice_holds(&self, guild: &str, text: &str) -> Option<bool> {
        let voice = self.serving.voice(guild)?;
        let voice = voice.read().unwrap_or_else(|p| p.into_inner());
        let words = crate::engine::words::words(text);
        Some(words.windows(crate::engine::words::COPY_RUN).any(|w| voice.copies.contains_run(w)))
    }

    /// Teaches a just-stored message to its guild's voice.
    pub(super) fn learn(&self, r: &Record) {
        let (Some(model), Some(voice)) = (self.serving.get(&r.guild_id), self.serving.voice(&r.guild_id))
        else {
            return;
        };
        let mut voice = voice.write().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = voice.add(&model.tokenizer, said(r)) {
            tracing::debug!(error = %e, "a stored message could not be taught to the voice");
        }
    }
}

fn said(r: &Record) -> Said<'_> {
    Said { id: Said::key(&r.id), author: &r.author, content: &r.content }
}
