//! In-database tests (`cargo pgrx test`): each runs inside the test server in
//! a transaction that is rolled back. They cover what needs no Helix: schema,
//! validation, privileges, settings. Everything that talks HTTP is in tests/.

use pgrx::prelude::*;

#[pg_test]
fn schema_exists() {
    let n = Spi::get_one::<i64>("SELECT count(*) FROM pg_tables WHERE schemaname = 'twitch_sync'").unwrap();
    assert_eq!(n, Some(6));
}
