//! Upgrading in place: a database filled by 0.1.0 through real runs, then the
//! current binaries, then `ALTER EXTENSION twitch_sync UPDATE`.
//!
//! This test reinstalls the extension into the system PostgreSQL (0.1.0 first,
//! the current tree last), so it is `#[ignore]`d in the ordinary suite and run
//! by scripts/test as a step of its own:
//! `cargo test -p twitch_sync_e2e --test upgrade -- --ignored`.

use twitch_sync_e2e::catalog::{self, V0_1_0};
use twitch_sync_e2e::{error_text, sqlstate, user_data, world, Cluster, TestDb};

#[test]
#[ignore = "reinstalls the extension; scripts/test runs it as its own step"]
fn upgrade_from_0_1_0_equals_a_fresh_install() {
    catalog::install_release(V0_1_0);
    let cluster = Cluster::shared();

    // A database on 0.1.0, filled through real runs against the simulator.
    let mut old = TestDb::new(world(300, 0.3));
    let version: String = old
        .client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'twitch_sync'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, "0.1.0");
    old.track_first(300);
    for _ in 0..3 {
        old.sim.tick();
        let doc = old.run();
        assert_eq!(doc["status"], "ok", "{doc}");
    }
    old.assert_matches_world();
    // Grants an app gave on 0.1.0 objects the upgrade replaces (status() and
    // prune() change their result types; viewer_samples becomes partitioned).
    old.client
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'twitch_sync_upgrade_reader') THEN
                     CREATE ROLE twitch_sync_upgrade_reader;
                 END IF;
             END $$;
             GRANT USAGE ON SCHEMA twitch_sync TO twitch_sync_upgrade_reader;
             GRANT EXECUTE ON FUNCTION twitch_sync.status() TO twitch_sync_upgrade_reader;
             GRANT EXECUTE ON FUNCTION twitch_sync.prune(integer) TO twitch_sync_upgrade_reader;
             GRANT SELECT ON twitch_sync.viewer_samples TO twitch_sync_upgrade_reader;
             GRANT SELECT ON twitch_sync.streams TO twitch_sync_upgrade_reader;
             GRANT EXECUTE ON FUNCTION twitch_sync.run() TO twitch_sync_upgrade_reader",
        )
        .unwrap();
    // Where pg_cron runs (the cluster's `postgres` database), 0.1.0's
    // schedule() made one job, run(); the upgrade adds maintain()'s beside it.
    let mut cron_db = TestDb::existing("postgres", world(10, 0.0));
    cron_db
        .client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron; SELECT twitch_sync.schedule()")
        .expect("0.1.0's schedule()");
    let cron_jobs = |c: &mut twitch_sync_e2e::postgres::Client| -> Vec<String> {
        c.query(
            "SELECT jobname || ' ' || schedule || ' ' || command || ' ' || username
               FROM cron.job WHERE database = 'postgres' ORDER BY jobname, username",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(cron_jobs(&mut cron_db.client).len(), 1, "0.1.0: run() only");
    // A run() job made by hand, under another name, by a role granted only
    // run(), as README "Privileges" had it for 0.1.0.
    cron_db
        .client
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'twitch_sync_upgrade_runner') THEN
                     CREATE ROLE twitch_sync_upgrade_runner LOGIN;
                 END IF;
                 IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'twitch_sync_upgrade_admin') THEN
                     CREATE ROLE twitch_sync_upgrade_admin SUPERUSER;
                 END IF;
             END $$;
             GRANT USAGE ON SCHEMA twitch_sync TO twitch_sync_upgrade_runner;
             GRANT EXECUTE ON FUNCTION twitch_sync.run() TO twitch_sync_upgrade_runner;
             SELECT cron.schedule_in_database('my-sync', '*/5 * * * *', 'SELECT twitch_sync.run()',
                                              'postgres', 'twitch_sync_upgrade_runner');",
        )
        .expect("a hand-made run() job");
    drop(cron_db.client);
    // A skipped run, counted by 0.1.0's trigger; 0.2.0 counts skipped runs
    // from their rows, and must not count this one twice.
    old.client
        .batch_execute(
            "INSERT INTO twitch_sync.runs (started_at, finished_at, status)
             VALUES (now() - interval '1 hour', now() - interval '1 hour', 'skipped')",
        )
        .unwrap();
    let before = user_data(&mut old.client);
    assert!(
        before.len() > 300,
        "the old database holds data: {}",
        before.len()
    );
    drop(old.client);

    // New binaries, then a restart (the library is preloaded).
    catalog::install_current();
    cluster.restart();

    // Binary and schema out of step: a clear error with the fix, nothing written.
    let mut client = cluster.connect(&old.name);
    let err = client
        .query_one("SELECT twitch_sync.run()", &[])
        .expect_err("run() against a 0.1.0 schema");
    assert_eq!(sqlstate(&err), "55000", "{}", error_text(&err));
    let text = error_text(&err);
    assert!(
        text.contains("0.1.0") && text.contains("ALTER EXTENSION twitch_sync UPDATE"),
        "the error says what is wrong and how to fix it: {text}"
    );
    assert_eq!(
        user_data(&mut client),
        before,
        "a refused run writes nothing"
    );
    // The 0.1.0 functions that reach into the new library still answer (status()
    // calls cron_next_run, whose new version takes an optional third argument).
    let status = client
        .query_one(
            "SELECT last_run_status, tracked_channels FROM twitch_sync.status()",
            &[],
        )
        .expect("status() between the new binaries and the UPDATE");
    assert_eq!(status.get::<_, Option<String>>(0).as_deref(), Some("ok"));
    assert_eq!(status.get::<_, i64>(1), 300);

    // A sample written by hand at an infinite time (0.2.0 refuses them):
    // the update stops with the fix, changing nothing; done, it goes through.
    client
        .batch_execute(
            "INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
             VALUES ('1', '1', 'infinity', 1)",
        )
        .unwrap();
    // An update refused with 23514, its error (hint included) saying each of `what`.
    let refused = |client: &mut twitch_sync_e2e::postgres::Client, what: &[&str]| {
        let err = client
            .batch_execute("ALTER EXTENSION twitch_sync UPDATE")
            .expect_err("the update is refused");
        assert_eq!(sqlstate(&err), "23514", "{}", error_text(&err));
        let text = error_text(&err);
        assert!(what.iter().all(|w| text.contains(w)), "{text}");
    };
    refused(
        &mut client,
        &["DELETE FROM twitch_sync.viewer_samples WHERE NOT isfinite(sampled_at)"],
    );
    client
        .batch_execute("DELETE FROM twitch_sync.viewer_samples WHERE NOT isfinite(sampled_at)")
        .unwrap();
    // An infinite time in another table (0.2.0's tables refuse them) stops it
    // the same way, naming the column and the fix; put back, it goes through.
    let added_at: std::time::SystemTime = client
        .query_one("SELECT min(added_at) FROM twitch_sync.channels", &[])
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE twitch_sync.channels SET added_at = 'infinity' WHERE added_at = $1",
            &[&added_at],
        )
        .unwrap();
    refused(
        &mut client,
        &[
            "twitch_sync.channels.added_at holds an infinite time",
            "UPDATE twitch_sync.channels SET added_at = now()",
        ],
    );
    client
        .execute(
            "UPDATE twitch_sync.channels SET added_at = $1 WHERE NOT isfinite(added_at)",
            &[&added_at],
        )
        .unwrap();
    // pg_cron runs in another database (`postgres`): the update says what to
    // run there. A WARNING, as PostgreSQL shows nothing milder from an
    // extension's script.
    let (mut updater, said) = cluster.connect_keeping_notices(&old.name);
    updater
        .batch_execute("ALTER EXTENSION twitch_sync UPDATE")
        .expect("ALTER EXTENSION twitch_sync UPDATE");
    drop(updater);
    let said = said.lock().unwrap().clone();
    assert!(
        said.iter().any(|n| n
            .starts_with("WARNING: twitch_sync: from 0.2.0 on, maintain() runs hourly")
            && n.contains("pg_cron runs in database postgres")
            && n.contains("SELECT cron.schedule_in_database(")
            && n.contains("'SELECT twitch_sync.maintain()'")),
        "the update names the call to make where pg_cron runs: {said:?}"
    );
    let upgraded_at: std::time::SystemTime = client
        .query_one("SELECT clock_timestamp()", &[])
        .unwrap()
        .get(0);
    let version: String = client
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'twitch_sync'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, catalog::current_version());
    let mut cron_client = cluster.connect("postgres");
    // Only the extension's owner updates it: another superuser would own
    // the new functions, which the owner's could then not call.
    let err = cron_client
        .batch_execute("SET ROLE twitch_sync_upgrade_admin; ALTER EXTENSION twitch_sync UPDATE")
        .expect_err("an update by another superuser");
    assert_eq!(sqlstate(&err), "42501", "{}", error_text(&err));
    assert!(
        error_text(&err).contains("ALTER ROLE postgres SUPERUSER")
            || error_text(&err).contains("SET ROLE postgres"),
        "{}",
        error_text(&err)
    );
    cron_client.batch_execute("RESET ROLE").unwrap();
    let (mut updater, said) = cluster.connect_keeping_notices("postgres");
    updater
        .batch_execute("ALTER EXTENSION twitch_sync UPDATE")
        .expect("ALTER EXTENSION twitch_sync UPDATE where pg_cron runs");
    drop(updater);
    let said = said.lock().unwrap().clone();
    assert!(
        said.iter().any(|n| n.starts_with(
            "WARNING: twitch_sync: granted EXECUTE on twitch_sync.maintain() to twitch_sync_upgrade_runner"
        )),
        "the update says which role it granted maintain() to: {said:?}"
    );
    let jobs = cron_jobs(&mut cron_client);
    assert_eq!(
        jobs,
        [
            "my-sync */5 * * * * SELECT twitch_sync.run() twitch_sync_upgrade_runner",
            "twitch-viewer-count-sync */10 * * * * SELECT twitch_sync.run() postgres",
            "twitch-viewer-count-sync-maintain 17 * * * * SELECT twitch_sync.maintain() postgres",
            "twitch-viewer-count-sync-maintain 17 * * * * SELECT twitch_sync.maintain() twitch_sync_upgrade_runner"
        ],
        "the upgrade schedules maintain() beside each owner's run() jobs"
    );
    let may_maintain: bool = cron_client
        .query_one(
            "SELECT has_function_privilege('twitch_sync_upgrade_runner', 'twitch_sync.maintain()', 'EXECUTE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(may_maintain, "the runner's maintain() job can run");
    cron_client
        .batch_execute(
            "SELECT twitch_sync.unschedule();
             SELECT cron.unschedule(jobid) FROM cron.job WHERE username = 'twitch_sync_upgrade_runner';
             DROP EXTENSION twitch_sync;
             DROP ROLE twitch_sync_upgrade_runner; DROP ROLE twitch_sync_upgrade_admin;",
        )
        .unwrap();
    assert!(cron_jobs(&mut cron_client).is_empty());

    // The grants were carried over to the new objects; then they go, so that
    // the catalog can be compared with a fresh install's.
    let kept = client
        .query_one(
            "SELECT has_function_privilege('twitch_sync_upgrade_reader', 'twitch_sync.status()', 'EXECUTE'),
                    has_function_privilege('twitch_sync_upgrade_reader', 'twitch_sync.prune(integer)', 'EXECUTE'),
                    has_table_privilege('twitch_sync_upgrade_reader', 'twitch_sync.viewer_samples', 'SELECT'),
                    has_table_privilege('twitch_sync_upgrade_reader', 'twitch_sync.viewer_samples', 'INSERT')",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            kept.get::<_, bool>(0),
            kept.get::<_, bool>(1),
            kept.get::<_, bool>(2),
            kept.get::<_, bool>(3)
        ),
        (true, true, true, false),
        "the upgrade keeps the grants on status(), prune() and viewer_samples, and adds none"
    );
    client
        .batch_execute(
            "SET ROLE twitch_sync_upgrade_reader;
             SELECT count(*) FROM twitch_sync.viewer_samples;
             SELECT last_run_status FROM twitch_sync.status();
             RESET ROLE;
             REVOKE EXECUTE ON FUNCTION twitch_sync.status() FROM twitch_sync_upgrade_reader;
             REVOKE EXECUTE ON FUNCTION twitch_sync.prune(integer) FROM twitch_sync_upgrade_reader;
             REVOKE SELECT ON twitch_sync.viewer_samples FROM twitch_sync_upgrade_reader;
             REVOKE SELECT ON twitch_sync.streams FROM twitch_sync_upgrade_reader;
             REVOKE EXECUTE ON FUNCTION twitch_sync.run() FROM twitch_sync_upgrade_reader;
             REVOKE USAGE ON SCHEMA twitch_sync FROM twitch_sync_upgrade_reader",
        )
        .expect("the reader uses its grants after the upgrade");

    // The upgraded catalog equals a fresh install's.
    let upgraded = catalog::describe(&mut client);
    let mut fresh = TestDb::new(world(10, 0.5));
    let want = catalog::describe(&mut fresh.client);
    let diff = catalog::diff(&upgraded, &want);
    assert!(
        diff.is_empty(),
        "the upgraded catalog differs from a fresh install (- upgraded only, + fresh only):\n{diff}"
    );
    assert!(
        want.len() > 50,
        "the description covers the catalog: {want:?}"
    );

    // The data is intact, and the upgraded extension works.
    assert_eq!(
        user_data(&mut client),
        before,
        "the upgrade keeps every row"
    );
    old.client = client;
    old.sim.tick();
    let doc = old.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    old.assert_matches_world();
    // The 0.1.0 samples carry the intervals they close (filled by the
    // upgrade), and so do the samples of the broadcasts continuing after it:
    // every sample but each broadcast's first closes one, and the intervals add
    // up to the broadcasts' own figures.
    let row = old
        .client
        .query_one(
            "SELECT (SELECT count(*) FILTER (WHERE prev_sampled_at IS NOT NULL)
                            - count(*) + count(DISTINCT stream_id) FROM twitch_sync.viewer_samples),
                    (SELECT count(*) FROM twitch_sync.viewer_samples WHERE sampled_at < $1),
                    (SELECT sum(prev_viewer_count * extract(epoch FROM sampled_at - prev_sampled_at))::float8
                       FROM twitch_sync.viewer_samples),
                    (SELECT sum(viewer_seconds) FROM twitch_sync.streams)",
            &[&upgraded_at],
        )
        .unwrap();
    let (missing, old_samples, carried, kept): (i64, i64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        missing, 0,
        "every sample but a broadcast's first closes an interval"
    );
    assert!(old_samples > 0, "0.1.0 wrote samples");
    let row = old
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE sampled_at >= $1 AND prev_sampled_at < $1),
                    count(*) FILTER (WHERE prev_sampled_at IS NOT NULL
                                       AND (prev_game_id IS DISTINCT FROM previous_game
                                            OR prev_sampled_at IS DISTINCT FROM previous_at))
               FROM (SELECT sampled_at, prev_sampled_at, prev_game_id,
                            lag(game_id) OVER w AS previous_game, lag(sampled_at) OVER w AS previous_at
                       FROM twitch_sync.viewer_samples
                     WINDOW w AS (PARTITION BY broadcaster_id, stream_id ORDER BY sampled_at)) x",
            &[&upgraded_at],
        )
        .unwrap();
    let (continued, wrong): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        continued > 0,
        "a broadcast live across the upgrade closes an interval from its 0.1.0 sample"
    );
    assert_eq!(
        wrong, 0,
        "each interval is the previous sample's, with its category"
    );
    assert!(
        kept > 0.0 && (carried - kept).abs() <= 1e-6 * kept,
        "the samples' intervals ({carried} viewer-seconds) add up to the broadcasts' ({kept})"
    );
    let last: i64 = old
        .client
        .query_one("SELECT last_run_id FROM twitch_sync.status()", &[])
        .unwrap()
        .get(0);
    assert_eq!(Some(last), doc["run_id"].as_i64());
    let metrics: String = old
        .client
        .query_one("SELECT twitch_sync.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("twitch_sync_runs_total{status=\"ok\"} 4")
            && metrics.contains("twitch_sync_runs_total{status=\"skipped\"} 1\n"),
        "counters carried over: {metrics}"
    );
}
