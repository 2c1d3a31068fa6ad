//! The simulator's EventSub REST endpoints, as Twitch's API reference
//! documents them (app access token; `shared/notes/eventsub-facts.md` §1.2,
//! §3, §6.2):
//!
//! - `GET /helix/eventsub/conduits` → 200 `data[{id, shard_count}]`;
//! - `POST /helix/eventsub/conduits` `{"shard_count": n}` → 200; 400 "Invalid
//!   shard count." outside 1..=20,000; 429 "Conduit limit reached." beyond 5;
//! - `PATCH /helix/eventsub/conduits/shards` → **202** with `data` (shards
//!   updated) and `errors` (per shard: "The shard id is outside of the
//!   conduit's range.", "The websocket session is not connected.", "The
//!   session_id field is required if you specify the WebSocket transport
//!   method.", "The value specified in the method field is not valid."); 404
//!   "Conduit not found."; 400 without `conduit_id` or `shards`;
//! - `POST /helix/eventsub/subscriptions` (`stream.online` / `stream.offline`
//!   v1, transport conduit) → **202** with `data[0]` (`status: enabled`,
//!   `cost` 1, or 0 for a broadcaster who authorised the client), `total`,
//!   `total_cost`, `max_total_cost`; **409** for an enabled duplicate of
//!   type + version + condition; **429** "maximum subscriptions with type and
//!   condition exceeded" after 3 with the same type and condition; 400 for
//!   a bad type/version, missing condition, unknown broadcaster, missing or
//!   unknown `conduit_id`. Going over `max_total_cost` is not documented by
//!   Twitch; the simulator answers 429 "subscription cost exceeds
//!   max_total_cost" (an assumption, marked as such);
//! - `GET /helix/eventsub/subscriptions` with at most one filter (`status`,
//!   `type`, `user_id`, `subscription_id`; more → 400), oldest first, pages
//!   of the simulator's size (100 unless set; Twitch documents neither a size
//!   nor `first`) with an `after` cursor, `pagination: {}` at the end, and the
//!   cost figures;
//! - `DELETE /helix/eventsub/subscriptions?id=` → 204, 404, 400 without id;
//! - `GET /helix/eventsub/conduits/shards?conduit_id=[&status=]` → 200
//!   `data[{id, status, transport{method, session_id, connected_at,
//!   disconnected_at}}]`, `pagination: {}` (one page); 400 without
//!   `conduit_id`, 404 for a conduit not found;
//! - `DELETE /helix/eventsub/conduits?id=` → 204 (its subscriptions become
//!   `conduit_deleted`, Twitch's status for them, and stop costing), 404,
//!   400 without id.
//!
//! Every answer carries the rate-limit headers and costs a point of the
//! client's bucket, like Get Streams (429 when it is empty).

use crate::eventsub::{ConduitRec, ShardRec, SubRec};
use crate::http::{Request, Response};
use crate::{helix_error, Endpoint, FaultKind, Shared};
use serde_json::{json, Value};
use std::time::SystemTime;

/// Routes `/helix/eventsub/*`; None for any other path.
pub(crate) fn handle(shared: &Shared, req: &Request) -> Option<Response> {
    if !req.path.starts_with("/helix/eventsub/") {
        return None;
    }
    let mut st = shared.lock();
    match st.matching_fault(Endpoint::EventSub, req) {
        Some(FaultKind::Status { status }) => {
            return Some(helix_error(status, "Simulated failure"))
        }
        Some(FaultKind::ErrorMessage { status, message }) => {
            if status == 401 {
                st.counters.unauthorized += 1;
            }
            // `{authorization}` echoes the request's header (as some servers do)
            let auth = req.header("authorization").unwrap_or_default();
            return Some(helix_error(
                status,
                &message.replace("{authorization}", auth),
            ));
        }
        _ => {}
    }
    let client_id = match st.authenticate(req) {
        Ok(c) => c,
        Err(resp) => return Some(resp),
    };
    let bucket = st.bucket(&client_id);
    let paid = bucket.try_take(1);
    let snap = bucket.snapshot();
    let with_limits = |r: Response| crate::with_rate_limit(r, &snap);
    if !paid {
        st.counters.rate_limited += 1;
        return Some(with_limits(helix_error(429, "Too Many Requests")));
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let known_broadcaster = |id: &str| st.world.index_of_id(id).is_some();
    let hub = shared.eventsub.clone();
    let mut h = hub.lock();
    let resp = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/helix/eventsub/conduits") => {
            let data: Vec<Value> = h
                .conduits
                .iter()
                .filter(|c| c.client_id == client_id)
                .map(|c| json!({"id": c.id, "shard_count": c.shards.len()}))
                .collect();
            Response::json(200, &json!({ "data": data }))
        }
        ("POST", "/helix/eventsub/conduits") => {
            let n = body.get("shard_count").and_then(Value::as_u64).unwrap_or(0);
            if n == 0 || n > u64::from(h.cfg.max_shards) {
                helix_error(400, "Invalid shard count.")
            } else if h
                .conduits
                .iter()
                .filter(|c| c.client_id == client_id)
                .count()
                >= h.cfg.max_conduits
            {
                h.counters.limited += 1;
                helix_error(429, "Conduit limit reached.")
            } else {
                let id = h.opaque_id();
                h.conduits.push(ConduitRec {
                    id: id.clone(),
                    client_id: client_id.clone(),
                    shards: (0..n)
                        .map(|_| ShardRec {
                            session: None,
                            status: "websocket_disconnected".into(),
                            connected_at: None,
                            disconnected_at: None,
                        })
                        .collect(),
                });
                Response::json(200, &json!({"data": [{"id": id, "shard_count": n}]}))
            }
        }
        ("PATCH", "/helix/eventsub/conduits/shards") => {
            let conduit_id = body.get("conduit_id").and_then(Value::as_str).unwrap_or("");
            let shards = body.get("shards").and_then(Value::as_array);
            match (conduit_id, shards) {
                ("", _) => helix_error(400, "The conduit_id field is required."),
                (_, None) => helix_error(400, "The shards field is required."),
                (cid, Some(shards)) => {
                    match h
                        .conduits
                        .iter()
                        .position(|c| c.id == cid && c.client_id == client_id)
                    {
                        None => helix_error(404, "Conduit not found."),
                        Some(ci) => {
                            let mut data = Vec::new();
                            let mut errors = Vec::new();
                            for s in shards {
                                let id = s
                                    .get("id")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string();
                                let t = s.get("transport").cloned().unwrap_or(Value::Null);
                                let err = |m: &str, code: &str| json!({"id": id, "message": m, "code": code});
                                let idx = id.parse::<usize>().ok().filter(|i| {
                                    *i < h.conduits[ci].shards.len()
                                        && !id.starts_with('+')
                                        && (id == "0" || !id.starts_with('0'))
                                });
                                let Some(idx) = idx else {
                                    errors.push(err(
                                        "The shard id is outside of the conduit's range.",
                                        "invalid_parameter",
                                    ));
                                    continue;
                                };
                                if t.get("method").and_then(Value::as_str) != Some("websocket") {
                                    errors.push(err(
                                        "The value specified in the method field is not valid.",
                                        "invalid_parameter",
                                    ));
                                    continue;
                                }
                                let Some(session) = t.get("session_id").and_then(Value::as_str)
                                else {
                                    errors.push(err("The session_id field is required if you specify the WebSocket transport method.", "missing_parameter"));
                                    continue;
                                };
                                if !h.session_connected(session) {
                                    errors.push(err(
                                        "The websocket session is not connected.",
                                        "websocket_session_not_connected",
                                    ));
                                    continue;
                                }
                                let now = SystemTime::now();
                                let rec = &mut h.conduits[ci].shards[idx];
                                rec.session = Some(session.to_string());
                                rec.status = "enabled".into();
                                rec.connected_at = Some(now);
                                rec.disconnected_at = None;
                                data.push(json!({"id": id, "status": "enabled",
                                    "transport": {"method": "websocket", "session_id": session,
                                                  "connected_at": crate::eventsub::rfc3339_nanos(now)}}));
                            }
                            h.counters.shard_updates += data.len() as u64;
                            h.counters.shard_errors += errors.len() as u64;
                            Response::json(202, &json!({"data": data, "errors": errors}))
                        }
                    }
                }
            }
        }
        ("POST", "/helix/eventsub/subscriptions") => {
            let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
            let version = body.get("version").and_then(Value::as_str).unwrap_or("");
            let broadcaster = body
                .get("condition")
                .and_then(|c| c.get("broadcaster_user_id"))
                .and_then(Value::as_str);
            let method = body
                .get("transport")
                .and_then(|t| t.get("method"))
                .and_then(Value::as_str);
            let conduit_id = body
                .get("transport")
                .and_then(|t| t.get("conduit_id"))
                .and_then(Value::as_str);
            if !matches!(kind, "stream.online" | "stream.offline") || version != "1" {
                helix_error(
                    400,
                    "The combination of values in the version and type fields is not valid.",
                )
            } else if broadcaster.is_none() {
                helix_error(400, "The condition field is required.")
            } else if !broadcaster.is_some_and(known_broadcaster) {
                helix_error(
                    400,
                    "The user specified in the condition object does not exist.",
                )
            } else if method != Some("conduit") {
                helix_error(400, "The value specified in the method field is not valid.")
            } else if !conduit_id.is_some_and(|c| {
                h.conduits
                    .iter()
                    .any(|x| x.id == c && x.client_id == client_id)
            }) {
                helix_error(
                    400,
                    "The conduit_id field is required if you specify the Conduit transport method.",
                )
            } else {
                let b = broadcaster.unwrap_or_default().to_string();
                let same: Vec<&SubRec> = h
                    .subs
                    .iter()
                    .filter(|s| s.client_id == client_id && s.kind == kind && s.broadcaster == b)
                    .collect();
                let cost = u64::from(!h.authorized.contains(&b));
                let total_cost = enabled_cost(&h.subs, &client_id);
                if same
                    .iter()
                    .any(|s| s.status == "enabled" && s.version == version)
                {
                    h.counters.conflicts += 1;
                    helix_error(409, "subscription already exists")
                } else if same.len() >= h.cfg.max_same_condition {
                    h.counters.limited += 1;
                    helix_error(
                        429,
                        "maximum subscriptions with type and condition exceeded",
                    )
                } else if total_cost + cost > h.cfg.max_total_cost {
                    h.counters.limited += 1;
                    helix_error(429, "subscription cost exceeds max_total_cost")
                } else {
                    let sub = SubRec {
                        id: h.opaque_id(),
                        client_id: client_id.clone(),
                        kind: kind.to_string(),
                        version: version.to_string(),
                        broadcaster: b,
                        conduit_id: conduit_id.unwrap_or_default().to_string(),
                        status: "enabled".into(),
                        cost,
                        created_at: SystemTime::now(),
                    };
                    let data = sub.json();
                    h.subs.push(sub);
                    h.counters.subscriptions_created += 1;
                    let total = h.subs.iter().filter(|s| s.client_id == client_id).count();
                    Response::json(
                        202,
                        &json!({"data": [data], "total": total,
                                "total_cost": total_cost + cost, "max_total_cost": h.cfg.max_total_cost}),
                    )
                }
            }
        }
        ("GET", "/helix/eventsub/subscriptions") => {
            let filters: Vec<(&str, &str)> = ["status", "type", "user_id", "subscription_id"]
                .iter()
                .filter_map(|k| req.query_all(k).next().map(|v| (*k, v)))
                .collect();
            if filters.len() > 1 {
                helix_error(
                    400,
                    "The request may specify only one filter query parameter.",
                )
            } else {
                // (Twitch documents no `first` here: the page size is its own)
                let first = h.cfg.subscriptions_page_size.max(1);
                let offset = req
                    .query_all("after")
                    .next()
                    .and_then(|a| a.strip_prefix("o").and_then(|n| n.parse::<usize>().ok()))
                    .unwrap_or(0);
                let all: Vec<Value> = h
                    .subs
                    .iter()
                    .filter(|s| s.client_id == client_id)
                    .filter(|s| match filters.first() {
                        None => true,
                        Some(("status", v)) => s.status == *v,
                        Some(("type", v)) => s.kind == *v,
                        Some(("user_id", v)) => s.broadcaster == *v,
                        Some((_, v)) => s.id == *v,
                    })
                    .map(SubRec::json)
                    .collect();
                let end = (offset + first).min(all.len());
                let page = all.get(offset.min(end)..end).unwrap_or_default().to_vec();
                let pagination = if end < all.len() {
                    json!({"cursor": format!("o{end}")})
                } else {
                    json!({})
                };
                let total = h.subs.iter().filter(|s| s.client_id == client_id).count();
                Response::json(
                    200,
                    &json!({"data": page, "total": total, "total_cost": enabled_cost(&h.subs, &client_id),
                            "max_total_cost": h.cfg.max_total_cost, "pagination": pagination}),
                )
            }
        }
        ("GET", "/helix/eventsub/conduits/shards") => match req.query_all("conduit_id").next() {
            None | Some("") => helix_error(400, "The conduit_id query parameter is required."),
            Some(cid) => match h
                .conduits
                .iter()
                .find(|c| c.id == cid && c.client_id == client_id)
            {
                None => helix_error(404, "Conduit not found."),
                Some(c) => {
                    let status = req.query_all("status").next();
                    let ts = |t: Option<SystemTime>| t.map(crate::eventsub::rfc3339_nanos);
                    let data: Vec<Value> = c
                        .shards
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| status.is_none_or(|st| s.status == st))
                        .map(|(i, s)| {
                            json!({"id": i.to_string(), "status": s.status,
                                   "transport": {"method": "websocket", "session_id": s.session,
                                                 "connected_at": ts(s.connected_at),
                                                 "disconnected_at": ts(s.disconnected_at)}})
                        })
                        .collect();
                    Response::json(200, &json!({"data": data, "pagination": {}}))
                }
            },
        },
        ("DELETE", "/helix/eventsub/conduits") => match req.query_all("id").next() {
            None | Some("") => helix_error(400, "The id query parameter is required."),
            Some(id) => {
                if h.delete_conduit(Some(&client_id), id) {
                    Response::text(204, "")
                } else {
                    helix_error(404, "Conduit not found.")
                }
            }
        },
        ("DELETE", "/helix/eventsub/subscriptions") => match req.query_all("id").next() {
            None | Some("") => helix_error(400, "The id query parameter is required."),
            Some(id) => {
                match h
                    .subs
                    .iter()
                    .position(|s| s.id == id && s.client_id == client_id)
                {
                    Some(i) => {
                        h.subs.remove(i);
                        h.counters.deleted += 1;
                        Response::text(204, "")
                    }
                    None => helix_error(404, "The subscription was not found."),
                }
            }
        },
        _ => helix_error(404, "Not Found"),
    };
    Some(with_limits(resp))
}

/// The sum of the costs of a client's enabled subscriptions.
fn enabled_cost(subs: &[SubRec], client_id: &str) -> u64 {
    subs.iter()
        .filter(|s| s.client_id == client_id && s.status == "enabled")
        .map(|s| s.cost)
        .sum()
}
