//! Reliability and security: every fault Helix can throw leaves failed
//! channels exactly as they were; database faults lose nothing; objects
//! planted in the caller's search_path cannot hijack the extension; TLS is
//! verified; secrets never show.

use std::time::{Duration, Instant};
use twitch_sync_e2e::helix_sim::{Endpoint, Fault, FaultKind};
use twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator;
use twitch_sync_e2e::serde_json::Value;
use twitch_sync_e2e::{error_text, sqlstate, wait_for, world, TestDb};

const SNAPSHOT: &str = "SELECT coalesce(string_agg(stream_id || ':' || viewer_count || ':' || peak_viewer_count || ':' || is_live
                               || ':' || coalesce(ended_at::text, '-') || ':' || updated_at, ',' ORDER BY stream_id), '')
                          || '|' || (SELECT coalesce(string_agg(broadcaster_id || ':' || coalesce(login, '-')
                                     || ':' || missed_polls, ',' ORDER BY broadcaster_id), '')
                                       FROM twitch_sync.channel_status WHERE broadcaster_id = ANY($1))
                     FROM twitch_sync.streams WHERE broadcaster_id = ANY($1)";

#[test]
fn every_helix_fault_leaves_the_failed_batch_untouched_and_the_next_run_catches_up() {
    let faults: Vec<(&str, FaultKind)> = vec![
        ("429 storm", FaultKind::Status { status: 429 }),
        ("5xx", FaultKind::Status { status: 502 }),
        ("timeout", FaultKind::Delay { ms: 3_000 }),
        ("dropped mid-body", FaultKind::DropMidBody),
        ("malformed JSON", FaultKind::Malformed),
        ("truncated JSON", FaultKind::Truncated),
        (
            "oversized body",
            FaultKind::Oversized {
                bytes: 6 * 1024 * 1024,
            },
        ),
        (
            "trickling answer",
            FaultKind::Trickle {
                chunk: 64,
                pause_ms: 50,
            },
        ),
        ("400", FaultKind::Status { status: 400 }),
    ];
    for (name, kind) in faults {
        let mut db = TestDb::new(world(200, 0.5));
        let ids = db.track_first(200);
        db.client
            .batch_execute("SET twitch_sync.request_timeout_ms = 400; SET twitch_sync.max_retries = 2; SET twitch_sync.run_deadline_ms = 8000")
            .unwrap();
        assert_eq!(db.run()["status"], "ok", "{name}: first run");
        let second: Vec<String> = ids[100..].to_vec();
        let before: String = db.client.query_one(SNAPSHOT, &[&second]).unwrap().get(0);
        // the world changes everywhere; the second batch's answers are broken
        db.sim.world(|w| {
            w.tick();
            w.go_offline(&ids[0]);
            w.go_offline(&ids[100]);
            w.go_live(&ids[1]);
            w.go_live(&ids[101]);
        });
        db.sim
            .add_fault(Fault::new(kind.clone()).for_user(&ids[199]));
        let t = Instant::now();
        let doc = db.run();
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "{name}: within the deadline ({:?})",
            t.elapsed()
        );
        assert_eq!(doc["status"], "partial", "{name}: {doc}");
        assert_eq!(doc["errors"], 100, "{name}");
        let after: String = db.client.query_one(SNAPSHOT, &[&second]).unwrap().get(0);
        assert_eq!(
            before, after,
            "{name}: the failed batch's channels are exactly as they were"
        );
        let row = db
            .client
            .query_one(
                "SELECT status, errors, error FROM twitch_sync.runs ORDER BY run_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "partial", "{name}");
        assert!(
            row.get::<_, Option<String>>(2).is_some(),
            "{name}: the error is recorded"
        );
        // the healthy batch was applied
        let first_ok: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
                &[&ids[1]],
            )
            .unwrap()
            .get(0);
        assert_eq!(first_ok, 1, "{name}");
        db.sim.clear_faults();
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{name}: recovery: {doc}");
        db.assert_matches_world();
    }
}

#[test]
fn a_401_in_the_middle_of_a_run_renews_the_token_once() {
    let mut db = TestDb::new(world(500, 0.3));
    db.track_first(500);
    db.run();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 401 }).times(1));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(db.sim.counters().tokens_issued, 2);
    db.assert_matches_world();
}

#[test]
fn an_auth_server_that_is_down_does_not_matter_while_the_token_is_good() {
    let mut db = TestDb::new(world(100, 0.3));
    db.track_first(100);
    db.run();
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 503 }).on(Endpoint::Token));
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 503 }).on(Endpoint::Validate));
    db.client
        .execute(
            "UPDATE twitch_sync.credentials SET token_validated_at = now() - interval '2 hours'",
            &[],
        )
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert!(
        doc["warnings"][0].as_str().unwrap().contains("validation"),
        "{doc}"
    );
    // once the token is gone, the run fails clearly and changes nothing
    db.sim.expire_tokens();
    let before = db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live");
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        before
    );
}

#[test]
fn imperfect_helix_answers_are_stored_as_decided() {
    let mut db = TestDb::new(world(3, 0.0));
    let ids = db.track_first(3);
    let body = format!(
        r#"{{"data":[
            {{"id":"900","user_id":"{a}","user_login":"SIM_CHANNEL_0","viewer_count":-7,"type":"","title":null,"game_name":null,"surprise":[1,2]}},
            {{"id":"900","user_id":"{a}","viewer_count":5,"type":"live"}},
            {{"id":"901","user_id":"{b}","viewer_count":99999999999,"type":"rerun","started_at":"2026-11-25T10:00:00.123Z"}},
            {{"id":"902","user_id":"55555","viewer_count":1}},
            {{"user_id":"{c}","viewer_count":1}}
        ],"pagination":{{}}}}"#,
        a = ids[0],
        b = ids[1],
        c = ids[2]
    );
    db.sim.add_fault(Fault::new(FaultKind::Body { body }));
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["live"], 2);
    let rows = db
        .client
        .query(
            "SELECT stream_id, broadcaster_id, viewer_count, title, game_name, started_at::text FROM twitch_sync.streams ORDER BY stream_id",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "unknown ids and entries without a stream id are not stored"
    );
    assert_eq!(
        rows[0].get::<_, i32>(2),
        0,
        "negative counts are stored as 0"
    );
    assert_eq!(rows[0].get::<_, String>(3), "", "null title is ''");
    assert_eq!(
        rows[1].get::<_, i32>(2),
        i32::MAX,
        "huge counts are clamped"
    );
    assert_eq!(
        rows[1].get::<_, Option<String>>(5).as_deref(),
        Some("2026-11-25 10:00:00.123+00")
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE stream_id = '902'"),
        0
    );
    let login: String = db
        .client
        .query_one(
            "SELECT login FROM twitch_sync.channels WHERE broadcaster_id = $1",
            &[&ids[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(login, "sim_channel_0");
}

#[test]
fn terminate_mid_run_leaves_no_lock_behind_and_the_next_run_records_it() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    db.sim.set_latency(Duration::from_secs(30));
    let mut victim = db.connect();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let handle = std::thread::spawn(move || {
        victim
            .query_one("SELECT twitch_sync.run()", &[])
            .map(|_| ())
    });
    let running = wait_for(Duration::from_secs(5), || {
        db.run_in_progress().then_some(())
    });
    assert!(running.is_some());
    let t = Instant::now();
    db.client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let err = handle.join().unwrap().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(err.is_closed() || sqlstate(&err) == "57P01", "{err}");
    db.sim.set_latency(Duration::ZERO);
    assert!(!db.run_in_progress());
    assert_eq!(db.run()["status"], "ok");
    // The terminated run wrote nothing; the next run, in another backend,
    // recorded it (shared memory) before its own row.
    let rows = db
        .client
        .query(
            "SELECT status, coalesce(error, '') FROM twitch_sync.runs ORDER BY started_at",
            &[],
        )
        .unwrap();
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            (
                "failed".to_string(),
                "rolled back: the session ended (pg_terminate_backend or a lost connection)"
                    .to_string()
            ),
            ("ok".to_string(), String::new())
        ]
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams"),
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE first_seen_at >= (SELECT started_at FROM twitch_sync.runs WHERE status = 'ok')"),
        "every stream row is the ok run's"
    );
}

#[test]
fn many_concurrent_callers_one_works_the_rest_skip() {
    let mut db = TestDb::new(world(300, 0.5));
    db.track_first(300);
    db.sim.set_latency(Duration::from_millis(700));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut c = db.connect();
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                c.query_one("SELECT twitch_sync.run()", &[])
                    .unwrap()
                    .get::<_, Value>(0)
            })
        })
        .collect();
    let docs: Vec<Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = docs.iter().filter(|d| d["status"] == "ok").count();
    let skipped = docs.iter().filter(|d| d["skipped"] == true).count();
    assert_eq!((ok, skipped), (1, 7), "{docs:?}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status = 'skipped'"),
        7
    );
}

#[test]
fn planted_objects_cannot_hijack_security_definer_functions() {
    let mut db = TestDb::new(world(10, 0.5));
    db.client
        .batch_execute(
            "CREATE ROLE tracker LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO tracker;
             GRANT EXECUTE ON FUNCTION twitch_sync.track(text, text), twitch_sync.run(), twitch_sync.status() TO tracker;
             GRANT CREATE ON SCHEMA public TO tracker;",
        )
        .unwrap();
    let mut attacker = db.cluster().connect_as(&db.name, "tracker");
    attacker
        .batch_execute(
            "SET search_path = pg_temp, public;
             CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'hijacked' $$;
             CREATE TEMP TABLE channels (broadcaster_id text, login text);
             CREATE TEMP TABLE credentials (client_id text, client_secret text);
             CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
             CREATE FUNCTION public.pg_notify(text, text) RETURNS void LANGUAGE sql AS $$ SELECT NULL::void $$;",
        )
        .unwrap();
    let added: bool = attacker
        .query_one("SELECT twitch_sync.track('123456', 'MixedCase')", &[])
        .unwrap()
        .get(0);
    assert!(added);
    let row = db
        .client
        .query_one("SELECT login, added_at > now() - interval '1 hour' FROM twitch_sync.channels WHERE broadcaster_id = '123456'", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "mixedcase");
    assert!(row.get::<_, bool>(1));
    let temp_rows: i64 = attacker
        .query_one("SELECT count(*) FROM pg_temp.channels", &[])
        .unwrap()
        .get(0);
    assert_eq!(temp_rows, 0);
    // run() works for it and reads the real credentials, never the planted table
    let doc: Value = attacker
        .query_one("SELECT twitch_sync.run()", &[])
        .unwrap()
        .get(0);
    assert_eq!(doc["status"], "ok", "{doc}");
}

#[test]
fn a_reader_role_cannot_reach_credentials_by_any_path() {
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    db.run();
    db.client
        .batch_execute(
            "CREATE ROLE app_reader LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO app_reader;
             GRANT SELECT ON twitch_sync.streams, twitch_sync.channels, twitch_sync.viewer_samples TO app_reader;",
        )
        .unwrap();
    let mut reader = db.cluster().connect_as(&db.name, "app_reader");
    let live: i64 = reader
        .query_one(
            "SELECT count(*) FROM twitch_sync.streams WHERE is_live",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(live, 5);
    for sql in [
        "SELECT * FROM twitch_sync.credentials",
        "SELECT * FROM twitch_sync.rate_limit",
        "SELECT * FROM twitch_sync.runs",
        "SELECT twitch_sync.run()",
        "SELECT * FROM twitch_sync.status()",
        "SELECT twitch_sync.metrics()",
        "SELECT twitch_sync.set_credentials('a', 'b')",
        "SELECT twitch_sync.track('1')",
        "SELECT * FROM twitch_sync.prune()",
        "SELECT twitch_sync.schedule()",
        "SELECT twitch_sync.apply_observations(NULL, 1, false)",
        "SELECT * FROM twitch_sync.record_run(now(), 'ok', 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL, 0, 0, NULL, NULL)",
        "SELECT * FROM twitch_sync.events",
        "SELECT * FROM twitch_sync.alerts",
        "SELECT * FROM twitch_sync.channel_status",
        "SET twitch_sync.helix_url = 'http://127.0.0.1:1/helix'",
        "SET twitch_sync.auth_url = 'http://127.0.0.1:1/oauth2'",
        "UPDATE twitch_sync.streams SET viewer_count = 0",
        "DELETE FROM twitch_sync.channels",
    ] {
        let err = reader.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql}: {}", error_text(&err));
    }
    // the secret is in no function's source either
    let secret = db.sim.client_secret();
    let leaked: i64 = reader
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE prosrc LIKE '%' || $1 || '%'",
            &[&secret],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
}

#[test]
fn a_refused_set_credentials_call_leaves_the_secret_out_of_the_server_log() {
    let mut db = TestDb::new(world(1, 0.0));
    for sql in [
        "SELECT twitch_sync.set_credentials('client-XYZC1', 'a secret with spaces XYZS1')",
        "SELECT twitch_sync.set_credentials('a client id XYZC2', 'secretXYZS2')",
        // a no-break space and a left-to-right mark are no visible ASCII either
        "SELECT twitch_sync.set_credentials(E'client\\u00a0XYZC3', 'secretXYZS3')",
        "SELECT twitch_sync.set_credentials('clientXYZC4', E'secret\\u200eXYZS4')",
    ] {
        let e = db.client.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{sql}: {}", error_text(&e));
    }
    let log = db.cluster().log();
    // The refusals are logged (this is the server's log), their statements not.
    assert!(log.contains("invalid client secret"), "{log}");
    for marker in [
        "XYZC1", "XYZS1", "XYZC2", "XYZS2", "XYZC3", "XYZS3", "XYZC4", "XYZS4",
    ] {
        assert!(!log.contains(marker), "{marker} in the server log");
    }
}

#[test]
fn tls_certificates_are_verified() {
    // A local HTTPS server with a self-signed certificate: twitch_sync must refuse it.
    let dir = std::env::temp_dir().join(format!("twitch_sync_tls_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });

    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    db.client
        .batch_execute(&format!(
            "SET twitch_sync.auth_url = 'https://127.0.0.1:{port}/oauth2'; SET twitch_sync.helix_url = 'https://127.0.0.1:{port}/helix'"
        ))
        .unwrap();
    let doc = db.run();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(doc["status"], "failed", "{doc}");
    let err = doc["error"].as_str().unwrap().to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("unknownissuer") || err.contains("tls"),
        "{err}"
    );
}

#[test]
fn secrets_stay_out_of_verbose_logs_errors_and_alerts() {
    let mut db = TestDb::new(world(100, 0.5));
    db.track_first(100);
    let mut listener = db.connect();
    listener
        .batch_execute("LISTEN twitch_sync_alerts; LISTEN twitch_sync")
        .unwrap();
    db.client
        .batch_execute("SET log_min_messages = debug2; SET client_min_messages = debug1; SET log_statement = 'none'")
        .unwrap();
    db.run();
    let token: String = db
        .client
        .query_one("SELECT access_token FROM twitch_sync.credentials", &[])
        .unwrap()
        .get(0);
    // (a parameter: Postgres itself logs statement text at debug2)
    db.client
        .execute(
            "UPDATE twitch_sync.credentials SET client_secret = $1 WHERE true",
            &[&"wrong-secret-7f3a9c"],
        )
        .unwrap();
    db.sim.expire_tokens();
    let failed = db.run();
    assert_eq!(failed["status"], "failed");
    let mut seen = failed.to_string();
    {
        let mut notes = listener.notifications();
        let mut it = notes.timeout_iter(Duration::from_secs(1));
        while let Ok(Some(n)) = it.next() {
            seen.push_str(n.payload());
        }
    }
    for sql in [
        "SELECT row_to_json(s)::text FROM twitch_sync.status() s",
        "SELECT coalesce(json_agg(r)::text, '') FROM twitch_sync.runs r",
        "SELECT twitch_sync.metrics()",
    ] {
        seen.push_str(&db.client.query_one(sql, &[]).unwrap().get::<_, String>(0));
    }
    seen.push_str(&db.cluster().log());
    assert!(
        seen.contains("twitch_sync: run"),
        "the server log has the run lines"
    );
    for secret in [
        db.sim.client_secret(),
        "wrong-secret-7f3a9c".to_string(),
        token,
    ] {
        if let Some(at) = seen.find(&secret) {
            let from = seen[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            panic!(
                "a secret leaked: ...{}",
                &seen[from..(at + secret.len() + 50).min(seen.len())]
            );
        }
    }
}

#[test]
fn what_a_broken_helix_puts_in_error_bodies_and_headers_never_stops_a_run_or_the_next() {
    let mut db = TestDb::new(world(200, 0.5));
    let ids = db.track_first(200);
    db.client
        .batch_execute("SET twitch_sync.max_retries = 0; SET twitch_sync.run_deadline_ms = 8000")
        .unwrap();
    // an error body whose message holds a NUL: the batch fails, the run is
    // partial and leaves its row and its alert, the message without the NUL
    db.sim.add_fault(
        Fault::new(FaultKind::ErrorMessage {
            status: 400,
            message: "bad\u{0}thing".into(),
        })
        .for_user(&ids[199]),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "partial", "{doc}");
    assert_eq!(doc["errors"], 100, "{doc}");
    let row = db
        .client
        .query_one(
            "SELECT r.status, r.error, (SELECT count(*) FROM twitch_sync.alerts a WHERE a.run_id = r.run_id)
               FROM twitch_sync.runs r ORDER BY r.run_id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "partial");
    let error: String = row.get(1);
    assert!(error.contains("badthing"), "{error}");
    assert_eq!(row.get::<_, i64>(2), 1, "its alert");
    db.sim.clear_faults();
    assert_eq!(db.run()["status"], "ok");

    // Ratelimit-* headers no Helix should send: a bucket of 0 (or of 2^32,
    // which wraps to 0), more left than the bucket holds, a reset ten years
    // ahead or past any timestamp. The run that hears them is fine, and so
    // is the next one against a healthy Helix: it checks every channel at
    // once instead of waiting for a bucket that never refills.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let broken = [
        ("a bucket of 0", "0", "0", (now + 60).to_string()),
        ("2^32 points", "4294967296", "0", (now + 60).to_string()),
        (
            "more left than held",
            "800",
            "4000000000",
            (now + 60).to_string(),
        ),
        (
            "a reset in ten years",
            "800",
            "0",
            (now + 315_360_000).to_string(),
        ),
        (
            "a reset past any timestamp",
            "800",
            "0",
            "99999999999999".to_string(),
        ),
    ];
    for (name, limit, remaining, reset) in broken {
        db.sim.add_fault(Fault::new(FaultKind::RateLimitHeaders {
            limit: limit.into(),
            remaining: remaining.into(),
            reset,
        }));
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{name}: {doc}");
        db.sim.clear_faults();
        let t = Instant::now();
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{name}: the next run: {doc}");
        assert_eq!(doc["helix_requests"], 2, "{name}: {doc}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "{name}: the next run waited {:?}",
            t.elapsed()
        );
    }
    db.assert_matches_world();
}

#[test]
fn errors_reach_users_as_clean_sql_errors_without_a_rust_backtrace() {
    // The harness starts the server with RUST_BACKTRACE=1, as some servers run.
    let mut db = TestDb::bare(world(10, 0.5));
    db.track_first(10);
    let err = db
        .client
        .query_one("SELECT twitch_sync.run()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{}", error_text(&err));
    let e = err.as_db_error().unwrap();
    assert_eq!(e.message(), "twitch_sync has no Twitch credentials");
    assert!(
        e.hint().unwrap_or_default().contains("set_credentials"),
        "{}",
        error_text(&err)
    );
    assert_eq!(
        e.detail(),
        None,
        "no backtrace in DETAIL: {}",
        error_text(&err)
    );
    // An error Postgres raises inside the run (here: statement_timeout while it
    // waits on Helix) comes back as itself, with no backtrace attached.
    db.sim.add_fault(Fault::new(FaultKind::Delay { ms: 3_000 }));
    db.client
        .batch_execute(&format!(
            "SET statement_timeout = '300ms'; SELECT twitch_sync.set_credentials('{}', '{}')",
            db.sim.client_id(),
            db.sim.client_secret()
        ))
        .unwrap();
    let err = db
        .client
        .query_one("SELECT twitch_sync.run()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57014", "{}", error_text(&err));
    let e = err.as_db_error().unwrap();
    assert_eq!(
        e.detail(),
        None,
        "no backtrace in DETAIL: {}",
        error_text(&err)
    );
    // A misspelt setting is refused (the prefix is reserved), not kept as a
    // placeholder nothing reads; the real one still takes values.
    db.client.batch_execute("RESET statement_timeout").unwrap();
    let err = db
        .client
        .batch_execute("SET twitch_sync.helix_ulr = 'https://api.twitch.tv/helix'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42602", "{}", error_text(&err));
    assert!(
        error_text(&err).contains("twitch_sync.helix_ulr"),
        "{}",
        error_text(&err)
    );
    db.client
        .batch_execute("SET twitch_sync.max_retries = 2")
        .unwrap();
}

#[test]
fn a_role_with_the_readme_grants_can_track_in_bulk() {
    // README "SQL reference": bulk tracking by INSERT from another role needs
    // INSERT on channels and EXECUTE on the rules the trigger and checks call.
    let db = TestDb::new(world(1, 0.0));
    let role = format!("bulk_tracker_{}", db.name);
    let mut owner = db.connect();
    owner
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO {role};
             GRANT INSERT ON twitch_sync.channels TO {role};
             GRANT EXECUTE ON FUNCTION twitch_sync.check_broadcaster_id(text),
                                       twitch_sync.is_broadcaster_id(text),
                                       twitch_sync.is_login(text) TO {role};"
        ))
        .unwrap();
    let mut tracker = db.cluster().connect_as(&db.name, &role);
    tracker
        .batch_execute(
            "INSERT INTO twitch_sync.channels (broadcaster_id, login)
             SELECT (500 + i)::text, 'streamer_' || i FROM generate_series(1, 3) i",
        )
        .unwrap();
    let e = tracker
        .batch_execute("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('abc')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", error_text(&e));
    let tracked: i64 = owner
        .query_one(
            "SELECT count(*) FROM twitch_sync.channels WHERE broadcaster_id IN ('501', '502', '503')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tracked, 3);
    // without EXECUTE on the id rule, the trigger cannot run for it
    owner
        .batch_execute(&format!(
            "REVOKE EXECUTE ON FUNCTION twitch_sync.check_broadcaster_id(text) FROM {role}"
        ))
        .unwrap();
    let e = tracker
        .batch_execute("INSERT INTO twitch_sync.channels (broadcaster_id) VALUES ('504')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", error_text(&e));
}

#[test]
fn runs_undone_by_savepoints_and_plpgsql_blocks_are_recorded_once_and_returned_ones_never() {
    // run() in a PL/pgSQL block with EXCEPTION: its subtransaction is rolled
    // back, the transaction goes on. The run is kept then, and not again if
    // the transaction aborts afterwards.
    let mut db = TestDb::new(world(10, 0.5));
    db.track_first(10);
    // A run that returned is its caller's: rolled back with its transaction
    // afterwards, it is not recorded.
    db.client
        .batch_execute("BEGIN; SELECT twitch_sync.run(); ROLLBACK")
        .unwrap();
    db.client
        .batch_execute("SET twitch_sync.helix_url = 'ftp://127.0.0.1/helix'")
        .unwrap();
    let caught = "DO $$ BEGIN PERFORM twitch_sync.run(); \
                  EXCEPTION WHEN invalid_parameter_value THEN NULL; END $$";
    db.client.batch_execute(caught).unwrap();
    let err = db
        .client
        .batch_execute(&format!("BEGIN; {caught}; SELECT 1/0"))
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    db.client
        .batch_execute("ROLLBACK; RESET twitch_sync.helix_url")
        .unwrap();
    // Runs that took those two to record, returned, and were undone by their
    // caller (a savepoint, a transaction) give them back.
    db.client
        .batch_execute(
            "BEGIN; SAVEPOINT s; SELECT twitch_sync.run(); ROLLBACK TO SAVEPOINT s; COMMIT;
             BEGIN; SAVEPOINT p; SAVEPOINT s; SELECT twitch_sync.run(); RELEASE s;
                    ROLLBACK TO SAVEPOINT p; COMMIT;
             BEGIN; SELECT twitch_sync.run(); ROLLBACK;",
        )
        .unwrap();
    // Two-phase commit is refused (a ROLLBACK PREPARED elsewhere would lose
    // them), and the refusal gives them back too; the refused run itself
    // lost its row through no choice of its caller, so it is kept.
    let err = db
        .client
        .batch_execute("BEGIN; SELECT twitch_sync.run(); PREPARE TRANSACTION 'p'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", error_text(&err));
    assert!(
        error_text(&err).contains("cannot PREPARE a transaction that has called twitch_sync.run()"),
        "{}",
        error_text(&err)
    );
    db.client.batch_execute("ROLLBACK").unwrap();
    // A skipped call's transaction is refused too: prepared, it would hold
    // the counters row every later run must write, indefinitely.
    let mut holder = db.connect();
    holder
        .batch_execute("BEGIN; SELECT twitch_sync.run()")
        .unwrap();
    // (the holder's run has recorded itself and its transaction stays open:
    // a skipped call neither waits for it nor makes it wait)
    let skipped: Value = db
        .client
        .query_one(
            "SELECT twitch_sync.run() FROM (SELECT set_config('statement_timeout', '3s', false)) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(skipped["skipped"], true, "{skipped}");
    db.client.batch_execute("RESET statement_timeout").unwrap();
    let metrics = db.metrics();
    assert!(
        metrics.contains("twitch_sync_runs_total{status=\"skipped\"} 1\n"),
        "{metrics}"
    );
    let err = db
        .client
        .batch_execute("BEGIN; SELECT twitch_sync.run(); PREPARE TRANSACTION 'q'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", error_text(&err));
    db.client.batch_execute("ROLLBACK").unwrap();
    holder.batch_execute("ROLLBACK").unwrap();
    let metrics = db.metrics();
    assert!(
        metrics.contains("twitch_sync_runs_total{status=\"skipped\"} 1\n"),
        "a skipped call rolled back (here, refused at PREPARE) is not counted: {metrics}"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs WHERE status <> 'skipped'"),
        0
    );
    assert_eq!(db.run()["status"], "ok");
    let errors: Vec<String> = db
        .client
        .query(
            "SELECT error FROM twitch_sync.runs WHERE status = 'failed' ORDER BY started_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(
        errors[2],
        "rolled back: cannot PREPARE a transaction that has called twitch_sync.run() (SQLSTATE 0A000)"
    );
    for e in &errors[..2] {
        assert!(
            e.starts_with("rolled back: invalid value for twitch_sync.helix_url")
                && e.ends_with("(SQLSTATE 22023)"),
            "{e}"
        );
    }
}
