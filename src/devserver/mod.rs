//! A small Discord-compatible server (REST under `/api/v10` and a gateway websocket) that the
//! real, unmodified serenity client connects to. Tests and the playground use it to drive the
//! bot without Discord: they create guilds, channels and members, inject what users say, edit
//! or delete, and read what the bot posted. Routes it does not know answer with a logged,
//! Discord-style 404, so gaps show up.

mod gateway;
mod interactions;
pub mod json;
mod middleware;
mod rest;
pub mod rules;
mod staging;
pub mod world;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, oneshot, Notify};

pub use json::{
    ADD_REACTIONS, MANAGE_GUILD, READ_MESSAGE_HISTORY, SEND_MESSAGES, SEND_MESSAGES_IN_THREADS, VIEW_CHANNEL,
};
pub use world::Rejection;
use world::World;

/// A gateway dispatch: event name and payload.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

/// A message the bot posted through the REST API.
#[derive(Debug, Clone)]
pub struct Posted {
    pub id: u64,
    pub channel_id: u64,
    pub content: String,
    /// The message the bot replied to, if any.
    pub reference: Option<u64>,
    /// The raw JSON body the bot sent, for checks on `allowed_mentions` and the like.
    pub request: Value,
    /// Attached files: name and content.
    pub files: Vec<(String, String)>,
    /// Attached files: name and exact bytes (pictures are not text).
    pub attachments: Vec<(String, Vec<u8>)>,
    /// Only the invoking user sees it (an ephemeral slash-command answer).
    pub ephemeral: bool,
}

pub(crate) struct Shared {
    world: Mutex<World>,
    events: broadcast::Sender<Arc<Event>>,
    /// Fires `()` to make every gateway session drop its connection.
    kill: broadcast::Sender<()>,
    /// Woken whenever the bot posts, types or a session becomes ready.
    changed: Notify,
    ready_sessions: AtomicUsize,
    base_url: String,
}

impl Shared {
    /// The world, locked briefly; never held across an `.await`.
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, name: &'static str, data: Value) {
        // No receiver simply means no bot is connected yet.
        let _ = self.events.send(Arc::new(Event { name, data }));
    }
}

/// A running devserver. Dropping it stops the server.
pub struct DevServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl DevServer {
    /// Starts on a random loopback port.
    pub async fn start() -> std::io::Result<DevServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> std::io::Result<DevServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(65_536);
        let (kill, _) = broadcast::channel(4);
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new("devserver-token")),
            events,
            kill,
            changed: Notify::new(),
            ready_sessions: AtomicUsize::new(0),
            base_url: format!("http://{addr}"),
        });
        let app = rest::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(target: "devserver", error = %e, "devserver stopped");
            }
        });
        tracing::debug!(target: "devserver", "listening on {addr}");
        Ok(DevServer { shared, addr, stop: Some(stop) })
    }

    /// The base URL to give the bot as `DISCORD_API_BASE` (no `/api/v10`).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bot token the devserver accepts.
    pub fn token(&self) -> String {
        self.shared.world().token.clone()
    }

    pub fn bot_id(&self) -> u64 {
        self.shared.world().bot.id
    }

    pub fn create_guild(&self, name: &str) -> u64 {
        self.create_guild_with_id(name, 0)
    }

    /// A guild with a fixed ID (0 for a fresh one).
    pub fn create_guild_with_id(&self, name: &str, id: u64) -> u64 {
        let mut w = self.shared.world();
        let id = w.create_guild(name, id);
        self.announce_guild(&w, id);
        id
    }

    pub fn create_channel(&self, guild_id: u64, name: &str) -> u64 {
        self.create_channel_with_id(guild_id, name, 0)
    }

    /// A channel with a fixed ID (0 for a fresh one).
    pub fn create_channel_with_id(&self, guild_id: u64, name: &str, id: u64) -> u64 {
        let mut w = self.shared.world();
        let id = w.create_channel(guild_id, name, id);
        self.announce_guild(&w, guild_id);
        id
    }

    /// A public thread in `parent_id` (announced with `THREAD_CREATE`); `None` if there is no
    /// such channel.
    pub fn create_thread(&self, parent_id: u64, name: &str) -> Option<u64> {
        let mut w = self.shared.world();
        let id = w.create_thread(parent_id, name)?;
        let mut data = w.channel(id).map(|c| json::channel(c, 0)).unwrap_or_default();
        data["newly_created"] = serde_json::json!(true);
        self.shared.dispatch("THREAD_CREATE", data);
        Some(id)
    }

    /// A human user (not yet in any guild).
    pub fn create_user(&self, name: &str) -> u64 {
        self.shared.world().create_user(name, false)
    }

    /// Another bot account, to check that mynah ignores bots.
    pub fn create_bot_user(&self, name: &str) -> u64 {
        self.shared.world().create_user(name, true)
    }

    /// Makes `user_id` a member; `permissions` (e.g. [`MANAGE_GUILD`]) are granted by a role.
    pub fn add_member(&self, guild_id: u64, user_id: u64, permissions: u64) {
        let mut w = self.shared.world();
        w.add_member(guild_id, user_id, permissions);
        self.announce_guild(&w, guild_id);
    }

    /// Connected bots learn about guild changes through a fresh `GUILD_CREATE`, which serenity
    /// applies to its cache as a whole.
    fn announce_guild(&self, w: &World, guild_id: u64) {
        if let Some(g) = w.guild(guild_id) {
            if self.shared.ready_sessions.load(Ordering::SeqCst) > 0 {
                self.shared.dispatch("GUILD_CREATE", json::guild_create(w, g));
            }
        }
    }

    /// `user_id` says `content` in `channel_id`; returns the new message's ID.
    pub fn say(&self, channel_id: u64, user_id: u64, content: &str) -> u64 {
        let mut w = self.shared.world();
        let msg = w.post(channel_id, user_id, content.to_string(), None).clone();
        self.shared.dispatch("MESSAGE_CREATE", json::message(&w, &msg));
        msg.id
    }

    /// A webhook posts in `channel_id` under `user_id`'s name (as integrations and bridges do).
    pub fn say_as_webhook(&self, channel_id: u64, user_id: u64, content: &str) -> u64 {
        let mut w = self.shared.world();
        let hook = w.snowflake();
        let id = w.post(channel_id, user_id, content.to_string(), None).id;
        let Some(m) = w.message_mut(id) else { return id };
        m.webhook_id = Some(hook);
        let m = m.clone();
        self.shared.dispatch("MESSAGE_CREATE", json::message(&w, &m));
        id
    }

    /// `user_id` runs the slash command `name` in `channel_id`; `options` in Discord's shape
    /// (`[{"type": 3, "name": "option", "value": "force"}]`). Returns the interaction's ID.
    pub fn slash(&self, channel_id: u64, user_id: u64, name: &str, options: Value) -> u64 {
        let mut w = self.shared.world();
        let id = w.snowflake();
        let guild_id = w.channel(channel_id).map(|c| c.guild_id).unwrap_or(0);
        let it = world::Interaction {
            id,
            token: format!("interaction-token-{id}"),
            guild_id,
            channel_id,
            user_id,
            created: std::time::Instant::now(),
            answer: world::Answer::Pending,
        };
        let data = json::interaction(&w, &it, name, &options);
        w.interactions.push(it);
        self.shared.dispatch("INTERACTION_CREATE", data);
        id
    }

    /// The bot's answers to an interaction (the response and any follow-ups), oldest first.
    pub fn interaction_answers(&self, interaction_id: u64) -> Vec<Posted> {
        let w = self.shared.world();
        w.messages.iter().filter(|m| m.interaction == Some(interaction_id)).map(posted).collect()
    }

    /// Waits for the bot's first answer to an interaction.
    pub async fn wait_for_answer(&self, interaction_id: u64, timeout: Duration) -> Option<Posted> {
        self.wait_for(timeout, || self.interaction_answers(interaction_id).into_iter().next()).await
    }

    /// Sends a message's `MESSAGE_CREATE` again, as a gateway replay would.
    pub fn replay(&self, message_id: u64) {
        let w = self.shared.world();
        if let Some(m) = w.message(message_id) {
            self.shared.dispatch("MESSAGE_CREATE", json::message(&w, m));
        }
    }

    /// A user edits their message.
    pub fn edit(&self, message_id: u64, content: &str) {
        let mut w = self.shared.world();
        let now = w.now_rfc3339();
        if let Some(m) = w.message_mut(message_id) {
            m.content = content.to_string();
            m.edited_timestamp = Some(now);
            m.mentions = world::mentioned_ids(content);
            let m = m.clone();
            self.shared.dispatch("MESSAGE_UPDATE", json::message(&w, &m));
        }
    }

    /// A message is deleted (by its author or a moderator).
    pub fn delete(&self, message_id: u64) {
        let mut w = self.shared.world();
        if let Some(m) = w.message_mut(message_id) {
            m.deleted = true;
            let data = serde_json::json!({
                "id": m.id.to_string(),
                "channel_id": m.channel_id.to_string(),
                "guild_id": m.guild_id.map(|g| g.to_string()),
            });
            self.shared.dispatch("MESSAGE_DELETE", data);
        }
    }

    /// Several messages of a channel are deleted at once (by a moderator or a bot).
    pub fn delete_bulk(&self, channel_id: u64, ids: &[u64]) {
        let mut w = self.shared.world();
        let guild_id = w.channel(channel_id).map(|c| c.guild_id);
        for id in ids {
            if let Some(m) = w.message_mut(*id) {
                m.deleted = true;
            }
        }
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        let data = serde_json::json!({
            "ids": ids,
            "channel_id": channel_id.to_string(),
            "guild_id": guild_id.map(|g| g.to_string()),
        });
        self.shared.dispatch("MESSAGE_DELETE_BULK", data);
    }

    /// A channel is deleted, with its messages.
    pub fn delete_channel(&self, channel_id: u64) {
        let mut w = self.shared.world();
        let Some(pos) = w.channels.iter().position(|c| c.id == channel_id) else { return };
        let data = json::channel(&w.channels[pos], pos);
        w.channels.remove(pos);
        self.shared.dispatch("CHANNEL_DELETE", data);
    }

    /// A channel used as a thread of `parent_id` is deleted as a thread.
    pub fn delete_thread(&self, thread_id: u64, parent_id: u64) {
        let mut w = self.shared.world();
        let Some(pos) = w.channels.iter().position(|c| c.id == thread_id) else { return };
        let data = json::deleted_thread(thread_id, w.channels[pos].guild_id, parent_id);
        w.channels.remove(pos);
        self.shared.dispatch("THREAD_DELETE", data);
    }

    /// The bot is kicked from (or leaves) a guild.
    pub fn remove_bot_from_guild(&self, guild_id: u64) {
        let mut w = self.shared.world();
        if let Some(pos) = w.guilds.iter().position(|g| g.id == guild_id) {
            let g = w.guilds.remove(pos);
            w.left_guilds.push(g);
        }
        self.shared.dispatch("GUILD_DELETE", serde_json::json!({ "id": guild_id.to_string() }));
    }

    /// The bot is invited back to a guild it left; the guild kept its channels, members and
    /// history meanwhile. Announced with GUILD_CREATE as Discord does.
    pub fn return_bot_to_guild(&self, guild_id: u64) {
        let mut w = self.shared.world();
        let Some(pos) = w.left_guilds.iter().position(|g| g.id == guild_id) else { return };
        let g = w.left_guilds.remove(pos);
        w.guilds.push(g);
        self.announce_guild(&w, guild_id);
    }

    /// Messages the bot sent to `user_id` in private, oldest first.
    pub fn direct_messages(&self, user_id: u64) -> Vec<Posted> {
        let w = self.shared.world();
        let Some(dm) = w.channels.iter().find(|c| c.recipient == Some(user_id)).map(|c| c.id) else {
            return Vec::new();
        };
        w.messages.iter().filter(|m| m.channel_id == dm && m.request.is_some()).map(posted).collect()
    }

    /// Everything the bot posted in `channel_id`, oldest first.
    pub fn bot_messages(&self, channel_id: u64) -> Vec<Posted> {
        let w = self.shared.world();
        w.messages
            .iter()
            .filter(|m| m.channel_id == channel_id && m.request.is_some() && !m.deleted)
            .map(posted)
            .collect()
    }

    /// Waits for the first message the bot posts in `channel_id` after message `after`.
    pub async fn wait_for_bot_message(
        &self,
        channel_id: u64,
        after: u64,
        timeout: Duration,
    ) -> Option<Posted> {
        self.wait_for(timeout, || self.bot_messages(channel_id).into_iter().find(|p| p.id > after)).await
    }

    /// How many bot sessions are identified now.
    pub fn sessions(&self) -> usize {
        self.shared.ready_sessions.load(Ordering::SeqCst)
    }

    /// Waits until a bot session has identified and received READY and its guilds.
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, || (self.shared.ready_sessions.load(Ordering::SeqCst) > 0).then_some(()))
            .await
            .is_some()
    }

    /// Waits until `check` returns `Some`, re-checking whenever the bot does something.
    pub async fn wait_for<T>(&self, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = check() {
                return Some(found);
            }
            // Also poll now and then: some state (the bot's database) changes without telling us.
            let wake = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return check();
            }
        }
    }

    /// The emoji the bot reacted to message `message_id` with, in order.
    pub fn bot_reactions(&self, message_id: u64) -> Vec<String> {
        self.shared.world().message(message_id).map(|m| m.reactions.clone()).unwrap_or_default()
    }

    /// How many typing indicators the bot sent in `channel_id`.
    pub fn typing_in(&self, channel_id: u64) -> usize {
        self.shared.world().typing.iter().filter(|&&c| c == channel_id).count()
    }

    /// REST routes the bot called that the devserver does not serve.
    pub fn unknown_routes(&self) -> Vec<String> {
        self.shared.world().unknown_routes.clone()
    }

    /// Slash commands the bot registered.
    pub fn registered_commands(&self) -> Vec<Value> {
        self.shared.world().commands.clone()
    }

    /// Sets this server's clock `offset_ms` from the host's (negative: behind), for message
    /// times and snowflakes from now on.
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.shared.world().clock_offset_ms = offset_ms;
    }

    /// Drops every gateway connection without a close handshake, like a network failure.
    pub fn disconnect_all(&self) {
        self.shared.ready_sessions.store(0, Ordering::SeqCst);
        let _ = self.shared.kill.send(());
    }

    /// Every dispatch the devserver sends from now on (the playground prints the bot's posts).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.shared.events.subscribe()
    }

    /// Names for display: a user's and a channel's.
    pub fn user_name(&self, user_id: u64) -> Option<String> {
        self.shared.world().users.get(&user_id).map(|u| u.name.clone())
    }

    pub fn channel_name(&self, channel_id: u64) -> Option<String> {
        self.shared.world().channel(channel_id).map(|c| c.name.clone())
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.shared.kill.send(());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn posted(m: &world::Msg) -> Posted {
    Posted {
        id: m.id,
        channel_id: m.channel_id,
        content: m.content.clone(),
        reference: m.reference,
        request: m.request.clone().unwrap_or(Value::Null),
        files: m
            .attachments
            .iter()
            .map(|a| {
                let text = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (text("filename"), text("content"))
            })
            .collect(),
        attachments: m
            .attachments
            .iter()
            .map(|a| {
                let text = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (text("filename"), from_hex(&text("data_hex")))
            })
            .collect(),
        ephemeral: m.ephemeral,
    }
}

/// Bytes from the hex the devserver keeps them in.
fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}
