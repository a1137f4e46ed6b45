//! What the bot may do in a channel, computed from the cache (roles, the channel's overwrites,
//! the bot's own member) the way Discord computes it, so the bot neither makes requests
//! Discord would refuse nor fails where a smaller answer would do.

use poise::serenity_prelude as serenity;

/// The bot's permissions in `channel` (a thread follows its parent channel); `None` when the
/// cache does not know the guild, the channel or the bot's member yet.
pub fn bot_in(
    ctx: &serenity::Context,
    guild: serenity::GuildId,
    channel: serenity::ChannelId,
) -> Option<serenity::Permissions> {
    let me = ctx.cache.current_user().id;
    let guild = ctx.cache.guild(guild)?;
    let member = guild.members.get(&me)?;
    let channel = match guild.channels.get(&channel) {
        Some(c) => c,
        None => {
            let thread = guild.threads.iter().find(|t| t.id == channel)?;
            guild.channels.get(&thread.parent_id?)?
        }
    };
    Some(guild.user_permissions_in(channel, member))
}

/// Whether the bot may post in `channel`: Send Messages, or Send Messages in Threads in a
/// thread (unknown counts as yes: Discord will say).
pub fn may_send(ctx: &serenity::Context, guild: serenity::GuildId, channel: serenity::ChannelId) -> bool {
    let Some(p) = bot_in(ctx, guild, channel) else { return true };
    let in_thread = ctx.cache.guild(guild).is_some_and(|g| g.threads.iter().any(|t| t.id == channel));
    if in_thread {
        p.send_messages_in_threads()
    } else {
        p.send_messages()
    }
}

/// Whether the bot can read `channel`'s history (unknown counts as yes: Discord will say).
pub fn reads_history(
    ctx: &serenity::Context,
    guild: serenity::GuildId,
    channel: serenity::ChannelId,
) -> bool {
    bot_in(ctx, guild, channel).is_none_or(|p| p.view_channel() && p.read_message_history())
}
