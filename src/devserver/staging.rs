//! The devserver's controls for Discord's rules, for tests: interaction deadlines, permission
//! overwrites, closed DMs, rate limits, refused registrations, system messages, deletions while
//! the bot types, and the record of what the bot was refused.

use std::time::Duration;

use super::{json, world, DevServer, Rejection};

impl DevServer {
    /// Sets a channel's permission overwrite for a user or a role (the guild's ID is
    /// @everyone), announced with CHANNEL_UPDATE as Discord does; `allow` and `deny` are
    /// permission bits such as [`READ_MESSAGE_HISTORY`].
    pub fn set_overwrite(&self, channel_id: u64, target_id: u64, allow: u64, deny: u64) {
        let mut w = self.shared.world();
        let kind = if w.users.contains_key(&target_id) { 1 } else { 0 };
        let Some(pos) = w.channels.iter().position(|c| c.id == channel_id) else { return };
        let c = &mut w.channels[pos];
        c.overwrites.retain(|o| o.id != target_id);
        c.overwrites.push(world::Overwrite { id: target_id, kind, allow, deny });
        let guild = c.guild_id;
        let position = w.channels_of(guild).position(|c| c.id == channel_id).unwrap_or(0);
        let data = json::channel(&w.channels[pos], position);
        self.shared.dispatch("CHANNEL_UPDATE", data);
    }

    /// How long the bot has to acknowledge an interaction (Discord: 3 s, the default).
    pub fn set_interaction_deadline(&self, deadline: Duration) {
        self.shared.world().interaction_deadline = deadline;
    }

    /// Every request the devserver refused (status 4xx or 5xx), oldest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.world().rejections.clone()
    }

    /// Answers the next `times` calls of `route` (`"POST /api/v10/channels/1/messages"`) with
    /// 429 and a `retry_after` of `wait`, as Discord's rate limits do.
    pub fn rate_limit(&self, route: &str, times: usize, wait: Duration) {
        self.shared.world().rate_limits.insert(route.to_string(), (times, wait));
    }

    /// Refuses the next slash-command registration with 400 50035 and `why`, as Discord does
    /// when it enforces a rule the bot's own check does not know.
    pub fn refuse_next_registration(&self, why: &str) {
        self.shared.world().refuse_registration = Some(why.to_string());
    }

    /// The latest requests the bot made, as `METHOD /path`, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.world().requests.iter().cloned().collect()
    }

    /// `user_id` does not accept direct messages from the bot: posting there answers 50007.
    pub fn close_dms(&self, user_id: u64) {
        self.shared.world().closed_dms.insert(user_id);
    }

    /// The next time the bot starts typing in `channel_id`, the newest message a member wrote
    /// there is deleted: a member deleting their mention while the bot writes its answer.
    pub fn delete_when_typing(&self, channel_id: u64) {
        self.shared.world().delete_on_typing.insert(channel_id);
    }

    /// A system message of Discord type `kind` (18 thread created, 6 pin, 7 join, 8 boost, 4
    /// channel renamed, …) by `user_id`; `content` as Discord fills it (the thread's name, the
    /// channel's new name, often empty).
    pub fn system_message(&self, channel_id: u64, user_id: u64, kind: u8, content: &str) -> u64 {
        let mut w = self.shared.world();
        let id = w.post(channel_id, user_id, content.to_string(), None).id;
        let Some(m) = w.message_mut(id) else { return id };
        m.kind = kind;
        let m = m.clone();
        self.shared.dispatch("MESSAGE_CREATE", json::message(&w, &m));
        id
    }
}
