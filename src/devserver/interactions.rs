//! Slash commands on the devserver: registration (validated as Discord validates it) and the
//! answers to an interaction, with Discord's rules: one initial response, within the deadline,
//! of type 4 or 5; follow-ups only after it; a deferred answer keeps the defer's visibility.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::rest::{apply_edit, fail, message_body, post_bot_message, refuse, unknown, Reply};
use super::rules;
use super::world::{Answer, Interaction};
use super::Shared;

/// Message flag: only the invoking user sees the message.
const EPHEMERAL: u64 = 1 << 6;

/// Stores the bot's slash commands and answers them as Discord would, with IDs filled in; a
/// registration Discord would refuse is refused whole.
pub(super) async fn set_commands(State(shared): State<Arc<Shared>>, body: Bytes) -> Reply {
    let list: Vec<Value> = serde_json::from_slice(&body)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, &format!("Invalid Form Body ({e})"), 50035))?;
    rules::check_commands(&list).map_err(refuse)?;
    let mut w = shared.world();
    if let Some(why) = w.refuse_registration.take() {
        return Err(fail(StatusCode::BAD_REQUEST, &format!("Invalid Form Body ({why})"), 50035));
    }
    let app = w.application_id.to_string();
    let mut out = Vec::new();
    for mut cmd in list {
        let id = w.snowflake().to_string();
        if let Some(obj) = cmd.as_object_mut() {
            obj.insert("id".into(), json!(id));
            obj.insert("application_id".into(), json!(app));
            obj.insert("version".into(), json!(id));
            obj.entry("type").or_insert(json!(1));
            obj.entry("description").or_insert(json!(""));
            obj.entry("options").or_insert(json!([]));
            obj.entry("default_member_permissions").or_insert(Value::Null);
        }
        out.push(cmd);
    }
    w.commands = out.clone();
    Ok(Json(Value::Array(out)))
}

pub(super) async fn get_commands(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(Value::Array(shared.world().commands.clone()))
}

fn find(shared: &Shared, token: &str) -> Option<Interaction> {
    shared.world().interactions.iter().find(|i| i.token == token).cloned()
}

fn set_answer(shared: &Shared, id: u64, answer: Answer) {
    if let Some(it) = shared.world().interactions.iter_mut().find(|i| i.id == id) {
        it.answer = answer;
    }
}

/// Posts an answer to the interaction in its channel, as the invoking user would see it.
fn post_answer(
    shared: &Shared,
    it: &Interaction,
    payload: Value,
    files: Vec<Value>,
    ephemeral: bool,
) -> Value {
    let content = payload.get("content").and_then(Value::as_str).unwrap_or("").to_string();
    post_bot_message(shared, it.channel_id, content, None, payload, files, Some((it.id, ephemeral)))
}

pub(super) fn file_sizes(files: &[Value]) -> Vec<usize> {
    files.iter().map(|f| f["size"].as_u64().unwrap_or(0) as usize).collect()
}

fn is_ephemeral(payload: &Value) -> bool {
    payload.get("flags").and_then(Value::as_u64).is_some_and(|f| f & EPHEMERAL != 0)
}

/// `POST /interactions/{id}/{token}/callback`: the initial response.
pub(super) async fn callback(
    State(shared): State<Arc<Shared>>,
    Path((id, token)): Path<(u64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match initial_response(&shared, id, &token, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn initial_response(
    shared: &Shared,
    id: u64,
    token: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(), (StatusCode, Json<Value>)> {
    let it = find(shared, token).filter(|it| it.id == id).ok_or_else(|| unknown("interaction", 10062))?;
    let (payload, files) = message_body(headers, body).await?;
    let deadline = shared.world().interaction_deadline;
    if it.created.elapsed() > deadline {
        // Discord forgets an interaction nobody acknowledged in time; the user saw "The
        // application did not respond".
        tracing::warn!(target: "devserver", interaction = id, late_ms = it.created.elapsed().as_millis() as u64, "initial response after the deadline");
        return Err(unknown("interaction", 10062));
    }
    if it.answer != Answer::Pending {
        return Err(fail(StatusCode::BAD_REQUEST, "Interaction has already been acknowledged.", 40060));
    }
    let data = payload.get("data").cloned().unwrap_or(json!({}));
    match payload.get("type").and_then(Value::as_u64) {
        // CHANNEL_MESSAGE_WITH_SOURCE: the answer now.
        Some(4) => {
            rules::check_message(&data, &file_sizes(&files)).map_err(refuse)?;
            let ephemeral = is_ephemeral(&data);
            post_answer(shared, &it, data, files, ephemeral);
            set_answer(shared, it.id, Answer::Answered);
        }
        // DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: "thinking…", visible as the flags say.
        Some(5) => set_answer(shared, it.id, Answer::Deferred { ephemeral: is_ephemeral(&data) }),
        // 6 and 7 answer message components, 8 autocomplete, 9 modals: not a slash command.
        other => {
            let why =
                format!("Invalid Form Body (type: {other:?} is not a response to an application command)");
            return Err(fail(StatusCode::BAD_REQUEST, &why, 50035));
        }
    }
    Ok(())
}

/// Follow-ups (`edit` false) and edits of the original answer, both addressed by the token.
async fn webhook(shared: &Shared, token: &str, headers: &HeaderMap, body: Bytes, edit: bool) -> Reply {
    let it = find(shared, token).ok_or_else(|| unknown("Webhook", 10015))?;
    let (payload, files) = message_body(headers, body).await?;
    let original = shared.world().messages.iter().find(|m| m.interaction == Some(it.id)).map(|m| m.id);
    match it.answer {
        // Nothing acknowledged the interaction: there is no webhook (and no original) yet.
        Answer::Pending if edit => Err(unknown("Message", 10008)),
        Answer::Pending => Err(unknown("Webhook", 10015)),
        // The first message after a defer fills in the "thinking…" answer, with the defer's
        // visibility whatever this body's flags say.
        Answer::Deferred { ephemeral } => {
            rules::check_message(&payload, &file_sizes(&files)).map_err(refuse)?;
            let v = post_answer(shared, &it, payload, files, ephemeral);
            set_answer(shared, it.id, Answer::Answered);
            Ok(Json(v))
        }
        Answer::Answered => match original.filter(|_| edit) {
            Some(id) => apply_edit(shared, id, payload, None),
            None if edit => Err(unknown("Message", 10008)),
            None => {
                rules::check_message(&payload, &file_sizes(&files)).map_err(refuse)?;
                let ephemeral = is_ephemeral(&payload);
                Ok(Json(post_answer(shared, &it, payload, files, ephemeral)))
            }
        },
    }
}

/// `POST /webhooks/{app}/{token}`: a follow-up message.
pub(super) async fn followup(
    State(shared): State<Arc<Shared>>,
    Path((app, token)): Path<(u64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    check_app(&shared, app)?;
    webhook(&shared, &token, &headers, body, false).await
}

/// `PATCH /webhooks/{app}/{token}/messages/@original`: edits (or fills in) the answer.
pub(super) async fn edit_original(
    State(shared): State<Arc<Shared>>,
    Path((app, token)): Path<(u64, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    check_app(&shared, app)?;
    webhook(&shared, &token, &headers, body, true).await
}

fn check_app(shared: &Shared, app: u64) -> Result<(), (StatusCode, Json<Value>)> {
    if shared.world().application_id != app {
        return Err(unknown("Webhook", 10015));
    }
    Ok(())
}
