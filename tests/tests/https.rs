//! twitch_sync.run() over HTTPS, as Twitch serves it: TLS with a certificate
//! of the simulator's own CA (trusted through `twitch_sync.extra_ca_file`),
//! HTTP/2 on one connection, HTTP/1.1 when the server offers only that, a
//! clear failure when the certificate is not trusted, and a setting only
//! superusers can change.

use twitch_sync_e2e::helix_sim::tls::Alpn;
use twitch_sync_e2e::{error_text, https_world, sqlstate, TestDb};

#[test]
fn a_run_over_https_speaks_http2_on_one_connection() {
    let mut db = TestDb::new(https_world(2_000, 0.2, Alpn::H2AndHttp1));
    assert!(db.sim.helix_url().starts_with("https://"));
    db.track_first(2_000);
    for round in 0..2 {
        db.sim.reset_counters();
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
        assert_eq!(doc["total_streams"], 2_000);
        assert_eq!(doc["live"], 400);
        assert_eq!(
            doc["http"],
            serde_json::json!({"version": "HTTP/2", "connections": 1}),
            "{doc}"
        );
        let c = db.sim.counters();
        // Token (first round only) and 20 Get Streams requests, one handshake.
        assert_eq!(c.streams_requests, 20, "round {round}: {c:?}");
        assert_eq!(
            (c.connections, c.tls_handshakes, c.http2_connections),
            (1, 1, 1),
            "round {round}: {c:?}"
        );
        db.assert_matches_world();
        db.sim.tick();
    }
}

#[test]
fn an_http1_only_server_is_still_served() {
    let mut db = TestDb::new(https_world(1_000, 0.3, Alpn::Http1Only));
    db.track_first(1_000);
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["http"]["version"], "HTTP/1.1", "{doc}");
    db.assert_matches_world();
    let c = db.sim.counters();
    assert_eq!(c.http2_connections, 0, "{c:?}");
    assert!(c.tls_handshakes >= 1 && c.tls_handshakes <= 32, "{c:?}");
    assert_eq!(doc["http"]["connections"], c.tls_handshakes, "{doc} {c:?}");
}

#[test]
fn without_the_ca_the_run_fails_with_a_certificate_error_and_a_runs_row() {
    let mut db = TestDb::new(https_world(100, 0.5, Alpn::H2AndHttp1));
    db.track_first(100);
    db.client
        .batch_execute("SET twitch_sync.extra_ca_file = ''")
        .unwrap();
    let doc = db.run();
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(doc["success"], false);
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("could not get an app access token") && err.contains("certificate"),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "names why: {err}");
    assert!(!err.contains(&db.sim.client_secret()));
    let row = db
        .client
        .query_one(
            "SELECT status, error FROM twitch_sync.runs WHERE run_id = $1",
            &[&doc["run_id"].as_i64().unwrap()],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, String>(1).contains("certificate"));
    let c = db.sim.counters();
    assert_eq!((c.tls_handshakes, c.token_requests), (0, 0), "{c:?}");
    assert!(c.tls_failures >= 1, "{c:?}");
    assert_eq!(db.scalar_i64("SELECT count(*) FROM twitch_sync.streams"), 0);

    // Trusting the simulator's CA again: the same database works.
    db.client
        .batch_execute("RESET twitch_sync.extra_ca_file")
        .unwrap();
    assert_eq!(db.run()["status"], "ok");
}

#[test]
fn a_bad_ca_file_is_a_clear_sql_error() {
    let mut db = TestDb::new(https_world(10, 0.5, Alpn::H2AndHttp1));
    db.track_first(10);
    let dir = std::env::temp_dir().join(format!("twitch_sync_badca_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let junk = dir.join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let runs_before = db.scalar_i64("SELECT count(*) FROM twitch_sync.runs");
    for (value, why) in [
        (
            dir.join("missing.pem").display().to_string(),
            "cannot read the file",
        ),
        ("relative.pem".to_string(), "not an absolute path"),
        (not_pem.display().to_string(), "holds no PEM certificate"),
        (
            junk.display().to_string(),
            "cannot be a trusted CA certificate",
        ),
    ] {
        db.client
            .batch_execute(&format!("SET twitch_sync.extra_ca_file = '{value}'"))
            .unwrap();
        let err = db
            .client
            .query_one("SELECT twitch_sync.run()", &[])
            .unwrap_err();
        let text = error_text(&err);
        assert_eq!(sqlstate(&err), "22023", "{value}: {text}");
        assert!(text.contains("twitch_sync.extra_ca_file"), "{text}");
        assert!(text.contains(why), "{value}: {text}");
        assert!(
            !text.contains("panic") && !text.contains("backtrace"),
            "{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Refused before anything was sent or recorded.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.runs"),
        runs_before
    );
    assert_eq!(db.sim.counters().connections, 0);
}

#[test]
fn the_ca_setting_is_superuser_only() {
    let mut db = TestDb::new(https_world(10, 0.5, Alpn::H2AndHttp1));
    let role = format!("ca_user_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA twitch_sync TO {role};"
        ))
        .unwrap();
    let mut user = db.cluster().connect_as(&db.name, &role);
    for sql in [
        "SET twitch_sync.extra_ca_file = '/tmp/evil.pem'".to_string(),
        "SET LOCAL twitch_sync.extra_ca_file = '/tmp/evil.pem'".to_string(),
        "SELECT set_config('twitch_sync.extra_ca_file', '/tmp/evil.pem', false)".to_string(),
        format!("ALTER ROLE {role} SET twitch_sync.extra_ca_file = '/tmp/evil.pem'"),
    ] {
        let err = user.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&err), "42501", "{sql}: {}", error_text(&err));
    }
    let (context, default): (String, String) = {
        let row = db
            .client
            .query_one(
                "SELECT context, boot_val FROM pg_settings WHERE name = 'twitch_sync.extra_ca_file'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((context.as_str(), default.as_str()), ("superuser", ""));
    drop(user);
    db.client
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}
