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
    #[error("the webhook secret must be 10 to 100 visible ASCII characters")]
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

/// Twitch's rule for a secret, applied when one is stored.
pub fn check_secret(secret: &str) -> Result<(), WebhookError> {
    if (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&secret.len())
        && secret.bytes().all(|b| (0x21..=0x7e).contains(&b))
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
    let age = (now - at).whole_seconds();
    if !(-MAX_AGE_SECS..=MAX_AGE_SECS).contains(&age) {
        return Err(WebhookError::TooOld);
    }
    i64::try_from(at.unix_timestamp_nanos() / 1000).map_err(|_| WebhookError::BadTimestamp)
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
        assert_eq!(
            check_secret("with space in it"),
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
