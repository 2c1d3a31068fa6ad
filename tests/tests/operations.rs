//! Operations end to end: real pg_cron firing, a real LISTEN connection,
//! alerts, pruning on data, and metrics read by a Prometheus text parser.

use std::collections::HashMap;
use std::time::Duration;
use twitch_sync_e2e::helix_sim::{Fault, FaultKind};
use twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator;
use twitch_sync_e2e::postgres::{Client, Notification};
use twitch_sync_e2e::serde_json::Value;
use twitch_sync_e2e::{error_text, sqlstate, wait_for, world, TestDb};

/// Notifications that arrive on `listener` within `wait`. Panics if the
/// connection fails (it would otherwise look like silence).
fn drain(listener: &mut Client, wait: Duration) -> Vec<Notification> {
    let mut out = Vec::new();
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(wait);
    loop {
        match it.next() {
            Ok(Some(note)) => out.push(note),
            Ok(None) => return out,
            Err(e) => panic!("the LISTEN connection failed: {e}"),
        }
    }
}

/// Asserts that no notification at all arrives on `listener` within `wait`.
fn assert_silent(listener: &mut Client, wait: Duration, what: &str) {
    let notes: Vec<(String, String)> = drain(listener, wait)
        .iter()
        .map(|n| (n.channel().to_string(), n.payload().to_string()))
        .collect();
    assert!(notes.is_empty(), "{what}: notified {notes:?}");
}

/// The events (`twitch_sync`) or alerts (`twitch_sync_alerts`) that the
/// notifications on `channel` point to: a NOTIFY carries only an id, the
/// consumer reads the row from the outbox table (as README "Events" shows).
/// Every one must point to a row: a NOTIFY for a row that is not there (one
/// sent for a transaction that did not commit) fails the test.
fn payloads(db: &mut TestDb, notes: &[Notification], channel: &str) -> Vec<Value> {
    let sql = match channel {
        "twitch_sync" => "SELECT payload FROM twitch_sync.events WHERE event_id = $1::text::bigint",
        "twitch_sync_alerts" => {
            "SELECT payload FROM twitch_sync.alerts WHERE alert_id = $1::text::bigint"
        }
        other => panic!("no outbox for {other}"),
    };
    notes
        .iter()
        .filter(|n| n.channel() == channel)
        .map(|n| {
            assert!(
                n.payload().parse::<i64>().is_ok(),
                "a NOTIFY carries only an id: {}",
                n.payload()
            );
            db.client
                .query_opt(sql, &[&n.payload()])
                .expect("read the outbox")
                .map(|r| r.get::<_, Value>(0))
                .unwrap_or_else(|| panic!("a NOTIFY on {channel} for {}: no such row", n.payload()))
        })
        .collect()
}

#[test]
fn pg_cron_runs_the_scheduled_job_for_real() {
    // pg_cron runs in the cluster's `postgres` database (cron.database_name).
    let mut db = TestDb::existing("postgres", world(50, 0.4));
    db.client.batch_execute("CREATE EXTENSION pg_cron").unwrap();
    db.track_first(50);
    // pg_cron itself judges schedules; its refusal reaches the caller as 22023
    // with a hint that shows a valid one.
    let pg_cron_version: String = db
        .client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'",
            &[],
        )
        .unwrap()
        .get(0);
    let mut bad_schedules = vec!["* * *", "61 * * * *", "every minute", "", "@sometimes"];
    if pg_cron_version.starts_with("1.4") {
        bad_schedules.push("30 seconds"); // interval schedules came with pg_cron 1.5
    }
    for bad in bad_schedules {
        let err = db
            .client
            .query_one("SELECT twitch_sync.schedule($1)", &[&bad])
            .unwrap_err();
        assert_eq!(sqlstate(&err), "22023", "{bad}: {}", error_text(&err));
        let text = error_text(&err);
        assert!(text.contains("invalid schedule"), "{bad}: {text}");
        assert!(
            text.contains("*/10 * * * *"),
            "{bad}: the hint shows a valid schedule: {text}"
        );
    }
    // a long argument is cut in the message, as every other one is (it was
    // echoed whole: a 10 MB message and log line)
    let long = "*".repeat(100_000);
    let err = db
        .client
        .query_one("SELECT twitch_sync.schedule($1)", &[&long])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{}", error_text(&err));
    let message = err.as_db_error().map_or("", |d| d.message()).to_string();
    assert!(message.len() < 100, "{} characters", message.len());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM cron.job WHERE jobname = 'twitch-viewer-count-sync'"),
        0,
        "a refused schedule creates no job"
    );
    // pg_cron job names are unique per user only: another role's job under
    // the same name, running something else, is not twitch_sync's job.
    db.client
        .batch_execute(
            "DROP ROLE IF EXISTS cron_squatter; CREATE ROLE cron_squatter;
             GRANT USAGE ON SCHEMA cron TO cron_squatter;
             SET ROLE cron_squatter;
             SELECT cron.schedule('twitch-viewer-count-sync', '0 0 1 1 *', 'SELECT 1');
             SELECT cron.schedule('twitch-viewer-count-sync-maintain', '0 0 1 1 *', 'SELECT 2');
             RESET ROLE;",
        )
        .unwrap();
    let squatter_jobs = "SELECT count(*) FROM cron.job WHERE username = 'cron_squatter'";
    let schedule_shown: Option<String> = db
        .client
        .query_one("SELECT schedule FROM twitch_sync.status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(schedule_shown, None, "another role's job is not ours");
    let jobid: i64 = db
        .client
        .query_one("SELECT twitch_sync.schedule('* * * * *')", &[])
        .unwrap()
        .get(0);
    assert!(jobid > 0);
    // scheduling again updates the same job
    let again: i64 = db
        .client
        .query_one("SELECT twitch_sync.schedule('* * * * *')", &[])
        .unwrap()
        .get(0);
    assert_eq!(again, jobid);
    let row = db
        .client
        .query_one(
            "SELECT schedule, schedule_active, extract(epoch FROM next_run_at - now())::float8 FROM twitch_sync.status()",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "* * * * *");
    assert!(row.get::<_, bool>(1));
    let due_in: f64 = row.get(2);
    assert!((0.0..=60.0).contains(&due_in), "next run due in {due_in} s");

    // The job fires at the next minute: wait for its run.
    let fired = wait_for(Duration::from_secs(150), || {
        let n = db
            .client
            .query_one(
                "SELECT count(*) FROM twitch_sync.runs WHERE status = 'ok'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0);
        (n > 0).then_some(n)
    });
    assert!(
        fired.is_some(),
        "pg_cron ran twitch_sync.run(); server log:\n{}",
        db.cluster().log()
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        20
    );
    let job = wait_for(Duration::from_secs(10), || {
        let r = db
            .client
            .query_one("SELECT last_job_status FROM twitch_sync.status()", &[])
            .unwrap();
        r.get::<_, Option<String>>(0).filter(|s| s == "succeeded")
    });
    assert_eq!(job.as_deref(), Some("succeeded"));

    assert!(db
        .client
        .query_one("SELECT twitch_sync.unschedule()", &[])
        .unwrap()
        .get::<_, bool>(0));
    assert!(!db
        .client
        .query_one("SELECT twitch_sync.unschedule()", &[])
        .unwrap()
        .get::<_, bool>(0));
    let gone: Option<String> = db
        .client
        .query_one("SELECT schedule FROM twitch_sync.status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(gone, None);
    assert_eq!(
        db.scalar_i64(squatter_jobs),
        2,
        "unschedule() left the other role's jobs alone"
    );
    db.client
        .batch_execute(
            "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = 'cron_squatter';
             REVOKE USAGE ON SCHEMA cron FROM cron_squatter; DROP ROLE cron_squatter;",
        )
        .unwrap();
}

#[test]
fn schedule_explains_what_is_missing() {
    let mut db = TestDb::new(world(1, 0.0));
    // pg_cron runs in database `postgres`, not here
    let err = db
        .client
        .query_one("SELECT twitch_sync.schedule()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    let text = error_text(&err);
    assert!(text.contains("pg_cron runs in database postgres"), "{text}");
    // The fix schedules this database's jobs under names of their own: pg_cron
    // job names span databases, and the plain name would take over the job of
    // the database pg_cron runs in.
    let job = format!("twitch-viewer-count-sync-{}", db.name);
    for call in [
        format!("cron.schedule_in_database('{job}', '*/10 * * * *', 'SELECT twitch_sync.run()', '{}')", db.name),
        format!("cron.schedule_in_database('{job}-maintain', '17 * * * *', 'SELECT twitch_sync.maintain()', '{}')", db.name),
        format!("cron.unschedule('{job}')"),
        format!("cron.unschedule('{job}-maintain')"),
    ] {
        assert!(text.contains(&call), "{call} in {text}");
    }
    assert!(
        !text.contains("'twitch-viewer-count-sync',"),
        "never the plain name: {text}"
    );
    let err = db
        .client
        .query_one("SELECT twitch_sync.unschedule()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    assert!(error_text(&err).contains(&format!("cron.unschedule('{job}')")));
    // Without pg_cron here, what is missing is said first, whatever the
    // schedule (pg_cron judges schedules: pg_cron_runs_the_scheduled_job_for_real).
    let err = db
        .client
        .query_one("SELECT twitch_sync.schedule('61 * * * *')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    let err = db
        .client
        .query_one("SELECT twitch_sync.schedule(NULL)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
}

#[test]
fn listeners_hear_online_offline_and_restart_after_commit_only() {
    let mut db = TestDb::new(world(100, 0.2));
    db.track_first(100);
    let mut listener = db.connect();
    listener.batch_execute("LISTEN twitch_sync").unwrap();

    // A run rolled back sends nothing.
    db.client.batch_execute("BEGIN").unwrap();
    db.run();
    db.client.batch_execute("ROLLBACK").unwrap();
    assert_silent(
        &mut listener,
        Duration::from_millis(500),
        "a run rolled back",
    );

    db.run();
    let events = payloads(
        &mut db,
        &drain(&mut listener, Duration::from_secs(1)),
        "twitch_sync",
    );
    assert_eq!(events.len(), 20);
    assert!(events.iter().all(|e| e["event"] == "online"));
    let e = &events[0];
    for key in [
        "broadcaster_id",
        "login",
        "stream_id",
        "viewer_count",
        "title",
        "game_name",
        "started_at",
        "at",
    ] {
        assert!(!e[key].is_null(), "{key} in {e}");
    }

    let live: Vec<String> = db.sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    let old_stream = db.sim.world(|w| w.stream_of(&live[1]).unwrap().id.clone());
    let long_title = "ü\"\\".repeat(5000);
    db.sim.world(|w| {
        w.go_offline(&live[0]);
        w.restart(&live[1]);
        w.set_title(&live[1], &long_title);
    });
    db.run();
    let events = payloads(
        &mut db,
        &drain(&mut listener, Duration::from_secs(1)),
        "twitch_sync",
    );
    let by_kind: HashMap<String, &Value> = events
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(by_kind["offline"]["broadcaster_id"], live[0].as_str());
    assert!(!by_kind["offline"]["ended_at"].is_null());
    assert_eq!(by_kind["restart"]["broadcaster_id"], live[1].as_str());
    assert_eq!(
        by_kind["restart"]["previous_stream_id"],
        old_stream.as_str()
    );
    assert_eq!(
        by_kind["restart"]["title"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        300
    );

    // turned off, nothing is sent
    db.client
        .batch_execute("SET twitch_sync.notify_events = off")
        .unwrap();
    db.sim.world(|w| w.go_live(&live[0]));
    assert_eq!(db.run()["started"], 1);
    assert_silent(
        &mut listener,
        Duration::from_millis(500),
        "notify_events = off",
    );
}

#[test]
fn events_are_an_outbox_a_stranger_can_neither_read_nor_forge() {
    let mut db = TestDb::new(world(60, 0.3));
    let ids = db.track_first(60);
    let (outsider_role, consumer_role) = (
        format!("{}_outsider", db.name),
        format!("{}_consumer", db.name),
    );
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {outsider_role} LOGIN; CREATE ROLE {consumer_role} LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO {consumer_role};
             GRANT SELECT ON twitch_sync.events TO {consumer_role};
             GRANT EXECUTE ON FUNCTION twitch_sync.events_after(bigint), twitch_sync.event_horizon()
                TO {consumer_role};"
        ))
        .unwrap();
    let mut consumer = db.cluster().connect_as(&db.name, &consumer_role);
    consumer.batch_execute("LISTEN twitch_sync").unwrap();
    db.run();
    let notes = drain(&mut consumer, Duration::from_secs(1));
    assert_eq!(notes.len(), 18, "one NOTIFY per online event");
    let last_seen: i64 = notes
        .iter()
        .map(|n| n.payload().parse::<i64>().unwrap())
        .max()
        .unwrap();

    // A stranger can send a NOTIFY, but it points at no event: the consumer
    // reads events from the table, which only granted roles can read.
    let mut outsider = db.cluster().connect_as(&db.name, &outsider_role);
    let err = outsider
        .query("SELECT * FROM twitch_sync.events", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", error_text(&err));
    outsider
        .batch_execute(&format!(
            "NOTIFY twitch_sync, '{}'; NOTIFY twitch_sync, '{{\"event\": \"online\", \"broadcaster_id\": \"{}\"}}'",
            last_seen + 1000,
            ids[0]
        ))
        .unwrap();
    let forged = drain(&mut consumer, Duration::from_millis(500));
    assert_eq!(forged.len(), 2, "NOTIFY itself cannot be restricted");
    for n in &forged {
        let found = match n.payload().parse::<i64>() {
            Ok(id) => consumer
                .query_opt(
                    "SELECT payload FROM twitch_sync.events WHERE event_id = $1",
                    &[&id],
                )
                .unwrap(),
            Err(_) => None,
        };
        assert!(
            found.is_none(),
            "a forged NOTIFY leads nowhere: {}",
            n.payload()
        );
    }

    // A consumer that was away catches up from the table, in order.
    drop(consumer);
    let live: Vec<String> = db.sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    db.sim.world(|w| {
        w.go_offline(&live[0]);
        w.restart(&live[1]);
    });
    db.run();
    let mut consumer = db.cluster().connect_as(&db.name, &consumer_role);
    let after =
        |c: &mut twitch_sync_e2e::postgres::Client, last: i64| -> Vec<(i64, String, String)> {
            c.query(
                "SELECT event_id, event, broadcaster_id FROM twitch_sync.events_after($1)",
                &[&last],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
        };
    let missed = after(&mut consumer, last_seen);
    let kinds: Vec<(&str, &str)> = missed
        .iter()
        .map(|(_, e, b)| (e.as_str(), b.as_str()))
        .collect();
    assert_eq!(kinds.len(), 2, "{missed:?}");
    assert!(kinds.contains(&("offline", live[0].as_str())), "{missed:?}");
    assert!(kinds.contains(&("restart", live[1].as_str())), "{missed:?}");
    let last_seen = missed.last().unwrap().0;

    // Writers overlap: an EventSub event's transaction draws its event id,
    // then a run commits later ids first. The consumer is not moved past the
    // open one's id: it gets nothing beyond it until that commits, then
    // everything, in id order.
    let mut event_writer = db.connect();
    event_writer
        .batch_execute(&format!(
            "BEGIN; SELECT twitch_sync.apply_eventsub('m-open', now(), 'online', '{}', '990001', NULL, now())",
            live[0]
        ))
        .unwrap();
    db.sim.world(|w| {
        w.go_offline(&live[2]);
        w.go_offline(&live[3]);
    });
    assert_eq!(db.run()["ended"], 2);
    assert!(
        after(&mut consumer, last_seen).is_empty(),
        "the open event's id comes first"
    );
    event_writer.batch_execute("COMMIT").unwrap();
    let caught_up = after(&mut consumer, last_seen);
    let order: Vec<(&str, &str)> = caught_up
        .iter()
        .map(|(_, e, b)| (e.as_str(), b.as_str()))
        .collect();
    assert_eq!(order.len(), 3, "{caught_up:?}");
    assert_eq!(order[0], ("online", live[0].as_str()), "{caught_up:?}");
    assert!(
        order.contains(&("offline", live[2].as_str())),
        "{caught_up:?}"
    );
    assert!(
        order.contains(&("offline", live[3].as_str())),
        "{caught_up:?}"
    );
    assert!(caught_up.windows(2).all(|w| w[0].0 < w[1].0));
    // in a REPEATABLE READ transaction it refuses (its snapshot would be older
    // than the writers it looked at)
    let err = consumer
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM twitch_sync.events_after(0)",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "25001", "{}", error_text(&err));
}

#[test]
fn alerts_on_partial_failed_and_repeated_failures() {
    let mut db = TestDb::new(world(200, 0.2));
    let ids = db.track_first(200);
    let mut listener = db.connect();
    listener.batch_execute("LISTEN twitch_sync_alerts").unwrap();
    assert_eq!(db.run()["status"], "ok");
    assert_silent(
        &mut listener,
        Duration::from_millis(300),
        "a run that went well",
    );

    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&ids[150]));
    assert_eq!(db.run()["status"], "partial");
    let alerts = payloads(
        &mut db,
        &drain(&mut listener, Duration::from_secs(1)),
        "twitch_sync_alerts",
    );
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["alert"], "run_partial");
    assert_eq!(alerts[0]["errors"], 100);
    assert!(
        alerts[0]["check"]
            .as_str()
            .unwrap()
            .contains("server errors"),
        "{}",
        alerts[0]
    );

    db.sim.clear_faults();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }));
    db.run();
    db.run();
    let alerts = payloads(
        &mut db,
        &drain(&mut listener, Duration::from_secs(1)),
        "twitch_sync_alerts",
    );
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["alert"], "run_failed");
    assert_eq!(alerts[1]["alert"], "repeated_failures");
    assert_eq!(alerts[1]["consecutive_failures"], 3);

    db.sim.clear_faults();
    assert_eq!(db.run()["status"], "ok");
    db.client
        .batch_execute("SET twitch_sync.notify_alerts = off")
        .unwrap();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }));
    assert_eq!(db.run()["status"], "failed");
    assert_silent(
        &mut listener,
        Duration::from_millis(300),
        "notify_alerts = off",
    );
}

#[test]
fn retention_prunes_old_rows_in_bounded_steps() {
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    // A year of history: 200,000 old samples and 20,000 old runs, plus today's.
    db.client
        .batch_execute(
            "SET session_replication_role = replica;  -- no counter triggers for fake history
             INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
             SELECT 's' || (g % 1000), '1', now() - interval '365 days' + g * interval '157 seconds', g % 5000
               FROM generate_series(1, 200000) g;
             INSERT INTO twitch_sync.runs (started_at, finished_at, status)
             SELECT now() - interval '200 days' + g * interval '1 minute', now() - interval '200 days' + g * interval '1 minute',
                    CASE WHEN g % 4 = 0 THEN 'skipped' ELSE 'ok' END
               FROM generate_series(1, 20000) g;
             RESET session_replication_role;",
        )
        .unwrap();
    // Samples are kept by whole UTC days: those of the last 90 days and of the
    // day 90 days ago stay.
    let kept = db.scalar_i64(
        "SELECT count(*) FROM twitch_sync.viewer_samples
          WHERE sampled_at >= ((now() - interval '90 days') AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC'",
    );
    // The history had no day partitions: maintain() gives every day its own.
    let created: i32 = db
        .client
        .query_one("SELECT partitions_created FROM twitch_sync.maintain()", &[])
        .unwrap()
        .get(0);
    assert!(created >= 365, "{created} partitions");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples_default"),
        0
    );
    // Skipped runs are counted from their rows; pruned ones stay counted.
    let skipped = |db: &mut TestDb| -> String {
        db.metrics()
            .lines()
            .find(|l| l.starts_with("twitch_sync_runs_total{status=\"skipped\"}"))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        skipped(&mut db),
        "twitch_sync_runs_total{status=\"skipped\"} 5000"
    );
    // run() prunes: whole days of samples, and runs in bounded steps
    db.run();
    assert_eq!(
        skipped(&mut db),
        "twitch_sync_runs_total{status=\"skipped\"} 5000"
    );
    let recent_samples = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples WHERE sampled_at > now() - interval '1 minute'");
    assert_eq!(recent_samples, 5);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM twitch_sync.runs"), 1);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples"),
        kept + 5
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'twitch_sync.viewer_samples'::regclass
                AND inhrelid::regclass::text < 'twitch_sync.' || twitch_sync.sample_partition((now() - interval '90 days')::date)"
        ),
        0,
        "older partitions are gone"
    );
    let row = db
        .client
        .query_one(
            "SELECT runs_deleted, samples_deleted FROM twitch_sync.prune(100000)",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));

    // 0 keeps everything
    db.client
        .batch_execute(
            "SET twitch_sync.samples_retention_days = 0;
             INSERT INTO twitch_sync.viewer_samples VALUES ('old', '1', now() - interval '10 years', 1);
             SELECT twitch_sync.maintain();",
        )
        .unwrap();
    db.client
        .query_one("SELECT * FROM twitch_sync.prune()", &[])
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = 'old'"),
        1
    );
    let err = db
        .client
        .query_one("SELECT * FROM twitch_sync.prune(0)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22023");
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let mut db = TestDb::new(world(300, 0.2));
    let ids = db.track_first(300);
    db.run();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&ids[250]));
    db.run();
    db.sim.clear_faults();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 429 }).times(1));
    db.run();
    // A subscription status is Twitch's text (a webhook revocation's, say):
    // it is escaped in its label, so it can neither break the text nor add
    // a sample.
    let hostile = "x\"\\\ntwitch_sync_live_streams 999999\n# x";
    db.client
        .execute(
            "INSERT INTO twitch_sync.eventsub_subscriptions (broadcaster_id, type, subscription_id, status)
             VALUES ($1, 'stream.online', 'sub-1', $2)",
            &[&ids[0], &hostile],
        )
        .unwrap();
    let text: String = db
        .client
        .query_one("SELECT twitch_sync.metrics()", &[])
        .unwrap()
        .get(0);
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("{name} in\n{text}"));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} has an unexpected type"),
        }
    };
    assert_eq!(value("twitch_sync_runs_total", Some(("status", "ok"))), 2.0);
    assert_eq!(
        value("twitch_sync_runs_total", Some(("status", "partial"))),
        1.0
    );
    assert_eq!(
        value("twitch_sync_runs_total", Some(("status", "failed"))),
        0.0
    );
    // run 1: 3 requests; run 2: 2 + 1 failing batch tried 1 + max_retries (3) times; run 3: 3 + one 429 retry
    assert_eq!(
        value("twitch_sync_helix_requests_total", None),
        3.0 + 6.0 + 4.0
    );
    assert_eq!(value("twitch_sync_rate_limited_total", None), 1.0);
    assert_eq!(value("twitch_sync_retries_total", None), 3.0 + 1.0);
    assert_eq!(value("twitch_sync_live_streams", None), 60.0);
    assert_eq!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "twitch_sync_live_streams")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(
        value("twitch_sync_eventsub_subscriptions", None),
        1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"status="x\"\\\ntwitch_sync_live_streams 999999\n# x"} 1"#),
        "{text}"
    );
    assert_eq!(value("twitch_sync_tracked_channels", None), 300.0);
    assert!(value("twitch_sync_token_expiry_seconds", None) > 86_400.0);
    assert!(value("twitch_sync_last_run_age_seconds", None) < 60.0);
    assert!(value("twitch_sync_last_run_duration_seconds", None) > 0.0);
    assert!(matches!(
        scrape
            .samples
            .iter()
            .find(|s| s.metric == "twitch_sync_runs_total")
            .unwrap()
            .value,
        prometheus_parse::Value::Counter(_)
    ));
    assert!(text.contains("# HELP twitch_sync_live_streams "));
    assert!(!text.contains(&db.sim.client_secret()));
}

#[test]
fn a_partition_in_use_is_left_for_the_next_run_instead_of_stalling_readers() {
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    db.run();
    // Tomorrow's partition is missing while a reader holds viewer_samples in a
    // long transaction: attaching it would wait for the reader, and every
    // later reader would queue behind that wait.
    let tomorrow: String = db
        .client
        .query_one(
            "SELECT twitch_sync.sample_partition((now() AT TIME ZONE 'UTC')::date + 1)",
            &[],
        )
        .unwrap()
        .get(0);
    db.client
        .batch_execute(&format!("DROP TABLE twitch_sync.{tomorrow}"))
        .unwrap();
    let exists =
        format!("SELECT count(*) FROM pg_class WHERE oid = to_regclass('twitch_sync.{tomorrow}')");
    assert_eq!(db.scalar_i64(&exists), 0);
    let mut reader = db.connect();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM twitch_sync.viewer_samples;")
        .unwrap();
    // (before the fix run() waited for the reader: the timeout ends the test)
    db.client
        .batch_execute("SET statement_timeout = '10s'")
        .unwrap();
    let t = std::time::Instant::now();
    let doc = db.run();
    let took = t.elapsed();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert!(
        took < Duration::from_secs(3),
        "run() did not wait for the reader: {took:?}"
    );
    assert_eq!(db.scalar_i64(&exists), 0, "left for the next call");
    reader.batch_execute("COMMIT").unwrap();
    db.run();
    assert_eq!(db.scalar_i64(&exists), 1, "created once the reader is done");
}

#[test]
fn a_setting_a_non_superuser_set_before_the_library_loaded_is_never_used() {
    // Without twitch_sync in shared_preload_libraries, a session's first
    // `SET twitch_sync.*` makes a placeholder that any role may set. prune()
    // and maintain() run as the extension's owner: they must use the real
    // (superuser-only) setting, not the placeholder.
    let cluster = twitch_sync_e2e::Cluster::without_preload();
    let mut admin = cluster.connect("postgres");
    for sql in [
        "CREATE DATABASE placeholder_test",
        "CREATE ROLE placeholder_maint LOGIN",
    ] {
        admin.batch_execute(sql).unwrap();
    }
    let mut db = cluster.connect("placeholder_test");
    db.batch_execute(
        "CREATE EXTENSION twitch_sync CASCADE;
         GRANT USAGE ON SCHEMA twitch_sync TO placeholder_maint;
         GRANT EXECUTE ON FUNCTION twitch_sync.prune(integer), twitch_sync.maintain() TO placeholder_maint;
         INSERT INTO twitch_sync.runs (started_at, finished_at, status)
         VALUES (now() - interval '5 days', now() - interval '5 days', 'ok');",
    )
    .unwrap();
    let mut maint = cluster.connect_as("placeholder_test", "placeholder_maint");
    // the library is not loaded in this backend yet: the SET makes a placeholder
    maint
        .batch_execute("SET twitch_sync.runs_retention_days = 1")
        .unwrap();
    maint
        .query("SELECT * FROM twitch_sync.prune()", &[])
        .unwrap();
    let runs: i64 = db
        .query_one("SELECT count(*) FROM twitch_sync.runs", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the 5-day-old run is within the default 30 days");
    // once loaded, the setting is the superuser's to set
    let err = maint
        .batch_execute("SET twitch_sync.runs_retention_days = 1")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", error_text(&err));
    // and the default (one source: the setting's definition) is what SQL reads
    let gap: String = db
        .query_one(
            "SELECT twitch_sync.setting('twitch_sync.max_sample_gap_secs')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(gap, "1200");
    // every twitch_sync.* setting reads; an unset one (eventsub_database's
    // default) as '', like SHOW (it was refused as unknown)
    let names: Vec<String> = db
        .query(
            "SELECT name FROM pg_settings WHERE name LIKE 'twitch\\_sync.%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(names.len() > 20, "{names:?}");
    for name in &names {
        let value: String = db
            .query_one("SELECT twitch_sync.setting($1)", &[name])
            .unwrap_or_else(|e| panic!("{name}: {}", error_text(&e)))
            .get(0);
        if name == "twitch_sync.eventsub_database" {
            let shown: String = db
                .query_one("SELECT current_setting($1)", &[name])
                .unwrap()
                .get(0);
            assert_eq!(value, shown, "{name}");
        }
    }
    // another setting, or a twitch_sync.* name that is none: 22023, and no
    // Rust backtrace in the error (an unknown twitch_sync.* name was 42704
    // with one in DETAIL)
    for name in ["search_path", "twitch_sync.nope"] {
        let err = db
            .query_one("SELECT twitch_sync.setting($1)", &[&name])
            .unwrap_err();
        assert_eq!(sqlstate(&err), "22023", "{name}: {}", error_text(&err));
        let detail = err.as_db_error().and_then(|d| d.detail()).unwrap_or("");
        assert!(
            !detail.contains("backtrace") && !detail.contains("rust"),
            "{name}: {detail}"
        );
    }
    drop((maint, db));
    for sql in [
        "DROP DATABASE placeholder_test WITH (FORCE)",
        "DROP ROLE placeholder_maint",
    ] {
        admin.batch_execute(sql).unwrap();
    }
}

/// Times no run can use, and counts below zero, are refused where they are
/// written (23514), with nothing stored changed: an infinite run time or
/// token expiry broke status() and metrics() (and run(), with Rust's words),
/// an infinite check time kept a channel from ever being due again, and a
/// sample whose interval began at -infinity failed every maintain().
#[test]
fn times_no_run_can_use_are_refused_where_they_are_written() {
    let mut db = TestDb::new(world(20, 0.5));
    let ids = db.track_first(20);
    assert_eq!(db.run()["status"], "ok");
    let (bid, sid): (String, String) = {
        let r = db
            .client
            .query_one(
                "SELECT broadcaster_id, stream_id FROM twitch_sync.streams WHERE is_live LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let before = twitch_sync_e2e::user_data(&mut db.client);
    for sql in [
        "UPDATE twitch_sync.credentials SET token_expires_at = 'infinity'".to_string(),
        "UPDATE twitch_sync.credentials SET token_validated_at = '-infinity'".to_string(),
        "INSERT INTO twitch_sync.runs (started_at, finished_at, status) VALUES ('infinity', now(), 'ok')"
            .to_string(),
        "UPDATE twitch_sync.runs SET finished_at = 'infinity'".to_string(),
        "UPDATE twitch_sync.rate_limit SET observed_at = 'infinity'".to_string(),
        format!("UPDATE twitch_sync.channels SET checked_at = 'infinity' WHERE broadcaster_id = '{}'", ids[0]),
        // (maintain() counted days from it in an endless series)
        format!("UPDATE twitch_sync.streams SET started_at = '-infinity' WHERE stream_id = '{sid}'"),
        format!("UPDATE twitch_sync.channels SET added_at = '-infinity' WHERE broadcaster_id = '{}'", ids[0]),
        format!(
            "INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count,
                                                     prev_sampled_at, prev_viewer_count)
             VALUES ('{sid}', '{bid}', now() - interval '1 hour', 5, '-infinity', 5)"
        ),
        format!(
            "INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
             VALUES ('{sid}', '{bid}', now() - interval '1 hour', -5)"
        ),
    ] {
        let e = db.client.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{sql}: {}", error_text(&e));
    }
    assert_eq!(
        twitch_sync_e2e::user_data(&mut db.client),
        before,
        "nothing changed"
    );
    // and what reads them still answers
    db.client
        .batch_execute("SELECT * FROM twitch_sync.status(); SELECT twitch_sync.metrics(); SELECT twitch_sync.maintain()")
        .unwrap();
}

#[test]
fn without_the_preload_a_rolled_back_run_is_recorded_by_the_same_sessions_next_run() {
    // Without shared memory the queue of rolled-back runs is the backend's:
    // another session's run cannot see it, the same session's next run
    // records it.
    let cluster = twitch_sync_e2e::Cluster::without_preload();
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE rolled_back_local")
        .unwrap();
    let mut a = cluster.connect("rolled_back_local");
    let mut b = cluster.connect("rolled_back_local");
    a.batch_execute("CREATE EXTENSION twitch_sync CASCADE")
        .unwrap();
    for c in [&mut a, &mut b] {
        c.batch_execute(
            "SET twitch_sync.helix_url = 'http://127.0.0.1:1/helix';
             SET twitch_sync.auth_url = 'http://127.0.0.1:1/oauth2'",
        )
        .unwrap();
    }
    let err = a.query_one("SELECT twitch_sync.run()", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{}", error_text(&err));
    a.batch_execute("SELECT twitch_sync.set_credentials('id', 'secret')")
        .unwrap();
    let runs = |c: &mut Client| -> Vec<(String, String)> {
        c.query(
            "SELECT status, coalesce(error, '') FROM twitch_sync.runs ORDER BY started_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    b.query_one("SELECT twitch_sync.run()", &[]).unwrap();
    let seen = runs(&mut b);
    assert_eq!(seen.len(), 1, "{seen:?}");
    a.query_one("SELECT twitch_sync.run()", &[]).unwrap();
    let seen = runs(&mut a);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[0],
        (
            "failed".to_string(),
            "rolled back: twitch_sync has no Twitch credentials (SQLSTATE 55000)".to_string()
        )
    );
}
