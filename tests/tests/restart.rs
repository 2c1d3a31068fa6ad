//! A server restart between runs (and one in the middle of a run) leaves no
//! lock behind: the next run works. Its own binary, so its own cluster.

use std::time::Duration;
use twitch_sync_e2e::helix_sim::world::WorldConfig;
use twitch_sync_e2e::helix_sim::Config;
use twitch_sync_e2e::TestDb;

#[test]
fn runs_work_after_server_restarts() {
    let mut db = TestDb::new(Config {
        world: WorldConfig {
            channels: 200,
            live_fraction: 0.25,
            ..Default::default()
        },
        ..Default::default()
    });
    db.track_first(200);
    assert_eq!(db.run()["status"], "ok");

    db.cluster().restart();
    db.client = db.connect();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(
        doc["helix_requests"], 2,
        "the cached token and rate-limit state survived"
    );
    assert_eq!(db.sim.counters().tokens_issued, 1);

    // a restart while a run waits on Helix
    db.sim.set_latency(Duration::from_secs(30));
    let mut victim = db.connect();
    let handle = std::thread::spawn(move || {
        victim
            .query_one("SELECT twitch_sync.run()", &[])
            .map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(500));
    db.cluster().restart();
    assert!(handle.join().unwrap().is_err());
    db.sim.set_latency(Duration::ZERO);
    db.client = db.connect();
    assert!(!db.run_in_progress());
    assert_eq!(db.run()["status"], "ok");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM twitch_sync.runs"), 3);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        50
    );
}
