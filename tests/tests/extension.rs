//! CREATE / DROP EXTENSION in a fresh database.

use twitch_sync_e2e::helix_sim::Config;
use twitch_sync_e2e::TestDb;

#[test]
fn drop_cascade_removes_everything_and_create_works_again() {
    let mut db = TestDb::new(Config::default());
    db.track_first(5);
    assert_eq!(db.run()["status"], "ok");
    db.client
        .batch_execute("DROP EXTENSION twitch_sync CASCADE")
        .unwrap();
    let left = db.scalar_i64(
        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'twitch_sync')
              + (SELECT count(*) FROM pg_proc WHERE proname IN ('run', 'track', 'apply_observations', 'channels_validate')
                  AND pronamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname = 'pg_catalog'))",
    );
    assert_eq!(left, 0);
    db.client
        .batch_execute("CREATE EXTENSION twitch_sync")
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.channels"),
        0
    );
    let (id, secret) = (db.sim.client_id(), db.sim.client_secret());
    db.client
        .execute(
            "SELECT twitch_sync.set_credentials($1, $2)",
            &[&id, &secret],
        )
        .unwrap();
    db.track_first(5);
    assert_eq!(db.run()["status"], "ok");
}
