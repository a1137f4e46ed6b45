//! Discord's JSON shapes for the objects the devserver serves. Each builder is tested against
//! serenity's own models, so a field serenity needs cannot silently go missing.

use serde_json::{json, Value};

use super::world::{Channel, Guild, Interaction, Member, Msg, User, World};

/// `MANAGE_GUILD`, the permission that makes a member an admin for mynah.
pub const MANAGE_GUILD: u64 = 1 << 5;
/// Channel permissions the bot needs, as Discord numbers them.
pub const VIEW_CHANNEL: u64 = 1 << 10;
pub const SEND_MESSAGES: u64 = 1 << 11;
pub const ADD_REACTIONS: u64 = 1 << 6;
pub const ATTACH_FILES: u64 = 1 << 15;
pub const READ_MESSAGE_HISTORY: u64 = 1 << 16;
pub const SEND_MESSAGES_IN_THREADS: u64 = 1 << 38;
pub const ADMINISTRATOR: u64 = 1 << 3;
/// What `@everyone` may do in devserver guilds, as in a new Discord server: view, send (also
/// in threads), attach, read history, add reactions.
pub const EVERYONE: u64 = VIEW_CHANNEL
    | SEND_MESSAGES
    | SEND_MESSAGES_IN_THREADS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS;

pub fn user(u: &User) -> Value {
    json!({
        "id": u.id.to_string(),
        "username": u.name,
        "discriminator": "0",
        "global_name": u.name,
        "avatar": null,
        "bot": u.bot,
    })
}

pub fn current_user(u: &User) -> Value {
    let mut v = user(u);
    v["verified"] = json!(true);
    v["mfa_enabled"] = json!(false);
    v["flags"] = json!(0);
    v
}

pub fn role(id: u64, name: &str, permissions: u64, position: u16) -> Value {
    json!({
        "id": id.to_string(),
        "name": name,
        "color": 0,
        "colors": { "primary_color": 0, "secondary_color": null, "tertiary_color": null },
        "hoist": false,
        "icon": null,
        "unicode_emoji": null,
        "position": position,
        "permissions": permissions.to_string(),
        "managed": false,
        "mentionable": false,
        "flags": 0,
    })
}

pub fn roles(g: &Guild) -> Vec<Value> {
    std::iter::once(role(g.id, "@everyone", EVERYONE, 0))
        .chain(g.roles.iter().enumerate().map(|(i, r)| role(r.id, &r.name, r.permissions, i as u16 + 1)))
        .collect()
}

pub fn channel(c: &Channel, position: usize) -> Value {
    let mut v = json!({
        "id": c.id.to_string(),
        "type": 0,
        "guild_id": c.guild_id.to_string(),
        "name": c.name,
        "position": position,
        "permission_overwrites": c.overwrites.iter().map(|o| json!({
            "id": o.id.to_string(),
            "type": o.kind,
            "allow": o.allow.to_string(),
            "deny": o.deny.to_string(),
        })).collect::<Vec<_>>(),
        "topic": null,
        "nsfw": false,
        "last_message_id": null,
        "rate_limit_per_user": 0,
        "parent_id": null,
        "flags": 0,
    });
    if let Some(parent) = c.parent_id {
        v["type"] = json!(11);
        v["parent_id"] = json!(parent.to_string());
        v["thread_metadata"] = json!({
            "archived": false,
            "auto_archive_duration": 1440,
            "archive_timestamp": "2024-01-01T00:00:00.000000+00:00",
            "locked": false,
        });
        v["message_count"] = json!(0);
        v["member_count"] = json!(1);
    }
    v
}

/// A direct-message channel, as `POST /users/@me/channels` returns it.
pub fn dm_channel(w: &World, c: &Channel) -> Value {
    let recipients: Vec<Value> = c.recipient.and_then(|u| w.users.get(&u)).map(user).into_iter().collect();
    json!({ "id": c.id.to_string(), "type": 1, "last_message_id": null, "recipients": recipients, "flags": 0 })
}

/// What `THREAD_DELETE` carries.
pub fn deleted_thread(id: u64, guild_id: u64, parent_id: u64) -> Value {
    json!({ "id": id.to_string(), "guild_id": guild_id.to_string(), "parent_id": parent_id.to_string(), "type": 11 })
}

pub fn member(w: &World, m: &Member) -> Value {
    let user = w.users.get(&m.user_id).map(user).unwrap_or(Value::Null);
    json!({
        "user": user,
        "nick": null,
        "avatar": null,
        "roles": m.roles.iter().map(u64::to_string).collect::<Vec<_>>(),
        "joined_at": "2024-01-01T00:00:00.000000+00:00",
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

/// `INTERACTION_CREATE` for a slash command: `options` in Discord's shape; channel options
/// are resolved from the world, as Discord does.
pub fn interaction(w: &World, it: &Interaction, name: &str, options: &Value) -> Value {
    let mut channels = serde_json::Map::new();
    resolve_channels(w, options, &mut channels);
    let mut member = w.member(it.guild_id, it.user_id).map(|m| member(w, m)).unwrap_or(Value::Null);
    member["permissions"] = json!(w.permissions(it.guild_id, it.user_id).to_string());
    let command_id =
        w.commands.iter().find(|c| c["name"] == name).and_then(|c| c["id"].as_str()).unwrap_or("1");
    let channel = w.channel(it.channel_id);
    json!({
        "id": it.id.to_string(),
        "application_id": w.application_id.to_string(),
        "type": 2,
        "data": {
            "id": command_id,
            "name": name,
            "type": 1,
            "options": options,
            "resolved": { "channels": channels },
        },
        "guild_id": it.guild_id.to_string(),
        "channel_id": it.channel_id.to_string(),
        "channel": {
            "id": it.channel_id.to_string(),
            "type": 0,
            "name": channel.map(|c| c.name.clone()),
            "permissions": (u64::MAX >> 1).to_string(),
        },
        "member": member,
        "token": it.token,
        "version": 1,
        "app_permissions": (u64::MAX >> 1).to_string(),
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {},
        "context": 0,
        "attachment_size_limit": 10_485_760,
    })
}

fn resolve_channels(w: &World, options: &Value, out: &mut serde_json::Map<String, Value>) {
    for o in options.as_array().into_iter().flatten() {
        if o["type"] == 7 {
            let id = o["value"].as_str().and_then(|v| v.parse::<u64>().ok());
            if let Some(c) = id.and_then(|id| w.channel(id)) {
                out.insert(
                    c.id.to_string(),
                    json!({ "id": c.id.to_string(), "name": c.name, "type": 0, "permissions": (u64::MAX >> 1).to_string() }),
                );
            }
        }
        resolve_channels(w, &o["options"], out);
    }
}

/// The guild fields common to `GET /guilds/{id}` and `GUILD_CREATE`.
pub fn partial_guild(g: &Guild) -> Value {
    json!({
        "id": g.id.to_string(),
        "name": g.name,
        "icon": null,
        "icon_hash": null,
        "splash": null,
        "discovery_splash": null,
        "owner_id": g.owner_id.to_string(),
        "afk_channel_id": null,
        "afk_timeout": 300,
        "widget_enabled": false,
        "widget_channel_id": null,
        "verification_level": 0,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "roles": roles(g),
        "emojis": [],
        "features": [],
        "mfa_level": 0,
        "application_id": null,
        "system_channel_id": null,
        "system_channel_flags": 0,
        "rules_channel_id": null,
        "max_presences": null,
        "max_members": 500000,
        "vanity_url_code": null,
        "description": null,
        "banner": null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": null,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "nsfw_level": 0,
        "stickers": [],
        "premium_progress_bar_enabled": false,
        "safety_alerts_channel_id": null,
    })
}

/// The `d` of a `GUILD_CREATE` dispatch: the full guild with channels and members.
pub fn guild_create(w: &World, g: &Guild) -> Value {
    let mut v = partial_guild(g);
    let channels: Vec<Value> = w.channels_of(g.id).enumerate().map(|(i, c)| channel(c, i)).collect();
    v["joined_at"] = json!("2024-01-01T00:00:00.000000+00:00");
    v["large"] = json!(false);
    v["unavailable"] = json!(false);
    v["member_count"] = json!(g.members.len());
    v["voice_states"] = json!([]);
    v["members"] = json!(g.members.iter().map(|m| member(w, m)).collect::<Vec<_>>());
    v["channels"] = json!(channels);
    v["threads"] = json!(w.threads_of(g.id).enumerate().map(|(i, c)| channel(c, i)).collect::<Vec<_>>());
    v["presences"] = json!([]);
    v["stage_instances"] = json!([]);
    v["guild_scheduled_events"] = json!([]);
    v
}

pub fn message(w: &World, m: &Msg) -> Value {
    let author = w.users.get(&m.author_id).map(user).unwrap_or(Value::Null);
    let mentions: Vec<Value> = m.mentions.iter().filter_map(|id| w.users.get(id)).map(user).collect();
    let mut v = json!({
        "id": m.id.to_string(),
        "channel_id": m.channel_id.to_string(),
        "author": author,
        "content": m.content,
        "timestamp": m.timestamp,
        "edited_timestamp": m.edited_timestamp,
        "tts": false,
        "mention_everyone": false,
        "mentions": mentions,
        "mention_roles": [],
        "attachments": m.attachments.iter().map(without_test_fields).collect::<Vec<_>>(),
        "embeds": [],
        "pinned": false,
        "type": m.kind,
        "flags": 0,
    });
    if let Some(g) = m.guild_id {
        v["guild_id"] = json!(g.to_string());
        if let Some(member) = w.member(g, m.author_id) {
            let mut partial = self::member(w, member);
            if let Some(obj) = partial.as_object_mut() {
                obj.remove("user");
            }
            v["member"] = partial;
        }
    }
    if let Some(w) = m.webhook_id {
        v["webhook_id"] = json!(w.to_string());
    }
    if let Some(r) = m.reference {
        v["message_reference"] = json!({
            "message_id": r.to_string(),
            "channel_id": m.channel_id.to_string(),
            "guild_id": m.guild_id.map(|g| g.to_string()),
        });
    }
    v
}

pub fn application(w: &World) -> Value {
    json!({
        "id": w.application_id.to_string(),
        "name": w.bot.name,
        "icon": null,
        "description": "mynah on the local devserver",
        "rpc_origins": [],
        "bot_public": false,
        "bot_require_code_grant": false,
        "owner": user(&w.bot),
        "verify_key": "0".repeat(64),
        "team": null,
        "flags": 0,
        "role_connections_verification_url": null,
        "approximate_guild_count": w.guilds.len(),
        "approximate_user_install_count": 0,
        "redirect_uris": [],
        "interactions_endpoint_url": null,
    })
}

/// READY for a session of shard `shard` (`[id, total]`): the guilds of that shard only.
pub fn ready(w: &World, gateway_url: &str, shard: [u64; 2]) -> Value {
    let guilds: Vec<Value> = w
        .guilds
        .iter()
        .filter(|g| crate::shards::shard_of_guild(g.id, shard[1]) == shard[0])
        .map(|g| json!({"id": g.id.to_string(), "unavailable": true}))
        .collect();
    json!({
        "v": 10,
        "user": current_user(&w.bot),
        "guilds": guilds,
        "session_id": "devserver-session",
        "resume_gateway_url": gateway_url,
        "shard": shard,
        "application": { "id": w.application_id.to_string(), "flags": 0 },
    })
}

/// Discord's error body, e.g. `{"message": "404: Not Found", "code": 0}`.
pub fn error(message: &str, code: u32) -> Value {
    json!({ "message": message, "code": code })
}

/// An attachment as Discord shows it: without the bytes the devserver keeps for tests.
fn without_test_fields(a: &Value) -> Value {
    let mut a = a.clone();
    if let Some(obj) = a.as_object_mut() {
        obj.remove("data_hex");
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use serenity::all as s;

    fn world() -> World {
        let mut w = World::new("token");
        let g = w.create_guild("Guild", 0);
        let c = w.create_channel(g, "general", 0);
        let u = w.create_user("alice", false);
        w.add_member(g, u, MANAGE_GUILD);
        let bot = w.bot.id;
        w.post(c, u, format!("<@{bot}> hi"), None);
        w
    }

    fn parses<T: serde::de::DeserializeOwned>(v: Value) -> T {
        match serde_json::from_value::<T>(v.clone()) {
            Ok(t) => t,
            Err(e) => panic!("{} does not parse: {e}\n{v:#}", std::any::type_name::<T>()),
        }
    }

    #[test]
    fn every_object_parses_as_serenity_expects() {
        let w = world();
        let g = &w.guilds[0];
        let guild: s::Guild = parses(guild_create(&w, g));
        assert_eq!(guild.channels.len(), 1);
        assert_eq!(guild.roles.len(), 2);
        let _: s::PartialGuild = parses(partial_guild(g));
        let alice = g.members.iter().find(|m| w.users[&m.user_id].name == "alice").unwrap();
        let member: s::Member = parses(member(&w, alice));
        assert!(guild.member_permissions(&member).manage_guild());
        let msg: s::Message = parses(message(&w, &w.messages[0]));
        assert_eq!(msg.mentions.len(), 1);
        assert!(msg.member.is_some());
        let _: s::CurrentUser = parses(current_user(&w.bot));
        let _: s::CurrentApplicationInfo = parses(application(&w));
        let _: s::Ready = parses(ready(&w, "ws://x/gateway", [1, 2]));
        let _: s::GuildChannel = parses(channel(w.channels_of(g.id).next().unwrap(), 0));
        let c = w.channels_of(g.id).next().unwrap().id;
        let mut w2 = world();
        let parent = w2.channels_of(w2.guilds[0].id).next().unwrap().id;
        let t = w2.create_thread(parent, "a thread").unwrap();
        let thread: s::GuildChannel = parses(channel(w2.channel(t).unwrap(), 0));
        assert_eq!(thread.kind, s::ChannelType::PublicThread);
        let guild: s::Guild = parses(guild_create(&w2, &w2.guilds[0]));
        assert_eq!(guild.threads.len(), 1);
        let it = Interaction {
            id: 77,
            token: "t".into(),
            guild_id: g.id,
            channel_id: c,
            user_id: alice.user_id,
            created: std::time::Instant::now(),
            answer: crate::devserver::world::Answer::Pending,
        };
        let options = json!([{ "type": 1, "name": "add", "options": [{ "type": 7, "name": "channel", "value": c.to_string() }] }]);
        let parsed: s::Interaction = parses(interaction(&w, &it, "llmchannel", &options));
        let command = parsed.command().unwrap();
        assert!(command.member.unwrap().permissions.unwrap().manage_guild());
        assert_eq!(command.data.resolved.channels.len(), 1);
    }
}
