//! EventSub's webhook transport (issue 14): the simulator's signed deliveries
//! POSTed over real HTTP to a small receiver in this test, which passes the raw
//! body and the headers to `twitch_sync.eventsub_webhook` the two documented
//! ways (README "Webhook transport"):
//!
//! - `/rpc/twitch_eventsub`: as PostgREST does it (PostgREST is not installed
//!   on this machine, so the receiver plays its part): as the `authenticator`
//!   login role, `set_config('role', <anon role>)`, `request.headers` = the
//!   request's headers as a JSON object with lowercased names, the body passed
//!   to the README's wrapper `api.twitch_eventsub(json)` (PostgREST's single
//!   unnamed parameter, for Twitch's `Content-Type: application/json`), the
//!   answer's `Content-Type` from `response.headers`, SQLSTATEs mapped to HTTP
//!   statuses by PostgREST's table (28* → 403, 55* → 500, 42501 → 401, else 400);
//! - `/explicit`: the headers as the function's arguments, as a superuser.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, SystemTime};
use twitch_sync_e2e::helix_sim::webhook::{
    Delivery, WebhookReply, WebhookSender, WebhookSubscription,
};
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::serde_json::{self, json, Value};
use twitch_sync_e2e::{error_text, log_messages, sqlstate, world, Cluster, TestDb};

// Twitch's rule is 10 to 100 ASCII characters: spaces are allowed, and every
// signature in these tests is checked with a secret that has some.
const SECRET: &str = "hunter2 very-secret webhook key";

/// PostgREST's status for a SQLSTATE (docs, "Errors": HTTP Status Codes).
fn http_status(code: &str) -> u16 {
    match code {
        "42501" => 401, // anonymous: 401, authenticated: 403
        "42883" | "42P01" => 404,
        c if c.starts_with("28") || c.starts_with("0L") || c.starts_with("0P") => 403,
        c if c.starts_with("08") || c.starts_with("53") => 503,
        c if [
            "09", "25", "2D", "38", "39", "3B", "40", "54", "55", "57", "58", "F0", "HV", "XX",
        ]
        .iter()
        .any(|p| c.starts_with(p)) =>
        {
            500
        }
        _ => 400,
    }
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn read_request(s: &mut std::net::TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        if l == "\r\n" || l.is_empty() {
            break;
        }
        let (k, v) = l.trim_end().split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        path,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// The answer: status, content type, body.
type Answer = (u16, String, String);

fn error_answer(e: &twitch_sync_e2e::postgres::Error) -> Answer {
    let code = sqlstate(e);
    let db = e.as_db_error();
    let doc = json!({"code": code, "message": db.map(|d| d.message()),
                     "details": db.and_then(|d| d.detail()), "hint": db.and_then(|d| d.hint())});
    (
        http_status(&code),
        "application/json".into(),
        doc.to_string(),
    )
}

fn content_type(response_headers: Option<String>) -> String {
    response_headers
        .and_then(|h| serde_json::from_str::<Value>(&h).ok())
        .and_then(|v| {
            v.as_array()?.iter().find_map(|o| {
                o.as_object()?
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .and_then(|(_, v)| v.as_str().map(str::to_string))
            })
        })
        .unwrap_or_else(|| "application/json".into())
}

/// As PostgREST calls `POST /rpc/twitch_eventsub` for the anonymous role.
fn postgrest(c: &mut Client, anon: &str, req: &Request) -> Answer {
    let headers: serde_json::Map<String, Value> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
        .collect();
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT set_config('role', $1, true), set_config('request.method', 'POST', true),
                set_config('request.path', '/rpc/twitch_eventsub', true),
                set_config('request.headers', $2, true)",
        &[&anon, &Value::Object(headers).to_string()],
    )
    .unwrap();
    // PostgREST: `$1::json` with the raw body as an untyped parameter.
    match tx.query_one(
        "SELECT api.twitch_eventsub($1::text::json)::text",
        &[&req.body],
    ) {
        Ok(row) => {
            let body: String = row.get(0);
            let h: Option<String> = tx
                .query_one("SELECT current_setting('response.headers', true)", &[])
                .unwrap()
                .get(0);
            tx.commit().unwrap();
            (200, content_type(h), body)
        }
        Err(e) => error_answer(&e),
    }
}

/// The headers as arguments, as a superuser.
fn explicit(c: &mut Client, req: &Request) -> Answer {
    let h = |name: &str| -> Option<String> {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut tx = c.transaction().unwrap();
    match tx.query_one(
        "SELECT twitch_sync.eventsub_webhook($1, $2, $3, $4, $5, $6, $7)",
        &[
            &req.body,
            &h("Twitch-Eventsub-Message-Id"),
            &h("Twitch-Eventsub-Message-Timestamp"),
            &h("Twitch-Eventsub-Message-Signature"),
            &h("Twitch-Eventsub-Message-Type"),
            &h("Twitch-Eventsub-Subscription-Type"),
            &h("Twitch-Eventsub-Subscription-Version"),
        ],
    ) {
        Ok(row) => {
            let body: String = row.get(0);
            let ct: Option<String> = tx
                .query_one("SELECT current_setting('response.headers', true)", &[])
                .unwrap()
                .get(0);
            tx.commit().unwrap();
            (200, content_type(ct), body)
        }
        Err(e) => error_answer(&e),
    }
}

/// A small HTTP receiver on loopback for one database; returns its base URL.
/// `anon`: the PostgREST-style path's anonymous role (see [`wire_postgrest`]).
fn start_receiver(db: &str, anon: Option<&str>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let (db, anon) = (db.to_string(), anon.map(str::to_string));
    std::thread::spawn(move || {
        let cluster = Cluster::shared();
        let mut as_anon = anon
            .as_ref()
            .map(|a| (cluster.connect_as(&db, &format!("{a}_auth")), a.clone()));
        let mut superuser = cluster.connect(&db);
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let Some(req) = read_request(&mut s) else {
                continue;
            };
            let (status, ct, body) = match (req.path.as_str(), as_anon.as_mut()) {
                ("/rpc/twitch_eventsub", Some((c, anon))) => postgrest(c, anon, &req),
                ("/explicit", _) => explicit(&mut superuser, &req),
                _ => (404, "text/plain".into(), "not found".into()),
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

/// The README's PostgREST wiring, for an anonymous role `anon` (and its login
/// role `<anon>_auth`, PostgREST's authenticator).
fn wire_postgrest(c: &mut Client, anon: &str) {
    c.batch_execute(&format!(
        "CREATE ROLE {anon} NOLOGIN;
         CREATE ROLE {anon}_auth LOGIN NOINHERIT;
         GRANT {anon} TO {anon}_auth;
         GRANT USAGE ON SCHEMA twitch_sync TO {anon};
         GRANT EXECUTE ON FUNCTION twitch_sync.eventsub_webhook(text, text, text, text, text, text, text) TO {anon};
         CREATE SCHEMA api;
         CREATE DOMAIN api.\"*/*\" AS text;
         CREATE FUNCTION api.twitch_eventsub(json) RETURNS api.\"*/*\"
         LANGUAGE sql AS $$ SELECT twitch_sync.eventsub_webhook($1::text) $$;
         GRANT USAGE ON SCHEMA api TO {anon};"
    ))
    .expect("PostgREST wiring");
}

fn counts(c: &mut Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM twitch_sync.events),
                    (SELECT count(*) FROM twitch_sync.streams WHERE is_live)",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

fn assert_refused(reply: &WebhookReply, status: u16, code: &str, signature: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["code"], code, "{doc}");
    let text = doc.to_string();
    assert!(
        !text.contains(SECRET) && !text.contains(signature.trim_start_matches("sha256=")),
        "no secret or signature in the error: {text}"
    );
}

/// The status recorded for a subscription of the worker's table.
fn subscription_status(c: &mut Client, subscription_id: &str) -> String {
    c.query_one(
        "SELECT status FROM twitch_sync.eventsub_subscriptions WHERE subscription_id = $1",
        &[&subscription_id],
    )
    .unwrap()
    .get(0)
}

fn signature_of(d: &Delivery) -> String {
    d.headers(SECRET)
        .into_iter()
        .find(|(k, _)| k == "Twitch-Eventsub-Message-Signature")
        .unwrap()
        .1
}

#[test]
fn signed_deliveries_over_http_through_the_postgrest_wiring() {
    let mut db = TestDb::new(world(6, 0.0));
    let ids = db.track_first(3);
    let anon = format!("anon_{}", db.name);
    wire_postgrest(&mut db.client, &anon);
    db.client
        .execute("SELECT twitch_sync.set_webhook_secret($1)", &[&SECRET])
        .unwrap();
    let base = start_receiver(&db.name, Some(&anon));
    let callback = format!("{base}/rpc/twitch_eventsub");
    let twitch = WebhookSender::new(&callback, SECRET);
    let login = db.sim.world(|w| w.channels[0].login.clone());
    let online_sub = WebhookSubscription::new("stream.online", &ids[0], &callback);
    let offline_sub = WebhookSubscription::new("stream.offline", &ids[0], &callback);

    // The verification challenge: 200, the raw challenge as the whole body, text/plain.
    let challenge = "pogchamp-kappa-360noscope-vohiyo";
    let reply = twitch
        .send(&Delivery::verification(&online_sub, challenge))
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, challenge);
    assert_eq!(reply.header("content-length"), Some("32"));
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    // a conduit webhook shard's challenge too
    let reply = twitch
        .send(&Delivery::shard_verification(
            "3f1c2a87-1111",
            "0",
            "shard-challenge",
        ))
        .unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "shard-challenge")
    );
    // a challenge for a type twitch_sync does not handle is not answered (400)
    let other = WebhookSubscription::new("channel.update", &ids[0], &callback);
    let reply = twitch
        .send(&Delivery::verification(&other, "nope"))
        .unwrap();
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(counts(&mut db.client), (0, 0));

    // stream.online: the live row opens, one 'online' event, within a few seconds.
    db.sim.world(|w| w.go_live(&ids[0]));
    let (stream_id, started_at) = db.sim.world(|w| {
        let s = w.stream_of(&ids[0]).unwrap();
        (s.id.clone(), s.started_at)
    });
    let online = Delivery::online(&online_sub, &login, &stream_id, started_at);
    let reply = twitch.send(&online).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "applied"),
        "{reply:?}"
    );
    assert!(
        reply.elapsed < Duration::from_secs(2),
        "{:?}",
        reply.elapsed
    );
    let live: Option<String> = db
        .client
        .query_one(
            "SELECT stream_id FROM twitch_sync.streams WHERE broadcaster_id = $1 AND is_live",
            &[&ids[0]],
        )
        .unwrap()
        .get(0);
    assert_eq!(live.as_deref(), Some(stream_id.as_str()));
    assert_eq!(counts(&mut db.client), (1, 1));

    // Twitch sends it again (same message id): applied once.
    let reply = twitch.send(&online.resend()).unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "duplicate"));
    assert_eq!(counts(&mut db.client), (1, 1));

    // A bad signature and a stale timestamp: 403 (28000), nothing applied.
    let forged = Delivery::offline(&offline_sub, &login, Some(&stream_id)).bad_signature();
    let reply = twitch.send(&forged).unwrap();
    assert_refused(&reply, 403, "28000", &signature_of(&forged));
    let stale = Delivery::offline(&offline_sub, &login, Some(&stream_id))
        .stale(Duration::from_secs(11 * 60));
    let reply = twitch.send(&stale).unwrap();
    assert_refused(&reply, 403, "28000", &signature_of(&stale));
    // a body changed on the way (the signature is over the raw bytes)
    let tampered = Delivery::offline(&offline_sub, &login, Some(&stream_id))
        .tampered(|b| b.replace("\"enabled\"", "\"enabled\" "));
    let reply = twitch.send(&tampered).unwrap();
    assert_refused(&reply, 403, "28000", &signature_of(&tampered));
    assert_eq!(counts(&mut db.client), (1, 1));
    let none: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM twitch_sync.eventsub_messages WHERE message_id = ANY($1)",
            &[&vec![
                forged.message_id.clone(),
                stale.message_id.clone(),
                tampered.message_id.clone(),
            ]],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        none, 0,
        "refused messages leave no trace, not even their id"
    );

    // The raw body is what is signed: a body with other whitespace and escapes
    // than serde's goes through PostgREST's json parameter byte for byte.
    let mut offline = Delivery::offline(&offline_sub, &login, Some(&stream_id));
    offline.body = format!(
        "{{\n  \"subscription\" : {},\n  \"event\": {{\"broadcaster_user_id\":\"{}\", \"broadcaster_user_login\":\"{login}\",\
         \"broadcaster_user_name\":\"Caf\\u00e9 \u{1F600}\", \"id\":\"{stream_id}\"}}\n}}\n",
        serde_json::from_str::<Value>(&offline.body).unwrap()["subscription"],
        ids[0]
    );
    let reply = twitch.send(&offline).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "applied"),
        "{reply:?}"
    );
    assert_eq!(counts(&mut db.client), (2, 0));
    let ended: Option<String> = db
        .client
        .query_one(
            "SELECT event FROM twitch_sync.events ORDER BY event_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended.as_deref(), Some("offline"));

    // Revocation: recorded on the subscription's row.
    db.client
        .execute(
            "SELECT twitch_sync.eventsub_record_subscription($1, 'stream.online', $2, 'enabled')",
            &[&ids[0], &online_sub.id],
        )
        .unwrap();
    let reply = twitch
        .send(&Delivery::revocation(&online_sub, "authorization_revoked"))
        .unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "revocation recorded"),
        "{reply:?}"
    );
    assert_eq!(
        subscription_status(&mut db.client, &online_sub.id),
        "authorization_revoked"
    );
    // Twitch signs the id, the timestamp and the body, not the message type: a
    // captured notification sent again as a "revocation" is not one.
    let mut replayed = online.resend();
    replayed.message_type = "revocation".into();
    let reply = twitch.send(&replayed).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "dropped: malformed"),
        "{reply:?}"
    );
    assert_eq!(
        subscription_status(&mut db.client, &online_sub.id),
        "authorization_revoked",
        "the replay changed nothing"
    );
    let reply = twitch
        .send(&Delivery::revocation(&offline_sub, "user_removed"))
        .unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "revocation of a subscription not on record")
    );

    // An untracked broadcaster's event: 2xx, nothing applied.
    let untracked = db.sim.world(|w| w.channels[5].id.clone());
    let sub = WebhookSubscription::new("stream.online", &untracked, &callback);
    let reply = twitch
        .send(&Delivery::online(&sub, "someone", "777", SystemTime::now()))
        .unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "untracked"));
    assert_eq!(counts(&mut db.client), (2, 0));

    // The anonymous role reaches the receiver and nothing else.
    let mut auth = db.cluster().connect_as(&db.name, &format!("{anon}_auth"));
    auth.batch_execute(&format!("SET ROLE {anon}")).unwrap();
    for sql in [
        "SELECT * FROM twitch_sync.credentials",
        "SELECT twitch_sync.set_webhook_secret('0123456789abc')",
        "SELECT twitch_sync.apply_eventsub('x', now(), 'offline', '1')",
        "SELECT * FROM twitch_sync.status()",
    ] {
        let e = auth.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", error_text(&e));
    }

    // The secret is nowhere in the server log (the log read is the one this
    // database's refusals above went to).
    let log = server_log_with(
        &db,
        &[
            "ERROR:  twitch_sync.eventsub_webhook: the signature does not match the message",
            "ERROR:  permission denied for table credentials",
        ],
    );
    assert!(
        !log.contains(SECRET),
        "the webhook secret is in the server log"
    );
}

/// The server log, once it is shown to be the log this database's messages
/// went to: each of `expected` is in a message logged for `db`.
fn server_log_with(db: &TestDb, expected: &[&str]) -> String {
    let log = db.cluster().log();
    let ours = log_messages(&log, &db.name);
    for e in expected {
        assert!(
            ours.iter().any(|m| m.contains(e)),
            "the server log has no message {e:?} for {}: {ours:#?}",
            db.name
        );
    }
    log
}

#[test]
fn explicit_headers_secret_rules_and_refusals() {
    // Without credentials there is nowhere to store the secret.
    let mut bare = TestDb::bare(world(2, 0.0));
    let e = bare
        .client
        .execute("SELECT twitch_sync.set_webhook_secret($1)", &[&SECRET])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", error_text(&e));
    assert!(error_text(&e).contains("set_credentials"));

    let mut db = TestDb::new(world(4, 0.0));
    let ids = db.track_first(2);
    let base = start_receiver(&db.name, None);
    let callback = format!("{base}/explicit");
    let twitch = WebhookSender::new(&callback, SECRET);
    let sub = WebhookSubscription::new("stream.online", &ids[1], &callback);
    db.sim.world(|w| w.go_live(&ids[1]));
    let stream_id = db.sim.world(|w| w.stream_of(&ids[1]).unwrap().id.clone());
    let online = Delivery::online(&sub, "x", &stream_id, SystemTime::now());

    // No secret stored yet: 55000 (PostgREST: 500, so Twitch retries), nothing applied.
    let reply = twitch.send(&online).unwrap();
    assert_refused(&reply, 500, "55000", &signature_of(&online));
    assert!(reply.body.contains("set_webhook_secret"), "{}", reply.body);
    assert_eq!(counts(&mut db.client), (0, 0));

    // Twitch's rule for secrets: 10 to 100 ASCII characters; the error says what to fix
    // and neither it nor the server log shows the candidate.
    for bad in [
        "shortXYZ1".to_string(),
        format!("{}XYZ2", "x".repeat(100)),
        "has a tab\tXYZ3 inside".to_string(),
        "non-ascii-é-XYZ4".to_string(),
    ] {
        let e = db
            .client
            .execute("SELECT twitch_sync.set_webhook_secret($1)", &[&bad])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{bad}: {}", error_text(&e));
        let text = error_text(&e);
        assert!(text.contains("10 to 100"), "{text}");
        assert!(!text.contains(&bad), "{text}");
    }
    // a literal in the statement text is not logged either when refused
    let e = db
        .client
        .batch_execute("SELECT twitch_sync.set_webhook_secret('literal XYZ5 é non-ASCII')")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    let log = db.cluster().log();
    // The log read is the one the five refusals went to: one ERROR each.
    let refusals = log_messages(&log, &db.name)
        .into_iter()
        .filter(|m| m.contains("ERROR:  invalid webhook secret: it must be 10 to 100"))
        .count();
    assert_eq!(
        refusals, 5,
        "the refusals in the server log for {}",
        db.name
    );
    for marker in ["XYZ1", "XYZ2", "XYZ3", "XYZ4", "XYZ5"] {
        assert!(!log.contains(marker), "{marker} in the server log");
    }

    db.client
        .execute("SELECT twitch_sync.set_webhook_secret($1)", &[&SECRET])
        .unwrap();
    // the secret is in the owner-only table, and not in status()
    let status: String = db
        .client
        .query_one(
            "SELECT row_to_json(s)::text FROM twitch_sync.status() s",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!status.contains(SECRET));

    // Headers as arguments: the same rules.
    let reply = twitch.send(&online).unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "applied"),
        "{reply:?}"
    );
    assert_eq!(counts(&mut db.client), (1, 1));
    let reply = twitch.send(&online.resend()).unwrap();
    assert_eq!(reply.body, "duplicate");
    let forged = Delivery::offline(&sub, "x", None).bad_signature();
    assert_refused(
        &twitch.send(&forged).unwrap(),
        403,
        "28000",
        &signature_of(&forged),
    );
    assert_eq!(counts(&mut db.client), (1, 1));

    // Missing headers, a NULL body, an unknown type: 22023 (400).
    let offline_sub = WebhookSubscription::new("stream.offline", &ids[1], &callback);
    let d = Delivery::offline(&offline_sub, "x", None);
    let hs: HashMap<String, String> = d.headers(SECRET).into_iter().collect();
    let call = |c: &mut Client, args: [Option<&str>; 5]| {
        c.query_one(
            "SELECT twitch_sync.eventsub_webhook($1, $2, $3, $4, $5)",
            &[&args[0], &args[1], &args[2], &args[3], &args[4]],
        )
    };
    let h = |n: &str| Some(hs[n].as_str());
    let full = [
        Some(d.body.as_str()),
        h("Twitch-Eventsub-Message-Id"),
        h("Twitch-Eventsub-Message-Timestamp"),
        h("Twitch-Eventsub-Message-Signature"),
        h("Twitch-Eventsub-Message-Type"),
    ];
    for (i, name) in [
        (0, "body"),
        (1, "Twitch-Eventsub-Message-Id"),
        (2, "Twitch-Eventsub-Message-Timestamp"),
        (3, "Twitch-Eventsub-Message-Signature"),
        (4, "Twitch-Eventsub-Message-Type"),
    ] {
        let mut args = full;
        args[i] = None;
        let e = call(&mut db.client, args).unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{name}: {}", error_text(&e));
        assert!(error_text(&e).contains(name), "{}", error_text(&e));
    }
    // an empty body, as README says (it was answered `dropped: malformed`)
    let mut args = full;
    args[0] = Some("");
    let e = call(&mut db.client, args).unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", error_text(&e));
    assert!(error_text(&e).contains("body"), "{}", error_text(&e));
    let mut args = full;
    args[4] = Some("session_welcome");
    let e = call(&mut db.client, args).unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", error_text(&e));
    // a signature in the wrong form: 28000, and the error does not repeat it
    let mut args = full;
    args[3] = Some("sha256=zz-not-hex");
    let e = call(&mut db.client, args).unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    assert!(!error_text(&e).contains("zz-not-hex"));
    assert_eq!(counts(&mut db.client), (1, 1));
    // all present: applied (the offline ends the broadcast)
    assert_eq!(
        call(&mut db.client, full).unwrap().get::<_, String>(0),
        "applied"
    );
    assert_eq!(counts(&mut db.client), (2, 0));

    let log = server_log_with(
        &db,
        &[
            "ERROR:  twitch_sync.eventsub_webhook: the signature does not match the message",
            "ERROR:  twitch_sync.eventsub_webhook: the Twitch-Eventsub-Message-Signature header is missing or not sha256=",
        ],
    );
    assert!(
        !log.contains(SECRET),
        "the webhook secret is in the server log"
    );
}

#[test]
fn headers_from_request_headers_as_postgrest_sets_them() {
    let mut db = TestDb::new(world(3, 0.0));
    let ids = db.track_first(1);
    db.client
        .execute("SELECT twitch_sync.set_webhook_secret($1)", &[&SECRET])
        .unwrap();
    let sub = WebhookSubscription::new("stream.online", &ids[0], "https://example.com/cb");
    let d = Delivery::online(&sub, "someone", "4242", SystemTime::now());
    // PostgREST lowercases header names; any case is accepted.
    let headers: serde_json::Map<String, Value> = d
        .headers(SECRET)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), json!(v)))
        .chain([("content-type".to_string(), json!("application/json"))])
        .collect();
    let mut tx = db.client.transaction().unwrap();
    tx.query_one(
        "SELECT set_config('request.headers', $1, true)",
        &[&Value::Object(headers.clone()).to_string()],
    )
    .unwrap();
    let answer: String = tx
        .query_one("SELECT twitch_sync.eventsub_webhook($1)", &[&d.body])
        .unwrap()
        .get(0);
    assert_eq!(answer, "applied");
    let response: String = tx
        .query_one("SELECT current_setting('response.headers')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        serde_json::from_str::<Value>(&response).unwrap(),
        json!([{"Content-Type": "text/plain; charset=utf-8"}])
    );
    // an explicit argument wins over request.headers: a wrong id fails the signature
    let e = tx
        .query_one(
            "SELECT twitch_sync.eventsub_webhook($1, 'another-id')",
            &[&d.body],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", error_text(&e));
    drop(tx); // rolled back: the applied online too
    assert_eq!(counts(&mut db.client), (0, 0));

    // committed this time
    let mut tx = db.client.transaction().unwrap();
    tx.query_one(
        "SELECT set_config('request.headers', $1, true)",
        &[&Value::Object(headers).to_string()],
    )
    .unwrap();
    let answer: String = tx
        .query_one("SELECT twitch_sync.eventsub_webhook($1)", &[&d.body])
        .unwrap()
        .get(0);
    assert_eq!(answer, "applied");
    tx.commit().unwrap();
    assert_eq!(counts(&mut db.client), (1, 1));
    // no request.headers and no arguments: the first missing header is named
    let e = db
        .client
        .query_one("SELECT twitch_sync.eventsub_webhook($1)", &[&d.body])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    assert!(error_text(&e).contains("Twitch-Eventsub-Message-Id"));
    // request.headers that is not a JSON object is named as the problem
    let mut tx = db.client.transaction().unwrap();
    tx.query_one(
        "SELECT set_config('request.headers', 'not json', true)",
        &[],
    )
    .unwrap();
    let e = tx
        .query_one("SELECT twitch_sync.eventsub_webhook($1)", &[&d.body])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    assert!(
        error_text(&e).contains("request.headers is not a JSON object"),
        "{}",
        error_text(&e)
    );
    tx.rollback().unwrap();
    // a header given twice (in two cases) is named as such, not only as missing
    let mut tx = db.client.transaction().unwrap();
    tx.query_one(
        "SELECT set_config('request.headers', $1, true)",
        &[&r#"{"Twitch-Eventsub-Message-Id": "a", "twitch-eventsub-message-id": "b"}"#],
    )
    .unwrap();
    let e = tx
        .query_one("SELECT twitch_sync.eventsub_webhook($1)", &[&d.body])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    assert!(error_text(&e).contains("given twice"), "{}", error_text(&e));
}
