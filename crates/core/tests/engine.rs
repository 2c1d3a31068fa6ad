//! The sync engine against the Helix simulator over loopback HTTP, without a
//! database: request counts, the rate limit, tokens, failures.

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Fault, FaultKind, Simulator};
use std::time::{Duration, Instant};
use twitch_sync_core::{sync, Credentials, SyncConfig, SyncInput, SyncOutcome};

fn start(channels: usize, live_fraction: f64, cfg: Config) -> Simulator {
    Simulator::start(Config {
        world: WorldConfig {
            channels,
            live_fraction,
            ..Default::default()
        },
        ..cfg
    })
    .unwrap()
}

fn input(sim: &Simulator, n: usize) -> SyncInput {
    SyncInput {
        config: SyncConfig {
            helix_url: sim.helix_url(),
            auth_url: sim.auth_url(),
            ..SyncConfig::default()
        },
        credentials: Credentials {
            client_id: sim.client_id(),
            client_secret: sim.client_secret(),
        },
        token: None,
        broadcaster_ids: sim.world(|w| w.channels.iter().take(n).map(|c| c.id.clone()).collect()),
        rate_limit: None,
    }
}

fn run(input: SyncInput) -> SyncOutcome {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sync(input))
}

#[test]
fn checks_every_channel_in_ceil_n_over_100_requests() {
    let sim = start(1000, 0.3, Config::default());
    let out = run(input(&sim, 1000));
    assert_eq!(out.fatal, None);
    assert_eq!(out.checked.len(), 1000);
    assert_eq!(out.live.len(), 300);
    assert_eq!(out.helix_requests, 10);
    assert_eq!(sim.counters().streams_requests, 10);
    assert!(out.token_changed);
}

#[test]
fn a_small_bucket_is_used_at_its_refill_rate_without_a_429() {
    // 5 points refilling in 2 s (2.5 a second): 12 requests need 7 points of refill,
    // about 2.8 s at best.
    let sim = start(
        1200,
        0.1,
        Config {
            bucket_limit: 5,
            bucket_period: Duration::from_secs(2),
            ..Config::default()
        },
    );
    let t = Instant::now();
    let out = run(input(&sim, 1200));
    let took = t.elapsed();
    assert_eq!(out.failures, vec![]);
    assert_eq!(out.helix_requests, 12);
    assert_eq!(sim.counters().rate_limited, 0);
    println!("12 requests through a 5-point, 2 s bucket: {took:?} (floor 2.8 s)");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_reused_token_and_rate_limit_state_save_requests() {
    let sim = start(300, 0.3, Config::default());
    let first = run(input(&sim, 300));
    let mut next = input(&sim, 300);
    next.token = first.token.clone();
    next.rate_limit = first.rate_limit.map(|s| (s, std::time::SystemTime::now()));
    let second = run(next);
    assert!(!second.token_changed);
    assert_eq!(sim.counters().tokens_issued, 1);
    assert_eq!(second.helix_requests, 3);
}

#[test]
fn failures_are_per_batch_and_redacted() {
    let sim = start(300, 0.3, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    sim.add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&ids[299]));
    let out = run(input(&sim, 300));
    assert_eq!(out.checked.len(), 200);
    assert_eq!(out.failed_channels(), 100);
    assert!(out.failures[0].error.contains("HTTP 500"));
    assert!(out
        .failures
        .iter()
        .all(|f| !f.error.contains(&sim.client_secret())));

    // a wrong secret: the token cannot be had, and the error says so without the secret
    let mut bad = input(&sim, 300);
    bad.credentials.client_secret = "not-the-secret-0123".into();
    let out = run(bad);
    let fatal = out.fatal.unwrap();
    assert!(fatal.contains("invalid client secret"), "{fatal}");
    assert!(!fatal.contains("not-the-secret-0123"));
    assert!(out.checked.is_empty());
}
