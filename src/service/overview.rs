//! What the status page and a metrics scrape read at the moment they are served: the database's
//! size, the serving models and their age, each guild's channels, and guilds' names.

use super::{run_name, Core, ServiceError};
use crate::store::ChannelSummary;

/// The figures a metrics scrape reads from the service (see [`crate::metrics`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub database_bytes: u64,
    /// The models serving now.
    pub models: Vec<ScrapedModel>,
}

/// A serving model and how long ago it was trained.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapedModel {
    pub guild_id: String,
    pub run: String,
    /// Seconds since it was trained (0 if its training time cannot be read).
    pub age_seconds: f64,
}

impl Core {
    /// The figures of a metrics scrape, read now.
    pub async fn scrape(&self) -> Result<Scrape, ServiceError> {
        let now = chrono::Utc::now();
        let models = self
            .serving
            .all()
            .into_iter()
            .map(|(guild_id, m)| {
                let age_seconds = chrono::DateTime::parse_from_rfc3339(&m.meta.trained_at)
                    .map(|t| (now - t.with_timezone(&chrono::Utc)).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                ScrapedModel { guild_id, run: run_name(&m), age_seconds }
            })
            .collect();
        Ok(Scrape { database_bytes: self.store.database_bytes().await?, models })
    }

    /// Remembers a guild's name as Discord gives it (at each connection, and when it changes).
    pub fn guild_seen(&self, guild_id: &str, name: &str) {
        let mut names = self.guild_names.write().unwrap_or_else(|p| p.into_inner());
        names.insert(guild_id.to_string(), name.to_string());
    }

    /// A guild's name, if Discord gave it since the start.
    pub fn guild_name(&self, guild_id: &str) -> Option<String> {
        self.guild_names.read().unwrap_or_else(|p| p.into_inner()).get(guild_id).cloned()
    }

    /// The guild's channels with stored messages (names as Discord last gave them), busiest first.
    pub async fn channel_summaries(&self, guild_id: &str) -> Result<Vec<ChannelSummary>, ServiceError> {
        Ok(self.store.channel_summaries(guild_id).await?)
    }
}
