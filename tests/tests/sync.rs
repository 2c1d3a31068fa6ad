//! twitch_sync.run() end to end: a real cluster, the installed extension, the
//! simulator over loopback HTTP. Assertions are on tables and result documents.

use std::time::{Duration, Instant};
use twitch_sync_e2e::helix_sim::{Config, Endpoint, Fault, FaultKind};
use twitch_sync_e2e::{error_text, sqlstate, world, TestDb};

fn live_count(db: &mut TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live")
}

#[test]
fn first_run_then_transitions_restart_counts_and_peaks() {
    let mut db = TestDb::new(world(100, 0.2));
    let ids = db.track_first(100);
    let doc = db.run();
    assert_eq!(doc["success"], true, "{doc}");
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["total_streams"], 100);
    assert_eq!(doc["started"], 20);
    assert_eq!(doc["helix_requests"], 1);
    assert_eq!(live_count(&mut db), 20);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples"),
        20
    );
    // the stored rows match what Helix says
    let (sid, viewers) = db.sim.world(|w| {
        let s = w.channels.iter().find_map(|c| c.live.clone()).unwrap();
        (s.id, s.viewer_count)
    });
    let row = db
        .client
        .query_one(
            "SELECT viewer_count, peak_viewer_count FROM twitch_sync.streams WHERE stream_id = $1",
            &[&sid],
        )
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as i64, viewers);
    assert_eq!(row.get::<_, i32>(1) as i64, viewers);

    // one channel goes offline, one restarts, one goes live, one's audience jumps
    let live_ids: Vec<String> = db.sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    let offline_id = ids.iter().find(|i| !live_ids.contains(i)).unwrap().clone();
    db.sim.world(|w| {
        w.go_offline(&live_ids[0]);
        w.restart(&live_ids[1]);
        w.go_live(&offline_id);
        w.set_viewers(&live_ids[2], 1_000_000);
    });
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["started"], 2, "{doc}");
    assert_eq!(doc["ended"], 2, "{doc}");
    assert_eq!(doc["updated"], 18, "{doc}");
    assert_eq!(live_count(&mut db), 20);
    let ended: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = ANY($1) AND NOT is_live AND ended_at IS NOT NULL",
            &[&vec![live_ids[0].clone(), live_ids[1].clone()]],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 2);
    assert_eq!(
        db.client
            .query_one(
                "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = $1",
                &[&live_ids[1]]
            )
            .unwrap()
            .get::<_, i64>(0),
        2,
        "a restart is a new broadcast row"
    );
    let peak: i32 = db
        .client
        .query_one("SELECT peak_viewer_count FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live", &[&live_ids[2]])
        .unwrap()
        .get(0);
    assert_eq!(peak, 1_000_000);
    db.sim.world(|w| w.set_viewers(&live_ids[2], 5));
    db.run();
    let row = db
        .client
        .query_one(
            "SELECT viewer_count, peak_viewer_count FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&live_ids[2]],
        )
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (5, 1_000_000));
    let stamped = db.scalar_i64(
        "SELECT count(*) FROM twitch_sync.channel_status WHERE last_checked_at IS NOT NULL",
    );
    assert_eq!(stamped, 100);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'ok'"),
        3
    );
}

#[test]
fn requests_are_exactly_ceil_n_over_100() {
    for n in [1usize, 100, 101, 250, 10_000] {
        let mut db = TestDb::new(world(n, 0.2));
        db.track_first(n);
        let doc = db.run();
        let want = n.div_ceil(100);
        assert_eq!(doc["status"], "ok", "n={n}: {doc}");
        assert_eq!(doc["helix_requests"], want as u64, "n={n}");
        let c = db.sim.counters();
        assert_eq!(c.streams_requests, want as u64, "n={n}");
        assert!(c.ids_per_request.iter().all(|&k| k <= 100));
        assert_eq!(c.ids_per_request.iter().sum::<usize>(), n);
        assert!(
            c.first_per_request.iter().all(|f| *f == Some(100)),
            "first=100 always sent"
        );
        assert_eq!(c.rate_limited, 0);
        assert_eq!(
            live_count(&mut db) as usize,
            (n as f64 * 0.2).round() as usize,
            "n={n}"
        );
    }
}

/// Ends the first live stream of the simulator's world; its channel's id.
fn end_a_live_stream(db: &TestDb) -> String {
    db.sim.world(|w| {
        let id = w
            .channels
            .iter()
            .find(|c| c.live.is_some())
            .unwrap()
            .id
            .clone();
        w.go_offline(&id);
        id
    })
}

/// Twitch puts a cursor on a last page too (twitchdev/issues#2): an id batch
/// follows it only where a channel stored live went unlisted (one more
/// request for that batch), and a cursor that loops is not followed forever;
/// a server that pages by Twitch's default of 20 is read to the end.
#[test]
fn an_id_batch_follows_a_cursor_only_where_a_live_channel_went_unlisted() {
    let mut db = TestDb::new(world(300, 0.4));
    db.track_first(300);
    db.sim.add_fault(Fault::new(FaultKind::SurpriseCursor));
    for run in 0..2 {
        db.sim.reset_counters();
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
        let c = db.sim.counters();
        assert_eq!((c.streams_requests, c.pages), (3, 0), "run {run}: {doc}");
        db.assert_matches_world();
    }
    let ended = end_a_live_stream(&db);
    db.sim.reset_counters();
    let doc = db.run();
    assert_eq!(doc["ended"], 1, "{doc}");
    let c = db.sim.counters();
    assert_eq!((c.streams_requests, c.pages), (4, 1), "{doc}");
    db.assert_matches_world();
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{ended}' AND is_live"
        )),
        0
    );

    db.sim.clear_faults();
    db.sim.add_fault(Fault::new(FaultKind::CursorLoop));
    end_a_live_stream(&db);
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    db.assert_matches_world();

    let mut db = TestDb::new(world(100, 1.0));
    db.track_first(100);
    db.sim.add_fault(Fault::new(FaultKind::PageCap { max: 20 }));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(db.sim.counters().streams_requests, 5);
    assert_eq!(live_count(&mut db), 100);
}

#[test]
fn the_bucket_is_never_overdrawn_and_429s_wait_for_reset() {
    // A 5-point bucket refilling in 2 s: 12 requests must wait for refill, never be refused.
    let mut db = TestDb::new(Config {
        bucket_limit: 5,
        bucket_period: Duration::from_secs(2),
        ..world(1200, 0.1)
    });
    db.track_first(1200);
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["helix_requests"], 12);
    assert_eq!(
        db.sim.counters().rate_limited,
        0,
        "no request beyond the bucket"
    );
    assert_eq!(live_count(&mut db), 120);

    // A 429 that comes anyway is waited out until Ratelimit-Reset, then retried.
    db.sim.set_bucket(800, Duration::from_secs(60));
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 429 }).times(1));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["rate_limited"], 1);
    assert_eq!(doc["retries"], 1);
    assert_eq!(doc["helix_requests"], 13);
}

#[test]
fn the_token_is_cached_and_renewed_once_on_401() {
    let mut db = TestDb::new(world(200, 0.5));
    db.track_first(200);
    db.run();
    db.run();
    assert_eq!(db.sim.counters().tokens_issued, 1, "cached across runs");
    let token_before: String = db
        .client
        .query_one("SELECT access_token FROM twitch_sync.credentials", &[])
        .unwrap()
        .get(0);
    db.sim.expire_tokens();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(
        db.sim.counters().tokens_issued,
        2,
        "one renewal shared by both batches"
    );
    let token_after: String = db
        .client
        .query_one("SELECT access_token FROM twitch_sync.credentials", &[])
        .unwrap()
        .get(0);
    assert_ne!(token_before, token_after);

    // A client id the token does not belong to: renewal once, then a clear failure.
    db.client
        .execute(
            "UPDATE twitch_sync.credentials SET client_id = 'wrongclient'",
            &[],
        )
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["success"], false, "{doc}");
    assert_eq!(doc["status"], "failed");
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("invalid client") || err.contains("401"),
        "{err}"
    );
    assert_eq!(live_count(&mut db), 100, "a failed run changes nothing");
}

/// Twitch answers a revoked token's requests with 401s carrying the headers
/// of the bucket for requests without a valid token (30 points a minute).
/// They say nothing of the app's bucket: the new token's retries go at once
/// (they were held to that bucket until its reset, so with 40 batches the
/// run's deadline failed most of them), and what is stored is the app's bucket.
#[test]
fn a_401s_rate_limit_headers_do_not_hold_back_the_new_tokens_requests() {
    let mut db = TestDb::new(world(4000, 0.2));
    db.track_first(4000);
    assert_eq!(db.run()["status"], "ok");
    db.sim.expire_tokens();
    db.sim.reset_counters();
    db.client
        .batch_execute("SET twitch_sync.run_deadline_ms = 20000")
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    let c = db.sim.counters();
    assert!(
        c.unauthorized > 30,
        "the old token's requests were refused: {c:?}"
    );
    assert_eq!(c.rate_limited, 0);
    assert_eq!(
        db.scalar_i64("SELECT bucket_limit::int8 FROM twitch_sync.rate_limit"),
        800,
        "the app's bucket is what is stored"
    );
}

#[test]
fn a_token_minted_for_replaced_credentials_is_not_cached() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    // The run's mint is slow; set_credentials() comes while it is in flight.
    db.sim.add_fault(
        Fault::new(FaultKind::Delay { ms: 1_500 })
            .on(Endpoint::Token)
            .times(1),
    );
    let run = db.run_in_background();
    std::thread::sleep(Duration::from_millis(500));
    db.client
        .execute(
            "SELECT twitch_sync.set_credentials('anotherclientid', 'anothersecret123')",
            &[],
        )
        .unwrap();
    let doc = run.join().unwrap();
    assert_eq!(doc["status"], "ok", "{doc}");
    let row = db
        .client
        .query_one(
            "SELECT client_id, access_token IS NULL FROM twitch_sync.credentials",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "anotherclientid");
    assert!(
        row.get::<_, bool>(1),
        "the old client id's token is not cached beside the new client id"
    );
}

#[test]
fn a_token_that_cannot_be_sent_is_refused_where_it_arrives() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    for token in ["abc\\u0000def", "abc\\ndef"] {
        db.sim.add_fault(
            Fault::new(FaultKind::Body {
                body: format!(
                    r#"{{"access_token":"{token}","expires_in":5000000,"token_type":"bearer"}}"#
                ),
            })
            .on(Endpoint::Token)
            .times(1),
        );
        let doc = db.run();
        assert_eq!(doc["status"], "failed", "{doc}");
        let err = doc["error"].as_str().unwrap();
        assert!(
            err.contains("access_token") && err.contains("token"),
            "{err}"
        );
        assert_eq!(
            db.scalar_i64(
                "SELECT count(*) FROM twitch_sync.credentials WHERE access_token IS NOT NULL"
            ),
            0,
            "{doc}"
        );
    }
}

#[test]
fn validation_happens_at_most_hourly() {
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    db.run();
    db.run();
    assert_eq!(
        db.sim.counters().validate_requests,
        0,
        "a freshly minted token counts as validated"
    );
    db.client
        .execute(
            "UPDATE twitch_sync.credentials SET token_validated_at = now() - interval '61 minutes'",
            &[],
        )
        .unwrap();
    db.run();
    db.run();
    assert_eq!(db.sim.counters().validate_requests, 1);
    let fresh: bool = db
        .client
        .query_one(
            "SELECT token_validated_at > now() - interval '1 minute' FROM twitch_sync.credentials",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(fresh);
}

#[test]
fn transient_failures_are_retried() {
    let mut db = TestDb::new(world(300, 0.2));
    db.track_first(300);
    db.client
        .batch_execute("SET twitch_sync.request_timeout_ms = 300")
        .unwrap();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 503 }).times(2));
    db.sim
        .add_fault(Fault::new(FaultKind::Delay { ms: 1000 }).times(1));
    db.sim
        .add_fault(Fault::new(FaultKind::DropMidBody).times(1));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["retries"], 4, "{doc}");
    assert_eq!(doc["helix_requests"], 7);
    assert_eq!(live_count(&mut db), 60);
}

#[test]
fn a_failed_batch_leaves_its_channels_exactly_as_they_were() {
    let mut db = TestDb::new(world(200, 1.0));
    let ids = db.track_first(200);
    db.run();
    let snapshot = "SELECT string_agg(stream_id || ':' || viewer_count || ':' || is_live, ',' ORDER BY stream_id)
                      FROM twitch_sync.streams WHERE broadcaster_id = ANY($1)";
    let second_batch: Vec<String> = ids[100..].to_vec();
    let before: String = db
        .client
        .query_one(snapshot, &[&second_batch])
        .unwrap()
        .get(0);
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&ids[150]));
    db.sim.world(|w| {
        w.go_offline(&ids[10]);
        w.go_offline(&ids[120]);
        w.tick();
    });
    let doc = db.run();
    assert_eq!(doc["status"], "partial", "{doc}");
    assert_eq!(doc["success"], true);
    assert_eq!(doc["errors"], 100);
    assert_eq!(doc["total_streams"], 100);
    assert!(doc["error"].as_str().unwrap().contains("HTTP 500"), "{doc}");
    let after: String = db
        .client
        .query_one(snapshot, &[&second_batch])
        .unwrap()
        .get(0);
    assert_eq!(before, after, "never marked offline, counts untouched");
    assert_eq!(
        live_count(&mut db),
        199,
        "only the healthy batch's offline channel ended"
    );
    let row = db
        .client
        .query_one(
            "SELECT status, errors, error FROM twitch_sync.runs ORDER BY run_id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "partial");
    assert_eq!(row.get::<_, i32>(1), 100);

    // the next healthy run catches up
    db.sim.clear_faults();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(live_count(&mut db), 198);

    // nothing usable at all: failed, and still recorded
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }));
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["success"], false);
    assert_eq!(live_count(&mut db), 198);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'failed'"),
        1
    );
}

#[test]
fn an_unreachable_auth_server_fails_the_run_without_raising() {
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 503 }).on(Endpoint::Token));
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert!(
        doc["error"].as_str().unwrap().contains("app access token"),
        "{doc}"
    );
    // no channel could be checked: every one counts as an error, in the
    // document and in the run's row
    assert_eq!(doc["errors"], 10, "{doc}");
    let secret = db.sim.client_secret();
    assert!(!doc.to_string().contains(&secret));
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.runs WHERE status = 'failed' AND errors = 10"
        ),
        1
    );
    // the alert points at Twitch's outage, not at the credentials (it told
    // operators to replace a secret that was fine)
    let check = |db: &mut TestDb| -> String {
        db.client
            .query_one(
                "SELECT payload->>'check' FROM twitch_sync.alerts ORDER BY alert_id DESC LIMIT 1",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let said = check(&mut db);
    assert!(said.contains("server errors"), "{said}");
    // and at the network when the token endpoint cannot be reached
    db.sim.clear_faults();
    db.client
        .batch_execute("SET twitch_sync.auth_url = 'http://127.0.0.1:1/oauth2'")
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    let said = check(&mut db);
    assert!(said.starts_with("Network"), "{said}: {doc}");
}

#[test]
fn a_role_with_no_grants_cannot_hold_up_runs_or_maintain() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    let role = format!("no_grants_{}", std::process::id());
    db.client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap();
    let mut stranger = db.cluster().connect_as(&db.name, &role);
    // Any role may take any advisory key, 0.2.0's first lock keys among them:
    // the locks are row locks now, which take UPDATE on twitch_sync.locks.
    let err = stranger
        .batch_execute("SELECT 1 FROM twitch_sync.locks FOR UPDATE")
        .expect_err("a stranger locks nothing");
    assert_eq!(sqlstate(&err), "42501", "{}", error_text(&err));
    stranger
        .batch_execute(
            "SELECT pg_advisory_lock(1953720692, 1), pg_advisory_lock(1953720692, 2);
             BEGIN; SELECT pg_advisory_xact_lock(1953720692, 2);",
        )
        .unwrap();
    assert!(!db.run_in_progress(), "a stranger's lock is no run");
    db.client
        .batch_execute("SET statement_timeout = '20s'")
        .unwrap();
    let t = Instant::now();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .expect("maintain() does not wait for a stranger");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(!db.run_in_progress());
    drop(stranger);
    db.client
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}

/// A run in flight when a channel is untracked or disabled writes nothing
/// for it: not a new broadcast (a restart), not a broadcast of a channel
/// that was offline. (The run's write waits for the untrack in flight.)
#[test]
fn a_run_overlapping_untrack_or_disable_writes_nothing_for_the_channel() {
    let mut db = TestDb::new(world(20, 0.0));
    let ids = db.track_first(20);
    let (restarted, went_live, disabled) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    db.sim.world(|w| {
        w.go_live(&restarted);
        w.go_live(&disabled);
    });
    assert_eq!(db.run()["status"], "ok");
    let e0 = db.scalar_i64("SELECT coalesce(max(event_id), 0) FROM twitch_sync.events");
    // Helix now lists a new broadcast of each (a restart, an offline channel
    // gone live) while another session untracks or disables them
    db.sim.world(|w| {
        w.restart(&restarted);
        w.go_live(&went_live);
        w.restart(&disabled);
    });
    let mut admin = db.connect();
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT twitch_sync.untrack('{restarted}'), twitch_sync.untrack('{went_live}');
             UPDATE twitch_sync.channels SET enabled = false WHERE broadcaster_id = '{disabled}';"
        ))
        .unwrap();
    let run = db.run_in_background();
    std::thread::sleep(Duration::from_millis(1500));
    admin.batch_execute("COMMIT").unwrap();
    let doc = run.join().unwrap();
    assert_eq!(doc["status"], "ok", "{doc}");
    for b in [&restarted, &went_live, &disabled] {
        assert_eq!(
            db.scalar_i64(&format!(
                "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{b}' AND is_live"
            )),
            0,
            "{b}: no live broadcast of an untracked or disabled channel: {doc}"
        );
    }
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.events WHERE event IN ('online', 'restart')
               AND broadcaster_id IN ('{restarted}', '{went_live}', '{disabled}') AND event_id > {e0}"
        )),
        0,
        "no online or restart event for them since"
    );
}

#[test]
fn concurrent_runs_are_skipped() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    db.sim.set_latency(Duration::from_millis(1500));
    let slow = db.run_in_background();
    std::thread::sleep(Duration::from_millis(600));
    assert!(db.run_in_progress());
    let t = Instant::now();
    let doc = db.run();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "skipping returns at once"
    );
    assert_eq!(doc["skipped"], true, "{doc}");
    assert_eq!(doc["status"], "skipped");
    let first = slow.join().unwrap();
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'skipped'"),
        1
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'ok'"),
        1
    );
}

#[test]
fn a_read_only_transaction_is_refused_before_any_request() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    let runs = db.scalar_i64("SELECT count(*) FROM twitch_sync.runs");
    for setup in ["SET default_transaction_read_only = on", "BEGIN READ ONLY"] {
        db.client.batch_execute(setup).unwrap();
        let before = db.sim.counters();
        let err = db
            .client
            .query_one("SELECT twitch_sync.run()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&err), "25006", "{setup}: {}", error_text(&err));
        let text = error_text(&err);
        assert!(text.contains("read-only transaction"), "{text}");
        assert!(text.contains("No request was sent"), "{text}");
        let after = db.sim.counters();
        assert_eq!(
            (after.streams_requests, after.token_requests),
            (before.streams_requests, before.token_requests),
            "{setup}: nothing was asked of Twitch"
        );
        db.client
            .batch_execute("ROLLBACK; RESET default_transaction_read_only")
            .unwrap();
    }
    assert_eq!(db.scalar_i64("SELECT count(*) FROM twitch_sync.runs"), runs);
    assert_eq!(db.run()["status"], "ok");
}

#[test]
fn cancel_and_statement_timeout_stop_a_run_within_a_second_and_the_next_run_records_it() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    db.run();
    let runs_before = db.scalar_i64("SELECT count(*) FROM twitch_sync.runs");
    db.sim.set_latency(Duration::from_secs(20));
    db.client
        .batch_execute("SET twitch_sync.request_timeout_ms = 60000")
        .unwrap();

    let pid = db.backend_pid();
    let mut killer = db.connect();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let at = Instant::now();
        killer
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .unwrap();
        at
    });
    let err = db
        .client
        .query_one("SELECT twitch_sync.run()", &[])
        .unwrap_err();
    let returned = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(sqlstate(&err), "57014", "{}", error_text(&err));
    assert!(
        returned - cancelled_at < Duration::from_secs(1),
        "{:?}",
        returned - cancelled_at
    );

    db.client
        .batch_execute("SET statement_timeout = '800ms'")
        .unwrap();
    let t = Instant::now();
    let err = db
        .client
        .query_one("SELECT twitch_sync.run()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(
        t.elapsed() < Duration::from_millis(1800),
        "{:?}",
        t.elapsed()
    );
    db.client.batch_execute("RESET statement_timeout").unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs"),
        runs_before,
        "all or nothing"
    );

    // the lock died with the transaction: the next run works, and records
    // the two rolled-back runs first, each failed, with what ended it
    db.sim.set_latency(Duration::ZERO);
    assert_eq!(db.run()["status"], "ok");
    let rows = db
        .client
        .query(
            "SELECT r.status, coalesce(r.error, ''),
                    extract(epoch FROM r.finished_at - r.started_at)::float8,
                    coalesce(a.alert, ''), coalesce(a.payload ->> 'check', '')
               FROM twitch_sync.runs r LEFT JOIN twitch_sync.alerts a USING (run_id)
              ORDER BY r.started_at OFFSET $1",
            &[&runs_before],
        )
        .unwrap();
    type Row = (String, String, f64, String, String);
    let got: Vec<Row> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    let expected = [
        ("canceling statement due to user request", 0.7),
        ("canceling statement due to statement timeout", 0.8),
    ];
    for ((status, error, secs, alert, check), (message, after)) in got.iter().zip(expected) {
        assert_eq!(status, "failed", "{got:?}");
        assert_eq!(error, &format!("rolled back: {message} (SQLSTATE 57014)"));
        assert!(
            (after..after + 1.0).contains(secs),
            "ended {secs} s after it started"
        );
        assert_eq!(alert, "run_failed");
        assert!(check.contains("statement_timeout"), "{check}");
    }
    assert_eq!(got[2].0, "ok");
    // recorded once: the run after records nothing more
    db.run();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'failed'"),
        2
    );
}

#[test]
fn the_run_deadline_bounds_the_pass() {
    let mut db = TestDb::new(world(300, 0.5));
    db.track_first(300);
    db.client
        .batch_execute(
            "SET twitch_sync.run_deadline_ms = 1500; SET twitch_sync.request_timeout_ms = 60000",
        )
        .unwrap();
    db.run();
    db.sim.add_fault(
        Fault::new(FaultKind::Delay { ms: 10_000 })
            .for_user(&db.sim.world(|w| w.channels[250].id.clone())),
    );
    let t = Instant::now();
    let doc = db.run();
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(doc["status"], "partial", "{doc}");
    assert_eq!(doc["errors"], 100);
    assert!(doc["error"].as_str().unwrap().contains("deadline"), "{doc}");
}

#[test]
fn a_hand_written_observation_that_breaks_the_rules_is_a_clear_error() {
    // apply_observations is the owner's entry to the transition layer for a
    // source of their own: what breaks the observation type's rules is a 22023
    // with a hint, and writes nothing.
    let mut db = TestDb::bare(world(1, 0.0));
    db.client
        .batch_execute("SELECT twitch_sync.track('77')")
        .unwrap();
    // A good observation, with one field replaced by `value`.
    let obs = |field: &str, value: &str| {
        let f: Vec<&str> = [
            ("source", "'eventsub'"),
            ("at", "now()"),
            ("id", "'77'"),
            ("state", "'live'"),
            ("sid", "'700'"),
            ("login", "NULL"),
            ("viewers", "5"),
            ("title", "'t'"),
            ("game_id", "''"),
            ("started", "now()"),
        ]
        .iter()
        .map(|&(k, v)| if k == field { value } else { v })
        .collect();
        format!(
            "ROW({}, {}, {}, {}, {}, {}, {}, {}, {}, '', '', {})::twitch_sync.observation",
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
        )
    };
    let good = obs("", "");
    let twice = format!("{good}, {}", obs("state", "'not_listed'"));
    for (what, arr, misses, notify) in [
        ("source", obs("source", "'bogus'"), "1", "false"),
        ("time", obs("at", "NULL"), "1", "false"),
        ("infinite time", obs("at", "'infinity'"), "1", "false"),
        // (a far-future sample made every later maintain() fail)
        ("far-future time", obs("at", "'294276-12-31'"), "1", "false"),
        (
            "time before Twitch",
            obs("at", "'1999-01-01'"),
            "1",
            "false",
        ),
        // (an infinite start made maintain() run forever)
        (
            "infinite start",
            obs("started", "'-infinity'"),
            "1",
            "false",
        ),
        ("start in 1970", obs("started", "'epoch'"), "1", "false"),
        (
            "start a week ahead",
            obs("started", "now() + interval '7 days'"),
            "1",
            "false",
        ),
        ("stream id not digits", obs("sid", "'70x'"), "1", "false"),
        (
            "10 MB stream id",
            obs("sid", "repeat('9', 10485760)"),
            "1",
            "false",
        ),
        ("login", obs("login", "'Has Space'"), "1", "false"),
        ("game id", obs("game_id", "'12x'"), "1", "false"),
        (
            "10 MB title",
            obs("title", "repeat('x', 10485760)"),
            "1",
            "false",
        ),
        ("one broadcaster twice", twice, "1", "false"),
        ("state", obs("state", "'sideways'"), "1", "false"),
        ("stream id", obs("sid", "NULL"), "1", "false"),
        ("viewers", obs("viewers", "-5"), "1", "false"),
        ("broadcaster", obs("id", "'abc'"), "1", "false"),
        ("misses", good.clone(), "0", "false"),
        ("notify", good.clone(), "1", "NULL"),
    ] {
        let sql =
            format!("SELECT twitch_sync.apply_observations(ARRAY[{arr}], {misses}, {notify})");
        let e = db.client.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{what}: {}", error_text(&e));
        assert!(
            e.as_db_error().and_then(|d| d.hint()).is_some(),
            "{what}: {}",
            error_text(&e)
        );
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams"),
        0,
        "nothing written"
    );
    let started = db.scalar_i64(&format!(
        "SELECT (twitch_sync.apply_observations(ARRAY[{good}], 1, false)).started::int8"
    ));
    assert_eq!(started, 1);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        1
    );
}
