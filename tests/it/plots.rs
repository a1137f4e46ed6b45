//! The pictures end to end: `!llmstats` (prefix and slash) attaches the guild's PNG, and
//! `/api/ml/runs/{id}/loss.png` serves a run's loss curve.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::support::{Harness, WAIT};

/// Decodes a PNG and returns its size.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let info = reader.next_frame(&mut pixels).expect("the picture decodes");
    (info.width, info.height)
}

/// The one PNG a bot message carries.
fn picture(m: &mynah::devserver::Posted) -> Vec<u8> {
    let pngs: Vec<_> = m.attachments.iter().filter(|(name, _)| name.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 1, "one picture attached: {:?}", m.request);
    pngs[0].1.clone()
}

async fn get(h: &Harness, uri: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let res = mynah::api::router(h.core.clone()).oneshot(req).await.unwrap();
    let kind = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let status = res.status();
    (status, kind, res.into_body().collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmstats_attaches_a_picture_even_before_any_message_or_run() {
    let h = Harness::start().await;
    let reply = h.ask(h.general, h.member, "!llmstats").await;
    assert!(reply.content.contains("**Messages collected:** 0"), "{}", reply.content);
    assert_eq!(png_size(&picture(&reply)), mynah::plot::GUILD_SIZE);
    assert_eq!(reply.request["allowed_mentions"]["parse"], json!([]), "{}", reply.request);

    // The slash command's answer (a deferred one, filled in by a follow-up) carries it too.
    h.server.wait_for(WAIT, || (!h.server.registered_commands().is_empty()).then_some(())).await.unwrap();
    let id = h.server.slash(h.general, h.member, "llmstats", json!([]));
    let answer = h.server.wait_for_answer(id, WAIT).await.expect("an answer to /llmstats");
    assert_eq!(png_size(&picture(&answer)), mynah::plot::GUILD_SIZE);

    let (status, _, body) = get(&h, "/api/ml/runs/12345/loss.png").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("12345"), "{error}");
    let (status, _, _) = get(&h, "/api/ml/runs/latest/loss.png").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_training_llmstats_and_the_loss_png_show_its_curve() {
    let h = Harness::start().await;
    h.core.import_jsonl(crate::support::sample(), Some(&h.guild.to_string()), true).await.unwrap();
    let reply = h.ask(h.general, h.admin, "!llmtrain force").await;
    assert!(reply.content.starts_with("Training started"), "{}", reply.content);
    let last = h.wait_training_done().await;
    assert_eq!(last.outcome, mynah::store::RunOutcome::Succeeded, "{last:?}");

    // The curve was stored as the run trained: losses, the evaluations during training and the
    // final one, which matches the run's own figure.
    let curve = h.core.run_curve(last.run_id).await.unwrap();
    assert!(curve.len() > 5, "{curve:?}");
    assert!(curve.windows(2).all(|w| w[0].step < w[1].step && w[0].tokens <= w[1].tokens), "{curve:?}");
    let evaluated: Vec<f64> = curve.iter().filter_map(|p| p.val_bpb).collect();
    assert!(evaluated.len() >= 2, "evaluations during training and at the end: {curve:?}");
    assert_eq!(evaluated.last().copied(), last.val_bits_per_byte);

    let stats = h.ask(h.general, h.member, "!llmstats").await;
    assert!(stats.content.contains("**Mode:** model"), "{}", stats.content);
    assert_eq!(png_size(&picture(&stats)), mynah::plot::GUILD_SIZE);

    let (status, kind, body) = get(&h, &format!("/api/ml/runs/{}/loss.png", last.run_id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind.as_deref(), Some("image/png"));
    assert_eq!(png_size(&body), mynah::plot::RUN_SIZE);
    h.stop().await;
}
