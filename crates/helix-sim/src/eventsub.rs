//! The EventSub WebSocket server of the simulator, on its own listener
//! ([`Simulator::start_eventsub`]), as Twitch documents it (WebSocket guide
//! and reference, conduit guide; `shared/notes/eventsub-facts.md` §6):
//!
//! - `GET /ws?keepalive_timeout_seconds=N` (numeric N clamped to 10..=600,
//!   default 10) upgrades and sends `session_welcome` at once: a new opaque
//!   session id, `status: connected`, `keepalive_timeout_seconds`,
//!   `reconnect_url: null` (and `recovery_url: null`, an undocumented field
//!   production sends, to keep clients tolerant);
//! - a session that is not a conduit shard 10 s after its welcome is closed
//!   with **4003** ([`EventSubConfig::assign_deadline`]);
//! - `session_keepalive` only when nothing was sent for the keepalive window;
//! - WebSocket pings every [`EventSubConfig::ping_every`]; no pong within two
//!   periods → **4002**; any text or binary frame from the client → **4001**;
//! - notifications when the world changes a channel's live state, to the shard
//!   the broadcaster hashes to, or (that shard disabled) to one other enabled
//!   shard, else dropped; envelope as Twitch's (`transport.method: conduit`,
//!   nanosecond timestamps);
//! - `session_reconnect` ([`Simulator::es_reconnect`]) with a `reconnect_url`
//!   on this listener; the new connection keeps the **same session id** (as
//!   production does, per twitch4j) and takes over delivery when welcomed;
//!   the old connection delivers until then and is closed with **4004** if
//!   still open 30 s after the reconnect message; an unknown reconnect URL
//!   gets **4007**;
//! - a lost connection disables its shard (`websocket_disconnected`).
//!
//! Faults ([`EsFault`]): drop every socket without a close frame, close them
//! with any code (4000, 4005, 4006, ...), silence (no keepalives), duplicates
//! with the same or a new message id, out-of-order delivery (a batch of
//! changes sent newest first), revocation of a subscription, raw frames.
//!
//! The REST side (conduits, shards, subscriptions) is in [`crate::conduits`].

use crate::world::{rfc3339, ChangeLog, LiveChange, Rng};
use crate::{Shared, Simulator};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as Ws;

#[derive(Debug, Clone)]
pub struct EventSubConfig {
    /// 0 picks a free port.
    pub port: u16,
    pub assign_deadline: Duration,
    pub reconnect_grace: Duration,
    /// None: no pings (and no 4002).
    pub ping_every: Option<Duration>,
    /// Twitch's limit: five enabled conduits per client id.
    pub max_conduits: usize,
    pub max_shards: u32,
    /// `max_total_cost` of every client (Twitch's example: 10,000).
    pub max_total_cost: u64,
    /// Twitch: at most 3 subscriptions with the same type and condition.
    pub max_same_condition: usize,
    /// Subscriptions per page of `GET /eventsub/subscriptions`. Twitch
    /// documents no page size and no `first` for it ("the number returned
    /// per page is undetermined"): clients must follow the cursor.
    pub subscriptions_page_size: usize,
}

impl Default for EventSubConfig {
    fn default() -> Self {
        EventSubConfig {
            port: 0,
            assign_deadline: Duration::from_secs(10),
            reconnect_grace: Duration::from_secs(30),
            ping_every: Some(Duration::from_secs(5)),
            max_conduits: 5,
            max_shards: 20_000,
            max_total_cost: 10_000,
            max_same_condition: 3,
            subscriptions_page_size: 100,
        }
    }
}

/// Faults to inject into the EventSub server.
#[derive(Debug, Clone, PartialEq)]
pub enum EsFault {
    /// Every open socket ends without a close frame.
    DropSockets,
    /// Every open socket is closed with this code.
    CloseSockets(u16),
    /// Keepalives stop (on) or resume (off).
    Silence(bool),
    /// The next `n` notifications are sent twice with the same message id.
    DuplicateSameId(u32),
    /// The next `n` notifications are sent twice, the copy with a new message id.
    DuplicateNewId(u32),
    /// The next `n` batches of changes are delivered newest first.
    Reorder(u32),
    /// Every shard is disabled (`websocket_disconnected`, no session) while
    /// its socket stays open and silent about it: only Get Conduit Shards
    /// (or a `conduit.shard.disabled` subscription) tells.
    DisableShards,
}

/// What the EventSub server did, for tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EsCounters {
    pub connections: u64,
    pub welcomes: u64,
    pub keepalives: u64,
    pub notifications: u64,
    /// Notifications with no enabled shard to go to.
    pub undeliverable: u64,
    pub reconnect_messages: u64,
    pub revocations: u64,
    /// Close codes sent, by code.
    pub closes: BTreeMap<u16, u64>,
    pub inbound_frames: u64,
    pub shard_updates: u64,
    pub shard_errors: u64,
    pub subscriptions_created: u64,
    pub conflicts: u64,
    pub limited: u64,
    pub deleted: u64,
}

pub(crate) enum Out {
    Text(String),
    Close(u16, &'static str),
    Drop,
}

#[derive(Debug, Clone)]
pub(crate) struct ShardRec {
    pub session: Option<String>,
    pub status: String,
    pub connected_at: Option<SystemTime>,
    pub disconnected_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub(crate) struct ConduitRec {
    pub id: String,
    pub client_id: String,
    pub shards: Vec<ShardRec>,
}

#[derive(Debug, Clone)]
pub(crate) struct SubRec {
    pub id: String,
    pub client_id: String,
    pub kind: String,
    pub version: String,
    pub broadcaster: String,
    pub conduit_id: String,
    pub status: String,
    pub cost: u64,
    pub created_at: SystemTime,
}

impl SubRec {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "type": self.kind,
            "version": self.version,
            "condition": {"broadcaster_user_id": self.broadcaster},
            "created_at": rfc3339_nanos(self.created_at),
            "transport": {"method": "conduit", "conduit_id": self.conduit_id},
            "cost": self.cost
        })
    }
}

struct SessionRec {
    /// The connection delivering for this session now.
    conn: u64,
    /// Connections of this session asked to reconnect: when.
    reconnect_asked: HashMap<u64, Instant>,
}

pub(crate) struct HubState {
    pub cfg: EventSubConfig,
    addr: Option<SocketAddr>,
    rng: Rng,
    pub conduits: Vec<ConduitRec>,
    pub subs: Vec<SubRec>,
    sessions: HashMap<String, SessionRec>,
    conns: HashMap<u64, mpsc::UnboundedSender<Out>>,
    reconnect_tokens: HashMap<String, String>,
    next_conn: u64,
    silence: bool,
    dup_same: u32,
    dup_new: u32,
    reorder: u32,
    /// Broadcasters that authorised the client: their subscriptions cost 0.
    pub authorized: HashSet<String>,
    pub counters: EsCounters,
}

/// The EventSub side's state, shared by the listener, its sockets and the REST handlers.
#[derive(Clone)]
pub(crate) struct Hub(Arc<Mutex<HubState>>);

impl Default for Hub {
    fn default() -> Self {
        Hub(Arc::new(Mutex::new(HubState {
            cfg: EventSubConfig::default(),
            addr: None,
            rng: Rng::new(0xE5E5),
            conduits: Vec::new(),
            subs: Vec::new(),
            sessions: HashMap::new(),
            conns: HashMap::new(),
            reconnect_tokens: HashMap::new(),
            next_conn: 1,
            silence: false,
            dup_same: 0,
            dup_new: 0,
            reorder: 0,
            authorized: HashSet::new(),
            counters: EsCounters::default(),
        })))
    }
}

impl Hub {
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// RFC 3339 with nanoseconds, as EventSub sends its timestamps.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let base = rfc3339(t);
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{}.{nanos:09}Z", &base[..19])
}

impl HubState {
    pub fn opaque_id(&mut self) -> String {
        let h = |n: u64| format!("{:016x}", n);
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        let (a, b) = (h(a), h(b));
        format!(
            "{}-{}-{}-{}-{}",
            &a[..8],
            &a[8..12],
            &a[12..16],
            &b[..4],
            &b[4..16]
        )
    }

    fn session_id(&mut self) -> String {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..28)
            .map(|_| alphabet[self.rng.below(alphabet.len() as u64) as usize] as char)
            .collect()
    }

    fn close(&mut self, conn: u64, code: u16, why: &'static str) {
        if let Some(tx) = self.conns.get(&conn) {
            let _ = tx.send(Out::Close(code, why));
            *self.counters.closes.entry(code).or_default() += 1;
        }
    }

    /// Whether a session is connected now (it has a live delivering connection).
    pub fn session_connected(&self, session: &str) -> bool {
        self.sessions
            .get(session)
            .is_some_and(|s| self.conns.contains_key(&s.conn))
    }

    /// Whether a session is some conduit's shard.
    fn is_shard(&self, session: &str) -> bool {
        self.conduits.iter().any(|c| {
            c.shards
                .iter()
                .any(|s| s.session.as_deref() == Some(session) && s.status == "enabled")
        })
    }

    /// A connection ended.
    fn gone(&mut self, conn: u64) {
        self.conns.remove(&conn);
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.sessions.remove(&id);
            self.reconnect_tokens.retain(|_, s| *s != id);
            for c in &mut self.conduits {
                for sh in &mut c.shards {
                    if sh.session.as_deref() == Some(id.as_str()) && sh.status == "enabled" {
                        sh.status = "websocket_disconnected".into();
                        sh.disconnected_at = Some(SystemTime::now());
                    }
                }
            }
        }
        for s in self.sessions.values_mut() {
            s.reconnect_asked.remove(&conn);
        }
    }

    fn send_to_session(&mut self, session: &str, text: String) -> bool {
        let Some(conn) = self.sessions.get(session).map(|s| s.conn) else {
            return false;
        };
        match self.conns.get(&conn) {
            Some(tx) => tx.send(Out::Text(text)).is_ok(),
            None => false,
        }
    }

    /// The session a notification for `broadcaster` on `conduit_id` goes to:
    /// its hashed shard, else one other enabled shard, else none.
    fn route(&self, conduit_id: &str, broadcaster: &str) -> Option<String> {
        let c = self.conduits.iter().find(|c| c.id == conduit_id)?;
        let n = c.shards.len();
        if n == 0 {
            return None;
        }
        let h = broadcaster.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let first = (h % n as u64) as usize;
        let usable = |i: usize| {
            let s = &c.shards[i];
            s.status == "enabled"
                && s.session
                    .as_deref()
                    .is_some_and(|id| self.session_connected(id))
        };
        if usable(first) {
            return c.shards[first].session.clone();
        }
        // one other enabled shard, then give up (Twitch retries once)
        (1..n)
            .map(|k| (first + k) % n)
            .find(|&i| usable(i))
            .and_then(|i| c.shards[i].session.clone())
    }

    fn envelope(&mut self, message_type: &str, sub: &SubRec, payload: Value) -> (String, Value) {
        let id = self.opaque_id();
        let v = json!({
            "metadata": {
                "message_id": id,
                "message_type": message_type,
                "message_timestamp": rfc3339_nanos(SystemTime::now()),
                "subscription_type": sub.kind,
                "subscription_version": sub.version,
            },
            "payload": payload,
        });
        (id, v)
    }

    /// Sends notifications for world changes. Envelopes are made in the
    /// order of the changes (so their `message_timestamp`s follow it); the
    /// `Reorder` fault only reverses the order they are sent in.
    fn dispatch(&mut self, changes: Vec<LiveChange>) {
        let mut outgoing: Vec<(String, String)> = Vec::new();
        for ch in changes {
            let kind = if ch.online {
                "stream.online"
            } else {
                "stream.offline"
            };
            let subs: Vec<SubRec> = self
                .subs
                .iter()
                .filter(|s| {
                    s.kind == kind && s.broadcaster == ch.broadcaster_id && s.status == "enabled"
                })
                .cloned()
                .collect();
            for sub in subs {
                let mut event = json!({
                    "id": ch.stream_id,
                    "broadcaster_user_id": ch.broadcaster_id,
                    "broadcaster_user_login": ch.login,
                    "broadcaster_user_name": ch.display_name,
                });
                if ch.online {
                    event["type"] = json!("live");
                    event["started_at"] = json!(rfc3339(ch.started_at));
                }
                let (_, env) = self.envelope(
                    "notification",
                    &sub,
                    json!({"subscription": sub.json(), "event": event}),
                );
                let Some(session) = self.route(&sub.conduit_id, &sub.broadcaster) else {
                    self.counters.undeliverable += 1;
                    continue;
                };
                self.counters.notifications += 1;
                outgoing.push((session.clone(), env.to_string()));
                if self.dup_same > 0 {
                    self.dup_same -= 1;
                    outgoing.push((session, env.to_string()));
                } else if self.dup_new > 0 {
                    self.dup_new -= 1;
                    let mut copy = env.clone();
                    copy["metadata"]["message_id"] = json!(self.opaque_id());
                    outgoing.push((session, copy.to_string()));
                }
            }
        }
        if self.reorder > 0 && outgoing.len() > 1 {
            self.reorder -= 1;
            outgoing.reverse();
        }
        for (session, text) in outgoing {
            self.send_to_session(&session, text);
        }
    }

    /// Deletes a conduit (of `client_id`, when given), as Delete Conduit
    /// does: it is gone from Get Conduits, Get / Update Conduit Shards for it
    /// answer 404, and its subscriptions become `conduit_deleted` (Twitch's
    /// status for them; they stop costing and get no more notifications). No
    /// revocation is sent (the conduit has no shard left to carry one), and
    /// its shards' sockets stay open: Twitch documents neither, so a client
    /// finds out from Helix. False when there is no such conduit.
    pub fn delete_conduit(&mut self, client_id: Option<&str>, conduit_id: &str) -> bool {
        let Some(i) = self
            .conduits
            .iter()
            .position(|c| c.id == conduit_id && client_id.is_none_or(|x| c.client_id == x))
        else {
            return false;
        };
        self.conduits.remove(i);
        for s in self.subs.iter_mut().filter(|s| s.conduit_id == conduit_id) {
            s.status = "conduit_deleted".into();
        }
        true
    }

    /// Revokes a subscription: its status becomes `status`, it stops costing,
    /// and a `revocation` goes to the shard its broadcaster hashes to.
    pub fn revoke(&mut self, sub_id: &str, status: &str) -> bool {
        let Some(i) = self.subs.iter().position(|s| s.id == sub_id) else {
            return false;
        };
        self.subs[i].status = status.to_string();
        let sub = self.subs[i].clone();
        let (_, env) = self.envelope("revocation", &sub, json!({"subscription": sub.json()}));
        self.counters.revocations += 1;
        if let Some(session) = self.route(&sub.conduit_id, &sub.broadcaster) {
            self.send_to_session(&session, env.to_string());
        }
        true
    }
}

fn query_param(uri: &str, key: &str) -> Option<String> {
    let q = uri.split_once('?')?.1;
    crate::http::parse_urlencoded(q)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn serve_socket(hub: Hub, stream: tokio::net::TcpStream) {
    let uri = Arc::new(Mutex::new(String::new()));
    let u2 = uri.clone();
    let callback =
        move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
              resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            *u2.lock().unwrap_or_else(|e| e.into_inner()) = req.uri().to_string();
            Ok(resp)
        };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let uri = uri.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (mut sink, mut frames) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let keepalive = query_param(&uri, "keepalive_timeout_seconds")
        .and_then(|k| k.parse::<i64>().ok())
        .map(|k| k.clamp(10, 600) as u64)
        .unwrap_or(10);
    let welcomed_at = Instant::now();
    let picked = {
        let mut h = hub.lock();
        h.counters.connections += 1;
        let conn = h.next_conn;
        h.next_conn += 1;
        let cfg = h.cfg.clone();
        let session = match query_param(&uri, "reconnect") {
            Some(token) => match h.reconnect_tokens.remove(&token) {
                Some(s) if h.sessions.contains_key(&s) => Some((s, false)),
                _ => None,
            },
            None => {
                let s = h.session_id();
                Some((s, true))
            }
        };
        if let Some((s, fresh)) = &session {
            h.conns.insert(conn, tx.clone());
            if *fresh {
                h.sessions.insert(
                    s.clone(),
                    SessionRec {
                        conn,
                        reconnect_asked: HashMap::new(),
                    },
                );
            }
            h.counters.welcomes += 1;
        } else {
            *h.counters.closes.entry(4007).or_default() += 1;
        }
        session.map(|(s, fresh)| (conn, s, fresh, cfg))
    };
    let Some((conn, session, fresh, cfg)) = picked else {
        let _ = sink
            .send(Ws::Close(Some(CloseFrame {
                code: CloseCode::from(4007),
                reason: "invalid reconnect".into(),
            })))
            .await;
        return;
    };
    let welcome = json!({
        "metadata": {"message_id": hub.lock().opaque_id(), "message_type": "session_welcome",
                     "message_timestamp": rfc3339_nanos(SystemTime::now())},
        "payload": {"session": {"id": session, "status": "connected",
                                "connected_at": rfc3339_nanos(SystemTime::now()),
                                "keepalive_timeout_seconds": keepalive,
                                "reconnect_url": null, "recovery_url": null}}
    });
    if sink
        .send(Ws::Text(welcome.to_string().into()))
        .await
        .is_err()
    {
        hub.lock().gone(conn);
        return;
    }
    if !fresh {
        // the reconnected connection takes over delivery
        let mut h = hub.lock();
        if let Some(s) = h.sessions.get_mut(&session) {
            s.conn = conn;
        }
    }
    let mut last_sent = Instant::now();
    let mut last_pong = Instant::now();
    let mut ping = cfg
        .ping_every
        .map(|p| tokio::time::interval_at((Instant::now() + p).into(), p));
    let keepalive = Duration::from_secs(keepalive);
    let deadline_check = welcomed_at + cfg.assign_deadline;
    let mut deadline_done = !fresh;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(t)) => {
                    if sink.send(Ws::Text(t.into())).await.is_err() { break; }
                    last_sent = Instant::now();
                }
                Some(Out::Close(code, why)) => {
                    let _ = sink.send(Ws::Close(Some(CloseFrame { code: CloseCode::from(code), reason: why.into() }))).await;
                    // the closing handshake: wait a little for the client's close
                    // (dropping at once could reset the connection and lose the frame)
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(f)) = frames.next().await {
                            if matches!(f, Ws::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
                Some(Out::Drop) | None => break,
            },
            f = frames.next() => match f {
                Some(Ok(Ws::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Ws::Ping(_))) => {}
                Some(Ok(Ws::Text(_) | Ws::Binary(_))) => {
                    let mut h = hub.lock();
                    h.counters.inbound_frames += 1;
                    h.close(conn, 4001, "client sent inbound traffic");
                    drop(h);
                }
                Some(Ok(Ws::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            _ = async { match ping.as_mut() { Some(p) => { p.tick().await; } None => std::future::pending::<()>().await } } => {
                let period = cfg.ping_every.unwrap_or_default();
                let late = last_pong.elapsed() > period * 2 + Duration::from_secs(1);
                if late {
                    hub.lock().close(conn, 4002, "client failed ping-pong");
                } else if sink.send(Ws::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let keepalive_msg = {
                    let mut h = hub.lock();
                    if !deadline_done && now >= deadline_check {
                        deadline_done = true;
                        if !h.is_shard(&session) {
                            h.close(conn, 4003, "connection unused");
                        }
                    }
                    let asked = h.sessions.get(&session).and_then(|s| s.reconnect_asked.get(&conn).copied());
                    if asked.is_some_and(|t| now >= t + cfg.reconnect_grace) {
                        if let Some(s) = h.sessions.get_mut(&session) { s.reconnect_asked.remove(&conn); }
                        h.close(conn, 4004, "reconnect grace time expired");
                    }
                    let current = h.sessions.get(&session).is_some_and(|s| s.conn == conn);
                    if current && !h.silence && now >= last_sent + keepalive {
                        h.counters.keepalives += 1;
                        Some(json!({"metadata": {"message_id": h.opaque_id(), "message_type": "session_keepalive",
                                                 "message_timestamp": rfc3339_nanos(SystemTime::now())}, "payload": {}}))
                    } else {
                        None
                    }
                };
                if let Some(k) = keepalive_msg {
                    if sink.send(Ws::Text(k.to_string().into())).await.is_err() { break; }
                    last_sent = now;
                }
            }
        }
    }
    hub.lock().gone(conn);
}

async fn pump(weak: Weak<Shared>, hub: Hub, notify: Arc<tokio::sync::Notify>) {
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(50), notify.notified()).await;
        let Some(shared) = weak.upgrade() else { return };
        let changes = {
            let mut st = shared.lock();
            st.world
                .changes
                .as_mut()
                .map(|l| std::mem::take(&mut l.changes))
                .unwrap_or_default()
        };
        drop(shared);
        if !changes.is_empty() {
            hub.lock().dispatch(changes);
        }
    }
}

async fn listen(
    listener: std::net::TcpListener,
    weak: Weak<Shared>,
    hub: Hub,
    notify: Arc<tokio::sync::Notify>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let pump = tokio::spawn(pump(weak.clone(), hub.clone(), notify));
    loop {
        tokio::select! {
            a = listener.accept() => {
                if let Ok((stream, _)) = a {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_socket(hub.clone(), stream));
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if weak.strong_count() == 0 {
                    break;
                }
            }
        }
    }
    pump.abort();
}

impl Simulator {
    /// Starts the EventSub WebSocket server on 127.0.0.1 (its own listener and
    /// runtime thread; it stops when the simulator is dropped) and turns on the
    /// world's change log. Returns its address; clients connect to
    /// [`Simulator::eventsub_url`].
    pub fn start_eventsub(&self, cfg: EventSubConfig) -> std::io::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", cfg.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let hub = self.shared.eventsub.clone();
        {
            let mut h = hub.lock();
            h.cfg = cfg;
            h.addr = Some(addr);
        }
        let notify = {
            let mut st = self.shared.lock();
            let log = st.world.changes.get_or_insert_with(ChangeLog::default);
            log.notify.clone()
        };
        let weak = Arc::downgrade(&self.shared);
        std::thread::Builder::new()
            .name("helix-sim-eventsub".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(listen(listener, weak, hub, notify));
            })?;
        Ok(addr)
    }

    /// `ws://127.0.0.1:port/ws` once [`Simulator::start_eventsub`] ran.
    pub fn eventsub_url(&self) -> Option<String> {
        self.shared
            .eventsub
            .lock()
            .addr
            .map(|a| format!("ws://{a}/ws"))
    }

    pub fn es_counters(&self) -> EsCounters {
        self.shared.eventsub.lock().counters.clone()
    }

    pub fn es_fault(&self, fault: EsFault) {
        let mut h = self.shared.eventsub.lock();
        match fault {
            EsFault::DropSockets => {
                for tx in h.conns.values() {
                    let _ = tx.send(Out::Drop);
                }
            }
            EsFault::CloseSockets(code) => {
                let conns: Vec<u64> = h.conns.keys().copied().collect();
                for c in conns {
                    h.close(c, code, "simulated close");
                }
            }
            EsFault::Silence(on) => h.silence = on,
            EsFault::DuplicateSameId(n) => h.dup_same = n,
            EsFault::DuplicateNewId(n) => h.dup_new = n,
            EsFault::Reorder(n) => h.reorder = n,
            EsFault::DisableShards => {
                let now = SystemTime::now();
                for c in h.conduits.iter_mut() {
                    for s in c.shards.iter_mut().filter(|s| s.status == "enabled") {
                        s.status = "websocket_disconnected".into();
                        s.session = None;
                        s.disconnected_at = Some(now);
                    }
                }
            }
        }
    }

    /// Sends `session_reconnect` to every connected session; returns how many.
    pub fn es_reconnect(&self) -> usize {
        let mut h = self.shared.eventsub.lock();
        let Some(addr) = h.addr else { return 0 };
        let sessions: Vec<(String, u64)> = h
            .sessions
            .iter()
            .map(|(id, s)| (id.clone(), s.conn))
            .collect();
        let mut n = 0;
        for (id, conn) in sessions {
            let token = h.opaque_id();
            h.reconnect_tokens.insert(token.clone(), id.clone());
            let msg = json!({
                "metadata": {"message_id": h.opaque_id(), "message_type": "session_reconnect",
                             "message_timestamp": rfc3339_nanos(SystemTime::now())},
                "payload": {"session": {"id": id, "status": "reconnecting", "keepalive_timeout_seconds": null,
                                        "reconnect_url": format!("ws://{addr}/ws?reconnect={token}"),
                                        "connected_at": rfc3339_nanos(SystemTime::now())}}
            });
            if let Some(tx) = h.conns.get(&conn) {
                if tx.send(Out::Text(msg.to_string())).is_ok() {
                    n += 1;
                }
            }
            if let Some(s) = h.sessions.get_mut(&id) {
                s.reconnect_asked.insert(conn, Instant::now());
            }
            h.counters.reconnect_messages += 1;
        }
        n
    }

    /// Sends a raw text frame to every connected session (garbage, foreign events).
    pub fn es_send_raw(&self, text: &str) -> usize {
        let h = self.shared.eventsub.lock();
        let conns: HashSet<u64> = h.sessions.values().map(|s| s.conn).collect();
        conns
            .iter()
            .filter_map(|c| h.conns.get(c))
            .filter(|tx| tx.send(Out::Text(text.to_string())).is_ok())
            .count()
    }

    /// Revokes a subscription with a status (`authorization_revoked`, `user_removed`, ...).
    pub fn es_revoke(&self, subscription_id: &str, status: &str) -> bool {
        self.shared.eventsub.lock().revoke(subscription_id, status)
    }

    /// Deletes a conduit as Twitch does on Delete Conduit, or by itself after
    /// 72 hours with every shard disabled: its subscriptions become
    /// `conduit_deleted`, Get / Update Conduit Shards for it answer 404.
    /// False when there is no such conduit.
    pub fn es_delete_conduit(&self, conduit_id: &str) -> bool {
        self.shared.eventsub.lock().delete_conduit(None, conduit_id)
    }

    /// Subscriptions as `(id, type, broadcaster, status, cost)`, oldest first.
    pub fn es_subscriptions(&self) -> Vec<(String, String, String, String, u64)> {
        self.shared
            .eventsub
            .lock()
            .subs
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    s.kind.clone(),
                    s.broadcaster.clone(),
                    s.status.clone(),
                    s.cost,
                )
            })
            .collect()
    }

    /// Shard statuses of a conduit (`enabled`, `websocket_disconnected`, ...).
    pub fn es_shards(&self, conduit_id: &str) -> Vec<(Option<String>, String)> {
        self.shared
            .eventsub
            .lock()
            .conduits
            .iter()
            .find(|c| c.id == conduit_id)
            .map(|c| {
                c.shards
                    .iter()
                    .map(|s| (s.session.clone(), s.status.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes a subscription as Delete EventSub Subscription from another
    /// client would: no message tells the conduit. False when there is none.
    pub fn es_delete_subscription(&self, subscription_id: &str) -> bool {
        let mut es = self.shared.eventsub.lock();
        let before = es.subs.len();
        es.subs.retain(|s| s.id != subscription_id);
        es.subs.len() < before
    }

    /// Assigns a conduit's shard to another WebSocket session, enabled, as
    /// Update Conduit Shards from another client (a copy of the database
    /// using the same conduit) would: events for it go to that session.
    /// False when there is no such conduit or shard.
    pub fn es_assign_shard_elsewhere(&self, conduit_id: &str, shard: usize, session: &str) -> bool {
        let mut es = self.shared.eventsub.lock();
        let Some(s) = es
            .conduits
            .iter_mut()
            .find(|c| c.id == conduit_id)
            .and_then(|c| c.shards.get_mut(shard))
        else {
            return false;
        };
        s.session = Some(session.to_string());
        s.status = "enabled".to_string();
        true
    }

    /// A broadcaster who authorised the client: their subscriptions cost 0.
    pub fn es_authorize(&self, broadcaster_id: &str) {
        self.shared
            .eventsub
            .lock()
            .authorized
            .insert(broadcaster_id.to_string());
    }

    /// Changes the page size of `GET /eventsub/subscriptions`.
    pub fn es_set_subscriptions_page_size(&self, n: usize) {
        self.shared.eventsub.lock().cfg.subscriptions_page_size = n.max(1);
    }
    /// Changes `max_total_cost` for every client.
    pub fn es_set_max_total_cost(&self, max: u64) {
        self.shared.eventsub.lock().cfg.max_total_cost = max;
    }
}

/// A webhook delivery as Twitch signs it: the seven `Twitch-Eventsub-*`
/// headers for `body`, with `Twitch-Eventsub-Message-Signature` =
/// `sha256=` + hex HMAC-SHA256(secret, message id + timestamp + body). The
/// timestamp has nanoseconds, so a receiver that re-formats it before hashing
/// fails. [`crate::webhook::WebhookSender`] POSTs deliveries signed with it.
pub fn webhook_headers(
    secret: &str,
    message_id: &str,
    timestamp: &str,
    message_type: &str,
    subscription_type: &str,
    body: &str,
) -> Vec<(String, String)> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message_id.as_bytes());
    mac.update(timestamp.as_bytes());
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    [
        ("Twitch-Eventsub-Message-Id", message_id.to_string()),
        ("Twitch-Eventsub-Message-Retry", "0".to_string()),
        ("Twitch-Eventsub-Message-Type", message_type.to_string()),
        ("Twitch-Eventsub-Message-Signature", signature),
        ("Twitch-Eventsub-Message-Timestamp", timestamp.to_string()),
        (
            "Twitch-Eventsub-Subscription-Type",
            subscription_type.to_string(),
        ),
        ("Twitch-Eventsub-Subscription-Version", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{World, WorldConfig};

    #[test]
    fn world_changes_are_recorded_only_while_on() {
        let mut w = World::new(&WorldConfig {
            channels: 3,
            live_fraction: 0.0,
            ..Default::default()
        });
        let id = w.channels[1].id.clone();
        w.go_live(&id);
        assert!(w.changes.is_none());
        w.changes = Some(ChangeLog::default());
        let old = w.stream_of(&id).unwrap().id.clone();
        w.restart(&id);
        let new = w.stream_of(&id).unwrap().id.clone();
        w.go_offline(&id);
        w.go_offline(&id); // already offline: no change
        let got: Vec<(bool, String)> = w
            .changes
            .as_ref()
            .unwrap()
            .changes
            .iter()
            .map(|c| (c.online, c.stream_id.clone()))
            .collect();
        assert_eq!(got, vec![(false, old), (true, new.clone()), (false, new)]);
    }

    #[test]
    fn timestamps_have_nanoseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(rfc3339_nanos(t), "2023-11-14T22:13:20.123456789Z");
    }

    #[test]
    fn routing_falls_back_to_one_other_enabled_shard() {
        let hub = Hub::default();
        let mut h = hub.lock();
        let (tx, _rx) = mpsc::unbounded_channel();
        h.conns.insert(1, tx);
        h.sessions.insert(
            "s1".into(),
            SessionRec {
                conn: 1,
                reconnect_asked: HashMap::new(),
            },
        );
        let shard = |s: Option<&str>, st: &str| ShardRec {
            session: s.map(str::to_string),
            status: st.into(),
            connected_at: None,
            disconnected_at: None,
        };
        h.conduits.push(ConduitRec {
            id: "c".into(),
            client_id: "x".into(),
            shards: vec![
                shard(Some("gone"), "websocket_disconnected"),
                shard(Some("s1"), "enabled"),
            ],
        });
        for b in ["1", "2", "3", "4", "5"] {
            assert_eq!(h.route("c", b).as_deref(), Some("s1"));
        }
        h.conduits[0].shards[1].status = "websocket_disconnected".into();
        assert_eq!(h.route("c", "1"), None);
    }
}
