//! Bad data from Helix (issue 10, point 3): answers that carry NULs, unpaired
//! surrogate escapes, overlong ids, impossible dates, odd logins and stream ids
//! that belong to someone else. Each test serves one batch's page as raw JSON
//! text (so it can hold what serde would never write) in a world of at least
//! 200 channels, and checks what a user would: the run finishes and is
//! recorded, the result document counts what was dropped or repaired, the
//! broadcaster named by the bad entry is left exactly as it was (or stored
//! cleaned), its healthy neighbours are applied, nothing corrupt is stored,
//! and the server log shows no Rust panic or backtrace.

use std::collections::BTreeMap;
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime};
use twitch_sync_e2e::helix_sim::world::rfc3339;
use twitch_sync_e2e::helix_sim::{Fault, FaultKind};
use twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator;
use twitch_sync_e2e::serde_json::{json, Value};
use twitch_sync_e2e::{
    error_text, log_line_database, log_messages, sqlstate, world, Cluster, TestDb,
};

/// Every server this binary starts runs with RUST_BACKTRACE=1, so that a Rust
/// panic or a Postgres error unwinding through Rust would show a backtrace if
/// the extension let one through: the log checks below then catch it.
fn backtraces_on() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("RUST_BACKTRACE", "1");
        let _ = Cluster::shared();
    });
}

/// A database tracking every channel of a world of `channels` (3 batches of
/// 100 for 300), after one healthy run.
fn setup(channels: usize, live_fraction: f64) -> (TestDb, Vec<String>) {
    backtraces_on();
    let mut db = TestDb::new(world(channels, live_fraction));
    let ids = db.track_first(channels);
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "first run: {doc}");
    (db, ids)
}

/// One entry of `data` as raw JSON text: the broadcaster's stream as the world
/// lists it (or, for a channel that is offline there, a made-up live stream),
/// with the fields in `set` replaced by (or added as) the raw JSON text given.
fn entry(db: &TestDb, broadcaster: &str, set: &[(&str, &str)]) -> String {
    let base = db.sim.world(|w| {
        let i = w.index_of_id(broadcaster).expect("a channel of the world");
        if w.channels[i].live.is_some() {
            w.stream_json(i)
        } else {
            let c = &w.channels[i];
            json!({
                "id": "1", "user_id": c.id, "user_login": c.login, "user_name": c.display_name,
                "game_id": "509658", "game_name": "Just Chatting", "type": "live",
                "title": "made up", "tags": [], "viewer_count": 17,
                "started_at": rfc3339(SystemTime::now()), "language": "en",
                "thumbnail_url": "", "tag_ids": [], "is_mature": false
            })
        }
    });
    let base = base.as_object().expect("an object");
    let mut parts: Vec<String> = base
        .iter()
        .map(|(k, v)| {
            let raw = set
                .iter()
                .find(|(n, _)| n == k)
                .map_or_else(|| v.to_string(), |(_, r)| r.to_string());
            format!("{}:{raw}", json!(k))
        })
        .collect();
    for (k, raw) in set {
        if !base.contains_key(*k) {
            parts.push(format!("{}:{raw}", json!(k)));
        }
    }
    format!("{{{}}}", parts.join(","))
}

/// The entries of the live channels of `batch` as the world has them now,
/// leaving out `except`.
fn healthy_entries(db: &TestDb, batch: &[String], except: &[&str]) -> Vec<String> {
    let live: Vec<String> = db.sim.world(|w| {
        batch
            .iter()
            .filter(|id| !except.contains(&id.as_str()) && w.stream_of(id).is_some())
            .cloned()
            .collect()
    });
    live.iter().map(|id| entry(db, id, &[])).collect()
}

/// A last page of Get Streams holding exactly `entries`.
fn page(entries: &[String]) -> String {
    format!("{{\"data\":[{}],\"pagination\":{{}}}}", entries.join(","))
}

/// Serves `body` to every request that asks for `broadcaster` (its batch).
fn serve(db: &TestDb, broadcaster: &str, body: String) {
    db.sim
        .add_fault(Fault::new(FaultKind::Body { body }).for_user(broadcaster));
}

/// Live rows of `ids` as stored: broadcaster -> (stream id, viewer count).
fn stored_live(db: &mut TestDb, ids: &[String]) -> BTreeMap<String, (String, i32)> {
    db.client
        .query(
            "SELECT broadcaster_id, stream_id, viewer_count FROM twitch_sync.streams
              WHERE is_live AND broadcaster_id = ANY($1)",
            &[&ids],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Live streams of `ids` as the world has them.
fn world_live(db: &TestDb, ids: &[String]) -> BTreeMap<String, (String, i32)> {
    db.sim.world(|w| {
        ids.iter()
            .filter_map(|id| {
                w.stream_of(id)
                    .map(|s| (id.clone(), (s.id.clone(), s.viewer_count as i32)))
            })
            .collect()
    })
}

/// Every channel of `ids` but `except` is stored exactly as the world has it
/// now (fresh stream ids and counts; offline ones have no live row).
fn assert_applied(db: &mut TestDb, ids: &[String], except: &[&str], what: &str) {
    let rest: Vec<String> = ids
        .iter()
        .filter(|id| !except.contains(&id.as_str()))
        .cloned()
        .collect();
    let want = world_live(db, &rest);
    assert!(!want.is_empty(), "{what}: the world has live neighbours");
    assert_eq!(
        stored_live(db, &rest),
        want,
        "{what}: the neighbours are applied with fresh values"
    );
}

/// Everything stored about one broadcaster: its streams, channel row and samples.
fn snapshot(db: &mut TestDb, broadcaster: &str) -> String {
    db.client
        .query_one(
            "SELECT (SELECT coalesce(string_agg(s::text, ' ' ORDER BY s.stream_id), '')
                       FROM twitch_sync.streams s WHERE s.broadcaster_id = $1)
                    || ' | ' || (SELECT c::text FROM twitch_sync.channels c WHERE c.broadcaster_id = $1)
                    || ' | ' || (SELECT coalesce(string_agg(v::text, ' ' ORDER BY v.stream_id, v.sampled_at), '')
                                   FROM twitch_sync.viewer_samples v WHERE v.broadcaster_id = $1)",
            &[&broadcaster],
        )
        .unwrap()
        .get(0)
}

/// The result document's `bad_entries` and `cleaned` are zero but for `bad`
/// and `cleaned`.
fn assert_counters(doc: &Value, bad: &[(&str, u64)], cleaned: &[(&str, u64)]) {
    let mut want_bad = json!({"malformed": 0, "bad_stream_id": 0, "bad_broadcaster_id": 0,
                              "stream_id_conflict": 0, "foreign_broadcaster": 0});
    for (k, n) in bad {
        want_bad[*k] = json!(n);
    }
    let mut want_cleaned = json!({"login": 0, "text": 0, "game_id": 0, "started_at": 0,
                                  "viewer_count": 0, "encoding": 0});
    for (k, n) in cleaned {
        want_cleaned[*k] = json!(n);
    }
    assert_eq!(doc["bad_entries"], want_bad, "bad_entries: {doc}");
    assert_eq!(doc["cleaned"], want_cleaned, "cleaned: {doc}");
}

/// The run's `twitch_sync.runs` row agrees with its document and has the
/// expected status, channels checked and unknown channels; returns its
/// run_unchecked rows.
fn assert_run_row(
    db: &mut TestDb,
    doc: &Value,
    status: &str,
    checked: i64,
    unknown: i64,
) -> Vec<(String, String)> {
    let run_id = doc["run_id"].as_i64().expect("run_id");
    let r = db
        .client
        .query_one(
            "SELECT status, channels_checked::bigint, live::bigint, unknown::bigint,
                    bad_entries::bigint, errors::bigint
               FROM twitch_sync.runs WHERE run_id = $1",
            &[&run_id],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), status, "runs.status: {doc}");
    assert_eq!(doc["status"], status, "{doc}");
    assert_eq!(doc["success"], true, "{doc}");
    assert_eq!(r.get::<_, i64>(1), checked, "runs.channels_checked: {doc}");
    assert_eq!(doc["total_streams"], checked, "{doc}");
    assert_eq!(
        r.get::<_, i64>(2),
        doc["live"].as_i64().unwrap(),
        "runs.live"
    );
    assert_eq!(r.get::<_, i64>(3), unknown, "runs.unknown: {doc}");
    assert_eq!(doc["unknown"], unknown, "{doc}");
    let bad: i64 = doc["bad_entries"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(r.get::<_, i64>(4), bad, "runs.bad_entries: {doc}");
    assert_eq!(r.get::<_, i64>(5), 0, "runs.errors: {doc}");
    assert_eq!(doc["errors"], 0, "{doc}");
    db.client
        .query(
            "SELECT broadcaster_id, reason FROM twitch_sync.run_unchecked WHERE run_id = $1
              ORDER BY broadcaster_id",
            &[&run_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The next run with Helix healthy again is ok and stores exactly the world.
fn assert_recovers(db: &mut TestDb) {
    db.sim.clear_faults();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "healthy run after: {doc}");
    assert_eq!(doc["unknown"], 0, "{doc}");
    assert_counters(&doc, &[], &[]);
    db.assert_matches_world();
}

/// No line the server logged for this database (continuation lines included)
/// holds a Rust panic or backtrace, and no line of the log outside any
/// message (what a panic hook prints to stderr, whichever database it
/// follows) says `panicked`. The log read is shown to be this database's:
/// the runs the test made are in it.
fn assert_no_panic_logged(db: &TestDb) {
    let log = db.cluster().log();
    for line in log.lines() {
        if log_line_database(line).is_none() {
            assert!(
                !line.contains("panicked"),
                "the server log shows a Rust panic: {line}"
            );
        }
    }
    let ours = log_messages(&log, &db.name);
    assert!(
        ours.iter()
            .any(|m| m.contains("LOG:  twitch_sync: run ") && m.contains(" finished: ")),
        "the server log has no finished run for {}: {ours:#?}",
        db.name
    );
    for message in &ours {
        for bad in RUST_INTERNALS {
            assert!(
                !message.contains(bad),
                "the server log shows a Rust panic for {}: {message}",
                db.name
            );
        }
    }
}

/// What a Rust panic message or backtrace holds, and no message of the
/// extension should.
const RUST_INTERNALS: [&str; 9] = [
    "panicked",
    "backtrace",
    "RUST_BACKTRACE",
    "rust_begin_unwind",
    "std::panicking",
    "pgrx_pg_sys::",
    "pgrx::",
    "/.cargo/registry/",
    "at /rustc/",
];

/// Text a user must never see in an error.
fn assert_no_rust_internals(text: &str) {
    for bad in RUST_INTERNALS.iter().chain(&[".rs:"]) {
        assert!(
            !text.contains(bad),
            "the error shows Rust internals ({bad}): {text}"
        );
    }
}

#[test]
fn a_stream_id_with_a_nul_is_dropped_and_its_prefix_twin_stored_alone() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    let (b, c) = {
        let live = world_live(&db, batch);
        let b = live.keys().next().unwrap().clone();
        let c = batch
            .iter()
            .find(|id| !live.contains_key(*id))
            .unwrap()
            .clone();
        (b, c)
    };
    db.sim.tick();
    let before_b = snapshot(&mut db, &b);
    // b's entry carries "777000111\u0000evil"; a later entry, for c, the id equal to it up to the NUL
    let mut entries = healthy_entries(&db, batch, &[&b]);
    entries.push(entry(&db, &b, &[("id", r#""777000111\u0000evil""#)]));
    entries.push(entry(&db, &c, &[("id", r#""777000111""#)]));
    serve(&db, &b, page(&entries));

    let t = Instant::now();
    let doc = db.run();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the run ends in bounded time ({:?})",
        t.elapsed()
    );
    assert_counters(&doc, &[("bad_stream_id", 1)], &[]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 299, 1);
    assert_eq!(unchecked, vec![(b.clone(), "unknown".to_string())]);
    assert_eq!(
        snapshot(&mut db, &b),
        before_b,
        "the broadcaster of the dropped entry is left exactly as it was"
    );
    let rows = db
        .client
        .query(
            "SELECT stream_id, broadcaster_id, is_live, viewer_count FROM twitch_sync.streams
              WHERE stream_id LIKE '777000111%' OR strpos(stream_id, 'evil') > 0",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "one row for the id, none for its NUL twin");
    assert_eq!(rows[0].get::<_, String>(0), "777000111");
    assert_eq!(rows[0].get::<_, String>(1), c);
    assert!(rows[0].get::<_, bool>(2));
    assert_eq!(rows[0].get::<_, i32>(3), 17);
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '777000111' AND broadcaster_id = '{c}'"
        )),
        1
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.streams WHERE stream_id !~ '^[0-9]{1,20}$'"
        ),
        0,
        "every stored stream id is 1-20 digits"
    );
    assert_applied(&mut db, &ids, &[&b, &c], "NUL id");
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn nuls_in_titles_and_game_names_are_removed() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    let live: Vec<String> = world_live(&db, batch).into_keys().collect();
    let (b, c) = (live[0].clone(), live[1].clone());
    db.sim.tick();
    let mut entries = healthy_entries(&db, batch, &[&b, &c]);
    entries.push(entry(
        &db,
        &b,
        &[
            ("title", r#""live\u0000 now \u2615""#),
            ("game_name", r#""Just\u0000Chatting""#),
        ],
    ));
    entries.push(entry(&db, &c, &[("title", r#""\u0000\u0000""#)]));
    serve(&db, &b, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[], &[("text", 3)]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 300, 0);
    assert!(unchecked.is_empty(), "{unchecked:?}");
    let row = db
        .client
        .query_one(
            "SELECT title, length(title), game_name, viewer_count FROM twitch_sync.streams
              WHERE broadcaster_id = $1 AND is_live",
            &[&b],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "live now \u{2615}");
    assert_eq!(row.get::<_, i32>(1), 10);
    assert_eq!(row.get::<_, String>(2), "JustChatting");
    let title_c: String = db
        .client
        .query_one(
            "SELECT title FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&c],
        )
        .unwrap()
        .get(0);
    assert_eq!(title_c, "");
    // the entries were kept: both are stored with their fresh counts and sampled
    assert_applied(&mut db, batch, &[], "NUL in title");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.streams
              WHERE position(chr(1) in title) > 0 OR strpos(title, '\\u0000') > 0
                 OR position(chr(1) in game_name) > 0 OR strpos(game_name, '\\u0000') > 0"
        ),
        0,
        "nothing stands in for the NUL"
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn logins_that_break_the_rule_are_not_stored_and_the_entry_is_kept() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    let live: Vec<String> = world_live(&db, batch).into_keys().collect();
    let (b1, b2, b3) = (live[0].clone(), live[1].clone(), live[2].clone());
    // b3's stored login is NULL: it stays NULL
    db.client
        .execute(
            "UPDATE twitch_sync.channels SET login = NULL WHERE broadcaster_id = $1",
            &[&b3],
        )
        .unwrap();
    let logins_before: Vec<Option<String>> = [&b1, &b2, &b3]
        .iter()
        .map(|b| {
            db.client
                .query_one(
                    "SELECT login FROM twitch_sync.channels WHERE broadcaster_id = $1",
                    &[b],
                )
                .unwrap()
                .get(0)
        })
        .collect();
    assert!(logins_before[0].is_some() && logins_before[1].is_some());
    assert_eq!(logins_before[2], None);
    db.sim.tick();
    let long = format!("\"{}\"", "a".repeat(300));
    let mut entries = healthy_entries(&db, batch, &[&b1, &b2, &b3]);
    entries.push(entry(&db, &b1, &[("user_login", r#""sim channel""#)]));
    entries.push(entry(&db, &b2, &[("user_login", r#""s\u00efm_channel""#)]));
    entries.push(entry(&db, &b3, &[("user_login", long.as_str())]));
    serve(&db, &b1, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[], &[("login", 3)]);
    assert_run_row(&mut db, &doc, "ok", 300, 0);
    let logins_after: Vec<Option<String>> = [&b1, &b2, &b3]
        .iter()
        .map(|b| {
            db.client
                .query_one(
                    "SELECT login FROM twitch_sync.channels WHERE broadcaster_id = $1",
                    &[b],
                )
                .unwrap()
                .get(0)
        })
        .collect();
    assert_eq!(logins_after, logins_before, "bad logins are not stored");
    assert_applied(&mut db, batch, &[], "bad logins");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.channels WHERE login !~ '^[a-z0-9_]{1,25}$'"
        ),
        0
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn impossible_start_times_are_stored_as_null() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    let live = world_live(&db, batch);
    let offline: Vec<String> = batch
        .iter()
        .filter(|id| !live.contains_key(*id))
        .take(4)
        .cloned()
        .collect();
    let b5 = live.keys().next().unwrap().clone();
    let started_b5: String = db
        .client
        .query_one(
            "SELECT started_at::text FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&b5],
        )
        .unwrap()
        .get(0);
    db.sim.tick();
    let mut entries = healthy_entries(&db, batch, &[&b5]);
    for (k, (c, bad)) in offline
        .iter()
        .zip([
            r#""not-a-date""#,
            r#""2026-13-45T99:00:00Z""#,
            r#""infinity""#,
            r#""1970-01-01T00:00:00Z""#,
        ])
        .enumerate()
    {
        let id = format!("\"{}\"", 888_000_000 + k);
        entries.push(entry(&db, c, &[("id", id.as_str()), ("started_at", bad)]));
    }
    entries.push(entry(&db, &b5, &[("started_at", r#""infinity""#)]));
    serve(&db, &b5, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[], &[("started_at", 5)]);
    assert_run_row(&mut db, &doc, "ok", 300, 0);
    for (k, c) in offline.iter().enumerate() {
        let row = db
            .client
            .query_one(
                "SELECT stream_id, is_live, started_at::text, viewer_count FROM twitch_sync.streams
                  WHERE broadcaster_id = $1",
                &[c],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), (888_000_000 + k).to_string());
        assert!(row.get::<_, bool>(1), "the entry is kept: live");
        assert_eq!(row.get::<_, Option<String>>(2), None, "started_at is NULL");
        assert_eq!(row.get::<_, i32>(3), 17);
    }
    let after_b5: String = db
        .client
        .query_one(
            "SELECT started_at::text FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&b5],
        )
        .unwrap()
        .get(0);
    assert_eq!(after_b5, started_b5, "a stored start time is kept");
    let refs: Vec<&str> = offline.iter().map(String::as_str).collect();
    assert_applied(&mut db, batch, &refs, "bad started_at");
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.streams
              WHERE started_at < '2007-01-01' OR started_at > now() + interval '1 day'
                 OR started_at = 'infinity' OR started_at = '-infinity'"
        ),
        0
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn one_stream_id_for_broadcasters_in_two_batches_goes_to_the_first() {
    let (mut db, ids) = setup(300, 0.5);
    // one request at a time: batches are answered in order
    db.client
        .batch_execute("SET twitch_sync.max_concurrent_requests = 1")
        .unwrap();
    let (batch1, batch2) = (&ids[0..100], &ids[100..200]);
    let live1 = world_live(&db, batch1);
    let a = batch1
        .iter()
        .find(|id| !live1.contains_key(*id))
        .unwrap()
        .clone();
    let b = world_live(&db, batch2).into_keys().next().unwrap();
    db.sim.tick();
    let before_b = snapshot(&mut db, &b);
    let mut first = healthy_entries(&db, batch1, &[]);
    first.push(entry(&db, &a, &[("id", r#""4999000000001""#)]));
    let mut second = healthy_entries(&db, batch2, &[&b]);
    second.push(entry(&db, &b, &[("id", r#""4999000000001""#)]));
    serve(&db, &a, page(&first));
    serve(&db, &b, page(&second));

    let doc = db.run();
    assert_counters(&doc, &[("stream_id_conflict", 1)], &[]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 299, 1);
    assert_eq!(unchecked, vec![(b.clone(), "unknown".to_string())]);
    let owners: Vec<(String, bool)> = db
        .client
        .query(
            "SELECT broadcaster_id, is_live FROM twitch_sync.streams WHERE stream_id = '4999000000001'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(owners, vec![(a.clone(), true)], "the first claim wins");
    assert_eq!(
        snapshot(&mut db, &b),
        before_b,
        "the second claimant is left exactly as it was"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '4999000000001'"
        ),
        1
    );
    assert_applied(&mut db, &ids, &[&a, &b], "two claims");
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn an_ended_stream_id_listed_live_under_another_broadcaster_is_refused() {
    let (mut db, ids) = setup(300, 0.5);
    let live1 = world_live(&db, &ids[0..100]);
    let a = live1.keys().next().unwrap().clone();
    let s_a = live1[&a].0.clone();
    let b = world_live(&db, &ids[100..200]).into_keys().next().unwrap();
    // a's broadcast ends
    db.sim.world(|w| w.go_offline(&a));
    assert_eq!(db.run()["status"], "ok");
    let ended: bool = db
        .client
        .query_one(
            "SELECT NOT is_live AND ended_at IS NOT NULL FROM twitch_sync.streams WHERE stream_id = $1",
            &[&s_a],
        )
        .unwrap()
        .get(0);
    assert!(ended);
    let (before_a, before_b) = (snapshot(&mut db, &a), snapshot(&mut db, &b));
    let events_before = db.scalar_i64("SELECT count(*) FROM twitch_sync.events");
    db.sim.tick();
    let mut entries = healthy_entries(&db, &ids[100..200], &[&b]);
    let stolen = format!("\"{s_a}\"");
    entries.push(entry(
        &db,
        &b,
        &[("id", stolen.as_str()), ("title", r#""not yours""#)],
    ));
    serve(&db, &b, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[("stream_id_conflict", 1)], &[]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 299, 1);
    assert_eq!(unchecked, vec![(b.clone(), "unknown".to_string())]);
    assert_eq!(
        snapshot(&mut db, &a),
        before_a,
        "the owner's ended row is unchanged"
    );
    assert_eq!(
        snapshot(&mut db, &b),
        before_b,
        "the claimant is left as it was"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.events WHERE stream_id = '{s_a}' AND event_id > {events_before}"
        )),
        0,
        "no event for the refused listing"
    );
    assert_applied(&mut db, &ids, &[&b], "ended id reused");
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn a_6_kb_stream_id_is_dropped_without_an_oversized_notify() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    let live: Vec<String> = world_live(&db, batch).into_keys().collect();
    let (b, r) = (live[0].clone(), live[1].clone());
    let mut listener = db.connect();
    listener.batch_execute("LISTEN twitch_sync").unwrap();
    // a neighbour restarts: the run has events to send
    db.sim.world(|w| {
        w.tick();
        w.restart(&r);
    });
    let before_b = snapshot(&mut db, &b);
    let huge = format!("\"{}\"", "9".repeat(6 * 1024));
    let mut entries = healthy_entries(&db, batch, &[&b]);
    entries.push(entry(&db, &b, &[("id", huge.as_str())]));
    serve(&db, &b, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[("bad_stream_id", 1)], &[]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 299, 1);
    assert_eq!(unchecked, vec![(b.clone(), "unknown".to_string())]);
    assert_eq!(snapshot(&mut db, &b), before_b);
    assert!(doc["events"].as_i64().unwrap() >= 1, "{doc}");
    let mut payloads = Vec::new();
    {
        let mut notes = listener.notifications();
        let mut it = notes.timeout_iter(Duration::from_secs(1));
        while let Ok(Some(n)) = it.next() {
            payloads.push(n.payload().to_string());
        }
    }
    assert!(!payloads.is_empty(), "the restart was notified");
    for p in &payloads {
        assert!(
            p.len() < 100 && !p.contains("9999999999999999999999"),
            "NOTIFY payload: {p}"
        );
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.events
              WHERE octet_length(payload::text) > 2000 OR length(coalesce(stream_id, '')) > 20"
        ),
        0
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT (SELECT count(*) FROM twitch_sync.streams WHERE length(stream_id) > 20)
                  + (SELECT count(*) FROM twitch_sync.viewer_samples WHERE length(stream_id) > 20)"
        ),
        0,
        "no overlong stream id is stored"
    );
    assert_applied(&mut db, &ids, &[&b], "6 KB id");
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn an_unpaired_surrogate_costs_no_neighbour() {
    let (mut db, ids) = setup(300, 1.0);
    let batch = &ids[100..200];
    let b = batch[37].clone();
    db.sim.tick();
    let mut entries = healthy_entries(&db, batch, &[&b]);
    assert_eq!(entries.len(), 99);
    entries.insert(
        37,
        entry(
            &db,
            &b,
            &[
                ("title", r#""before \ud800 after""#),
                ("game_name", r#""\udfff""#),
            ],
        ),
    );
    serve(&db, &b, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[], &[("encoding", 2)]);
    assert_run_row(&mut db, &doc, "ok", 300, 0);
    assert_eq!(doc["live"], 300, "{doc}");
    // all 100 of the page, the repaired one included, carry the fresh counts
    assert_applied(&mut db, batch, &[], "surrogate");
    let row = db
        .client
        .query_one(
            "SELECT title, game_name FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&b],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "before \u{FFFD} after");
    assert_eq!(row.get::<_, String>(1), "\u{FFFD}");
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(DISTINCT broadcaster_id) FROM twitch_sync.viewer_samples
              WHERE sampled_at = (SELECT max(sampled_at) FROM twitch_sync.viewer_samples)
                AND broadcaster_id = ANY(ARRAY['{}'])",
            batch.join("','")
        )),
        100,
        "the whole page was sampled"
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn an_entry_or_an_answer_written_as_an_array_is_not_read_as_one() {
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    db.sim.tick();
    let live = world_live(&db, batch);
    let offline: Vec<String> = batch
        .iter()
        .filter(|id| !live.contains_key(*id))
        .cloned()
        .collect();
    let c = offline[0].clone();
    let before_c = snapshot(&mut db, &c);
    // The fields of an entry in their documented order, as an array: serde's
    // derived Deserialize would read it as stream 7000000099 of c, live.
    let mut entries = healthy_entries(&db, batch, &[]);
    entries.insert(
        3,
        format!(r#"["7000000099","{c}","arrayman","array title",null,null,"en",null,5]"#),
    );
    serve(&db, &c, page(&entries));

    let doc = db.run();
    assert_counters(&doc, &[("malformed", 1)], &[]);
    // an entry tied to nobody: every channel of the batch without a good entry is unknown
    let unchecked = assert_run_row(
        &mut db,
        &doc,
        "ok",
        300 - offline.len() as i64,
        offline.len() as i64,
    );
    assert_eq!(
        unchecked,
        offline
            .iter()
            .map(|id| (id.clone(), "unknown".to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '7000000099'"),
        0,
        "the array is not stored as a stream"
    );
    assert_eq!(snapshot(&mut db, &c), before_c, "c is left as it was");
    assert_applied(&mut db, &ids, &[], "array entry");

    // A whole answer as an array of its fields ([data, pagination]): not an
    // answer; the batch fails and its channels are left as they were.
    db.sim.clear_faults();
    db.sim.tick();
    let before: Vec<String> = batch.iter().map(|b| snapshot(&mut db, b)).collect();
    let entries = healthy_entries(&db, batch, &[]);
    serve(&db, &c, format!("[[{}], null]", entries.join(",")));
    let doc = db.run();
    assert_eq!(doc["status"], "partial", "{doc}");
    assert_eq!(doc["errors"], 100, "{doc}");
    assert_eq!(doc["failures"][0]["channels"], 100, "{doc}");
    assert_eq!(doc["total_streams"], 200, "{doc}");
    let after: Vec<String> = batch.iter().map(|b| snapshot(&mut db, b)).collect();
    assert!(
        before == after,
        "the failed batch's channels are left as they were"
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

/// The backend's peak resident memory so far (VmHWM), in KiB.
fn backend_peak_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

/// A page of Get Streams: `entries`, then `n` entries of distinct stream ids
/// from `first_id` on, all for `broadcaster` (about 44 bytes each), and a cursor
/// the simulator accepts.
fn flood_page(entries: &[String], broadcaster: &str, first_id: u64, n: u64, next: u64) -> String {
    let mut all = entries.to_vec();
    all.extend(
        (first_id..first_id + n).map(|i| format!(r#"{{"id":"{i}","user_id":"{broadcaster}"}}"#)),
    );
    let cursor: String = format!("{{\"o\":{next}}}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{{\"data\":[{}],\"pagination\":{{\"cursor\":\"{cursor}\"}}}}",
        all.join(",")
    )
}

#[test]
fn a_page_flooded_with_streams_for_one_channel_is_not_held_and_its_cursor_not_followed() {
    // One batch answered with a page of 85,000 distinct stream ids (3.7 MB,
    // under the 4 MiB cap), all for one asked live channel f (an id query
    // lists at most one live stream per broadcaster), plus one more channel of
    // the batch with a bad stream id (that channel is unknown), and a cursor
    // to more of the same. One page is the whole answer of an id query: the
    // cursor is not followed, and the page is reduced as it is read (holding
    // pages cost a backend about 250 MB per batch).
    const K: u64 = 85_000;
    let (mut db, ids) = setup(300, 0.5);
    let batch = &ids[100..200];
    db.sim.tick();
    let live = world_live(&db, batch);
    let f = live.keys().next().unwrap().clone();
    let offline: Vec<String> = batch
        .iter()
        .filter(|id| !live.contains_key(*id))
        .cloned()
        .collect();
    let mut named = vec![entry(&db, &offline[0], &[("id", r#""x""#)])];
    named.extend(healthy_entries(&db, batch, &[]));
    for p in 0..2u64 {
        let body = flood_page(&named, &f, 800_000_000_000 + p * K, K, p + 1);
        assert!(body.len() < 4 * 1024 * 1024, "{} bytes", body.len());
        db.sim
            .add_fault(Fault::new(FaultKind::Body { body }).for_user(&f).times(1));
    }
    let pid = db.backend_pid();
    let peak_before = backend_peak_kib(pid);
    let doc = db.run();
    let grew_mib = (backend_peak_kib(pid).saturating_sub(peak_before)) / 1024;
    println!("a page of {K} entries: backend peak memory grew by {grew_mib} MiB; {doc}");
    assert_eq!(doc["helix_requests"], 3, "one request per batch: {doc}");
    assert_eq!(db.sim.counters().pages, 0, "no cursor followed");
    assert_counters(&doc, &[("bad_stream_id", 1)], &[]);
    assert_eq!(doc["duplicate_entries"], 0, "{doc}");
    let unchecked = assert_run_row(&mut db, &doc, "ok", 300 - 1, 1);
    assert_eq!(
        unchecked.iter().map(|u| u.0.as_str()).collect::<Vec<_>>(),
        [offline[0].as_str()]
    );
    // f is stored with its real stream (listed with a start time, so it wins
    // over streams without one), everyone else as the world has them
    assert_applied(&mut db, &ids, &[], "flooded batch");
    assert!(
        grew_mib < 100,
        "a run's peak memory grew by {grew_mib} MiB: the page is held"
    );
    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

#[test]
fn a_stream_id_listed_under_a_broadcaster_other_than_its_owner_writes_nothing() {
    let (mut db, ids) = setup(300, 0.5);
    db.client
        .batch_execute("SET twitch_sync.max_concurrent_requests = 1")
        .unwrap();
    let batch = &ids[100..200];
    let live: Vec<String> = world_live(&db, batch).into_keys().collect();
    let (a, b) = (live[0].clone(), live[1].clone());
    let s_a = world_live(&db, batch)[&a].0.clone();
    let s_b = world_live(&db, batch)[&b].0.clone();
    let stolen = format!("\"{s_a}\"");
    let cross = format!(
        "SELECT (SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '{s_a}' AND broadcaster_id <> '{a}')
              + (SELECT count(*) FROM twitch_sync.viewer_samples WHERE stream_id = '{s_a}' AND broadcaster_id <> '{a}')"
    );
    let a_live = format!(
        "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{a}' AND is_live AND stream_id = '{s_a}'"
    );
    let b_live = format!(
        "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{b}' AND is_live AND stream_id = '{s_b}'"
    );

    // (1) same page, the owner listed first: the owner is applied, the impostor left as it was
    db.sim.tick();
    let before_b = snapshot(&mut db, &b);
    let mut entries = healthy_entries(&db, batch, &[&b]);
    entries.push(entry(
        &db,
        &b,
        &[("id", stolen.as_str()), ("viewer_count", "999999")],
    ));
    serve(&db, &b, page(&entries));
    let doc = db.run();
    assert_counters(&doc, &[("stream_id_conflict", 1)], &[]);
    let unchecked = assert_run_row(&mut db, &doc, "ok", 299, 1);
    assert_eq!(unchecked, vec![(b.clone(), "unknown".to_string())]);
    assert_eq!(
        snapshot(&mut db, &b),
        before_b,
        "owner first: impostor unchanged"
    );
    assert_applied(&mut db, &ids, &[&b], "owner first");
    assert_eq!(
        db.scalar_i64(&cross),
        0,
        "owner first: nothing under the impostor"
    );
    assert_eq!((db.scalar_i64(&a_live), db.scalar_i64(&b_live)), (1, 1));

    // (2) same page, the impostor listed first: neither is rewritten
    db.sim.clear_faults();
    db.sim.tick();
    let (before_a, before_b) = (snapshot(&mut db, &a), snapshot(&mut db, &b));
    let mut entries = vec![entry(
        &db,
        &b,
        &[("id", stolen.as_str()), ("viewer_count", "999999")],
    )];
    entries.extend(healthy_entries(&db, batch, &[&b]));
    serve(&db, &b, page(&entries));
    let doc = db.run();
    let unchecked = assert_run_row(&mut db, &doc, "ok", 298, 2);
    assert_counters(&doc, &[("stream_id_conflict", 2)], &[]);
    let mut want = vec![(a.clone(), "unknown".into()), (b.clone(), "unknown".into())];
    want.sort();
    assert_eq!(unchecked, want);
    assert_eq!(
        snapshot(&mut db, &a),
        before_a,
        "impostor first: owner's row not rewritten"
    );
    assert_eq!(
        snapshot(&mut db, &b),
        before_b,
        "impostor first: impostor unchanged"
    );
    assert_applied(&mut db, &ids, &[&a, &b], "impostor first");
    assert_eq!(
        db.scalar_i64(&cross),
        0,
        "impostor first: nothing under the impostor"
    );
    assert_eq!((db.scalar_i64(&a_live), db.scalar_i64(&b_live)), (1, 1));

    // (3) the impostor in an earlier batch than the owner (answered first)
    db.sim.clear_faults();
    db.sim.tick();
    let c = world_live(&db, &ids[0..100]).into_keys().next().unwrap();
    let (before_a, before_c) = (snapshot(&mut db, &a), snapshot(&mut db, &c));
    let mut entries = healthy_entries(&db, &ids[0..100], &[&c]);
    entries.push(entry(&db, &c, &[("id", stolen.as_str())]));
    serve(&db, &c, page(&entries));
    let doc = db.run();
    let unchecked = assert_run_row(&mut db, &doc, "ok", 298, 2);
    assert_counters(&doc, &[("stream_id_conflict", 2)], &[]);
    let mut want = vec![(a.clone(), "unknown".into()), (c.clone(), "unknown".into())];
    want.sort();
    assert_eq!(unchecked, want);
    assert_eq!(
        snapshot(&mut db, &a),
        before_a,
        "other batch: owner's row not rewritten"
    );
    assert_eq!(
        snapshot(&mut db, &c),
        before_c,
        "other batch: impostor unchanged"
    );
    assert_applied(&mut db, &ids, &[&a, &c], "other batch");
    assert_eq!(
        db.scalar_i64(&cross),
        0,
        "other batch: nothing under the impostor"
    );
    assert_eq!(db.scalar_i64(&a_live), 1);

    assert_recovers(&mut db);
    assert_no_panic_logged(&db);
}

/// pg_try_advisory_xact_lock is re-entrant within a transaction: run() checks
/// whether this backend already holds the run lock, so the second and third
/// calls are skipped instead of doing full passes.
#[test]
fn several_runs_in_one_transaction_do_one_pass() {
    let (mut db, _ids) = setup(200, 0.5);
    db.sim.reset_counters();
    let docs: Vec<Value> = db
        .client
        .query("SELECT twitch_sync.run() FROM generate_series(1, 3)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let statuses: Vec<&str> = docs.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ok", "skipped", "skipped"], "{docs:?}");
    assert!(docs[1]["skipped"] == true && docs[2]["skipped"] == true);
    assert_eq!(
        db.sim.counters().streams_requests,
        2,
        "one pass: 2 requests for 200 channels"
    );
    let recorded: Vec<String> = db
        .client
        .query(
            "SELECT status FROM twitch_sync.runs ORDER BY run_id DESC LIMIT 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut recorded = recorded;
    recorded.sort();
    assert_eq!(recorded, ["ok", "skipped", "skipped"]);
    assert_no_panic_logged(&db);
}

/// An error Postgres raises inside one of run()'s SPI calls (here a lock
/// timeout, as a long migration or VACUUM FULL would cause) must reach the
/// caller as itself: its SQLSTATE, its message, no Rust backtrace in DETAIL and
/// none in the server log, although the server runs with RUST_BACKTRACE=1
/// (pgrx attaches a backtrace to errors it catches; run() re-raises them plain).
#[test]
fn a_database_error_inside_run_keeps_its_sqlstate_and_shows_no_backtrace() {
    let (mut db, _ids) = setup(200, 0.5);
    // the server runs with RUST_BACKTRACE=1, or this test proves nothing
    let pid = std::fs::read_to_string(db.cluster().dir.join("data/postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ.split(|b| *b == 0).any(|v| v == b"RUST_BACKTRACE=1"),
        "the server's environment has RUST_BACKTRACE=1"
    );
    let samples = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples");
    let runs = db.scalar_i64("SELECT count(*) FROM twitch_sync.runs");
    db.sim.tick();
    // Another session holds a lock run() needs: reading channels (before any
    // HTTP), then writing its runs row (after HTTP and the writes).
    for (table, mode) in [("channels", "ACCESS EXCLUSIVE"), ("runs", "SHARE")] {
        let mut holder = db.connect();
        holder
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE twitch_sync.{table} IN {mode} MODE"
            ))
            .unwrap();
        db.client
            .batch_execute("SET lock_timeout = '300ms'")
            .unwrap();
        let err = db
            .client
            .query_one("SELECT twitch_sync.run()", &[])
            .unwrap_err();
        holder.batch_execute("ROLLBACK").unwrap();
        db.client.batch_execute("RESET lock_timeout").unwrap();
        let db_err = err.as_db_error().expect("an error from the server");
        let full = format!(
            "{} | {} | {} | {}",
            db_err.message(),
            db_err.detail().unwrap_or_default(),
            db_err.hint().unwrap_or_default(),
            db_err.where_().unwrap_or_default()
        );
        assert_eq!(sqlstate(&err), "55P03", "{table}: {}", error_text(&err));
        assert_no_rust_internals(&full);
        assert_eq!(
            (
                db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples"),
                db.scalar_i64("SELECT count(*) FROM twitch_sync.runs")
            ),
            (samples, runs),
            "{table}: the failed run wrote nothing"
        );
    }
    // the session is fine afterwards
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    db.assert_matches_world();
    assert_no_panic_logged(&db);
}
