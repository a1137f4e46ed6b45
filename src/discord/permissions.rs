//! What the bot may do in a channel, computed from the cache (roles, the channel's overwrites,
//! the bot's own member) the way Discord computes it, so the bot neither makes requests
//! Discord would refuse nor fails where a smaller answer would do.

use poise::serenity_prelude as serenity;

/// The bot's permissions in one channel, and whether that channel is a thread.
#[derive(Debug, Clone, Copy)]
pub struct InChannel {
    pub permissions: serenity::Permissions,
    pub thread: bool,
}

impl InChannel {
    /// Send Messages, or Send Messages in Threads in a thread.
    pub fn may_send(&self) -> bool {
        if self.thread {
            self.permissions.send_messages_in_threads()
        } else {
            self.permissions.send_messages()
        }
    }

    pub fn reads_history(&self) -> bool {
        self.permissions.view_channel() && self.permissions.read_message_history()
    }
}

/// The bot's permissions in `channel` (a thread follows its parent channel); `None` when the
/// cache does not know the guild, the channel or the bot's member yet (then Discord will say).
pub fn bot_in(
    ctx: &serenity::Context,
    guild: serenity::GuildId,
    channel: serenity::ChannelId,
) -> Option<InChannel> {
    let me = ctx.cache.current_user().id;
    let guild = ctx.cache.guild(guild)?;
    let member = guild.members.get(&me)?;
    let (channel, thread) = match guild.channels.get(&channel) {
        Some(c) => (c, false),
        None => {
            let thread = guild.threads.iter().find(|t| t.id == channel)?;
            (guild.channels.get(&thread.parent_id?)?, true)
        }
    };
    Some(InChannel { permissions: guild.user_permissions_in(channel, member), thread })
}
