//! The webhook transport's signature check (Twitch, "Handling webhook events"):
//! HMAC-SHA256 with the subscription's secret over the
//! `Twitch-Eventsub-Message-Id` header, the `Twitch-Eventsub-Message-Timestamp`
//! header (raw, exactly as sent) and the raw body, in that order; the
//! `Twitch-Eventsub-Message-Signature` header is `sha256=` + lowercase hex.
//!
//! The comparison is constant-time (`hmac`'s `verify_slice`, built on
//! `subtle`). A message whose timestamp is more than 10 minutes old (or 10
//! minutes ahead) is refused even with a good signature (replay). Errors never
//! carry the secret or the expected signature.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::SystemTime;

type HmacSha256 = Hmac<Sha256>;

/// Twitch: the secret is ASCII, 10 to 100 characters.
pub const MIN_SECRET_LEN: usize = 10;
pub const MAX_SECRET_LEN: usize = 100;
/// Replay window: 10 minutes.
pub const MAX_AGE_SECS: i64 = 600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook secret must be 10 to 100 printable ASCII characters")]
    BadSecret,
    #[error(
        "the Twitch-Eventsub-Message-Signature header is missing or not sha256=<64 hex digits>"
    )]
    MalformedSignature,
    #[error("the signature does not match the message")]
    BadSignature,
    #[error("the Twitch-Eventsub-Message-Timestamp header is missing or not RFC 3339")]
    BadTimestamp,
    #[error(
        "the message is older than 10 minutes (or more than 10 minutes ahead): refused as a replay"
    )]
    TooOld,
}

/// Twitch's rule for a secret ("an ASCII string", 10 to 100 characters),
/// held to printable ASCII, spaces included (`set_webhook_secret` applies the
/// same rule when one is stored).
pub fn check_secret(secret: &str) -> Result<(), WebhookError> {
    if (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret.bytes().all(|b| (0x20..=0x7e).contains(&b))
    {
        Ok(())
    } else {
        Err(WebhookError::BadSecret)
    }
}

fn mac(secret: &str, message_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail here.
    let mut m = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    m.update(message_id.as_bytes());
    m.update(timestamp.as_bytes());
    m.update(body);
    m
}

/// `sha256=<hex>` for a message: what Twitch sends (the simulator's webhook
/// sender and the tests use it).
pub fn sign(secret: &str, message_id: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(
            mac(secret, message_id, timestamp, body)
                .finalize()
                .into_bytes()
        )
    )
}

/// Checks the signature only (constant-time).
pub fn verify_signature(
    secret: &str,
    message_id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
) -> Result<(), WebhookError> {
    check_secret(secret)?;
    let hex_part = signature
        .trim()
        .strip_prefix("sha256=")
        .filter(|h| h.len() == 64)
        .ok_or(WebhookError::MalformedSignature)?;
    let given = hex::decode(hex_part).map_err(|_| WebhookError::MalformedSignature)?;
    mac(secret, message_id, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| WebhookError::BadSignature)
}

/// The whole check of a webhook request: the signature, then the timestamp's
/// age against `now`. Returns the timestamp in microseconds since the epoch.
pub fn verify(
    secret: &str,
    message_id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: SystemTime,
) -> Result<i64, WebhookError> {
    verify_signature(secret, message_id, timestamp, body, signature)?;
    let at = time::OffsetDateTime::parse(
        timestamp.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| WebhookError::BadTimestamp)?;
    let now = time::OffsetDateTime::from(now);
    // to the nanosecond: 600.5 s is past ten minutes (whole seconds would
    // round it down to 600)
    if (now - at).abs() > time::Duration::seconds(MAX_AGE_SECS) {
        return Err(WebhookError::TooOld);
    }
    i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| WebhookError::BadTimestamp)
}

/// The request headers a receiver needs (Twitch, "Handling webhook events").
pub const HEADER_MESSAGE_ID: &str = "Twitch-Eventsub-Message-Id";
pub const HEADER_TIMESTAMP: &str = "Twitch-Eventsub-Message-Timestamp";
pub const HEADER_SIGNATURE: &str = "Twitch-Eventsub-Message-Signature";
pub const HEADER_MESSAGE_TYPE: &str = "Twitch-Eventsub-Message-Type";
pub const HEADER_SUBSCRIPTION_TYPE: &str = "Twitch-Eventsub-Subscription-Type";
pub const HEADER_SUBSCRIPTION_VERSION: &str = "Twitch-Eventsub-Subscription-Version";

/// The `Twitch-Eventsub-*` headers of one request, as given. Header names are
/// case-insensitive; values are kept exactly as sent (the timestamp is hashed
/// raw).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub message_id: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub message_type: Option<String>,
    pub subscription_type: Option<String>,
    pub subscription_version: Option<String>,
}

impl Headers {
    /// The headers found in PostgREST's `request.headers` setting: a JSON
    /// object of header names (PostgREST lowercases them; any case is
    /// accepted) to string values; None when the setting is not a JSON
    /// object. A value that is not a string, or a name given twice in
    /// different cases, yields no value for that header.
    pub fn from_json(json: &str) -> Option<Headers> {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json)
        else {
            return None;
        };
        let get = |name: &str| -> Option<String> {
            let mut found = map
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            match (found.next(), found.next()) {
                (Some(Some(v)), None) => Some(v.to_string()),
                _ => None,
            }
        };
        Some(Headers {
            message_id: get(HEADER_MESSAGE_ID),
            timestamp: get(HEADER_TIMESTAMP),
            signature: get(HEADER_SIGNATURE),
            message_type: get(HEADER_MESSAGE_TYPE),
            subscription_type: get(HEADER_SUBSCRIPTION_TYPE),
            subscription_version: get(HEADER_SUBSCRIPTION_VERSION),
        })
    }

    /// These headers, with the missing ones taken from `other`.
    pub fn or(self, other: Headers) -> Headers {
        Headers {
            message_id: self.message_id.or(other.message_id),
            timestamp: self.timestamp.or(other.timestamp),
            signature: self.signature.or(other.signature),
            message_type: self.message_type.or(other.message_type),
            subscription_type: self.subscription_type.or(other.subscription_type),
            subscription_version: self.subscription_version.or(other.subscription_version),
        }
    }

    /// The first required header that is missing or empty (id, timestamp,
    /// signature, type), by its name.
    pub fn missing(&self) -> Option<&'static str> {
        [
            (&self.message_id, HEADER_MESSAGE_ID),
            (&self.timestamp, HEADER_TIMESTAMP),
            (&self.signature, HEADER_SIGNATURE),
            (&self.message_type, HEADER_MESSAGE_TYPE),
        ]
        .into_iter()
        .find(|(v, _)| v.as_deref().is_none_or(str::is_empty))
        .map(|(_, name)| name)
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn an_empty_required_header_is_missing() {
        let full = Headers {
            message_id: Some("abc".into()),
            timestamp: Some("2026-11-20T14:56:51Z".into()),
            signature: Some("sha256=00".into()),
            message_type: Some("notification".into()),
            ..Headers::default()
        };
        assert_eq!(full.missing(), None);
        let h = Headers {
            message_id: Some(String::new()),
            ..full.clone()
        };
        assert_eq!(h.missing(), Some(HEADER_MESSAGE_ID));
        let h = Headers {
            signature: Some(String::new()),
            ..full
        };
        assert_eq!(h.missing(), Some(HEADER_SIGNATURE));
    }

    #[test]
    fn headers_from_postgrest_json() {
        let h = Headers::from_json(
            r#"{"host":"x","twitch-eventsub-message-id":"abc","Twitch-Eventsub-Message-Timestamp":"2026-11-20T14:56:51.123456789Z",
                "twitch-eventsub-message-signature":"sha256=00","twitch-eventsub-message-type":"notification",
                "twitch-eventsub-subscription-type":"stream.online","twitch-eventsub-subscription-version":"1"}"#,
        )
        .unwrap();
        assert_eq!(h.message_id.as_deref(), Some("abc"));
        assert_eq!(
            h.timestamp.as_deref(),
            Some("2026-11-20T14:56:51.123456789Z")
        );
        assert_eq!(h.subscription_version.as_deref(), Some("1"));
        assert_eq!(h.missing(), None);
        for bad in ["", "null", "[]", "{", "\"x\""] {
            assert_eq!(Headers::from_json(bad), None, "{bad}");
        }
        // not a string, or the same name twice in other cases: no value
        let h = Headers::from_json(
            r#"{"twitch-eventsub-message-id":5,"twitch-eventsub-message-type":"a","TWITCH-EVENTSUB-MESSAGE-TYPE":"b"}"#,
        )
        .unwrap();
        assert_eq!((h.message_id, h.message_type), (None, None));
    }

    #[test]
    fn explicit_headers_come_first() {
        let explicit = Headers {
            message_id: Some("given".into()),
            ..Headers::default()
        };
        let h = explicit.or(Headers::from_json(
            r#"{"twitch-eventsub-message-id":"from-json","twitch-eventsub-message-type":"revocation"}"#,
        )
        .unwrap());
        assert_eq!(h.message_id.as_deref(), Some("given"));
        assert_eq!(h.message_type.as_deref(), Some("revocation"));
        assert_eq!(h.missing(), Some(HEADER_TIMESTAMP));
        assert_eq!(Headers::default().missing(), Some(HEADER_MESSAGE_ID));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &str = "s3cre7-long-enough";
    const ID: &str = "e76c6bd4-55c9-4987-8304-da1588d8988b";
    const TS: &str = "2026-11-20T14:56:51.123456789Z";
    const BODY: &[u8] = br#"{"subscription":{"type":"stream.online"},"event":{"id":"1"}}"#;

    fn at_ts() -> SystemTime {
        let t = time::OffsetDateTime::parse(TS, &time::format_description::well_known::Rfc3339)
            .unwrap();
        SystemTime::from(t)
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key="key", "The quick brown fox jumps over the lazy dog"), the
        // example vector of Wikipedia's HMAC page.
        let s = format!("{:x}", {
            let mut m = <HmacSha256 as Mac>::new_from_slice(b"key").unwrap();
            m.update(b"The quick brown fox jumps over the lazy dog");
            m.finalize().into_bytes()
        });
        assert_eq!(
            s,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        // the same vector through mac(): id, timestamp and body are concatenated
        let m = mac(
            "key",
            "The quick ",
            "brown fox ",
            b"jumps over the lazy dog",
        );
        assert_eq!(hex::encode(m.finalize().into_bytes()), s);
        // sign() concatenates id, timestamp and body in that order
        assert_eq!(
            sign("keykeykeyk", "ab", "cd", b"ef"),
            sign("keykeykeyk", "a", "bcd", b"ef")
        );
        assert_ne!(
            sign("keykeykeyk", "ab", "cd", b"ef"),
            sign("keykeykeyk", "ab", "ce", b"df")
        );
    }

    #[test]
    fn accepts_what_twitch_signs() {
        let sig = sign(SECRET, ID, TS, BODY);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_eq!(verify_signature(SECRET, ID, TS, BODY, &sig), Ok(()));
        let micros = verify(
            SECRET,
            ID,
            TS,
            BODY,
            &sig,
            at_ts() + Duration::from_secs(599),
        )
        .unwrap();
        assert_eq!(micros % 1_000_000, 123_456);
    }

    #[test]
    fn refuses_any_change() {
        let sig = sign(SECRET, ID, TS, BODY);
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert_eq!(
            verify_signature(SECRET, ID, TS, &body, &sig),
            Err(WebhookError::BadSignature)
        );
        // re-formatted timestamp (fewer digits): another message
        assert_eq!(
            verify_signature(SECRET, ID, "2026-11-20T14:56:51.123Z", BODY, &sig),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature(SECRET, "other", TS, BODY, &sig),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify_signature("another-secret", ID, TS, BODY, &sig),
            Err(WebhookError::BadSignature)
        );
        let upper = format!("sha256={}", sig[7..].to_uppercase());
        // hex decoding accepts upper case: the bytes are what is compared
        assert_eq!(verify_signature(SECRET, ID, TS, BODY, &upper), Ok(()));
    }

    #[test]
    fn malformed_signatures_and_secrets() {
        for s in [
            "",
            "sha256=",
            "sha1=abcd",
            "sha256=zz",
            &"sha256=".repeat(2),
            &format!("sha256={}", "a".repeat(63)),
        ] {
            assert_eq!(
                verify_signature(SECRET, ID, TS, BODY, s),
                Err(WebhookError::MalformedSignature),
                "{s}"
            );
        }
        assert_eq!(check_secret("short"), Err(WebhookError::BadSecret));
        assert_eq!(check_secret(&"x".repeat(101)), Err(WebhookError::BadSecret));
        assert_eq!(check_secret("with space in it"), Ok(()));
        assert_eq!(
            check_secret("with\ttab in it"),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(
            check_secret("non-ascii é in it"),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(check_secret(&"x".repeat(100)), Ok(()));
    }

    #[test]
    fn refuses_replays_older_than_ten_minutes() {
        let sig = sign(SECRET, ID, TS, BODY);
        assert_eq!(
            verify(
                SECRET,
                ID,
                TS,
                BODY,
                &sig,
                at_ts() + Duration::from_secs(601)
            ),
            Err(WebhookError::TooOld)
        );
        assert_eq!(
            verify(
                SECRET,
                ID,
                TS,
                BODY,
                &sig,
                at_ts() - Duration::from_secs(601)
            ),
            Err(WebhookError::TooOld)
        );
        // the limit is ten minutes to the nanosecond, both ways
        for (late, ok) in [
            (599_999, true),
            (600_000, true),
            (600_001, false),
            (600_600, false),
        ] {
            let d = Duration::from_millis(late);
            for now in [at_ts() + d, at_ts() - d] {
                let got = verify(SECRET, ID, TS, BODY, &sig, now);
                assert_eq!(got.is_ok(), ok, "{late} ms: {got:?}");
            }
        }
        let bad_ts = "yesterday";
        let sig2 = sign(SECRET, ID, bad_ts, BODY);
        assert_eq!(
            verify(SECRET, ID, bad_ts, BODY, &sig2, at_ts()),
            Err(WebhookError::BadTimestamp)
        );
    }

    #[test]
    fn errors_carry_no_secret() {
        let sig = sign(SECRET, ID, TS, BODY);
        for e in [
            verify_signature(SECRET, ID, TS, b"x", &sig).unwrap_err(),
            verify(
                SECRET,
                ID,
                TS,
                BODY,
                &sig,
                at_ts() + Duration::from_secs(9999),
            )
            .unwrap_err(),
        ] {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains(SECRET) && !text.contains(&sig[7..]),
                "{text}"
            );
        }
    }
}
