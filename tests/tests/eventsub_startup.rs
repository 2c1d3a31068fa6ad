//! The EventSub worker's start-up (token, conduit, socket) when something is
//! wrong, in its own cluster (one worker per cluster, so one test): a cached
//! token Twitch no longer accepts is replaced at once (not left until some
//! run() mints one); a WebSocket that cannot be opened says why in `detail`
//! and the server log; and an error answer that echoes the token shows it
//! nowhere (`detail`, status(), the server log).

use std::time::Duration;
use twitch_sync_e2e::helix_sim::{Endpoint, Fault, FaultKind};
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::{wait_for, world, TestDb};

/// The worker's (state, detail).
fn worker(c: &mut Client) -> Option<(String, Option<String>)> {
    c.query_opt("SELECT state, detail FROM twitch_sync.eventsub_worker", &[])
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// The cached app token.
fn access_token(c: &mut Client) -> String {
    c.query_one("SELECT access_token FROM twitch_sync.credentials", &[])
        .unwrap()
        .get(0)
}

/// status().eventsub's (channels_covered, channels_poll_only).
fn coverage(c: &mut Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (e ->> 'channels_covered')::int8, (e ->> 'channels_poll_only')::int8
               FROM (SELECT twitch_sync.eventsub_status() e) s",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Restarts the worker (it reads the database's settings again) and waits
/// until `until` holds for its (state, detail).
fn restart_until(
    db: &mut TestDb,
    what: &str,
    until: impl Fn(&str, Option<&str>) -> bool,
) -> (String, Option<String>) {
    let mut admin = db.cluster().connect("postgres");
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE backend_type = 'twitch_sync eventsub'",
        )
        .unwrap();
    let mut last = None;
    wait_for(Duration::from_secs(40), || {
        // (the old worker's row shows until the new one writes its own)
        std::thread::sleep(Duration::from_millis(200));
        let w = worker(&mut db.client)?;
        last = Some(w.clone());
        until(&w.0, w.1.as_deref()).then_some(w)
    })
    .unwrap_or_else(|| panic!("{what}: last seen {last:?}\n{}", db.cluster().log()))
}

#[test]
fn the_worker_starts_through_a_refused_token_and_says_why_it_cannot_connect() {
    let mut db = TestDb::new(world(10, 0.0));
    db.track_first(2);
    assert_eq!(db.run()["status"], "ok");
    db.serve_eventsub(&[("twitch_sync.eventsub_reconcile_secs", "1")]);
    wait_for(Duration::from_secs(40), || {
        worker(&mut db.client).filter(|w| w.0 == "connected")
    })
    .unwrap_or_else(|| panic!("connected: {:?}", worker(&mut db.client)));
    wait_for(Duration::from_secs(30), || {
        (coverage(&mut db.client) == (2, 0)).then_some(())
    })
    .unwrap_or_else(|| panic!("both channels covered: {:?}", coverage(&mut db.client)));

    // Twitch forgets every token (a revoked one, say): the restarted worker's
    // cached token is refused, and it mints a new one itself
    db.sim.expire_tokens();
    let issued = db.sim.counters().tokens_issued;
    restart_until(&mut db, "connected with a new token", |s, _| {
        s == "connected"
    });
    assert!(db.sim.counters().tokens_issued > issued, "a token minted");
    assert!(
        db.sim.counters().unauthorized >= 1,
        "the old one was refused"
    );

    // a WebSocket that cannot be opened: `connecting`, with the reason
    let url = db.sim.eventsub_url().unwrap();
    let name = db.name.clone();
    let mut admin = db.cluster().connect("postgres");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET twitch_sync.eventsub_url = 'ws://127.0.0.1:1/ws'"
        ))
        .unwrap();
    let (_, detail) = restart_until(&mut db, "a connect error in detail", |s, d| {
        s == "connecting" && d.is_some()
    });
    let detail = detail.unwrap();
    assert!(
        detail.starts_with("connecting to ws://127.0.0.1:1/ws") && detail.contains(" failed: "),
        "{detail}"
    );
    assert!(db.cluster().log().contains(&detail), "logged");
    // no event reaches anyone meanwhile: every channel counts as poll-only
    assert_eq!(
        coverage(&mut db.client),
        (0, 2),
        "covered only while connected"
    );
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET twitch_sync.eventsub_url = '{url}'"
        ))
        .unwrap();
    restart_until(&mut db, "connected again", |s, _| s == "connected");

    // a server that echoes the token in its 401 (as a proxy or stand-in
    // might): the token shows nowhere
    let token = access_token(&mut db.client);
    db.sim.add_fault(
        Fault::new(FaultKind::ErrorMessage {
            status: 401,
            message: "token not accepted: {authorization}".into(),
        })
        .on(Endpoint::EventSub),
    );
    let (_, detail) = restart_until(&mut db, "idle with Twitch's refusal", |s, d| {
        s == "idle" && d.is_some_and(|d| d.contains("token not accepted"))
    });
    let detail = detail.unwrap();
    assert!(detail.contains("Bearer [redacted]"), "{detail}");
    let status: String = db
        .client
        .query_one("SELECT (twitch_sync.status()).eventsub::text", &[])
        .unwrap()
        .get(0);
    assert!(status.contains("Bearer [redacted]"), "{status}");
    // the token the retry minted is kept (the next try does not mint another
    // for nothing), and no token shows anywhere
    let kept = access_token(&mut db.client);
    assert_ne!(kept, token, "the minted token is stored");
    std::thread::sleep(Duration::from_millis(3500)); // (a retry or two more)
                                                     // logged once, however often it is retried
    let refusals = db
        .cluster()
        .log()
        .lines()
        .filter(|l| l.contains("eventsub worker: idle (") && l.contains("token not accepted"))
        .count();
    assert_eq!(refusals, 1, "one log line per new reason");
    let tokens = db.sim.tokens();
    assert!(!tokens.is_empty());
    for (what, text) in [
        ("detail", detail),
        ("status()", status),
        ("the server log", db.cluster().log()),
    ] {
        for t in tokens.iter().chain([&token, &kept]) {
            assert!(!text.contains(t.as_str()), "a token in {what}");
        }
    }
    db.sim.clear_faults();
    restart_until(&mut db, "connected once Twitch accepts it", |s, _| {
        s == "connected"
    });
}
