// In-database tests (`cargo pgrx test`): each runs inside the test server in
// a transaction that is rolled back. They cover what needs no Helix: schema,
// validation, privileges, settings, and the transition layer
// (twitch_sync.apply_observations) fed observations directly.
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
    assert_eq!(
        text("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'twitch_sync'"),
        "alerts,category_days,channel_category_days,channel_days,channels,counters,credentials,events,eventsub_messages,eventsub_subscriptions,eventsub_worker,locks,rate_limit,rollup_state,run_unchecked,runs,stream_changes,streams,tracked_categories,viewer_samples,viewer_samples_default"
    );
    assert_eq!(count("SELECT count(*) FROM pg_tables WHERE schemaname = 'twitch_sync'"), 21);
    assert_eq!(count("SELECT count(*) FROM pg_views WHERE schemaname = 'twitch_sync' AND viewname = 'channel_status'"), 1);
    for f in [
        "run", "status", "track", "untrack", "set_credentials", "schedule", "unschedule", "metrics", "prune",
        "apply_observations", "poll_observations", "apply_poll", "stream_id_conflicts", "end_superseded",
        "reopen_broadcasts", "start_broadcasts", "continue_broadcasts", "update_continuing", "count_misses", "apply_offline", "update_logins", "emit_events",
        "record_run", "track_category", "untrack_category", "discover_channels",
    ] {
        let n = count(&format!(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'twitch_sync' AND p.proname = '{f}'"
        ));
        assert_eq!(n, 1, "{f}");
    }
    // the old single-function apply is gone
    assert_eq!(
        count("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'twitch_sync' AND p.proname = 'apply_sync'"),
        0
    );
    for t in ["observation", "applied", "transition"] {
        assert_eq!(count(&format!("SELECT count(*) FROM pg_type WHERE typname = '{t}' AND typnamespace = 'twitch_sync'::regnamespace")), 1, "{t}");
    }
    // channels keep no per-check stamps any more
    assert_eq!(
        count("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'twitch_sync'
                AND table_name = 'channels' AND column_name IN ('last_checked_at', 'last_live_at')"),
        0
    );
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
    // (the Kelvin sign and a dotted capital I: lower() folds them into the
    // ASCII logins 'k' and 'istanbul', stored before)
    for bad_login in ["''", "'has space'", "'way_too_long_for_a_twitch_login'", "'ünï'", "'\u{212A}'", "'\u{130}stanbul'"] {
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

/// What one call of twitch_sync.apply_observations did: its typed result
/// (twitch_sync.applied), column by column.
#[derive(Debug, PartialEq)]
struct Applied {
    live: i64,
    updated: i64,
    started: i64,
    ended: i64,
    conflicted: Vec<String>,
    events: i64,
}

/// Runs `sql`, whose one row is a twitch_sync.applied, column by column, and
/// the write's error (apply_poll's), which must be NULL.
fn query_applied(sql: &str) -> Applied {
    Spi::connect_mut(|c| {
        let row = c.update(sql, Some(1), &[]).expect(sql).first();
        let error = row.get::<String>(7).expect("error column");
        assert_eq!(error, None, "the write failed");
        let n = |i: usize| row.get::<i64>(i).expect("applied column").expect("not NULL");
        Applied {
            live: n(1),
            updated: n(2),
            started: n(3),
            ended: n(4),
            conflicted: row.get::<Vec<String>>(5).expect("conflicted").expect("not NULL"),
            events: n(6),
        }
    })
}

/// Applies `obs` (an SQL expression of type twitch_sync.observation[]).
fn apply_obs(obs: &str, misses: i32) -> Applied {
    query_applied(&format!(
        "SELECT (a).live::bigint, (a).updated::bigint, (a).started::bigint, (a).ended::bigint,
                (a).conflicted, (a).events::bigint, NULL::text
           FROM (SELECT twitch_sync.apply_observations({obs}, {misses}, false) AS a) x"
    ))
}

/// Writes one poll chunk with twitch_sync.apply_poll, as run() does: `live` is
/// (stream id, broadcaster id, viewers); the other `checked` channels were not
/// listed. observed_at is clock_timestamp(), so every call samples at its own
/// time.
fn apply(checked: &[&str], live: &[(&str, &str, i32)], misses: i32) -> Applied {
    let arr = |v: Vec<String>, ty: &str| format!("ARRAY[{}]::{ty}[]", v.join(","));
    let q = |s: &str| format!("'{s}'");
    let not_listed: Vec<String> =
        checked.iter().filter(|c| !live.iter().any(|l| l.1 == **c)).map(|c| q(c)).collect();
    let sql = format!(
        "SELECT (a).live::bigint, (a).updated::bigint, (a).started::bigint, (a).ended::bigint,
                (a).conflicted, (a).events::bigint, p.error
           FROM twitch_sync.apply_poll(clock_timestamp(), {bid}, {sid}, {login}, {vc}, {title}, {gid},
                                       {gname}, {lang}, {started}, {not_listed}, {misses}, false) AS p(a, error)",
        bid = arr(live.iter().map(|l| q(l.1)).collect(), "text"),
        sid = arr(live.iter().map(|l| q(l.0)).collect(), "text"),
        login = arr(live.iter().map(|_| "NULL".into()).collect(), "text"),
        vc = arr(live.iter().map(|l| l.2.to_string()).collect(), "int"),
        title = arr(live.iter().map(|_| q("t")).collect(), "text"),
        gid = arr(live.iter().map(|_| q("1")).collect(), "text"),
        gname = arr(live.iter().map(|_| q("g")).collect(), "text"),
        lang = arr(live.iter().map(|_| q("en")).collect(), "text"),
        started = arr(live.iter().map(|_| q("2026-11-25T10:00:00Z")).collect(), "timestamptz"),
        not_listed = arr(not_listed, "text"),
    );
    query_applied(&sql)
}

/// One EventSub-style observation: `state` 'live' or 'offline'; NULL fields are
/// what a stream.online event lacks.
fn event_obs(broadcaster: &str, state: &str, stream: Option<&str>, viewers: Option<i32>, title: Option<&str>) -> String {
    let lit = |v: Option<&str>| v.map(|s| format!("'{s}'")).unwrap_or_else(|| "NULL".into());
    format!(
        "ARRAY[ROW('eventsub', clock_timestamp(), '{broadcaster}', '{state}', {sid}, NULL, {vc}::int, {title},
                   NULL, NULL, NULL, {started})::twitch_sync.observation]",
        sid = lit(stream),
        vc = viewers.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into()),
        title = lit(title),
        started = if state == "live" { "'2026-11-25T11:00:00Z'::timestamptz" } else { "NULL" },
    )
}

fn text(sql: &str) -> String {
    Spi::get_one::<String>(sql).expect(sql).unwrap_or_default()
}

/// Every row of channels, streams and viewer_samples, as text.
fn all_rows() -> String {
    text(
        "SELECT concat_ws(E'\n--\n',
            (SELECT string_agg(c::text, E'\n' ORDER BY c.broadcaster_id) FROM twitch_sync.channels c),
            (SELECT string_agg(s::text, E'\n' ORDER BY s.broadcaster_id, s.stream_id) FROM twitch_sync.streams s),
            (SELECT string_agg(v::text, E'\n' ORDER BY v.broadcaster_id, v.stream_id, v.sampled_at)
               FROM twitch_sync.viewer_samples v))",
    )
}

fn applied(live: i64, updated: i64, started: i64, ended: i64, events: i64) -> Applied {
    Applied { live, updated, started, ended, conflicted: vec![], events }
}

#[pg_test]
fn apply_tracks_live_restart_reopen_and_offline() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2'), ('3')").unwrap();
    let r = apply(&["1", "2", "3"], &[("1001", "1", 10), ("1002", "2", 20)], 1);
    assert_eq!(r, applied(2, 0, 2, 0, 2));
    // counts move, peaks keep the maximum
    let r = apply(&["1", "2", "3"], &[("1001", "1", 5), ("1002", "2", 30)], 1);
    assert_eq!(r, applied(2, 2, 0, 0, 0));
    assert_eq!(count("SELECT peak_viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1001'"), 10);
    assert_eq!(count("SELECT viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1001'"), 5);
    assert_eq!(count("SELECT peak_viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1002'"), 30);
    // channel 1 restarts under a new stream id; channel 2 goes offline
    let r = apply(&["1", "2", "3"], &[("1011", "1", 7)], 1);
    assert_eq!(r, applied(1, 0, 1, 2, 2));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live AND stream_id = '1011'"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE NOT is_live AND ended_at IS NOT NULL"), 2);
    // 1002 reappears under the same stream id: the row is reopened, not duplicated
    let r = apply(&["1", "2", "3"], &[("1011", "1", 7), ("1002", "2", 3)], 1);
    assert_eq!(r, applied(2, 1, 1, 0, 1));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '2'"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live AND ended_at IS NULL"), 1);
    assert_eq!(count("SELECT peak_viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1002'"), 30);
    // a channel that was not checked (its batch failed) is left alone
    let before = text("SELECT s::text FROM twitch_sync.streams s WHERE stream_id = '1002'");
    let r = apply(&["1"], &[("1011", "1", 8)], 1);
    assert_eq!(r, applied(1, 1, 0, 0, 0));
    assert_eq!(text("SELECT s::text FROM twitch_sync.streams s WHERE stream_id = '1002'"), before);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live"), 1);
    // one sample per live stream per call
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1001'"), 2);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1002'"), 3);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples"), 2 + 2 + 1 + 2 + 1);
    // a channel's last live sighting is derived from its streams
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.channel_status WHERE last_live_at IS NOT NULL"),
        2
    );
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channel_status WHERE broadcaster_id = '3' AND last_live_at IS NULL"), 1);
}

#[pg_test]
fn last_checked_at_is_derived_from_runs_and_what_they_could_not_check() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2'), ('3')").unwrap();
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channel_status WHERE last_checked_at IS NULL"), 3);
    // a run that could check 1 and 2; 3's batch failed
    Spi::run(
        "SELECT twitch_sync.record_run(now(), 'partial', 2, 0, 0, 0, 0, 1, 1, 0, 0, NULL, 'HTTP 503', 0, 0,
                                       ARRAY['3'], '{}'::text[])",
    )
    .unwrap();
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channel_status WHERE last_checked_at = now()"), 2);
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.channel_status WHERE broadcaster_id = '3' AND last_checked_at IS NULL"),
        1
    );
}

#[pg_test]
fn offline_after_misses_needs_consecutive_misses() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1')").unwrap();
    apply(&["1"], &[("1001", "1", 10)], 3);
    apply(&["1"], &[], 3);
    apply(&["1"], &[], 3);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status"), 2);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    // a failed batch (the channel absent) is not a miss
    apply(&[], &[], 3);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status"), 2);
    // seen again: the miss count starts over
    apply(&["1"], &[("1001", "1", 10)], 3);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status"), 0);
    apply(&["1"], &[], 3);
    let r = apply(&["1"], &[], 3);
    assert_eq!(r.ended, 0);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 1);
    let r = apply(&["1"], &[], 3);
    assert_eq!(r, applied(0, 0, 0, 1, 1));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE is_live"), 0);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status"), 0);
    // offline before and after: nothing counts
    apply(&["1"], &[], 3);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status"), 0);
}

#[pg_test]
fn an_eventsub_offline_ends_the_live_stream_at_once() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2')").unwrap();
    apply(&["1", "2"], &[("1001", "1", 10), ("1002", "2", 20)], 3);
    apply(&["1", "2"], &[("1002", "2", 21)], 3); // 1 missed once
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status WHERE broadcaster_id = '1'"), 1);
    // one event ends the stream even though 3 misses are needed for polls
    let r = apply_obs(&event_obs("1", "offline", None, None, None), 3);
    assert_eq!(r, applied(0, 0, 0, 1, 1));
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1001' AND NOT is_live AND ended_at IS NOT NULL"),
        1
    );
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status WHERE broadcaster_id = '1'"), 0);
    // the other channel is untouched
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live AND viewer_count = 21"), 1);
    // an offline event for a channel already offline changes nothing
    let before = all_rows();
    let r = apply_obs(&event_obs("1", "offline", None, None, None), 3);
    assert_eq!(r, applied(0, 0, 0, 0, 0));
    assert_eq!(all_rows(), before);
}

#[pg_test]
fn a_lagging_listing_does_not_reopen_what_an_offline_event_ended() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2')").unwrap();
    apply(&["1", "2"], &[("1001", "1", 10), ("1002", "2", 20)], 1);
    apply_obs(&event_obs("1", "offline", None, None, None), 1);
    let live = "SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1001' AND is_live";
    assert_eq!(count(live), 0);
    // Helix still lists 1001 (its listing lags): held, nothing written
    let before = all_rows();
    let events = count("SELECT count(*) FROM twitch_sync.events");
    apply(&["1", "2"], &[("1001", "1", 11), ("1002", "2", 21)], 1);
    assert_eq!(count(live), 0, "not reopened within the grace period");
    assert_eq!(count("SELECT count(*) FROM twitch_sync.events"), events, "no event");
    assert!(all_rows() != before, "s2 continued");
    // a broadcast a poll ended (a miss) and listed again is reopened at once
    apply(&["2"], &[], 1);
    apply(&["2"], &[("1002", "2", 22)], 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live"), 1);
    // listed again after the grace period: Twitch resumed it, it is reopened
    Spi::run("SET LOCAL twitch_sync.eventsub_grace_secs = 0").unwrap();
    apply(&["1"], &[("1001", "1", 12)], 1);
    assert_eq!(count(live), 1);
}

#[pg_test]
fn a_poll_of_a_channel_untracked_during_the_run_writes_nothing() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2')").unwrap();
    apply(&["1", "2"], &[("1001", "1", 10)], 1);
    // untracked while the run waited on Helix: its live row ended, its channel gone
    Spi::run("SELECT twitch_sync.untrack('1')").unwrap();
    let before = all_rows();
    // the run's answers arrive: 1001 listed, 2 listed with a new broadcast
    apply(&["1", "2"], &[("1001", "1", 11), ("1002", "2", 5)], 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '1' AND is_live"), 0);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live"), 1);
    assert!(all_rows() != before);
}

#[pg_test]
fn a_lagging_listing_does_not_end_what_an_online_event_opened() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2')").unwrap();
    apply(&["1"], &[("1008", "1", 5)], 1);
    apply(&["1"], &[], 1); // 1008 ended by a poll
    apply_obs(&event_obs("1", "live", Some("1009"), None, None), 1);
    let live = |sid: &str| {
        count(&format!("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '{sid}' AND is_live"))
    };
    assert_eq!(live("1009"), 1);
    // the listing does not show 1009 yet: no miss, still live
    apply(&["1"], &[], 1);
    assert_eq!(live("1009"), 1);
    // the listing still shows the old broadcast: nothing superseded, 1008 stays ended
    apply(&["1"], &[("1008", "1", 6)], 1);
    assert_eq!((live("1009"), live("1008")), (1, 0));
    // a channel without events is polled as before
    apply(&["2"], &[("1020", "2", 3)], 1);
    apply(&["2"], &[], 1);
    assert_eq!(live("1020"), 0);
    // after the grace period a poll that does not list it ends it
    Spi::run("SET LOCAL twitch_sync.eventsub_grace_secs = 0").unwrap();
    apply(&["1"], &[], 1);
    assert_eq!(live("1009"), 0);
}

#[pg_test]
fn an_eventsub_online_without_count_or_title_keeps_stored_values() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2')").unwrap();
    apply(&["1"], &[("1001", "1", 10)], 1);
    let r = apply_obs(&event_obs("1", "live", Some("1001"), None, None), 1);
    assert_eq!(r, applied(1, 1, 0, 0, 0));
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1001' AND is_live AND viewer_count = 10
                AND peak_viewer_count = 10 AND title = 't' AND game_name = 'g'"),
        1
    );
    // no count, no sample
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1001'"), 1);
    // a new broadcast without count or title: 0 and ''
    let r = apply_obs(&event_obs("2", "live", Some("1009"), None, None), 1);
    assert_eq!(r, applied(1, 0, 1, 0, 1));
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1009' AND broadcaster_id = '2' AND is_live
                AND viewer_count = 0 AND peak_viewer_count = 0 AND title = '' AND game_name = ''
                AND started_at = '2026-11-25T11:00:00Z'"),
        1
    );
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1009'"), 0);
    // the next poll brings the count and a sample
    apply(&["1", "2"], &[("1001", "1", 12), ("1009", "2", 4)], 1);
    assert_eq!(count("SELECT viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1009'"), 4);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1009'"), 1);
}

#[pg_test]
fn a_stream_id_stored_under_another_broadcaster_is_refused() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('1'), ('2'), ('3')").unwrap();
    apply(&["1", "2", "3"], &[("1001", "1", 10), ("1002", "2", 20), ("1003", "3", 30)], 3);
    apply(&["1", "2", "3"], &[("1001", "1", 11), ("1002", "2", 21)], 3); // 3 missed once
    let before = all_rows();
    // 2 listed with 1's live stream id: refused; 2 and 1 left exactly as they were
    let r = apply(&["2"], &[("1001", "2", 99)], 3);
    assert_eq!(r, Applied { live: 0, updated: 0, started: 0, ended: 0, conflicted: vec!["2".into()], events: 0 });
    assert_eq!(all_rows(), before);
    // 2 listed with 3's stream id in a chunk where 1 is listed and 3 restarts:
    // 2 is refused, the others are applied
    let r = apply(&["1", "2", "3"], &[("1001", "1", 12), ("1003", "2", 5), ("1031", "3", 31)], 3);
    assert_eq!(r, Applied { live: 2, updated: 1, started: 1, ended: 1, conflicted: vec!["2".into()], events: 1 });
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '2'"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1002' AND is_live AND viewer_count = 21"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1003' AND broadcaster_id = '3' AND NOT is_live"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1031' AND is_live AND viewer_count = 31"), 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE broadcaster_id = '2'"), 2);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '1001'"), 3);
    assert_eq!(count("SELECT missed_polls::bigint FROM twitch_sync.channel_status WHERE broadcaster_id = '3'"), 0);
    // the owner and a foreign broadcaster list the same stored id in one call:
    // only the foreign one is refused, the owner is applied
    let r = apply(&["3", "2"], &[("1031", "3", 40), ("1031", "2", 1)], 3);
    assert_eq!(r.conflicted, vec!["2".to_string()]);
    assert_eq!((r.live, r.updated), (1, 1));
    assert_eq!(count("SELECT viewer_count::bigint FROM twitch_sync.streams WHERE stream_id = '1031'"), 40);
    // two broadcasters claim the same new stream id in one call: neither gets it
    let r = apply(&["1", "2"], &[("1099", "1", 5), ("1099", "2", 7)], 3);
    assert_eq!(r.conflicted, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1099'"), 0);
    // an ended stream id still belongs to its broadcaster
    apply(&["1"], &[], 1);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '1001' AND NOT is_live"), 1);
    let before = all_rows();
    let r = apply_obs(&event_obs("3", "live", Some("1001"), None, None), 1);
    assert_eq!(r.conflicted, vec!["3".to_string()]);
    assert_eq!(all_rows(), before);
}

#[pg_test]
fn events_are_written_to_the_outbox_with_their_payloads() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id, login) VALUES ('1', 'alice'), ('2', NULL)").unwrap();
    let events = || -> Vec<serde_json::Value> {
        Spi::get_one::<pgrx::JsonB>(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('event', event, 'broadcaster_id', broadcaster_id,
                        'stream_id', stream_id, 'payload', payload) ORDER BY event_id), '[]')
               FROM twitch_sync.events",
        )
        .unwrap()
        .unwrap()
        .0
        .as_array()
        .unwrap()
        .clone()
    };
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let r = apply(&["1", "2"], &[("1001", "1", 10)], 1);
    assert_eq!(r.events, 1);
    let e = events();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0]["event"].as_str(), e[0]["broadcaster_id"].as_str(), e[0]["stream_id"].as_str()), (Some("online"), Some("1"), Some("1001")));
    let p = &e[0]["payload"];
    assert_eq!(
        keys(p),
        ["at", "broadcaster_id", "event", "game_name", "login", "started_at", "stream_id", "title", "viewer_count"]
    );
    assert_eq!((p["event"].as_str(), p["login"].as_str(), p["stream_id"].as_str()), (Some("online"), Some("alice"), Some("1001")));
    assert_eq!((p["viewer_count"].as_i64(), p["title"].as_str(), p["game_name"].as_str()), (Some(10), Some("t"), Some("g")));
    assert_eq!(p["started_at"].as_str(), Some("2026-11-25T10:00:00+00:00"));

    // a restart is one event naming the broadcast it superseded
    let r = apply(&["1", "2"], &[("1011", "1", 15)], 1);
    assert_eq!((r.started, r.ended, r.events), (1, 1, 1));
    let e = events();
    assert_eq!(e.len(), 2);
    assert_eq!((e[1]["event"].as_str(), e[1]["stream_id"].as_str()), (Some("restart"), Some("1011")));
    assert_eq!(e[1]["payload"]["previous_stream_id"].as_str(), Some("1001"));
    assert_eq!(e[1]["payload"]["event"].as_str(), Some("restart"));
    assert_eq!(e[1]["payload"]["viewer_count"].as_i64(), Some(15));
    assert!(e[1]["payload"].get("ended_at").is_none(), "{}", e[1]);

    // offline carries the peak and the end
    apply(&["1", "2"], &[("1011", "1", 40)], 1);
    let r = apply(&["1", "2"], &[], 1);
    assert_eq!((r.ended, r.events), (1, 1));
    let e = events();
    assert_eq!(e.len(), 3);
    let p = &e[2]["payload"];
    assert_eq!((e[2]["event"].as_str(), e[2]["stream_id"].as_str()), (Some("offline"), Some("1011")));
    assert_eq!((p["peak_viewer_count"].as_i64(), p["viewer_count"].as_i64()), (Some(40), Some(40)));
    let ended_at = text("SELECT to_jsonb(ended_at) #>> '{}' FROM twitch_sync.streams WHERE stream_id = '1011'");
    assert_eq!(p["ended_at"].as_str(), Some(ended_at.as_str()));
    assert_eq!(p["at"].as_str(), Some(ended_at.as_str()));

    // reopened: the ended 1001 comes back, for a channel without login (no login key)
    let r = apply(&["1", "2"], &[("1001", "1", 3), ("1005", "2", 1)], 1);
    assert_eq!((r.started, r.events), (2, 2));
    let e = events();
    assert_eq!(e.len(), 5);
    let reopened: Vec<&serde_json::Value> = e[3..].iter().filter(|x| x["stream_id"] == "1001").collect();
    assert_eq!(reopened.len(), 1);
    assert_eq!(reopened[0]["payload"]["reopened"].as_bool(), Some(true));
    let s5: Vec<&serde_json::Value> = e[3..].iter().filter(|x| x["stream_id"] == "1005").collect();
    assert_eq!(s5.len(), 1);
    assert!(s5[0]["payload"].get("login").is_none() && s5[0]["payload"].get("reopened").is_none(), "{}", s5[0]);

    // emit_events returns how many it wrote; a transition without event is none
    let n = count(
        "SELECT twitch_sync.emit_events(ARRAY[
            ROW('offline', '2', '1005', NULL, NULL, 1, 1, 't', 'g', NULL, now(), now())::twitch_sync.transition,
            ROW(NULL, '2', '1005', NULL, NULL, 1, 1, 't', 'g', NULL, NULL, now())::twitch_sync.transition,
            ROW('online', '1', '1007', false, NULL, 2, 2, 't', 'g', NULL, NULL, now())::twitch_sync.transition],
            true)::bigint",
    );
    assert_eq!(n, 2);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.events"), 7);
    // nothing changed: no event
    let r = apply(&["1", "2"], &[("1001", "1", 3), ("1005", "2", 1)], 1);
    assert_eq!(r.events, 0);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.events"), 7);
}

#[pg_test]
fn a_channel_offline_before_and_after_costs_no_row_write() {
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id) SELECT g::text FROM generate_series(1, 100) g").unwrap();
    apply(&["1"], &[("1001", "1", 10)], 2);
    let writes = |table: &str| -> (i64, i64) {
        let (u, i) = Spi::get_two::<i64, i64>(&format!(
            "SELECT n_tup_upd, n_tup_ins FROM pg_stat_xact_user_tables
              WHERE schemaname = 'twitch_sync' AND relname = '{table}'"
        ))
        .unwrap();
        (u.unwrap_or(0), i.unwrap_or(0))
    };
    let all: Vec<String> = (1..=100).map(|i| i.to_string()).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let (c0, s0) = (writes("channels"), writes("streams"));
    // 99 channels offline before and after, 1 live and still listed
    apply(&all, &[("1001", "1", 11)], 2);
    let (c1, s1) = (writes("channels"), writes("streams"));
    assert_eq!((c1.0 - c0.0, c1.1 - c0.1), (0, 0), "channels written");
    assert_eq!((s1.0 - s0.0, s1.1 - s0.1), (1, 0), "streams written: the live one only");
    // the live one missed once: its stream row's miss count is the only write
    apply(&all, &[], 2);
    let (c2, s2) = (writes("channels"), writes("streams"));
    assert_eq!((c2.0 - c1.0, c2.1 - c1.1), (0, 0), "channels written");
    assert_eq!((s2.0 - s1.0, s2.1 - s1.1), (1, 0), "streams written: the missed one only");
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
    assert!(text.contains("twitch_sync_runs_total{status=\"skipped\"} 0\n"), "{text}");
    assert!(text.contains("# TYPE twitch_sync_runs_total counter\n"), "{text}");
    assert!(!text.contains("twitch_sync_last_run_age_seconds"), "no run, no age: {text}");
}

#[pg_test]
fn discover_channels_adds_in_directory_order_within_the_cap() {
    Spi::run("SELECT twitch_sync.track_category('777', NULL, 3)").unwrap();
    Spi::run("SELECT twitch_sync.track('5')").unwrap();
    Spi::run("INSERT INTO twitch_sync.channels (broadcaster_id, enabled) VALUES ('4', false)").unwrap();
    let sql = "SELECT array_to_string(ARRAY(SELECT unnest(added) ORDER BY 1), ','), capped, error IS NULL
                 FROM twitch_sync.discover_channels('777', ARRAY['9','5','4','8','7','6'],
                                                    ARRAY['a',NULL,NULL,'c','d','e'], 1, 6, 'complete', NULL, NULL)";
    let (added, capped, ok) = Spi::get_three::<String, i32, bool>(sql).unwrap();
    // 5 is tracked and 4 disabled (never touched); of 9, 8, 7, 6 the cap takes the first three.
    assert_eq!(added.as_deref(), Some("7,8,9"));
    assert_eq!(capped, Some(1));
    assert_eq!(ok, Some(true));
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE discovered_via = '777' AND discovered_at IS NOT NULL"), 3);
    assert_eq!(count("SELECT count(*) FROM twitch_sync.channels WHERE broadcaster_id = '4' AND NOT enabled AND discovered_via IS NULL"), 1);
    assert_eq!(
        count("SELECT count(*) FROM twitch_sync.tracked_categories
                WHERE discovered = 3 AND last_pages = 1 AND last_streams = 6 AND last_end = 'complete'"),
        1
    );
    // Full: nothing more; track() adopts one, which makes room for one.
    let (added, _, _) = Spi::get_three::<String, i32, bool>(sql).unwrap();
    assert_eq!(added.as_deref(), Some(""));
    Spi::run("SELECT twitch_sync.track('9')").unwrap();
    let (added, _, _) = Spi::get_three::<String, i32, bool>(sql).unwrap();
    assert_eq!(added.as_deref(), Some("6"));
    // An untracked category adds nothing.
    Spi::run("SELECT twitch_sync.untrack_category('777')").unwrap();
    Spi::run("DELETE FROM twitch_sync.channels WHERE broadcaster_id = '6'").unwrap();
    let (added, _, _) = Spi::get_three::<String, i32, bool>(sql).unwrap();
    assert_eq!(added.as_deref(), Some(""));
    // A write that fails is reported, not raised.
    Spi::run("SELECT twitch_sync.track_category('778')").unwrap();
    let (_, _, ok) = Spi::get_three::<String, i32, bool>(
        "SELECT '', 0, error IS NULL FROM twitch_sync.discover_channels('778', ARRAY['12'], ARRAY['a'], 1, 1, 'bogus', NULL, NULL)",
    )
    .unwrap();
    assert_eq!(ok, Some(false));
}
