//! The admins' status page: `GET /` as one server-rendered HTML page (guilds, models, the
//! training with a live progress bar fed by `GET /api/ml/training/events`, the last runs and the
//! latest run's loss curve), and its login (`POST /login`, `POST /logout`) that turns the API token
//! into a session cookie. Every piece of text from Discord or the store is HTML-escaped.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::Stream;

use super::auth::{self, Access};
use super::ApiError;
use crate::models::trainer::{TrainingState, TrainingView};
use crate::service::{Core, Mode, Status};
use crate::store::{RunOutcome, RunRow};

const TEMPLATE: &str = include_str!("page.html");
/// The live progress sends at most this often; changes in between are merged.
const EVENT_GAP: Duration = Duration::from_millis(200);
/// How long a login lasts.
const SESSION_SECONDS: u64 = 7 * 24 * 3600;
/// The page's runs table.
const RUNS_SHOWN: u32 = 10;

/// The page's routes; [`auth::check`] lets visitors without credentials reach only
/// [`is_login_route`]s.
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/api/ml/training/events", get(events))
}

/// The routes a visitor without credentials may reach: the page (which then shows the login
/// form), the login and the logout.
pub fn is_login_route(method: &Method, path: &str) -> bool {
    matches!((method, path), (&Method::GET | &Method::HEAD, "/") | (&Method::POST, "/login" | "/logout"))
}

/// The routes whose POST bodies are forms, not JSON.
pub fn takes_forms(path: &str) -> bool {
    matches!(path, "/login" | "/logout")
}

/// The answer to a visitor the failure throttle refuses.
pub fn refused(why: &str) -> Response {
    html(StatusCode::TOO_MANY_REQUESTS, "mynah: sign in", &login_form(Some(why), false))
}

async fn index(
    State(core): State<Arc<Core>>,
    access: Option<Extension<Access>>,
) -> Result<Response, ApiError> {
    let has_token = core.config().api_token.is_some();
    if access.map(|a| a.0) == Some(Access::Visitor) {
        return Ok(html(StatusCode::OK, "mynah: sign in", &login_form(None, false)));
    }
    let status = core.status().await?;
    let runs = core.runs(None, RUNS_SHOWN).await?;
    let mut channels = Vec::new();
    let mut names = Vec::new();
    for g in &status.guilds {
        channels.push(core.channel_summaries(&g.guild_id).await?);
        names.push(core.guild_name(&g.guild_id));
    }
    let mut body = header_bar(&status, has_token);
    body.push_str("<main>");
    guilds(&mut body, &status, &channels, &names);
    models(&mut body, &status);
    training(&mut body, &status.training);
    runs_table(&mut body, &runs);
    if let Some(latest) = runs.first() {
        let live = if latest.outcome == RunOutcome::Running { " data-live" } else { "" };
        let _ = write!(
            body,
            "<section class=\"plot\"><h2>Loss of run {id}</h2><img id=\"loss-plot\"{live} src=\"/api/ml/runs/{id}/loss.png\" alt=\"the loss curve of run {id}\"></section>",
            id = latest.id
        );
    }
    body.push_str("</main>");
    Ok(html(StatusCode::OK, "mynah status", &body))
}

/// Checks the token from the login form; on success sets the session cookie and goes back to
/// the page, else shows the form again (and [`auth::check`] counts the failure).
async fn login(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = core.config().api_token.clone() else {
        return see_other("/", None);
    };
    // A form posted from another site: never a sign-in an admin meant.
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return html(
            StatusCode::FORBIDDEN,
            "mynah: sign in",
            &login_form(Some("sign in from this page"), false),
        );
    }
    let given = url::form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    if given.as_deref().is_some_and(|g| auth::is_token(g.trim(), &token)) {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
            auth::COOKIE,
            auth::session_value(&token),
            secure(&headers)
        );
        return see_other("/", Some(cookie));
    }
    let mut response =
        html(StatusCode::UNAUTHORIZED, "mynah: sign in", &login_form(Some("wrong token"), true));
    response.extensions_mut().insert(auth::LoginFailed);
    response
}

async fn logout(headers: HeaderMap) -> Response {
    let cookie =
        format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}", auth::COOKIE, secure(&headers));
    see_other("/", Some(cookie))
}

/// The training's every change, as server-sent events of [`TrainingView`] JSON (the same as
/// `training` in `GET /api/ml/status`), the current state first.
async fn events(State(core): State<Arc<Core>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold((core.watch_training(), true), |(mut watch, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_GAP).await;
            watch.changed().await.ok()?;
        }
        let view = watch.borrow_and_update().clone();
        let event = Event::default().json_data(&view).unwrap_or_else(|_| Event::default().comment("?"));
        Some((Ok(event), (watch, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `; Secure` when the request came over HTTPS (through a proxy that says so): on the usual
/// loopback HTTP a Secure cookie would never come back.
fn secure(headers: &HeaderMap) -> &'static str {
    let forwarded =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let https = forwarded("x-forwarded-proto").split(',').next().is_some_and(|p| p.trim() == "https")
        || forwarded("forwarded").split(';').any(|p| p.trim() == "proto=https");
    if https {
        "; Secure"
    } else {
        ""
    }
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The page around `body`, with a fresh nonce that alone lets its inline style and script run.
fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let nonce = format!("{:032x}", rand::random::<u128>());
    let page =
        TEMPLATE.replace("{{title}}", &esc(title)).replace("{{nonce}}", &nonce).replace("{{body}}", body);
    let csp = format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn login_form(error: Option<&str>, wrong: bool) -> String {
    let error = error.map(|e| format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>", esc(e)));
    format!(
        "<form class=\"login\" method=\"post\" action=\"/login\"><h1>mynah</h1>\
         <label for=\"token\">API token (<code>MYNAH_API_TOKEN</code>)</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus{}>\
         {}<button id=\"sign-in\" type=\"submit\">Sign in</button></form>",
        if wrong { " aria-invalid=\"true\"" } else { "" },
        error.unwrap_or_default()
    )
}

fn header_bar(status: &Status, has_token: bool) -> String {
    let logout = if has_token {
        "<form method=\"post\" action=\"/logout\"><button id=\"sign-out\" type=\"submit\">Sign out</button></form>"
    } else {
        ""
    };
    format!(
        "<header><h1>mynah</h1><span class=\"meta\">version {} · {} · up {}</span>{logout}</header>",
        esc(status.version),
        esc(&status.engine),
        duration(status.uptime_seconds as f64)
    )
}

fn guilds(
    out: &mut String,
    status: &Status,
    channels: &[Vec<crate::store::ChannelSummary>],
    names: &[Option<String>],
) {
    out.push_str("<section id=\"guilds\"><h2>Guilds</h2>");
    if status.guilds.is_empty() {
        out.push_str("<p class=\"muted\">No messages collected yet.</p></section>");
        return;
    }
    out.push_str("<table><tr><th>guild</th><th>channels</th><th>messages</th><th>authors</th><th>mode</th><th>why</th></tr>");
    for ((g, chans), name) in status.guilds.iter().zip(channels).zip(names) {
        let names: Vec<String> =
            chans.iter().map(|c| format!("#{} ({})", esc(&c.name), c.messages)).collect();
        // The name Discord gave, with the ID beneath; the ID alone for a guild not seen since
        // the start (or an imported corpus's own name).
        let guild = match name {
            Some(n) => format!("{}<br><span class=\"muted\">{}</span>", esc(n), esc(&g.guild_id)),
            None => esc(&g.guild_id),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            guild,
            names.join(", "),
            g.messages,
            g.authors,
            mode(g.mode),
            esc(&g.mode_reason.to_string())
        );
    }
    out.push_str("</table></section>");
}

fn models(out: &mut String, status: &Status) {
    out.push_str("<section id=\"models\"><h2>Models</h2>");
    if status.models.is_empty() {
        out.push_str(
            "<p class=\"muted\">No guild has a model yet: replies come from the fallback.</p></section>",
        );
        return;
    }
    out.push_str("<table><tr><th>guild</th><th>run</th><th>parameters</th><th>preset</th><th>trained</th><th>messages</th><th>validation bits/byte</th><th>stale</th></tr>");
    for m in &status.models {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&m.guild_id),
            esc(&m.run),
            m.params,
            esc(&m.preset),
            esc(&m.trained_at),
            m.corpus_messages,
            m.val_bits_per_byte.map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into()),
            m.stale.as_ref().map(|s| format!("<span class=\"bad\">{}</span>", esc(&s.reason))).unwrap_or_default()
        );
    }
    out.push_str("</table></section>");
}

/// The live part: shown while a run trains, updated by the page's script.
fn training(out: &mut String, view: &TrainingView) {
    let running = view.state == TrainingState::Running;
    let (value, max) = match &view.progress {
        Some(p) if p.total_steps > 0 => (format!(" value=\"{}\"", p.step), p.total_steps),
        _ => (String::new(), 1),
    };
    let text = match (&view.run_id, &view.progress) {
        (Some(run), Some(p)) => format!("run {run} · {} · step {}/{}", p.phase, p.step, p.total_steps),
        (Some(run), None) => format!("run {run} · starting"),
        _ => String::new(),
    };
    let _ = write!(
        out,
        "<section id=\"training\" data-state=\"{}\" data-run=\"{}\"{}><h2>Training</h2>\
         <progress id=\"train-progress\" max=\"{max}\"{value}></progress><p id=\"train-text\">{}</p></section>",
        if running { "running" } else { "idle" },
        view.run_id.map(|id| id.to_string()).unwrap_or_default(),
        if running { "" } else { " hidden" },
        esc(&text)
    );
}

fn runs_table(out: &mut String, runs: &[RunRow]) {
    out.push_str("<section id=\"runs\"><h2>Last runs</h2>");
    if runs.is_empty() {
        out.push_str("<p class=\"muted\">No training has run yet.</p></section>");
        return;
    }
    out.push_str("<table><tr><th>run</th><th>guild</th><th>trigger</th><th>started</th><th>took</th><th>outcome</th><th>steps</th><th>validation bits/byte</th><th>error</th></tr>");
    for r in runs {
        let started = chrono::DateTime::from_timestamp_millis(r.started_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_default();
        let outcome = r.outcome.as_str();
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            r.id,
            esc(&r.guild_id),
            esc(&r.trigger),
            started,
            r.duration_ms.map(|ms| duration(ms as f64 / 1000.0)).unwrap_or_default(),
            if outcome == "failed" { "bad" } else { "" },
            outcome,
            r.steps.map(|s| s.to_string()).unwrap_or_default(),
            r.val_bpb.map(|v| format!("{v:.3}")).unwrap_or_default(),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table></section>");
}

fn mode(m: Mode) -> &'static str {
    match m {
        Mode::Model => "<span class=\"mode mode-model\">model</span>",
        Mode::Fallback => "<span class=\"mode mode-fallback\">fallback</span>",
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Text made safe inside HTML elements and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc("<img src=x onerror='a'>&\""), "&lt;img src=x onerror=&#39;a&#39;&gt;&amp;&quot;");
    }

    #[test]
    fn only_the_page_and_its_login_are_open_to_visitors() {
        assert!(is_login_route(&Method::GET, "/"));
        assert!(is_login_route(&Method::POST, "/login"));
        assert!(!is_login_route(&Method::GET, "/api/ml/training/events"));
        assert!(!is_login_route(&Method::POST, "/"));
        assert!(!is_login_route(&Method::GET, "/metrics"));
    }

    #[test]
    fn the_training_section_names_its_run_only_once_the_run_is_recorded() {
        // The page's script reloads when the events name a run other than `data-run`: a page
        // drawn before the run's row existed must not count as showing it.
        let mut view = TrainingView { state: TrainingState::Running, ..TrainingView::default() };
        let mut out = String::new();
        training(&mut out, &view);
        assert!(out.contains("data-state=\"running\" data-run=\"\">"), "{out}");
        view.run_id = Some(7);
        out.clear();
        training(&mut out, &view);
        assert!(out.contains("data-state=\"running\" data-run=\"7\">"), "{out}");
        assert!(out.contains("run 7 · starting"), "{out}");
        out.clear();
        training(&mut out, &TrainingView::default());
        assert!(out.contains("data-state=\"idle\" data-run=\"\" hidden>"), "{out}");
    }

    #[test]
    fn the_cookie_is_secure_only_behind_https() {
        let mut h = HeaderMap::new();
        assert_eq!(secure(&h), "");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(secure(&h), "; Secure");
    }
}
