//! The sync engine against the Helix simulator over loopback HTTP, without a
//! database: request counts, the rate limit, tokens, failures.

mod common;

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Endpoint, Fault, FaultKind, Simulator};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use twitch_sync_core::{
    sync_streaming, BatchBuffer, BatchResult, LiveSet, PassSummary, RunStatus, SyncInput,
};

fn start(channels: usize, live_fraction: f64, cfg: Config) -> Simulator {
    Simulator::start(Config {
        world: WorldConfig {
            channels,
            live_fraction,
            ..Default::default()
        },
        ..cfg
    })
    .unwrap()
}

fn input(sim: &Simulator, n: usize) -> SyncInput {
    common::sim_input(
        sim,
        sim.world(|w| w.channels.iter().take(n).map(|c| c.id.clone()).collect()),
    )
}

/// One pass, every batch result collected as the extension does.
struct Out {
    summary: PassSummary,
    buffer: BatchBuffer,
    /// Batch results received, failed ones included.
    results: usize,
}

fn run(input: SyncInput) -> Out {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BatchResult>();
    let summary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(sync_streaming(input, tx));
    let mut buffer = BatchBuffer::default();
    let mut results = 0;
    while let Ok(r) = rx.try_recv() {
        results += 1;
        buffer.absorb(r);
    }
    Out {
        summary,
        buffer,
        results,
    }
}

#[test]
fn checks_every_channel_in_ceil_n_over_100_requests() {
    let sim = start(1000, 0.3, Config::default());
    let out = run(input(&sim, 1000));
    assert_eq!(out.summary.fatal, None);
    assert_eq!(out.results, 10);
    assert_eq!(out.buffer.checked.len(), 1000);
    assert_eq!(out.buffer.live.len(), 300);
    assert_eq!(out.buffer.unknown, Vec::<String>::new());
    assert_eq!(
        (out.summary.checked, out.summary.live, out.summary.unknown),
        (1000, 300, 0)
    );
    assert_eq!(out.summary.stats, Default::default());
    assert_eq!(out.summary.status(), RunStatus::Ok);
    assert_eq!(out.summary.helix_requests, 10);
    assert_eq!(sim.counters().streams_requests, 10);
    assert!(out.summary.token_changed);
}

#[test]
fn a_small_bucket_is_used_at_its_refill_rate_without_a_429() {
    // 5 points refilling in 2 s (2.5 a second): 12 requests need 7 points of refill,
    // about 2.8 s at best.
    let sim = start(
        1200,
        0.1,
        Config {
            bucket_limit: 5,
            bucket_period: Duration::from_secs(2),
            ..Config::default()
        },
    );
    let t = Instant::now();
    let out = run(input(&sim, 1200)).summary;
    let took = t.elapsed();
    assert_eq!(out.failures, vec![]);
    assert_eq!(out.helix_requests, 12);
    assert_eq!(sim.counters().rate_limited, 0);
    println!("12 requests through a 5-point, 2 s bucket: {took:?} (floor 2.8 s)");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_reused_token_and_rate_limit_state_save_requests() {
    let sim = start(300, 0.3, Config::default());
    let first = run(input(&sim, 300)).summary;
    let mut next = input(&sim, 300);
    next.token = first.token.clone();
    next.rate_limit = first.rate_limit.map(|s| (s, std::time::SystemTime::now()));
    let second = run(next).summary;
    assert!(!second.token_changed);
    assert_eq!(sim.counters().tokens_issued, 1);
    assert_eq!(second.helix_requests, 3);
}

/// An answer labelled with a content coding (gzip, say), though the request
/// asked for identity, fails its batch with an error that names the coding
/// (it read as JSON that cannot be parsed at line 1), and the other batches
/// are checked.
#[test]
fn an_answer_in_a_coding_not_asked_for_is_named_as_such() {
    let sim = start(200, 0.3, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    sim.add_fault(
        Fault::new(FaultKind::ContentEncoding {
            coding: "gzip".into(),
        })
        .for_user(&ids[150]),
    );
    let out = run(input(&sim, 200)).summary;
    assert_eq!(out.status(), RunStatus::Partial, "{:?}", out.first_error());
    assert_eq!(out.checked, 100);
    let error = out.first_error().unwrap();
    assert!(
        error.contains("gzip-coded") && error.contains("Content-Encoding"),
        "{error}"
    );
}

/// A 401 mints a new token once per pass, and if the token endpoint fails,
/// that failure is every batch's: it is not asked again by each batch (20
/// mints for 2,000 channels before). The batches fail with its error, and
/// the next pass tries again.
#[test]
fn a_failed_renewal_after_a_401_is_asked_once_per_pass() {
    let sim = start(2000, 0.3, Config::default());
    let first = run(input(&sim, 2000)).summary;
    assert_eq!(first.fatal, None);
    sim.expire_tokens();
    sim.add_fault(Fault::new(FaultKind::Status { status: 503 }).on(Endpoint::Token));
    sim.reset_counters();
    let mut next = input(&sim, 2000);
    next.token = first.token.clone();
    let out = run(next).summary;
    let c = sim.counters();
    // (a faulted answer counts as a fault, not as a token request)
    assert_eq!(c.faults_applied, 1, "one mint for the pass, refused");
    assert_eq!(c.streams_requests, 20, "each batch asked once, got a 401");
    assert_eq!(out.status(), RunStatus::Failed);
    assert_eq!(out.failures.len(), 20);
    assert!(
        out.failures
            .iter()
            .all(|f| f.error.contains("token") && f.error.contains("503")),
        "{:?}",
        out.failures.first()
    );
    // the endpoint is back: the next pass mints once and checks everything
    sim.clear_faults();
    sim.reset_counters();
    let mut again = input(&sim, 2000);
    again.token = first.token.clone();
    let out = run(again).summary;
    assert_eq!(out.status(), RunStatus::Ok, "{:?}", out.first_error());
    assert_eq!(sim.counters().token_requests, 1);
}

/// A token endpoint whose error echoes the form it was sent never gets the
/// client secret into an error, whatever form it echoes it in and wherever
/// its text is cut (a prefix of the URL-encoded secret ended the error).
#[test]
fn a_token_error_that_echoes_the_secret_keeps_none_of_it() {
    let secret = "SECRET+abc&123=x/y%z";
    let encoded = "SECRET%2Babc%26123%3Dx%2Fy%25z";
    let sim = start(
        100,
        0.3,
        Config {
            client_secret: secret.into(),
            ..Config::default()
        },
    );
    let form = format!("client_id=x&client_secret={encoded}&grant_type=client_credentials");
    // 300 characters are kept: the second message is cut 10 characters into the secret
    let cut = format!("{}client_secret={encoded}", "x".repeat(300 - 14 - 10));
    for message in [form.clone(), format!("invalid: {secret}"), cut] {
        sim.clear_faults();
        sim.add_fault(
            Fault::new(FaultKind::ErrorMessage {
                status: 400,
                message: message.clone(),
            })
            .on(Endpoint::Token),
        );
        let out = run(input(&sim, 100)).summary;
        let fatal = out.fatal.expect("no token, no pass");
        assert!(fatal.contains("400"), "{fatal}");
        assert!(
            !fatal.contains("SECR") && !fatal.contains("abc"),
            "{message} -> {fatal}"
        );
    }
}

#[test]
fn a_token_issued_for_an_hour_is_reused_by_the_next_run() {
    // Twitch documents no lifetime for app tokens: one issued for an hour
    // (inside the hour-long renewal margin of weeks-long tokens) is still used
    // for its first half, not minted again by every run.
    let sim = start(
        100,
        0.3,
        Config {
            token_ttl: Duration::from_secs(3600),
            ..Config::default()
        },
    );
    let first = run(input(&sim, 100)).summary;
    assert!(first.token_changed);
    let mut next = input(&sim, 100);
    next.token = first.token.clone();
    let second = run(next).summary;
    assert_eq!(second.fatal, None);
    assert!(!second.token_changed);
    assert_eq!(sim.counters().tokens_issued, 1);
    // 2,600 s later, with less than half its life left, it is replaced.
    let now = std::time::SystemTime::now();
    let mut late = input(&sim, 100);
    late.token = first.token.clone().map(|t| twitch_sync_core::CachedToken {
        expires_at: now + Duration::from_secs(1000),
        validated_at: Some(now - Duration::from_secs(2600)),
        ..t
    });
    let third = run(late).summary;
    assert!(third.token_changed);
    assert_eq!(sim.counters().tokens_issued, 2);
}

#[test]
fn an_unreachable_helix_is_named_without_the_query() {
    // A warm token, so only Get Streams is tried; nothing listens on port 1.
    let sim = start(300, 0.3, Config::default());
    let first = run(input(&sim, 300)).summary;
    let mut inp = input(&sim, 300);
    inp.token = first.token;
    inp.config.helix_url = "http://127.0.0.1:1/helix".into();
    inp.config.max_retries = 0;
    let out = run(inp).summary;
    assert_eq!(out.failures.len(), 3, "{:?}", out.failures);
    for f in &out.failures {
        assert!(f.error.contains("could not reach"), "{}", f.error);
        assert!(f.error.contains("127.0.0.1:1/helix/streams"), "{}", f.error);
        assert!(!f.error.contains("user_id"), "{}", f.error);
        assert!(f.error.len() < 400, "{}", f.error);
    }
}

#[test]
fn failures_are_per_batch_and_redacted() {
    let sim = start(300, 0.3, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    sim.add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&ids[299]));
    let Out {
        summary: out,
        buffer,
        results,
    } = run(input(&sim, 300));
    assert_eq!(results, 3);
    assert_eq!(buffer.checked.len(), 200);
    assert_eq!(out.checked, 200);
    assert_eq!(out.failed_channels(), 100);
    assert_eq!(out.status(), RunStatus::Partial);
    assert!(out.failures[0].error.contains("HTTP 500"));
    assert!(out
        .failures
        .iter()
        .all(|f| !f.error.contains(&sim.client_secret())));

    // a wrong secret: the token cannot be had, and the error says so without the secret
    let mut bad = input(&sim, 300);
    bad.credentials.client_secret = "not-the-secret-0123".into();
    let Out {
        summary: out,
        buffer,
        results,
    } = run(bad);
    assert_eq!(out.status(), RunStatus::Failed);
    let fatal = out.fatal.unwrap();
    assert!(fatal.contains("invalid client secret"), "{fatal}");
    assert!(!fatal.contains("not-the-secret-0123"));
    assert_eq!((results, buffer.checked.len(), out.checked), (0, 0, 0));
}

#[test]
fn hostile_answers_reach_nobody_unchecked() {
    let sim = start(200, 0.0, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    let (a, b) = (&ids[..100], &ids[100..]);
    // Batch a: stream 777 for a[0]; a NUL stream id for a[1]; an entry for b[5]
    // (not asked in this batch); a title cut in UTF-16.
    let body_a = format!(
        r#"{{"data":[
            {{"id":"777","user_id":"{}","title":"x\ud800","viewer_count":5,"started_at":"2021-03-10T03:18:11Z"}},
            {{"id":"1\u0000","user_id":"{}","viewer_count":5}},
            {{"id":"900","user_id":"{}","viewer_count":5}},
            {{"id":"901","user_id":"{}","user_login":"Not A Login","game_id":"x","viewer_count":6}}
        ],"pagination":{{}}}}"#,
        a[0], a[1], b[5], a[2]
    );
    // Batch b: the same stream 777 for b[0]; a good stream for b[1], listed twice.
    let body_b = format!(
        r#"{{"data":[
            {{"id":"777","user_id":"{}","viewer_count":9}},
            {{"id":"778","user_id":"{}","viewer_count":9}},
            {{"id":"778","user_id":"{}","viewer_count":9}}
        ],"pagination":{{}}}}"#,
        b[0], b[1], b[1]
    );
    sim.add_fault(Fault::new(FaultKind::Body { body: body_a }).for_user(&a[0]));
    sim.add_fault(Fault::new(FaultKind::Body { body: body_b }).for_user(&b[0]));
    let mut inp = input(&sim, 200);
    inp.config.max_concurrent_requests = 1;
    let Out {
        summary, buffer, ..
    } = run(inp);
    assert_eq!(summary.failures, vec![]);
    assert_eq!(summary.status(), RunStatus::Ok);
    let live: Vec<(&str, &str)> = buffer
        .live
        .iter()
        .map(|s| (s.broadcaster_id.as_str(), s.stream_id.as_str()))
        .collect();
    // The first batch to list 777 claims it; the other broadcaster is unknown.
    let (winner, loser) = if live.contains(&(a[0].as_str(), "777")) {
        (&a[0], &b[0])
    } else {
        (&b[0], &a[0])
    };
    let mut expected = vec![
        (winner.as_str(), "777"),
        (a[2].as_str(), "901"),
        (b[1].as_str(), "778"),
    ];
    expected.sort();
    let mut got = live.clone();
    got.sort();
    assert_eq!(got, expected);
    let mut unknown = buffer.unknown.clone();
    unknown.sort();
    let mut want_unknown = vec![a[1].clone(), loser.clone()];
    want_unknown.sort();
    assert_eq!(unknown, want_unknown);
    // everyone else is checked (b[5] is offline: the entry for it came in a's batch)
    assert_eq!(buffer.checked.len(), 198);
    assert!(!buffer.checked.contains(&a[1]) && !buffer.checked.contains(loser));
    assert!(buffer.checked.contains(&b[5]));
    assert_eq!(
        (summary.checked, summary.live, summary.unknown),
        (198, 3, 2)
    );
    let s = &summary.stats;
    assert_eq!(
        (
            s.bad.bad_stream_id,
            s.bad.stream_id_conflict,
            s.bad.foreign_broadcaster,
            s.bad.total()
        ),
        (1, 1, 1, 3)
    );
    assert_eq!(
        (s.cleaned.login, s.cleaned.game_id, s.cleaned.encoding),
        (1, 1, 1)
    );
    assert_eq!(s.duplicates, 1);
    let s901 = buffer.live.iter().find(|s| s.stream_id == "901").unwrap();
    assert_eq!((s901.login.as_deref(), s901.game_id.as_str()), (None, ""));
    if winner == &a[0] {
        let s777 = buffer.live.iter().find(|s| s.stream_id == "777").unwrap();
        assert_eq!(s777.title, "x\u{FFFD}");
        assert_eq!(
            s777.started_at_rfc3339().as_deref(),
            Some("2021-03-10T03:18:11Z")
        );
    }
}

/// A cursor the simulator accepts (hex of `{"o":offset}`).
fn sim_cursor(offset: u64) -> String {
    format!("{{\"o\":{offset}}}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A page of Get Streams with `n` distinct stream ids from `first_id` on, all
/// for `broadcaster`, plus `extra` entries, and a cursor to `next`.
fn flood_page(broadcaster: &str, first_id: u64, n: u64, extra: &[String], next: &str) -> String {
    let mut entries: Vec<String> = (first_id..first_id + n)
        .map(|i| format!(r#"{{"id":"{i}","user_id":"{broadcaster}"}}"#))
        .collect();
    entries.extend(extra.iter().cloned());
    format!(
        r#"{{"data":[{}],"pagination":{{"cursor":"{next}"}}}}"#,
        entries.join(",")
    )
}

#[test]
fn an_id_query_follows_a_cursor_only_where_a_live_channel_went_unlisted() {
    // Twitch puts a cursor on a last page too (twitchdev/issues#2).
    let sim = start(300, 0.5, Config::default());
    sim.add_fault(Fault::new(FaultKind::SurpriseCursor));
    let live: HashSet<String> = sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    let known = |live: &HashSet<String>| {
        let mut i = input(&sim, 300);
        i.live_before = LiveSet::known(live.clone());
        i
    };
    // every channel stored live is listed: one request per batch
    let out = run(known(&live));
    assert_eq!(out.summary.status(), RunStatus::Ok);
    assert_eq!(out.summary.helix_requests, 3, "one request per batch");
    assert_eq!(sim.counters().pages, 0, "no cursor followed");
    assert_eq!(out.buffer.live.len(), live.len());
    // one of them ended since: its batch asks for the next page, once
    let ended = live.iter().next().unwrap().clone();
    sim.world(|w| w.go_offline(&ended));
    sim.reset_counters();
    let out = run(known(&live));
    assert_eq!(
        out.summary.helix_requests, 4,
        "one more for the ended channel's batch"
    );
    assert_eq!(sim.counters().pages, 1);
    assert!(out.buffer.checked.contains(&ended));
    assert!(!out.buffer.live.iter().any(|s| s.broadcaster_id == ended));
    assert_eq!(out.buffer.live.len(), live.len() - 1);
    // the live set not known: every batch that leaves a channel out asks once more
    sim.reset_counters();
    let out = run(input(&sim, 300));
    assert_eq!(out.summary.helix_requests, 6);

    // A server that pages by Twitch's default of 20 whatever `first` asks:
    // followed to the end, though nothing was stored live.
    let sim = start(100, 1.0, Config::default());
    sim.add_fault(Fault::new(FaultKind::PageCap { max: 20 }));
    let mut i = input(&sim, 100);
    i.live_before = LiveSet::known(HashSet::new());
    let out = run(i);
    assert_eq!(out.buffer.live.len(), 100);
    assert_eq!(out.summary.helix_requests, 5);
}

#[test]
fn an_id_query_stops_paging_once_a_page_names_nobody_new() {
    // One batch is answered with page after page (each with a fresh cursor) of
    // 20,000 distinct stream ids, all for one asked broadcaster: an id query
    // lists at most one live stream per broadcaster, so the second page, which
    // names no asked broadcaster the first did not, ends the answer.
    let sim = start(300, 0.0, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    let f = &ids[100];
    for p in 0..11u64 {
        let body = flood_page(f, 800_000_000 + p * 20_000, 20_000, &[], &sim_cursor(p + 1));
        sim.add_fault(Fault::new(FaultKind::Body { body }).for_user(f).times(1));
    }
    let Out {
        summary, buffer, ..
    } = run(input(&sim, 300));
    assert_eq!(summary.failures, vec![]);
    assert_eq!(summary.status(), RunStatus::Ok);
    assert_eq!(
        summary.helix_requests,
        3 + 1,
        "two pages for the flooded batch"
    );
    let live: Vec<(&str, &str)> = buffer
        .live
        .iter()
        .map(|s| (s.broadcaster_id.as_str(), s.stream_id.as_str()))
        .collect();
    assert_eq!(
        live,
        vec![(f.as_str(), "800000000")],
        "the first listed is kept"
    );
    assert_eq!(buffer.checked.len(), 300);
    assert_eq!(summary.stats, Default::default(), "nothing dropped as bad");

    // Every asked broadcaster listed: nothing more to learn, the cursor is not followed.
    let sim = start(3, 0.0, Config::default());
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    let all: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, b)| format!(r#"{{"id":"{}","user_id":"{b}"}}"#, 900 + i))
        .collect();
    let body = flood_page(&ids[0], 1, 0, &all, &sim_cursor(3));
    sim.add_fault(Fault::new(FaultKind::Body { body }).for_user(&ids[0]));
    let out = run(input(&sim, 3));
    assert_eq!(out.buffer.live.len(), 3);
    assert_eq!(out.summary.helix_requests, 1);
}
