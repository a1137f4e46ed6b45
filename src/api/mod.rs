//! The HTTP API (axum), compatible with the old bot's clients. Every handler is a thin adapter
//! over [`crate::service::Core`]; errors are JSON `{"error": "..."}` with a fitting status.
//! Beside the JSON routes: the admins' status page at `/` (`page`) and the Prometheus scrape at
//! `/metrics` (`metrics`), behind the same token (`auth`).

mod auth;
mod metrics;
mod page;
mod serve;

pub use serve::{serve_with, Limits};

/// A whole request (headers to response) may take this long; then 408.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// A request body must arrive within this; a model bundle (up to 512 MiB) gets longer.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
const BUNDLE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);
/// Requests served at once; more wait their turn.
const IN_FLIGHT: usize = 64;

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
            ServiceError::Queued { guild_id, position } => {
                return ApiError {
                    status: StatusCode::ACCEPTED,
                    body: json!({ "started": false, "queued": true, "position": position, "guild_id": guild_id }),
                }
            }
            ServiceError::Delegated { guild_id, job, ahead } => {
                return ApiError {
                    status: StatusCode::ACCEPTED,
                    body: json!({
                        "started": false,
                        "queued": true,
                        "worker_job": job,
                        "ahead": ahead,
                        "guild_id": guild_id,
                    }),
                }
            }
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
            ServiceError::AlreadyRunning { .. }
            | ServiceError::NothingToTrain
            | ServiceError::UploadInProgress => StatusCode::CONFLICT,
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
        // The upload streams to disk and `install_bundle_stream` caps it (axum's body limit only
        // applies to extractors that buffer).
        .route("/api/training/model", post(upload_model))
        .route_layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BUNDLE_DEADLINE))
        .route_layer(middleware::from_fn_with_state(core.clone(), remote_allowed));
    let guard = Arc::new(auth::Guard::default());
    crate::metrics::install();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/ml/status", get(status))
        .route("/api/ml/train", post(train).delete(cancel))
        .route("/api/ml/should-train", get(should_train))
        .route("/api/ml/initialize", post(initialize))
        .route("/api/ml/runs", get(runs))
        .route("/metrics", get(metrics::scrape))
        .merge(page::routes())
        .route("/api/ml/runs/{id}/loss.png", get(run_loss))
        .route_layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_DEADLINE,
        ))
        .route_layer(tower_http::timeout::RequestBodyTimeoutLayer::new(BODY_DEADLINE))
        .merge(remote)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_posts_only))
        .layer(middleware::from_fn_with_state((core.clone(), guard), auth::check))
        .layer(tower::limit::ConcurrencyLimitLayer::new(IN_FLIGHT))
        .with_state(core)
}

/// Serves the API on `listener` until `shutdown` resolves, with the default [`Limits`].
pub async fn serve(
    core: Arc<Core>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(core, listener, shutdown, Limits::default()).await
}

/// Remote training hands out the whole corpus and replaces models: without a token configured
/// its routes stay shut (with one, [`auth::check`] has already checked it).
async fn remote_allowed(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    if core.config().api_token.is_none() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "remote training is off: set MYNAH_API_TOKEN on this instance to allow it",
        )
        .into_response();
    }
    next.run(req).await
}

/// POST bodies must say they are JSON (or, for a model bundle, binary): a web page can post a
/// form or text to a loopback API without asking, but not a JSON body.
async fn json_posts_only(req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let kind = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let kind = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let wanted = if page::takes_forms(req.uri().path()) {
            kind == "application/x-www-form-urlencoded"
        } else if req.uri().path() == "/api/training/model" {
            ["application/octet-stream", "application/x-tar", "application/gzip"].contains(&kind.as_str())
        } else {
            kind == "application/json" || (kind.is_empty() && is_empty_body(&req))
        };
        if !wanted {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("send the body as application/json (or a bundle as application/octet-stream), not {kind:?}"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// A POST without a body (`curl -X POST`) needs no content type: there is nothing to read.
fn is_empty_body(req: &Request) -> bool {
    axum::body::HttpBody::size_hint(req.body()).exact() == Some(0)
}

/// Liveness for load balancers and Docker: no data, no token needed.
async fn healthz() -> Json<Value> {
    Json(json!({ "ok": true }))
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
    body: axum::body::Body,
) -> ApiResult {
    let guild = required_guild(query)?;
    let installed = core.install_bundle_stream(&guild, body.into_data_stream()).await?;
    Ok(Json(json!({ "installed": true, "guild_id": installed.guild_id, "run_id": installed.run_id })))
}

async fn status(State(core): State<Arc<Core>>, access: Option<axum::Extension<auth::Access>>) -> ApiResult {
    let status = core.status().await?;
    if access.map(|a| a.0) != Some(auth::Access::Public) {
        return Ok(Json(json!(status)));
    }
    // The public form: what a status page shows, without guild IDs, user IDs or error text.
    Ok(Json(json!({
        "mode": status.mode,
        "guilds": status.guilds.len(),
        "models": status.models.len(),
        "training": status.training.state,
        "uptime_seconds": status.uptime_seconds,
        "version": status.version,
    })))
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

/// A run's loss curve as a PNG picture; 404 for a run that does not exist.
async fn run_loss(
    State(core): State<Arc<Core>>,
    id: Result<axum::extract::Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Path(id) =
        id.map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such run: the run ID is a number"))?;
    let png = core.run_loss_picture(id).await?;
    let png = png.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run {id}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], png).into_response())
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
