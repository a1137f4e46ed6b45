//! The Discord layer's metrics: gateway events by kind, connections lost, and the waits
//! serenity's rate limiter reports (a global 429, or a route whose bucket is spent).

use poise::serenity_prelude as serenity;

use crate::metrics::{DISCORD_RATE_LIMITED, GATEWAY_EVENTS, GATEWAY_RECONNECTS};

/// Counts a gateway event (as the framework receives it).
pub fn gateway_event(event: &serenity::FullEvent) {
    metrics::counter!(GATEWAY_EVENTS, "event" => event.snake_case_name()).increment(1);
}

/// Receives what serenity gives event handlers only, never the poise framework: shard stage
/// changes and the rate limiter's callback.
pub struct Telemetry;

#[serenity::async_trait]
impl serenity::EventHandler for Telemetry {
    /// A shard leaving the connected stage has lost its connection, which serenity reopens
    /// (resuming the session where it can).
    async fn shard_stage_update(&self, _: serenity::Context, event: serenity::ShardStageUpdateEvent) {
        if event.old == serenity::ConnectionStage::Connected
            && event.new != serenity::ConnectionStage::Connected
        {
            metrics::counter!(GATEWAY_RECONNECTS).increment(1);
        }
    }

    async fn ratelimit(&self, info: serenity::RatelimitInfo) {
        let scope = if info.global { "global" } else { "route" };
        metrics::counter!(DISCORD_RATE_LIMITED, "scope" => scope).increment(1);
        tracing::debug!(path = %info.path, seconds = info.timeout.as_secs_f64(), scope, "waiting for a Discord rate limit");
    }
}
