//! Discovery by category (issue 15) through real runs against the simulator
//! and a real cluster: track_category / untrack_category, directory walks in
//! the right number of requests, the cap, the language filter, hostile
//! directory entries, a failing page, and (adaptive polling) directories
//! instead of id batches for live channels they list, without ending anything
//! on absence.

use std::time::{Duration, Instant};
use twitch_sync_e2e::{error_text, sqlstate, world, TestDb};

const GAME: &str = "777";

/// A database over a world of `channels` channels, all live; the first
/// `in_game` are in GAME, every third of them (k % 3 == 0) in German.
fn setup(channels: usize, in_game: usize) -> TestDb {
    let db = TestDb::new(world(channels, 1.0));
    db.sim.world(|w| {
        let ids: Vec<String> = w.channels.iter().map(|c| c.id.clone()).collect();
        for (k, id) in ids.iter().enumerate() {
            if k < in_game {
                w.set_game(id, GAME, "Test Game");
                w.set_language(id, if k % 3 == 0 { "de" } else { "en" });
            } else {
                w.set_game(id, "888", "Other Game");
            }
        }
    });
    db
}

fn discovered(db: &mut TestDb) -> i64 {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM twitch_sync.channels WHERE discovered_via = '{GAME}'"
    ))
}

#[test]
fn a_category_of_5000_live_streams_is_discovered_in_50_requests() {
    let mut db = setup(6000, 5000);
    let added: bool = db
        .client
        .query_one(
            "SELECT twitch_sync.track_category($1, NULL, 5000)",
            &[&GAME],
        )
        .unwrap()
        .get(0);
    assert!(added);
    db.sim.reset_counters();
    let t = Instant::now();
    let doc = db.run();
    let elapsed = t.elapsed();
    assert_eq!(doc["status"], "ok", "{doc}");
    let d = &doc["discovery"];
    assert_eq!(d["categories"], 1, "{d}");
    assert_eq!(d["pages"], 50, "{d}");
    assert_eq!(d["discovered"], 5000, "{d}");
    assert_eq!(d["walks"][0]["end"], "complete", "{d}");
    assert_eq!(doc["helix_requests"], 50, "{doc}");
    assert_eq!(db.sim.counters().streams_requests, 50);
    assert_eq!(db.sim.counters().directory_requests, 50);
    assert_eq!(
        doc["started"], 5000,
        "their live streams went through the transition layer"
    );
    assert_eq!(doc["events"], 5000, "one online event each");
    println!(
        "discovery: 5,000 live streams of one category tracked in {} requests, run() took {elapsed:?} ({} ms in run)",
        db.sim.counters().streams_requests,
        doc["duration_ms"]
    );
    assert_eq!(discovered(&mut db), 5000);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live AND game_id = '777'"),
        5000
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.channels WHERE discovered_at IS NULL OR login IS NULL"),
        0,
        "discovered channels carry when, and their login"
    );
    let row = db
        .client
        .query_one(
            "SELECT last_pages, last_streams, last_end, discovered, last_error IS NULL
               FROM twitch_sync.tracked_categories WHERE game_id = $1",
            &[&GAME],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<i32>>(0), Some(50));
    assert_eq!(row.get::<_, Option<i32>>(1), Some(5000));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("complete"));
    assert_eq!(row.get::<_, i32>(3), 5000);
    assert!(row.get::<_, bool>(4));

    // Fixed polling: the cap is reached, so the next run only checks by id
    // (50 batches of 100), and the data matches the world for those channels.
    db.sim.reset_counters();
    db.sim.tick();
    let next = db.run();
    assert_eq!(next["status"], "ok", "{next}");
    assert_eq!(next["discovery"]["skipped"], 1, "{next}");
    assert_eq!(next["discovery"]["pages"], 0, "{next}");
    assert_eq!(next["helix_requests"], 50, "{next}");
    assert_eq!(next["total_streams"], 5000, "{next}");
}

#[test]
fn the_cap_and_the_language_filter_bound_what_is_added() {
    let mut db = setup(600, 600);
    // 200 German streams; a cap of 50 reads one page (the 100 most watched
    // German streams) and adds the first 50 of it.
    db.client
        .execute("SELECT twitch_sync.track_category($1, 'DE', 50)", &[&GAME])
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.tracked_categories WHERE language = 'de'"),
        1,
        "languages are stored lowercase"
    );
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    let d = &doc["discovery"];
    assert_eq!(
        (d["pages"].as_i64(), d["discovered"].as_i64()),
        (Some(1), Some(50)),
        "{d}"
    );
    assert_eq!(d["capped"], 50, "{d}");
    assert_eq!(d["walks"][0]["end"], "truncated", "{d}");
    assert_eq!(discovered(&mut db), 50);
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.channels c JOIN twitch_sync.streams s USING (broadcaster_id)
              WHERE c.discovered_via = '777' AND s.is_live AND s.language = 'de'"
        ),
        50
    );
    // The most watched first: every German stream left out has no more viewers
    // than the least watched one added.
    let (least_added, most_left): (i32, i32) = {
        let added: Vec<String> = db
            .client
            .query("SELECT broadcaster_id FROM twitch_sync.channels", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        db.sim.world(|w| {
            let mut least = i32::MAX;
            let mut most = 0;
            for c in &w.channels {
                let Some(s) = &c.live else { continue };
                if s.game_id != GAME || s.language != "de" {
                    continue;
                }
                if added.contains(&c.id) {
                    least = least.min(s.viewer_count as i32);
                } else {
                    most = most.max(s.viewer_count as i32);
                }
            }
            (least, most)
        })
    };
    assert!(least_added >= most_left, "{least_added} < {most_left}");

    // Cap reached: fixed polling leaves the directory alone.
    let doc = db.run();
    assert_eq!(doc["discovery"]["skipped"], 1, "{doc}");
    assert_eq!(doc["helix_requests"], 1, "{doc}");

    // track() adopts a discovered channel: it no longer counts against the cap,
    // so the next run adds one more.
    let adopted: String = db
        .client
        .query_one("SELECT min(broadcaster_id) FROM twitch_sync.channels", &[])
        .unwrap()
        .get(0);
    db.client
        .execute("SELECT twitch_sync.track($1)", &[&adopted])
        .unwrap();
    assert_eq!(discovered(&mut db), 49);
    let doc = db.run();
    assert_eq!(doc["discovery"]["discovered"], 1, "{doc}");
    assert_eq!(discovered(&mut db), 50);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.channels"),
        51
    );
    assert_eq!(
        db.scalar_i64("SELECT discovered::int8 FROM twitch_sync.tracked_categories"),
        51,
        "discovered counts every channel the category added"
    );

    // A disabled discovered channel stays disabled: discovery never touches an existing row.
    db.client
        .batch_execute(
            "UPDATE twitch_sync.channels SET enabled = false
              WHERE broadcaster_id = (SELECT max(broadcaster_id) FROM twitch_sync.channels WHERE discovered_via = '777')",
        )
        .unwrap();
    db.run();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.channels WHERE NOT enabled"),
        1
    );

    // Raising the cap makes room; calling track_category again replaces filter and cap.
    let again: bool = db
        .client
        .query_one("SELECT twitch_sync.track_category($1, 'de', 120)", &[&GAME])
        .unwrap()
        .get(0);
    assert!(!again, "already tracked");
    let doc = db.run();
    assert_eq!(doc["discovery"]["pages"], 2, "{doc}");
    assert_eq!(discovered(&mut db), 120);
}

#[test]
fn track_and_untrack_category_check_their_arguments_and_privileges() {
    let mut db = setup(300, 300);
    for (call, needle) in [
        ("SELECT twitch_sync.track_category('abc')", "game id"),
        ("SELECT twitch_sync.track_category(NULL)", "game id"),
        ("SELECT twitch_sync.track_category(' 777')", "game id"),
        // Twitch's ids have no leading zero: '0777' would never match a listing's '777'
        ("SELECT twitch_sync.track_category('0777')", "game id"),
        ("SELECT twitch_sync.untrack_category('0777')", "game id"),
        (
            "SELECT twitch_sync.track_category('777', 'english')",
            "language",
        ),
        ("SELECT twitch_sync.track_category('777', '')", "language"),
        // the shape of a code, but no ISO 639-1 language (a typo walked nothing)
        ("SELECT twitch_sync.track_category('777', 'xx')", "language"),
        (
            "SELECT twitch_sync.track_category('777', 'qq-hk')",
            "language",
        ),
        (
            "SELECT twitch_sync.track_category('777', NULL, 0)",
            "max_channels",
        ),
        (
            "SELECT twitch_sync.track_category('777', NULL, 100001)",
            "max_channels",
        ),
        (
            "SELECT twitch_sync.track_category('777', 'en', NULL)",
            "max_channels",
        ),
        ("SELECT twitch_sync.untrack_category('7a')", "game id"),
        (
            "SELECT twitch_sync.untrack_category('777', NULL)",
            "untrack_channels",
        ),
    ] {
        let err = db.client.query_one(call, &[]).expect_err(call);
        assert_eq!(sqlstate(&err), "22023", "{call}: {}", error_text(&err));
        let text = error_text(&err);
        assert!(text.contains(needle), "{call}: {text}");
        assert!(
            text.contains("Pass") || text.contains("such as"),
            "the hint says what to pass: {text}"
        );
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.tracked_categories"),
        0
    );
    // Twitch's stream languages: ISO 639-1 codes, region forms, ASL, other.
    for (language, stored) in [
        ("EN", "en"),
        ("zh-HK", "zh-hk"),
        ("ASL", "asl"),
        ("other", "other"),
    ] {
        db.client
            .execute("SELECT twitch_sync.track_category('777', $1)", &[&language])
            .unwrap_or_else(|e| panic!("{language}: {}", error_text(&e)));
        assert_eq!(
            db.client
                .query_one("SELECT language FROM twitch_sync.tracked_categories", &[])
                .unwrap()
                .get::<_, String>(0),
            stored
        );
    }
    db.client
        .execute("SELECT twitch_sync.untrack_category('777')", &[])
        .unwrap();
    // Direct inserts are checked too.
    let err = db
        .client
        .execute(
            "INSERT INTO twitch_sync.tracked_categories (game_id) VALUES ('x')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23514");

    // Superuser or owner only, like track().
    let role = format!("disc_user_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA twitch_sync TO {role};"
        ))
        .unwrap();
    let mut user = db.cluster().connect_as(&db.name, &role);
    for call in [
        "SELECT twitch_sync.track_category('777')",
        "SELECT twitch_sync.untrack_category('777')",
        "SELECT twitch_sync.discover_channels('777', '{}', '{}', 0, 0, 'complete', NULL, NULL)",
        "SELECT * FROM twitch_sync.tracked_categories",
    ] {
        let err = user.query_one(call, &[]).expect_err(call);
        assert_eq!(sqlstate(&err), "42501", "{call}");
    }
    drop(user);
    db.client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .unwrap();
}

#[test]
fn untrack_category_keeps_or_untracks_what_it_discovered() {
    let mut db = setup(400, 300);
    let mine = db.track_first(1); // tracked by hand, and in the category
    db.client
        .execute("SELECT twitch_sync.track_category($1)", &[&GAME])
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["discovery"]["discovered"], 299, "{doc}");
    assert_eq!(doc["discovery"]["walks"][0]["in_batches"], 1, "{doc}");
    assert_eq!(discovered(&mut db), 299);

    // Untracking the category keeps its channels ...
    let was: bool = db
        .client
        .query_one("SELECT twitch_sync.untrack_category($1)", &[&GAME])
        .unwrap()
        .get(0);
    assert!(was);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.channels"),
        300
    );
    let doc = db.run();
    assert!(doc.get("discovery").is_none(), "no category tracked: {doc}");
    assert_eq!(doc["total_streams"], 300, "{doc}");
    let again: bool = db
        .client
        .query_one("SELECT twitch_sync.untrack_category($1)", &[&GAME])
        .unwrap()
        .get(0);
    assert!(!again, "not tracked any more");

    // ... or untracks them, ending their live streams with offline events,
    // and leaves the channel tracked by hand alone.
    let events_before =
        db.scalar_i64("SELECT count(*) FROM twitch_sync.events WHERE event = 'offline'");
    db.client
        .execute("SELECT twitch_sync.untrack_category($1, true)", &[&GAME])
        .unwrap();
    let rows: Vec<String> = db
        .client
        .query("SELECT broadcaster_id FROM twitch_sync.channels", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, mine);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        1,
        "the discovered channels' streams were ended"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.events WHERE event = 'offline'")
            - events_before,
        299
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE NOT is_live"),
        299,
        "their history stays"
    );
}

#[test]
fn hostile_directory_entries_are_dropped_and_counted() {
    let mut db = setup(50, 50);
    let body = serde_json::json!({"data": [
        {"id": "91001", "user_id": "900001", "user_login": "Good_One", "game_id": GAME, "language": "en",
         "viewer_count": 10, "title": "ok\u{0}with nul", "type": "live",
         "started_at": "2026-01-01T00:00:00Z"},
        {"id": "91002", "user_id": "0900002", "user_login": "x", "game_id": GAME},
        {"id": "abc", "user_id": "900003", "game_id": GAME},
        {"id": "91004", "user_id": "900004", "user_login": "Robert'); DROP TABLE--", "game_id": GAME,
         "viewer_count": -5, "title": "x".repeat(5000)},
        {"id": "91005", "user_id": "900005", "game_id": "999"},
        {"id": "91001", "user_id": "900006", "game_id": GAME},
        {"id": "91007", "user_id": "900007", "game_id": GAME, "language": "en\u{0}\u{0}"},
        [1, 2, 3],
        {"id": "91008", "user_id": 900008, "game_id": GAME, "user_login": "a".repeat(26)}
    ], "pagination": {}})
    .to_string();
    db.sim
        .add_fault(helix_sim::Fault::new(helix_sim::FaultKind::Body { body }).for_game(GAME));
    db.client
        .execute("SELECT twitch_sync.track_category($1)", &[&GAME])
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    let bad = &doc["bad_entries"];
    assert_eq!(bad["bad_broadcaster_id"], 1, "{doc}");
    assert_eq!(bad["bad_stream_id"], 1, "{doc}");
    assert_eq!(bad["malformed"], 1, "{doc}");
    assert_eq!(bad["stream_id_conflict"], 1, "{doc}");
    assert_eq!(doc["cleaned"]["login"], 2, "{doc}");
    assert_eq!(doc["cleaned"]["viewer_count"], 1, "{doc}");
    assert_eq!(doc["cleaned"]["text"], 3, "{doc}");
    assert_eq!(doc["discovery"]["walks"][0]["off_filter"], 1, "{doc}");
    let rows: Vec<(String, Option<String>)> = db
        .client
        .query(
            "SELECT broadcaster_id, login FROM twitch_sync.channels ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("900001".into(), Some("good_one".into())),
            ("900004".into(), None),
            ("900007".into(), None),
            ("900008".into(), None),
        ]
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.streams
              WHERE (broadcaster_id = '900001' AND title = 'okwith nul')
                 OR (broadcaster_id = '900004' AND length(title) = 300 AND viewer_count = 0)
                 OR (broadcaster_id = '900007' AND language = 'en')"
        ),
        3
    );
}

#[test]
fn a_failing_page_ends_its_walk_not_the_run() {
    let mut db = setup(500, 400);
    let tracked = db.track_first(500)[400..].to_vec(); // the 100 outside the category
    assert_eq!(tracked.len(), 100);
    db.client
        .execute(
            "DELETE FROM twitch_sync.channels WHERE broadcaster_id <> ALL ($1)",
            &[&tracked],
        )
        .unwrap();
    db.client
        .execute("SELECT twitch_sync.track_category($1)", &[&GAME])
        .unwrap();
    // Page 3 answers 503 past every retry.
    db.sim.add_fault(
        helix_sim::Fault::new(helix_sim::FaultKind::Status { status: 503 })
            .for_game(GAME)
            .skip(2)
            .times(10),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "partial", "{doc}");
    assert_eq!(
        doc["total_streams"], 100,
        "the id batch went through: {doc}"
    );
    assert_eq!(doc["errors"], 0, "no channel failed: {doc}");
    let walk = &doc["discovery"]["walks"][0];
    assert_eq!(walk["end"], "failed", "{doc}");
    assert_eq!(walk["pages"], 2, "{doc}");
    assert_eq!(walk["discovered"], 200, "the pages read are kept: {doc}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("category 777 page 3"),
        "{doc}"
    );
    let run_id = doc["run_id"].as_i64().unwrap();
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.runs WHERE run_id = {run_id} AND status = 'partial'"
        )),
        1,
        "the run left its row"
    );
    let row = db
        .client
        .query_one(
            "SELECT last_end, last_error FROM twitch_sync.tracked_categories",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, String>(1).contains("503"));

    // Cursor loops and empty pages stop a walk, counted, and the run is ok.
    db.sim.clear_faults();
    db.sim.add_fault(
        helix_sim::Fault::new(helix_sim::FaultKind::CursorLoop)
            .for_game(GAME)
            .skip(1)
            .times(1),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["discovery"]["walks"][0]["end"], "cursor_loop", "{doc}");
    db.sim.add_fault(
        helix_sim::Fault::new(helix_sim::FaultKind::EmptyPage)
            .for_game(GAME)
            .times(1),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["discovery"]["walks"][0]["end"], "empty_page", "{doc}");
    // And the next clean walk finishes the job.
    let doc = db.run();
    assert_eq!(doc["discovery"]["walks"][0]["end"], "complete", "{doc}");
    assert_eq!(discovered(&mut db), 400);

    // Only directories tracked, and the first page fails: the run fails, with its row.
    db.client
        .batch_execute("DELETE FROM twitch_sync.channels")
        .unwrap();
    db.sim.add_fault(
        helix_sim::Fault::new(helix_sim::FaultKind::Status { status: 500 }).for_game(GAME),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert!(doc["run_id"].as_i64().unwrap() > run_id);
}

/// Adaptive polling on, live channels due every 2 s, offline ones hourly.
fn adaptive_every_2s(db: &mut TestDb) {
    db.client
        .batch_execute(
            "SET twitch_sync.adaptive_polling = on;
             SET twitch_sync.poll_hot_interval_secs = 2;
             SET twitch_sync.poll_live_interval_secs = 2;
             SET twitch_sync.poll_offline_interval_secs = 3600;",
        )
        .unwrap();
}

#[test]
fn adaptive_polling_uses_directory_pages_instead_of_id_batches_and_ends_on_id_checks_only() {
    let mut db = setup(400, 300);
    db.track_first(400);
    adaptive_every_2s(&mut db);
    db.client
        .execute("SELECT twitch_sync.track_category($1)", &[&GAME])
        .unwrap();
    // First run: nothing is known, so every channel is checked by id (4
    // batches), and the directory (3 pages) lists only channels checked by id.
    let first = db.run();
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["discovery"]["pages"], 3, "{first}");
    assert_eq!(first["discovery"]["walks"][0]["in_batches"], 300, "{first}");
    assert_eq!(
        db.scalar_i64("SELECT last_streams::int8 FROM twitch_sync.tracked_categories"),
        300,
        "the walk listed 300 live streams, though all were checked by id too"
    );
    assert_eq!(first["helix_requests"], 4 + 3, "{first}");

    // Once due again, the 300 live in the category are left to the walk: it
    // refreshes them (counts included) and only the other 100 go by id.
    std::thread::sleep(Duration::from_millis(2100));
    db.sim.tick();
    let second = db.run();
    assert_eq!(second["status"], "ok", "{second}");
    assert_eq!(second["discovery"]["covered"], 300, "{second}");
    assert_eq!(second["discovery"]["refreshed"], 300, "{second}");
    assert_eq!(second["polling"]["chosen"], 100, "{second}");
    assert_eq!(second["helix_requests"], 1 + 3, "{second}");
    db.assert_matches_world();

    // A stream in the category ends, another switches category: neither is
    // listed, and absence ends nothing ...
    let (gone, moved) = db.sim.world(|w| {
        let in_game: Vec<String> = w
            .channels
            .iter()
            .filter(|c| c.live.as_ref().is_some_and(|s| s.game_id == GAME))
            .map(|c| c.id.clone())
            .collect();
        let (gone, moved) = (in_game[0].clone(), in_game[1].clone());
        w.go_offline(&gone);
        w.set_game(&moved, "888", "Other Game");
        (gone, moved)
    });
    std::thread::sleep(Duration::from_millis(2100));
    let third = db.run();
    assert_eq!(third["ended"], 0, "{third}");
    assert_eq!(third["discovery"]["refreshed"], 298, "{third}");
    let live_now = |db: &mut TestDb, id: &str| {
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{id}' AND is_live"
        ))
    };
    assert_eq!(live_now(&mut db, &gone), 1, "not listed is not offline");
    // ... until their last check is older than their interval plus half a run
    // period: then they are checked by id, which ends the one that ended and
    // sees the other in its new category. With two misses needed, a stream
    // that missed one is checked by id at its interval again: a walk that
    // does not list it cannot confirm the end, so it is no longer left to one.
    db.client
        .batch_execute("SET twitch_sync.offline_after_misses = 2")
        .unwrap();
    let (mut missed_in, mut ended_in) = (None, None);
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(2100));
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
        let missed = db.scalar_i64(&format!(
            "SELECT coalesce(max(missed_polls), 0)::int8 FROM twitch_sync.streams
              WHERE broadcaster_id = '{gone}' AND is_live"
        ));
        if missed == 1 && missed_in.is_none() {
            missed_in = Some(i);
        }
        if live_now(&mut db, &gone) == 0 {
            ended_in = Some(i);
            break;
        }
    }
    let missed_in = missed_in.expect("an id check missed the stream that ended");
    assert_eq!(
        ended_in,
        Some(missed_in + 1),
        "the run after the first miss checked it by id and ended it"
    );
    assert_eq!(live_now(&mut db, &moved), 1);
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = '{moved}' AND is_live AND game_id = '888'"
        )),
        1
    );
    db.assert_matches_world();

    // The budget: directories get at most half of it, ids the rest. Runs
    // about 2 s apart may spend 20% of what 800 points a minute refill in
    // that time: 5 to 10 requests.
    db.client
        .batch_execute("SET twitch_sync.poll_budget_share = 0.2")
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let tight = db.run();
    let period = tight["polling"]["period_secs"].as_f64().unwrap();
    let budget = (800.0 * 0.2 * (period / 60.0)).floor() as i64;
    assert!(period >= 2.1 && (5..=10).contains(&budget), "{tight}");
    assert_eq!(tight["polling"]["budget_requests"], budget, "{tight}");
    let pages = tight["discovery"]["pages_planned"].as_i64().unwrap();
    assert!(pages >= 1 && pages <= budget / 2, "{tight}");
    assert!(
        tight["helix_requests"].as_i64().unwrap() <= budget,
        "{tight}"
    );

    // More categories than pages: each run walks the ones walked longest ago
    // first, so every category gets its turn (the first ones in game_id
    // order took the pages every run, and the others were never walked).
    for g in [
        "9000001", "9000002", "9000003", "9000004", "9000005", "9000006",
    ] {
        db.client
            .execute("SELECT twitch_sync.track_category($1)", &[&g])
            .unwrap();
    }
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(2100));
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
        assert!(
            doc["discovery"]["skipped"].as_i64().unwrap() > 0,
            "pages are short: {doc}"
        );
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.tracked_categories WHERE last_paged_at IS NULL"
        ),
        0,
        "every category was walked within three runs"
    );
}

#[test]
fn adaptive_polling_checks_by_id_a_live_channel_ranked_below_a_truncated_walk() {
    // 300 live streams in the category and a cap of 100: every walk reads one
    // page (the 100 most watched) and ends truncated.
    let mut db = setup(400, 300);
    db.track_first(400);
    // A tracked channel live in the category with no viewers: ranked far below
    // the walk's page, so no walk ever lists it.
    let low: String = db.sim.world(|w| {
        let id = w
            .channels
            .iter()
            .find(|c| c.live.as_ref().is_some_and(|s| s.game_id == GAME))
            .map(|c| c.id.clone())
            .unwrap();
        w.set_viewers(&id, 0);
        id
    });
    adaptive_every_2s(&mut db);
    db.client
        .execute("SELECT twitch_sync.track_category($1, NULL, 100)", &[&GAME])
        .unwrap();
    let first = db.run();
    assert_eq!(first["status"], "ok", "{first}");
    let walk = &first["discovery"]["walks"][0];
    assert_eq!(walk["end"], "truncated", "{first}");
    assert_eq!(walk["pages"], 1, "{first}");
    let floor = walk["floor_viewers"]
        .as_i64()
        .expect("a truncated walk has a floor");
    assert!(floor > 0, "{first}");
    let row = db
        .client
        .query_one(
            "SELECT last_end, last_floor_viewers FROM twitch_sync.tracked_categories",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "truncated");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(floor as i32));
    // The channels the next walk reaches: live in the category above the floor
    // (one tied with it may rank past the page).
    let reached = db.scalar_i64(&format!(
        "SELECT count(*) FROM twitch_sync.streams
          WHERE is_live AND game_id = '{GAME}' AND viewer_count > {floor}"
    ));
    assert!((50..300).contains(&reached), "{reached}");

    let checked_at = |db: &mut TestDb| -> f64 {
        db.client
            .query_one(
                "SELECT extract(epoch FROM checked_at)::float8 FROM twitch_sync.channels
                  WHERE broadcaster_id = $1",
                &[&low],
            )
            .unwrap()
            .get(0)
    };
    // Every run (each at its 2-second interval): the channel below the floor
    // is checked by id, never left to a walk that cannot list it; those the
    // walk reaches are left to it.
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(2100));
        db.sim.tick();
        db.sim.world(|w| w.set_viewers(&low, 0));
        let before = checked_at(&mut db);
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
        let covered = doc["discovery"]["covered"].as_i64().unwrap();
        if i == 0 {
            assert_eq!(covered, reached, "{doc}");
        }
        assert!(covered > 0 && covered < 300, "{doc}");
        assert!(doc["discovery"]["refreshed"].as_i64().unwrap() > 0, "{doc}");
        assert!(
            checked_at(&mut db) > before,
            "run {i}: the channel below the walk's floor was checked by id: {doc}"
        );
    }
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.streams
              WHERE broadcaster_id = '{low}' AND is_live AND viewer_count = 0"
        )),
        1
    );
    // Another language: what the last walk reached says nothing of the new
    // filter's directory, so it is forgotten (the cap alone keeps it).
    let last = "SELECT count(*) FROM twitch_sync.tracked_categories
                 WHERE last_end IS NOT NULL OR last_pages IS NOT NULL OR last_floor_viewers IS NOT NULL";
    db.client
        .execute("SELECT twitch_sync.track_category($1, NULL, 200)", &[&GAME])
        .unwrap();
    assert_eq!(db.scalar_i64(last), 1, "same language: kept");
    db.client
        .execute("SELECT twitch_sync.track_category($1, 'de', 200)", &[&GAME])
        .unwrap();
    assert_eq!(db.scalar_i64(last), 0, "another language: forgotten");
}
