//! The devserver's gateway websocket: HELLO, IDENTIFY → READY and GUILD_CREATEs, heartbeats,
//! and every dispatch with a strictly increasing sequence number per session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{json as dj, Event, Shared};

/// `MESSAGE_CONTENT`, the privileged intent without which Discord blanks message content.
const MESSAGE_CONTENT_INTENT: u64 = 1 << 15;
/// `GUILD_PRESENCES`, without which GUILD_CREATE lists only the bot's own member (and members
/// in voice channels, which the devserver has none of).
const PRESENCES_INTENT: u64 = 1 << 8;

pub(super) async fn upgrade(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    ws.on_upgrade(move |socket| session(socket, shared))
}

struct Session {
    seq: u64,
    /// `[id, total]` from IDENTIFY (`[0, 1]` when the bot runs one shard): the session gets the
    /// events of its shard's guilds only, and direct messages on shard 0.
    shard: [u64; 2],
    identified: bool,
    content_intent: bool,
    presences_intent: bool,
    bot_id: u64,
}

impl Session {
    fn frame(&mut self, name: &str, data: Value) -> Message {
        self.seq += 1;
        Message::Text(json!({ "op": 0, "s": self.seq, "t": name, "d": data }).to_string().into())
    }

    /// Whether Discord would send `event` on this session's shard.
    fn routes(&self, event: &Event) -> bool {
        let data = &event.data;
        let guild = if event.name.starts_with("GUILD_") { &data["id"] } else { &data["guild_id"] };
        match guild.as_str().and_then(|g| g.parse::<u64>().ok()) {
            Some(g) => crate::shards::shard_of_guild(g, self.shard[1]) == self.shard[0],
            None => self.shard[0] == 0,
        }
    }

    /// Without the message-content intent Discord sends empty content, except in messages that
    /// mention the bot or that it wrote; the devserver does the same so the bug would show.
    fn visible(&self, event: &Event) -> Value {
        let mut data = event.data.clone();
        if event.name == "GUILD_CREATE" {
            data = self.guild_as_sent(data);
        }
        if !self.content_intent && matches!(event.name, "MESSAGE_CREATE" | "MESSAGE_UPDATE") {
            let bot = self.bot_id.to_string();
            let by_bot = data.pointer("/author/id").and_then(Value::as_str) == Some(bot.as_str());
            let mentions_bot = data["mentions"]
                .as_array()
                .is_some_and(|m| m.iter().any(|u| u["id"].as_str() == Some(bot.as_str())));
            if !by_bot && !mentions_bot {
                data["content"] = json!("");
            }
        }
        data
    }

    /// A GUILD_CREATE as this session's intents get it.
    fn guild_as_sent(&self, mut guild: Value) -> Value {
        if !self.presences_intent {
            let bot = self.bot_id.to_string();
            if let Some(members) = guild["members"].as_array_mut() {
                members.retain(|m| m.pointer("/user/id").and_then(Value::as_str) == Some(bot.as_str()));
            }
        }
        guild
    }
}

async fn session(mut socket: WebSocket, shared: Arc<Shared>) {
    // Subscribe before HELLO so nothing dispatched during the handshake is lost.
    let mut events = shared.events.subscribe();
    let mut kill = shared.kill.subscribe();
    let hello = json!({ "op": 10, "s": null, "t": null, "d": { "heartbeat_interval": 41250 } });
    if socket.send(Message::Text(hello.to_string().into())).await.is_err() {
        return;
    }
    let bot_id = shared.world().bot.id;
    let mut s = Session {
        seq: 0,
        shard: [0, 1],
        identified: false,
        content_intent: true,
        presences_intent: false,
        bot_id,
    };
    loop {
        tokio::select! {
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    // The websocket layer answers a close by itself; reading on lets it flush that
                    // answer before the stream ends.
                    Some(Ok(Message::Close(_))) => continue,
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else {
                    tracing::warn!(target: "devserver", %text, "unparsable gateway frame");
                    continue;
                };
                if !handle(&mut socket, &shared, &mut s, &payload).await {
                    break;
                }
            }
            event = events.recv(), if s.identified => match event {
                Ok(event) if !sees(&shared, s.bot_id, &event) || !s.routes(&event) => {}
                Ok(event) => {
                    let frame = s.frame(event.name, s.visible(&event));
                    if socket.send(frame).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::error!(target: "devserver", missed = n, "gateway session fell behind; events lost");
                }
                Err(RecvError::Closed) => break,
            },
            _ = kill.recv() => break,
        }
    }
    if s.identified {
        // Saturating: disconnect_all already reset the count.
        let _ = shared.ready_sessions.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// Whether the bot receives the event: a channel's messages only reach a bot that may view it.
fn sees(shared: &Shared, bot: u64, event: &Event) -> bool {
    if !event.name.starts_with("MESSAGE_") {
        return true;
    }
    let channel = event.data["channel_id"].as_str().and_then(|c| c.parse::<u64>().ok());
    channel.is_none_or(|c| shared.world().permissions_in(c, bot) & dj::VIEW_CHANNEL != 0)
}

/// Handles one client frame; `false` ends the session.
async fn handle(socket: &mut WebSocket, shared: &Shared, s: &mut Session, payload: &Value) -> bool {
    match payload["op"].as_u64() {
        // Heartbeat: must be acknowledged or serenity reconnects.
        Some(1) => socket.send(Message::Text(json!({ "op": 11 }).to_string().into())).await.is_ok(),
        // Identify.
        Some(2) => {
            let token = payload.pointer("/d/token").and_then(Value::as_str).unwrap_or("");
            let token = token.strip_prefix("Bot ").unwrap_or(token);
            let (ok, frames) = {
                let w = shared.world();
                if token != w.token {
                    (false, Vec::new())
                } else {
                    let intents = payload.pointer("/d/intents").and_then(Value::as_u64).unwrap_or(0);
                    s.content_intent = intents & MESSAGE_CONTENT_INTENT != 0;
                    s.presences_intent = intents & PRESENCES_INTENT != 0;
                    let shard = payload.pointer("/d/shard").and_then(Value::as_array).map(|a| {
                        let n = |i: usize| a.get(i).and_then(Value::as_u64);
                        [n(0).unwrap_or(0), n(1).unwrap_or(1).max(1)]
                    });
                    s.shard = shard.unwrap_or([0, 1]);
                    let url = format!("{}/gateway", shared.base_url.replacen("http", "ws", 1));
                    let mut frames = vec![s.frame("READY", dj::ready(&w, &url, s.shard))];
                    let [id, total] = s.shard;
                    for g in w.guilds.iter().filter(|g| crate::shards::shard_of_guild(g.id, total) == id) {
                        let guild = s.guild_as_sent(dj::guild_create(&w, g));
                        frames.push(s.frame("GUILD_CREATE", guild));
                    }
                    (true, frames)
                }
            };
            if !ok {
                tracing::warn!(target: "devserver", "IDENTIFY with a wrong token");
                let close = CloseFrame { code: 4004, reason: "Authentication failed.".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return false;
            }
            for frame in frames {
                if socket.send(frame).await.is_err() {
                    return false;
                }
            }
            s.identified = true;
            shared.ready_sessions.fetch_add(1, Ordering::SeqCst);
            shared.changed.notify_waiters();
            true
        }
        // Resume: the devserver keeps no session history, so it asks for a fresh IDENTIFY.
        Some(6) => {
            socket.send(Message::Text(json!({ "op": 9, "d": false }).to_string().into())).await.is_ok()
        }
        // Presence updates, member requests and the like need no answer.
        _ => true,
    }
}
