//! Who agreed to what, in memory for the hot path: which channels are collected (admins' choices
//! over the `MYNAH_COLLECT_CHANNELS` default) and which users opted out. The store persists
//! every change; this cache is rebuilt from it at start.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use serde::Serialize;

use crate::config::Collect;
use crate::store::ChannelSetting;

/// Where a channel's collection state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An admin's `llmchannel add|remove`.
    Admin,
    /// `MYNAH_COLLECT_CHANNELS`, nobody has decided otherwise.
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelState {
    pub channel_id: String,
    pub collected: bool,
    pub source: Source,
}

#[derive(Debug)]
pub struct Consent {
    default: Collect,
    /// (guild, channel) → collect, from admins' decisions.
    channels: RwLock<HashMap<(String, String), bool>>,
    opted_out: RwLock<HashSet<(String, String)>>,
    /// (guild, user) → messages written up to this time were forgotten on request.
    forgotten: RwLock<HashMap<(String, String), i64>>,
}

impl Consent {
    pub fn new(default: Collect, settings: Vec<ChannelSetting>, opted_out: Vec<(String, String)>) -> Consent {
        Consent {
            default,
            channels: RwLock::new(
                settings.into_iter().map(|s| ((s.guild_id, s.channel_id), s.collect)).collect(),
            ),
            opted_out: RwLock::new(opted_out.into_iter().collect()),
            forgotten: RwLock::new(HashMap::new()),
        }
    }

    /// Adds the users who asked to be forgotten (from the store at start, or just now).
    pub fn set_forgotten(&self, marks: impl IntoIterator<Item = ((String, String), i64)>) {
        write(&self.forgotten).extend(marks);
    }

    /// Whether a message written at `created_ms` by `user` was forgotten on their request.
    pub fn is_forgotten(&self, guild: &str, user: &str, created_ms: i64) -> bool {
        read(&self.forgotten).get(&(guild.to_string(), user.to_string())).is_some_and(|&t| created_ms <= t)
    }

    pub fn collects(&self, guild: &str, channel: &str) -> bool {
        self.state(guild, channel).collected
    }

    /// Whether a message in `channel` is collected: a thread follows the channel it belongs to
    /// (`parent`) unless an admin decided about the thread itself.
    pub fn collects_message(&self, guild: &str, channel: &str, parent: Option<&str>) -> bool {
        let state = self.state(guild, channel);
        match parent {
            Some(p) if state.source == Source::Default => self.collects(guild, p),
            _ => state.collected,
        }
    }

    pub fn state(&self, guild: &str, channel: &str) -> ChannelState {
        let decided = read(&self.channels).get(&(guild.to_string(), channel.to_string())).copied();
        match decided {
            Some(collected) => {
                ChannelState { channel_id: channel.to_string(), collected, source: Source::Admin }
            }
            None => ChannelState {
                channel_id: channel.to_string(),
                collected: self.default.includes(channel),
                source: Source::Default,
            },
        }
    }

    pub fn set_channel(&self, guild: &str, channel: &str, collect: bool) {
        write(&self.channels).insert((guild.to_string(), channel.to_string()), collect);
    }

    /// The collected channels among `known` (the guild's channels, as Discord says) plus any an
    /// admin opted in that Discord did not list.
    pub fn collected_channels(&self, guild: &str, known: &[String]) -> Vec<ChannelState> {
        let mut out: Vec<ChannelState> =
            known.iter().map(|c| self.state(guild, c)).filter(|s| s.collected).collect();
        for ((g, c), &on) in read(&self.channels).iter() {
            if g == guild && on && !known.contains(c) {
                out.push(ChannelState { channel_id: c.clone(), collected: true, source: Source::Admin });
            }
        }
        out.sort_by(|a, b| a.channel_id.cmp(&b.channel_id));
        out
    }

    /// A description of the default for people.
    pub fn describe_default(&self) -> String {
        self.default.describe()
    }

    pub fn is_opted_out(&self, guild: &str, user: &str) -> bool {
        read(&self.opted_out).contains(&(guild.to_string(), user.to_string()))
    }

    pub fn set_opted_out(&self, guild: &str, user: &str, out: bool) {
        let key = (guild.to_string(), user.to_string());
        let mut set = write(&self.opted_out);
        if out {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Replaces everything with what the store holds now (another process changed it).
    pub fn reload(
        &self,
        settings: Vec<ChannelSetting>,
        opted_out: Vec<(String, String)>,
        forgotten: Vec<((String, String), i64)>,
    ) {
        *write(&self.channels) =
            settings.into_iter().map(|s| ((s.guild_id, s.channel_id), s.collect)).collect();
        *write(&self.opted_out) = opted_out.into_iter().collect();
        *write(&self.forgotten) = forgotten.into_iter().collect();
    }

    /// Forgets the channel choices of a guild the bot left; who opted out or asked to be
    /// forgotten stays known, in case the bot is invited back.
    pub fn forget_guild(&self, guild: &str) {
        // Opt-outs and forget requests are kept, as the store keeps them.
        write(&self.channels).retain(|(g, _), _| g != guild);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(channel: &str, collect: bool) -> ChannelSetting {
        ChannelSetting {
            guild_id: "g".into(),
            channel_id: channel.into(),
            collect,
            changed_by: None,
            changed_ms: 0,
        }
    }

    #[test]
    fn admins_decisions_override_the_default() {
        let default = Collect::Channels(["1".to_string(), "2".to_string()].into());
        let c = Consent::new(default, vec![setting("2", false), setting("3", true)], vec![]);
        assert!(c.collects("g", "1"));
        assert!(!c.collects("g", "2"));
        assert!(c.collects("g", "3"));
        assert!(!c.collects("other", "3"), "decisions are per guild");
        assert_eq!(c.state("g", "1").source, Source::Default);
        let listed: Vec<String> =
            c.collected_channels("g", &["1".into(), "2".into()]).into_iter().map(|s| s.channel_id).collect();
        assert_eq!(listed, vec!["1", "3"]);
        c.set_channel("g", "1", false);
        assert!(!c.collects("g", "1"));
        assert!(c.collects_message("g", "thread", Some("3")), "threads follow their channel");
        c.set_channel("g", "thread", false);
        assert!(!c.collects_message("g", "thread", Some("3")), "unless decided otherwise");
        c.forget_guild("g");
        assert!(c.collects("g", "1"), "back to the default");
    }

    #[test]
    fn opt_outs_are_per_guild() {
        let c = Consent::new(Collect::All, vec![], vec![("g".into(), "u".into())]);
        assert!(c.is_opted_out("g", "u"));
        assert!(!c.is_opted_out("h", "u"));
        c.set_opted_out("g", "u", false);
        assert!(!c.is_opted_out("g", "u"));
    }
}
