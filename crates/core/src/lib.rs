//! twitch_sync's core, free of Postgres: everything here is plain Rust that
//! `cargo test` covers without a database.
//!
//! Flow: [`engine::sync_streaming`] takes a [`engine::SyncInput`] (settings,
//! credentials, cached token, channel ids, last rate-limit headers), plans
//! batches of 100 ids ([`streams::plan_batches`]), sends Get Streams requests
//! concurrently through the [`ratelimit::RateLimiter`] with the
//! [`client::TwitchClient`], parses and checks answers
//! ([`streams::parse_streams_page`], [`streams::BatchMerge`]) and sends each
//! batch's [`engine::BatchResult`] as it completes (the database layer collects
//! them in a [`engine::BatchBuffer`] and writes them); it returns a
//! [`engine::PassSummary`], from which [`report::RunReport`] builds the result
//! document.

pub mod adaptive;
pub mod client;
pub mod concurrency;
pub mod config;
pub mod cron;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod eventsub;
pub mod ratelimit;
pub mod report;
pub mod rng;
pub mod rolled_back;
pub mod streams;

pub use config::SyncConfig;
pub use engine::{
    sync_streaming, BatchBuffer, BatchFailure, BatchResult, CachedToken, Credentials, LiveSet,
    PassSummary, SyncInput,
};
pub use error::HelixError;
pub use report::{Applied, RunReport, RunStatus};
pub use streams::{BadEntries, Cleaned, EntryStats, LiveStream};
