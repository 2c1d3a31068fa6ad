//! The sync engine over HTTPS against the simulator: HTTP/2 on one connection,
//! concurrency from the bucket and the connection, HTTP/1.1 fallback, and a
//! certificate that is not trusted.

mod common;

use helix_sim::tls::Alpn;
use helix_sim::world::WorldConfig;
use helix_sim::{Config, Simulator};
use std::time::{Duration, SystemTime};
use twitch_sync_core::concurrency::{Protocol, HTTP1_MAX_CONNECTIONS};
use twitch_sync_core::config::{load_ca_file, MAX_CA_FILE_BYTES};
use twitch_sync_core::{
    sync_streaming, BatchBuffer, BatchResult, CachedToken, PassSummary, SyncInput,
};

fn start_config(channels: usize, alpn: Alpn, latency_ms: u64) -> Config {
    Config {
        world: WorldConfig {
            channels,
            live_fraction: 0.2,
            ..Default::default()
        },
        tls: Some(alpn),
        latency: Duration::from_millis(latency_ms),
        ..Default::default()
    }
}

fn start(channels: usize, alpn: Alpn, latency_ms: u64) -> Simulator {
    Simulator::start(start_config(channels, alpn, latency_ms)).unwrap()
}

fn input(sim: &Simulator) -> SyncInput {
    let mut input = common::sim_input(
        sim,
        sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect()),
    );
    input.config.extra_ca_certs = load_ca_file(sim.ca_file().unwrap().to_str().unwrap()).unwrap();
    input
}

fn run(input: SyncInput) -> (PassSummary, BatchBuffer) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BatchResult>();
    let summary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sync_streaming(input, tx));
    let mut buffer = BatchBuffer::default();
    while let Ok(r) = rx.try_recv() {
        buffer.absorb(r);
    }
    (summary, buffer)
}

/// A token minted by a first pass, as the database would cache it (validated
/// now), and that pass's rate-limit headers.
fn warm(sim: &Simulator, mut inp: SyncInput) -> SyncInput {
    inp.broadcaster_ids.truncate(1);
    let (s, _) = run(inp.clone());
    assert_eq!(s.fatal, None);
    let mut inp = input(sim);
    inp.token = s.token.map(|t| CachedToken {
        validated_at: Some(SystemTime::now()),
        ..t
    });
    inp.rate_limit = s.rate_limit.map(|r| (r, SystemTime::now()));
    sim.reset_counters();
    inp
}

#[test]
fn a_cold_pass_mints_and_sends_every_request_on_one_http2_connection() {
    let sim = start(10_000, Alpn::H2AndHttp1, 300);
    let (s, buffer) = run(input(&sim));
    assert_eq!(s.fatal, None);
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    assert_eq!(buffer.checked.len(), 10_000);
    assert_eq!(buffer.live.len(), 2_000);
    let c = sim.counters();
    assert_eq!(
        (c.connections, c.tls_handshakes, c.http2_connections),
        (1, 1, 1),
        "{c:?}"
    );
    assert_eq!(c.token_requests, 1);
    // The token answer told the protocol; the rate limit was unknown, so one
    // request probed the bucket and the other 99 went together.
    assert!(c.max_in_flight >= 99, "{c:?}");
    assert_eq!((s.protocol, s.connections), (Some(Protocol::Http2), 1));
}

#[test]
fn a_warm_pass_sends_the_burst_once_the_connection_is_up_not_after_an_answer() {
    // A long latency, so that the first answer cannot come back while the burst
    // is still being sent, however slow this (debug) build is.
    let sim = start(10_000, Alpn::H2AndHttp1, 400);
    let inp = warm(&sim, input(&sim));
    let (s, buffer) = run(inp);
    assert_eq!(s.fatal, None);
    assert_eq!(buffer.checked.len(), 10_000);
    let c = sim.counters();
    assert_eq!(c.token_requests + c.validate_requests, 0, "{c:?}");
    assert_eq!((c.connections, c.tls_handshakes), (1, 1), "{c:?}");
    // All 100 requests were in flight together: the burst did not wait for the
    // first request's answer (which would leave at most 99 overlapping).
    assert_eq!(c.max_in_flight, 100, "{c:?}");
    assert_eq!(c.streams_requests, 100);
}

#[test]
fn the_bucket_and_the_cap_bound_what_is_in_flight() {
    // The bucket: 40 points, slow refill; 60 requests wait for refill, none get a 429.
    let sim = start(10_000, Alpn::H2AndHttp1, 50);
    let mut inp = warm(&sim, input(&sim));
    sim.set_bucket(40, Duration::from_secs(2));
    inp.rate_limit = None;
    let (s, buffer) = run(inp);
    assert_eq!(s.fatal, None);
    assert_eq!(buffer.checked.len(), 10_000);
    let c = sim.counters();
    assert_eq!(c.rate_limited, 0, "{c:?}");
    assert!(c.max_in_flight <= 40, "{c:?}");
    assert_eq!(c.tls_handshakes, 1, "{c:?}");

    // The cap.
    let sim = start(10_000, Alpn::H2AndHttp1, 50);
    let mut inp = warm(&sim, input(&sim));
    inp.config.max_concurrent_requests = 10;
    let (s, _) = run(inp);
    assert_eq!(s.fatal, None);
    let c = sim.counters();
    assert_eq!(c.max_in_flight, 10, "{c:?}");
}

#[test]
fn more_requests_than_the_server_allows_streams_wait_in_the_client() {
    // 250 requests, a server that allows only 40 streams per connection: still
    // one connection, never more than 40 at once, every batch answered.
    let sim = Simulator::start(Config {
        h2_max_concurrent_streams: 40,
        ..start_config(25_000, Alpn::H2AndHttp1, 50)
    })
    .unwrap();
    let inp = warm(&sim, input(&sim));
    let (s, buffer) = run(inp);
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    assert_eq!(buffer.checked.len(), 25_000);
    let c = sim.counters();
    assert_eq!(c.tls_handshakes, 1, "{c:?}");
    assert_eq!(c.max_in_flight, 40, "{c:?}");
}

#[test]
fn an_http1_only_server_gets_at_most_the_pool_of_connections() {
    let sim = start(10_000, Alpn::Http1Only, 50);
    let inp = warm(&sim, input(&sim));
    let (s, buffer) = run(inp);
    assert_eq!(s.fatal, None);
    assert_eq!(buffer.checked.len(), 10_000);
    assert_eq!(s.protocol, Some(Protocol::Http1));
    let c = sim.counters();
    assert_eq!(c.http2_connections, 0);
    assert!(
        c.max_in_flight as usize <= HTTP1_MAX_CONNECTIONS && c.max_in_flight > 1,
        "{c:?}"
    );
    assert!(c.tls_handshakes as usize <= HTTP1_MAX_CONNECTIONS, "{c:?}");
    assert_eq!(s.connections as u64, c.tls_handshakes);
}

#[test]
fn a_certificate_nobody_trusts_fails_the_pass_with_a_certificate_error() {
    let sim = start(300, Alpn::H2AndHttp1, 0);
    let mut inp = input(&sim);
    inp.config.extra_ca_certs.clear();
    let (s, buffer) = run(inp);
    let fatal = s.fatal.expect("no token without a trusted certificate");
    assert!(
        fatal.contains("could not get an app access token") && fatal.contains("certificate"),
        "{fatal}"
    );
    assert!(!fatal.contains(&sim.client_secret()));
    assert!(buffer.checked.is_empty());
    let c = sim.counters();
    assert_eq!((c.tls_handshakes, c.token_requests), (0, 0), "{c:?}");
}

#[test]
fn extra_ca_files_are_read_or_refused_with_the_reason() {
    let sim = start(1, Alpn::H2AndHttp1, 0);
    let good = sim.ca_file().unwrap().to_str().unwrap().to_string();
    let pem = std::fs::read_to_string(&good).unwrap();
    assert_eq!(load_ca_file(&good).unwrap().len(), 1);
    assert_eq!(load_ca_file("").unwrap().len(), 0, "empty: none");
    assert_eq!(load_ca_file("  ").unwrap().len(), 0, "blank: none");

    let dir = std::env::temp_dir().join(format!("twitch_sync_ca_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // Two certificates and a key between them: both certificates, the key ignored.
    let two = file(
        "two.pem",
        &format!("{pem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{pem}"),
    );
    assert_eq!(load_ca_file(&two).unwrap().len(), 2);

    let refused = [
        ("relative/ca.pem".to_string(), "not an absolute path"),
        (
            dir.join("missing.pem").to_str().unwrap().to_string(),
            "cannot read the file",
        ),
        (dir.to_str().unwrap().to_string(), "is not a regular file"),
        // a device or a FIFO would block or fill memory: refused unread
        ("/dev/zero".to_string(), "is not a regular file"),
        (
            {
                let fifo = dir.join("ca.fifo");
                let made = std::process::Command::new("mkfifo")
                    .arg(&fifo)
                    .status()
                    .unwrap();
                assert!(made.success());
                fifo.to_str().unwrap().to_string()
            },
            "is not a regular file",
        ),
        (
            {
                let big = dir.join("big.pem");
                std::fs::File::create(&big)
                    .unwrap()
                    .set_len(MAX_CA_FILE_BYTES + 1)
                    .unwrap();
                big.to_str().unwrap().to_string()
            },
            "is larger than 4 MiB",
        ),
        (file("empty.pem", ""), "holds no PEM certificate"),
        (
            file("text.pem", "just some text\n"),
            "holds no PEM certificate",
        ),
        (
            file(
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            "holds no PEM certificate",
        ),
        (
            file("cut.pem", &pem[..pem.find("-----END").unwrap()]),
            "not a valid PEM file",
        ),
        (
            file(
                "b64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            ),
            "not a valid PEM file",
        ),
        (
            file(
                "junk.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            "cannot be a trusted CA certificate",
        ),
    ];
    for (path, why) in refused {
        let err = load_ca_file(&path).unwrap_err();
        assert!(err.contains(why), "{path}: {err}");
        assert!(!err.contains("AAAA"), "never the file's content: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_helix_without_rate_limit_headers_is_still_asked_concurrently() {
    // No answer carries Ratelimit-* headers: after the first answer the client
    // assumes Twitch's documented bucket (800 points) instead of asking one
    // request at a time, and the server's real bucket still sends no 429.
    let sim = start(10_000, Alpn::H2AndHttp1, 50);
    let mut inp = warm(&sim, input(&sim));
    inp.rate_limit = None;
    sim.add_fault(helix_sim::Fault::new(
        helix_sim::FaultKind::NoRateLimitHeaders,
    ));
    let (s, buffer) = run(inp);
    assert_eq!(s.fatal, None);
    assert!(s.failures.is_empty(), "{:?}", s.failures);
    assert_eq!(buffer.checked.len(), 10_000);
    let c = sim.counters();
    assert_eq!(c.rate_limited, 0, "{c:?}");
    assert!(c.max_in_flight >= 50, "{c:?}");
    assert_eq!(s.rate_limit, None);
}
