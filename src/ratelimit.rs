//! Reply cool-downs: how often the bot answers mentions, per user and per channel, with a cap
//! per channel per minute. Mentions over the limits get no reply at all: an error message would
//! be the very spam the limits prevent.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The limits (env vars `MYNAH_USER_COOLDOWN_SECONDS`, `MYNAH_CHANNEL_COOLDOWN_SECONDS`,
/// `MYNAH_CHANNEL_REPLIES_PER_MINUTE`); zero switches a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub user_cooldown: Duration,
    pub channel_cooldown: Duration,
    pub channel_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            user_cooldown: Duration::from_secs(5),
            channel_cooldown: Duration::from_secs(2),
            channel_per_minute: 10,
        }
    }
}

impl Limits {
    pub fn off() -> Limits {
        Limits { user_cooldown: Duration::ZERO, channel_cooldown: Duration::ZERO, channel_per_minute: 0 }
    }
}

/// Why a mention gets no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limited {
    UserCooldown,
    ChannelCooldown,
    ChannelCap,
}

#[derive(Debug, Default)]
struct State {
    users: HashMap<(String, String), Instant>,
    channels: HashMap<String, VecDeque<Instant>>,
}

#[derive(Debug)]
pub struct Limiter {
    limits: Limits,
    state: Mutex<State>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter { limits, state: Mutex::new(State::default()) }
    }

    /// Admits a reply to `user` in `channel` at `now` and counts it, or says which limit
    /// refuses it (and then counts nothing, so ignored mentions do not extend a cool-down).
    pub fn admit(&self, channel: &str, user: &str, now: Instant) -> Result<(), Limited> {
        let l = &self.limits;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let key = (channel.to_string(), user.to_string());
        if let Some(&last) = s.users.get(&key) {
            if now.saturating_duration_since(last) < l.user_cooldown {
                return Err(Limited::UserCooldown);
            }
        }
        let recent = s.channels.entry(channel.to_string()).or_default();
        while recent.front().is_some_and(|&t| now.saturating_duration_since(t) >= MINUTE) {
            recent.pop_front();
        }
        if recent.back().is_some_and(|&t| now.saturating_duration_since(t) < l.channel_cooldown) {
            return Err(Limited::ChannelCooldown);
        }
        if l.channel_per_minute > 0 && recent.len() >= l.channel_per_minute as usize {
            return Err(Limited::ChannelCap);
        }
        recent.push_back(now);
        s.users.insert(key, now);
        // Forget users whose cool-down is long over, so the map stays small.
        if s.users.len() > 10_000 {
            let keep = l.user_cooldown;
            s.users.retain(|_, &mut t| now.saturating_duration_since(t) < keep);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> Limiter {
        Limiter::new(Limits {
            user_cooldown: Duration::from_secs(5),
            channel_cooldown: Duration::from_secs(1),
            channel_per_minute: 3,
        })
    }

    #[test]
    fn each_limit_applies_in_its_own_situation() {
        let l = limiter();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.admit("c", "ann", at(0)), Ok(()));
        assert_eq!(l.admit("c", "ann", at(2)), Err(Limited::UserCooldown));
        assert_eq!(l.admit("c", "bob", at(0)), Err(Limited::ChannelCooldown));
        assert_eq!(l.admit("d", "bob", at(0)), Ok(()), "other channels are not affected");
        assert_eq!(l.admit("c", "bob", at(2)), Ok(()));
        assert_eq!(l.admit("c", "cid", at(4)), Ok(()));
        assert_eq!(l.admit("c", "dan", at(6)), Err(Limited::ChannelCap));
        assert_eq!(l.admit("c", "dan", at(61)), Ok(()), "the cap counts the last minute only");
    }

    #[test]
    fn refused_mentions_do_not_extend_the_cool_down() {
        let l = limiter();
        let t0 = Instant::now();
        assert!(l.admit("c", "ann", t0).is_ok());
        assert!(l.admit("c", "ann", t0 + Duration::from_secs(4)).is_err());
        assert!(l.admit("c", "ann", t0 + Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn zero_limits_admit_everything() {
        let l = Limiter::new(Limits::off());
        let t = Instant::now();
        for _ in 0..100 {
            assert!(l.admit("c", "u", t).is_ok());
        }
    }
}
