//! One integration-test binary (one link step) with a module per area.

// Tests unwrap freely: a panic is a failed test with its reason.
#![allow(clippy::unwrap_used)]

mod api;
mod bases;
mod browser;
mod cli;
mod discord;
mod engine;
mod fuzz;
mod import;
mod joining;
mod metrics;
mod page;
mod plots;
mod postgres;
mod privacy;
mod remote;
mod resilience;
mod schedule;
mod shards;
mod slash;
mod store;
mod strict;
mod support;
mod workers;
