//! EventSub into the database (issue 14, in progress): notifications from the
//! simulator's EventSub WebSocket server, received by the core's shard driver
//! over a real socket, applied with `twitch_sync.apply_eventsub` as single
//! observations of the transition layer, with events and NOTIFY as polling.
//! (The background worker that will do this inside Postgres does not exist yet:
//! the test plays its part.)

use std::sync::{Arc, Mutex};
use std::time::Duration;
use twitch_sync_core::client::TwitchClient;
use twitch_sync_core::eventsub::apply::EventArgs;
use twitch_sync_core::eventsub::helix::CreateOutcome;
use twitch_sync_core::eventsub::message::Envelope;
use twitch_sync_core::eventsub::session::ShardConfig;
use twitch_sync_core::eventsub::socket::{run_shard, ShardParams, ShardView};
use twitch_sync_core::SyncConfig;
use twitch_sync_e2e::helix_sim::eventsub::EventSubConfig;
use twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator;
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::{sqlstate, wait_for, world, TestDb};

fn apply(c: &mut Client, a: &EventArgs) -> String {
    c.query_one(
        "SELECT twitch_sync.apply_eventsub($1, $2::text::timestamptz, $3, $4, $5, $6, $7::text::timestamptz)",
        &[&a.message_id, &a.message_at, &a.event, &a.broadcaster_id, &a.stream_id, &a.login, &a.started_at],
    )
    .expect("apply_eventsub")
    .get(0)
}

fn live_row(c: &mut Client, b: &str) -> Option<(String, i32, i32)> {
    c.query_opt(
        "SELECT stream_id, viewer_count, sample_count FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
        &[&b],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

#[test]
fn notifications_over_a_socket_apply_as_observations() {
    let mut db = TestDb::new(world(10, 0.0));
    let ids = db.track_first(3);
    let untracked = db.sim.world(|w| w.channels[5].id.clone());
    db.sim.start_eventsub(EventSubConfig::default()).unwrap();
    let mut listener = db.connect();
    listener.batch_execute("LISTEN twitch_sync").unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = SyncConfig {
        helix_url: db.sim.helix_url(),
        auth_url: db.sim.auth_url(),
        ..SyncConfig::default()
    };
    let client = Arc::new(TwitchClient::new(&cfg, &db.sim.client_id()).unwrap());
    let token = rt
        .block_on(client.mint_token(&db.sim.client_secret()))
        .unwrap()
        .access_token;
    let conduit = rt.block_on(client.create_conduit(&token, 1)).0.unwrap();
    for b in [&ids[0], &ids[1], &untracked] {
        for kind in ["stream.online", "stream.offline"] {
            let r = rt
                .block_on(client.create_subscription(&token, kind, b, &conduit.id))
                .0
                .unwrap();
            assert!(matches!(r, CreateOutcome::Created { .. }));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
    let view = Arc::new(Mutex::new(ShardView::default()));
    let (_stop, stop_rx) = tokio::sync::oneshot::channel();
    rt.spawn(run_shard(
        ShardParams {
            config: ShardConfig {
                base_url: db.sim.eventsub_url().unwrap(),
                ..ShardConfig::default()
            },
            conduit_id: conduit.id.clone(),
            shard_id: "0".into(),
            seed: 3,
        },
        client.clone(),
        token,
        tx,
        view.clone(),
        stop_rx,
    ));
    wait_for(Duration::from_secs(10), || {
        view.lock().unwrap().connected.then_some(())
    })
    .expect("shard assigned");
    let mut next = || {
        let env = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await })
            .expect("a notification in time")
            .unwrap();
        EventArgs::of(&env).expect("a notification")
    };

    // online: opens the live row with no count (EventSub carries none), one 'online' event
    db.sim.world(|w| w.go_live(&ids[0]));
    let stream_id = db.sim.world(|w| w.stream_of(&ids[0]).unwrap().id.clone());
    let online = next();
    assert_eq!(apply(&mut db.client, &online), "applied");
    assert_eq!(
        live_row(&mut db.client, &ids[0]),
        Some((stream_id.clone(), 0, 0))
    );
    let payload: String = {
        let mut n = listener.notifications();
        let note = n
            .timeout_iter(Duration::from_secs(5))
            .next()
            .unwrap()
            .unwrap();
        db.client
            .query_one(
                "SELECT event || '/' || stream_id FROM twitch_sync.events WHERE event_id = $1::text::bigint",
                &[&note.payload()],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(payload, format!("online/{stream_id}"));
    // the same message again: a duplicate, nothing written
    assert_eq!(apply(&mut db.client, &online), "duplicate");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.events WHERE event = 'online'"),
        1
    );

    // a poll while live: the count arrives, the broadcast continues
    let run = db.run();
    assert_eq!(run["started"], 0, "{run}");
    let (sid, _, samples) = live_row(&mut db.client, &ids[0]).unwrap();
    assert_eq!((sid.as_str(), samples), (stream_id.as_str(), 1));
    db.assert_matches_world();

    // an offline naming another broadcast than the live one is superseded
    let mut late = online.clone();
    late.message_id = "late-offline".into();
    late.event = "offline";
    late.stream_id = Some("1".into());
    assert_eq!(apply(&mut db.client, &late), "superseded");
    assert!(live_row(&mut db.client, &ids[0]).is_some());

    // offline: ends it at once
    db.sim.world(|w| w.go_offline(&ids[0]));
    let offline = next();
    assert_eq!(offline.stream_id.as_deref(), Some(stream_id.as_str()));
    assert_eq!(apply(&mut db.client, &offline), "applied");
    assert_eq!(live_row(&mut db.client, &ids[0]), None);
    // a late online of the broadcast that offline ended does not reopen it
    let mut late_online = online.clone();
    late_online.message_id = "late-online".into();
    assert_eq!(apply(&mut db.client, &late_online), "superseded");
    assert_eq!(live_row(&mut db.client, &ids[0]), None);

    // an untracked broadcaster: only its message id is kept
    db.sim.world(|w| w.go_live(&untracked));
    let foreign = next();
    assert_eq!(foreign.broadcaster_id, untracked);
    assert_eq!(apply(&mut db.client, &foreign), "untracked");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{untracked}'"
        )),
        0
    );

    // stale (older than 10 minutes) and malformed calls
    let mut old = online.clone();
    old.message_id = "old".into();
    old.message_at = "2020-01-01T00:00:00Z".into();
    assert_eq!(apply(&mut db.client, &old), "stale");
    let e = db
        .client
        .query_one(
            "SELECT twitch_sync.apply_eventsub('x', now(), 'online', '01', '5')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.eventsub_messages"),
        5,
        "online, late offline, offline, late online, untracked"
    );
    // PUBLIC may not call it
    let can: bool = db
        .client
        .query_one(
            "SELECT has_function_privilege('public', 'twitch_sync.apply_eventsub(text, timestamptz, text, text, text, text, timestamptz, boolean)', 'EXECUTE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!can);
}

/// Twitch's stream.offline names no stream (its `id` is new in 2026 and
/// optional here): an offline sent before the live broadcast began (before the
/// online event that opened it, or before its `started_at`) ended an earlier
/// broadcast and is `superseded`, however late it arrives and under whatever
/// message id.
#[test]
fn a_late_offline_does_not_end_a_newer_broadcast() {
    let mut db = TestDb::new(world(10, 0.0));
    let b = db.track_first(1).remove(0);
    let event = |db: &mut TestDb,
                 id: &str,
                 ago: &str,
                 kind: &str,
                 stream: Option<&str>|
     -> String {
        db.client
            .query_one(
                "SELECT twitch_sync.apply_eventsub($1, now() - $2::text::interval, $3, $4, $5,
                                                   NULL, now() - $2::text::interval - interval '1 second')",
                &[&id, &ago, &kind, &b, &stream],
            )
            .unwrap()
            .get(0)
    };
    let live = |db: &mut TestDb| live_row(&mut db.client, &b).map(|r| r.0);
    let sid = |s: &str| Some(s.to_string());

    // one broadcast opened and ended by its events, then a new one opened
    assert_eq!(
        event(&mut db, "on-1", "60 s", "online", Some("900000001")),
        "applied"
    );
    assert_eq!(event(&mut db, "off-1", "30 s", "offline", None), "applied");
    assert_eq!(live(&mut db), None);
    assert_eq!(
        event(&mut db, "on-2", "20 s", "online", Some("900000002")),
        "applied"
    );
    // the first broadcast's offline again, under another message id, sent
    // before the online of the live one: the live broadcast stays
    assert_eq!(
        event(&mut db, "off-1-again", "30 s", "offline", None),
        "superseded"
    );
    assert_eq!(live(&mut db), sid("900000002"));
    // an earlier broadcast's online, delivered late (Twitch resends): sent
    // before the live one was opened, it neither ends nor replaces it
    assert_eq!(
        event(&mut db, "on-0-late", "60 s", "online", Some("900000000")),
        "superseded"
    );
    assert_eq!(live(&mut db), sid("900000002"));
    // an offline sent after it ends it
    assert_eq!(event(&mut db, "off-2", "10 s", "offline", None), "applied");
    assert_eq!(live(&mut db), None);

    // a broadcast a poll opened: Helix's started_at is Twitch's clock too
    db.sim.world(|w| w.go_live(&b));
    let run = db.run();
    assert_eq!(run["started"], 1, "{run}");
    let started: String = db
        .client
        .query_one(
            "SELECT (started_at - interval '5 seconds')::text FROM twitch_sync.streams
              WHERE broadcaster_id = $1 AND is_live AND state_source = 'poll'",
            &[&b],
        )
        .unwrap()
        .get(0);
    let polled = live(&mut db);
    assert!(polled.is_some());
    let before_start: String = db
        .client
        .query_one(
            "SELECT twitch_sync.apply_eventsub('off-before-start', $1::text::timestamptz, 'offline', $2)",
            &[&started, &b],
        )
        .unwrap()
        .get(0);
    assert_eq!(before_start, "superseded");
    assert_eq!(live(&mut db), polled);
    let online_before_start: String = db
        .client
        .query_one(
            "SELECT twitch_sync.apply_eventsub('on-before-start', $1::text::timestamptz, 'online', $2,
                                               '900000003', NULL, $1::text::timestamptz - interval '1 minute')",
            &[&started, &b],
        )
        .unwrap()
        .get(0);
    assert_eq!(online_before_start, "superseded");
    assert_eq!(live(&mut db), polled);
    // a restart: the online of a broadcast that began after the live one
    // replaces it
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(
        event(&mut db, "on-5", "0 s", "online", Some("900000005")),
        "applied"
    );
    assert_eq!(live(&mut db), sid("900000005"));
    assert_eq!(event(&mut db, "off-3", "0 s", "offline", None), "applied");
    assert_eq!(live(&mut db), None);
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.events WHERE broadcaster_id = '{b}' AND event = 'offline'"
        )),
        3,
        "one offline event per broadcast (the restart's is a restart event)"
    );
}
