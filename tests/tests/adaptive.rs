//! Adaptive polling (issue 15) through real runs against the simulator, with
//! intervals scaled down to seconds: a run checks only the channels that are
//! due, most overdue first, within the budget, records when each was checked,
//! and reports its plan and the staleness per class (run(), status(), metrics()).

use std::collections::BTreeSet;
use std::time::Duration;
use twitch_sync_e2e::{sqlstate, world, TestDb};

fn ids_checked(db: &mut TestDb, run_id: i64) -> BTreeSet<String> {
    db.client
        .query(
            "SELECT c.broadcaster_id FROM twitch_sync.channels c, twitch_sync.runs r
              WHERE r.run_id = $1 AND c.checked_at = r.started_at",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn a_run_checks_what_is_due_most_overdue_first_within_the_budget() {
    let mut db = TestDb::new(world(300, 0.4));
    db.track_first(300);
    db.client
        .batch_execute(
            "SET twitch_sync.adaptive_polling = on;
             SET twitch_sync.poll_hot_interval_secs = 3;
             SET twitch_sync.poll_live_interval_secs = 30;
             SET twitch_sync.poll_offline_interval_secs = 60;",
        )
        .unwrap();

    // Nothing was ever checked: everything is due, and the budget (1 request
    // = 100 ids) takes the first 100.
    db.client
        .batch_execute("SET twitch_sync.poll_budget_share = 0.0001")
        .unwrap();
    let first = db.run();
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["polling"]["budget_requests"], 1, "{first}");
    assert_eq!(first["polling"]["due"], 300, "{first}");
    assert_eq!(first["polling"]["chosen"], 100, "{first}");
    assert_eq!(first["helix_requests"], 1, "{first}");
    let checked_first = ids_checked(&mut db, first["run_id"].as_i64().unwrap());
    assert_eq!(checked_first.len(), 100);

    // The next run takes the 200 never checked before any checked one.
    db.client
        .batch_execute("SET twitch_sync.poll_budget_share = 0.9")
        .unwrap();
    let second = db.run();
    assert_eq!(second["polling"]["due"], 200, "{second}");
    assert_eq!(second["polling"]["chosen"], 200, "{second}");
    let checked_second = ids_checked(&mut db, second["run_id"].as_i64().unwrap());
    assert_eq!(checked_second.len(), 200);
    assert!(checked_first.is_disjoint(&checked_second));

    // Right after, nothing is due: no request at all.
    let idle = db.run();
    assert_eq!(idle["polling"]["chosen"], 0, "{idle}");
    assert_eq!(idle["helix_requests"], 0, "{idle}");
    assert_eq!(idle["status"], "ok", "{idle}");
    // channel_status tells the truth: a run that left every channel for later
    // checked none of them (last_checked_at is each channel's own last check).
    let checked_by = |db: &mut TestDb, run: &serde_json::Value| {
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.channel_status s, twitch_sync.runs r
              WHERE r.run_id = {} AND s.last_checked_at = r.started_at",
            run["run_id"]
        ))
    };
    assert_eq!(checked_by(&mut db, &idle), 0);
    assert_eq!(checked_by(&mut db, &first), 100);
    assert_eq!(checked_by(&mut db, &second), 200);

    // Hot streams (the top third by viewers here) come due first.
    let hot_viewers = db.scalar_i64(
        "SELECT percentile_disc(0.67) WITHIN GROUP (ORDER BY viewer_count)::int8 FROM twitch_sync.streams WHERE is_live",
    );
    db.client
        .batch_execute(&format!("SET twitch_sync.poll_hot_viewers = {hot_viewers}"))
        .unwrap();
    let hot: BTreeSet<String> = db
        .client
        .query(
            "SELECT broadcaster_id FROM twitch_sync.streams WHERE is_live AND viewer_count >= $1",
            &[&(hot_viewers as i32)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(hot.len() >= 10, "{} hot", hot.len());
    std::thread::sleep(Duration::from_millis(3_200));
    let third = db.run();
    let checked_third = ids_checked(&mut db, third["run_id"].as_i64().unwrap());
    assert_eq!(checked_third, hot, "{third}");
    let classes = third["polling"]["classes"].as_array().unwrap();
    let hot_class = classes.iter().find(|c| c["class"] == "hot").unwrap();
    assert_eq!(hot_class["channels"], hot.len(), "{third}");
    assert!(hot_class["max"].as_f64().unwrap() >= 3.0, "{third}");

    // status() and metrics() show the last run's plan.
    let polling: serde_json::Value = db
        .client
        .query_one("SELECT polling FROM twitch_sync.status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(polling, third["polling"]);
    let metrics: String = db
        .client
        .query_one("SELECT twitch_sync.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("twitch_sync_poll_staleness_seconds{class=\"hot\",quantile=\"0.95\"}"),
        "{metrics}"
    );
    // 90% of what 800 points a minute refill between the second run and this
    // one (seconds apart), as the run reports it.
    let period = third["polling"]["period_secs"].as_f64().unwrap();
    let budget = (800.0 * 0.9 * (period / 60.0).min(1.0)).floor().max(1.0);
    assert!((1.0..60.0).contains(&period), "{third}");
    assert_eq!(
        third["polling"]["budget_requests"], budget as i64,
        "{third}"
    );
    assert!(
        metrics.contains(&format!("twitch_sync_poll_budget_requests {budget}")),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("# HELP twitch_sync_poll_staleness_seconds")
            .count(),
        1
    );

    // Off again: every channel, as before; nothing adaptive in the document.
    db.client
        .batch_execute("SET twitch_sync.adaptive_polling = off")
        .unwrap();
    let fixed = db.run();
    assert_eq!(fixed["total_streams"], 300, "{fixed}");
    assert!(fixed.get("polling").is_none(), "{fixed}");
    assert_eq!(
        checked_by(&mut db, &fixed),
        300,
        "a fixed run checks every channel"
    );
}

#[test]
fn priority_shortens_the_interval_and_bad_priorities_are_refused() {
    let mut db = TestDb::new(world(20, 0.0));
    let ids = db.track_first(20);
    db.client
        .batch_execute(
            "SET twitch_sync.adaptive_polling = on;
             SET twitch_sync.poll_offline_interval_secs = 8;",
        )
        .unwrap();
    assert_eq!(db.run()["polling"]["chosen"], 20);
    let set: bool = db
        .client
        .query_one("SELECT twitch_sync.set_priority($1, 3)", &[&ids[0]])
        .unwrap()
        .get(0);
    assert!(set);
    // 8 s / (1 + 3) = 2 s: only the important one is due after 2.2 s
    std::thread::sleep(Duration::from_millis(2_200));
    let run = db.run();
    assert_eq!(run["polling"]["chosen"], 1, "{run}");
    assert_eq!(
        ids_checked(&mut db, run["run_id"].as_i64().unwrap()),
        BTreeSet::from([ids[0].clone()])
    );
    for bad in [
        "SELECT twitch_sync.set_priority('100000001', 11)",
        "SELECT twitch_sync.set_priority('100000001', NULL)",
    ] {
        let e = db.client.query_one(bad, &[]).unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{bad}");
    }
    let untracked: bool = db
        .client
        .query_one("SELECT twitch_sync.set_priority('999999999', 2)", &[])
        .unwrap()
        .get(0);
    assert!(!untracked);
}

#[test]
fn a_channel_untracked_during_a_run_is_not_written_back() {
    let cfg = twitch_sync_e2e::helix_sim::Config {
        latency: Duration::from_millis(800),
        ..world(10, 1.0)
    };
    let mut db = TestDb::new(cfg);
    let ids = db.track_first(10);
    let mut other = db.connect();
    other
        .batch_execute("SET twitch_sync.adaptive_polling = on")
        .unwrap();
    // the run waits on Helix (800 ms) while the channel is untracked
    let run = std::thread::spawn(move || {
        other
            .query_one("SELECT twitch_sync.run()", &[])
            .unwrap()
            .get::<_, serde_json::Value>(0)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(db.run_in_progress(), "the run is in flight");
    db.client
        .execute("SELECT twitch_sync.untrack($1)", &[&ids[0]])
        .unwrap();
    let doc = run.join().unwrap();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["started"], 9, "{doc}");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{}'",
            ids[0]
        )),
        0,
        "nothing written for the untracked channel"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        9
    );
}
