//! EventSub (issue 14), Postgres-free: what a conduit shard's WebSocket
//! session and a webhook receiver need, each piece unit-tested on its own.
//!
//! - [`message`]: typed, checked parsing of WebSocket frames
//!   (`session_welcome`, `session_keepalive`, `notification` for
//!   `stream.online` / `stream.offline` v1, `session_reconnect`,
//!   `revocation`); a bad frame is dropped and counted, never a panic.
//! - [`session`]: the shard session's state machine (welcome → assign within
//!   10 s, keepalive timeout, reconnect without losing events, close codes,
//!   backoff) as plain functions of what happened and the time.
//! - [`dedup`]: which notifications are new (message id, event key, 10-minute
//!   freshness, order per broadcaster) in bounded memory.
//! - [`webhook`]: the `sha256=` HMAC check of webhook requests, constant-time,
//!   with the 10-minute replay window.
//! - [`helix`]: conduits, conduit shards and subscriptions over Helix with the
//!   app token (409 = success, 429 honoured, costs read from answers).
//! - [`socket`]: a WebSocket connection (tokio-tungstenite, rustls with
//!   bundled roots) whose frames are reported as [`socket::SocketEvent`]s,
//!   and [`socket::run_shard`], the driver that carries out a [`session::Shard`]'s
//!   actions over real sockets and Helix; the background worker (src/worker.rs)
//!   runs it inside Postgres.
//! - [`reconcile`]: subscriptions reconciled with the tracked channels within
//!   the cost budget (the plan as plain data, the Helix calls apart).

pub mod apply;
pub mod dedup;
pub mod helix;
pub mod message;
pub mod reconcile;
pub mod session;
pub mod socket;
pub mod webhook;

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
