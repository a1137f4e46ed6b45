//! Which gateway shards a process runs (`MYNAH_SHARDS=FIRST-LAST/TOTAL`) and so which guilds it
//! serves: Discord sends a guild's events to shard `(guild_id >> 22) % TOTAL`.

/// A contiguous range of shards out of a total; the default is the one shard of a small bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    pub first: u32,
    pub last: u32,
    pub total: u32,
}

impl Default for ShardRange {
    fn default() -> Self {
        ShardRange { first: 0, last: 0, total: 1 }
    }
}

/// Why a `MYNAH_SHARDS` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardError(String);

/// Discord's rule: the shard (of `total`) that a guild's events go to, `(guild_id >> 22) %
/// total`. The bot and the devserver, which plays Discord, both go by it.
pub fn shard_of_guild(guild_id: u64, total: u64) -> u64 {
    (guild_id >> 22) % total.max(1)
}

impl ShardRange {
    /// `FIRST-LAST/TOTAL` (e.g. `0-3/8`), or `N/TOTAL` for one shard.
    pub fn parse(text: &str) -> Result<ShardRange, ShardError> {
        let bad = |why: &str| ShardError(format!("{text:?}: {why}"));
        let (range, total) =
            text.split_once('/').ok_or_else(|| bad("expected FIRST-LAST/TOTAL, e.g. 0-3/8"))?;
        let number = |s: &str| s.trim().parse::<u32>().map_err(|_| bad("shard numbers are whole numbers"));
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(range)?, number(range)?),
        };
        let total = number(total)?;
        if total == 0 {
            return Err(bad("the total must be at least 1"));
        }
        if first > last || last >= total {
            return Err(bad("needs FIRST <= LAST < TOTAL (shards are numbered from 0)"));
        }
        Ok(ShardRange { first, last, total })
    }

    /// The shard Discord sends `guild_id`'s events to. An ID that is not a Discord snowflake
    /// (an imported corpus's own name) belongs to shard 0.
    pub fn shard_of(&self, guild_id: &str) -> u32 {
        match guild_id.parse::<u64>() {
            Ok(id) => shard_of_guild(id, u64::from(self.total)) as u32,
            Err(_) => 0,
        }
    }

    /// Whether this process serves `guild_id`.
    pub fn holds(&self, guild_id: &str) -> bool {
        (self.first..=self.last).contains(&self.shard_of(guild_id))
    }

    /// Whether this process runs every shard (the default).
    pub fn is_all(&self) -> bool {
        self.first == 0 && self.last + 1 == self.total
    }
}

impl std::fmt::Display for ShardRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}/{}", self.first, self.last, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_parse_and_are_checked() {
        assert_eq!(ShardRange::parse("0-3/8"), Ok(ShardRange { first: 0, last: 3, total: 8 }));
        assert_eq!(ShardRange::parse("1/2"), Ok(ShardRange { first: 1, last: 1, total: 2 }));
        for bad in ["", "3", "2-1/4", "0-4/4", "0/0", "a-b/c", "-1/2"] {
            assert!(ShardRange::parse(bad).is_err(), "{bad}");
        }
        assert!(ShardRange::default().is_all());
        assert!(!ShardRange::parse("1-1/2").unwrap().is_all());
    }

    #[test]
    fn a_guild_belongs_to_the_shard_discord_sends_it_to() {
        let two = ShardRange::parse("1-1/2").unwrap();
        assert_eq!(two.shard_of(&(1u64 << 22).to_string()), 1);
        assert_eq!(two.shard_of(&(2u64 << 22).to_string()), 0);
        assert!(two.holds(&(3u64 << 22).to_string()));
        assert!(!two.holds("playground"), "a name, not a snowflake: shard 0");
        assert!(ShardRange::default().holds("anything"));
    }
}
