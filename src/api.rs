//! The HTTP API (axum), compatible with the old bot's clients. Every handler is a thin adapter
//! over [`crate::service::Core`]; errors are JSON `{"error": "..."}` with a fitting status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::service::{Core, ServiceError, TrainRequest, Trigger};

/// An error response: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, body: json!({ "error": message.into() }) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::NotNeeded { guild_id, decision } => {
                return ApiError {
                    status: StatusCode::OK,
                    body: json!({
                        "started": false,
                        "reason": decision.reason,
                        "guild_id": guild_id,
                        "should_train": decision,
                    }),
                }
            }
            ServiceError::AlreadyRunning { .. } | ServiceError::NothingToTrain => StatusCode::CONFLICT,
            ServiceError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Engine(crate::engine::EngineError::NotEnoughData(_)) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            user if user.is_user_error() => StatusCode::BAD_REQUEST,
            ServiceError::Engine(inner) => {
                tracing::error!(error = %inner, "engine error in API handler");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            other => {
                tracing::error!(error = %other, "error in API handler");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the bot's log");
            }
        };
        ApiError::new(status, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The router, built by a function so tests can drive it without a socket.
pub fn router(core: Arc<Core>) -> Router {
    // Remote training hands out the whole corpus and replaces models: a token is required even
    // on loopback, and without one configured these routes stay shut.
    let remote = Router::new()
        .route("/api/training/corpus", get(corpus))
        .route(
            "/api/training/model",
            post(upload_model)
                .layer(axum::extract::DefaultBodyLimit::max(crate::models::bundle::MAX_BUNDLE_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(core.clone(), require_token_always));
    Router::new()
        .merge(remote)
        .route("/api/ml/status", get(status))
        .route("/api/ml/train", post(train).delete(cancel))
        .route("/api/ml/should-train", get(should_train))
        .route("/api/ml/initialize", post(initialize))
        .route("/api/ml/runs", get(runs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(core.clone(), require_token))
        .with_state(core)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!("HTTP API listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router(core)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// When `MYNAH_API_TOKEN` is set, every state-changing request needs it as a bearer token.
async fn require_token(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    match &core.config().api_token {
        Some(token) if req.method() != Method::GET && !bearer_matches(&req, token) => unauthorized(),
        _ => next.run(req).await,
    }
}

fn bearer_matches(req: &Request, token: &crate::config::Secret) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    presented == Some(token.expose())
}

fn unauthorized() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send Authorization: Bearer <MYNAH_API_TOKEN>",
    )
    .into_response()
}

async fn require_token_always(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let Some(token) = &core.config().api_token else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "remote training is off: set MYNAH_API_TOKEN on this instance to allow it",
        )
        .into_response();
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(token.expose()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <MYNAH_API_TOKEN>",
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequiredGuild {
    guild_id: String,
}

fn required_guild(query: Result<Query<RequiredGuild>, QueryRejection>) -> Result<String, ApiError> {
    query.map(|Query(q)| q.guild_id).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid query (guild_id is required): {e}"))
    })
}

/// The guild's corpus as JSONL, streamed line by line.
async fn corpus(
    State(core): State<Arc<Core>>,
    query: Result<Query<RequiredGuild>, QueryRejection>,
) -> Result<Response, ApiError> {
    let guild = required_guild(query)?;
    let lines = core.corpus_jsonl(&guild).await?;
    let count = lines.len();
    let stream = futures::stream::iter(
        lines.into_iter().map(|l| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(l + "\n"))),
    );
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/x-ndjson"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&count.to_string()) {
        headers.insert("x-mynah-messages", v);
    }
    Ok(response)
}

/// A model bundle (tar of a checkpoint directory) trained elsewhere.
async fn upload_model(
    State(core): State<Arc<Core>>,
    query: Result<Query<RequiredGuild>, QueryRejection>,
    body: Bytes,
) -> ApiResult {
    let guild = required_guild(query)?;
    let installed = core.install_bundle(&guild, body.to_vec()).await?;
    Ok(Json(json!({ "installed": true, "guild_id": installed.guild_id, "run_id": installed.run_id })))
}

async fn status(State(core): State<Arc<Core>>) -> ApiResult {
    Ok(Json(json!(core.status().await?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainBody {
    epochs: Option<u32>,
    #[serde(default)]
    force: bool,
    guild_id: Option<String>,
    max_minutes: Option<f64>,
}

async fn train(State(core): State<Arc<Core>>, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The body is parsed by hand so that an empty body means defaults and every parse
    // problem (syntax, types, unknown fields) gets the same 400 JSON answer.
    let body: TrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        TrainBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?
    };
    let accepted = core
        .request_training(TrainRequest {
            guild_id: body.guild_id,
            epochs: body.epochs,
            max_minutes: body.max_minutes,
            force: body.force,
            trigger: Trigger::Api,
            requested_by: Some("api".into()),
        })
        .await?;
    let body = json!({
        "started": true,
        "guild_id": accepted.guild_id,
        "run_id": accepted.run_id,
        "epochs": accepted.epochs,
        "corpus_messages": accepted.corpus_messages,
        "should_train": accepted.decision,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuildQuery {
    guild_id: Option<String>,
}

async fn should_train(
    State(core): State<Arc<Core>>,
    query: Result<Query<GuildQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid query: {e}")))?;
    if let Some(guild) = query.guild_id {
        let d = core.should_train(&guild).await?;
        return Ok(Json(json!({ "guild_id": guild }).merged(&d)));
    }
    // Without a guild: every guild's decision, with the first guild that should train (or the
    // first guild at all) at the top level for clients that expect a single answer.
    let all = core.should_train_all().await?;
    let guilds: Vec<Value> = all.iter().map(|(g, d)| json!({ "guild_id": g }).merged(d)).collect();
    let top = all.iter().find(|(_, d)| d.should_train).or(all.first());
    let body = match top {
        Some((g, d)) => json!({ "guild_id": g, "guilds": guilds }).merged(d),
        None => json!({
            "should_train": false,
            "reason": "no messages have been collected yet",
            "new_messages": 0,
            "total_messages": 0,
            "guild_id": null,
            "guilds": guilds,
        }),
    };
    Ok(Json(body))
}

async fn cancel(State(core): State<Arc<Core>>) -> ApiResult {
    let cancelled = core.cancel_training();
    let message = if cancelled { "cancelling the running training" } else { "no training is running" };
    Ok(Json(json!({ "cancelled": cancelled, "message": message })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    guild_id: Option<String>,
    limit: Option<u32>,
}

/// The newest training runs, newest first.
async fn runs(State(core): State<Arc<Core>>, query: Result<Query<RunsQuery>, QueryRejection>) -> ApiResult {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid query: {e}")))?;
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    let runs = core.runs(q.guild_id.as_deref(), limit).await?;
    Ok(Json(json!({ "runs": runs })))
}

async fn initialize(State(core): State<Arc<Core>>) -> ApiResult {
    Ok(Json(json!(core.initialize().await?)))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such route: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

/// Adds the fields of a serializable value to a JSON object.
trait Merged {
    fn merged(self, other: &impl serde::Serialize) -> Value;
}

impl Merged for Value {
    fn merged(mut self, other: &impl serde::Serialize) -> Value {
        if let (Some(obj), Value::Object(extra)) = (self.as_object_mut(), json!(other)) {
            for (k, v) in extra {
                obj.entry(k).or_insert(v);
            }
        }
        self
    }
}
