//! A bounded soak: hundreds of runs against a simulator whose world churns and
//! whose answers fail at random, with the invariants checked after every run
//! and the backend's memory watched. TWITCH_SYNC_SOAK_RUNS sets the number of
//! runs (default 300).

use std::time::Duration;
use twitch_sync_e2e::helix_sim::world::{Rng, WorldConfig};
use twitch_sync_e2e::helix_sim::{Config, Endpoint, Fault, FaultKind};
use twitch_sync_e2e::{backend_private_memory_kib, TestDb};

#[test]
fn soak_random_faults_and_world_changes_keep_every_invariant() {
    let runs: usize = std::env::var("TWITCH_SYNC_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut db = TestDb::new(Config {
        world: WorldConfig {
            channels: 700,
            live_fraction: 0.3,
            churn: 0.03,
            flicker: 0.02,
            seed: 7,
            ..Default::default()
        },
        ..Default::default()
    });
    let ids = db.track_first(700);
    db.client
        .batch_execute(
            "SET twitch_sync.request_timeout_ms = 250; SET twitch_sync.max_retries = 1;
             SET twitch_sync.run_deadline_ms = 3000; SET twitch_sync.notify_events = on",
        )
        .unwrap();
    let pid = db.backend_pid();
    let mut rng = Rng::new(2026);
    let kinds = [
        FaultKind::Status { status: 500 },
        FaultKind::Status { status: 503 },
        FaultKind::Status { status: 429 },
        FaultKind::Status { status: 401 },
        FaultKind::Delay { ms: 400 },
        FaultKind::DropMidBody,
        FaultKind::Malformed,
        FaultKind::Truncated,
        FaultKind::EmptyPage,
        FaultKind::DuplicateAcrossPages,
        FaultKind::PageCap { max: 7 },
        FaultKind::CursorLoop,
    ];
    let mut rss_after_warmup = 0;
    let mut statuses = std::collections::HashMap::new();
    for i in 0..runs {
        db.sim.clear_faults();
        if rng.chance(0.5) {
            let kind = kinds[rng.below(kinds.len() as u64) as usize].clone();
            let fault = if rng.chance(0.5) {
                Fault::new(kind).for_user(&ids[rng.below(ids.len() as u64) as usize])
            } else {
                Fault::new(kind).probability(0.3)
            };
            db.sim.add_fault(fault);
        }
        if rng.chance(0.05) {
            db.sim.add_fault(
                Fault::new(FaultKind::Status { status: 503 })
                    .on(Endpoint::Token)
                    .times(1),
            );
            db.sim.expire_tokens();
        }
        db.sim.tick();
        let samples_before = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples");
        let doc = db.run();
        let status = doc["status"].as_str().unwrap().to_string();
        *statuses.entry(status.clone()).or_insert(0) += 1;

        let bad = db.scalar_i64(
            "SELECT (SELECT count(*) FROM (SELECT broadcaster_id FROM twitch_sync.streams WHERE is_live
                                            GROUP BY 1 HAVING count(*) > 1) d)
                  + (SELECT count(*) FROM twitch_sync.streams WHERE is_live <> (ended_at IS NULL))
                  + (SELECT count(*) FROM twitch_sync.streams WHERE peak_viewer_count < viewer_count)
                  + (SELECT count(*) FROM twitch_sync.streams WHERE ended_at < started_at - interval '1 day')",
        );
        assert_eq!(bad, 0, "run {i}: an invariant broke: {doc}");
        let row = db
            .client
            .query_one(
                "SELECT status, channels_checked, live, errors FROM twitch_sync.runs ORDER BY run_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), status, "run {i}");
        assert_eq!(
            row.get::<_, i32>(1) as u64,
            doc["total_streams"].as_u64().unwrap(),
            "run {i}"
        );
        assert_eq!(
            row.get::<_, i32>(2) as u64,
            doc["live"].as_u64().unwrap(),
            "run {i}"
        );
        assert_eq!(
            row.get::<_, i32>(3) as u64,
            doc["errors"].as_u64().unwrap(),
            "run {i}"
        );
        let samples =
            db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples") - samples_before;
        assert_eq!(
            samples as u64,
            doc["live"].as_u64().unwrap(),
            "run {i}: one sample per live stream"
        );
        let (checked, errors) = (
            doc["total_streams"].as_u64().unwrap(),
            doc["errors"].as_u64().unwrap(),
        );
        // A run fails exactly when it checked no channel.
        assert_eq!(status == "failed", checked == 0, "run {i}: {doc}");
        let error = doc["error"].as_str().unwrap_or_default();
        if status == "failed" && error.starts_with("could not get an app access token") {
            // No token, so no request was sent: no batch failed, none was checked.
            assert_eq!(errors, 0, "run {i}: {doc}");
            assert_eq!(doc["helix_requests"], 0, "run {i}: {doc}");
        } else {
            assert_eq!(
                checked + errors,
                700,
                "run {i}: every channel is either checked or an error: {doc}"
            );
        }
        if status == "ok" {
            let live = db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live");
            assert_eq!(live as u64, doc["live"].as_u64().unwrap(), "run {i}: {doc}");
        }
        if i % 50 == 0 {
            println!(
                "soak: run {i}: backend private memory {} KiB",
                backend_private_memory_kib(pid)
            );
        }
        if i == 30.min(runs - 1) {
            rss_after_warmup = backend_private_memory_kib(pid);
        }
    }
    let rss_end = backend_private_memory_kib(pid);
    println!("soak: {runs} runs {statuses:?}; backend private memory {rss_after_warmup} KiB after warm-up, {rss_end} KiB at the end");
    assert!(
        statuses.get("ok").copied().unwrap_or(0) > runs / 4,
        "{statuses:?}"
    );
    assert!(
        statuses.get("partial").copied().unwrap_or(0) > 0,
        "{statuses:?}"
    );
    assert!(
        rss_end <= rss_after_warmup + 4 * 1024,
        "backend memory grew from {rss_after_warmup} KiB to {rss_end} KiB"
    );

    // Healthy again: the database matches the world exactly.
    db.sim.clear_faults();
    db.sim.world(|w| {
        for c in w.channels.iter_mut() {
            c.hidden_polls = 0;
        }
    });
    std::thread::sleep(Duration::from_millis(10));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    db.assert_matches_world();
}
