//! The simulator's signed webhook sender: EventSub deliveries POSTed over real
//! HTTP/1.1 to a callback URL, as Twitch sends them ("Handling webhook
//! events"; `shared/notes/eventsub-facts.md` §4 and §6.3):
//!
//! - headers: the seven `Twitch-Eventsub-*` ones ([`crate::eventsub::webhook_headers`]):
//!   `Message-Id`, `Message-Retry`, `Message-Type`, `Message-Signature`
//!   (`sha256=` + hex HMAC-SHA256 over id + timestamp + raw body),
//!   `Message-Timestamp` (nanoseconds: a receiver that re-formats it fails),
//!   `Subscription-Type`, `Subscription-Version`; `Content-Type:
//!   application/json`, `Content-Length`;
//! - bodies: `{"challenge", "subscription"}` (status
//!   `webhook_callback_verification_pending`), the conduit shard variant
//!   `{"challenge", "conduit_shard": {"conduit_id", "shard"}}`,
//!   `{"subscription", "event"}` for `stream.online` / `stream.offline` v1,
//!   `{"subscription"}` with the reason as its status for a revocation;
//! - faults: a bad signature ([`Delivery::bad_signature`]), a timestamp older
//!   than Twitch's 10 minutes, correctly signed ([`Delivery::stale`]), a body
//!   changed after signing ([`Delivery::tampered`]), a resend
//!   with the same message id ([`Delivery::resend`]).
//!
//! The reply's status, headers, body and time are returned
//! ([`WebhookReply`]): Twitch wants 200 and the raw challenge for a
//! verification, and a 2xx within a few seconds for the rest.

use crate::eventsub::{rfc3339_nanos, webhook_headers};
use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// A webhook subscription as Twitch describes it in every body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSubscription {
    pub id: String,
    /// `stream.online` or `stream.offline`.
    pub kind: String,
    pub broadcaster_id: String,
    /// The callback URL given when subscribing.
    pub callback: String,
    pub created_at: SystemTime,
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A fresh opaque id in the shape of Twitch's (a UUID).
pub fn new_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let a = t ^ (u64::from(std::process::id()) << 32);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        a & 0xfff,
        n >> 48 & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

impl WebhookSubscription {
    pub fn new(kind: &str, broadcaster_id: &str, callback: &str) -> WebhookSubscription {
        WebhookSubscription {
            id: new_id(),
            kind: kind.to_string(),
            broadcaster_id: broadcaster_id.to_string(),
            callback: callback.to_string(),
            created_at: SystemTime::now(),
        }
    }

    fn json(&self, status: &str) -> Value {
        json!({
            "id": self.id,
            "status": status,
            "type": self.kind,
            "version": "1",
            "cost": 1,
            "condition": {"broadcaster_user_id": self.broadcaster_id},
            "transport": {"method": "webhook", "callback": self.callback},
            "created_at": rfc3339_nanos(self.created_at),
        })
    }
}

/// One delivery: its headers' values and its raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    /// `webhook_callback_verification`, `notification` or `revocation`.
    pub message_type: String,
    /// Empty for a conduit shard's challenge (no subscription).
    pub subscription_type: String,
    /// As sent: RFC 3339 with nanoseconds.
    pub timestamp: String,
    pub retry: u32,
    /// The raw body, byte for byte what is signed and sent.
    pub body: String,
    /// Sign with another secret than the receiver's (fault).
    pub wrong_secret: bool,
    /// Send this body instead of the signed one (fault: changed on the way).
    pub sent_body: Option<String>,
}

impl Delivery {
    fn new(message_type: &str, subscription_type: &str, body: Value) -> Delivery {
        Delivery {
            message_id: new_id(),
            message_type: message_type.to_string(),
            subscription_type: subscription_type.to_string(),
            timestamp: rfc3339_nanos(SystemTime::now()),
            retry: 0,
            body: body.to_string(),
            wrong_secret: false,
            sent_body: None,
        }
    }

    /// The challenge Twitch sends when a subscription is created.
    pub fn verification(sub: &WebhookSubscription, challenge: &str) -> Delivery {
        Delivery::new(
            "webhook_callback_verification",
            &sub.kind,
            json!({"challenge": challenge,
                   "subscription": sub.json("webhook_callback_verification_pending")}),
        )
    }

    /// The challenge of a conduit's webhook shard (no subscription in it).
    pub fn shard_verification(conduit_id: &str, shard: &str, challenge: &str) -> Delivery {
        Delivery::new(
            "webhook_callback_verification",
            "",
            json!({"challenge": challenge,
                   "conduit_shard": {"conduit_id": conduit_id, "shard": shard}}),
        )
    }

    /// A `stream.online` notification.
    pub fn online(
        sub: &WebhookSubscription,
        login: &str,
        stream_id: &str,
        started_at: SystemTime,
    ) -> Delivery {
        Delivery::new(
            "notification",
            "stream.online",
            json!({"subscription": sub.json("enabled"),
                   "event": {"id": stream_id, "broadcaster_user_id": sub.broadcaster_id,
                             "broadcaster_user_login": login, "broadcaster_user_name": login,
                             "type": "live", "started_at": crate::world::rfc3339(started_at)}}),
        )
    }

    /// A `stream.offline` notification (`event.id`, Twitch's addition of
    /// 2026-06, when `stream_id` is given).
    pub fn offline(sub: &WebhookSubscription, login: &str, stream_id: Option<&str>) -> Delivery {
        let mut event = json!({"broadcaster_user_id": sub.broadcaster_id,
                               "broadcaster_user_login": login, "broadcaster_user_name": login});
        if let Some(id) = stream_id {
            event["id"] = json!(id);
        }
        Delivery::new(
            "notification",
            "stream.offline",
            json!({"subscription": sub.json("enabled"), "event": event}),
        )
    }

    /// A revocation: `status` is why (`authorization_revoked`,
    /// `user_removed`, `notification_failures_exceeded`, `version_removed`).
    pub fn revocation(sub: &WebhookSubscription, status: &str) -> Delivery {
        Delivery::new(
            "revocation",
            &sub.kind,
            json!({"subscription": sub.json(status)}),
        )
    }

    /// Fault: signed with another secret (the receiver must answer 4xx).
    pub fn bad_signature(mut self) -> Delivery {
        self.wrong_secret = true;
        self
    }

    /// Fault: the body changed after signing (`f` edits the signed body).
    pub fn tampered(mut self, f: impl FnOnce(&str) -> String) -> Delivery {
        self.sent_body = Some(f(&self.body));
        self
    }

    /// Fault: sent `age` ago, correctly signed (older than 10 minutes must be refused).
    pub fn stale(mut self, age: Duration) -> Delivery {
        self.timestamp = rfc3339_nanos(SystemTime::now() - age);
        self
    }

    /// The same message again (Twitch's at-least-once delivery): same id,
    /// timestamp and body, the retry count one higher.
    pub fn resend(&self) -> Delivery {
        Delivery {
            retry: self.retry + 1,
            ..self.clone()
        }
    }

    /// The request's `Twitch-Eventsub-*` headers, signed with `secret`.
    pub fn headers(&self, secret: &str) -> Vec<(String, String)> {
        let key = if self.wrong_secret {
            format!("not-{secret}")
        } else {
            secret.to_string()
        };
        webhook_headers(
            &key,
            &self.message_id,
            &self.timestamp,
            &self.message_type,
            &self.subscription_type,
            &self.body,
        )
        .into_iter()
        .filter(|(k, _)| !(self.subscription_type.is_empty() && k.contains("Subscription")))
        .map(|(k, v)| {
            if k == "Twitch-Eventsub-Message-Retry" {
                (k, self.retry.to_string())
            } else {
                (k, v)
            }
        })
        .collect()
    }
}

/// What the receiver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub elapsed: Duration,
}

impl WebhookReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// POSTs deliveries to one callback (`http://host:port/path`; the simulator
/// speaks plain HTTP/1.1 on loopback, Twitch requires HTTPS on 443), signed
/// with one secret.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    pub callback: String,
    pub secret: String,
    pub timeout: Duration,
}

impl WebhookSender {
    pub fn new(callback: &str, secret: &str) -> WebhookSender {
        WebhookSender {
            callback: callback.to_string(),
            secret: secret.to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sends one delivery and reads the whole reply (one connection per
    /// request, `Connection: close`).
    pub fn send(&self, d: &Delivery) -> io::Result<WebhookReply> {
        let body = d.sent_body.as_deref().unwrap_or(&d.body);
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        let rest = self
            .callback
            .strip_prefix("http://")
            .ok_or_else(|| bad("the callback must be http://host:port/path"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| bad("the callback's host does not resolve"))?;
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: Twitch-Eventsub-Simulator\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in d.headers(&self.secret) {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body.as_bytes())?;
        s.flush()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let elapsed = start.elapsed();
        parse_reply(&raw, elapsed)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP/1.1 reply"))
    }
}

fn parse_reply(raw: &[u8], elapsed: Duration) -> Option<WebhookReply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = &raw[end + 4..];
    if let Some(n) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body = &body[..n.min(body.len())];
    }
    Some(WebhookReply {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn deliveries_are_signed_as_twitch_does() {
        let sub = WebhookSubscription::new("stream.online", "1337", "https://example.com/cb");
        let d = Delivery::online(&sub, "cool_user", "9001", SystemTime::now());
        let h = d.headers("s3cre7-long-enough");
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(h.len(), 7);
        let sig = get("Twitch-Eventsub-Message-Signature").unwrap();
        let mac = {
            use hmac::{Hmac, Mac};
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"s3cre7-long-enough").unwrap();
            m.update(d.message_id.as_bytes());
            m.update(d.timestamp.as_bytes());
            m.update(d.body.as_bytes());
            format!("sha256={}", hex::encode(m.finalize().into_bytes()))
        };
        assert_eq!(sig, mac);
        // nanoseconds in the timestamp, as Twitch sends
        assert_eq!(d.timestamp.len(), "2026-11-20T14:56:51.123456789Z".len());
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["event"]["id"], "9001");
        assert_eq!(body["subscription"]["transport"]["method"], "webhook");
        // faults
        let bad = d.clone().bad_signature().headers("s3cre7-long-enough");
        assert_ne!(bad[3].1, sig);
        let again = d.resend();
        assert_eq!(again.message_id, d.message_id);
        assert_eq!(
            again
                .headers("s3cre7-long-enough")
                .iter()
                .find(|(k, _)| k == "Twitch-Eventsub-Message-Retry")
                .unwrap()
                .1,
            "1"
        );
        let shard = Delivery::shard_verification("c-1", "0", "x").headers("s3cre7-long-enough");
        assert_eq!(
            shard.len(),
            5,
            "no subscription headers for a shard's challenge"
        );
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn posts_over_http_and_reads_the_reply() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/rpc/hook", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let len: usize = head
                .iter()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut s = s;
            let answer = "challenge-1";
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            )
            .unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        let sub = WebhookSubscription::new("stream.offline", "42", &url);
        let d = Delivery::verification(&sub, "challenge-1");
        let reply = WebhookSender::new(&url, "0123456789").send(&d).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "challenge-1");
        assert_eq!(reply.header("content-type"), Some("text/plain"));
        let (head, body) = server.join().unwrap();
        assert_eq!(head[0], "POST /rpc/hook HTTP/1.1");
        assert!(head.contains(&format!("Twitch-Eventsub-Message-Id: {}", d.message_id)));
        assert!(head
            .contains(&"Twitch-Eventsub-Message-Type: webhook_callback_verification".to_string()));
        assert_eq!(body, d.body);
    }
}
