//! The simulator's EventSub REST endpoints over real HTTP, against the rules
//! Twitch's API reference gives that the core's client never exercises (it
//! cannot send two filters or a bad body).

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Simulator};
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::{json, Value};
use std::time::Duration;

fn setup() -> (Simulator, Client, String) {
    let sim = Simulator::start(Config {
        world: WorldConfig {
            channels: 10,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let http = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let v: Value = http
        .post(format!("{}/token", sim.auth_url()))
        .form(&[
            ("client_id", sim.client_id()),
            ("client_secret", sim.client_secret()),
            ("grant_type", "client_credentials".into()),
        ])
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let token = v["access_token"].as_str().unwrap().to_string();
    (sim, http, token)
}

trait BodyJson {
    fn body_json(self, v: &Value) -> Self;
}

impl BodyJson for RequestBuilder {
    fn body_json(self, v: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
}

fn authed(sim: &Simulator, rb: RequestBuilder, token: &str) -> RequestBuilder {
    rb.header("Client-Id", sim.client_id())
        .header("Authorization", format!("Bearer {token}"))
}

fn send(rb: RequestBuilder) -> (u16, Value, bool) {
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    let limits = r.headers().contains_key("ratelimit-remaining");
    let text = r.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        limits,
    )
}

#[test]
fn conduit_and_subscription_rules() {
    let (sim, http, token) = setup();
    let url = |p: &str| format!("{}/eventsub/{p}", sim.helix_url());
    // no token: 401
    let (s, _, _) = send(http.get(url("conduits")));
    assert_eq!(s, 401);
    // bad shard counts: 400
    for body in [
        json!({"shard_count": 0}),
        json!({"shard_count": 20_001}),
        json!({}),
    ] {
        let (s, v, limits) =
            send(authed(&sim, http.post(url("conduits")), &token).body_json(&body));
        assert_eq!(s, 400, "{body}");
        assert_eq!(v["message"], "Invalid shard count.");
        assert!(limits, "rate-limit headers on every answer");
    }
    let (s, v, _) = send(
        authed(&sim, http.post(url("conduits")), &token).body_json(&json!({"shard_count": 2})),
    );
    assert_eq!(s, 200);
    let conduit = v["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["data"][0]["shard_count"], 2);
    // PATCH shards: body fields required; a webhook method is refused per shard
    let (s, _, _) = send(
        authed(&sim, http.patch(url("conduits/shards")), &token).body_json(&json!({"shards": []})),
    );
    assert_eq!(s, 400);
    let (s, v, _) = send(
        authed(&sim, http.patch(url("conduits/shards")), &token).body_json(&json!({
            "conduit_id": conduit,
            "shards": [{"id": "1", "transport": {"method": "carrier_pigeon"}},
                       {"id": "0", "transport": {"method": "websocket"}}]
        })),
    );
    assert_eq!(s, 202);
    assert_eq!(v["data"], json!([]));
    assert_eq!(v["errors"][0]["id"], "1");
    assert_eq!(
        v["errors"][0]["message"],
        "The value specified in the method field is not valid."
    );
    assert_eq!(
        v["errors"][1]["message"],
        "The session_id field is required if you specify the WebSocket transport method."
    );
    // subscriptions: bad type/version, missing condition, webhook transport
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    let sub = |kind: &str, version: &str, b: Option<&str>| {
        let mut body = json!({"type": kind, "version": version,
                              "transport": {"method": "conduit", "conduit_id": conduit}});
        if let Some(b) = b {
            body["condition"] = json!({"broadcaster_user_id": b});
        }
        send(authed(&sim, http.post(url("subscriptions")), &token).body_json(&body))
    };
    assert_eq!(sub("stream.online", "2", Some(&ids[0])).0, 400);
    assert_eq!(sub("channel.update", "1", Some(&ids[0])).0, 400);
    assert_eq!(sub("stream.online", "1", None).0, 400);
    for (i, b) in ids.iter().take(3).enumerate() {
        let (s, v, _) = sub("stream.online", "1", Some(b));
        assert_eq!(s, 202);
        assert_eq!(v["total_cost"], i as u64 + 1);
        assert_eq!(v["data"][0]["transport"]["method"], "conduit");
    }
    let (s, v, _) = sub("stream.online", "1", Some(&ids[0]));
    assert_eq!(
        (s, v["message"].as_str()),
        (409, Some("subscription already exists"))
    );
    // the same type and condition at most 3 times (revoked ones count, enabled ones 409)
    let first = sim.es_subscriptions()[0].0.clone();
    assert!(sim.es_revoke(&first, "authorization_revoked"));
    assert_eq!(sub("stream.online", "1", Some(&ids[0])).0, 202);
    let again: Vec<_> = sim
        .es_subscriptions()
        .into_iter()
        .filter(|s| s.2 == ids[0] && s.3 == "enabled")
        .collect();
    assert!(sim.es_revoke(&again[0].0, "user_removed"));
    assert_eq!(sub("stream.online", "1", Some(&ids[0])).0, 202);
    let again: Vec<_> = sim
        .es_subscriptions()
        .into_iter()
        .filter(|s| s.2 == ids[0] && s.3 == "enabled")
        .collect();
    assert!(sim.es_revoke(&again[0].0, "version_removed"));
    let (s, v, _) = sub("stream.online", "1", Some(&ids[0]));
    assert_eq!(
        (s, v["message"].as_str()),
        (
            429,
            Some("maximum subscriptions with type and condition exceeded")
        )
    );
    // listing: one filter at most; pages of `first`, oldest first, `pagination: {}` at the end
    let (s, v, _) = send(
        authed(&sim, http.get(url("subscriptions")), &token)
            .query(&[("type", "stream.online"), ("status", "enabled")]),
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "The request may specify only one filter query parameter."
    );
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("first".to_string(), "2".to_string())];
        if let Some(a) = &after {
            q.push(("after".into(), a.clone()));
        }
        let (s, v, _) = send(authed(&sim, http.get(url("subscriptions")), &token).query(&q));
        assert_eq!(s, 200);
        assert_eq!(v["total_cost"], 2, "revoked subscriptions cost nothing");
        for d in v["data"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match v["pagination"]["cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => {
                assert_eq!(v["pagination"], json!({}));
                break;
            }
        }
    }
    let all: Vec<String> = sim.es_subscriptions().into_iter().map(|s| s.0).collect();
    assert_eq!(seen, all, "every subscription once, oldest first");
    let (s, v, _) = send(
        authed(&sim, http.get(url("subscriptions")), &token).query(&[("status", "user_removed")]),
    );
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 1));
    // delete: id required, 204, then 404
    assert_eq!(
        send(authed(&sim, http.delete(url("subscriptions")), &token)).0,
        400
    );
    let del = |id: &str| {
        send(authed(&sim, http.delete(url("subscriptions")), &token).query(&[("id", id)])).0
    };
    assert_eq!(del(&all[1]), 204);
    assert_eq!(del(&all[1]), 404);
    // another client's token sees nothing of these (the simulator has one client; a bad token is 401)
    assert_eq!(
        send(authed(&sim, http.get(url("subscriptions")), "not-a-token")).0,
        401
    );
}

#[test]
fn a_deleted_conduit_is_gone_and_its_subscriptions_are_disabled() {
    let (sim, http, token) = setup();
    let url = |p: &str| format!("{}/eventsub/{p}", sim.helix_url());
    let create = || {
        let (s, v, _) = send(
            authed(&sim, http.post(url("conduits")), &token).body_json(&json!({"shard_count": 1})),
        );
        assert_eq!(s, 200);
        v["data"][0]["id"].as_str().unwrap().to_string()
    };
    let (gone, kept) = (create(), create());
    let b = sim.world(|w| w.channels[0].id.clone());
    for (conduit, kind) in [(&gone, "stream.online"), (&kept, "stream.offline")] {
        let (s, _, _) = send(
            authed(&sim, http.post(url("subscriptions")), &token).body_json(&json!({
                "type": kind, "version": "1", "condition": {"broadcaster_user_id": b},
                "transport": {"method": "conduit", "conduit_id": conduit}})),
        );
        assert_eq!(s, 202);
    }
    let del = |id: Option<&str>| {
        let rb = authed(&sim, http.delete(url("conduits")), &token);
        send(match id {
            Some(id) => rb.query(&[("id", id)]),
            None => rb,
        })
        .0
    };
    assert_eq!(del(None), 400);
    assert_eq!(del(Some(&gone)), 204);
    assert_eq!(del(Some(&gone)), 404);
    // gone from Get Conduits; Get / Update Conduit Shards answer 404
    let (_, v, _) = send(authed(&sim, http.get(url("conduits")), &token));
    assert_eq!(v["data"], json!([{"id": kept, "shard_count": 1}]));
    let (s, v, _) = send(
        authed(&sim, http.get(url("conduits/shards")), &token).query(&[("conduit_id", &gone)]),
    );
    assert_eq!(
        (s, v["message"].as_str()),
        (404, Some("Conduit not found."))
    );
    let (s, _, _) = send(
        authed(&sim, http.patch(url("conduits/shards")), &token).body_json(&json!({
            "conduit_id": gone,
            "shards": [{"id": "0", "transport": {"method": "websocket", "session_id": "s"}}]})),
    );
    assert_eq!(s, 404);
    // its subscription is disabled (conduit_deleted) and costs nothing; the
    // other conduit's stays enabled
    let (_, v, _) = send(authed(&sim, http.get(url("subscriptions")), &token));
    let statuses: Vec<(&str, &str)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["transport"]["conduit_id"].as_str().unwrap(),
                d["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (gone.as_str(), "conduit_deleted"),
            (kept.as_str(), "enabled")
        ]
    );
    assert_eq!(v["total_cost"], 1);
    // the in-process way tests delete one: the same rules
    assert!(sim.es_delete_conduit(&kept));
    assert!(!sim.es_delete_conduit(&kept));
    assert!(sim
        .es_subscriptions()
        .iter()
        .all(|s| s.3 == "conduit_deleted"));
    assert!(sim.es_shards(&kept).is_empty());
}
