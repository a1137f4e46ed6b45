//! The devserver's layers in front of every route: the bot token, staged rate limits, the
//! record of every request and every refusal, and Discord's 404 for what it does not serve.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::rest::fail;
use super::world::Rejection;
use super::Shared;

/// Answers 429 where a test asked for it, as Discord does: `Retry-After` and `X-RateLimit-*`
/// headers, and `retry_after` in the JSON body.
pub(super) async fn rate_limit(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = format!("{} {}", req.method(), req.uri().path());
    let limited = {
        let mut w = shared.world();
        match w.rate_limits.get_mut(&route) {
            Some((n, wait)) if *n > 0 => {
                *n -= 1;
                Some(*wait)
            }
            _ => None,
        }
    };
    let Some(wait) = limited else { return next.run(req).await };
    let secs = wait.as_secs_f64();
    let body =
        json!({ "message": "You are being rate limited.", "retry_after": secs, "global": false, "code": 0 });
    let headers = [
        ("retry-after", format!("{}", wait.as_secs_f64().ceil() as u64)),
        ("x-ratelimit-limit", "5".to_string()),
        ("x-ratelimit-remaining", "0".to_string()),
        ("x-ratelimit-reset-after", format!("{secs:.3}")),
        ("x-ratelimit-bucket", "devserver-bucket".to_string()),
        ("x-ratelimit-scope", "user".to_string()),
    ];
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    for (name, value) in headers {
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// Remembers every request, and records every one answered with an error status, with Discord's error code, so tests
/// can tell a refusal the bot provoked from one they staged.
pub(super) async fn record_rejections(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let route = format!("{} {}", req.method(), req.uri().path());
    {
        let mut w = shared.world();
        if w.requests.len() >= super::world::REQUESTS_KEPT {
            w.requests.pop_front();
        }
        w.requests.push_back(route.clone());
    }
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let rejection = Rejection {
        route,
        status: status.as_u16(),
        code: parsed["code"].as_u64().unwrap_or(0),
        message: parsed["message"].as_str().unwrap_or("").to_string(),
    };
    tracing::debug!(target: "devserver", ?rejection, "request refused");
    shared.world().rejections.push(rejection);
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

pub(super) async fn require_bot_token(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let expected = format!("Bot {}", shared.world().token);
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        tracing::warn!(target: "devserver", path = %req.uri().path(), "request with a wrong or missing bot token");
        return fail(StatusCode::UNAUTHORIZED, "401: Unauthorized", 0).into_response();
    }
    next.run(req).await
}

pub(super) async fn not_found(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    let route = format!("{method} {}", uri.path());
    tracing::warn!(target: "devserver", %route, "route not served by the devserver");
    shared.world().unknown_routes.push(route);
    fail(StatusCode::NOT_FOUND, "404: Not Found", 0).into_response()
}
