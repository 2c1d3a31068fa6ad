//! The simulator, over real HTTP, against what Twitch documents.

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Endpoint, Fault, FaultKind, Simulator};
use reqwest::blocking::{Client, Response};
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn start_sim(channels: usize, live_fraction: f64) -> Simulator {
    Simulator::start(Config {
        world: WorldConfig {
            channels,
            live_fraction,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The client-credentials grant with the simulator's own credentials.
fn post_token(sim: &Simulator) -> Response {
    http()
        .post(format!("{}/token", sim.auth_url()))
        .form(&[
            ("client_id", sim.client_id()),
            ("client_secret", sim.client_secret()),
            ("grant_type", "client_credentials".into()),
        ])
        .send()
        .unwrap()
}

fn token(sim: &Simulator) -> String {
    let r = post_token(sim);
    assert_eq!(r.status(), 200);
    let v: Value = r.json_value();
    v["access_token"].as_str().unwrap().to_string()
}

trait JsonValue {
    fn json_value(self) -> Value;
}
impl JsonValue for Response {
    fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().unwrap()).unwrap()
    }
}

fn ids(sim: &Simulator, n: usize) -> Vec<String> {
    sim.world(|w| w.channels.iter().take(n).map(|c| c.id.clone()).collect())
}

fn streams(sim: &Simulator, token: &str, query: &[(&str, String)]) -> Response {
    http()
        .get(format!("{}/streams", sim.helix_url()))
        .query(query)
        .header("Client-Id", sim.client_id())
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .unwrap()
}

fn by_ids(list: &[String]) -> Vec<(&'static str, String)> {
    list.iter().map(|i| ("user_id", i.clone())).collect()
}

#[test]
fn token_endpoint_follows_the_client_credentials_grant() {
    let sim = start_sim(1, 0.0);
    let post = |form: &[(&str, &str)]| {
        http()
            .post(format!("{}/token", sim.auth_url()))
            .form(form)
            .send()
            .unwrap()
    };
    let (id, secret) = (sim.client_id(), sim.client_secret());
    let ok = post(&[
        ("client_id", &id),
        ("client_secret", &secret),
        ("grant_type", "client_credentials"),
    ]);
    assert_eq!(ok.status(), 200);
    let v = ok.json_value();
    assert_eq!(v["token_type"], "bearer");
    assert!(v["expires_in"].as_u64().unwrap() > 50 * 86_400);
    assert_eq!(v["access_token"].as_str().unwrap().len(), 30);

    let bad_secret = post(&[
        ("client_id", &id),
        ("client_secret", "nope"),
        ("grant_type", "client_credentials"),
    ]);
    assert_eq!(bad_secret.status(), 403);
    assert_eq!(
        bad_secret.json_value(),
        serde_json::json!({"status": 403, "message": "invalid client secret"})
    );
    let bad_id = post(&[
        ("client_id", "nope"),
        ("client_secret", &secret),
        ("grant_type", "client_credentials"),
    ]);
    assert_eq!(bad_id.status(), 400);
    assert_eq!(bad_id.json_value()["message"], "invalid client");
    let no_grant = post(&[("client_id", &id), ("client_secret", &secret)]);
    assert_eq!(no_grant.status(), 400);
    let get = http()
        .get(format!("{}/token", sim.auth_url()))
        .send()
        .unwrap();
    assert_eq!(get.status(), 404);
    assert_eq!(sim.counters().tokens_issued, 1);
}

#[test]
fn validate_answers_like_twitch_for_app_tokens() {
    let sim = start_sim(1, 0.0);
    let t = token(&sim);
    let r = http()
        .get(format!("{}/validate", sim.auth_url()))
        .header("Authorization", format!("OAuth {t}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = r.json_value();
    assert_eq!(v["client_id"], sim.client_id().as_str());
    assert_eq!(v["login"], Value::Null);
    assert_eq!(v["user_id"], Value::Null);
    assert_eq!(v["scopes"], serde_json::json!([]));
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    let bad = http()
        .get(format!("{}/validate", sim.auth_url()))
        .header("Authorization", "OAuth wrongtoken")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json_value(),
        serde_json::json!({"status": 401, "message": "invalid access token"})
    );
}

#[test]
fn get_streams_requires_client_id_and_a_matching_live_token() {
    let sim = start_sim(5, 1.0);
    let t = token(&sim);
    let url = format!("{}/streams", sim.helix_url());
    let no_auth = http()
        .get(&url)
        .header("Client-Id", sim.client_id())
        .send()
        .unwrap();
    assert_eq!(no_auth.status(), 401);
    let v = no_auth.json_value();
    assert_eq!(
        (v["error"].as_str(), v["status"].as_u64()),
        (Some("Unauthorized"), Some(401))
    );
    let no_client = http()
        .get(&url)
        .header("Authorization", format!("Bearer {t}"))
        .send()
        .unwrap();
    assert_eq!(no_client.status(), 401);
    let mismatch = http()
        .get(&url)
        .header("Client-Id", "someoneelse")
        .header("Authorization", format!("Bearer {t}"))
        .send()
        .unwrap();
    assert_eq!(mismatch.status(), 401);
    assert_eq!(
        mismatch.json_value()["message"],
        "Client ID and OAuth token do not match"
    );
    assert_eq!(
        streams(&sim, "forged", &[]).json_value()["message"],
        "Invalid OAuth token"
    );
    assert_eq!(streams(&sim, &t, &[]).status(), 200);
    sim.expire_tokens();
    let expired = streams(&sim, &t, &[]);
    assert_eq!(expired.status(), 401);
    assert_eq!(expired.json_value()["message"], "Invalid OAuth token");
    assert_eq!(sim.counters().unauthorized, 5);
}

#[test]
fn page_size_defaults_to_20_and_the_cursor_walks_every_page() {
    let sim = start_sim(100, 1.0);
    let t = token(&sim);
    let all = ids(&sim, 100);
    let mut q = by_ids(&all);
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let v = streams(&sim, &t, &q).json_value();
        let data = v["data"].as_array().unwrap();
        pages += 1;
        assert!(data.len() <= 20);
        seen.extend(
            data.iter()
                .map(|s| s["user_id"].as_str().unwrap().to_string()),
        );
        match v["pagination"]["cursor"].as_str() {
            Some(c) => {
                q = by_ids(&all);
                q.push(("after", c.to_string()));
            }
            None => {
                assert_eq!(v["pagination"], serde_json::json!({}));
                break;
            }
        }
    }
    assert_eq!(pages, 5);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 100);
    assert_eq!(sim.counters().pages, 4);
    assert_eq!(sim.counters().first_per_request[0], None);

    let mut q = by_ids(&all);
    q.push(("first", "100".into()));
    let v = streams(&sim, &t, &q).json_value();
    assert_eq!(v["data"].as_array().unwrap().len(), 100);
    assert_eq!(v["pagination"], serde_json::json!({}));
}

#[test]
fn only_live_channels_are_listed_with_documented_fields() {
    let sim = start_sim(10, 0.5);
    let t = token(&sim);
    let mut q = by_ids(&ids(&sim, 10));
    q.push(("user_id", "999999999".into()));
    let v = streams(&sim, &t, &q).json_value();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 5);
    let live: Vec<String> = sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    for s in data {
        assert!(live.contains(&s["user_id"].as_str().unwrap().to_string()));
        for field in [
            "id",
            "user_login",
            "user_name",
            "game_id",
            "game_name",
            "type",
            "title",
            "language",
            "started_at",
            "thumbnail_url",
        ] {
            assert!(s[field].is_string(), "{field}");
        }
        assert!(s["viewer_count"].is_i64());
        assert_eq!(s["type"], "live");
        assert_eq!(s["tag_ids"], serde_json::json!([]));
        assert!(s["started_at"].as_str().unwrap().ends_with('Z'));
    }
    // viewer count order, as Twitch lists
    let counts: Vec<i64> = data
        .iter()
        .map(|s| s["viewer_count"].as_i64().unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
    // logins select too
    let v = streams(&sim, &t, &[("user_login", "sim_channel_0".into())]).json_value();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_parameters_get_400() {
    let sim = start_sim(200, 0.1);
    let t = token(&sim);
    for first in ["0", "101", "abc", "-1"] {
        let r = streams(&sim, &t, &[("first", first.into())]);
        assert_eq!(r.status(), 400, "first={first}");
        assert_eq!(r.json_value()["error"], "Bad Request");
    }
    assert_eq!(streams(&sim, &t, &by_ids(&ids(&sim, 101))).status(), 400);
    let mut mixed = by_ids(&ids(&sim, 50));
    mixed.extend((0..51).map(|i| ("user_login", format!("sim_channel_{i}"))));
    assert_eq!(streams(&sim, &t, &mixed).status(), 400);
    assert_eq!(streams(&sim, &t, &by_ids(&ids(&sim, 100))).status(), 200);
    assert_eq!(
        streams(&sim, &t, &[("after", "x".into()), ("before", "y".into())]).status(),
        400
    );
    assert_eq!(
        streams(&sim, &t, &[("after", "not-a-cursor".into())]).status(),
        400
    );
    assert_eq!(streams(&sim, &t, &[("type", "vod".into())]).status(), 400);
    assert_eq!(streams(&sim, &t, &[("type", "live".into())]).status(), 200);
}

#[test]
fn the_bucket_sends_its_headers_and_429_when_empty() {
    let sim = Simulator::start(Config {
        bucket_limit: 5,
        bucket_period: Duration::from_secs(60),
        ..Default::default()
    })
    .unwrap();
    let t = token(&sim);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for expect_remaining in (0..5).rev() {
        let r = streams(&sim, &t, &[]);
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(
            h["ratelimit-remaining"],
            expect_remaining.to_string().as_str()
        );
        let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            reset >= now && reset <= now + 61,
            "reset {reset}, now {now}"
        );
    }
    let r = streams(&sim, &t, &[]);
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_eq!(r.json_value()["status"], 429);
    assert_eq!(sim.counters().rate_limited, 1);
}

#[test]
fn the_bucket_refills_continuously() {
    let sim = Simulator::start(Config {
        bucket_limit: 10,
        bucket_period: Duration::from_millis(500),
        ..Default::default()
    })
    .unwrap();
    let t = token(&sim);
    sim.drain_bucket(&sim.client_id());
    assert_eq!(streams(&sim, &t, &[]).status(), 429);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(streams(&sim, &t, &[]).status(), 200);
}

fn with_fault(kind: FaultKind) -> (Simulator, String, Vec<(&'static str, String)>) {
    let sim = start_sim(100, 0.5);
    let t = token(&sim);
    sim.add_fault(Fault::new(kind).times(1));
    let mut q = by_ids(&ids(&sim, 100));
    q.push(("first", "100".into()));
    (sim, t, q)
}

#[test]
fn status_faults_answer_once_with_twitch_error_bodies() {
    let (sim, t, q) = with_fault(FaultKind::Status { status: 503 });
    let r = streams(&sim, &t, &q);
    assert_eq!(r.status(), 503);
    assert_eq!(r.json_value()["status"], 503);
    assert_eq!(streams(&sim, &t, &q).status(), 200);
    assert_eq!(sim.counters().faults_applied, 1);
}

#[test]
fn a_429_fault_carries_rate_limit_headers() {
    let (sim, t, q) = with_fault(FaultKind::Status { status: 429 });
    let r = streams(&sim, &t, &q);
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("ratelimit-reset"));
}

#[test]
fn delay_faults_outlast_a_client_timeout() {
    let (sim, t, q) = with_fault(FaultKind::Delay { ms: 800 });
    let c = Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = c
        .get(format!("{}/streams", sim.helix_url()))
        .query(&q)
        .header("Client-Id", sim.client_id())
        .header("Authorization", format!("Bearer {t}"))
        .send();
    assert!(r.unwrap_err().is_timeout());
}

#[test]
fn dropped_connections_truncated_and_malformed_bodies() {
    let (sim, t, q) = with_fault(FaultKind::DropMidBody);
    let r = streams(&sim, &t, &q);
    assert!(r.bytes().is_err(), "the body must end early");

    let (sim, t, q) = with_fault(FaultKind::Truncated);
    let body = streams(&sim, &t, &q).bytes().unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    assert!(body.starts_with(b"{\"data\""));

    let (sim, t, q) = with_fault(FaultKind::Malformed);
    let r = streams(&sim, &t, &q);
    assert_eq!(r.status(), 200);
    assert!(serde_json::from_slice::<Value>(&r.bytes().unwrap()).is_err());
}

#[test]
fn oversized_and_trickled_bodies() {
    let (sim, t, q) = with_fault(FaultKind::Oversized { bytes: 3_000_000 });
    let body = streams(&sim, &t, &q).bytes().unwrap();
    assert!(body.len() >= 2_999_000, "{}", body.len());
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["data"].is_array());

    let (sim, t, q) = with_fault(FaultKind::Trickle {
        chunk: 2000,
        pause_ms: 40,
    });
    let start = Instant::now();
    let body = streams(&sim, &t, &q).bytes().unwrap();
    let chunks = body.len().div_ceil(2000) as u32;
    assert!(
        start.elapsed() >= Duration::from_millis(40) * (chunks - 1),
        "{:?}",
        start.elapsed()
    );
    assert!(serde_json::from_slice::<Value>(&body).is_ok());
}

#[test]
fn listing_quirks_empty_page_cursor_loop_duplicates() {
    let (sim, t, q) = with_fault(FaultKind::EmptyPage);
    let v = streams(&sim, &t, &q).json_value();
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    assert!(v["pagination"]["cursor"].is_string());

    let sim2 = start_sim(100, 1.0);
    let t2 = token(&sim2);
    sim2.add_fault(Fault::new(FaultKind::CursorLoop));
    let mut q2 = by_ids(&ids(&sim2, 100));
    q2.push(("first", "30".into()));
    let v1 = streams(&sim2, &t2, &q2).json_value();
    let mut q3 = q2.clone();
    q3.push(("after", v1["pagination"]["cursor"].as_str().unwrap().into()));
    let v2 = streams(&sim2, &t2, &q3).json_value();
    assert_eq!(v1["data"], v2["data"], "the loop leads back to page one");

    let sim3 = start_sim(100, 1.0);
    let t3 = token(&sim3);
    sim3.add_fault(Fault::new(FaultKind::DuplicateAcrossPages));
    let v1 = streams(
        &sim3,
        &t3,
        &q2.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>(),
    )
    .json_value();
    let mut q4 = q2.clone();
    q4.push(("after", v1["pagination"]["cursor"].as_str().unwrap().into()));
    let v2 = streams(&sim3, &t3, &q4).json_value();
    assert_eq!(v1["data"][29]["id"], v2["data"][0]["id"]);
}

#[test]
fn faults_can_target_one_broadcaster_and_the_auth_server() {
    let sim = start_sim(200, 0.5);
    let t = token(&sim);
    let all = ids(&sim, 200);
    sim.add_fault(Fault::new(FaultKind::Status { status: 500 }).for_user(&all[150]));
    assert_eq!(streams(&sim, &t, &by_ids(&all[..100])).status(), 200);
    assert_eq!(streams(&sim, &t, &by_ids(&all[100..])).status(), 500);
    sim.add_fault(Fault::new(FaultKind::Status { status: 503 }).on(Endpoint::Token));
    assert_eq!(post_token(&sim).status(), 503);
}

#[test]
fn the_world_changes_restarts_and_hides() {
    let sim = start_sim(10, 1.0);
    let t = token(&sim);
    let id = ids(&sim, 1).remove(0);
    let before = sim.world(|w| w.stream_of(&id).unwrap().id.clone());
    sim.world(|w| w.restart(&id));
    let q = vec![("user_id", id.clone())];
    let v = streams(&sim, &t, &q).json_value();
    assert_ne!(v["data"][0]["id"].as_str().unwrap(), before);
    sim.world(|w| w.hide(&id, 1));
    assert_eq!(
        streams(&sim, &t, &q).json_value()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        streams(&sim, &t, &q).json_value()["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    sim.world(|w| w.go_offline(&id));
    assert_eq!(
        streams(&sim, &t, &q).json_value()["data"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(sim.counters().ids_per_request, vec![1, 1, 1, 1]);
}

#[test]
fn latency_applies_to_every_answer() {
    let sim = start_sim(1, 1.0);
    let t = token(&sim);
    sim.set_latency(Duration::from_millis(60));
    let start = Instant::now();
    assert_eq!(streams(&sim, &t, &[]).status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[test]
fn admin_routes_serve_the_binary() {
    let sim = start_sim(10, 0.5);
    let base = format!("http://{}", sim.addr());
    let c = http();
    let r = c
        .post(format!("{base}/_sim/faults"))
        .body(r#"{"kind":"status","status":502,"times":1}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = token(&sim);
    assert_eq!(streams(&sim, &t, &[]).status(), 502);
    let id = ids(&sim, 1).remove(0);
    let r = c
        .post(format!("{base}/_sim/world"))
        .body(format!(r#"{{"op":"go_offline","id":"{id}"}}"#))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = c
        .get(format!("{base}/_sim/counters"))
        .send()
        .unwrap()
        .json_value();
    assert_eq!(v["streams_requests"], 1);
    assert_eq!(v["tokens_issued"], 1);
}

#[test]
fn directories_filter_by_game_and_language_by_viewers_with_cursors() {
    let sim = start_sim(400, 1.0);
    let t = token(&sim);
    // 250 streams in one category, 100 of them in German.
    sim.world(|w| {
        let ids: Vec<String> = w.channels.iter().map(|c| c.id.clone()).collect();
        for (k, id) in ids.iter().enumerate() {
            if k < 250 {
                assert!(w.set_game(id, "777", "Test Game"));
                assert!(w.set_language(id, if k < 100 { "de" } else { "en" }));
            } else {
                w.set_game(id, "888", "Other Game");
                w.set_language(id, "en");
            }
        }
    });
    let walk = |query: Vec<(&str, String)>| -> (Vec<Value>, usize) {
        let mut all = Vec::new();
        let mut pages = 0;
        let mut after: Option<String> = None;
        loop {
            let mut q = query.clone();
            q.push(("type", "live".into()));
            q.push(("first", "100".into()));
            if let Some(a) = &after {
                q.push(("after", a.clone()));
            }
            let v: Value = streams(&sim, &t, &q).json_value();
            pages += 1;
            all.extend(v["data"].as_array().unwrap().iter().cloned());
            match v["pagination"]["cursor"].as_str() {
                Some(c) => after = Some(c.to_string()),
                None => break,
            }
        }
        (all, pages)
    };
    let (all, pages) = walk(vec![("game_id", "777".into())]);
    assert_eq!((all.len(), pages), (250, 3));
    assert!(all.iter().all(|s| s["game_id"] == "777"));
    let counts: Vec<i64> = all
        .iter()
        .map(|s| s["viewer_count"].as_i64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "by viewer count, most first"
    );
    let (de, pages) = walk(vec![("game_id", "777".into()), ("language", "de".into())]);
    assert_eq!((de.len(), pages), (100, 1));
    assert!(de.iter().all(|s| s["language"] == "de"));
    // Repeated values: any of them matches.
    let (both, _) = walk(vec![
        ("game_id", "777".into()),
        ("game_id", "888".into()),
        ("language", "de".into()),
        ("language", "en".into()),
    ]);
    assert_eq!(both.len(), 400);
    // A language alone, and filters together with user_id (every filter must match).
    let (en, _) = walk(vec![("language", "en".into()), ("game_id", "777".into())]);
    assert_eq!(en.len(), 150);
    let first_de = de[0]["user_id"].as_str().unwrap().to_string();
    let v: Value = streams(
        &sim,
        &t,
        &[("user_id", first_de.clone()), ("game_id", "888".into())],
    )
    .json_value();
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
    assert_eq!(sim.counters().directory_requests, 3 + 1 + 4 + 2 + 1);

    // As Twitch answers: more than 100 game ids or languages, a bad first, a bad type.
    let many = |name: &'static str| -> Vec<(&'static str, String)> {
        (0..101).map(|i| (name, i.to_string())).collect()
    };
    for (q, what) in [
        (many("game_id"), "game_id"),
        (many("language"), "language"),
        (
            vec![("game_id", "777".into()), ("first", "0".into())],
            "first",
        ),
        (
            vec![("game_id", "777".into()), ("first", "101".into())],
            "first",
        ),
        (
            vec![("game_id", "777".into()), ("type", "vodcast".into())],
            "type",
        ),
    ] {
        let r = streams(&sim, &t, &q);
        assert_eq!(r.status(), 400, "{what}");
        let v: Value = r.json_value();
        assert!(v["message"].as_str().unwrap().contains(what), "{v}");
    }
    // 100 of each is allowed.
    let mut q = many("game_id");
    q.pop();
    assert_eq!(streams(&sim, &t, &q).status(), 200);
}

#[test]
fn faults_can_target_a_category_after_some_pages() {
    let sim = start_sim(300, 1.0);
    let t = token(&sim);
    sim.world(|w| {
        let ids: Vec<String> = w.channels.iter().map(|c| c.id.clone()).collect();
        for id in &ids {
            w.set_game(id, "777", "Test Game");
        }
    });
    sim.add_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .for_game("777")
            .skip(1)
            .times(1),
    );
    let q = vec![("game_id", "777".to_string()), ("first", "100".into())];
    assert_eq!(streams(&sim, &t, &q).status(), 200);
    assert_eq!(streams(&sim, &t, &q).status(), 503);
    assert_eq!(streams(&sim, &t, &q).status(), 200);
    // Requests for other games or by id are never hit.
    sim.add_fault(Fault::new(FaultKind::Status { status: 500 }).for_game("999"));
    assert_eq!(streams(&sim, &t, &q).status(), 200);
    assert_eq!(streams(&sim, &t, &by_ids(&ids(&sim, 5))).status(), 200);
}
