//! How many Get Streams requests a run keeps in flight, and what the run
//! learns about its connection to Helix to decide it.
//!
//! # The rule
//!
//! A request is sent when all three allow it:
//!
//! 1. **the bucket**: the [rate limiter](crate::ratelimit::RateLimiter) hands
//!    out a ticket only for a point the bucket can pay for (from the last
//!    `Ratelimit-*` headers, refilling at the rate they imply);
//! 2. **the connection**: with HTTP/2 every request is a stream of the one
//!    connection, at most [`HTTP2_STREAMS`] at once: the least
//!    `SETTINGS_MAX_CONCURRENT_STREAMS` RFC 9113 recommends a server to allow
//!    (the HTTP client does not tell the server's own value; a server allowing
//!    fewer makes the rest wait in the HTTP/2 layer, not on the wire). Keeping
//!    to it means a request is on the wire when the rate limiter pays for it,
//!    so its answer dates the bucket's state right and its timeout is not spent
//!    queueing. With HTTP/1.1 a connection carries one request at a time, so a
//!    run opens at most [`HTTP1_MAX_CONNECTIONS`], at most [`CONNECTS_PER_MS`]
//!    starting in each millisecond (a small listen backlog drops a burst);
//! 3. **the cap**: `twitch_sync.max_concurrent_requests`
//!    ([`SyncConfig::max_concurrent_requests`](crate::SyncConfig)).
//!
//! Until the run knows which protocol the Helix server speaks, one request
//! goes alone ([`in_flight_limit`] of [`Protocol::Unknown`] is 1): sending a
//! burst before the first connection is up would open a connection and a TLS
//! handshake per request, even to an HTTP/2 server. The protocol is known as
//! soon as the first connection to Helix is established (ALPN), or from an
//! answer on a connection the run already holds (the token request, when the
//! OAuth server has the same origin), so the burst waits for a handshake, not
//! for an answer.

use hyper_util::client::legacy::connect::Connection;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

/// Connections a run opens at most to an HTTP/1.1-only server (one request
/// each at a time): as many as the requests of one round over HTTP/2
/// ([`HTTP2_STREAMS`]), so a 10,000-channel run is one round trip over
/// either protocol. (0.1.0 used a fixed 32: four round trips at 10,000.)
pub const HTTP1_MAX_CONNECTIONS: usize = HTTP2_STREAMS;

/// New connections that start at most in one millisecond ([`ConnWatch`]).
pub const CONNECTS_PER_MS: usize = 8;

/// Streams a run keeps open at most on its HTTP/2 connection: RFC 9113
/// (section 6.5.2) recommends servers allow no fewer than 100.
pub const HTTP2_STREAMS: usize = 100;

/// The HTTP version spoken with Helix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// No connection to Helix yet.
    Unknown,
    Http1,
    Http2,
}

impl Protocol {
    pub fn of(version: reqwest::Version) -> Protocol {
        if version == reqwest::Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
    }
    /// As shown in the run's document.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Unknown => "unknown",
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// Requests in flight at once over a connection speaking `protocol`, with
/// `cap` = `twitch_sync.max_concurrent_requests` (the bucket is the rate
/// limiter's business, per request; see the module documentation).
pub fn in_flight_limit(cap: usize, protocol: Protocol) -> usize {
    let cap = cap.max(1);
    match protocol {
        Protocol::Unknown => 1,
        Protocol::Http1 => cap.min(HTTP1_MAX_CONNECTIONS),
        Protocol::Http2 => cap.min(HTTP2_STREAMS),
    }
}

#[derive(Debug, Default)]
struct WatchState {
    /// Connection attempts started in the millisecond `paced_from` + `paced_ms`
    /// (see [`ConnWatch::connect_delay`]).
    paced_from: Option<std::time::Instant>,
    paced_ms: u64,
    paced_in_ms: usize,
    connections: u32,
    /// Set once the token step is over: from then on a new connection is one to Helix.
    helix_phase: bool,
    helix: Option<Protocol>,
}

/// What one client's connections tell the run: how many were opened (each
/// with a TLS handshake over https) and which protocol Helix speaks.
#[derive(Debug, Default)]
pub struct ConnWatch {
    state: Mutex<WatchState>,
    changed: tokio::sync::Notify,
}

impl ConnWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_helix(&self, st: &mut WatchState, p: Protocol) {
        if st.helix.is_none() {
            st.helix = Some(p);
            self.changed.notify_waiters();
        }
    }

    /// A new connection is established (TCP, and TLS with ALPN for https).
    pub fn connected(&self, h2: bool) {
        let mut st = self.lock();
        st.connections += 1;
        if st.helix_phase {
            let p = if h2 { Protocol::Http2 } else { Protocol::Http1 };
            self.set_helix(&mut st, p);
        }
    }

    /// An answer arrived over `version` from Helix (or from a server of the same origin).
    pub fn answered_by_helix(&self, version: reqwest::Version) {
        let mut st = self.lock();
        self.set_helix(&mut st, Protocol::of(version));
    }

    /// A request to Helix failed without an answer, before a connection told
    /// the protocol: go on as with HTTP/1.1 (the conservative choice).
    pub fn helix_unreachable(&self) {
        let mut st = self.lock();
        self.set_helix(&mut st, Protocol::Http1);
    }

    /// From now on, a new connection is a connection to Helix.
    pub fn start_helix_phase(&self) {
        self.lock().helix_phase = true;
    }

    /// How long a new connection attempt waits before it starts: at most
    /// [`CONNECTS_PER_MS`] attempts start in each millisecond of a burst. A
    /// burst of 100 simultaneous SYNs overflows the accept queue of a server
    /// with a small listen backlog (Python's http.server has 5), and every
    /// dropped one costs a one-second retransmission; paced, 100 connections
    /// start over about 12 ms.
    fn connect_delay(&self) -> std::time::Duration {
        self.connect_delay_at(std::time::Instant::now())
    }

    /// [`ConnWatch::connect_delay`] for an attempt made at `now`. The
    /// milliseconds are counted from the burst's first attempt: an attempt
    /// made when every slot counted so far has passed starts a new burst.
    fn connect_delay_at(&self, now: std::time::Instant) -> std::time::Duration {
        let mut st = self.lock();
        let from = match st.paced_from {
            Some(from) if now.duration_since(from).as_millis() as u64 <= st.paced_ms => from,
            _ => {
                st.paced_from = Some(now);
                st.paced_ms = 0;
                st.paced_in_ms = 0;
                now
            }
        };
        if st.paced_in_ms >= CONNECTS_PER_MS {
            st.paced_ms += 1;
            st.paced_in_ms = 0;
        }
        st.paced_in_ms += 1;
        (from + std::time::Duration::from_millis(st.paced_ms)).saturating_duration_since(now)
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u32 {
        self.lock().connections
    }

    /// The protocol Helix speaks, if known yet.
    pub fn helix_protocol(&self) -> Protocol {
        self.lock().helix.unwrap_or(Protocol::Unknown)
    }

    /// Waits until the protocol Helix speaks is known.
    pub async fn helix_known(&self) -> Protocol {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.lock().helix {
                return p;
            }
            notified.await;
        }
    }
}

/// A connector layer for reqwest that paces new connection attempts
/// ([`ConnWatch::connect_delay`]) and reports each established connection to
/// a [`ConnWatch`].
#[derive(Clone)]
pub struct WatchLayer(pub std::sync::Arc<ConnWatch>);

impl<S> tower_layer::Layer<S> for WatchLayer {
    type Service = WatchService<S>;
    fn layer(&self, inner: S) -> WatchService<S> {
        WatchService {
            inner,
            watch: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WatchService<S> {
    inner: S,
    watch: std::sync::Arc<ConnWatch>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower_service::Service<R> for WatchService<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Response: Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let fut = self.inner.call(req);
        let watch = self.watch.clone();
        let delay = watch.connect_delay();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let conn = fut.await?;
            watch.connected(conn.connected().is_negotiated_h2());
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_connections_starts_a_few_per_millisecond() {
        use std::time::{Duration, Instant};
        let watch = ConnWatch::default();
        let t0 = Instant::now();
        // 100 attempts within the burst's first 0.1 ms
        let starts: Vec<Duration> = (0..100u64)
            .map(|i| {
                let at = t0 + Duration::from_micros(i);
                at.duration_since(t0) + watch.connect_delay_at(at)
            })
            .collect();
        let mut per_ms = std::collections::BTreeMap::new();
        for d in &starts {
            *per_ms.entry(d.as_millis()).or_insert(0usize) += 1;
        }
        assert!(per_ms.values().all(|&n| n <= CONNECTS_PER_MS), "{per_ms:?}");
        assert_eq!(
            per_ms.len(),
            100usize.div_ceil(CONNECTS_PER_MS),
            "{per_ms:?}"
        );
        // one more while the burst's slots are still ahead takes the last
        // slot's free place (slot 12 holds 4 of 100): 12 ms from the start
        let late = t0 + Duration::from_millis(5);
        assert_eq!(watch.connect_delay_at(late), Duration::from_millis(7));
        // once they have passed, an attempt starts a new burst, at once
        let after = t0 + Duration::from_millis(40);
        assert_eq!(watch.connect_delay_at(after), Duration::ZERO);
        for i in 1..CONNECTS_PER_MS as u64 {
            assert_eq!(
                watch.connect_delay_at(after + Duration::from_micros(i)),
                Duration::ZERO
            );
        }
        assert_eq!(
            watch.connect_delay_at(after + Duration::from_micros(10)),
            Duration::from_millis(1) - Duration::from_micros(10)
        );
    }

    #[test]
    fn one_request_until_the_protocol_is_known() {
        for cap in [1, 32, 800] {
            assert_eq!(in_flight_limit(cap, Protocol::Unknown), 1);
        }
    }

    #[test]
    fn http2_keeps_to_the_streams_every_server_should_allow_and_the_cap() {
        // The bucket bounds each request through the rate limiter.
        assert_eq!(in_flight_limit(800, Protocol::Http2), HTTP2_STREAMS);
        assert_eq!(in_flight_limit(100, Protocol::Http2), 100);
        assert_eq!(in_flight_limit(7, Protocol::Http2), 7);
        assert_eq!(in_flight_limit(0, Protocol::Http2), 1);
    }

    #[test]
    fn http1_opens_at_most_the_pool_of_connections() {
        assert_eq!(in_flight_limit(800, Protocol::Http1), HTTP1_MAX_CONNECTIONS);
        assert_eq!(
            in_flight_limit(HTTP1_MAX_CONNECTIONS + 1, Protocol::Http1),
            100
        );
        assert_eq!(in_flight_limit(5, Protocol::Http1), 5);
        assert_eq!(in_flight_limit(0, Protocol::Http1), 1);
    }

    #[test]
    fn the_first_fact_about_helix_wins() {
        let w = ConnWatch::default();
        // A connection during the token step says nothing about Helix's origin.
        w.connected(false);
        assert_eq!(w.helix_protocol(), Protocol::Unknown);
        w.start_helix_phase();
        w.connected(true);
        assert_eq!(w.helix_protocol(), Protocol::Http2);
        w.helix_unreachable();
        w.answered_by_helix(reqwest::Version::HTTP_11);
        assert_eq!(w.helix_protocol(), Protocol::Http2);
        assert_eq!(w.connections(), 2);
    }

    #[test]
    fn waiting_for_the_protocol_ends_when_it_is_learnt() {
        let w = std::sync::Arc::new(ConnWatch::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let p = rt.block_on(async {
            let w2 = w.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                w2.helix_unreachable();
            });
            w.helix_known().await
        });
        assert_eq!(p, Protocol::Http1);
    }
}
