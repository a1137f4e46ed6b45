//! What Discord deleted lately (messages and channels), so a history page read before the
//! deletion and stored after it cannot bring the deleted text back.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a deletion is remembered: far longer than a history page takes to store.
const REMEMBER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Gone {
    Message { guild: String, id: String },
    Channel { guild: String, channel: String },
}

#[derive(Debug, Default)]
struct Remembered {
    set: HashSet<Gone>,
    /// The same, oldest first, to forget them in order.
    order: VecDeque<(Instant, Gone)>,
}

/// Recently deleted messages and channels, forgotten after [`REMEMBER`].
#[derive(Debug, Default)]
pub struct Deleted {
    inner: Mutex<Remembered>,
}

impl Deleted {
    fn add(&self, gone: Gone) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Remembered { set, order } = &mut *inner;
        while order.front().is_some_and(|(at, _)| at.elapsed() > REMEMBER) {
            if let Some((_, old)) = order.pop_front() {
                set.remove(&old);
            }
        }
        if set.insert(gone.clone()) {
            order.push_back((Instant::now(), gone));
        }
    }

    pub fn messages(&self, guild: &str, ids: &[String]) {
        for id in ids {
            self.add(Gone::Message { guild: guild.to_string(), id: id.clone() });
        }
    }

    pub fn channel(&self, guild: &str, channel: &str) {
        self.add(Gone::Channel { guild: guild.to_string(), channel: channel.to_string() });
    }

    /// Whether the message, or the channel it was in, was deleted lately.
    pub fn contains(&self, guild: &str, channel: &str, id: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Every ingested message asks: no keys to build when nothing was deleted lately.
        if inner.set.is_empty() {
            return false;
        }
        let (guild, channel, id) = (guild.to_string(), channel.to_string(), id.to_string());
        inner.set.contains(&Gone::Message { guild: guild.clone(), id })
            || inner.set.contains(&Gone::Channel { guild, channel })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_messages_and_channels_are_remembered() {
        let d = Deleted::default();
        d.messages("g", &["1".into()]);
        d.channel("g", "c2");
        assert!(d.contains("g", "c1", "1"));
        assert!(!d.contains("h", "c1", "1"), "per guild");
        assert!(d.contains("g", "c2", "9"), "anything of a deleted channel");
        assert!(!d.contains("g", "c1", "2"));
    }
}
