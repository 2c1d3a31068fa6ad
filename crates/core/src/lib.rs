//! twitch_sync's core, free of Postgres: everything here is plain Rust that
//! `cargo test` covers without a database.
//!
//! Flow: [`engine::sync`] takes a [`engine::SyncInput`] (settings, credentials,
//! cached token, channel ids, last rate-limit headers), plans batches of 100
//! ids ([`streams::plan_batches`]), sends Get Streams requests concurrently
//! through the [`ratelimit::RateLimiter`] with the [`client::TwitchClient`],
//! parses answers ([`streams::parse_streams_page`]) and returns a
//! [`engine::SyncOutcome`] for the database layer to apply.

pub mod client;
pub mod config;
pub mod cron;
pub mod engine;
pub mod error;
pub mod ratelimit;
pub mod streams;

pub use config::SyncConfig;
pub use engine::{
    sync, sync_streaming, BatchResult, CachedToken, Credentials, SyncInput, SyncOutcome,
};
pub use error::HelixError;
