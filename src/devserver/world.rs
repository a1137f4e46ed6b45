//! The devserver's state: users, guilds with roles and members, channels and the message log.
//! Plain data with small helpers; the server and the test API lock it briefly.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How many requests the devserver remembers.
pub const REQUESTS_KEPT: usize = 10_000;

/// Discord's epoch (2015-01-01) in Unix ms, for snowflakes that carry a real timestamp.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub bot: bool,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub id: u64,
    pub name: String,
    pub permissions: u64,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub user_id: u64,
    pub roles: Vec<u64>,
}

#[derive(Debug, Clone)]
pub struct Guild {
    pub id: u64,
    pub name: String,
    pub owner_id: u64,
    pub roles: Vec<Role>,
    pub members: Vec<Member>,
}

/// A channel's permission overwrite for a role (`kind` 0; the guild's ID is @everyone) or a
/// member (`kind` 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overwrite {
    pub id: u64,
    pub kind: u8,
    pub allow: u64,
    pub deny: u64,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: u64,
    /// 0 for direct messages.
    pub guild_id: u64,
    pub name: String,
    /// The other user of a direct-message channel.
    pub recipient: Option<u64>,
    /// For a thread: the channel it belongs to.
    pub parent_id: Option<u64>,
    /// Threads have none: they follow their channel's.
    pub overwrites: Vec<Overwrite>,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    pub author_id: u64,
    pub content: String,
    pub timestamp: String,
    pub edited_timestamp: Option<String>,
    pub mentions: Vec<u64>,
    pub reference: Option<u64>,
    pub attachments: Vec<Value>,
    /// Posted through a webhook (whose ID this is) rather than by a user.
    pub webhook_id: Option<u64>,
    pub deleted: bool,
    /// For messages the bot posted: the JSON body it sent (allowed_mentions and all).
    pub request: Option<Value>,
    /// For the bot's answers to a slash command: the interaction's ID.
    pub interaction: Option<u64>,
    /// Only the invoking user sees it (an ephemeral interaction response).
    pub ephemeral: bool,
    /// Emoji the bot reacted with, in order.
    pub reactions: Vec<String>,
    /// Discord's message type: 0 chat, 19 a reply, anything else a system message (18 thread
    /// created, 6 pin, 7 join, 8 boost, 20 a slash command's answer, …).
    pub kind: u8,
}

/// Where an interaction's answer stands, as Discord tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Not acknowledged yet: an initial response is due within the deadline.
    Pending,
    /// Acknowledged with type 5 ("thinking…"); the first follow-up becomes the answer and keeps
    /// this visibility whatever its own flags say.
    Deferred { ephemeral: bool },
    /// The initial response was posted (or the deferred one filled in).
    Answered,
}

/// A slash command a user invoked, waiting for or holding the bot's answer.
#[derive(Debug, Clone)]
pub struct Interaction {
    pub id: u64,
    pub token: String,
    pub guild_id: u64,
    pub channel_id: u64,
    pub user_id: u64,
    pub created: Instant,
    pub answer: Answer,
}

/// A request the devserver refused as Discord would: the route, the HTTP status and Discord's
/// error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub route: String,
    pub status: u16,
    pub code: u64,
    pub message: String,
}

#[derive(Debug)]
pub struct World {
    pub token: String,
    pub bot: User,
    pub application_id: u64,
    pub users: BTreeMap<u64, User>,
    pub guilds: Vec<Guild>,
    /// Guilds the bot was removed from, kept whole (channels, members, history) for a re-invite.
    pub left_guilds: Vec<Guild>,
    pub channels: Vec<Channel>,
    pub messages: Vec<Msg>,
    /// The channel of every typing indicator the bot sent.
    pub typing: Vec<u64>,
    pub unknown_routes: Vec<String>,
    pub commands: Vec<Value>,
    pub interactions: Vec<Interaction>,
    /// How long after INTERACTION_CREATE an initial response is accepted (Discord: 3 s).
    pub interaction_deadline: Duration,
    /// Every request answered with an error status, oldest first.
    pub rejections: Vec<Rejection>,
    /// The latest requests the bot made (`METHOD /path`), oldest first, at most [`REQUESTS_KEPT`].
    pub requests: std::collections::VecDeque<String>,
    /// Users whose DMs are closed to the bot (posting there answers 50007).
    pub closed_dms: HashSet<u64>,
    /// Set: the next command registration is refused with this reason (a rule Discord added
    /// that the bot's own check does not know yet).
    pub refuse_registration: Option<String>,
    /// Routes (`METHOD /path`) answered 429 for their next `n` calls, with this retry delay.
    pub rate_limits: std::collections::HashMap<String, (usize, Duration)>,
    /// Channels where the bot's next typing indicator deletes the newest member message.
    pub delete_on_typing: HashSet<u64>,
    /// How far this server's clock is from the host's, in ms (message times and snowflakes):
    /// Discord's clock is not the bot host's.
    pub clock_offset_ms: i64,
    last_id: u64,
}

impl World {
    pub fn new(token: &str) -> World {
        let mut w = World {
            token: token.to_string(),
            bot: User { id: 0, name: "mynah".into(), bot: true },
            application_id: 0,
            users: BTreeMap::new(),
            guilds: Vec::new(),
            left_guilds: Vec::new(),
            channels: Vec::new(),
            messages: Vec::new(),
            typing: Vec::new(),
            unknown_routes: Vec::new(),
            commands: Vec::new(),
            interactions: Vec::new(),
            interaction_deadline: Duration::from_secs(3),
            rejections: Vec::new(),
            requests: std::collections::VecDeque::new(),
            closed_dms: HashSet::new(),
            delete_on_typing: HashSet::new(),
            rate_limits: std::collections::HashMap::new(),
            refuse_registration: None,
            clock_offset_ms: 0,
            last_id: 0,
        };
        w.application_id = w.snowflake();
        let bot = w.create_user("mynah", true);
        w.bot = w.users[&bot].clone();
        w
    }

    /// Now on this server's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms)
    }

    /// Now on this server's clock, as Discord writes message times.
    pub fn now_rfc3339(&self) -> String {
        self.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// A fresh, strictly increasing snowflake whose timestamp part is now.
    pub fn snowflake(&mut self) -> u64 {
        let now = self.now().timestamp_millis().max(0) as u64;
        let id = (now.saturating_sub(DISCORD_EPOCH_MS) << 22).max(self.last_id + 1);
        self.last_id = id;
        id
    }

    pub fn create_user(&mut self, name: &str, bot: bool) -> u64 {
        let id = self.snowflake();
        self.users.insert(id, User { id, name: name.to_string(), bot });
        id
    }

    /// A guild the bot is in. `id` 0 picks
    /// a fresh snowflake; a fixed one lets the playground keep its guild across runs.
    pub fn create_guild(&mut self, name: &str, id: u64) -> u64 {
        let id = if id == 0 { self.snowflake() } else { id };
        // The server's owner is someone else; the bot has what @everyone has, as a bot invited
        // without extra permissions.
        let owner = self.create_user(&format!("{name}'s owner"), false);
        let bot = self.bot.id;
        self.guilds.push(Guild {
            id,
            name: name.to_string(),
            owner_id: owner,
            roles: Vec::new(),
            members: vec![
                Member { user_id: bot, roles: Vec::new() },
                Member { user_id: owner, roles: Vec::new() },
            ],
        });
        id
    }

    pub fn create_channel(&mut self, guild_id: u64, name: &str, id: u64) -> u64 {
        let id = if id == 0 { self.snowflake() } else { id };
        self.channels.push(Channel {
            id,
            guild_id,
            name: name.to_string(),
            recipient: None,
            parent_id: None,
            overwrites: Vec::new(),
        });
        id
    }

    /// A public thread in `parent_id`.
    pub fn create_thread(&mut self, parent_id: u64, name: &str) -> Option<u64> {
        let guild_id = self.channel(parent_id)?.guild_id;
        let id = self.snowflake();
        self.channels.push(Channel {
            id,
            guild_id,
            name: name.to_string(),
            recipient: None,
            parent_id: Some(parent_id),
            overwrites: Vec::new(),
        });
        Some(id)
    }

    /// The bot's direct-message channel with `user_id`, opened on first use.
    pub fn dm_channel(&mut self, user_id: u64) -> u64 {
        if let Some(c) = self.channels.iter().find(|c| c.recipient == Some(user_id)) {
            return c.id;
        }
        let id = self.snowflake();
        self.channels.push(Channel {
            id,
            guild_id: 0,
            name: String::new(),
            recipient: Some(user_id),
            parent_id: None,
            overwrites: Vec::new(),
        });
        id
    }

    /// Adds `user_id` to the guild; non-zero `permissions` come through a role of their own.
    pub fn add_member(&mut self, guild_id: u64, user_id: u64, permissions: u64) {
        let role_id = (permissions != 0).then(|| self.snowflake());
        let name = self.users.get(&user_id).map(|u| u.name.clone()).unwrap_or_default();
        if let Some(g) = self.guilds.iter_mut().find(|g| g.id == guild_id) {
            if let Some(role) = role_id {
                g.roles.push(Role { id: role, name: format!("{name}'s role"), permissions });
            }
            g.members.retain(|m| m.user_id != user_id);
            g.members.push(Member { user_id, roles: role_id.into_iter().collect() });
        }
    }

    pub fn guild(&self, id: u64) -> Option<&Guild> {
        self.guilds.iter().find(|g| g.id == id)
    }

    pub fn channel(&self, id: u64) -> Option<&Channel> {
        self.channels.iter().find(|c| c.id == id)
    }

    /// The guild's channels, threads left out (Discord lists those apart).
    pub fn channels_of(&self, guild_id: u64) -> impl Iterator<Item = &Channel> {
        self.channels.iter().filter(move |c| c.guild_id == guild_id && c.parent_id.is_none())
    }

    pub fn threads_of(&self, guild_id: u64) -> impl Iterator<Item = &Channel> {
        self.channels.iter().filter(move |c| c.guild_id == guild_id && c.parent_id.is_some())
    }

    /// A member's permissions in the guild: everyone's, their roles', everything for the owner.
    pub fn permissions(&self, guild_id: u64, user_id: u64) -> u64 {
        let Some(g) = self.guild(guild_id) else { return 0 };
        if g.owner_id == user_id {
            return u64::MAX >> 1;
        }
        let roles = self.member(guild_id, user_id).map(|m| m.roles.clone()).unwrap_or_default();
        g.roles.iter().filter(|r| roles.contains(&r.id)).fold(super::json::EVERYONE, |p, r| p | r.permissions)
    }

    /// A user's permissions in a channel, computed as Discord does: the guild's, then the
    /// channel's overwrites for @everyone, for the user's roles, for the user; nothing at all
    /// without VIEW_CHANNEL. Threads follow their channel; direct messages allow everything.
    pub fn permissions_in(&self, channel_id: u64, user_id: u64) -> u64 {
        use super::json::{ADMINISTRATOR, VIEW_CHANNEL};
        let all = u64::MAX >> 1;
        let Some(c) = self.channel(channel_id) else { return 0 };
        if c.recipient.is_some() {
            return all;
        }
        let c = c.parent_id.and_then(|p| self.channel(p)).unwrap_or(c);
        let Some(g) = self.guild(c.guild_id) else { return 0 };
        let mut p = self.permissions(g.id, user_id);
        if g.owner_id == user_id || p & ADMINISTRATOR != 0 {
            return all;
        }
        let roles = self.member(g.id, user_id).map(|m| m.roles.clone()).unwrap_or_default();
        let apply = |p: u64, allow: u64, deny: u64| (p & !deny) | allow;
        if let Some(o) = c.overwrites.iter().find(|o| o.kind == 0 && o.id == g.id) {
            p = apply(p, o.allow, o.deny);
        }
        let (allow, deny) = c
            .overwrites
            .iter()
            .filter(|o| o.kind == 0 && roles.contains(&o.id))
            .fold((0, 0), |(a, d), o| (a | o.allow, d | o.deny));
        p = apply(p, allow, deny);
        if let Some(o) = c.overwrites.iter().find(|o| o.kind == 1 && o.id == user_id) {
            p = apply(p, o.allow, o.deny);
        }
        if p & VIEW_CHANNEL == 0 {
            return 0;
        }
        p
    }

    pub fn member(&self, guild_id: u64, user_id: u64) -> Option<&Member> {
        self.guild(guild_id)?.members.iter().find(|m| m.user_id == user_id)
    }

    pub fn message(&self, id: u64) -> Option<&Msg> {
        self.messages.iter().find(|m| m.id == id)
    }

    pub fn message_mut(&mut self, id: u64) -> Option<&mut Msg> {
        self.messages.iter_mut().find(|m| m.id == id)
    }

    /// Appends a message by `author_id`; `<@id>` tokens naming known users become mentions.
    pub fn post(&mut self, channel_id: u64, author_id: u64, content: String, reference: Option<u64>) -> &Msg {
        let id = self.snowflake();
        let guild_id = self.channel(channel_id).filter(|c| c.recipient.is_none()).map(|c| c.guild_id);
        let mentions = mentioned_ids(&content).into_iter().filter(|u| self.users.contains_key(u)).collect();
        self.messages.push(Msg {
            id,
            channel_id,
            guild_id,
            author_id,
            content,
            timestamp: self.now_rfc3339(),
            edited_timestamp: None,
            mentions,
            reference,
            attachments: Vec::new(),
            webhook_id: None,
            deleted: false,
            request: None,
            interaction: None,
            ephemeral: false,
            reactions: Vec::new(),
            kind: if reference.is_some() { 19 } else { 0 },
        });
        &self.messages[self.messages.len() - 1]
    }
}

/// The user IDs in `<@123>` and `<@!123>` tokens, in order, without duplicates.
pub fn mentioned_ids(content: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for part in content.split("<@").skip(1) {
        let part = part.strip_prefix('!').unwrap_or(part);
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if part[digits.len()..].starts_with('>') {
            if let Ok(id) = digits.parse::<u64>() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_increase_strictly() {
        let mut w = World::new("t");
        let a = w.snowflake();
        let b = w.snowflake();
        assert!(b > a);
    }

    #[test]
    fn mentions_are_found_in_content() {
        assert_eq!(mentioned_ids("<@1> hi <@!22> <@&3> <@1> <@x>"), vec![1, 22]);
    }
}
