//! What a Discord message is to mynah, the same for live messages and history read back: a
//! corpus record, chat or a command invocation, in a channel that carries chat or not.

use poise::serenity_prelude as serenity;

use super::{Data, Error};
use crate::corpus::Record;

/// Tells commands from chat, the same way for live messages and history.
#[derive(Debug, Clone)]
pub struct Filter {
    prefix: String,
    commands: Vec<String>,
}

impl Filter {
    pub fn new(options: &poise::FrameworkOptions<Data, Error>, prefix: &str) -> Filter {
        let commands = options
            .commands
            .iter()
            .flat_map(|c| std::iter::once(&c.name).chain(c.aliases.iter()))
            .map(|n| n.to_lowercase())
            .collect();
        Filter { prefix: prefix.to_string(), commands }
    }

    /// Whether `content` invokes one of the bot's commands (these are not chat to learn from).
    pub fn is_command(&self, content: &str) -> bool {
        let Some(rest) = content.strip_prefix(&self.prefix) else {
            return false;
        };
        let word = rest.split_whitespace().next().unwrap_or("").to_lowercase();
        self.commands.contains(&word)
    }
}

/// Whether a message is something a member said: plain chat and replies. Everything else
/// Discord puts in a channel (thread created, pins, joins, boosts, renames, command answers)
/// is a system message whose text is not chat, e.g. a thread's name.
pub fn is_chat(msg: &serenity::Message) -> bool {
    matches!(msg.kind, serenity::MessageType::Regular | serenity::MessageType::InlineReply)
}

/// Channels whose messages are chat: text, announcement and thread channels.
pub fn is_text(c: &serenity::GuildChannel) -> bool {
    use serenity::ChannelType as T;
    matches!(c.kind, T::Text | T::News | T::PublicThread | T::PrivateThread | T::NewsThread)
}

/// The message as a corpus record, with the channel's name from the cache when known.
pub fn record(ctx: &serenity::Context, guild_id: serenity::GuildId, msg: &serenity::Message) -> Record {
    // Threads are cached apart from channels; their messages remember their channel.
    let (channel, parent) = ctx
        .cache
        .guild(guild_id)
        .and_then(|g| {
            let thread = g.threads.iter().find(|t| t.id == msg.channel_id);
            let c = g.channels.get(&msg.channel_id).or(thread)?;
            Some((c.name.clone(), thread.and_then(|t| t.parent_id).map(|p| p.to_string())))
        })
        .unwrap_or_default();
    Record {
        id: msg.id.to_string(),
        guild_id: guild_id.to_string(),
        channel_id: msg.channel_id.to_string(),
        channel,
        author_id: msg.author.id.to_string(),
        author: msg.author.global_name.clone().unwrap_or_else(|| msg.author.name.clone()),
        content: msg.content.clone(),
        timestamp: msg.timestamp.to_rfc3339().unwrap_or_default(),
        parent_channel_id: parent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_told_from_chat() {
        let f = Filter { prefix: "!".into(), commands: vec!["llmstats".into(), "llmtrain".into()] };
        assert!(f.is_command("!llmstats"));
        assert!(f.is_command("!LLMTRAIN force"));
        assert!(!f.is_command("!hello there"));
        assert!(!f.is_command("llmstats"));
    }
}
