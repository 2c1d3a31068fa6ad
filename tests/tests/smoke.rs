use twitch_sync_e2e::helix_sim::Config;
use twitch_sync_e2e::TestDb;

#[test]
fn first_run_records_live_streams() {
    let mut db = TestDb::new(Config::default());
    db.track_first(100);
    let doc = db.run();
    println!("{doc}");
    assert_eq!(doc["success"], true);
    assert_eq!(doc["total_streams"], 100);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 20);
}
