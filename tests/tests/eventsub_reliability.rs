//! The EventSub worker under the reliability cases, in its own
//! cluster (one worker per cluster): 10,000 events of broadcasters nobody
//! tracks (ignored and counted), credentials replaced while connected, a
//! SIGKILL of the worker (the postmaster restarts everything and the worker
//! resumes with its conduit), a Postgres restart, another extension version
//! in the catalog (new binaries before ALTER EXTENSION UPDATE: the conduit is
//! kept), and no secret or token in a debug2 server log.

use serde_json::json;
use std::time::Duration;
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::{wait_for, world, TestDb};

fn connected(db: &mut TestDb) -> Option<(String, i32)> {
    db.eventsub_worker()
        .filter(|w| w.0 == "connected")
        .and_then(|w| Some((w.1?, w.2)))
}

/// The worker connected with every tracked channel subscribed (2 each).
fn ready(db: &mut TestDb, channels: i64) -> (String, i32) {
    wait_for(Duration::from_secs(60), || {
        let w = connected(db)?;
        let n = db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.eventsub_subscriptions WHERE status = 'enabled'",
        );
        (n == 2 * channels).then_some(w)
    })
    .unwrap_or_else(|| {
        panic!(
            "worker ready: {:?}\n{}",
            db.eventsub_worker(),
            db.cluster().log()
        )
    })
}

fn counter(c: &mut Client, column: &str) -> i64 {
    c.query_one(
        &format!("SELECT {column} FROM twitch_sync.eventsub_worker"),
        &[],
    )
    .unwrap()
    .get(0)
}

/// A stream.online notification frame, as Twitch sends it, for any broadcaster.
fn online_frame(n: u64, broadcaster: &str, conduit: &str) -> String {
    let now = time_now();
    json!({
        "metadata": {"message_id": format!("foreign-{n}"), "message_type": "notification",
                     "message_timestamp": now, "subscription_type": "stream.online",
                     "subscription_version": "1"},
        "payload": {
            "subscription": {"id": format!("sub-{n}"), "status": "enabled", "type": "stream.online",
                             "version": "1", "cost": 1,
                             "condition": {"broadcaster_user_id": broadcaster},
                             "transport": {"method": "conduit", "conduit_id": conduit},
                             "created_at": now},
            "event": {"id": format!("{}", 900_000_000 + n), "broadcaster_user_id": broadcaster,
                      "broadcaster_user_login": "someone", "broadcaster_user_name": "Someone",
                      "type": "live", "started_at": now}
        }
    })
    .to_string()
}

fn time_now() -> String {
    twitch_sync_e2e::helix_sim::eventsub::rfc3339_nanos(std::time::SystemTime::now())
}

#[test]
fn the_worker_survives_what_a_server_goes_through() {
    let mut db = TestDb::new(world(20, 0.0));
    let ids = db.track_first(3);
    let mut admin = db.cluster().connect("postgres");
    admin
        .batch_execute("ALTER SYSTEM SET log_min_messages = debug2")
        .unwrap();
    db.serve_eventsub(&[("twitch_sync.eventsub_reconcile_secs", "1")]);
    let (conduit, _) = ready(&mut db, 3);

    // 10,000 notifications of broadcasters nobody tracks: ignored, counted
    let before = counter(&mut db.client, "events_dropped");
    let streams = db.scalar_i64("SELECT count(*) FROM twitch_sync.streams");
    for n in 0..10_000u64 {
        let b = format!("{}", 800_000_000 + n);
        assert_eq!(db.sim.es_send_raw(&online_frame(n, &b, &conduit)), 1);
    }
    wait_for(Duration::from_secs(120), || {
        (counter(&mut db.client, "events_dropped") - before >= 10_000).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "10,000 foreign events counted: {}",
            counter(&mut db.client, "events_dropped") - before
        )
    });
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams"),
        streams,
        "nothing stored for them"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.events"),
        0,
        "no event"
    );
    // and the tracked ones still flow
    db.sim.world(|w| w.go_live(&ids[0]));
    wait_for(Duration::from_secs(5), || {
        (db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{}' AND is_live",
            ids[0]
        )) == 1)
            .then_some(())
    })
    .expect("a tracked channel's online still applies");

    // credentials replaced while connected: a wrong secret stops it (idle,
    // with Twitch's refusal as the reason), the right one brings it back on
    // the same conduit
    let (id, secret) = (db.sim.client_id(), db.sim.client_secret());
    db.client
        .execute(
            "SELECT twitch_sync.set_credentials($1, $2)",
            &[&id, &"not-the-secret"],
        )
        .unwrap();
    let mut last = None;
    let detail = wait_for(Duration::from_secs(20), || {
        let r = db
            .client
            .query_one("SELECT state, detail FROM twitch_sync.eventsub_worker", &[])
            .unwrap();
        let (state, detail): (String, Option<String>) = (r.get(0), r.get(1));
        last = Some((state.clone(), detail.clone()));
        // (idle with "credentials changed" may show first, before the new
        // ones are tried)
        (state == "idle" && detail.as_deref() != Some("credentials changed")).then_some(detail)
    })
    .unwrap_or_else(|| panic!("the worker lets go of the old session: {last:?}"));
    let detail = detail.expect("idle after a refusal, with no reason given");
    // Twitch's refusal of the secret is the reason (as runs.error says it)
    assert!(
        detail.contains("invalid client secret") || detail.contains("403"),
        "{detail}"
    );
    assert!(!detail.contains("not-the-secret"), "{detail}");
    db.client
        .execute(
            "SELECT twitch_sync.set_credentials($1, $2)",
            &[&id, &secret],
        )
        .unwrap();
    let (conduit2, _) = ready(&mut db, 3);
    assert_eq!(conduit2, conduit, "same client id: same conduit");

    // SIGKILL of the worker: the postmaster resets the cluster, the worker resumes
    let (_, pid) = connected(&mut db).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // the postmaster ends every backend (ours too) before it starts again
    wait_for(Duration::from_secs(30), || {
        db.client.query_one("SELECT 1", &[]).is_err().then_some(())
    })
    .expect("the crash reset the server");
    db.client = wait_for(Duration::from_secs(60), || {
        db.cluster()
            .connect_opt(&db.name)
            .and_then(|mut c| c.query_one("SELECT 1", &[]).ok().map(|_| c))
    })
    .expect("the server accepts connections again");
    let (conduit3, pid3) = ready(&mut db, 3);
    assert_eq!(conduit3, conduit);
    assert_ne!(pid3, pid);
    db.sim.world(|w| w.go_offline(&ids[0]));
    wait_for(Duration::from_secs(5), || {
        (db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{}' AND is_live",
            ids[0]
        )) == 0)
            .then_some(())
    })
    .expect("events flow after the crash restart");

    // a Postgres restart
    db.cluster().restart();
    db.client = db.cluster().connect(&db.name);
    let (conduit4, _) = ready(&mut db, 3);
    assert_eq!(conduit4, conduit);

    // new binaries before ALTER EXTENSION ... UPDATE (another version in the
    // catalog): the worker lets go of its session but keeps the conduit
    db.client
        .batch_execute("UPDATE pg_extension SET extversion = '0.1.9' WHERE extname = 'twitch_sync'")
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        let shards = db.sim.es_shards(&conduit);
        (!shards.is_empty() && shards[0].1 != "enabled").then_some(())
    })
    .expect("the worker let go of its session, the conduit is still there");
    db.client
        .batch_execute("UPDATE pg_extension SET extversion = '0.2.0' WHERE extname = 'twitch_sync'")
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        (db.sim.es_shards(&conduit)[0].1 == "enabled").then_some(())
    })
    .expect("back on the same conduit after the update");

    // no secret and no token in a debug2 log
    let token: String = db
        .client
        .query_one("SELECT access_token FROM twitch_sync.credentials", &[])
        .unwrap()
        .get(0);
    let log = db.cluster().log();
    assert!(log.contains("DEBUG"), "the log is at debug2");
    assert!(!log.contains(&secret), "no client secret in the log");
    assert!(!log.contains(&token), "no access token in the log");
    admin = db.cluster().connect("postgres");
    admin
        .batch_execute("ALTER SYSTEM RESET log_min_messages")
        .unwrap();
    admin
        .batch_execute("ALTER SYSTEM RESET twitch_sync.eventsub_database")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
}
