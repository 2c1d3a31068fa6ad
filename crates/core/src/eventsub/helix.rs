//! Helix calls for EventSub over a conduit, with the app access token:
//! conduits (get, create), conduit shards (update), subscriptions (create,
//! list, delete) for `stream.online` / `stream.offline` version 1 with
//! transport `conduit`. Same patterns as [`crate::client`]: bounded bodies,
//! a sensitive `Authorization` header, errors named after the endpoint and
//! carrying Twitch's `message` (never a token), and the rate-limit headers
//! returned with every answer.
//!
//! Decisions:
//! - **429**: when the answer's `Ratelimit-Remaining` is 0 (or absent) it is
//!   the bucket: [`HelixError::RateLimited`] with the snapshot, and the caller
//!   waits until `Ratelimit-Reset`. A 429 while points remain is one of
//!   Twitch's other limits ("Conduit limit reached.", "maximum subscriptions
//!   with type and condition exceeded"): [`HelixError::Status`] with the
//!   message, not retried.
//! - **409** on create subscription ("subscription already exists") is
//!   success: [`CreateOutcome::AlreadyExists`].
//! - **Update Conduit Shards** answers 202 with `data` (shards assigned) and
//!   `errors` (per-shard failures): both are read; a missing `errors` key is
//!   read as none (Twitch's pages do not say it is always present).
//! - `total_cost` / `max_total_cost` / `total` are read from every
//!   subscription answer ([`Budget`]); nothing assumes 10,000.
//! - Every id that comes back is checked like a WebSocket message's
//!   (`message::is_opaque_id`, broadcaster ids numeric); an entry failing that
//!   is skipped and counted in `skipped`.

use super::message::{is_opaque_id, STREAM_VERSION};
use crate::client::{authorization, error_message, Answer, TwitchClient};
use crate::error::HelixError;
use crate::ratelimit::RateLimitSnapshot;
use crate::streams::{clean_text, is_broadcaster_id};
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::{json, Value};

const CONDUITS: &str = "Helix Get/Create/Delete Conduits";
const SHARDS: &str = "Helix Get/Update Conduit Shards";
const CREATE_SUB: &str = "Helix Create EventSub Subscription";
const LIST_SUBS: &str = "Helix Get EventSub Subscriptions";
const DELETE_SUB: &str = "Helix Delete EventSub Subscription";

/// Longest error or status text kept from an answer, in characters.
const MAX_TEXT: usize = 200;

/// An answer and the rate-limit headers that came with it.
pub type Answered<T> = (Result<T, HelixError>, Option<RateLimitSnapshot>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conduit {
    pub id: String,
    pub shard_count: u32,
}

/// Per-shard failure in an Update Conduit Shards answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardError {
    pub shard_id: String,
    pub message: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardsUpdate {
    /// Shards Twitch reports updated, with their status (`enabled`, ...).
    pub updated: Vec<(String, String)>,
    pub errors: Vec<ShardError>,
}

impl ShardsUpdate {
    /// The outcome for one shard: Ok when listed in `data` and not in `errors`.
    pub fn shard(&self, shard_id: &str) -> Result<(), String> {
        if let Some(e) = self.errors.iter().find(|e| e.shard_id == shard_id) {
            return Err(format!("{} ({})", e.message, e.code));
        }
        if self.updated.iter().any(|(id, _)| id == shard_id) {
            Ok(())
        } else {
            Err("the shard is neither in data nor in errors of the answer".into())
        }
    }
}

/// Twitch no longer knows the conduit: Get or Update Conduit Shards for it
/// answered 404 ("Conduit not found."). It was deleted (Delete Conduit, or
/// by Twitch after 72 hours with every shard disabled), and its
/// subscriptions are disabled with it (`conduit_deleted`): only a new
/// conduit, with new subscriptions, brings events again.
pub fn conduit_gone(e: &HelixError) -> bool {
    matches!(e, HelixError::Status { status: 404, .. })
}

/// The cost figures of a subscription answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Subscriptions (Twitch: an approximation, updated after a few seconds).
    pub total: u64,
    pub total_cost: u64,
    pub max_total_cost: u64,
}

impl Budget {
    /// Cost units left (0 when full or over).
    pub fn remaining(&self) -> u64 {
        self.max_total_cost.saturating_sub(self.total_cost)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    /// `enabled`, or why not (cleaned text).
    pub status: String,
    pub kind: String,
    pub version: String,
    pub broadcaster_id: String,
    pub conduit_id: Option<String>,
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    Created {
        subscription: Subscription,
        budget: Budget,
    },
    /// 409: an enabled subscription of this type and condition exists.
    AlreadyExists,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscriptionPage {
    pub subscriptions: Vec<Subscription>,
    pub budget: Budget,
    pub cursor: Option<String>,
    /// Entries skipped because an id failed its rule.
    pub skipped: u32,
}

/// Get EventSub Subscriptions filters (Twitch: mutually exclusive; one at most).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionFilter {
    None,
    Status(String),
    Type(String),
    UserId(String),
}

/// One shard of a conduit, as Get Conduit Shards lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConduitShard {
    pub id: String,
    /// `enabled`, or why not (`websocket_disconnected`, ...).
    pub status: String,
    /// The WebSocket session it is assigned to (None for a webhook shard,
    /// or when Twitch gives none).
    pub session_id: Option<String>,
}

fn text(v: &Value, key: &str) -> String {
    clean_text(v.get(key).and_then(Value::as_str).unwrap_or(""), MAX_TEXT).0
}

fn budget(v: &Value) -> Budget {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Budget {
        total: n("total"),
        total_cost: n("total_cost"),
        max_total_cost: n("max_total_cost"),
    }
}

fn subscription(v: &Value) -> Option<Subscription> {
    let id = v.get("id")?.as_str().filter(|i| is_opaque_id(i))?;
    let broadcaster = v
        .get("condition")?
        .get("broadcaster_user_id")?
        .as_str()
        .filter(|b| is_broadcaster_id(b))?;
    let conduit_id = v
        .get("transport")
        .and_then(|t| t.get("conduit_id"))
        .and_then(Value::as_str)
        .filter(|c| is_opaque_id(c))
        .map(str::to_string);
    Some(Subscription {
        id: id.to_string(),
        status: text(v, "status"),
        kind: text(v, "type"),
        version: text(v, "version"),
        broadcaster_id: broadcaster.to_string(),
        conduit_id,
        cost: v.get("cost").and_then(Value::as_u64).unwrap_or(0),
    })
}

impl Answer {
    /// 401 and 429 as [`HelixError`]s, anything else unexpected as `Status`.
    fn refusal(&self, snapshot: Option<RateLimitSnapshot>) -> HelixError {
        match self.status {
            401 => HelixError::Unauthorized {
                endpoint: self.endpoint,
                message: error_message(&self.body),
            },
            429 if snapshot.is_none_or(|s| s.remaining == 0) => HelixError::RateLimited {
                endpoint: self.endpoint,
                snapshot,
            },
            _ => self.status_error(),
        }
    }

    fn value(&self) -> Result<Value, HelixError> {
        self.json::<Value>()
    }
}

/// A JSON body (reqwest's `json` feature is not enabled in this workspace).
trait BodyJson {
    fn body_json(self, v: &Value) -> Self;
}

impl BodyJson for reqwest::RequestBuilder {
    fn body_json(self, v: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(v.to_string())
    }
}

fn malformed(endpoint: &'static str, detail: &str) -> HelixError {
    HelixError::Malformed {
        endpoint,
        detail: crate::error::network_text(detail),
    }
}

impl TwitchClient {
    fn helix(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.helix_url))
            .header("Client-Id", &self.client_id)
            .header(AUTHORIZATION, authorization("Bearer", token))
    }

    /// `GET /eventsub/conduits`: the client's conduits.
    pub async fn get_conduits(&self, token: &str) -> Answered<Vec<Conduit>> {
        let req = self.helix(reqwest::Method::GET, "/eventsub/conduits", token);
        let (answer, snap) = self.exchange(CONDUITS, req).await;
        let r = answer.and_then(|a| {
            if a.status != 200 {
                return Err(a.refusal(snap));
            }
            let v = a.value()?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(CONDUITS, "no data array"))?;
            Ok(data.iter().filter_map(conduit).collect())
        });
        (r, snap)
    }

    /// `POST /eventsub/conduits` with `{"shard_count": n}`.
    pub async fn create_conduit(&self, token: &str, shard_count: u32) -> Answered<Conduit> {
        let req = self
            .helix(reqwest::Method::POST, "/eventsub/conduits", token)
            .body_json(&json!({ "shard_count": shard_count }));
        let (answer, snap) = self.exchange(CONDUITS, req).await;
        let r = answer.and_then(|a| {
            if a.status != 200 {
                return Err(a.refusal(snap));
            }
            a.value()?
                .get("data")
                .and_then(Value::as_array)
                .and_then(|d| d.first())
                .and_then(conduit)
                .ok_or_else(|| malformed(CONDUITS, "no valid conduit in data"))
        });
        (r, snap)
    }

    /// `GET /eventsub/conduits/shards?conduit_id=`: each shard's id, status
    /// (`enabled`, `websocket_disconnected`, ...) and WebSocket session,
    /// first page (100 shards; twitch_sync uses one).
    pub async fn get_conduit_shards(
        &self,
        token: &str,
        conduit_id: &str,
    ) -> Answered<Vec<ConduitShard>> {
        let req = self
            .helix(reqwest::Method::GET, "/eventsub/conduits/shards", token)
            .query(&[("conduit_id", conduit_id)]);
        let (answer, snap) = self.exchange(SHARDS, req).await;
        let r = answer.and_then(|a| {
            if a.status != 200 {
                return Err(a.refusal(snap));
            }
            let v = a.value()?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(SHARDS, "no data array"))?;
            Ok(data
                .iter()
                .filter_map(|d| {
                    let id = d.get("id")?.as_str().filter(|i| is_opaque_id(i))?;
                    Some(ConduitShard {
                        id: id.to_string(),
                        status: text(d, "status"),
                        session_id: d
                            .get("transport")
                            .and_then(|t| t.get("session_id"))
                            .and_then(Value::as_str)
                            .filter(|i| is_opaque_id(i))
                            .map(str::to_string),
                    })
                })
                .collect())
        });
        (r, snap)
    }

    /// `DELETE /eventsub/conduits?id=`: true when deleted, false when Twitch
    /// did not know it (404). Its subscriptions become `conduit_deleted`.
    pub async fn delete_conduit(&self, token: &str, id: &str) -> Answered<bool> {
        self.delete_by_id(CONDUITS, "/eventsub/conduits", token, id)
            .await
    }

    /// `PATCH /eventsub/conduits/shards`: assigns WebSocket sessions to shards.
    pub async fn update_conduit_shards(
        &self,
        token: &str,
        conduit_id: &str,
        shards: &[(String, String)],
    ) -> Answered<ShardsUpdate> {
        let body = json!({
            "conduit_id": conduit_id,
            "shards": shards.iter().map(|(id, session)| json!({
                "id": id,
                "transport": {"method": "websocket", "session_id": session}
            })).collect::<Vec<_>>()
        });
        let req = self
            .helix(reqwest::Method::PATCH, "/eventsub/conduits/shards", token)
            .body_json(&body);
        let (answer, snap) = self.exchange(SHARDS, req).await;
        let r = answer.and_then(|a| {
            if a.status != 202 && a.status != 200 {
                return Err(a.refusal(snap));
            }
            let v = a.value()?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(SHARDS, "no data array"))?;
            let mut out = ShardsUpdate::default();
            for d in data {
                if let Some(id) = d
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|i| is_opaque_id(i))
                {
                    out.updated.push((id.to_string(), text(d, "status")));
                }
            }
            if let Some(errs) = v.get("errors").and_then(Value::as_array) {
                for e in errs {
                    out.errors.push(ShardError {
                        shard_id: text(e, "id"),
                        message: text(e, "message"),
                        code: text(e, "code"),
                    });
                }
            }
            Ok(out)
        });
        (r, snap)
    }

    /// `POST /eventsub/subscriptions`: `kind` (`stream.online` /
    /// `stream.offline`) version 1 for one broadcaster, transport conduit.
    pub async fn create_subscription(
        &self,
        token: &str,
        kind: &str,
        broadcaster_id: &str,
        conduit_id: &str,
    ) -> Answered<CreateOutcome> {
        let body = json!({
            "type": kind,
            "version": STREAM_VERSION,
            "condition": {"broadcaster_user_id": broadcaster_id},
            "transport": {"method": "conduit", "conduit_id": conduit_id}
        });
        let req = self
            .helix(reqwest::Method::POST, "/eventsub/subscriptions", token)
            .body_json(&body);
        let (answer, snap) = self.exchange(CREATE_SUB, req).await;
        let r = answer.and_then(|a| match a.status {
            202 | 200 => {
                let v = a.value()?;
                let subscription = v
                    .get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(subscription)
                    .ok_or_else(|| malformed(CREATE_SUB, "no valid subscription in data"))?;
                Ok(CreateOutcome::Created {
                    subscription,
                    budget: budget(&v),
                })
            }
            409 => Ok(CreateOutcome::AlreadyExists),
            _ => Err(a.refusal(snap)),
        });
        (r, snap)
    }

    /// `GET /eventsub/subscriptions`, one page.
    pub async fn get_subscriptions(
        &self,
        token: &str,
        filter: &SubscriptionFilter,
        after: Option<&str>,
    ) -> Answered<SubscriptionPage> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        match filter {
            SubscriptionFilter::None => {}
            SubscriptionFilter::Status(s) => query.push(("status", s)),
            SubscriptionFilter::Type(t) => query.push(("type", t)),
            SubscriptionFilter::UserId(u) => query.push(("user_id", u)),
        }
        if let Some(a) = after {
            query.push(("after", a));
        }
        let req = self
            .helix(reqwest::Method::GET, "/eventsub/subscriptions", token)
            .query(&query);
        let (answer, snap) = self.exchange(LIST_SUBS, req).await;
        let r = answer.and_then(|a| {
            if a.status != 200 {
                return Err(a.refusal(snap));
            }
            let v = a.value()?;
            let data = v
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| malformed(LIST_SUBS, "no data array"))?;
            let mut page = SubscriptionPage {
                budget: budget(&v),
                ..Default::default()
            };
            for d in data {
                match subscription(d) {
                    Some(s) => page.subscriptions.push(s),
                    None => page.skipped += 1,
                }
            }
            page.cursor = v
                .get("pagination")
                .and_then(|p| p.get("cursor"))
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    if c.len() <= crate::streams::MAX_CURSOR_BYTES
                        && c.bytes().all(|b| (0x21..=0x7e).contains(&b))
                    {
                        Ok(c.to_string())
                    } else {
                        Err(malformed(LIST_SUBS, "bad pagination cursor"))
                    }
                })
                .transpose()?;
            Ok(page)
        });
        (r, snap)
    }

    /// `DELETE /eventsub/subscriptions?id=`: true when deleted, false when
    /// Twitch did not know it (404: gone already, which is what was wanted).
    pub async fn delete_subscription(&self, token: &str, id: &str) -> Answered<bool> {
        self.delete_by_id(DELETE_SUB, "/eventsub/subscriptions", token, id)
            .await
    }

    /// `DELETE path?id=`: true when deleted (204), false when Twitch did not
    /// know it (404).
    async fn delete_by_id(
        &self,
        endpoint: &'static str,
        path: &str,
        token: &str,
        id: &str,
    ) -> Answered<bool> {
        let req = self
            .helix(reqwest::Method::DELETE, path, token)
            .query(&[("id", id)]);
        let (answer, snap) = self.exchange(endpoint, req).await;
        let r = answer.and_then(|a| match a.status {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(a.refusal(snap)),
        });
        (r, snap)
    }
}

fn conduit(v: &Value) -> Option<Conduit> {
    #[derive(Deserialize)]
    struct Raw {
        id: String,
        shard_count: u32,
    }
    let r: Raw = serde_json::from_value(v.clone()).ok()?;
    is_opaque_id(&r.id).then_some(Conduit {
        id: r.id,
        shard_count: r.shard_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_outcome_reads_data_and_errors() {
        let u = ShardsUpdate {
            updated: vec![("0".into(), "enabled".into())],
            errors: vec![ShardError {
                shard_id: "3".into(),
                message: "The shard id is outside the conduit's range".into(),
                code: "invalid_parameter".into(),
            }],
        };
        assert_eq!(u.shard("0"), Ok(()));
        assert!(u.shard("3").unwrap_err().contains("outside"));
        assert!(u.shard("1").is_err());
    }

    #[test]
    fn only_a_404_means_the_conduit_is_gone() {
        let status = |status| HelixError::Status {
            endpoint: SHARDS,
            status,
            message: "Conduit not found.".into(),
        };
        assert!(conduit_gone(&status(404)));
        for e in [
            status(400),
            status(503),
            HelixError::Unauthorized {
                endpoint: SHARDS,
                message: String::new(),
            },
            HelixError::RateLimited {
                endpoint: SHARDS,
                snapshot: None,
            },
            HelixError::Network {
                endpoint: SHARDS,
                detail: String::new(),
            },
        ] {
            assert!(!conduit_gone(&e), "{e:?}");
        }
    }

    #[test]
    fn subscriptions_are_checked() {
        let good = json!({"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","status":"enabled","type":"stream.online","version":"1",
                          "condition":{"broadcaster_user_id":"1337"},"transport":{"method":"conduit","conduit_id":"c1"},"cost":1});
        let s = subscription(&good).unwrap();
        assert_eq!(s.broadcaster_id, "1337");
        assert_eq!(s.conduit_id.as_deref(), Some("c1"));
        assert_eq!(s.cost, 1);
        let mut bad = good.clone();
        bad["condition"]["broadcaster_user_id"] = json!("01");
        assert!(subscription(&bad).is_none());
        let mut bad = good.clone();
        bad["id"] = json!("a b");
        assert!(subscription(&bad).is_none());
        assert_eq!(
            budget(&json!({"total":3,"total_cost":2,"max_total_cost":10})).remaining(),
            8
        );
        assert_eq!(
            budget(&json!({"total_cost":12,"max_total_cost":10})).remaining(),
            0
        );
    }
}
