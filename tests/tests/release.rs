//! Dump and restore: `pg_dump -Fc` of a database with history, `pg_restore`
//! into a fresh one, and the restored database carries on where it stopped.

use std::process::Command;
use std::time::Duration;
use twitch_sync_e2e::helix_sim::{Fault, FaultKind};
use twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator;
use twitch_sync_e2e::{pg_bin, user_data, world, Cluster, TestDb};

fn tool(name: &str, args: &[&str]) {
    let out = Command::new(pg_bin().join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dump_and_restore_keeps_everything_and_runs_go_on() {
    let mut db = TestDb::new(world(200, 0.3));
    db.track_first(200);
    for _ in 0..3 {
        db.sim.tick();
        assert_eq!(db.run()["status"], "ok");
    }
    // A failed run in the history: restoring it must not alert again.
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 400 }));
    assert_eq!(db.run()["status"], "failed");
    db.sim.clear_faults();
    let last = db.run();
    assert_eq!(last["status"], "ok", "{last}");
    // Old runs pruned before the dump: the highest id is not the oldest gap.
    db.client
        .batch_execute("DELETE FROM twitch_sync.runs WHERE run_id <= 2")
        .unwrap();
    let before = user_data(&mut db.client);
    let max_id: i64 = db.scalar_i64("SELECT max(run_id) FROM twitch_sync.runs");

    let cluster = Cluster::shared();
    let port = cluster.port.to_string();
    let dump = cluster.dir.join(format!("{}.dump", db.name));
    let dump = dump.to_str().unwrap();
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    tool(
        "pg_dump",
        &[&conn[..], &["-Fc", "-f", dump, &db.name]].concat(),
    );

    let restored = format!("{}_restored", db.name);
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {restored}"))
        .unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {restored} SET twitch_sync.helix_url = '{}';
             ALTER DATABASE {restored} SET twitch_sync.auth_url = '{}';",
            db.sim.helix_url(),
            db.sim.auth_url()
        ))
        .unwrap();
    let mut listener = cluster.connect(&restored);
    listener
        .batch_execute("LISTEN twitch_sync_alerts; LISTEN twitch_sync")
        .unwrap();
    tool(
        "pg_restore",
        &[&conn[..], &["--exit-on-error", "-d", &restored, dump]].concat(),
    );

    let mut client = cluster.connect(&restored);
    assert_eq!(
        user_data(&mut client),
        before,
        "channels, streams, samples, runs, credentials, counters and rate-limit state come back as they were"
    );
    let notes: Vec<_> = listener
        .notifications()
        .timeout_iter(Duration::from_millis(500))
        .collect()
        .unwrap();
    assert!(
        notes.is_empty(),
        "restoring history neither alerts nor sends events: {:?}",
        notes
            .iter()
            .map(|n| n.payload().to_string())
            .collect::<Vec<_>>()
    );

    // The restored database goes on: new run ids follow the restored ones, and
    // status() and metrics() report the new run as the last one.
    db.client = client;
    db.sim.tick();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    let id = doc["run_id"].as_i64().unwrap();
    assert!(id > max_id, "new run id {id} follows the restored {max_id}");
    let row = db
        .client
        .query_one(
            "SELECT last_run_id, last_run_status FROM twitch_sync.status()",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), id);
    assert_eq!(row.get::<_, String>(1), "ok");
    db.assert_matches_world();
    let metrics: String = db
        .client
        .query_one("SELECT twitch_sync.metrics()", &[])
        .unwrap()
        .get(0);
    // 3 + 1 ok runs before the dump (the counters are never pruned), 1 after.
    assert!(
        metrics.contains("twitch_sync_runs_total{status=\"ok\"} 5")
            && metrics.contains("twitch_sync_runs_total{status=\"failed\"} 1")
            && metrics.contains("twitch_sync_last_run_success 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_file(dump);
}
