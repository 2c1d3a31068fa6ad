//! EventSub WebSocket messages: typed parsing with the same rule as Get Streams
//! answers (`crate::streams`): nothing from the network goes on unchecked.
//!
//! A text frame is `{"metadata": {...}, "payload": {...}}` (Twitch's WebSocket
//! reference). [`parse_message`] turns one frame into an [`Envelope`] or a
//! [`DropReason`]; the caller counts drops in [`DropStats`] and goes on. Nothing
//! here panics on any input (`tests::never_panics_on_garbage`).
//!
//! Rules (each with a unit test):
//! - a frame larger than [`MAX_FRAME_BYTES`] is dropped before parsing;
//! - `message_id`, `session.id`, `subscription.id`, `conduit_id`: 1–128 bytes of
//!   visible ASCII (Twitch's are UUIDs or base64; they are opaque, so no
//!   stricter rule), else the frame is dropped;
//! - timestamps (`message_timestamp`, `started_at`, `connected_at`) RFC 3339 with
//!   any number of fractional digits (Twitch sends 7–9), between 2007 and one
//!   day ahead; a bad `message_timestamp` drops the frame, a bad `started_at`
//!   becomes None (as in Get Streams: the event is still worth having);
//! - `broadcaster_user_id` must be a broadcaster id (1–20 digits, no leading
//!   zero), `event.id` (the stream id) 1–20 digits, else the frame is dropped;
//! - logins: `[a-z0-9_]{1,25}` after lowercasing, else None;
//! - `event.type` (live, playlist, watch_party, premiere, rerun): at most 32
//!   characters, NUL removed;
//! - only `stream.online` and `stream.offline` version `"1"` are understood;
//!   any other type or version is dropped as `unsupported` (it was not asked
//!   for); a payload whose subscription type disagrees with the metadata's is
//!   dropped as `mismatch`;
//! - `stream.offline` `event.id` is optional: Twitch added it to v1 in 2026-06
//!   and older senders (twitch-cli) lack it;
//! - unknown fields are ignored (production welcomes carry `recovery_url`);
//! - a `reconnect_url` must be `wss://` (or `ws://` to a loopback host, for the
//!   simulator), at most 2,048 bytes; else the reconnect message is dropped
//!   and the session runs on until Twitch closes it (4004), then starts afresh.

use crate::streams::{
    clean_login, clean_text, is_broadcaster_id, is_numeric_id, parse_started_at, repair_body,
};
use serde::Deserialize;
use serde_json::Value;
use std::time::SystemTime;

/// Largest frame parsed, in bytes. A stream.* notification is under 2 KiB.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest opaque id (message, session, subscription, conduit), in bytes.
pub const MAX_OPAQUE_ID_BYTES: usize = 128;
/// Longest reconnect URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest `event.type` kept, in characters.
pub const MAX_STREAM_TYPE_CHARS: usize = 32;
/// Longest subscription status kept, in characters.
pub const MAX_STATUS_CHARS: usize = 64;

/// The two subscription types twitch_sync asks for.
pub const STREAM_ONLINE: &str = "stream.online";
pub const STREAM_OFFLINE: &str = "stream.offline";
pub const STREAM_VERSION: &str = "1";

/// One checked frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Opaque; the same on a resend.
    pub message_id: String,
    /// `message_timestamp` in microseconds since the Unix epoch.
    pub message_timestamp: i64,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Welcome(SessionInfo),
    Keepalive,
    Notification(Notification),
    /// `reconnect_url` is always Some (checked).
    Reconnect(SessionInfo),
    Revocation(SubscriptionInfo),
}

/// `payload.session` of a welcome or reconnect message.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    /// Welcome: seconds Twitch may stay silent before a keepalive; None on reconnect.
    pub keepalive_timeout_seconds: Option<u32>,
    pub reconnect_url: Option<String>,
    pub connected_at: Option<i64>,
}

/// `payload.subscription`, as far as twitch_sync needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    pub id: String,
    /// `enabled`, or on a revocation why (`authorization_revoked`,
    /// `user_removed`, `version_removed`, ...): kept as text, NUL removed,
    /// at most [`MAX_STATUS_CHARS`]; unknown statuses are kept as they come.
    pub status: String,
    /// [`STREAM_ONLINE`] or [`STREAM_OFFLINE`].
    pub kind: String,
    /// `condition.broadcaster_user_id`, checked.
    pub broadcaster_id: String,
    /// `transport.conduit_id` when the transport is a conduit.
    pub conduit_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub subscription: SubscriptionInfo,
    pub event: StreamEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Online {
        broadcaster_id: String,
        login: Option<String>,
        stream_id: String,
        /// `live`, `playlist`, `watch_party`, `premiere`, `rerun` (as sent, cleaned).
        stream_type: String,
        /// Microseconds since the Unix epoch; None when missing or invalid.
        started_at: Option<i64>,
    },
    Offline {
        broadcaster_id: String,
        login: Option<String>,
        /// Present since 2026-06; None from older senders.
        stream_id: Option<String>,
    },
}

impl StreamEvent {
    pub fn broadcaster_id(&self) -> &str {
        match self {
            StreamEvent::Online { broadcaster_id, .. }
            | StreamEvent::Offline { broadcaster_id, .. } => broadcaster_id,
        }
    }

    /// The key that identifies the event itself, whatever message carried it
    /// (Twitch has sent the same stream.online twice under different message
    /// ids, twitchdev/issues#918): `online/<broadcaster>/<stream id>`,
    /// `offline/<broadcaster>/<stream id>`; None for an offline event without
    /// a stream id (applying such an event twice is harmless: the second finds
    /// nothing live to end).
    pub fn event_key(&self) -> Option<String> {
        match self {
            StreamEvent::Online {
                broadcaster_id,
                stream_id,
                ..
            } => Some(format!("online/{broadcaster_id}/{stream_id}")),
            StreamEvent::Offline {
                broadcaster_id,
                stream_id: Some(s),
                ..
            } => Some(format!("offline/{broadcaster_id}/{s}")),
            StreamEvent::Offline { .. } => None,
        }
    }
}

/// Why a frame was dropped. Keys of [`DropStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Larger than [`MAX_FRAME_BYTES`].
    TooLarge,
    /// Not JSON, or not the envelope's shape.
    Malformed,
    /// `message_id` missing or not an opaque id.
    BadMessageId,
    /// `message_timestamp` missing or not RFC 3339 in range.
    BadTimestamp,
    /// A `message_type` Twitch does not document.
    UnknownType,
    /// A session without a valid id, a welcome without a keepalive in 10..=600,
    /// a reconnect without a valid URL.
    BadSession,
    /// A subscription type or version twitch_sync did not ask for.
    Unsupported,
    /// `metadata.subscription_type` disagrees with `payload.subscription.type`.
    Mismatch,
    /// A bad subscription id, condition or event field (broadcaster or stream id).
    BadEvent,
}

/// How many frames were dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropStats {
    pub too_large: u64,
    pub malformed: u64,
    pub bad_message_id: u64,
    pub bad_timestamp: u64,
    pub unknown_type: u64,
    pub bad_session: u64,
    pub unsupported: u64,
    pub mismatch: u64,
    pub bad_event: u64,
}

impl DropStats {
    pub fn count(&mut self, r: DropReason) {
        let c = match r {
            DropReason::TooLarge => &mut self.too_large,
            DropReason::Malformed => &mut self.malformed,
            DropReason::BadMessageId => &mut self.bad_message_id,
            DropReason::BadTimestamp => &mut self.bad_timestamp,
            DropReason::UnknownType => &mut self.unknown_type,
            DropReason::BadSession => &mut self.bad_session,
            DropReason::Unsupported => &mut self.unsupported,
            DropReason::Mismatch => &mut self.mismatch,
            DropReason::BadEvent => &mut self.bad_event,
        };
        *c += 1;
    }

    pub fn total(&self) -> u64 {
        self.too_large
            + self.malformed
            + self.bad_message_id
            + self.bad_timestamp
            + self.unknown_type
            + self.bad_session
            + self.unsupported
            + self.mismatch
            + self.bad_event
    }
}

/// Visible ASCII, 1..=[`MAX_OPAQUE_ID_BYTES`] bytes.
pub fn is_opaque_id(s: &str) -> bool {
    (1..=MAX_OPAQUE_ID_BYTES).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A reconnect URL Twitch may send: `wss://` anywhere, `ws://` only to a
/// loopback host; no userinfo, no whitespace or control characters.
pub fn is_reconnect_url(s: &str) -> bool {
    use url::{Host, Url};
    if s.len() > MAX_URL_BYTES || s.bytes().any(|b| !(0x21..=0x7e).contains(&b)) || s.contains('@')
    {
        return false;
    }
    let Ok(u) = Url::parse(s) else { return false };
    let loopback = match u.host() {
        Some(Host::Domain(d)) => d == "localhost",
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => return false,
    };
    match u.scheme() {
        "wss" => true,
        "ws" => loopback,
        _ => false,
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    metadata: RawMetadata,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
struct RawMetadata {
    message_id: Option<String>,
    message_type: Option<String>,
    message_timestamp: Option<String>,
    subscription_type: Option<String>,
    subscription_version: Option<String>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn session(payload: &Value, now: SystemTime) -> Result<SessionInfo, DropReason> {
    let s = payload.get("session").ok_or(DropReason::BadSession)?;
    let id = str_at(s, "id")
        .filter(|i| is_opaque_id(i))
        .ok_or(DropReason::BadSession)?;
    let keepalive = match s.get("keepalive_timeout_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|k| (10..=600).contains(k))
                .ok_or(DropReason::BadSession)? as u32,
        ),
    };
    let reconnect_url = match s.get("reconnect_url") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .filter(|u| is_reconnect_url(u))
                .ok_or(DropReason::BadSession)?
                .to_string(),
        ),
    };
    Ok(SessionInfo {
        id: id.to_string(),
        keepalive_timeout_seconds: keepalive,
        reconnect_url,
        connected_at: str_at(s, "connected_at").and_then(|t| parse_started_at(t, now)),
    })
}

fn subscription(payload: &Value, meta_type: Option<&str>) -> Result<SubscriptionInfo, DropReason> {
    let s = payload.get("subscription").ok_or(DropReason::Malformed)?;
    let kind = str_at(s, "type").ok_or(DropReason::Malformed)?;
    if let Some(m) = meta_type {
        if m != kind {
            return Err(DropReason::Mismatch);
        }
    }
    if kind != STREAM_ONLINE && kind != STREAM_OFFLINE {
        return Err(DropReason::Unsupported);
    }
    if str_at(s, "version") != Some(STREAM_VERSION) {
        return Err(DropReason::Unsupported);
    }
    let id = str_at(s, "id")
        .filter(|i| is_opaque_id(i))
        .ok_or(DropReason::BadEvent)?;
    let broadcaster = s
        .get("condition")
        .and_then(|c| str_at(c, "broadcaster_user_id"))
        .filter(|b| is_broadcaster_id(b))
        .ok_or(DropReason::BadEvent)?;
    let conduit_id = s
        .get("transport")
        .filter(|t| str_at(t, "method") == Some("conduit"))
        .and_then(|t| str_at(t, "conduit_id"))
        .filter(|c| is_opaque_id(c))
        .map(str::to_string);
    let status = clean_text(str_at(s, "status").unwrap_or(""), MAX_STATUS_CHARS).0;
    Ok(SubscriptionInfo {
        id: id.to_string(),
        status,
        kind: kind.to_string(),
        broadcaster_id: broadcaster.to_string(),
        conduit_id,
    })
}

/// A revocation's subscription. Twitch does not sign the message type (only
/// id, timestamp and body), so the body must be a revocation's too: no
/// `event`, and a status other than `enabled` (Twitch sends the reason, such as
/// `authorization_revoked`). A signed notification body replayed with its type
/// changed to `revocation` is dropped, not recorded as one.
fn revoked_subscription(
    payload: &Value,
    meta_type: Option<&str>,
) -> Result<SubscriptionInfo, DropReason> {
    let sub = subscription(payload, meta_type)?;
    if payload.get("event").is_some() || sub.status.is_empty() || sub.status == "enabled" {
        return Err(DropReason::Malformed);
    }
    Ok(sub)
}

fn stream_event(
    sub: &SubscriptionInfo,
    payload: &Value,
    now: SystemTime,
) -> Result<StreamEvent, DropReason> {
    let e = payload
        .get("event")
        .filter(|e| e.is_object())
        .ok_or(DropReason::Malformed)?;
    let broadcaster_id = str_at(e, "broadcaster_user_id")
        .filter(|b| is_broadcaster_id(b))
        .ok_or(DropReason::BadEvent)?;
    // An event about another broadcaster than its subscription's condition is
    // not what was asked for.
    if broadcaster_id != sub.broadcaster_id {
        return Err(DropReason::Mismatch);
    }
    let login = str_at(e, "broadcaster_user_login").and_then(clean_login);
    if sub.kind == STREAM_ONLINE {
        let stream_id = str_at(e, "id")
            .filter(|s| is_numeric_id(s))
            .ok_or(DropReason::BadEvent)?;
        Ok(StreamEvent::Online {
            broadcaster_id: broadcaster_id.to_string(),
            login,
            stream_id: stream_id.to_string(),
            stream_type: clean_text(str_at(e, "type").unwrap_or(""), MAX_STREAM_TYPE_CHARS).0,
            started_at: str_at(e, "started_at").and_then(|t| parse_started_at(t, now)),
        })
    } else {
        let stream_id = match e.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .filter(|s| is_numeric_id(s))
                    .ok_or(DropReason::BadEvent)?
                    .to_string(),
            ),
        };
        Ok(StreamEvent::Offline {
            broadcaster_id: broadcaster_id.to_string(),
            login,
            stream_id,
        })
    }
}

/// A message body as a JSON object, repaired first as a Get Streams answer
/// is: one unpaired surrogate escape in a name costs no event.
fn parse_object(body: &str) -> Result<Value, DropReason> {
    serde_json::from_str::<Value>(&repair_body(body.as_bytes()).0)
        .ok()
        .filter(Value::is_object)
        .ok_or(DropReason::Malformed)
}

/// Parses and checks one text frame, at `SystemTime::now()`.
pub fn parse_message(frame: &str) -> Result<Envelope, DropReason> {
    parse_message_at(frame, SystemTime::now())
}

/// Parses and checks one text frame; `now` bounds timestamps (one day ahead).
pub fn parse_message_at(frame: &str, now: SystemTime) -> Result<Envelope, DropReason> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(DropReason::TooLarge);
    }
    // a message is an object (serde would read the envelope from an array by position)
    let value = parse_object(frame)?;
    if !value.get("metadata").is_some_and(Value::is_object) {
        return Err(DropReason::Malformed);
    }
    let raw: RawEnvelope = serde_json::from_value(value).map_err(|_| DropReason::Malformed)?;
    let m = raw.metadata;
    let message_id = m
        .message_id
        .filter(|i| is_opaque_id(i))
        .ok_or(DropReason::BadMessageId)?;
    let message_timestamp = m
        .message_timestamp
        .as_deref()
        .and_then(|t| parse_started_at(t, now))
        .ok_or(DropReason::BadTimestamp)?;
    let payload = raw.payload;
    let message = match m.message_type.as_deref() {
        Some("session_welcome") => {
            let s = session(&payload, now)?;
            if s.keepalive_timeout_seconds.is_none() {
                return Err(DropReason::BadSession);
            }
            Message::Welcome(s)
        }
        Some("session_keepalive") => Message::Keepalive,
        Some("session_reconnect") => {
            let s = session(&payload, now)?;
            if s.reconnect_url.is_none() {
                return Err(DropReason::BadSession);
            }
            Message::Reconnect(s)
        }
        Some("notification") => {
            // the metadata says what it is: anything not asked for is dropped unread
            if m.subscription_version.as_deref() != Some(STREAM_VERSION)
                || !matches!(
                    m.subscription_type.as_deref(),
                    Some(STREAM_ONLINE | STREAM_OFFLINE)
                )
            {
                return Err(DropReason::Unsupported);
            }
            let sub = subscription(&payload, m.subscription_type.as_deref())?;
            let event = stream_event(&sub, &payload, now)?;
            Message::Notification(Notification {
                subscription: sub,
                event,
            })
        }
        Some("revocation") => Message::Revocation(revoked_subscription(
            &payload,
            m.subscription_type.as_deref(),
        )?),
        _ => return Err(DropReason::UnknownType),
    };
    Ok(Envelope {
        message_id,
        message_timestamp,
        message,
    })
}

// ---------------------------------------------------------------------------
// Webhook bodies (the webhook transport, `twitch_sync.eventsub_webhook`).
//
// A webhook request carries its metadata in `Twitch-Eventsub-*` headers and a
// body shaped like a WebSocket frame's `payload`: `{"subscription": …,
// "event": …}` (notification), `{"subscription": …}` (revocation), or
// `{"challenge": …, "subscription": …}` / `{"challenge": …, "conduit_shard":
// {"conduit_id", "shard"}}` (webhook_callback_verification). The same checked
// helpers as for frames apply; the caller has verified the signature and the
// timestamp first (`super::webhook::verify`).

/// Longest challenge echoed, in bytes (Twitch's are a few dozen).
pub const MAX_CHALLENGE_BYTES: usize = 1024;

/// A checked webhook body.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookBody {
    /// `webhook_callback_verification`: answer 200 with `challenge` as the
    /// whole body. `subscription` is set for a subscription's challenge,
    /// `conduit_shard` (conduit id, shard id) for a conduit webhook shard's.
    Challenge {
        challenge: String,
        subscription: Option<SubscriptionInfo>,
        conduit_shard: Option<(String, String)>,
    },
    /// A `stream.online` / `stream.offline` v1 notification
    /// ([`Message::Notification`]).
    Notification(Envelope),
    /// A revocation ([`Message::Revocation`]).
    Revocation(Envelope),
}

/// Parses and checks a webhook request's body, given its headers:
/// `message_type` (`Twitch-Eventsub-Message-Type`), `message_id`,
/// `message_timestamp` (microseconds, from the verified timestamp header) and
/// the optional `Twitch-Eventsub-Subscription-Type` / `-Version`, which must
/// agree with the body when given. Nothing here panics on any input.
pub fn parse_webhook_body(
    message_type: &str,
    message_id: &str,
    message_timestamp: i64,
    subscription_type: Option<&str>,
    subscription_version: Option<&str>,
    body: &str,
    now: SystemTime,
) -> Result<WebhookBody, DropReason> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(DropReason::TooLarge);
    }
    if !is_opaque_id(message_id) {
        return Err(DropReason::BadMessageId);
    }
    let payload = parse_object(body)?;
    let envelope = |message| Envelope {
        message_id: message_id.to_string(),
        message_timestamp,
        message,
    };
    // What the headers say must be what twitch_sync asked for.
    let check_headers = || -> Result<(), DropReason> {
        if subscription_version.is_some_and(|v| v != STREAM_VERSION)
            || subscription_type.is_some_and(|t| t != STREAM_ONLINE && t != STREAM_OFFLINE)
        {
            return Err(DropReason::Unsupported);
        }
        Ok(())
    };
    match message_type {
        "webhook_callback_verification" => {
            let challenge = str_at(&payload, "challenge")
                .filter(|c| {
                    (1..=MAX_CHALLENGE_BYTES).contains(&c.len()) && !c.chars().any(char::is_control)
                })
                .ok_or(DropReason::BadEvent)?
                .to_string();
            if let Some(shard) = payload.get("conduit_shard") {
                let conduit = str_at(shard, "conduit_id")
                    .filter(|c| is_opaque_id(c))
                    .ok_or(DropReason::BadEvent)?;
                let id = str_at(shard, "shard")
                    .filter(|s| is_numeric_id(s))
                    .ok_or(DropReason::BadEvent)?;
                return Ok(WebhookBody::Challenge {
                    challenge,
                    subscription: None,
                    conduit_shard: Some((conduit.to_string(), id.to_string())),
                });
            }
            check_headers()?;
            let sub = subscription(&payload, subscription_type)?;
            Ok(WebhookBody::Challenge {
                challenge,
                subscription: Some(sub),
                conduit_shard: None,
            })
        }
        "notification" => {
            check_headers()?;
            let sub = subscription(&payload, subscription_type)?;
            let event = stream_event(&sub, &payload, now)?;
            Ok(WebhookBody::Notification(envelope(Message::Notification(
                Notification {
                    subscription: sub,
                    event,
                },
            ))))
        }
        "revocation" => {
            check_headers()?;
            let sub = revoked_subscription(&payload, subscription_type)?;
            Ok(WebhookBody::Revocation(envelope(Message::Revocation(sub))))
        }
        _ => Err(DropReason::UnknownType),
    }
}

#[cfg(test)]
mod webhook_body_tests {
    use super::*;
    use serde_json::json;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_657_600)
    }

    fn sub(kind: &str, status: &str) -> Value {
        json!({"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","status":status,"type":kind,"version":"1","cost":1,
               "condition":{"broadcaster_user_id":"1337"},
               "transport":{"method":"webhook","callback":"https://example.com/webhooks/callback"},
               "created_at":"2026-11-20T14:56:00.1Z"})
    }

    fn online() -> String {
        json!({"subscription": sub("stream.online", "enabled"),
               "event":{"id":"9001","broadcaster_user_id":"1337","broadcaster_user_login":"cool_user",
                        "broadcaster_user_name":"Cool_User","type":"live","started_at":"2026-11-20T14:56:40.123Z"}})
        .to_string()
    }

    fn parse(kind: &str, st: Option<&str>, body: &str) -> Result<WebhookBody, DropReason> {
        parse_webhook_body(
            kind,
            "m-1",
            1_795_657_000_000_000,
            st,
            Some("1"),
            body,
            now(),
        )
    }

    #[test]
    fn notification_bodies_are_payloads() {
        let Ok(WebhookBody::Notification(env)) =
            parse("notification", Some("stream.online"), &online())
        else {
            panic!()
        };
        assert_eq!(env.message_id, "m-1");
        assert_eq!(env.message_timestamp, 1_795_657_000_000_000);
        let Message::Notification(n) = env.message else {
            panic!()
        };
        assert_eq!(n.subscription.conduit_id, None);
        assert_eq!(n.event.event_key().as_deref(), Some("online/1337/9001"));
        // the header must agree with the body, and only stream.* v1 is taken
        assert_eq!(
            parse("notification", Some("stream.offline"), &online()),
            Err(DropReason::Mismatch)
        );
        assert_eq!(
            parse("notification", Some("channel.update"), &online()),
            Err(DropReason::Unsupported)
        );
        assert_eq!(
            parse_webhook_body("notification", "m-1", 0, None, Some("2"), &online(), now()),
            Err(DropReason::Unsupported)
        );
        // an unpaired surrogate escape in a name is repaired, not the event lost
        let odd = online().replace("Cool_User", "Cool\\ud800");
        assert!(odd.contains(r"Cool\ud800"), "{odd}");
        assert!(matches!(
            parse("notification", Some("stream.online"), &odd),
            Ok(WebhookBody::Notification(_))
        ));
        // without the optional headers the body decides
        assert!(matches!(
            parse_webhook_body("notification", "m-1", 0, None, None, &online(), now()),
            Ok(WebhookBody::Notification(_))
        ));
        let offline = json!({"subscription": sub("stream.offline", "enabled"),
                             "event":{"broadcaster_user_id":"1337","broadcaster_user_login":"cool_user"}});
        let Ok(WebhookBody::Notification(env)) =
            parse("notification", Some("stream.offline"), &offline.to_string())
        else {
            panic!()
        };
        assert!(matches!(
            env.message,
            Message::Notification(Notification {
                event: StreamEvent::Offline {
                    stream_id: None,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn challenges_and_revocations() {
        let body = json!({"challenge":"pogchamp-kappa-360noscope-vohiyo",
                          "subscription": sub("stream.online", "webhook_callback_verification_pending")});
        assert_eq!(
            parse(
                "webhook_callback_verification",
                Some("stream.online"),
                &body.to_string()
            ),
            Ok(WebhookBody::Challenge {
                challenge: "pogchamp-kappa-360noscope-vohiyo".into(),
                subscription: Some(SubscriptionInfo {
                    id: "f1c2a387-161a-49f9-a165-0f21d7a4e1c4".into(),
                    status: "webhook_callback_verification_pending".into(),
                    kind: "stream.online".into(),
                    broadcaster_id: "1337".into(),
                    conduit_id: None,
                }),
                conduit_shard: None,
            })
        );
        let shard =
            json!({"challenge":"abc","conduit_shard":{"conduit_id":"3f1c2a87-aaaa","shard":"42"}});
        assert!(matches!(
            parse_webhook_body("webhook_callback_verification", "m", 0, None, None, &shard.to_string(), now()),
            Ok(WebhookBody::Challenge { conduit_shard: Some((c, s)), .. }) if c == "3f1c2a87-aaaa" && s == "42"
        ));
        for bad in [
            json!(""),
            json!(null),
            json!(5),
            json!("a\u{0}b"),
            json!("x".repeat(1025)),
        ] {
            let mut b = body.clone();
            b["challenge"] = bad.clone();
            assert_eq!(
                parse(
                    "webhook_callback_verification",
                    Some("stream.online"),
                    &b.to_string()
                ),
                Err(DropReason::BadEvent),
                "{bad}"
            );
        }
        // a challenge for a type twitch_sync does not handle is not answered
        let other = json!({"challenge":"c","subscription": sub("channel.update", "webhook_callback_verification_pending")});
        assert_eq!(
            parse("webhook_callback_verification", None, &other.to_string()),
            Err(DropReason::Unsupported)
        );
        let revoked = json!({"subscription": sub("stream.offline", "authorization_revoked")});
        let Ok(WebhookBody::Revocation(env)) =
            parse("revocation", Some("stream.offline"), &revoked.to_string())
        else {
            panic!()
        };
        assert!(
            matches!(env.message, Message::Revocation(s) if s.status == "authorization_revoked")
        );
        // The message type is not signed: a notification's body sent again as
        // a revocation is not one (it carries an event, its status is enabled).
        let notification = online();
        assert!(matches!(
            parse("notification", Some("stream.online"), &notification),
            Ok(WebhookBody::Notification(_))
        ));
        assert_eq!(
            parse("revocation", Some("stream.online"), &notification),
            Err(DropReason::Malformed)
        );
        for status in ["enabled", ""] {
            let b = json!({"subscription": sub("stream.offline", status)});
            assert_eq!(
                parse("revocation", Some("stream.offline"), &b.to_string()),
                Err(DropReason::Malformed),
                "{status:?}"
            );
        }
        assert_eq!(
            parse("session_welcome", None, "{}"),
            Err(DropReason::UnknownType)
        );
    }

    #[test]
    fn garbage_is_refused_without_panics() {
        assert_eq!(
            parse_webhook_body("notification", "bad id", 0, None, None, &online(), now()),
            Err(DropReason::BadMessageId)
        );
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_FRAME_BYTES));
        assert_eq!(parse("notification", None, &big), Err(DropReason::TooLarge));
        let body = online();
        for n in 0..body.len() {
            if let Some(p) = body.get(..n) {
                for kind in [
                    "notification",
                    "revocation",
                    "webhook_callback_verification",
                ] {
                    assert!(parse(kind, None, p).is_err());
                }
            }
        }
        for b in ["[]", "null", "\"s\"", "{}"] {
            assert!(parse("notification", None, b).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TS: &str = "2026-11-20T14:56:51.634234626Z";

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_657_600)
    }

    fn welcome() -> Value {
        json!({"metadata":{"message_id":"96a3f3b5-62ba-4a2a-9e8a-a9a5d0a6c2f1","message_type":"session_welcome","message_timestamp":TS},
               "payload":{"session":{"id":"AQoQILE98gtqShGmLD7AM6yJThAB","status":"connected","connected_at":"2026-11-20T14:56:51.616329898Z",
                                     "keepalive_timeout_seconds":10,"reconnect_url":null,"recovery_url":null}}})
    }

    fn online() -> Value {
        json!({"metadata":{"message_id":"befa7b53-d79d-478f-86b9-120f112b044e","message_type":"notification","message_timestamp":TS,
                           "subscription_type":"stream.online","subscription_version":"1"},
               "payload":{"subscription":{"id":"f1c2a387-161a-49f9-a165-0f21d7a4e1c4","status":"enabled","type":"stream.online","version":"1","cost":1,
                                          "condition":{"broadcaster_user_id":"1337"},"transport":{"method":"conduit","conduit_id":"bfcfc993-26b1-b876-44d9-afe75a379dac"},
                                          "created_at":"2026-11-20T14:56:00.1Z"},
                          "event":{"id":"9001","broadcaster_user_id":"1337","broadcaster_user_login":"CoolUser","broadcaster_user_name":"Cool_User",
                                   "type":"live","started_at":"2026-11-20T14:56:40.123Z"}}})
    }

    fn offline() -> Value {
        let mut v = online();
        v["metadata"]["subscription_type"] = json!("stream.offline");
        v["payload"]["subscription"]["type"] = json!("stream.offline");
        v["payload"]["event"] = json!({"broadcaster_user_id":"1337","broadcaster_user_login":"cooluser","broadcaster_user_name":"CoolUser"});
        v
    }

    fn parse(v: &Value) -> Result<Envelope, DropReason> {
        parse_message_at(&v.to_string(), now())
    }

    #[test]
    fn parses_welcome_ignoring_unknown_fields() {
        let e = parse(&welcome()).unwrap();
        assert_eq!(e.message_id, "96a3f3b5-62ba-4a2a-9e8a-a9a5d0a6c2f1");
        // nanoseconds are cut to microseconds
        assert_eq!(e.message_timestamp % 1_000_000, 634_234);
        match e.message {
            Message::Welcome(s) => {
                assert_eq!(s.id, "AQoQILE98gtqShGmLD7AM6yJThAB");
                assert_eq!(s.keepalive_timeout_seconds, Some(10));
                assert_eq!(s.reconnect_url, None);
                assert!(s.connected_at.is_some());
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn welcome_needs_a_session_id_and_keepalive_in_range() {
        for (path, bad) in [
            ("id", json!("")),
            ("id", json!("has space")),
            ("id", json!("x".repeat(129))),
            ("id", json!(null)),
            ("keepalive_timeout_seconds", json!(9)),
            ("keepalive_timeout_seconds", json!(601)),
            ("keepalive_timeout_seconds", json!(null)),
            ("keepalive_timeout_seconds", json!("10")),
        ] {
            let mut w = welcome();
            w["payload"]["session"][path] = bad.clone();
            assert_eq!(parse(&w), Err(DropReason::BadSession), "{path} = {bad}");
        }
    }

    #[test]
    fn parses_keepalive_and_rejects_bad_metadata() {
        let k = json!({"metadata":{"message_id":"84c1e79a-2a4b-4c13-ba0b-4312293e9308","message_type":"session_keepalive","message_timestamp":TS},"payload":{}});
        assert_eq!(parse(&k).unwrap().message, Message::Keepalive);
        let mut bad = k.clone();
        bad["metadata"]["message_type"] = json!("session_party");
        assert_eq!(parse(&bad), Err(DropReason::UnknownType));
        for ts in [
            "",
            "yesterday",
            "1970-01-01T00:00:00Z",
            "2031-01-01T00:00:00Z",
            "2026-11-20",
        ] {
            let mut bad = k.clone();
            bad["metadata"]["message_timestamp"] = json!(ts);
            assert_eq!(parse(&bad), Err(DropReason::BadTimestamp), "{ts}");
        }
        for id in [json!(""), json!("a\u{0}b"), json!(null), json!("é")] {
            let mut bad = k.clone();
            bad["metadata"]["message_id"] = id.clone();
            assert_eq!(parse(&bad), Err(DropReason::BadMessageId), "{id}");
        }
        let mut bad = k.clone();
        bad["metadata"]["message_id"] = json!(5);
        assert_eq!(parse(&bad), Err(DropReason::Malformed));
        // a message, or its metadata, written as an array (serde would read
        // the envelope from one by position)
        let k_meta = &k["metadata"];
        let as_array = json!([
            [
                k_meta["message_id"],
                k_meta["message_type"],
                k_meta["message_timestamp"]
            ],
            {}
        ]);
        assert_eq!(parse(&as_array), Err(DropReason::Malformed));
        let meta_array = json!({"metadata": [k_meta["message_id"], k_meta["message_type"],
                                             k_meta["message_timestamp"]], "payload": {}});
        assert_eq!(parse(&meta_array), Err(DropReason::Malformed));
        // 7 and 8 fractional digits, as production sends
        let mut k8 = k.clone();
        k8["metadata"]["message_timestamp"] = json!("2026-11-20T06:58:50.22334164Z");
        assert!(parse(&k8).is_ok());
    }

    #[test]
    fn parses_stream_online() {
        let e = parse(&online()).unwrap();
        let Message::Notification(n) = e.message else {
            panic!()
        };
        assert_eq!(n.subscription.kind, STREAM_ONLINE);
        assert_eq!(n.subscription.broadcaster_id, "1337");
        assert_eq!(
            n.subscription.conduit_id.as_deref(),
            Some("bfcfc993-26b1-b876-44d9-afe75a379dac")
        );
        match &n.event {
            StreamEvent::Online {
                broadcaster_id,
                login,
                stream_id,
                stream_type,
                started_at,
            } => {
                assert_eq!(broadcaster_id, "1337");
                assert_eq!(login.as_deref(), Some("cooluser"));
                assert_eq!(stream_id, "9001");
                assert_eq!(stream_type, "live");
                assert!(started_at.is_some());
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(n.event.event_key().as_deref(), Some("online/1337/9001"));
    }

    #[test]
    fn online_field_rules() {
        for (field, value, want) in [
            ("id", json!("abc"), Err(DropReason::BadEvent)),
            ("id", json!(null), Err(DropReason::BadEvent)),
            ("id", json!("1".repeat(21)), Err(DropReason::BadEvent)),
            (
                "broadcaster_user_id",
                json!("0123"),
                Err(DropReason::BadEvent),
            ),
            (
                "broadcaster_user_id",
                json!("1338"),
                Err(DropReason::Mismatch),
            ),
        ] {
            let mut v = online();
            v["payload"]["event"][field] = value.clone();
            assert_eq!(parse(&v).map(|_| ()), want, "{field} = {value}");
        }
        // repairable fields: kept as None / cleaned
        let mut v = online();
        v["payload"]["event"]["started_at"] = json!("not a time");
        v["payload"]["event"]["broadcaster_user_login"] = json!("bad login!");
        v["payload"]["event"]["type"] = json!(format!("li\u{0}ve{}", "x".repeat(100)));
        let Message::Notification(n) = parse(&v).unwrap().message else {
            panic!()
        };
        let StreamEvent::Online {
            login,
            started_at,
            stream_type,
            ..
        } = n.event
        else {
            panic!()
        };
        assert_eq!(login, None);
        assert_eq!(started_at, None);
        assert_eq!(stream_type.chars().count(), MAX_STREAM_TYPE_CHARS);
        assert!(stream_type.starts_with("live") && !stream_type.contains('\0'));
    }

    #[test]
    fn parses_stream_offline_with_and_without_stream_id() {
        let Message::Notification(n) = parse(&offline()).unwrap().message else {
            panic!()
        };
        assert_eq!(
            n.event,
            StreamEvent::Offline {
                broadcaster_id: "1337".into(),
                login: Some("cooluser".into()),
                stream_id: None
            }
        );
        assert_eq!(n.event.event_key(), None);
        let mut v = offline();
        v["payload"]["event"]["id"] = json!("9001");
        let Message::Notification(n) = parse(&v).unwrap().message else {
            panic!()
        };
        assert_eq!(n.event.event_key().as_deref(), Some("offline/1337/9001"));
        v["payload"]["event"]["id"] = json!("x9001");
        assert_eq!(parse(&v), Err(DropReason::BadEvent));
    }

    #[test]
    fn other_types_versions_and_mismatches_are_dropped() {
        let mut v = online();
        v["metadata"]["subscription_type"] = json!("channel.update");
        v["payload"]["subscription"]["type"] = json!("channel.update");
        assert_eq!(parse(&v), Err(DropReason::Unsupported));
        let mut v = online();
        v["metadata"]["subscription_version"] = json!("2");
        assert_eq!(parse(&v), Err(DropReason::Unsupported));
        let mut v = online();
        v["payload"]["subscription"]["version"] = json!("2");
        assert_eq!(parse(&v), Err(DropReason::Unsupported));
        let mut v = online();
        v["metadata"]["subscription_type"] = json!("stream.offline");
        assert_eq!(parse(&v), Err(DropReason::Mismatch));
        let mut v = online();
        v["payload"]["subscription"]["condition"]["broadcaster_user_id"] = json!("x");
        assert_eq!(parse(&v), Err(DropReason::BadEvent));
        let mut v = online();
        v["payload"]["event"] = json!(null);
        assert_eq!(parse(&v), Err(DropReason::Malformed));
    }

    #[test]
    fn parses_revocation_and_reconnect() {
        let mut r = offline();
        r["metadata"]["message_type"] = json!("revocation");
        r["payload"]["subscription"]["status"] = json!("authorization_revoked");
        r["payload"].as_object_mut().unwrap().remove("event");
        let Message::Revocation(s) = parse(&r).unwrap().message else {
            panic!()
        };
        assert_eq!(s.status, "authorization_revoked");
        assert_eq!(s.kind, STREAM_OFFLINE);
        assert_eq!(s.broadcaster_id, "1337");

        let mut rc = welcome();
        rc["metadata"]["message_type"] = json!("session_reconnect");
        rc["payload"]["session"]["status"] = json!("reconnecting");
        rc["payload"]["session"]["keepalive_timeout_seconds"] = json!(null);
        // no URL: dropped
        assert_eq!(parse(&rc), Err(DropReason::BadSession));
        for (url, ok) in [
            ("wss://eventsub.wss.twitch.tv/ws?token=abc", true),
            ("ws://127.0.0.1:4000/ws?r=1", true),
            ("ws://eventsub.example/ws", false),
            ("https://eventsub.wss.twitch.tv/ws", false),
            ("wss://user@evil.example/ws", false),
            ("wss://a b", false),
        ] {
            rc["payload"]["session"]["reconnect_url"] = json!(url);
            let got = parse(&rc);
            assert_eq!(got.is_ok(), ok, "{url}: {got:?}");
            if let Ok(Envelope {
                message: Message::Reconnect(s),
                ..
            }) = got
            {
                assert_eq!(s.reconnect_url.as_deref(), Some(url));
                assert_eq!(s.keepalive_timeout_seconds, None);
            }
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut stats = DropStats::default();
        let big = "x".repeat(MAX_FRAME_BYTES + 1);
        let inputs = [
            "",
            "null",
            "[]",
            "{}",
            "{\"metadata\":null}",
            "{\"metadata\":{},\"payload\":[]}",
            "{\"metadata\":{\"message_id\":\"\\ud800\"}}",
            big.as_str(),
        ];
        for i in inputs {
            match parse_message_at(i, now()) {
                Err(r) => stats.count(r),
                Ok(m) => panic!("garbage {:?} parsed: {m:?}", &i[..i.len().min(80)]),
            }
        }
        assert_eq!(stats.total(), inputs.len() as u64);
        assert_eq!(stats.too_large, 1);
        // every proper prefix of a real frame (the frame itself parses)
        let frame = online().to_string();
        assert!(parse_message_at(&frame, now()).is_ok(), "{frame}");
        let mut prefixes = 0;
        for n in 0..frame.len() {
            if let Some(p) = frame.get(..n) {
                prefixes += 1;
                match parse_message_at(p, now()) {
                    Err(r) => stats.count(r),
                    Ok(m) => panic!("the prefix {p:?} parsed: {m:?}"),
                }
            }
        }
        assert!(prefixes > 100, "only {prefixes} prefixes");
        assert_eq!(stats.total(), inputs.len() as u64 + prefixes);
        assert_eq!(stats.too_large, 1);
    }
}
