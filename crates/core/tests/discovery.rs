//! Directory walks (discovery by category) of the sync engine against the
//! Helix simulator over loopback HTTP, without a database: requests per
//! category, the page allowance, cursor quirks, failures mid-walk, hostile
//! entries, and the id batches' precedence.

mod common;

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Fault, FaultKind, Simulator};
use std::time::Instant;
use twitch_sync_core::discovery::{DirectoryWalk, Reach, WalkEnd};
use twitch_sync_core::engine::DirectoryResult;
use twitch_sync_core::{sync_streaming, BatchResult, PassSummary, SyncInput};

const GAME: &str = "777";

/// A world of `channels` live streams, the first `in_game` of them in GAME.
fn start(channels: usize, in_game: usize) -> Simulator {
    let sim = Simulator::start(Config {
        world: WorldConfig {
            channels,
            live_fraction: 1.0,
            ..Default::default()
        },
        ..Config::default()
    })
    .unwrap();
    sim.world(|w| {
        let ids: Vec<String> = w.channels.iter().map(|c| c.id.clone()).collect();
        for (k, id) in ids.iter().enumerate() {
            if k < in_game {
                w.set_game(id, GAME, "Test Game");
            } else {
                w.set_game(id, "888", "Other");
            }
        }
    });
    sim
}

fn input(sim: &Simulator, ids: Vec<String>, walks: Vec<DirectoryWalk>) -> SyncInput {
    SyncInput {
        directories: walks,
        ..common::sim_input(sim, ids)
    }
}

fn walk(max_pages: u32) -> DirectoryWalk {
    DirectoryWalk {
        game_id: GAME.into(),
        language: None,
        max_pages,
        reach: Reach::Nothing,
    }
}

fn run(input: SyncInput) -> (PassSummary, Vec<DirectoryResult>, usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BatchResult>();
    let summary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sync_streaming(input, tx));
    let (mut dirs, mut batches) = (Vec::new(), 0);
    while let Ok(r) = rx.try_recv() {
        match r {
            BatchResult::Directory(d) => dirs.push(d),
            _ => batches += 1,
        }
    }
    (summary, dirs, batches)
}

#[test]
fn a_category_of_5000_live_streams_is_read_in_50_requests() {
    let sim = start(6000, 5000);
    let t = Instant::now();
    let (summary, dirs, batches) = run(input(&sim, Vec::new(), vec![walk(50)]));
    let elapsed = t.elapsed();
    assert_eq!(summary.fatal, None);
    assert_eq!(batches, 0);
    assert_eq!(dirs.len(), 1);
    let d = &dirs[0];
    assert_eq!(d.report.end, WalkEnd::Complete, "{:?}", d.report);
    assert_eq!(d.report.pages, 50);
    assert_eq!(d.live.len(), 5000);
    assert!(d.live.iter().all(|s| s.game_id == GAME));
    assert_eq!(summary.helix_requests, 50);
    let c = sim.counters();
    assert_eq!(c.streams_requests, 50);
    assert_eq!(c.directory_requests, 50);
    assert!(c.first_per_request.iter().all(|f| *f == Some(100)));
    println!(
        "5,000 live streams discovered in {} requests, {elapsed:?}",
        c.streams_requests
    );
}

#[test]
fn the_allowance_cuts_a_walk_short_and_a_language_filters_it() {
    let sim = start(800, 450);
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(2)]));
    assert_eq!(summary.helix_requests, 2);
    assert_eq!(dirs[0].report.end, WalkEnd::Truncated);
    assert_eq!(dirs[0].live.len(), 200);
    // The 200 most watched of the category.
    let counts: Vec<i32> = dirs[0].live.iter().map(|s| s.viewer_count).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
    // Its floor: the least watched stream it listed; none left out has more.
    let floor = *counts.last().unwrap();
    assert_eq!(dirs[0].report.floor_viewers, Some(floor as u32));
    let listed: std::collections::HashSet<&str> = dirs[0]
        .live
        .iter()
        .map(|s| s.broadcaster_id.as_str())
        .collect();
    sim.world(|w| {
        for c in &w.channels {
            let Some(s) = &c.live else { continue };
            if s.game_id == GAME && !listed.contains(c.id.as_str()) {
                assert!(
                    s.viewer_count <= floor as i64,
                    "{} > {floor}",
                    s.viewer_count
                );
            }
        }
    });

    let sim = start(300, 300);
    let german: Vec<String> = sim.world(|w| {
        let ids: Vec<String> = w.channels.iter().map(|c| c.id.clone()).collect();
        for (k, id) in ids.iter().enumerate() {
            w.set_language(id, if k % 3 == 0 { "de" } else { "en" });
        }
        ids.into_iter().step_by(3).collect()
    });
    let mut w = walk(10);
    w.language = Some("de".into());
    let (_, dirs, _) = run(input(&sim, Vec::new(), vec![w]));
    assert_eq!(dirs[0].report.end, WalkEnd::Complete);
    assert_eq!(dirs[0].report.pages, 1);
    assert_eq!(
        dirs[0].report.floor_viewers, None,
        "it saw the whole directory"
    );
    let mut got: Vec<String> = dirs[0]
        .live
        .iter()
        .map(|s| s.broadcaster_id.clone())
        .collect();
    got.sort();
    let mut want = german;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn channels_checked_by_id_are_left_to_their_batch() {
    let sim = start(300, 300);
    let ids: Vec<String> =
        sim.world(|w| w.channels.iter().take(100).map(|c| c.id.clone()).collect());
    let (summary, dirs, batches) = run(input(&sim, ids.clone(), vec![walk(10)]));
    assert_eq!(batches, 1);
    assert_eq!(summary.checked, 100);
    assert_eq!(dirs[0].report.in_batches, 100);
    assert_eq!(dirs[0].live.len(), 200);
    assert!(dirs[0]
        .live
        .iter()
        .all(|s| !ids.contains(&s.broadcaster_id)));
    assert_eq!(summary.helix_requests, 1 + 3);
}

#[test]
fn cursor_loops_and_empty_pages_stop_the_walk_and_failures_keep_what_was_read() {
    let sim = start(500, 500);
    sim.add_fault(
        Fault::new(FaultKind::CursorLoop)
            .for_game(GAME)
            .skip(1)
            .times(1),
    );
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(50)]));
    assert_eq!(
        dirs[0].report.end,
        WalkEnd::CursorLoop,
        "{:?}",
        dirs[0].report
    );
    assert_eq!(
        dirs[0].report.pages, 3,
        "page 2 points back to page 1, read again, its cursor seen"
    );
    assert!(summary.failures.is_empty());

    sim.clear_faults();
    sim.add_fault(
        Fault::new(FaultKind::EmptyPage)
            .for_game(GAME)
            .skip(2)
            .times(1),
    );
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(50)]));
    assert_eq!(dirs[0].report.end, WalkEnd::EmptyPage);
    assert_eq!((dirs[0].report.pages, dirs[0].live.len()), (3, 200));
    assert!(summary.failures.is_empty());

    // Twitch's cursor on the last page too (twitchdev/issues#2): it leads to
    // an empty page without one, and the walk is complete.
    sim.clear_faults();
    let sim = start(250, 250);
    sim.add_fault(Fault::new(FaultKind::SurpriseCursor).for_game(GAME));
    let (_, dirs, _) = run(input(&sim, Vec::new(), vec![walk(50)]));
    assert_eq!(
        dirs[0].report.end,
        WalkEnd::Complete,
        "{:?}",
        dirs[0].report
    );
    assert_eq!((dirs[0].report.pages, dirs[0].live.len()), (4, 250));
    let sim = start(500, 500);

    // A 503 that outlasts the retries on page 3: pages 1 and 2 are kept, the
    // walk ends, the pass goes on and says so.
    sim.clear_faults();
    sim.add_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .for_game(GAME)
            .skip(2)
            .times(10),
    );
    let ids: Vec<String> =
        sim.world(|w| w.channels.iter().skip(400).map(|c| c.id.clone()).collect());
    let (summary, dirs, batches) = run(input(&sim, ids, vec![walk(50)]));
    assert_eq!(dirs[0].report.end, WalkEnd::Failed);
    assert_eq!(dirs[0].report.pages, 2);
    assert_eq!(dirs[0].live.len() + dirs[0].report.in_batches as usize, 200);
    let error = dirs[0].report.error.clone().unwrap();
    assert!(
        error.contains("category 777 page 3") && error.contains("503"),
        "{error}"
    );
    assert_eq!(batches, 1, "the id batch went through");
    assert_eq!(summary.checked, 100);
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].channels, 0);
    assert_eq!(summary.retries, 3);
}

#[test]
fn hostile_directory_entries_are_dropped_and_counted() {
    let sim = start(10, 10);
    let body = serde_json::json!({"data": [
        {"id": "1001", "user_id": "501", "user_login": "good_one", "game_id": GAME, "language": "en",
         "viewer_count": 10, "title": "ok\u{0}with nul", "type": "live"},
        {"id": "1002", "user_id": "0502", "user_login": "x", "game_id": GAME},
        {"id": "abc", "user_id": "503", "game_id": GAME},
        {"id": "1004", "user_id": "504", "user_login": "Robert'); DROP TABLE--", "game_id": GAME,
         "viewer_count": -5},
        {"id": "1005", "user_id": "505", "game_id": "999"},
        {"id": "1001", "user_id": "506", "game_id": GAME},
        [1, 2, 3],
        {"id": "1007", "user_id": "507", "game_id": GAME, "title": "x".repeat(5000)}
    ], "pagination": {}})
    .to_string();
    sim.add_fault(Fault::new(FaultKind::Body { body }).for_game(GAME));
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(5)]));
    let d = &dirs[0];
    let got: Vec<(&str, Option<&str>)> = d
        .live
        .iter()
        .map(|s| (s.broadcaster_id.as_str(), s.login.as_deref()))
        .collect();
    assert_eq!(
        got,
        vec![("501", Some("good_one")), ("504", None), ("507", None)]
    );
    assert_eq!(d.live[0].title, "okwith nul");
    assert_eq!(d.live[1].viewer_count, 0);
    assert_eq!(d.live[2].title.chars().count(), 300);
    assert_eq!(d.report.off_filter, 1);
    let bad = summary.stats.bad;
    assert_eq!(bad.bad_broadcaster_id, 1);
    assert_eq!(bad.bad_stream_id, 1);
    assert_eq!(bad.malformed, 1);
    assert_eq!(bad.stream_id_conflict, 1);
    assert_eq!(summary.stats.cleaned.login, 1);
    assert_eq!(summary.stats.cleaned.viewer_count, 1);
    assert_eq!(summary.stats.cleaned.text, 2);
}

#[test]
fn a_directory_page_longer_than_asked_ends_the_walk_and_is_not_kept() {
    let sim = start(300, 300);
    // page 1 is the simulator's (100 of the category's 300); page 2 lists 5,000
    let entries: Vec<serde_json::Value> = (0..5000)
        .map(|i| serde_json::json!({"id": (900_000 + i).to_string(), "user_id": (700_000 + i).to_string(),
                                    "game_id": GAME, "viewer_count": 1}))
        .collect();
    let body = serde_json::json!({"data": entries, "pagination": {"cursor": "zzz"}}).to_string();
    sim.add_fault(Fault::new(FaultKind::Body { body }).for_game(GAME).skip(1));
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(5)]));
    let d = &dirs[0];
    assert_eq!(d.report.end, WalkEnd::Failed);
    assert_eq!(d.report.pages, 1, "the long page is not counted as read");
    assert_eq!(
        d.live.len(),
        100,
        "the first page is kept, nothing of the long one"
    );
    let error = d.report.error.as_deref().unwrap_or_default();
    assert!(error.contains("5000 entries"), "{error}");
    assert_eq!(summary.failures.len(), 1, "the walk's failure is reported");
}

/// For BENCHMARKS.md: a walk's pages are sequential (each needs the previous
/// page's cursor), so its time is its pages times a round trip.
/// `cargo test --release -p twitch_sync_core --test discovery -- --ignored --nocapture`
#[test]
#[ignore = "a measurement for BENCHMARKS.md"]
fn walk_time_with_50_ms_latency() {
    let sim = start(6000, 5000);
    sim.set_latency(std::time::Duration::from_millis(50));
    let t = Instant::now();
    let (summary, dirs, _) = run(input(&sim, Vec::new(), vec![walk(50)]));
    let elapsed = t.elapsed();
    assert_eq!(dirs[0].live.len(), 5000);
    println!(
        "5,000 live streams, 50 ms latency: {} Get Streams requests, {elapsed:?} (token included)",
        summary.helix_requests
    );
}
