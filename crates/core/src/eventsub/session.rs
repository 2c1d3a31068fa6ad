//! The life of one conduit shard's WebSocket session, as plain data: no
//! sockets, no clock of its own. A driver (the background worker, or a test)
//! feeds it what happened — a frame, a close, the answer of the shard
//! assignment, the time — and carries out the [`Action`]s it returns. Every
//! rule below has a unit test that runs it on a made-up clock.
//!
//! Rules (Twitch's WebSocket and conduit guides; see
//! `shared/notes/eventsub-facts.md` §2):
//! - **Connect** to `base_url?keepalive_timeout_seconds=N` (N clamped to
//!   10..=600). No welcome within [`ShardConfig::welcome_timeout`] of asking
//!   to connect: close, connect again (backoff).
//! - **Welcome → assign**: on the welcome of a fresh connection, or of a
//!   reconnect whose session id differs from the one the shard is assigned to,
//!   emit [`Action::Assign`] (the driver sends `PATCH
//!   /helix/eventsub/conduits/shards`). Twitch closes an unassigned session
//!   with 4003 ten seconds after the welcome, so a failed assignment is tried
//!   again every [`ShardConfig::assign_retry`] while
//!   [`ShardConfig::assign_deadline`] (10 s from the welcome) allows; after
//!   that the socket is closed and a new one opened (backoff).
//! - **Keepalive**: any text frame resets the timer, also one that is then
//!   dropped unparsed ([`Shard::on_frame`]); pings do not; nothing for
//!   `keepalive_timeout_seconds` + [`ShardConfig::keepalive_slack`] (a fifth
//!   of the window, at least [`ShardConfig::keepalive_grace`], 1 s by
//!   default) means the connection is lost: close it, connect afresh.
//! - **session_reconnect**: open the successor to the `reconnect_url`, keep
//!   the old socket (it delivers until the new welcome), and on the
//!   successor's welcome close the old one (1000) and promote the successor.
//!   The keepalive rule is suspended on the old socket meanwhile. A successor
//!   not welcomed within [`ShardConfig::reconnect_grace`] (30 s) is dropped;
//!   a second `session_reconnect` while one is in progress is ignored (a
//!   reconnect storm opens one successor at a time).
//! - **Close codes** ([`close_decision`]): every close leads to a fresh
//!   connection to the base URL (never to a reconnect URL: 4007 says it was
//!   invalid) after the backoff delay. The code only decides what is
//!   reported: its meaning, whether it was our fault (4001 inbound traffic,
//!   4002 ping-pong, 4003 unused: these point at a bug or an overloaded
//!   worker) or transient.
//! - **Backoff** ([`Backoff`]): the first retry after a healthy period is
//!   immediate (a dropped socket is re-assigned within keepalive + slack + one
//!   round trip), then 1 s, 2 s, 4 s … at most [`BackoffConfig::max`] (60 s),
//!   each scaled by a random factor in [0.5, 1) so that many shards do not
//!   retry in step. A successful assignment (or a welcome that needs none)
//!   resets it.

use super::message::{Envelope, Message};
use crate::rng::SplitMix64;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Twitch's production EventSub WebSocket URL.
pub const TWITCH_EVENTSUB_WS_URL: &str = match crate::config::defaults::EVENTSUB_URL.to_str() {
    Ok(s) => s,
    Err(_) => panic!("the EventSub URL is UTF-8"),
};

/// The driver's name for one socket; never reused within a [`Shard`].
pub type SocketId = u64;

#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    pub base: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Retry delays: 0, then base·2^(n-1) capped at max, times a jitter in [0.5, 1).
#[derive(Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig, seed: u64) -> Self {
        Backoff {
            cfg,
            attempt: 0,
            rng: SplitMix64(seed),
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let n = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .cfg
            .base
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(self.cfg.max);
        exp.mul_f64(0.5 + 0.5 * self.rng.unit())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardConfig {
    pub base_url: String,
    /// Asked for with `?keepalive_timeout_seconds=`; clamped to 10..=600.
    pub keepalive_seconds: u32,
    /// The least slack past the keepalive window; the slack itself is
    /// [`ShardConfig::keepalive_slack`].
    pub keepalive_grace: Duration,
    pub welcome_timeout: Duration,
    pub assign_deadline: Duration,
    pub assign_retry: Duration,
    pub reconnect_grace: Duration,
    pub backoff: BackoffConfig,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            base_url: TWITCH_EVENTSUB_WS_URL.to_string(),
            keepalive_seconds: 10,
            keepalive_grace: Duration::from_secs(1),
            welcome_timeout: Duration::from_secs(10),
            assign_deadline: Duration::from_secs(10),
            assign_retry: Duration::from_secs(1),
            reconnect_grace: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
        }
    }
}

impl ShardConfig {
    /// How long past `keepalive` (the welcome's `keepalive_timeout_seconds`)
    /// of silence the connection still counts as alive: the larger of
    /// [`ShardConfig::keepalive_grace`] and a fifth of the window. Twitch calls
    /// the connection lost when nothing arrived for longer than the window,
    /// but a sender checking on a tick, plus the network, can be late by more
    /// than a fixed second, and more so on a long window (twurple allows
    /// 1.2 × the window).
    pub fn keepalive_slack(&self, keepalive: Duration) -> Duration {
        self.keepalive_grace.max(keepalive / 5)
    }

    /// The URL a fresh connection opens.
    pub fn connect_url(&self) -> String {
        let k = self.keepalive_seconds.clamp(10, 600);
        let sep = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}keepalive_timeout_seconds={k}", self.base_url)
    }
}

/// What a close code means and how it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseDecision {
    pub code: Option<u16>,
    pub meaning: &'static str,
    /// The client broke a rule (4001, 4002, 4003): worth a WARNING, a bug or an overload.
    pub our_fault: bool,
    /// Twitch calls it transient, or it is a normal part of the protocol.
    pub transient: bool,
}

/// Twitch's close codes 4000–4007 (WebSocket reference); None is a socket
/// that ended without a close frame (a dropped connection).
pub fn close_decision(code: Option<u16>) -> CloseDecision {
    let (meaning, our_fault, transient) = match code {
        Some(4000) => ("internal server error", false, true),
        Some(4001) => ("client sent inbound traffic", true, false),
        Some(4002) => ("client failed ping-pong", true, false),
        Some(4003) => (
            "connection unused (shard not assigned in time)",
            true,
            false,
        ),
        Some(4004) => ("reconnect grace time expired", false, true),
        Some(4005) => ("network timeout", false, true),
        Some(4006) => ("network error", false, true),
        Some(4007) => ("invalid reconnect URL", false, true),
        Some(1000) => ("closed normally", false, true),
        None => ("connection dropped without a close frame", false, true),
        Some(_) => ("unexpected close code", false, false),
    };
    CloseDecision {
        code,
        meaning,
        our_fault,
        transient,
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a WebSocket to `url` and report its frames under `socket`.
    Connect { socket: SocketId, url: String },
    /// Close this socket (code 1000) and forget it: later reports about it are ignored.
    Close { socket: SocketId, why: &'static str },
    /// Assign the conduit's shard to this session (PATCH conduits/shards), then
    /// report the outcome with [`Shard::on_assigned`].
    Assign { session_id: String },
    /// A notification or revocation to admit and apply.
    Deliver(Box<Envelope>),
}

/// Why an assignment failed, as far as the state machine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignError {
    /// Worth another try within the deadline (network, 5xx, 429).
    Transient(String),
    /// Retrying the same session will not help (per-shard error such as "the
    /// websocket session is not connected", 400, 404 conduit gone).
    Permanent(String),
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ShardStats {
    pub connects: u64,
    pub welcomes: u64,
    /// `session_reconnect`s completed (successor welcomed).
    pub reconnects: u64,
    pub assigned: u64,
    pub assign_failures: u64,
    pub keepalive_timeouts: u64,
    pub welcome_timeouts: u64,
    pub reconnect_timeouts: u64,
    pub delivered: u64,
    /// Closes by code (`"4003"`, `"none"` for a drop without a close frame).
    pub closes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct Sock {
    id: SocketId,
    /// When the driver was asked to connect it.
    opened: Instant,
    /// A fresh connection (not a reconnect successor): its session always needs assigning.
    fresh: bool,
    welcome: Option<Welcomed>,
    last_frame: Instant,
}

#[derive(Debug, Clone)]
struct Welcomed {
    session_id: String,
    keepalive: Duration,
    at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
enum Assigning {
    Idle,
    InFlight {
        session_id: String,
        deadline: Instant,
    },
    RetryAt {
        session_id: String,
        at: Instant,
        deadline: Instant,
    },
}

/// One shard's session, see the module doc.
#[derive(Debug)]
pub struct Shard {
    cfg: ShardConfig,
    primary: Option<Sock>,
    successor: Option<Sock>,
    /// The socket a completed reconnect replaced: a notification or
    /// revocation it still reads (sent before Twitch switched to the new
    /// connection, in flight when the new welcome came) is delivered; the
    /// message-id check downstream drops any copy.
    retired: Option<SocketId>,
    reconnect_deadline: Option<Instant>,
    /// The session id the shard was last assigned to (confirmed by Helix).
    registered: Option<String>,
    assigning: Assigning,
    /// When the next fresh connection is due (no primary).
    connect_at: Option<Instant>,
    backoff: Backoff,
    next_id: SocketId,
    pub stats: ShardStats,
    /// The last close, for status.
    pub last_close: Option<CloseDecision>,
}

impl Shard {
    pub fn new(cfg: ShardConfig, seed: u64, now: Instant) -> Self {
        let backoff = Backoff::new(cfg.backoff.clone(), seed);
        Shard {
            cfg,
            primary: None,
            successor: None,
            retired: None,
            reconnect_deadline: None,
            registered: None,
            assigning: Assigning::Idle,
            connect_at: Some(now),
            backoff,
            next_id: 1,
            stats: ShardStats::default(),
            last_close: None,
        }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// The session id the shard is assigned to, when its socket is up and assigned.
    pub fn assigned_session(&self) -> Option<&str> {
        let p = self.primary.as_ref()?.welcome.as_ref()?;
        (self.registered.as_deref() == Some(p.session_id.as_str())
            && self.assigning == Assigning::Idle)
            .then_some(p.session_id.as_str())
    }

    /// Connected, welcomed and assigned.
    pub fn is_connected(&self) -> bool {
        self.assigned_session().is_some()
    }

    /// How long the current session has been welcomed.
    pub fn session_age(&self, now: Instant) -> Option<Duration> {
        let w = self.primary.as_ref()?.welcome.as_ref()?;
        Some(now.saturating_duration_since(w.at))
    }

    pub fn reconnecting(&self) -> bool {
        self.successor.is_some()
    }

    fn new_socket(&mut self, url: String, fresh: bool, now: Instant) -> (Sock, Action) {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.connects += 1;
        (
            Sock {
                id,
                opened: now,
                fresh,
                welcome: None,
                last_frame: now,
            },
            Action::Connect { socket: id, url },
        )
    }

    /// The primary is gone (closed by us or by the server): schedule a fresh one.
    fn lose_primary(&mut self, now: Instant, out: &mut Vec<Action>, close: Option<&'static str>) {
        if let (Some(p), Some(why)) = (self.primary.take(), close) {
            out.push(Action::Close { socket: p.id, why });
        }
        self.primary = None;
        self.assigning = Assigning::Idle;
        if self.successor.is_some() {
            // the successor may still be welcomed and take over
            return;
        }
        self.connect_at = Some(now + self.backoff.next_delay());
    }

    fn start_assign(&mut self, session_id: String, welcomed: Instant, out: &mut Vec<Action>) {
        self.assigning = Assigning::InFlight {
            session_id: session_id.clone(),
            deadline: welcomed + self.cfg.assign_deadline,
        };
        out.push(Action::Assign { session_id });
    }

    /// A text frame arrived on `socket`, whatever it holds: it restarts the
    /// keepalive timer before anything judges it. Twitch sends a keepalive
    /// only when it delivered nothing else within the window, so a frame the
    /// client then drops (another subscription type, a bad field, too large)
    /// proves the connection alive just as well. WebSocket pings do not come
    /// here: Twitch says they don't reset the keepalive timer.
    pub fn on_frame(&mut self, socket: SocketId, now: Instant) {
        if let Some(s) = [self.primary.as_mut(), self.successor.as_mut()]
            .into_iter()
            .flatten()
            .find(|s| s.id == socket)
        {
            s.last_frame = now;
        }
    }

    /// A frame arrived on `socket` and parsed (it counts for the keepalive
    /// timer as [`Shard::on_frame`] says).
    pub fn on_message(&mut self, socket: SocketId, env: Envelope, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.on_frame(socket, now);
        let is_primary = self.primary.as_ref().is_some_and(|s| s.id == socket);
        let is_successor = self.successor.as_ref().is_some_and(|s| s.id == socket);
        if !is_primary && !is_successor {
            if self.retired == Some(socket)
                && matches!(
                    env.message,
                    Message::Notification(_) | Message::Revocation(_)
                )
            {
                self.stats.delivered += 1;
                out.push(Action::Deliver(Box::new(env)));
            }
            return out;
        }
        let sock = if is_primary {
            self.primary.as_mut()
        } else {
            self.successor.as_mut()
        }
        .expect("checked above");
        let welcomed = sock.welcome.is_some();
        match env.message {
            Message::Welcome(s) => {
                if welcomed {
                    return out; // a second welcome on one socket: ignored
                }
                self.stats.welcomes += 1;
                let keepalive =
                    Duration::from_secs(u64::from(s.keepalive_timeout_seconds.unwrap_or(10)));
                sock.welcome = Some(Welcomed {
                    session_id: s.id.clone(),
                    keepalive,
                    at: now,
                });
                let fresh = sock.fresh;
                if is_successor {
                    // the reconnect is complete: the old socket goes, the new one takes over
                    self.stats.reconnects += 1;
                    if let Some(old) = self.primary.take() {
                        self.retired = Some(old.id);
                        out.push(Action::Close {
                            socket: old.id,
                            why: "replaced by the reconnected session",
                        });
                    }
                    self.primary = self.successor.take();
                    self.reconnect_deadline = None;
                    self.connect_at = None;
                }
                if fresh || self.registered.as_deref() != Some(s.id.as_str()) {
                    self.start_assign(s.id, now, &mut out);
                } else {
                    self.assigning = Assigning::Idle;
                    self.backoff.reset();
                }
            }
            Message::Keepalive => {}
            Message::Reconnect(s) => {
                if !is_primary || !welcomed || self.successor.is_some() {
                    return out;
                }
                let Some(url) = s.reconnect_url else {
                    return out;
                };
                let (succ, act) = self.new_socket(url, false, now);
                self.successor = Some(succ);
                self.reconnect_deadline = Some(now + self.cfg.reconnect_grace);
                out.push(act);
            }
            Message::Notification(_) | Message::Revocation(_) => {
                if welcomed {
                    self.stats.delivered += 1;
                    out.push(Action::Deliver(Box::new(env)));
                }
            }
        }
        out
    }

    /// The outcome of an [`Action::Assign`].
    pub fn on_assigned(
        &mut self,
        session_id: &str,
        result: Result<(), AssignError>,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let deadline = match &self.assigning {
            Assigning::InFlight {
                session_id: s,
                deadline,
            } if s == session_id => *deadline,
            _ => return out, // an answer for a session that is gone
        };
        match result {
            Ok(()) => {
                self.stats.assigned += 1;
                self.registered = Some(session_id.to_string());
                self.assigning = Assigning::Idle;
                self.backoff.reset();
            }
            Err(e) => {
                self.stats.assign_failures += 1;
                let retry = now + self.cfg.assign_retry;
                if matches!(e, AssignError::Transient(_)) && retry < deadline {
                    self.assigning = Assigning::RetryAt {
                        session_id: session_id.to_string(),
                        at: retry,
                        deadline,
                    };
                } else {
                    self.lose_primary(now, &mut out, Some("the shard could not be assigned"));
                }
            }
        }
        out
    }

    /// `socket` closed (by the server or the network), with the close code if a close frame came.
    pub fn on_closed(&mut self, socket: SocketId, code: Option<u16>, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let key = code.map_or_else(|| "none".to_string(), |c| c.to_string());
        if self.successor.as_ref().is_some_and(|s| s.id == socket) {
            *self.stats.closes.entry(key).or_default() += 1;
            self.last_close = Some(close_decision(code));
            self.successor = None;
            self.reconnect_deadline = None;
            if self.primary.is_none() && self.connect_at.is_none() {
                self.connect_at = Some(now + self.backoff.next_delay());
            }
            return out;
        }
        if self.primary.as_ref().is_some_and(|s| s.id == socket) {
            *self.stats.closes.entry(key).or_default() += 1;
            self.last_close = Some(close_decision(code));
            self.primary = None;
            self.lose_primary(now, &mut out, None);
        }
        out
    }

    /// When `sock`'s silence means the connection is lost.
    fn keepalive_deadline(&self, sock: &Sock, w: &Welcomed) -> Instant {
        sock.last_frame + w.keepalive + self.cfg.keepalive_slack(w.keepalive)
    }

    /// The earliest time [`Shard::on_timer`] has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut t: Vec<Instant> = Vec::new();
        if let Some(c) = self.connect_at {
            t.push(c);
        }
        if let Some(p) = &self.primary {
            match &p.welcome {
                None => t.push(p.opened + self.cfg.welcome_timeout),
                Some(w) if self.successor.is_none() => t.push(self.keepalive_deadline(p, w)),
                Some(_) => {}
            }
        }
        if let Some(d) = self.reconnect_deadline {
            t.push(d);
        }
        match &self.assigning {
            Assigning::InFlight { deadline, .. } => t.push(*deadline),
            Assigning::RetryAt { at, .. } => t.push(*at),
            Assigning::Idle => {}
        }
        t.into_iter().min()
    }

    /// Time passed: deadlines and due connections.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.reconnect_deadline.is_some_and(|d| d <= now) {
            self.stats.reconnect_timeouts += 1;
            self.reconnect_deadline = None;
            if let Some(s) = self.successor.take() {
                out.push(Action::Close {
                    socket: s.id,
                    why: "the reconnect URL sent no welcome in time",
                });
            }
            if self.primary.is_none() && self.connect_at.is_none() {
                self.connect_at = Some(now + self.backoff.next_delay());
            }
        }
        if let Some(p) = &self.primary {
            match &p.welcome {
                None if p.opened + self.cfg.welcome_timeout <= now => {
                    self.stats.welcome_timeouts += 1;
                    self.lose_primary(now, &mut out, Some("no welcome in time"));
                }
                Some(w) if self.successor.is_none() && self.keepalive_deadline(p, w) <= now => {
                    self.stats.keepalive_timeouts += 1;
                    self.lose_primary(now, &mut out, Some("keepalive timeout"));
                }
                _ => {}
            }
        }
        match self.assigning.clone() {
            Assigning::RetryAt {
                session_id,
                at,
                deadline,
            } if at <= now => {
                if self
                    .primary
                    .as_ref()
                    .and_then(|p| p.welcome.as_ref())
                    .map(|w| &w.session_id)
                    == Some(&session_id)
                {
                    self.assigning = Assigning::InFlight {
                        session_id: session_id.clone(),
                        deadline,
                    };
                    out.push(Action::Assign { session_id });
                } else {
                    self.assigning = Assigning::Idle;
                }
            }
            Assigning::InFlight { deadline, .. } if deadline <= now => {
                self.stats.assign_failures += 1;
                self.lose_primary(
                    now,
                    &mut out,
                    Some("the shard assignment did not finish in time"),
                );
            }
            _ => {}
        }
        if self.connect_at.is_some_and(|c| c <= now) && self.primary.is_none() {
            self.connect_at = None;
            let url = self.cfg.connect_url();
            let (p, act) = self.new_socket(url, true, now);
            self.primary = Some(p);
            out.push(act);
        }
        out
    }
}

#[cfg(test)]
mod tests;
