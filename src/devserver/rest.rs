//! The devserver's REST routes under `/api/v10`: the subset of Discord's API the bot uses.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::middleware as mw;
use super::rules::{self, Refusal};
use super::world::World;
use super::{json as dj, Shared};

pub(super) type Reply = Result<Json<Value>, (StatusCode, Json<Value>)>;

pub(super) fn fail(status: StatusCode, message: &str, code: u32) -> (StatusCode, Json<Value>) {
    (status, Json(dj::error(message, code)))
}

pub(super) fn unknown(what: &str, code: u32) -> (StatusCode, Json<Value>) {
    fail(StatusCode::NOT_FOUND, &format!("Unknown {what}"), code)
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    use super::interactions as ix;
    let api = Router::new()
        .route("/gateway/bot", get(gateway_bot))
        .route("/oauth2/applications/@me", get(application))
        .route("/applications/@me", get(application))
        .route("/users/@me", get(current_user))
        .route("/users/@me/channels", post(open_dm))
        .route("/channels/{channel}", get(get_channel))
        .route("/channels/{channel}/messages", get(list_messages).post(create_message))
        .route(
            "/channels/{channel}/messages/{message}",
            get(get_message).patch(edit_message).delete(delete_message),
        )
        .route("/channels/{channel}/messages/{message}/reactions/{emoji}/@me", put(add_reaction))
        .route("/channels/{channel}/typing", post(typing))
        .route("/guilds/{guild}", get(get_guild))
        .route("/guilds/{guild}/members/{user}", get(get_member))
        .route("/guilds/{guild}/roles", get(get_roles))
        .route("/guilds/{guild}/channels", get(get_channels))
        .route("/applications/{app}/commands", put(ix::set_commands).get(ix::get_commands))
        .route("/applications/{app}/guilds/{guild}/commands", put(ix::set_commands).get(ix::get_commands))
        .layer(middleware::from_fn_with_state(shared.clone(), mw::require_bot_token))
        // Discord serves the gateway URL without authentication.
        .route("/gateway", get(gateway_url))
        // Interaction responses are authenticated by the interaction's token in the path.
        .route("/interactions/{id}/{token}/callback", post(ix::callback))
        .route("/webhooks/{app}/{token}", post(ix::followup))
        .route("/webhooks/{app}/{token}/messages/@original", axum::routing::patch(ix::edit_original));
    Router::new()
        .nest("/api/v10", api)
        .route("/gateway", get(super::gateway::upgrade))
        .fallback(mw::not_found)
        // A known path with a method it does not serve is a gap too (axum would answer a bare 405).
        .method_not_allowed_fallback(mw::not_found)
        // Uploads up to Discord's limit reach the handlers, which refuse what Discord refuses; the
        // margin is for the multipart framing and the JSON part.
        .layer(DefaultBodyLimit::max(rules::UPLOAD_LIMIT + 1024 * 1024))
        .layer(middleware::from_fn_with_state(shared.clone(), mw::rate_limit))
        .layer(middleware::from_fn_with_state(shared.clone(), mw::record_rejections))
        .with_state(shared)
}

fn gateway_ws_url(shared: &Shared) -> String {
    format!("{}/gateway", shared.base_url.replacen("http", "ws", 1))
}

async fn gateway_url(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "url": gateway_ws_url(&shared) }))
}

async fn gateway_bot(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "url": gateway_ws_url(&shared),
        "shards": 1,
        "session_start_limit": { "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1 },
    }))
}

async fn application(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(dj::application(&shared.world()))
}

async fn current_user(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(dj::current_user(&shared.world().bot))
}

#[derive(Deserialize)]
struct OpenDm {
    recipient_id: serde_json::Value,
}

async fn open_dm(State(shared): State<Arc<Shared>>, Json(body): Json<OpenDm>) -> Reply {
    let user = body
        .recipient_id
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| body.recipient_id.as_u64())
        .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "Invalid Form Body (recipient_id)", 50035))?;
    let mut w = shared.world();
    if !w.users.contains_key(&user) {
        return Err(unknown("User", 10013));
    }
    let id = w.dm_channel(user);
    let c = w.channel(id).ok_or_else(|| unknown("Channel", 10003))?;
    Ok(Json(dj::dm_channel(&w, c)))
}

async fn get_channel(State(shared): State<Arc<Shared>>, Path(channel): Path<u64>) -> Reply {
    let w = shared.world();
    let c = w.channel(channel).ok_or_else(|| unknown("Channel", 10003))?;
    if c.recipient.is_some() {
        return Ok(Json(dj::dm_channel(&w, c)));
    }
    require(&w, channel, 0)?;
    let position = w.channels_of(c.guild_id).position(|x| x.id == channel).unwrap_or(0);
    Ok(Json(dj::channel(c, position)))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    before: Option<u64>,
    after: Option<u64>,
    around: Option<u64>,
}

/// The bot's permissions in `channel` must include `needed`: Discord answers 403 with 50001
/// (Missing Access) without VIEW_CHANNEL and 50013 (Missing Permissions) without the rest.
fn require(w: &World, channel: u64, needed: u64) -> Result<(), (StatusCode, Json<Value>)> {
    let have = w.permissions_in(channel, w.bot.id);
    if have & dj::VIEW_CHANNEL == 0 {
        return Err(fail(StatusCode::FORBIDDEN, "Missing Access", 50001));
    }
    if have & needed != needed {
        return Err(fail(StatusCode::FORBIDDEN, "Missing Permissions", 50013));
    }
    Ok(())
}

/// What sending in `channel` takes: SEND_MESSAGES, or SEND_MESSAGES_IN_THREADS in a thread.
fn send_permission(w: &World, channel: u64) -> u64 {
    if w.channel(channel).is_some_and(|c| c.parent_id.is_some()) {
        dj::SEND_MESSAGES_IN_THREADS
    } else {
        dj::SEND_MESSAGES
    }
}

pub(super) fn refuse(r: Refusal) -> (StatusCode, Json<Value>) {
    fail(r.status, &r.message, r.code)
}

async fn list_messages(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    Query(q): Query<ListQuery>,
) -> Reply {
    let window = rules::history_window(q.limit, q.before, q.after, q.around).map_err(refuse)?;
    let w = shared.world();
    w.channel(channel).ok_or_else(|| unknown("Channel", 10003))?;
    require(&w, channel, 0)?;
    // Without READ_MESSAGE_HISTORY Discord lists nothing (and says nothing).
    if w.permissions_in(channel, w.bot.id) & dj::READ_MESSAGE_HISTORY == 0 {
        return Ok(Json(json!([])));
    }
    // Ephemeral answers belong to one user's screen, never to the channel's history.
    let ids: Vec<u64> = w
        .messages
        .iter()
        .filter(|m| m.channel_id == channel && !m.deleted && !m.ephemeral)
        .map(|m| m.id)
        .collect();
    let list = window.select(&ids).into_iter().filter_map(|id| w.message(id)).map(|m| dj::message(&w, m));
    Ok(Json(Value::Array(list.collect())))
}

async fn get_message(State(shared): State<Arc<Shared>>, Path((channel, message)): Path<(u64, u64)>) -> Reply {
    let w = shared.world();
    w.channel(channel).ok_or_else(|| unknown("Channel", 10003))?;
    require(&w, channel, dj::READ_MESSAGE_HISTORY)?;
    let m = w
        .message(message)
        .filter(|m| m.channel_id == channel && !m.deleted)
        .ok_or_else(|| unknown("Message", 10008))?;
    Ok(Json(dj::message(&w, m)))
}

/// The JSON part of a message body, whether sent as JSON or as multipart with files.
pub(super) async fn message_body(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Value, Vec<Value>), (StatusCode, Json<Value>)> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let bad = |e: String| fail(StatusCode::BAD_REQUEST, &format!("400: Bad Request ({e})"), 50109);
    if !content_type.starts_with("multipart/form-data") {
        let payload = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        return Ok((payload, Vec::new()));
    }
    let boundary = multer::parse_boundary(content_type).map_err(|e| bad(e.to_string()))?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut payload = json!({});
    let mut files = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or("").to_string();
        let filename = field.file_name().map(str::to_string);
        let data = field.bytes().await.map_err(|e| bad(e.to_string()))?;
        if name == "payload_json" {
            payload = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
        } else if let Some(filename) = filename {
            files.push(json!({
                "id": files.len().to_string(),
                "filename": filename,
                "size": data.len(),
                "url": format!("attachment://{filename}"),
                "proxy_url": format!("attachment://{filename}"),
                "content": String::from_utf8_lossy(&data),
                // The exact bytes (a picture is not text), for tests; never sent to the bot.
                "data_hex": data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            }));
        }
    }
    Ok((payload, files))
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (payload, files) = message_body(&headers, body).await?;
    rules::check_message(&payload, &super::interactions::file_sizes(&files)).map_err(refuse)?;
    let content = payload.get("content").and_then(Value::as_str).unwrap_or("").to_string();
    let reference = payload
        .pointer("/message_reference/message_id")
        .and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_u64().map(|n| n.to_string())))
        .and_then(|s| s.parse::<u64>().ok());
    let reference = {
        let w = shared.world();
        let c = w.channel(channel).ok_or_else(|| unknown("Channel", 10003))?;
        if c.recipient.is_some_and(|u| w.closed_dms.contains(&u)) {
            return Err(fail(StatusCode::FORBIDDEN, "Cannot send messages to this user", 50007));
        }
        let mut needed = send_permission(&w, channel);
        if !files.is_empty() {
            needed |= dj::ATTACH_FILES;
        }
        if reference.is_some() {
            // A reply shows the message it answers: that takes reading the channel's history.
            needed |= dj::READ_MESSAGE_HISTORY;
        }
        require(&w, channel, needed)?;
        match reference {
            Some(r) if !w.message(r).is_some_and(|m| m.channel_id == channel && !m.deleted) => {
                // A reply to a message that is gone fails unless the bot said it may become a
                // plain message.
                let may_drop =
                    payload.pointer("/message_reference/fail_if_not_exists") == Some(&json!(false));
                if !may_drop {
                    return Err(fail(
                        StatusCode::BAD_REQUEST,
                        "Invalid Form Body (message_reference: Unknown message)",
                        50035,
                    ));
                }
                None
            }
            r => r,
        }
    };
    let v = post_bot_message(&shared, channel, content, reference, payload, files, None);
    // Discord echoes the bot's own messages over the gateway too.
    shared.dispatch("MESSAGE_CREATE", v.clone());
    Ok(Json(v))
}

/// Records a message the bot posted (`answer`: the interaction it answers, and whether only
/// its user sees it) and returns it as Discord would.
pub(super) fn post_bot_message(
    shared: &Shared,
    channel: u64,
    content: String,
    reference: Option<u64>,
    payload: Value,
    files: Vec<Value>,
    answer: Option<(u64, bool)>,
) -> Value {
    let mut w = shared.world();
    // Attachments get real snowflakes: serenity refuses an ID of 0.
    let files: Vec<Value> = files
        .into_iter()
        .map(|mut f| {
            f["id"] = json!(w.snowflake().to_string());
            f
        })
        .collect();
    let bot = w.bot.id;
    let id = w.post(channel, bot, content, reference).id;
    let Some(m) = w.message_mut(id) else { return Value::Null };
    m.request = Some(payload);
    m.attachments = files;
    m.interaction = answer.map(|a| a.0);
    m.ephemeral = answer.is_some_and(|a| a.1);
    if answer.is_some() {
        // CHAT_INPUT_COMMAND: an answer to a slash command.
        m.kind = 20;
    }
    let m = m.clone();
    let v = dj::message(&w, &m);
    drop(w);
    shared.changed.notify_waiters();
    v
}

/// Applies an edit's new content and body to the message `id` and returns it.
pub(super) fn apply_edit(shared: &Shared, id: u64, payload: Value, edited_at: Option<String>) -> Reply {
    let mut w = shared.world();
    let m = w.message_mut(id).ok_or_else(|| unknown("Message", 10008))?;
    if let Some(content) = payload.get("content").and_then(Value::as_str) {
        m.content = content.to_string();
    }
    if edited_at.is_some() {
        m.edited_timestamp = edited_at;
    }
    m.request = Some(payload);
    let m = m.clone();
    let v = dj::message(&w, &m);
    drop(w);
    shared.changed.notify_waiters();
    Ok(Json(v))
}

async fn edit_message(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let (payload, _) = message_body(&headers, body).await?;
    let now = {
        let w = shared.world();
        let m = w
            .message(message)
            .filter(|m| m.channel_id == channel && !m.deleted)
            .ok_or_else(|| unknown("Message", 10008))?;
        if m.author_id != w.bot.id {
            return Err(fail(StatusCode::FORBIDDEN, "Cannot edit a message authored by another user", 50005));
        }
        require(&w, channel, 0)?;
        w.now_rfc3339()
    };
    apply_edit(&shared, message, payload, Some(now))
}

async fn delete_message(
    State(shared): State<Arc<Shared>>,
    Path((channel, message)): Path<(u64, u64)>,
) -> Response {
    let mut w = shared.world();
    match w.message_mut(message).filter(|m| m.channel_id == channel && !m.deleted) {
        Some(m) => {
            m.deleted = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => unknown("Message", 10008).into_response(),
    }
}

/// The bot reacts to a message. As on Discord: Read Message History always, Add Reactions
/// unless someone already reacted with that emoji (nobody else reacts on the devserver).
async fn add_reaction(
    State(shared): State<Arc<Shared>>,
    Path((channel, message, emoji)): Path<(u64, u64, String)>,
) -> Response {
    let mut w = shared.world();
    if w.channel(channel).is_none() {
        return unknown("Channel", 10003).into_response();
    }
    if let Err(e) = require(&w, channel, dj::READ_MESSAGE_HISTORY | dj::ADD_REACTIONS) {
        return e.into_response();
    }
    // A custom emoji is `name:id`; anything else must be a Unicode emoji, not a word.
    let custom = emoji.split_once(':').is_some_and(|(_, id)| id.parse::<u64>().is_ok());
    if emoji.is_empty() || (!custom && emoji.chars().any(|c| c.is_ascii_alphanumeric())) {
        return fail(StatusCode::BAD_REQUEST, "Unknown Emoji", 10014).into_response();
    }
    match w.message_mut(message).filter(|m| m.channel_id == channel && !m.deleted) {
        Some(m) => {
            if !m.reactions.contains(&emoji) {
                m.reactions.push(emoji);
            }
        }
        None => return unknown("Message", 10008).into_response(),
    }
    drop(w);
    shared.changed.notify_waiters();
    StatusCode::NO_CONTENT.into_response()
}

async fn typing(State(shared): State<Arc<Shared>>, Path(channel): Path<u64>) -> Response {
    let mut w = shared.world();
    if w.channel(channel).is_none() {
        return unknown("Channel", 10003).into_response();
    }
    let needed = send_permission(&w, channel);
    if let Err(e) = require(&w, channel, needed) {
        return e.into_response();
    }
    w.typing.push(channel);
    if w.delete_on_typing.remove(&channel) {
        // The member deletes their message while the bot is busy answering it.
        let bot = w.bot.id;
        let newest =
            w.messages.iter().rev().find(|m| m.channel_id == channel && m.author_id != bot && !m.deleted);
        if let Some(m) = newest.map(|m| m.id).and_then(|id| w.message_mut(id)) {
            m.deleted = true;
            let data = json!({
                "id": m.id.to_string(),
                "channel_id": m.channel_id.to_string(),
                "guild_id": m.guild_id.map(|g| g.to_string()),
            });
            shared.dispatch("MESSAGE_DELETE", data);
        }
    }
    drop(w);
    shared.changed.notify_waiters();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_guild(State(shared): State<Arc<Shared>>, Path(guild): Path<u64>) -> Reply {
    let w = shared.world();
    let g = w.guild(guild).ok_or_else(|| unknown("Guild", 10004))?;
    Ok(Json(dj::partial_guild(g)))
}

async fn get_member(State(shared): State<Arc<Shared>>, Path((guild, user)): Path<(u64, u64)>) -> Reply {
    let w = shared.world();
    let m = w.member(guild, user).ok_or_else(|| unknown("Member", 10007))?;
    Ok(Json(dj::member(&w, m)))
}

async fn get_roles(State(shared): State<Arc<Shared>>, Path(guild): Path<u64>) -> Reply {
    let w = shared.world();
    let g = w.guild(guild).ok_or_else(|| unknown("Guild", 10004))?;
    Ok(Json(Value::Array(dj::roles(g))))
}

async fn get_channels(State(shared): State<Arc<Shared>>, Path(guild): Path<u64>) -> Reply {
    let w = shared.world();
    w.guild(guild).ok_or_else(|| unknown("Guild", 10004))?;
    Ok(Json(Value::Array(w.channels_of(guild).enumerate().map(|(i, c)| dj::channel(c, i)).collect())))
}
