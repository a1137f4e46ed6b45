//! `GET /metrics`: the Prometheus scrape of a real bot after messages, mentions and a training.
//! The recorder is one per process and the tests share it, so counters are checked as at least
//! what this test caused.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mynah::config::Secret;
use tower::ServiceExt;

use crate::support::Harness;

const TOKEN: &str = "a-metrics-token-of-32-characters";

pub async fn scrape(h: &Harness, token: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().uri("/metrics");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = mynah::api::router(h.core.clone()).oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The value of one series (name and labels exactly as rendered).
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_messages_replies_and_training_and_need_the_token() {
    let h = Harness::start_with(|cfg| cfg.api_token = Some(Secret::new(TOKEN))).await;
    let bot = h.server.bot_id();
    for text in ["hello there", "how is everyone", "nice weather today"] {
        h.server.say(h.general, h.member, text);
    }
    h.server.say(h.offtopic, h.member, "this channel is not collected");
    h.wait_stored(3).await;
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> hi")).await;
    assert!(reply.content.contains("still learning"), "{}", reply.content);

    let (status, body) = scrape(&h, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = scrape(&h, Some("not-the-token-of-32-characters!!")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, text) = scrape(&h, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("# TYPE mynah_messages_stored_total counter"), "{text}");
    assert!(value(&text, "mynah_messages_stored_total") >= 3.0);
    assert!(value(&text, "mynah_messages_refused_total{reason=\"not_collected\"}") >= 1.0);
    assert!(value(&text, "mynah_replies_total{mode=\"fallback\"}") >= 1.0);
    assert!(value(&text, "mynah_reply_duration_seconds_count") >= 1.0);
    assert!(value(&text, "mynah_reply_duration_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert!(value(&text, "mynah_gateway_events_total{event=\"message\"}") >= 5.0);
    assert!(value(&text, "mynah_gateway_events_total{event=\"ready\"}") >= 1.0);
    assert!(value(&text, "mynah_database_bytes") > 4096.0);
    assert!(text.contains("# TYPE mynah_models_loaded gauge"), "{text}");

    // A tiny training, then a mention the model answers.
    h.core.import_jsonl(crate::support::sample(), Some(&h.guild.to_string()), true).await.unwrap();
    let started = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(started.content.starts_with("Training started"), "{}", started.content);
    assert_eq!(h.wait_training_done().await.outcome, mynah::store::RunOutcome::Succeeded);
    let reply = h.ask(h.general, h.member, &format!("<@{bot}> anyone going to the meetup?")).await;
    assert!(!reply.content.contains("still learning"), "{}", reply.content);

    let (_, text) = scrape(&h, Some(TOKEN)).await;
    assert!(value(&text, "mynah_training_runs_total{outcome=\"succeeded\"}") >= 1.0);
    assert!(value(&text, "mynah_training_tokens_per_second") > 0.0);
    assert!(value(&text, "mynah_replies_total{mode=\"model\"}") >= 1.0);
    assert!(value(&text, "mynah_reply_candidates_count") >= 1.0);
    assert!(value(&text, "mynah_reply_candidates_sum") >= 1.0);
    assert_eq!(value(&text, "mynah_models_loaded"), 1.0);
    let age = value(&text, &format!("mynah_model_age_seconds{{guild_id=\"{}\",run=\"run-1\"}}", h.guild));
    assert!((0.0..600.0).contains(&age), "{age}");
    h.stop().await;
}
