//! The EventSub background worker in a real cluster (twitch_sync in
//! shared_preload_libraries, `twitch_sync.eventsub_database` set with ALTER
//! SYSTEM): it creates and stores a conduit, assigns its shard to a WebSocket
//! session with the simulator, subscribes the tracked channels within the
//! cost budget (highest priority first), applies online and offline events
//! within about a second, follows untrack / track, records revocations,
//! reconnects after a dropped socket, comes back after pg_terminate_backend,
//! replaces a conduit deleted at Twitch (and subscribes again on the new
//! one), and deletes its conduit on DROP EXTENSION.
//!
//! One worker serves one database of the cluster, so this file is one test.

use std::time::{Duration, Instant};
use twitch_sync_e2e::helix_sim::eventsub::{EsFault, EventSubConfig};
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::{wait_for, world, TestDb};

fn enabled_subscriptions(c: &mut Client) -> Vec<(String, String)> {
    c.query(
        "SELECT broadcaster_id, type FROM twitch_sync.eventsub_subscriptions
          WHERE status = 'enabled' ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn sim_enabled(db: &TestDb, conduit: &str) -> Vec<(String, String)> {
    let shards = db.sim.es_shards(conduit);
    assert!(!shards.is_empty(), "the conduit exists at the simulator");
    let mut v: Vec<(String, String)> = db
        .sim
        .es_subscriptions()
        .into_iter()
        .filter(|s| s.3 == "enabled")
        .map(|s| (s.2, s.1))
        .collect();
    v.sort();
    v
}

/// Adaptive polling with every class checked each second, so that only
/// EventSub coverage (an hour) keeps a channel from being checked.
const ADAPTIVE_EVERY_SECOND: &str = "SET twitch_sync.adaptive_polling = on;
     SET twitch_sync.poll_offline_interval_secs = 1;
     SET twitch_sync.poll_live_interval_secs = 1;
     SET twitch_sync.poll_hot_interval_secs = 1";

/// The status twitch_sync recorded for a subscription.
fn recorded_status(c: &mut Client, subscription_id: &str) -> Option<String> {
    c.query_opt(
        "SELECT status FROM twitch_sync.eventsub_subscriptions WHERE subscription_id = $1",
        &[&subscription_id],
    )
    .unwrap()
    .map(|r| r.get(0))
}

fn live_stream(c: &mut Client, b: &str) -> Option<String> {
    c.query_opt(
        "SELECT stream_id FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
        &[&b],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
fn the_worker_keeps_streams_current_from_eventsub() {
    let mut db = TestDb::new(world(12, 0.0));
    db.sim.start_eventsub(EventSubConfig::default()).unwrap();
    // 3 channels' worth of budget (2 subscriptions each)
    db.sim.es_set_max_total_cost(6);
    let ids = db.track_first(4);
    // the last tracked channel has priority: it is covered first
    db.client
        .execute("SELECT twitch_sync.set_priority($1, 5)", &[&ids[3]])
        .unwrap();
    let admin = &mut db.cluster().connect("postgres");
    db.serve_eventsub(&[("twitch_sync.eventsub_reconcile_secs", "1")]);

    // connected, with a stored conduit whose shard is enabled at the simulator
    let (_, conduit, pid) = wait_for(Duration::from_secs(30), || {
        db.eventsub_worker().filter(|s| s.0 == "connected")
    })
    .unwrap_or_else(|| {
        panic!(
            "the worker connects: {:?}\n{}",
            db.eventsub_worker(),
            db.cluster().log()
        )
    });
    let conduit = conduit.expect("conduit stored");
    assert_eq!(db.sim.es_shards(&conduit)[0].1, "enabled");

    // subscriptions: the budget covers 3 channels, ranked priority first,
    // then (no broadcasts yet) the longest tracked
    let want: Vec<(String, String)> = {
        let mut w = Vec::new();
        for b in [&ids[3], &ids[0], &ids[1]] {
            w.push((b.clone(), "stream.offline".to_string()));
            w.push((b.clone(), "stream.online".to_string()));
        }
        w.sort();
        w
    };
    wait_for(Duration::from_secs(20), || {
        (enabled_subscriptions(&mut db.client) == want).then_some(())
    })
    .unwrap_or_else(|| panic!("subscribed: {:?}", enabled_subscriptions(&mut db.client)));
    assert_eq!(sim_enabled(&db, &conduit), want);
    let (cost, max): (Option<i32>, Option<i32>) = {
        let r = db
            .client
            .query_one(
                "SELECT total_cost, max_total_cost FROM twitch_sync.eventsub_worker",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((cost, max), (Some(6), Some(6)));

    // a subscription deleted at Twitch by another client (no message tells
    // the conduit): the periodic full listing (every 60 reconciliation
    // intervals, 60 s here) finds it gone and it is created anew
    let online0 = db
        .sim
        .es_subscriptions()
        .into_iter()
        .find(|s| s.2 == ids[0] && s.1 == "stream.online" && s.3 == "enabled")
        .expect("ids[0]'s online subscription")
        .0;
    assert!(db.sim.es_delete_subscription(&online0));
    wait_for(Duration::from_secs(90), || {
        (sim_enabled(&db, &conduit) == want).then_some(())
    })
    .unwrap_or_else(|| panic!("created anew: {:?}", sim_enabled(&db, &conduit)));

    // online: the live row within about a second, with an 'online' event
    let t = Instant::now();
    db.sim.world(|w| w.go_live(&ids[0]));
    let stream_id = db.sim.world(|w| w.stream_of(&ids[0]).unwrap().id.clone());
    wait_for(Duration::from_secs(5), || {
        (live_stream(&mut db.client, &ids[0]).as_deref() == Some(stream_id.as_str())).then_some(())
    })
    .expect("the online event opened the live row");
    let online_latency = t.elapsed();
    assert!(
        online_latency < Duration::from_secs(2),
        "online applied in {online_latency:?}"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.events WHERE event = 'online' AND stream_id = '{stream_id}'"
        )),
        1
    );
    // a channel left to polling (ids[2]) gets no event
    db.sim.world(|w| w.go_live(&ids[2]));
    // offline: ended at once
    db.sim.world(|w| w.go_offline(&ids[0]));
    wait_for(Duration::from_secs(5), || {
        live_stream(&mut db.client, &ids[0]).is_none().then_some(())
    })
    .expect("the offline event ended the stream");
    assert_eq!(live_stream(&mut db.client, &ids[2]), None, "not subscribed");
    let applied = db.scalar_i64("SELECT events_applied FROM twitch_sync.eventsub_worker");
    assert!(
        applied >= 2 || {
            // counters are written every 2 s
            std::thread::sleep(Duration::from_millis(2500));
            db.scalar_i64("SELECT events_applied FROM twitch_sync.eventsub_worker") >= 2
        }
    );
    // a frame that is not JSON is received and dropped: the counters add up
    let sums = "SELECT events_dropped, events_received = events_applied + events_duplicate + events_dropped
                  FROM twitch_sync.eventsub_worker";
    let dropped_before: i64 = db.client.query_one(sums, &[]).unwrap().get(0);
    assert_eq!(db.sim.es_send_raw("not json at all"), 1);
    wait_for(Duration::from_secs(10), || {
        let r = db.client.query_one(sums, &[]).unwrap();
        (r.get::<_, i64>(0) > dropped_before && r.get::<_, bool>(1)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "received = applied + duplicate + dropped: {:?}",
            db.client
                .query_one(
                    "SELECT events_received, events_applied, events_duplicate, events_dropped
                       FROM twitch_sync.eventsub_worker",
                    &[]
                )
                .map(|r| (
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, i64>(3)
                ))
        )
    });

    // untrack: its subscriptions are deleted; the freed budget covers ids[2]
    db.client
        .execute("SELECT twitch_sync.untrack($1)", &[&ids[1]])
        .unwrap();
    let want2: Vec<(String, String)> = {
        let mut w = Vec::new();
        for b in [&ids[3], &ids[0], &ids[2]] {
            w.push((b.clone(), "stream.offline".to_string()));
            w.push((b.clone(), "stream.online".to_string()));
        }
        w.sort();
        w
    };
    wait_for(Duration::from_secs(20), || {
        (enabled_subscriptions(&mut db.client) == want2 && sim_enabled(&db, &conduit) == want2)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "after untrack: {:?} / sim {:?}",
            enabled_subscriptions(&mut db.client),
            sim_enabled(&db, &conduit)
        )
    });

    // Twitch's budget grows outside the worker (a limit raised, another
    // conduit's subscriptions deleted): a channel the budget left to polling
    // is subscribed once the worker reads it again (it kept the full budget
    // it last heard, and never asked)
    let fifth = db.sim.world(|w| w.channels[5].id.clone());
    db.client
        .execute("SELECT twitch_sync.track($1)", &[&fifth])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // a pass finds no room
    db.sim.es_set_max_total_cost(8);
    wait_for(Duration::from_secs(20), || {
        (sim_enabled(&db, &conduit)
            .iter()
            .filter(|s| s.0 == fifth)
            .count()
            == 2)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a raised limit covers the fifth channel: {:?}",
            sim_enabled(&db, &conduit)
        )
    });
    let want2: Vec<(String, String)> = {
        let mut w = want2;
        w.push((fifth.clone(), "stream.offline".to_string()));
        w.push((fifth, "stream.online".to_string()));
        w.sort();
        w
    };

    // a revocation is recorded with its reason
    let revoked_id = db
        .sim
        .es_subscriptions()
        .into_iter()
        .find(|s| s.2 == ids[0] && s.1 == "stream.online" && s.3 == "enabled")
        .unwrap()
        .0;
    assert!(db.sim.es_revoke(&revoked_id, "authorization_revoked"));
    wait_for(Duration::from_secs(5), || {
        (recorded_status(&mut db.client, &revoked_id).as_deref() == Some("authorization_revoked"))
            .then_some(())
    })
    .expect("revocation recorded");

    // adaptive polling: an offline channel EventSub covers (ids[3]) waits for
    // the slow sweep; one whose online subscription was revoked (ids[0]) is
    // polled as offline channels are
    db.client.batch_execute(ADAPTIVE_EVERY_SECOND).unwrap();
    let checked_at = |db: &mut TestDb, b: &str| -> f64 {
        db.client
            .query_one(
                "SELECT extract(epoch FROM checked_at)::float8 FROM twitch_sync.channels WHERE broadcaster_id = $1",
                &[&b],
            )
            .unwrap()
            .get::<_, Option<f64>>(0)
            .unwrap_or(0.0)
    };
    db.run();
    let (covered0, revoked0) = (checked_at(&mut db, &ids[3]), checked_at(&mut db, &ids[0]));
    assert!(
        covered0 > 0.0 && revoked0 > 0.0,
        "the first run checks everything"
    );
    std::thread::sleep(Duration::from_millis(1500));
    db.run();
    assert_eq!(
        checked_at(&mut db, &ids[3]),
        covered0,
        "covered: not checked again before the sweep"
    );
    assert!(
        checked_at(&mut db, &ids[0]) > revoked0,
        "not covered: checked at its interval"
    );
    db.client.batch_execute("RESET ALL").unwrap();

    // a dropped socket: the worker reconnects, reassigns, and events flow again
    db.sim.es_fault(EsFault::DropSockets);
    wait_for(Duration::from_secs(20), || {
        let n = db.scalar_i64("SELECT reconnects FROM twitch_sync.eventsub_worker");
        let s = db.eventsub_worker().unwrap().0;
        (n >= 1 && s == "connected").then_some(())
    })
    .expect("reconnected");
    db.sim.world(|w| w.go_live(&ids[3]));
    wait_for(Duration::from_secs(5), || {
        live_stream(&mut db.client, &ids[3]).map(|_| ())
    })
    .expect("events after the reconnect");

    // Twitch disables the shard while the socket stays open: the worker reads
    // the shard's status back, takes a new session, and events flow again
    let before = db.sim.es_shards(&conduit)[0].0.clone();
    db.sim.es_fault(EsFault::DisableShards);
    wait_for(Duration::from_secs(20), || {
        let s = db.sim.es_shards(&conduit)[0].clone();
        (s.1 == "enabled" && s.0 != before).then_some(())
    })
    .expect("a disabled shard gets a new session");
    db.sim.world(|w| w.go_offline(&ids[3]));
    wait_for(Duration::from_secs(5), || {
        live_stream(&mut db.client, &ids[3]).is_none().then_some(())
    })
    .expect("events after the shard came back");

    // Twitch replays nothing a shard missed. While the shard is disabled (the
    // socket open and silent), ids[3] goes live: the notification is lost.
    // After the new session ids[3] is no longer covered until a poll checked
    // it, so the next adaptive run finds it live (not the slow sweep an hour
    // later).
    db.client.batch_execute(ADAPTIVE_EVERY_SECOND).unwrap();
    // (the worker records the new session in its row a moment after the
    // shard has it: coverage is judged against the recorded one)
    let session = db.sim.es_shards(&conduit)[0].0.clone();
    wait_for(Duration::from_secs(10), || {
        let recorded: Option<String> = db
            .client
            .query_one("SELECT session_id FROM twitch_sync.eventsub_worker", &[])
            .unwrap()
            .get(0);
        (recorded.is_some() && recorded == session).then_some(())
    })
    .expect("the worker's row shows the new session");
    let checked_earlier = checked_at(&mut db, &ids[3]);
    assert_eq!(db.run()["status"], "ok");
    let covered_before = checked_at(&mut db, &ids[3]);
    assert!(
        covered_before > checked_earlier,
        "not covered until a poll checks it in the worker's current session"
    );
    let poll_only_before = checked_at(&mut db, &ids[0]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(db.run()["status"], "ok");
    assert!(
        checked_at(&mut db, &ids[0]) > poll_only_before,
        "the run checked the channels that are due"
    );
    assert_eq!(
        checked_at(&mut db, &ids[3]),
        covered_before,
        "covered again once a poll checked it in this session"
    );
    let session_before = db.sim.es_shards(&conduit)[0].0.clone();
    let lost_before = db.sim.es_counters().undeliverable;
    db.sim.es_fault(EsFault::DisableShards);
    db.sim.world(|w| w.go_live(&ids[3]));
    wait_for(Duration::from_secs(5), || {
        (db.sim.es_counters().undeliverable > lost_before).then_some(())
    })
    .expect("the online notification had no shard to go to");
    let session_after = wait_for(Duration::from_secs(20), || {
        let s = db.sim.es_shards(&conduit)[0].clone();
        (s.1 == "enabled" && s.0 != session_before).then_some(s.0)
    })
    .expect("a new session after the shard was disabled");
    let stored_session = |db: &mut TestDb| -> Option<String> {
        db.client
            .query_one("SELECT session_id FROM twitch_sync.eventsub_worker", &[])
            .unwrap()
            .get(0)
    };
    wait_for(Duration::from_secs(10), || {
        (stored_session(&mut db) == session_after).then_some(())
    })
    .expect("the worker recorded its new session");
    assert_eq!(
        live_stream(&mut db.client, &ids[3]),
        None,
        "the online event was lost"
    );
    assert_eq!(db.run()["status"], "ok");
    assert!(
        live_stream(&mut db.client, &ids[3]).is_some(),
        "the first run after the new session checks the channel and finds it live"
    );
    db.client.batch_execute("RESET ALL").unwrap();
    db.sim.world(|w| w.go_offline(&ids[3]));
    wait_for(Duration::from_secs(5), || {
        live_stream(&mut db.client, &ids[3]).is_none().then_some(())
    })
    .expect("events flow in the new session");

    // A revocation sent while the connection was down is lost too (Twitch
    // sends it once): the socket drops, ids[0]'s offline subscription is
    // revoked before the worker reconnects (the frame goes to the dropped
    // connection), and the worker, reconnecting on its own, lists the
    // revoked subscriptions after its new session and records it.
    let offline_sub = db
        .sim
        .es_subscriptions()
        .into_iter()
        .find(|s| s.2 == ids[0] && s.1 == "stream.offline" && s.3 == "enabled")
        .expect("ids[0]'s offline subscription")
        .0;
    let pid_before = db.eventsub_worker().unwrap().2;
    let session_before = stored_session(&mut db);
    db.sim.es_fault(EsFault::DropSockets);
    assert!(db.sim.es_revoke(&offline_sub, "authorization_revoked"));
    wait_for(Duration::from_secs(20), || {
        let s = stored_session(&mut db);
        (s.is_some() && s != session_before).then_some(())
    })
    .expect("a new session after the drop");
    wait_for(Duration::from_secs(10), || {
        (recorded_status(&mut db.client, &offline_sub).as_deref() == Some("authorization_revoked"))
            .then_some(())
    })
    .expect("the revocation sent while disconnected is found by listing the revoked ones");
    // found by the listing, not by a revocation message that got through
    let log = db.cluster().log();
    assert!(
        log.contains(&format!(
            "subscription {offline_sub} (stream.offline of {}) listed as revoked",
            ids[0]
        )),
        "the listing recorded it"
    );
    assert!(
        !log.contains(&format!(
            "subscription {offline_sub} (stream.offline of {}) revoked:",
            ids[0]
        )),
        "no revocation message reached the worker"
    );
    assert_eq!(
        db.eventsub_worker().unwrap().2,
        pid_before,
        "the same worker, reconnected"
    );

    // status() and metrics() show the worker
    let (state, covered, poll_only): (String, i64, i64) = {
        let r = db
            .client
            .query_one(
                "SELECT eventsub ->> 'state', (eventsub ->> 'channels_covered')::bigint,
                        (eventsub ->> 'channels_poll_only')::bigint
                   FROM twitch_sync.status()",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(state, "connected");
    // ids[0] lost its online subscription (revoked): 3 covered of 4 tracked
    assert_eq!((covered, poll_only), (3, 1));
    let metrics: String = db
        .client
        .query_one("SELECT twitch_sync.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("twitch_sync_eventsub_connected 1"),
        "{metrics}"
    );
    assert!(metrics.contains("twitch_sync_eventsub_events_total{result=\"applied\"}"));

    // pg_cancel_backend has no query to cancel: the worker goes on, the same
    // process on the same session, and logs no error
    admin
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let alive: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(alive, 1, "the worker's process lives on after a cancel");
    let after_cancel = db.eventsub_worker().expect("the worker's row");
    assert_eq!(
        (after_cancel.0.as_str(), after_cancel.2),
        ("connected", pid),
        "a cancel neither ends nor restarts the worker"
    );

    // the shard assigned to another session (another client on this
    // conduit), still enabled: Get Conduit Shards shows it; the worker takes
    // it back for a session of its own
    assert!(db
        .sim
        .es_assign_shard_elsewhere(&conduit, 0, "AQoQelsewhere"));
    let back = wait_for(Duration::from_secs(20), || {
        let shards = db.sim.es_shards(&conduit);
        let session = shards.first().and_then(|s| s.0.clone())?;
        (session != "AQoQelsewhere" && shards[0].1 == "enabled").then_some(session)
    })
    .expect("the worker assigns the shard to a session of its own again");
    wait_for(Duration::from_secs(20), || {
        db.client
            .query_one(
                "SELECT 1 FROM twitch_sync.eventsub_worker WHERE state = 'connected' AND session_id = $1",
                &[&back],
            )
            .ok()
    })
    .expect("connected on that session");

    // pg_terminate_backend restarts the worker; it reuses its conduit
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let (_, conduit2, pid2) = wait_for(Duration::from_secs(30), || {
        db.eventsub_worker()
            .filter(|s| s.0 == "connected" && s.2 != pid)
    })
    .expect("the worker is back");
    assert_eq!(conduit2.as_deref(), Some(conduit.as_str()));
    assert_ne!(pid2, pid);

    // the conduit is deleted at Twitch (Delete Conduit, or Twitch's 72 hours
    // with every shard disabled) while the worker is connected: Get Conduit
    // Shards answers 404; the worker forgets it, creates a new conduit,
    // assigns its shard, subscribes every tracked channel again on it (the
    // revoked one too: it was a subscription of the old conduit), and events
    // flow through it. Then once more with the socket dropped at the same
    // time: the new session's assignment answers 404 as well.
    let mut conduit = conduit;
    for (round, drop_socket) in [(1, false), (2, true)] {
        let old = conduit.clone();
        assert!(db.sim.es_delete_conduit(&old));
        if drop_socket {
            db.sim.es_fault(EsFault::DropSockets);
        }
        let new = wait_for(Duration::from_secs(20), || {
            let (state, c): (Option<String>, Option<String>) = {
                let r = db
                    .client
                    .query_one(
                        "SELECT eventsub ->> 'state', eventsub ->> 'conduit_id' FROM twitch_sync.status()",
                        &[],
                    )
                    .unwrap();
                (r.get(0), r.get(1))
            };
            c.filter(|c| *c != old && state.as_deref() == Some("connected"))
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round}: a new conduit after the old one was deleted: {:?}\n{}",
                db.eventsub_worker(),
                db.cluster().log()
            )
        });
        assert_eq!(db.sim.es_shards(&new)[0].1, "enabled", "round {round}");
        wait_for(Duration::from_secs(20), || {
            (enabled_subscriptions(&mut db.client) == want2 && sim_enabled(&db, &new) == want2)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "round {round}: subscribed again on the new conduit: {:?} / sim {:?}",
                enabled_subscriptions(&mut db.client),
                sim_enabled(&db, &new)
            )
        });
        // the rows on record are the new conduit's subscriptions
        let mut on_record: Vec<String> = db
            .client
            .query(
                "SELECT subscription_id FROM twitch_sync.eventsub_subscriptions",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        on_record.sort();
        let mut at_sim: Vec<String> = db
            .sim
            .es_subscriptions()
            .into_iter()
            .filter(|s| s.3 == "enabled")
            .map(|s| s.0)
            .collect();
        at_sim.sort();
        assert_eq!(on_record, at_sim, "round {round}");
        // an online event through the new conduit opens the live row
        let b = &ids[3];
        db.sim.world(|w| w.go_live(b));
        let stream_id = db.sim.world(|w| w.stream_of(b).unwrap().id.clone());
        wait_for(Duration::from_secs(5), || {
            (live_stream(&mut db.client, b).as_deref() == Some(stream_id.as_str())).then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: the online event through the new conduit"));
        db.sim.world(|w| w.go_offline(b));
        wait_for(Duration::from_secs(5), || {
            live_stream(&mut db.client, b).is_none().then_some(())
        })
        .unwrap_or_else(|| panic!("round {round}: the offline event through the new conduit"));
        let stored = db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.eventsub_worker WHERE conduit_id = '{new}'"
        ));
        assert_eq!(stored, 1, "round {round}: the new conduit is stored");
        conduit = new;
    }

    // DROP EXTENSION: the worker lets go and deletes its conduit at Twitch
    db.client
        .batch_execute("DROP EXTENSION twitch_sync")
        .unwrap();
    wait_for(Duration::from_secs(15), || {
        db.sim.es_shards(&conduit).is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("conduit deleted:\n{}", db.cluster().log()));
    let log = db.cluster().log();
    assert!(
        log.contains(&format!("subscription {revoked_id} ")),
        "the server log read is the one the worker wrote to (its revocation line)"
    );
    let secret = db.sim.client_secret();
    assert!(!log.contains(&secret), "no secret in the server log");
    admin
        .batch_execute("ALTER SYSTEM RESET twitch_sync.eventsub_database")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
}
