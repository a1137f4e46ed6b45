//! The status page's rules without a browser: the login form, the session cookie, what the
//! cookie opens and what it does not, the failure throttle, and escaping.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mynah::config::Secret;
use mynah::service::Core;
use mynah::store::Store;
use tower::ServiceExt;

use crate::support;

const TOKEN: &str = "a-page-token-of-28-characters";

struct Page {
    core: Arc<Core>,
    /// One router, so its failure throttle sees every attempt.
    router: axum::Router,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Page {
    async fn new(token: Option<&str>) -> Page {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::config(dir.path());
        cfg.api_token = token.map(Secret::new);
        let store = Store::open(&cfg.database_url).await.unwrap();
        let core = Core::open(cfg, store).await.unwrap();
        Page { router: mynah::api::router(core.clone()), core, _dir: dir }
    }

    async fn send(&self, req: axum::http::request::Builder, body: &str) -> Answer {
        let res = self.router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut req = Request::builder().uri(path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        self.send(req, "").await
    }

    async fn login(&self, token: &str, extra: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method("POST")
            .uri("/login")
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let body: String =
            url::form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish();
        self.send(req, &body).await
    }
}

/// `name=value` of the answer's Set-Cookie.
fn cookie_of(a: &Answer) -> (String, String) {
    let set = a.headers.get("set-cookie").expect("a cookie is set").to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

#[tokio::test]
async fn the_page_asks_for_the_token_and_its_cookie_opens_reads_but_not_writes() {
    let page = Page::new(Some(TOKEN)).await;
    let form = page.get("/", None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("action=\"/login\"") && !form.body.contains("id=\"guilds\""), "{}", form.body);
    let csp = form.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'nonce-"), "{csp}");
    assert_eq!(page.get("/api/ml/training/events", None).await.status, StatusCode::UNAUTHORIZED);

    let wrong = page.login("not the token", &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        wrong.body.contains("wrong token") && wrong.headers.get("set-cookie").is_none(),
        "{}",
        wrong.body
    );

    let ok = page.login(TOKEN, &[]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.headers["location"], "/");
    let (cookie, set) = cookie_of(&ok);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP on loopback: {set}");
    assert!(!set.contains(TOKEN), "the cookie is not the token: {set}");
    let behind_tls = page.login(TOKEN, &[("x-forwarded-proto", "https")]).await;
    assert!(cookie_of(&behind_tls).1.contains("; Secure"));

    let shown = page.get("/", Some(&cookie)).await;
    assert!(shown.body.contains("id=\"guilds\"") && shown.body.contains("Sign out"), "{}", shown.body);
    assert_eq!(page.get("/api/ml/status", Some(&cookie)).await.status, StatusCode::OK);
    assert_eq!(page.get("/metrics", Some(&cookie)).await.status, StatusCode::OK);
    assert_eq!(
        page.get("/api/ml/status", Some("mynah_session=forged")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Writing still takes the bearer token: a cookie alone changes nothing.
    let train = Request::builder()
        .method("POST")
        .uri("/api/ml/train")
        .header("content-type", "application/json")
        .header("cookie", &cookie);
    assert_eq!(page.send(train, "{}").await.status, StatusCode::UNAUTHORIZED);

    let out = page
        .send(
            Request::builder()
                .method("POST")
                .uri("/logout")
                .header("content-type", "application/x-www-form-urlencoded"),
            "",
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(cookie_of(&out).1.contains("Max-Age=0"));
}

#[tokio::test]
async fn wrong_tokens_in_the_form_are_throttled_but_looking_at_the_form_is_not() {
    let page = Page::new(Some(TOKEN)).await;
    for _ in 0..30 {
        assert_eq!(page.get("/", None).await.status, StatusCode::OK, "showing the form is no failure");
    }
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(page.login("guess", &[]).await.status);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let refused = page.login(TOKEN, &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "refused without the token being looked at");
    assert!(refused.body.contains("too many failed attempts"), "{}", refused.body);
    let cross = Page::new(Some(TOKEN)).await.login(TOKEN, &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "a form posted from another site");
}

#[tokio::test]
async fn without_a_token_the_page_is_open_and_escapes_what_discord_named() {
    let page = Page::new(None).await;
    let line = r#"{"id":"1","guild_id":"42","channel_id":"7","channel":"<script>alert(1)</script>","author_id":"9","author":"a","content":"hi","timestamp":"2026-01-01T00:00:00Z"}"#;
    page.core.import_jsonl(line, None, true).await.unwrap();
    page.core.guild_seen("42", "Tom & Jerry's <b>server</b>");
    let shown = page.get("/", None).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body.contains("Tom &amp; Jerry&#39;s &lt;b&gt;server&lt;/b&gt;<br>"), "{}", shown.body);
    assert!(shown.body.contains("#&lt;script&gt;alert(1)&lt;/script&gt; (1)"), "{}", shown.body);
    assert!(!shown.body.contains("<script>alert"), "{}", shown.body);
    assert!(!shown.body.contains("Sign out"), "nothing to sign out of");
    assert!(shown.body.contains("No training has run yet"), "{}", shown.body);
}
