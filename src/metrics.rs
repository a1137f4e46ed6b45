//! The Prometheus metrics: every metric's name and description, the process-wide recorder
//! (installed once: tests start several bots in one process), and the text of a scrape.
//!
//! Counters and histograms are recorded where things happen, each with a one-line
//! `metrics::counter!(metrics::NAME, ...)`; the gauges that describe the present (database size,
//! models loaded and their age) are read from the service at each scrape and written after the
//! recorder's text, so a removed guild's model leaves the next scrape.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::train::{Phase, Progress};
use crate::service::{Ingested, Mode, Scrape};

/// Messages stored in the corpus.
pub const MESSAGES_STORED: &str = "mynah_messages_stored_total";
/// Messages seen but not stored, by `reason` ([`crate::service::Ingested`]).
pub const MESSAGES_REFUSED: &str = "mynah_messages_refused_total";
/// Replies sent to mentions, by `mode` (`model` or `fallback`).
pub const REPLIES: &str = "mynah_replies_total";
/// From a mention's arrival at the service to its reply text, in seconds.
pub const REPLY_SECONDS: &str = "mynah_reply_duration_seconds";
/// Candidates drawn for a model reply (the best is sent).
pub const REPLY_CANDIDATES: &str = "mynah_reply_candidates";
/// Training runs ended, by `outcome` (`succeeded`, `failed`, `cancelled`).
pub const TRAINING_RUNS: &str = "mynah_training_runs_total";
/// Tokens per second of the running (or last) training.
pub const TRAINING_TOKENS_PER_SECOND: &str = "mynah_training_tokens_per_second";
/// Discord gateway events received, by `event`.
pub const GATEWAY_EVENTS: &str = "mynah_gateway_events_total";
/// Gateway connections lost (each is followed by a reconnection).
pub const GATEWAY_RECONNECTS: &str = "mynah_gateway_reconnects_total";
/// Discord HTTP 429 answers (rate limits), by `method`.
pub const DISCORD_RATE_LIMITED: &str = "mynah_discord_rate_limited_total";
/// The SQLite database's size, read at scrape.
pub const DATABASE_BYTES: &str = "mynah_database_bytes";
/// Guild models serving, read at scrape.
pub const MODELS_LOADED: &str = "mynah_models_loaded";
/// Each serving model's age since it was trained, by `guild_id` and `run`, read at scrape.
pub const MODEL_AGE_SECONDS: &str = "mynah_model_age_seconds";

/// Buckets of [`REPLY_SECONDS`]: a tiny model answers in milliseconds, a large base in seconds.
const REPLY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of [`REPLY_CANDIDATES`].
const CANDIDATE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder for the process (once; later calls return the same handle)
/// and describes the metrics. `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REPLY_SECONDS.into()), REPLY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(REPLY_CANDIDATES.into()), CANDIDATE_BUCKETS)
                });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not install the metrics recorder; /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

/// Gives each metric its help text and unit.
fn describe() {
    describe_counter!(MESSAGES_STORED, "Messages stored in the corpus.");
    describe_counter!(MESSAGES_REFUSED, "Messages seen but not stored, by reason.");
    describe_counter!(REPLIES, "Replies to mentions, by mode (model or fallback).");
    describe_histogram!(REPLY_SECONDS, Unit::Seconds, "Time to produce a reply to a mention.");
    describe_histogram!(REPLY_CANDIDATES, Unit::Count, "Candidates drawn for a model reply.");
    describe_counter!(TRAINING_RUNS, "Training runs ended, by outcome.");
    describe_gauge!(TRAINING_TOKENS_PER_SECOND, "Tokens per second of the running or last training.");
    describe_counter!(GATEWAY_EVENTS, "Discord gateway events received, by event.");
    describe_counter!(GATEWAY_RECONNECTS, "Discord gateway connections lost and reopened.");
    describe_counter!(
        DISCORD_RATE_LIMITED,
        "Discord rate limits met: serenity's waits (global, route) and 429 answers to a reply (refused)."
    );
}

/// Counts a message seen on Discord: stored, or refused with its reason.
pub fn ingested(outcome: Ingested) {
    let reason = match outcome {
        Ingested::Stored => return metrics::counter!(MESSAGES_STORED).increment(1),
        Ingested::Duplicate => "duplicate",
        Ingested::NotCollected => "not_collected",
        Ingested::OptedOut => "opted_out",
        Ingested::FromBot => "from_bot",
        Ingested::Command => "command",
        Ingested::Empty => "empty",
        Ingested::Deleted => "deleted",
    };
    metrics::counter!(MESSAGES_REFUSED, "reason" => reason).increment(1);
}

/// Counts a reply of `mode` and how long it took since `started`.
pub fn replied(mode: Mode, started: Instant) {
    let mode = match mode {
        Mode::Model => "model",
        Mode::Fallback => "fallback",
    };
    metrics::counter!(REPLIES, "mode" => mode).increment(1);
    metrics::histogram!(REPLY_SECONDS).record(started.elapsed().as_secs_f64());
}

/// Follows a training's throughput while it optimises.
pub fn training_progress(p: &Progress) {
    if p.phase == Phase::Training {
        metrics::gauge!(TRAINING_TOKENS_PER_SECOND).set(p.tokens_per_second);
    }
}

/// The scrape: the recorder's metrics, then the gauges read from the service now.
pub fn render(handle: &PrometheusHandle, now: &Scrape) -> String {
    handle.run_upkeep();
    let mut out = handle.render();
    gauge(&mut out, DATABASE_BYTES, "The SQLite database's size in bytes.");
    let _ = writeln!(out, "{DATABASE_BYTES} {}", now.database_bytes);
    gauge(&mut out, MODELS_LOADED, "Guild models serving replies.");
    let _ = writeln!(out, "{MODELS_LOADED} {}", now.models.len());
    if !now.models.is_empty() {
        gauge(&mut out, MODEL_AGE_SECONDS, "Seconds since each serving model was trained.");
        for m in &now.models {
            let _ = writeln!(
                out,
                "{MODEL_AGE_SECONDS}{{guild_id=\"{}\",run=\"{}\"}} {}",
                label(&m.guild_id),
                label(&m.run),
                m.age_seconds
            );
        }
    }
    out
}

fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ScrapedModel;

    #[test]
    fn the_recorder_installs_once_and_a_scrape_has_the_gauges_read_at_scrape() {
        let first = install().expect("recorder") as *const _;
        assert_eq!(install().expect("same recorder") as *const _, first);
        metrics::counter!(MESSAGES_STORED).increment(1);
        let scrape = Scrape {
            database_bytes: 4096,
            models: vec![ScrapedModel { guild_id: "4\"2".into(), run: "run-1".into(), age_seconds: 60.0 }],
        };
        let text = render(install().expect("recorder"), &scrape);
        assert!(text.contains("# TYPE mynah_messages_stored_total counter"), "{text}");
        assert!(text.contains("mynah_database_bytes 4096\n"), "{text}");
        assert!(text.contains("mynah_models_loaded 1\n"), "{text}");
        assert!(text.contains("mynah_model_age_seconds{guild_id=\"4\\\"2\",run=\"run-1\"} 60\n"), "{text}");
    }
}
