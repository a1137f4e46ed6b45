//! Who may call the HTTP API. With `MYNAH_API_TOKEN` set, every route needs it as a bearer
//! token (compared in constant time), except `GET /healthz` (no data) and, when the operator
//! opts in with `MYNAH_PUBLIC_STATUS`, a public form of `GET /api/ml/status`. The status page's
//! login turns the token into a session cookie, accepted instead of it on reads (`GET`); without
//! either, the page shows its login form. A client that fails too often is refused for a while
//! without its token being looked at.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::Secret;
use crate::service::Core;

/// Failed attempts a client may make per minute before it is refused for a while.
const FAILURES_PER_MINUTE: u32 = 10;

/// What a request may see, set by [`check`] for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The token was presented, or none is configured.
    Full,
    /// The public status an operator opted into: no IDs, no error text.
    Public,
    /// No credentials, on the status page's own routes: they show the login form and nothing
    /// else.
    Visitor,
}

/// Set on a response by the login form when the token given was wrong: [`check`] counts it as a
/// failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct LoginFailed;

/// The name of the status page's session cookie.
pub const COOKIE: &str = "mynah_session";

/// The session cookie's value for `token`: a hash of it, so the cookie does not carry the token
/// itself and stops working when the token changes.
pub fn session_value(token: &Secret) -> String {
    let digest =
        Sha256::new().chain_update(b"mynah status page session\n").chain_update(token.expose()).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `given` is the token, compared in constant time.
pub fn is_token(given: &str, token: &Secret) -> bool {
    bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

/// The failure throttle: a GCRA budget per client address (governor), and the addresses refused
/// until a time because they spent it.
pub struct Guard {
    failures: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>,
    refused_until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for Guard {
    fn default() -> Self {
        let per_minute = NonZeroU32::new(FAILURES_PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        Guard {
            failures: RateLimiter::hashmap(Quota::per_minute(per_minute)),
            refused_until: Mutex::default(),
        }
    }
}

impl Guard {
    /// How long `ip` must still wait, if it is refused now.
    fn refused(&self, ip: IpAddr) -> Option<Duration> {
        let mut refused = self.refused_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = *refused.get(&ip)?;
        let now = Instant::now();
        if until <= now {
            refused.remove(&ip);
            return None;
        }
        Some(until - now)
    }

    /// Counts a failed attempt; once the budget is spent the address is refused until the
    /// budget has room again.
    fn failed(&self, ip: IpAddr) {
        if let Err(not_until) = self.failures.check_key(&ip) {
            let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
            let mut refused = self.refused_until.lock().unwrap_or_else(|p| p.into_inner());
            refused.retain(|_, until| *until > Instant::now());
            refused.insert(ip, Instant::now() + wait);
            tracing::warn!(%ip, seconds = wait.as_secs(), "too many failed API authentications; refusing for a while");
        }
        self.failures.retain_recent();
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn presents(req: &Request, token: &Secret) -> Option<bool> {
    let given = req.headers().get(header::AUTHORIZATION)?.to_str().ok().unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or("");
    Some(is_token(given, token))
}

/// Whether the request carries the session cookie of `token`.
fn has_session(req: &Request, token: &Secret) -> bool {
    let wanted = session_value(token);
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && bool::from(value.as_bytes().ct_eq(wanted.as_bytes())))
}

/// The middleware in front of every route.
pub async fn check(
    State((core, guard)): State<(Arc<Core>, Arc<Guard>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = core.config().api_token.clone() else {
        req.extensions_mut().insert(Access::Full);
        return next.run(req).await;
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if method == Method::GET && path == "/healthz" {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Some(wait) = guard.refused(ip) {
        let why = format!("too many failed attempts; try again in {} s", wait.as_secs().max(1));
        let mut response = if super::page::is_login_route(&method, &path) {
            super::page::refused(&why)
        } else {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, why).into_response()
        };
        if let Ok(v) = axum::http::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let bearer = presents(&req, &token);
    // The cookie is for reading: a page elsewhere cannot make a browser change anything with it
    // (and SameSite=Strict keeps other sites' requests from carrying it at all).
    let reads = method == Method::GET || method == Method::HEAD;
    match bearer {
        Some(true) => {
            req.extensions_mut().insert(Access::Full);
            next.run(req).await
        }
        None if reads && has_session(&req, &token) => {
            req.extensions_mut().insert(Access::Full);
            next.run(req).await
        }
        None if super::page::is_login_route(&method, &path) => {
            req.extensions_mut().insert(Access::Visitor);
            let response = next.run(req).await;
            if response.extensions().get::<LoginFailed>().is_some() {
                guard.failed(ip);
            }
            response
        }
        None if method == Method::GET && path == "/api/ml/status" && core.config().public_status => {
            req.extensions_mut().insert(Access::Public);
            next.run(req).await
        }
        _ => {
            guard.failed(ip);
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <MYNAH_API_TOKEN>",
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_keeps_failing_is_refused_for_a_while_and_others_are_not() {
        let guard = Guard::default();
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FAILURES_PER_MINUTE {
            assert!(guard.refused(bad).is_none());
            guard.failed(bad);
        }
        guard.failed(bad);
        let wait = guard.refused(bad).expect("refused after spending its budget");
        assert!(wait <= Duration::from_secs(60), "{wait:?}");
        assert!(guard.refused("10.0.0.2".parse().unwrap()).is_none());
    }
}
