//! A Twitch Helix and OAuth simulator for loopback use.
//!
//! It serves the endpoints twitch_sync uses, the way Twitch documents them:
//! - `POST /oauth2/token` (client-credentials grant) and `GET /oauth2/validate`;
//! - `GET /helix/streams` with repeatable `user_id` / `user_login` (at most 100
//!   together), repeatable `game_id` and `language` (at most 100 each; every
//!   filter given must match), `type`, `first` (default 20, 1..=100), `after` /
//!   `before` cursors, only live streams in `data`, by viewer count (most
//!   first), and `pagination: {}` on the last page;
//! - a token bucket per client id with `Ratelimit-Limit`, `Ratelimit-Remaining`
//!   and `Ratelimit-Reset` (epoch seconds) on every Helix answer, 429 when empty;
//! - Twitch's JSON error bodies (`error`, `status`, `message`).
//!
//! It simulates a world (see [`world`]) and lets tests inject faults and read
//! counters. Start one in-process with [`Simulator::start`], or run the
//! `helix-sim` binary; the binary also serves `/_sim/*` admin routes.
//!
//! It speaks plain HTTP/1.1 by default, or HTTPS like Twitch ([`Config::tls`]):
//! TLS by rustls with a certificate made at start ([`tls`]), HTTP/2 (hyper,
//! [`h2`]) and HTTP/1.1 offered by ALPN, or HTTP/1.1 only. It counts
//! connections, TLS handshakes and HTTP/2 connections ([`Counters`]).

pub mod bucket;
pub mod conduits;
pub mod eventsub;
pub mod h2;
pub mod http;
pub mod tls;
pub mod webhook;
pub mod world;

use bucket::Bucket;
use http::{Delivery, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use world::{Rng, World, WorldConfig};

/// Twitch's documented page size default and maximum for Get Streams.
pub const DEFAULT_FIRST: usize = 20;
pub const MAX_FIRST: usize = 100;
/// The combined maximum of `user_id` and `user_login` values.
pub const MAX_IDS: usize = 100;
/// The maximum of `game_id` values, and of `language` values, per request.
pub const MAX_GAME_IDS: usize = 100;
pub const MAX_LANGUAGES: usize = 100;

#[derive(Debug, Clone)]
pub struct Config {
    /// 0 picks a free port.
    pub port: u16,
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of minted app access tokens (Twitch: about 58–60 days).
    pub token_ttl: Duration,
    /// Bucket size in points and the time it takes to refill from empty.
    pub bucket_limit: u32,
    pub bucket_period: Duration,
    /// Delay before every answer.
    pub latency: Duration,
    /// Advance the world by one tick this often (None: only on request).
    pub tick_every: Option<Duration>,
    pub world: WorldConfig,
    /// Serve HTTPS with these ALPN protocols (None: plain HTTP/1.1).
    pub tls: Option<tls::Alpn>,
    /// Where to write the CA certificate (PEM) when serving HTTPS (None: a
    /// new file in the temporary directory, removed when the simulator stops).
    pub ca_file: Option<PathBuf>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of HTTP/2 connections (100: the least
    /// RFC 9113 recommends, a common server default).
    pub h2_max_concurrent_streams: u32,
    /// The listening socket's backlog: connections accepted by the kernel and
    /// not yet by the server (1024; Python's http.server uses 5).
    pub listen_backlog: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 0,
            client_id: "simclientid0000000000000000000".into(),
            client_secret: "simclientsecret000000000000000".into(),
            token_ttl: Duration::from_secs(5_011_271),
            bucket_limit: 800,
            bucket_period: Duration::from_secs(60),
            latency: Duration::ZERO,
            tick_every: None,
            world: WorldConfig::default(),
            tls: None,
            ca_file: None,
            h2_max_concurrent_streams: 100,
            listen_backlog: 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    #[default]
    Streams,
    Token,
    Validate,
    /// The EventSub REST endpoints (conduits, shards, subscriptions): only
    /// `Status` and `ErrorMessage` faults, answered before authentication
    /// (`{authorization}` in a message echoes the request's header).
    EventSub,
    Any,
}

/// What a fault does to the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status and Twitch's JSON error body (429 keeps the rate-limit headers).
    Status { status: u16 },
    /// Answer with this status and Twitch's JSON error body (Helix's, or
    /// id.twitch.tv's) carrying this `message` (which may hold anything a
    /// server could send, such as the form it was sent).
    ErrorMessage { status: u16, message: String },
    /// Get Streams: the real answer, with these values as its `Ratelimit-*`
    /// headers, sent as they are (a Helix stand-in with a broken bucket).
    RateLimitHeaders {
        limit: String,
        remaining: String,
        reset: String,
    },
    /// Wait this long before answering (past a client's timeout, say).
    Delay { ms: u64 },
    /// Send the headers and half the body, then close the connection.
    DropMidBody,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with the real JSON cut in half (Content-Length matches what is sent).
    Truncated,
    /// 200 with a valid JSON body padded to this many bytes.
    Oversized { bytes: usize },
    /// The real answer, sent `chunk` bytes at a time with `pause_ms` between chunks.
    Trickle { chunk: usize, pause_ms: u64 },
    /// 200 with exactly this body.
    Body { body: String },
    /// Get Streams: an empty `data` page that still carries a cursor.
    EmptyPage,
    /// Get Streams: every page's cursor points back to the first page.
    CursorLoop,
    /// Get Streams: a cursor on the last page too, leading to an empty page
    /// without one (Twitch: "expected and valid", twitchdev/issues#2).
    SurpriseCursor,
    /// Get Streams: each page starts with the last stream of the previous page.
    DuplicateAcrossPages,
    /// Get Streams: pages hold at most `max` streams whatever `first` asks (as a
    /// Helix stand-in that pages more eagerly might).
    PageCap { max: usize },
    /// Get Streams: the real answer without the `Ratelimit-*` headers (as a
    /// Helix stand-in that does not send them might).
    NoRateLimitHeaders,
    /// Get Streams: the real answer labelled `Content-Encoding: <coding>`
    /// whatever the request's `Accept-Encoding` (as a server that compresses
    /// regardless might; the body itself is left as it is).
    ContentEncoding { coding: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(flatten)]
    pub kind: FaultKind,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Only requests that ask for this broadcaster id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Only requests that ask for this game (category) id.
    #[serde(default)]
    pub game_id: Option<String>,
    /// Let this many matching requests pass untouched first (a failure in the
    /// middle of a walk through pages, say).
    #[serde(default)]
    pub skip: u32,
    /// Apply to this many matching requests, then retire (None: forever).
    #[serde(default)]
    pub times: Option<u32>,
    /// Apply to a matching request with this chance (None: always).
    #[serde(default)]
    pub probability: Option<f64>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            endpoint: Endpoint::Streams,
            user_id: None,
            game_id: None,
            skip: 0,
            times: None,
            probability: None,
        }
    }
    pub fn on(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }
    pub fn for_user(mut self, id: &str) -> Self {
        self.user_id = Some(id.to_string());
        self
    }
    pub fn for_game(mut self, game_id: &str) -> Self {
        self.game_id = Some(game_id.to_string());
        self
    }
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }
}

/// What the simulator has seen and sent, for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub streams_requests: u64,
    /// `user_id` + `user_login` values in each Get Streams request, in arrival order.
    pub ids_per_request: Vec<usize>,
    /// Get Streams requests that carried a `game_id` (directory pages).
    #[serde(default)]
    pub directory_requests: u64,
    /// `first` as sent in each Get Streams request (None: not sent).
    pub first_per_request: Vec<Option<usize>>,
    /// Get Streams requests that carried an `after` or `before` cursor.
    pub pages: u64,
    pub token_requests: u64,
    pub tokens_issued: u64,
    pub validate_requests: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub bad_requests: u64,
    pub faults_applied: u64,
    pub max_in_flight: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed (a client that refused the certificate, say).
    pub tls_failures: u64,
    /// Connections that negotiated HTTP/2 by ALPN.
    pub http2_connections: u64,
}

struct TokenInfo {
    client_id: String,
    expires_at: SystemTime,
}

struct State {
    cfg: Config,
    world: World,
    tokens: HashMap<String, TokenInfo>,
    buckets: HashMap<String, Bucket>,
    faults: Vec<Fault>,
    counters: Counters,
    rng: Rng,
    in_flight: u64,
}

struct Shared {
    state: Mutex<State>,
    /// EventSub (WebSocket server and REST endpoints): `eventsub`, `conduits`.
    eventsub: eventsub::Hub,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running simulator; it stops when dropped.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<tls::Alpn>,
    /// The CA certificate's file, and whether the simulator made it up (and removes it).
    ca_file: Option<(PathBuf, bool)>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn error_body(status: u16, message: &str) -> Value {
    let error = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    json!({"error": error, "status": status, "message": message})
}

/// A response with a bucket's `Ratelimit-*` headers, as Twitch sends them.
pub(crate) fn with_rate_limit(r: Response, snap: &bucket::Snapshot) -> Response {
    r.with_header("Ratelimit-Limit", snap.limit.to_string())
        .with_header("Ratelimit-Remaining", snap.remaining.to_string())
        .with_header("Ratelimit-Reset", snap.reset.to_string())
}

/// The bucket of requests without a valid bearer token: 30 points a minute
/// (Twitch's rate-limit guide), keyed apart from every client id.
const UNAUTHENTICATED_BUCKET_LIMIT: u32 = 30;
const UNAUTHENTICATED_BUCKET_KEY: &str = "\0unauthenticated";

fn helix_error(status: u16, message: &str) -> Response {
    Response::json(status, &error_body(status, message))
}

/// OAuth server errors have no `error` field: `{"status":403,"message":"invalid client secret"}`.
fn oauth_error(status: u16, message: &str) -> Response {
    Response::json(status, &json!({"status": status, "message": message}))
}

fn encode_cursor(offset: usize) -> String {
    // Opaque to clients, like Twitch's base64 cursors.
    let raw = format!("{{\"o\":{offset}}}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(c: &str) -> Option<usize> {
    if !c.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    let v: Value = serde_json::from_slice(&bytes?).ok()?;
    v.get("o")?.as_u64().map(|o| o as usize)
}

impl State {
    pub(crate) fn matching_fault(
        &mut self,
        endpoint: Endpoint,
        req: &Request,
    ) -> Option<FaultKind> {
        let ids: HashSet<&str> = req.query_all("user_id").collect();
        let games: HashSet<&str> = req.query_all("game_id").collect();
        let mut hit = None;
        for (i, f) in self.faults.iter_mut().enumerate() {
            if f.endpoint != endpoint && f.endpoint != Endpoint::Any {
                continue;
            }
            if let Some(u) = &f.user_id {
                if !ids.contains(u.as_str()) {
                    continue;
                }
            }
            if let Some(g) = &f.game_id {
                if !games.contains(g.as_str()) {
                    continue;
                }
            }
            if f.skip > 0 {
                f.skip -= 1;
                continue;
            }
            if let Some(p) = f.probability {
                if !self.rng.chance(p) {
                    continue;
                }
            }
            if let Some(t) = f.times.as_mut() {
                *t = t.saturating_sub(1);
            }
            hit = Some((i, f.kind.clone()));
            break;
        }
        let (i, kind) = hit?;
        if self.faults[i].times == Some(0) {
            self.faults.remove(i);
        }
        self.counters.faults_applied += 1;
        Some(kind)
    }

    fn bucket(&mut self, client_id: &str) -> &mut Bucket {
        let (limit, period) = (self.cfg.bucket_limit, self.cfg.bucket_period);
        self.buckets
            .entry(client_id.to_string())
            .or_insert_with(|| Bucket::new(limit, period))
    }

    fn mint_token(&mut self, client_id: &str) -> String {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let token: String = (0..30)
            .map(|_| alphabet[self.rng.below(alphabet.len() as u64) as usize] as char)
            .collect();
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                client_id: client_id.to_string(),
                expires_at: SystemTime::now() + self.cfg.token_ttl,
            },
        );
        self.counters.tokens_issued += 1;
        token
    }

    fn live_token(&self, token: &str) -> Option<&TokenInfo> {
        self.tokens
            .get(token)
            .filter(|t| t.expires_at > SystemTime::now())
    }

    fn handle_token(&mut self, req: &Request) -> Response {
        self.counters.token_requests += 1;
        if req.method != "POST" {
            return Response::text(404, "404 page not found");
        }
        // Twitch accepts the parameters in the query string or a form body.
        let mut params = req.query.clone();
        params.extend(req.form());
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Some(client_id) = get("client_id").filter(|s| !s.is_empty()) else {
            return oauth_error(400, "missing client id");
        };
        if client_id != self.cfg.client_id {
            return oauth_error(400, "invalid client");
        }
        let Some(secret) = get("client_secret").filter(|s| !s.is_empty()) else {
            return oauth_error(400, "missing client secret");
        };
        if secret != self.cfg.client_secret {
            return oauth_error(403, "invalid client secret");
        }
        match get("grant_type").as_deref() {
            Some("client_credentials") => {}
            None | Some("") => return oauth_error(400, "missing grant type"),
            Some(_) => return oauth_error(400, "unsupported grant type"),
        }
        let token = self.mint_token(&client_id);
        Response::json(
            200,
            &json!({
                "access_token": token,
                "expires_in": self.cfg.token_ttl.as_secs(),
                "token_type": "bearer"
            }),
        )
    }

    fn handle_validate(&mut self, req: &Request) -> Response {
        self.counters.validate_requests += 1;
        let token = req
            .header("authorization")
            .and_then(|h| {
                h.strip_prefix("OAuth ")
                    .or_else(|| h.strip_prefix("Bearer "))
            })
            .map(str::trim);
        let Some(token) = token else {
            return oauth_error(401, "missing authorization token");
        };
        match self.live_token(token) {
            Some(info) => {
                let expires_in = info
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                Response::json(
                    200,
                    &json!({
                        "client_id": info.client_id,
                        "login": null,
                        "scopes": [],
                        "user_id": null,
                        "expires_in": expires_in
                    }),
                )
            }
            None => oauth_error(401, "invalid access token"),
        }
    }

    /// Authenticates a Helix request; Err is the 401 to send (counted).
    /// Twitch counts a request without a valid bearer token in a small bucket
    /// of its own (30 points a minute, not the app's 800), and its 401 carries
    /// that bucket's headers.
    fn authenticate(&mut self, req: &Request) -> Result<String, Response> {
        let checked = self.check_credentials(req);
        if checked.is_ok() {
            return checked;
        }
        self.counters.unauthorized += 1;
        let period = self.cfg.bucket_period;
        let bucket = self
            .buckets
            .entry(UNAUTHENTICATED_BUCKET_KEY.to_string())
            .or_insert_with(|| Bucket::new(UNAUTHENTICATED_BUCKET_LIMIT, period));
        bucket.try_take(1);
        let snap = bucket.snapshot();
        checked.map_err(|resp| with_rate_limit(resp, &snap))
    }

    /// The client id of a request whose credentials Helix accepts; Err is the 401.
    fn check_credentials(&mut self, req: &Request) -> Result<String, Response> {
        let client_id = req.header("client-id").map(str::trim).unwrap_or("");
        let token = match req.header("authorization") {
            Some(h) => match h.split_once(' ') {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
                _ => return Err(helix_error(401, "Invalid OAuth token")),
            },
            None => return Err(helix_error(401, "OAuth token is missing")),
        };
        if client_id.is_empty() {
            return Err(helix_error(401, "Client ID is missing"));
        }
        match self.live_token(token) {
            None => Err(helix_error(401, "Invalid OAuth token")),
            Some(info) if info.client_id != client_id => {
                Err(helix_error(401, "Client ID and OAuth token do not match"))
            }
            Some(_) => Ok(client_id.to_string()),
        }
    }

    fn handle_streams(&mut self, req: &Request) -> Response {
        self.counters.streams_requests += 1;
        let ids: Vec<&str> = req.query_all("user_id").collect();
        let logins: Vec<&str> = req.query_all("user_login").collect();
        let games: Vec<&str> = req.query_all("game_id").collect();
        let languages: Vec<&str> = req.query_all("language").collect();
        self.counters.ids_per_request.push(ids.len() + logins.len());
        if !games.is_empty() {
            self.counters.directory_requests += 1;
        }
        let first_raw = req.query_all("first").next();
        self.counters
            .first_per_request
            .push(first_raw.and_then(|f| f.parse().ok()));
        let after = req.query_all("after").next();
        let before = req.query_all("before").next();
        if after.is_some() || before.is_some() {
            self.counters.pages += 1;
        }
        if req.method != "GET" {
            return helix_error(404, "Not Found");
        }

        let client_id = match self.authenticate(req) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let bucket = self.bucket(&client_id);
        let paid = bucket.try_take(1);
        let snap = bucket.snapshot();
        let with_limits = |r: Response| with_rate_limit(r, &snap);
        if !paid {
            self.counters.rate_limited += 1;
            return with_limits(helix_error(429, "Too Many Requests"));
        }

        // Parameters, as Twitch validates them.
        let first = match first_raw {
            None => DEFAULT_FIRST,
            Some(f) => match f.parse::<usize>() {
                Ok(n) if (1..=MAX_FIRST).contains(&n) => n,
                _ => {
                    self.counters.bad_requests += 1;
                    return with_limits(helix_error(
                        400,
                        "The parameter \"first\" was malformed: the value must be greater than or equal to 1 and less than or equal to 100",
                    ));
                }
            },
        };
        if ids.len() + logins.len() > MAX_IDS {
            self.counters.bad_requests += 1;
            let which = if ids.len() > logins.len() {
                "user_id"
            } else {
                "user_login"
            };
            return with_limits(helix_error(
                400,
                &format!("The parameter \"{which}\" was malformed: the value must be less than or equal to 100"),
            ));
        }
        for (name, n, max) in [
            ("game_id", games.len(), MAX_GAME_IDS),
            ("language", languages.len(), MAX_LANGUAGES),
        ] {
            if n > max {
                self.counters.bad_requests += 1;
                return with_limits(helix_error(
                    400,
                    &format!("The parameter \"{name}\" was malformed: the value must be less than or equal to {max}"),
                ));
            }
        }
        if after.is_some() && before.is_some() {
            self.counters.bad_requests += 1;
            return with_limits(helix_error(
                400,
                "Only one of the parameters \"after\" and \"before\" may be specified",
            ));
        }
        match req.query_all("type").next() {
            None | Some("all") | Some("live") => {}
            Some(_) => {
                self.counters.bad_requests += 1;
                return with_limits(helix_error(400, "The parameter \"type\" was malformed: the value must be one of \"all\", \"live\""));
            }
        }
        let cursor = after.or(before);
        let offset = match cursor {
            None => 0,
            Some(c) => match decode_cursor(c) {
                Some(o) => o,
                None => {
                    self.counters.bad_requests += 1;
                    return with_limits(helix_error(400, "Invalid cursor"));
                }
            },
        };

        let fault = self.matching_fault(Endpoint::Streams, req);
        if let Some(FaultKind::Status { status }) = fault {
            if status == 429 {
                self.counters.rate_limited += 1;
            }
            return with_limits(helix_error(status, "Simulated failure"));
        }
        if let Some(FaultKind::ErrorMessage { status, message }) = &fault {
            return with_limits(helix_error(*status, message));
        }

        // Which live streams the query selects: by id and login, each at most once,
        // ordered by viewer count like Twitch's listing.
        let filtered = !ids.is_empty() || !logins.is_empty();
        let mut selected: Vec<usize> = if filtered {
            let mut seen = HashSet::new();
            ids.iter()
                .filter_map(|id| self.world.index_of_id(id))
                .chain(logins.iter().filter_map(|l| self.world.index_of_login(l)))
                .filter(|i| seen.insert(*i))
                .collect()
        } else {
            (0..self.world.channels.len()).collect()
        };
        let first_page = cursor.is_none();
        selected.retain(|&i| {
            let c = &mut self.world.channels[i];
            let Some(s) = c.live.as_ref() else {
                return false;
            };
            // Every filter given must match (game_id and language each match any of their values).
            if !games.is_empty() && !games.contains(&s.game_id.as_str()) {
                return false;
            }
            if !languages.is_empty()
                && !languages
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(&s.language))
            {
                return false;
            }
            if c.hidden_polls > 0 {
                if first_page {
                    c.hidden_polls -= 1;
                }
                return false;
            }
            true
        });
        selected.sort_by_key(|&i| {
            let c = &self.world.channels[i];
            (
                std::cmp::Reverse(c.live.as_ref().map(|s| s.viewer_count).unwrap_or(0)),
                i,
            )
        });

        let first = match &fault {
            Some(FaultKind::PageCap { max }) => first.min((*max).max(1)),
            _ => first,
        };
        let (start, end) = if before.is_some() {
            (offset.saturating_sub(first), offset.min(selected.len()))
        } else {
            (
                offset.min(selected.len()),
                (offset + first).min(selected.len()),
            )
        };
        let mut data: Vec<Value> = selected[start..end]
            .iter()
            .map(|&i| self.world.stream_json(i))
            .collect();
        let mut next = if end < selected.len() {
            Some(end)
        } else {
            None
        };
        match &fault {
            Some(FaultKind::EmptyPage) => {
                data.clear();
                next = Some(end);
            }
            Some(FaultKind::CursorLoop) => next = Some(0),
            Some(FaultKind::SurpriseCursor) if !data.is_empty() => next = next.or(Some(end)),
            Some(FaultKind::DuplicateAcrossPages) => next = next.map(|n| n.saturating_sub(1)),
            _ => {}
        }
        let pagination = match next {
            Some(n) => json!({"cursor": encode_cursor(n)}),
            None => json!({}),
        };
        let body = json!({"data": data, "pagination": pagination});
        if fault == Some(FaultKind::NoRateLimitHeaders) {
            return Response::json(200, &body);
        }
        if let Some(FaultKind::ContentEncoding { coding }) = &fault {
            return with_limits(Response::json(200, &body))
                .with_header("Content-Encoding", coding.clone());
        }
        if let Some(FaultKind::RateLimitHeaders {
            limit,
            remaining,
            reset,
        }) = &fault
        {
            return Response::json(200, &body)
                .with_header("Ratelimit-Limit", limit.clone())
                .with_header("Ratelimit-Remaining", remaining.clone())
                .with_header("Ratelimit-Reset", reset.clone());
        }
        with_limits(apply_body_fault(Response::json(200, &body), fault))
    }
}

/// Faults that change how a successful answer looks or arrives.
fn apply_body_fault(mut resp: Response, fault: Option<FaultKind>) -> Response {
    match fault {
        Some(FaultKind::DropMidBody) => resp.delivery = Delivery::DropAfter(resp.body.len() / 2),
        Some(FaultKind::Malformed) => {
            resp.body = b"<html><body>upstream error</body></html>".to_vec()
        }
        Some(FaultKind::Truncated) => {
            let half = resp.body.len() / 2;
            resp.body.truncate(half);
        }
        Some(FaultKind::Oversized { bytes }) => {
            let pad = bytes.saturating_sub(resp.body.len() + 16);
            let mut v: Value = serde_json::from_slice(&resp.body).unwrap_or(json!({}));
            v["padding"] = Value::String("x".repeat(pad));
            resp.body = serde_json::to_vec(&v).unwrap_or_default();
        }
        Some(FaultKind::Trickle { chunk, pause_ms }) => {
            resp.delivery = Delivery::Trickle {
                chunk,
                pause: Duration::from_millis(pause_ms),
            }
        }
        Some(FaultKind::Body { body }) => resp.body = body.into_bytes(),
        Some(FaultKind::Delay { ms }) => resp.delay = Duration::from_millis(ms),
        _ => {}
    }
    resp
}

/// Admin routes of the binary: `/_sim/...`.
fn handle_admin(shared: &Shared, req: &Request) -> Response {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let mut st = shared.lock();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/_sim/counters") => Response::json(200, &json!(st.counters)),
        ("POST", "/_sim/tick") => {
            st.world.tick();
            Response::json(200, &json!({"live": st.world.live_count()}))
        }
        ("GET", "/_sim/world") => Response::json(
            200,
            &json!({"channels": st.world.channels.len(), "live": st.world.live_count()}),
        ),
        ("POST", "/_sim/faults") => match serde_json::from_value::<Fault>(body) {
            Ok(f) => {
                st.faults.push(f);
                Response::json(200, &json!({"faults": st.faults.len()}))
            }
            Err(e) => Response::json(400, &json!({"message": e.to_string()})),
        },
        ("DELETE", "/_sim/faults") => {
            st.faults.clear();
            Response::json(200, &json!({"faults": 0}))
        }
        ("POST", "/_sim/expire_tokens") => {
            st.tokens.clear();
            Response::json(200, &json!({"tokens": 0}))
        }
        ("POST", "/_sim/world") => {
            let id = body["id"].as_str().unwrap_or_default().to_string();
            let ok = match body["op"].as_str() {
                Some("go_live") => st.world.go_live(&id),
                Some("go_offline") => st.world.go_offline(&id),
                Some("restart") => st.world.restart(&id),
                Some("hide") => st
                    .world
                    .hide(&id, body["value"].as_u64().unwrap_or(1) as u32),
                Some("set_viewers") => st
                    .world
                    .set_viewers(&id, body["value"].as_i64().unwrap_or(0)),
                _ => false,
            };
            Response::json(if ok { 200 } else { 404 }, &json!({"ok": ok}))
        }
        _ => Response::text(404, "404 page not found"),
    }
}

async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let (latency, endpoint) = {
        let st = shared.lock();
        let endpoint = match req.path.as_str() {
            "/oauth2/token" => Some(Endpoint::Token),
            "/oauth2/validate" => Some(Endpoint::Validate),
            "/helix/streams" => Some(Endpoint::Streams),
            _ => None,
        };
        (st.cfg.latency, endpoint)
    };
    if req.path.starts_with("/_sim/") {
        return handle_admin(&shared, &req);
    }
    // EventSub REST endpoints (conduits, shards, subscriptions): crate::conduits
    if let Some(resp) = conduits::handle(&shared, &req) {
        return resp;
    }
    {
        let mut st = shared.lock();
        st.in_flight += 1;
        st.counters.max_in_flight = st.counters.max_in_flight.max(st.in_flight);
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = {
        let mut st = shared.lock();
        st.in_flight -= 1;
        match endpoint {
            Some(Endpoint::Streams) => st.handle_streams(&req),
            Some(ep) => match st.matching_fault(ep, &req) {
                Some(FaultKind::Status { status }) => oauth_error(status, "Simulated failure"),
                Some(FaultKind::ErrorMessage { status, message }) => oauth_error(status, &message),
                other => {
                    let r = if ep == Endpoint::Token {
                        st.handle_token(&req)
                    } else {
                        st.handle_validate(&req)
                    };
                    apply_body_fault(r, other)
                }
            },
            None => Response::text(404, "404 page not found"),
        }
    };
    // A Delay fault sleeps here, with the state unlocked.
    if !resp.delay.is_zero() {
        tokio::time::sleep(resp.delay).await;
    }
    resp
}

/// A listening socket on 127.0.0.1:`port` whose accept queue holds `backlog`
/// connections (the kernel drops SYNs beyond it, and clients retransmit a
/// second later).
fn listen(port: u16, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

impl Simulator {
    /// Starts a simulator on 127.0.0.1 on its own runtime thread.
    pub fn start(cfg: Config) -> std::io::Result<Simulator> {
        let listener = listen(cfg.port, cfg.listen_backlog)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let tls_alpn = cfg.tls;
        let (acceptor, ca_file) = match cfg.tls {
            None => (None, None),
            Some(alpn) => {
                let (path, ours) = match &cfg.ca_file {
                    Some(p) => (p.clone(), false),
                    None => (
                        std::env::temp_dir().join(format!(
                            "helix-sim-ca-{}-{}.pem",
                            std::process::id(),
                            addr.port()
                        )),
                        true,
                    ),
                };
                let setup = tls::setup(alpn, &path)?;
                (
                    Some(tokio_rustls::TlsAcceptor::from(setup.config)),
                    Some((path, ours)),
                )
            }
        };
        let state = State {
            world: World::new(&cfg.world),
            rng: Rng::new(cfg.world.seed ^ 0xA5A5),
            tokens: HashMap::new(),
            buckets: HashMap::new(),
            faults: Vec::new(),
            counters: Counters::default(),
            in_flight: 0,
            cfg,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            eventsub: eventsub::Hub::default(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("helix-sim".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(serve(listener, shared2, acceptor, rx));
            })?;
        Ok(Simulator {
            shared,
            addr,
            tls: tls_alpn,
            ca_file,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
    /// Base URL of the Helix API, as `twitch_sync.helix_url` wants it.
    pub fn helix_url(&self) -> String {
        format!("{}://{}/helix", self.scheme(), self.addr)
    }
    /// Base URL of the OAuth server, as `twitch_sync.auth_url` wants it.
    pub fn auth_url(&self) -> String {
        format!("{}://{}/oauth2", self.scheme(), self.addr)
    }
    /// The file holding the CA certificate (PEM) that signed the server's
    /// certificate, when serving HTTPS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_ref().map(|(p, _)| p.as_path())
    }
    pub fn client_id(&self) -> String {
        self.shared.lock().cfg.client_id.clone()
    }
    pub fn client_secret(&self) -> String {
        self.shared.lock().cfg.client_secret.clone()
    }

    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }
    pub fn reset_counters(&self) {
        self.shared.lock().counters = Counters::default();
    }
    pub fn add_fault(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }
    /// The tokens issued and still valid (to check that none leaks).
    pub fn tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }
    /// Makes every token issued so far invalid (401 on next use).
    pub fn expire_tokens(&self) {
        self.shared.lock().tokens.clear();
    }
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().cfg.latency = latency;
    }
    /// Empties the bucket of a client id.
    pub fn drain_bucket(&self, client_id: &str) {
        self.shared.lock().bucket(client_id).drain();
    }
    /// Replaces bucket size and refill period (existing buckets start over full).
    pub fn set_bucket(&self, limit: u32, period: Duration) {
        let mut st = self.shared.lock();
        st.cfg.bucket_limit = limit;
        st.cfg.bucket_period = period;
        st.buckets.clear();
    }
    /// Runs `f` with the world locked: read it or change it.
    pub fn world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.shared.lock().world)
    }
    pub fn tick(&self) {
        self.shared.lock().world.tick();
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((path, true)) = &self.ca_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let tick_every = shared.lock().cfg.tick_every;
    if let Some(every) = tick_every {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.tick().await;
            loop {
                iv.tick().await;
                s.lock().world.tick();
            }
        });
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    shared.lock().counters.connections += 1;
                    tokio::spawn(serve_one(stream, shared.clone(), acceptor.clone()));
                }
            }
        }
    }
}

/// One accepted connection: plain HTTP/1.1, or a TLS handshake and then
/// HTTP/2 or HTTP/1.1 as ALPN decided.
async fn serve_one(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let handler = {
        let s = shared.clone();
        move |req| handle(s.clone(), req)
    };
    let Some(acceptor) = acceptor else {
        return http::serve_connection(stream, handler).await;
    };
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            shared.lock().counters.tls_failures += 1;
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let max_streams = {
        let mut st = shared.lock();
        st.counters.tls_handshakes += 1;
        if h2 {
            st.counters.http2_connections += 1;
        }
        st.cfg.h2_max_concurrent_streams
    };
    if h2 {
        h2::serve_connection(tls, max_streams, handler).await;
    } else {
        http::serve_connection(tls, handler).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for o in [0, 1, 20, 12345] {
            assert_eq!(decode_cursor(&encode_cursor(o)), Some(o));
        }
        assert_eq!(decode_cursor("zz"), None);
        assert_eq!(decode_cursor("abc"), None);
        assert_eq!(decode_cursor(""), None);
    }

    #[test]
    fn faults_serialize_as_the_admin_api_takes_them() {
        let f: Fault = serde_json::from_str(r#"{"kind":"status","status":503,"times":2}"#).unwrap();
        assert_eq!(f.kind, FaultKind::Status { status: 503 });
        assert_eq!(f.times, Some(2));
        assert_eq!(f.endpoint, Endpoint::Streams);
    }
}
