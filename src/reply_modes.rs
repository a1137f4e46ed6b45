//! Where mynah speaks: each channel's reply mode (answer mentions, also join in now and then, or
//! stay quiet) cached for the hot path, and the draw that decides whether a message nobody
//! addressed to mynah gets an answer. The store persists every change; this cache is rebuilt from
//! it at start.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use serde::Serialize;

/// The chance of joining in when an admin says `sometimes` without a number.
pub const DEFAULT_PERCENT: u8 = 2;

/// How mynah answers in one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ReplyMode {
    /// Answers mentions only (the default).
    #[default]
    Mention,
    /// Answers mentions, and a message nobody addressed to it with this chance in percent.
    Sometimes { percent: u8 },
    /// Never answers here (messages are still collected if the channel is).
    Off,
}

/// Why a reply mode cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("the chance must be a whole number of percent from 1 to 100 (got {0}); use off to never answer")]
    Percent(i64),
    #[error("unknown reply mode {0:?}: use mention, sometimes or off")]
    Unknown(String),
}

impl ReplyMode {
    /// `sometimes` with a chance checked to be 1–100 %.
    pub fn sometimes(percent: i64) -> Result<ReplyMode, ModeError> {
        match u8::try_from(percent) {
            Ok(p @ 1..=100) => Ok(ReplyMode::Sometimes { percent: p }),
            _ => Err(ModeError::Percent(percent)),
        }
    }

    /// The stored form: the mode's name and, for `sometimes`, the chance.
    pub fn to_parts(self) -> (&'static str, Option<i64>) {
        match self {
            ReplyMode::Mention => ("mention", None),
            ReplyMode::Sometimes { percent } => ("sometimes", Some(i64::from(percent))),
            ReplyMode::Off => ("off", None),
        }
    }

    /// The mode a stored row names.
    pub fn from_parts(mode: &str, percent: Option<i64>) -> Result<ReplyMode, ModeError> {
        match mode {
            "mention" => Ok(ReplyMode::Mention),
            "sometimes" => ReplyMode::sometimes(percent.unwrap_or(i64::from(DEFAULT_PERCENT))),
            "off" => Ok(ReplyMode::Off),
            other => Err(ModeError::Unknown(other.to_string())),
        }
    }
}

impl std::fmt::Display for ReplyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyMode::Mention => f.write_str("answers mentions"),
            ReplyMode::Sometimes { percent } => {
                write!(f, "answers mentions and joins in on {percent}% of other messages")
            }
            ReplyMode::Off => f.write_str("never answers"),
        }
    }
}

/// An admin's choice for one channel, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelReply {
    pub guild_id: String,
    pub channel_id: String,
    pub mode: ReplyMode,
}

#[derive(Debug, Default)]
pub struct ReplyModes {
    /// (guild, channel) → the admins' choice; channels without one answer mentions.
    modes: RwLock<HashMap<(String, String), ReplyMode>>,
    /// Channels whose latest member message drew an unprompted answer: the next one gets none,
    /// so mynah never joins in twice in a row.
    answered_last: Mutex<HashSet<String>>,
}

impl ReplyModes {
    pub fn new(rows: Vec<ChannelReply>) -> ReplyModes {
        ReplyModes {
            modes: RwLock::new(rows.into_iter().map(|r| ((r.guild_id, r.channel_id), r.mode)).collect()),
            answered_last: Mutex::default(),
        }
    }

    /// The mode of `channel`; a thread without a choice of its own follows its channel
    /// (`parent`).
    pub fn mode(&self, guild: &str, channel: &str, parent: Option<&str>) -> ReplyMode {
        let modes = self.modes.read().unwrap_or_else(|p| p.into_inner());
        let own = modes.get(&(guild.to_string(), channel.to_string()));
        let inherited = || parent.and_then(|p| modes.get(&(guild.to_string(), p.to_string())));
        own.or_else(inherited).copied().unwrap_or_default()
    }

    pub fn set(&self, guild: &str, channel: &str, mode: ReplyMode) {
        let mut modes = self.modes.write().unwrap_or_else(|p| p.into_inner());
        let key = (guild.to_string(), channel.to_string());
        match mode {
            ReplyMode::Mention => modes.remove(&key),
            other => modes.insert(key, other),
        };
    }

    /// The channels of `guild` with a choice other than the default, by channel ID.
    pub fn of_guild(&self, guild: &str) -> Vec<(String, ReplyMode)> {
        let modes = self.modes.read().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<(String, ReplyMode)> =
            modes.iter().filter(|((g, _), _)| g == guild).map(|((_, c), m)| (c.clone(), *m)).collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Replaces every choice with what the store holds now (another process changed it).
    pub fn reload(&self, rows: Vec<ChannelReply>) {
        *self.modes.write().unwrap_or_else(|p| p.into_inner()) =
            rows.into_iter().map(|r| ((r.guild_id, r.channel_id), r.mode)).collect();
    }

    pub fn forget_guild(&self, guild: &str) {
        self.modes.write().unwrap_or_else(|p| p.into_inner()).retain(|(g, _), _| g != guild);
    }

    /// Whether a member message in `channel` that does not mention mynah draws an answer under
    /// `mode`, given `roll` uniform in [0, 1). The message after one that drew an answer never
    /// does: the mark is taken with the draw, so messages handled at the same time cannot both
    /// win (if the drawn answer is not sent after all, the next message merely sits out).
    pub fn draw(&self, channel: &str, mode: ReplyMode, roll: f64) -> bool {
        let ReplyMode::Sometimes { percent } = mode else { return false };
        let mut answered = self.answered_last.lock().unwrap_or_else(|p| p.into_inner());
        if answered.remove(channel) {
            return false;
        }
        let wins = roll * 100.0 < f64::from(percent);
        if wins {
            answered.insert(channel.to_string());
        }
        wins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(channel: &str, mode: ReplyMode) -> ChannelReply {
        ChannelReply { guild_id: "g".into(), channel_id: channel.into(), mode }
    }

    #[test]
    fn channels_answer_mentions_unless_an_admin_chose_otherwise() {
        let modes = ReplyModes::new(vec![row("quiet", ReplyMode::Off)]);
        assert_eq!(modes.mode("g", "general", None), ReplyMode::Mention);
        assert_eq!(modes.mode("g", "quiet", None), ReplyMode::Off);
        assert_eq!(modes.mode("other", "quiet", None), ReplyMode::Mention);
        // A thread follows its channel unless it has a choice of its own.
        assert_eq!(modes.mode("g", "thread", Some("quiet")), ReplyMode::Off);
        modes.set("g", "thread", ReplyMode::Sometimes { percent: 5 });
        assert_eq!(modes.mode("g", "thread", Some("quiet")), ReplyMode::Sometimes { percent: 5 });
        modes.set("g", "quiet", ReplyMode::Mention);
        assert_eq!(modes.of_guild("g"), vec![("thread".to_string(), ReplyMode::Sometimes { percent: 5 })]);
        modes.forget_guild("g");
        assert!(modes.of_guild("g").is_empty());
    }

    #[test]
    fn the_chance_is_a_whole_percentage_from_1_to_100() {
        assert_eq!(ReplyMode::sometimes(2), Ok(ReplyMode::Sometimes { percent: 2 }));
        assert_eq!(ReplyMode::sometimes(100), Ok(ReplyMode::Sometimes { percent: 100 }));
        assert_eq!(ReplyMode::sometimes(0), Err(ModeError::Percent(0)));
        assert_eq!(ReplyMode::sometimes(101), Err(ModeError::Percent(101)));
        for mode in [ReplyMode::Mention, ReplyMode::Off, ReplyMode::Sometimes { percent: 7 }] {
            let (name, percent) = mode.to_parts();
            assert_eq!(ReplyMode::from_parts(name, percent), Ok(mode));
        }
        assert!(ReplyMode::from_parts("loud", None).is_err());
    }

    #[test]
    fn mynah_joins_in_by_chance_and_never_twice_in_a_row() {
        let modes = ReplyModes::default();
        let sometimes = ReplyMode::Sometimes { percent: 10 };
        assert!(!modes.draw("c", ReplyMode::Mention, 0.0));
        assert!(!modes.draw("c", ReplyMode::Off, 0.0));
        assert!(!modes.draw("c", sometimes, 0.10));
        assert!(modes.draw("c", sometimes, 0.099));
        // Even a certain draw is refused right after an answer; another channel is not affected.
        assert!(!modes.draw("c", ReplyMode::Sometimes { percent: 100 }, 0.0));
        assert!(modes.draw("d", sometimes, 0.0));
        assert!(modes.draw("c", sometimes, 0.0));
    }
}
