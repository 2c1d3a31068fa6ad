// In-database tests (`cargo pgrx test`): each runs inside the test server in
// a transaction that is rolled back. They cover what needs no Helix: schema,
// validation, privileges, settings, and the set-based apply step fed directly.
// Everything that talks HTTP is in tests/ (the end-to-end suite).

use pgrx::prelude::*;

fn count(sql: &str) -> i64 {
    Spi::get_one::<i64>(sql).expect(sql).unwrap_or(-1)
}

/// Runs `sql` and returns the SQLSTATE it failed with ("" when it did not fail).
fn sqlstate_of(sql: &str) -> String {
    let block = format!(
        "DO $t$ BEGIN {sql}; PERFORM pg_catalog.set_config('twitch_sync_test.state', '', true);
         EXCEPTION WHEN OTHERS THEN PERFORM pg_catalog.set_config('twitch_sync_test.state', SQLSTATE, true); END $t$"
    );
    Spi::run(&block).expect("DO block");
    Spi::get_one::<String>("SELECT current_setting('twitch_sync_test.state')")
        .unwrap()
        .unwrap_or_default()
}

#[pg_test]
fn schema_has_its_tables_and_functions() {
    assert_eq!(count("SELECT count(*) FROM pg_tables WHERE schemaname = 'twitch_sync'"), 7);
    for f in ["run", "status", "track", "untrack", "set_credentials", "schedule", "unschedule", "metrics", "prune"] {
        let n = count(&format!(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'twitch_sync' AND p.proname = '{f}'"
        ));
        assert_eq!(n, 1, "{f}");
    }
}

#[pg_test]
fn track_is_idempotent_and_untrack_too() {
    assert_eq!(Spi::get_one::<bool>("SELECT twitch_sync.track('141981764')").unwrap(), Some(true));
    assert_eq!(Spi::get_one::<bool>("SELECT twitch_sync.track('141981764', 'TwitchDev')").unwrap(), Some(false));
    assert_eq!(
        Spi::get_one::<String>("SELECT login FROM twitch_sync.channels WHERE broadcaster_id = '141981764'").unwrap(),
        Some("twitchdev".into())
    );
    // NULL login keeps the known one
    Spi::run("SELECT twitch_sync.track('141981764')").unwrap();
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE login = 'twitchdev'"), 1);
    assert_eq!(Spi::get_one::<bool>("SELECT twitch_sync.untrack('141981764')").unwrap(), Some(true));
    assert_eq!(Spi::get_one::<bool>("SELECT twitch_sync.untrack('141981764')").unwrap(), Some(false));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels"), 0);
}

#[pg_test]
fn bad_broadcaster_ids_are_refused_with_22023_and_nothing_is_stored() {
    Spi::run("SELECT twitch_sync.track('12345')").unwrap();
    for bad in [
        "''",
        "NULL",
        "'abc'",
        "'-5'",
        "'0'",
        "'0123'",
        "' 123'",
        "'123 '",
        "'１２３'",
        "'123456789012345678901'",
        "'1; DROP TABLE twitch_sync.channels; --'",
        "'12e3'",
    ] {
        assert_eq!(sqlstate_of(&format!("PERFORM twitch_sync.track({bad})")), "22023", "track({bad})");
        assert_eq!(
            sqlstate_of(&format!("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ({bad})")),
            "22023",
            "INSERT {bad}"
        );
        assert_eq!(sqlstate_of(&format!("PERFORM twitch_sync.untrack({bad})")), "22023", "untrack({bad})");
    }
    for bad_login in ["''", "'has space'", "'way_too_long_for_a_twitch_login'", "'ünï'"] {
        assert_eq!(
            sqlstate_of(&format!("PERFORM twitch_sync.track('777', {bad_login})")),
            "22023",
            "login {bad_login}"
        );
    }
    // UPDATE goes through the same validation
    assert_eq!(sqlstate_of("UPDATE twitch_sync.channels SET broadcaster_id = 'x'"), "22023");
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE broadcaster_id = '12345'"), 1);
}

#[pg_test]
fn bulk_tracking_with_insert_select_works() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) SELECT g::text FROM generate_series(1000, 1249) g")
        .unwrap();
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE enabled"), 250);
}

#[pg_test]
fn set_credentials_refuses_empty_values_and_drops_the_cached_token() {
    for (id, secret) in [("NULL", "'s3cret'"), ("''", "'s3cret'"), ("'id'", "NULL"), ("'id'", "'   '"), ("'a b'", "'x'")] {
        assert_eq!(
            sqlstate_of(&format!("PERFORM twitch_sync.set_credentials({id}, {secret})")),
            "22023",
            "{id}, {secret}"
        );
    }
    assert_eq!(count("SELECT count(*) FROM twitch_sync.credentials"), 0);
    Spi::run("SELECT twitch_sync.set_credentials('cid', 'secret1')").unwrap();
    Spi::run("UPDATE twitch_sync.credentials SET access_token = 'tok', token_expires_at = now() + interval '1 day'")
        .unwrap();
    Spi::run("SELECT twitch_sync.set_credentials('cid', 'secret2')").unwrap();
    assert_eq!(count("SELECT count(*) FROM twitch_sync.credentials WHERE access_token IS NULL AND client_secret = 'secret2'"), 1);
}

#[pg_test]
fn run_without_credentials_says_how_to_set_them() {
    assert_eq!(sqlstate_of("PERFORM twitch_sync.run()"), "55000");
}

#[pg_test]
fn url_settings_must_be_https_or_loopback() {
    Spi::run("SELECT twitch_sync.set_credentials('cid', 'secret')").unwrap();
    for bad in [
        "http://api.example.com/helix",
        "file:///etc/passwd",
        "garbage",
        "https://user:pw@api.twitch.tv/helix",
    ] {
        Spi::run(&format!("SET LOCAL twitch_sync.helix_url = '{bad}'")).unwrap();
        assert_eq!(sqlstate_of("PERFORM twitch_sync.run()"), "22023", "{bad}");
    }
    // A bad auth_url is refused before anything is sent (helix_url is a closed
    // loopback port, so a request could not leave this machine anyway).
    Spi::run("SET LOCAL twitch_sync.helix_url = 'http://127.0.0.1:1/helix'").unwrap();
    for bad in ["http://10.1.2.3/oauth2", "http://localhost@10.1.2.3/oauth2", "http://127.0.0.1.evil.example/oauth2"] {
        Spi::run(&format!("SET LOCAL twitch_sync.auth_url = '{bad}'")).unwrap();
        assert_eq!(sqlstate_of("PERFORM twitch_sync.run()"), "22023", "{bad}");
    }
}

#[pg_test]
fn the_test_server_points_both_urls_at_a_closed_loopback_port() {
    // set by pg_test::postgresql_conf_options() in src/lib.rs
    for (setting, url) in [
        ("twitch_sync.helix_url", "http://127.0.0.1:1/helix"),
        ("twitch_sync.auth_url", "http://127.0.0.1:1/oauth2"),
    ] {
        let value = Spi::get_one::<String>(&format!("SELECT current_setting('{setting}')")).unwrap();
        assert_eq!(value.as_deref(), Some(url), "{setting}");
    }
}

#[pg_test]
fn a_run_with_no_channels_succeeds_without_calling_twitch() {
    Spi::run("SELECT twitch_sync.set_credentials('cid', 'secret')").unwrap();
    // Unreachable URLs prove no request is made.
    Spi::run("SET LOCAL twitch_sync.helix_url = 'http://127.0.0.1:1/helix'").unwrap();
    Spi::run("SET LOCAL twitch_sync.auth_url = 'http://127.0.0.1:1/oauth2'").unwrap();
    let doc = Spi::get_one::<pgrx::JsonB>("SELECT twitch_sync.run()").unwrap().unwrap().0;
    assert_eq!(doc["success"], true);
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["total_streams"], 0);
    assert_eq!(doc["helix_requests"], 0);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.runs WHERE status = 'ok'"), 1);
    assert_eq!(
        Spi::get_one::<bool>("SELECT credentials_set FROM twitch_sync.status()").unwrap(),
        Some(true)
    );
}

#[pg_test]
fn status_reads_well_on_a_fresh_install() {
    let row = Spi::get_three::<bool, i64, bool>(
        "SELECT run_in_progress, tracked_channels, credentials_set FROM twitch_sync.status()",
    )
    .unwrap();
    assert_eq!(row, (Some(false), Some(0), Some(false)));
}

/// Feeds apply_sync one run's answer: `live` is (stream id, broadcaster id, viewers).
fn apply(checked: &[&str], live: &[(&str, &str, i32)], misses: i32) -> serde_json::Value {
    let arr = |v: Vec<String>, ty: &str| format!("ARRAY[{}]::{ty}[]", v.join(","));
    let q = |s: &str| format!("'{s}'");
    let listed: Vec<String> = checked.iter().map(|c| live.iter().any(|l| l.1 == *c).to_string()).collect();
    let sql = format!(
        "SELECT twitch_sync.apply_sync({checked}, {listed}, {login}, {misses}, false, {sid}, {bid},
                ARRAY[{vc}]::int[], {title}, {gid}, {gname}, {lang}, {started})",
        checked = arr(checked.iter().map(|c| q(c)).collect(), "text"),
        listed = arr(listed, "boolean"),
        login = arr(checked.iter().map(|_| "NULL".into()).collect(), "text"),
        sid = arr(live.iter().map(|l| q(l.0)).collect(), "text"),
        bid = arr(live.iter().map(|l| q(l.1)).collect(), "text"),
        vc = live.iter().map(|l| l.2.to_string()).collect::<Vec<_>>().join(","),
        title = arr(live.iter().map(|_| q("t")).collect(), "text"),
        gid = arr(live.iter().map(|_| q("1")).collect(), "text"),
        gname = arr(live.iter().map(|_| q("g")).collect(), "text"),
        lang = arr(live.iter().map(|_| q("en")).collect(), "text"),
        started = arr(live.iter().map(|_| q("2026-11-25T10:00:00Z")).collect(), "text"),
    );
    Spi::get_one::<pgrx::JsonB>(&sql).unwrap().unwrap().0
}

#[pg_test]
fn apply_tracks_live_restart_reopen_and_offline() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2'), ('3')").unwrap();
    let r = apply(&["1", "2", "3"], &[("s1", "1", 10), ("s2", "2", 20)], 1);
    assert_eq!((r["started"].as_i64(), r["updated"].as_i64(), r["ended"].as_i64()), (Some(2), Some(0), Some(0)));
    // counts move, peaks keep the maximum
    let r = apply(&["1", "2", "3"], &[("s1", "1", 5), ("s2", "2", 30)], 1);
    assert_eq!((r["started"].as_i64(), r["updated"].as_i64()), (Some(0), Some(2)));
    assert_eq!(count("SELECT peak_viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = 's1'"), 10);
    assert_eq!(count("SELECT viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = 's1'"), 5);
    // channel 1 restarts under a new stream id; channel 2 goes offline
    let r = apply(&["1", "2", "3"], &[("s1b", "1", 7)], 1);
    assert_eq!((r["started"].as_i64(), r["ended"].as_i64()), (Some(1), Some(2)));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE NOT is_live AND ended_at IS NOT NULL"), 2);
    // s2 reappears under the same stream id: the row is reopened, not duplicated
    let r = apply(&["1", "2", "3"], &[("s1b", "1", 7), ("s2", "2", 3)], 1);
    assert_eq!(r["started"].as_i64(), Some(1));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '2'"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = 's2' AND is_live AND ended_at IS NULL"), 1);
    // a channel that was not checked (its batch failed) is left alone
    let r = apply(&["1"], &[("s1b", "1", 8)], 1);
    assert_eq!(r["ended"].as_i64(), Some(0));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = 's2' AND is_live"), 1);
    // one sample per live stream per run
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = 's1'"), 2);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples"), 2 + 2 + 1 + 2 + 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE last_checked_at IS NOT NULL"), 3);
}

#[pg_test]
fn offline_after_misses_needs_consecutive_misses() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1')").unwrap();
    apply(&["1"], &[("s1", "1", 10)], 3);
    apply(&["1"], &[], 3);
    apply(&["1"], &[], 3);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    // seen again: the miss count starts over
    apply(&["1"], &[("s1", "1", 10)], 3);
    apply(&["1"], &[], 3);
    apply(&["1"], &[], 3);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    let r = apply(&["1"], &[], 3);
    assert_eq!(r["ended"].as_i64(), Some(1));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 0);
}

#[pg_test]
fn the_database_allows_one_live_row_per_broadcaster() {
    Spi::run("INSERT INTO twitch_sync.streams (stream_id, broadcaster_id) VALUES ('a', '1')").unwrap();
    assert_eq!(
        sqlstate_of("INSERT INTO twitch_sync.streams (stream_id, broadcaster_id) VALUES ('b', '1')"),
        "23505"
    );
}

#[pg_test]
fn a_role_without_grants_can_read_and_run_nothing() {
    Spi::run("CREATE ROLE twitch_sync_nobody").unwrap();
    Spi::run("SET LOCAL ROLE twitch_sync_nobody").unwrap();
    for sql in [
        "PERFORM * FROM twitch_sync.channels",
        "PERFORM * FROM twitch_sync.streams",
        "PERFORM * FROM twitch_sync.credentials",
        "PERFORM twitch_sync.run()",
        "PERFORM twitch_sync.status()",
        "PERFORM twitch_sync.track('1')",
        "PERFORM twitch_sync.set_credentials('a', 'b')",
        "SET twitch_sync.helix_url = 'http://127.0.0.1:1/x'",
    ] {
        assert_eq!(sqlstate_of(sql), "42501", "{sql}");
    }
}

#[pg_test]
fn schedule_without_pg_cron_loaded_says_how_to_load_it() {
    // The pgrx test server does not preload pg_cron.
    assert_eq!(sqlstate_of("PERFORM twitch_sync.schedule()"), "55000");
    assert_eq!(sqlstate_of("PERFORM twitch_sync.unschedule()"), "55000");
    // pg_cron validates schedules (the end-to-end suite checks its error);
    // without pg_cron, what is missing is said first, whatever the schedule.
    assert_eq!(sqlstate_of("PERFORM twitch_sync.schedule('nope')"), "55000");
    assert_eq!(sqlstate_of("PERFORM twitch_sync.schedule(NULL)"), "22023");
}

#[pg_test]
fn cron_next_run_follows_pg_cron_in_utc() {
    let utc = |sql: &str| {
        Spi::get_one::<String>(&format!("SELECT ({sql}) AT TIME ZONE 'UTC' || ''")).unwrap()
    };
    assert_eq!(
        utc("twitch_sync.cron_next_run('*/10 * * * *', '2026-11-25 14:03:30+00')").as_deref(),
        Some("2026-11-25 14:10:00")
    );
    assert_eq!(
        utc("twitch_sync.cron_next_run('@hourly', '2026-11-25 14:03:30+00')").as_deref(),
        Some("2026-11-25 15:00:00")
    );
    // the session's time zone changes nothing: pg_cron evaluates in UTC
    Spi::run("SET LOCAL TimeZone = 'America/New_York'").unwrap();
    assert_eq!(
        utc("twitch_sync.cron_next_run('0 12 * * *', '2026-11-25 14:03:30+00')").as_deref(),
        Some("2026-11-26 12:00:00")
    );
    // pg_cron 1.5+'s interval schedules: the last start plus the interval
    assert_eq!(
        utc("twitch_sync.cron_next_run('30 seconds', now(), '2026-11-25 14:03:30.5+00')").as_deref(),
        Some("2026-11-25 14:04:00.5")
    );
}

#[pg_test]
fn cron_next_run_never_raises_on_an_odd_schedule() {
    for args in [
        "'0 0 31 2 *', now()",
        "'nope', now()",
        "'61 * * * *', now()",
        "'@reboot', now()",
        "'30 seconds', now()",
        "'30 seconds', now(), NULL",
        "NULL, now()",
        "'* * * * *', NULL",
        "'* * * * *', 'infinity'",
        "'30 seconds', now(), '-infinity'",
    ] {
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT twitch_sync.cron_next_run({args}) IS NULL")).unwrap(),
            Some(true),
            "{args}"
        );
    }
}

#[pg_test]
fn metrics_on_a_fresh_install_are_zero_counters() {
    let text = Spi::get_one::<String>("SELECT twitch_sync.metrics()").unwrap().unwrap();
    assert!(text.contains("twitch_sync_runs_total{status=\"ok\"} 0\n"), "{text}");
    assert!(text.contains("# TYPE twitch_sync_runs_total counter\n"), "{text}");
    assert!(!text.contains("twitch_sync_last_run_age_seconds"), "no run, no age: {text}");
}
