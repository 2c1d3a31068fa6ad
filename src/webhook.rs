//! `twitch_sync.eventsub_webhook()`: EventSub's webhook transport as a SQL
//! function (README "Webhook transport"). A front that terminates Twitch's
//! HTTPS request (PostgREST, or any small receiver) passes the raw body as
//! text and the `Twitch-Eventsub-*` headers, as arguments or in PostgREST's
//! `request.headers` setting. Then, in this order:
//!
//! 1. every required header is there (else 22023), the body is at most 64 KiB
//!    (else 22023), a webhook secret is stored (else 55000);
//! 2. the `sha256=` HMAC over message id + timestamp + raw body, compared in
//!    constant time, and the timestamp within 10 minutes
//!    (`twitch_sync_core::eventsub::webhook::verify`): else 28000, which
//!    PostgREST answers with 403 (a timestamp that is not RFC 3339: 22007, 400);
//! 3. the body, parsed with the same checked helpers as WebSocket frames
//!    (`twitch_sync_core::eventsub::message::parse_webhook_body`):
//!    - a verification challenge is answered with the challenge itself,
//!    - a notification goes through `twitch_sync.apply_eventsub` (deduplicated
//!      by message id; one observation of the transition layer; `db::apply_event`, as the worker),
//!    - a revocation through `twitch_sync.eventsub_record_revocation`,
//!    - a signed body twitch_sync cannot use is answered `dropped: <reason>`
//!      (2xx: Twitch would only send it again).
//!
//! Every answer sets `response.headers` to `text/plain`. Nothing is written
//! before the checks of steps 1 and 2 pass, and no error text carries the
//! secret or the signature. SPI is in `crate::db`; the logic is in the core.

use crate::db;
use crate::error::SyncError;
use crate::gucs;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;
use std::time::SystemTime;
use twitch_sync_core::eventsub::apply::EventArgs;
use twitch_sync_core::eventsub::message::{
    parse_webhook_body, DropReason, Message, WebhookBody, MAX_FRAME_BYTES,
};
use twitch_sync_core::eventsub::webhook::{verify, Headers, WebhookError};

/// The answer's `response.headers` (PostgREST): the challenge must be the raw
/// body, so every answer is plain text.
const RESPONSE_HEADERS: &str = r#"[{"Content-Type": "text/plain; charset=utf-8"}]"#;

const HEADERS_HINT: &str = "Pass the request's Twitch-Eventsub-* headers as arguments of \
     twitch_sync.eventsub_webhook, or call it through PostgREST, which puts them in request.headers.";

/// Why a request is refused: raised as an SQL error with its own SQLSTATE.
#[derive(Debug)]
enum Refusal {
    NoBody,
    MissingHeader(&'static str),
    /// `request.headers` is set but not a JSON object.
    UnreadableHeaders,
    TooLarge,
    NoSecret,
    Verify(WebhookError),
    UnknownType,
    Challenge(DropReason),
    Sync(SyncError),
}

impl From<SyncError> for Refusal {
    fn from(e: SyncError) -> Self {
        Refusal::Sync(e)
    }
}

impl Refusal {
    fn raise(self) -> ! {
        use PgSqlErrorCode::*;
        let (code, message, hint): (PgSqlErrorCode, String, Option<&str>) = match self {
            Refusal::Sync(e) => e.raise(),
            Refusal::NoBody => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "the request body is missing (NULL or empty)".into(),
                Some("Pass the raw request body as text, exactly as received."),
            ),
            Refusal::MissingHeader(name) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                // (a name given twice, in two cases, or a value that is not
                // a string, is no header either)
                format!("the {name} header is missing, empty, given twice or not a string"),
                Some(HEADERS_HINT),
            ),
            Refusal::UnreadableHeaders => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "request.headers is not a JSON object, so no header can be read from it".into(),
                Some(HEADERS_HINT),
            ),
            Refusal::TooLarge => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "the request body is larger than {} KiB",
                    MAX_FRAME_BYTES / 1024
                ),
                None,
            ),
            Refusal::NoSecret => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "twitch_sync has no webhook secret".into(),
                Some(
                    "Store the secret your subscriptions were created with: \
                     SELECT twitch_sync.set_webhook_secret('<secret>'); (10 to 100 printable ASCII characters)",
                ),
            ),
            Refusal::Verify(e) => {
                let code = match e {
                    WebhookError::BadTimestamp => ERRCODE_INVALID_DATETIME_FORMAT,
                    WebhookError::BadSecret => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    WebhookError::MalformedSignature
                    | WebhookError::BadSignature
                    | WebhookError::TooOld => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                };
                // WebhookError's texts never carry the secret or the signature.
                (code, e.to_string(), None)
            }
            Refusal::UnknownType => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "the Twitch-Eventsub-Message-Type header is not notification, \
                 webhook_callback_verification or revocation"
                    .into(),
                None,
            ),
            Refusal::Challenge(reason) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "the verification challenge is not answered: {}",
                    reason_text(reason)
                ),
                Some(
                    "twitch_sync answers challenges of stream.online and stream.offline version 1 \
                     subscriptions and of conduit shards only.",
                ),
            ),
        };
        let mut report = ErrorReport::new(
            code,
            format!("twitch_sync.eventsub_webhook: {message}"),
            "twitch_sync",
        );
        if let Some(h) = hint {
            report = report.set_hint(h);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

fn reason_text(r: DropReason) -> &'static str {
    match r {
        DropReason::TooLarge => "too_large",
        DropReason::Malformed => "malformed",
        DropReason::BadMessageId => "bad_message_id",
        DropReason::BadTimestamp => "bad_timestamp",
        DropReason::UnknownType => "unknown_type",
        DropReason::BadSession => "bad_session",
        DropReason::Unsupported => "unsupported",
        DropReason::Mismatch => "mismatch",
        DropReason::BadEvent => "bad_event",
    }
}

/// The request, checked and handled; the text answer.
fn handle(body: Option<&str>, given: Headers) -> Result<String, Refusal> {
    db::check_schema_version()?;
    // (an empty body carries nothing Twitch sends: refused like a missing one)
    let body = body.filter(|b| !b.is_empty()).ok_or(Refusal::NoBody)?;
    let headers = match given.missing() {
        None => given,
        Some(_) => match db::request_headers()? {
            Some(json) if !json.is_empty() => {
                given.or(Headers::from_json(&json).ok_or(Refusal::UnreadableHeaders)?)
            }
            _ => given,
        },
    };
    if let Some(name) = headers.missing() {
        return Err(Refusal::MissingHeader(name));
    }
    let (Some(id), Some(timestamp), Some(signature), Some(kind)) = (
        headers.message_id.as_deref(),
        headers.timestamp.as_deref(),
        headers.signature.as_deref(),
        headers.message_type.as_deref(),
    ) else {
        return Err(Refusal::MissingHeader("Twitch-Eventsub-Message-Id"));
    };
    if body.len() > MAX_FRAME_BYTES {
        return Err(Refusal::TooLarge);
    }
    let now = SystemTime::now();
    let message_at = {
        let secret = db::webhook_secret()?.ok_or(Refusal::NoSecret)?;
        verify(&secret, id, timestamp, body.as_bytes(), signature, now).map_err(Refusal::Verify)?
    };
    let parsed = parse_webhook_body(
        kind,
        id,
        message_at,
        headers.subscription_type.as_deref(),
        headers.subscription_version.as_deref(),
        body,
        now,
    );
    let answer = match parsed {
        Ok(WebhookBody::Challenge { challenge, .. }) => challenge,
        Ok(WebhookBody::Notification(env)) => match EventArgs::of(&env) {
            Some(args) => db::apply_event(&args, gucs::notify_events())?,
            None => "dropped: bad_timestamp".into(),
        },
        Ok(WebhookBody::Revocation(env)) => match &env.message {
            Message::Revocation(sub) => {
                if db::record_revocation(&sub.id, &sub.status)? {
                    "revocation recorded".into()
                } else {
                    "revocation of a subscription not on record".into()
                }
            }
            _ => "dropped: unknown_type".into(),
        },
        Err(DropReason::UnknownType) => return Err(Refusal::UnknownType),
        Err(r) if kind == "webhook_callback_verification" => return Err(Refusal::Challenge(r)),
        Err(r) => {
            // The id is signed but otherwise unchecked (a bad one is a reason
            // to drop): the warning shows at most its first 64 characters.
            let shown: String = id.chars().take(64).collect();
            pgrx::warning!(
                "twitch_sync: webhook message {shown:?} ({kind}) dropped: {}",
                reason_text(r)
            );
            format!("dropped: {}", reason_text(r))
        }
    };
    db::set_response_headers(RESPONSE_HEADERS)?;
    Ok(answer)
}

#[pgrx::pg_schema]
mod twitch_sync {
    use pgrx::prelude::*;
    use twitch_sync_core::eventsub::webhook::Headers;

    /// `twitch_sync.eventsub_webhook(body, message_id, message_timestamp,
    /// message_signature, message_type, subscription_type,
    /// subscription_version)`: one EventSub webhook request (see the module
    /// documentation). Headers left NULL are read from PostgREST's
    /// `request.headers`. It reads the webhook secret, so it runs as the
    /// extension's owner with a pinned search_path; EXECUTE is granted on
    /// purpose (README "Webhook transport").
    #[pg_extern(volatile, parallel_unsafe, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn eventsub_webhook(
        body: Option<&str>,
        message_id: default!(Option<&str>, "NULL"),
        message_timestamp: default!(Option<&str>, "NULL"),
        message_signature: default!(Option<&str>, "NULL"),
        message_type: default!(Option<&str>, "NULL"),
        subscription_type: default!(Option<&str>, "NULL"),
        subscription_version: default!(Option<&str>, "NULL"),
    ) -> String {
        let own = |v: Option<&str>| v.map(str::to_string);
        let given = Headers {
            message_id: own(message_id),
            timestamp: own(message_timestamp),
            signature: own(message_signature),
            message_type: own(message_type),
            subscription_type: own(subscription_type),
            subscription_version: own(subscription_version),
        };
        PgTryBuilder::new(|| match super::handle(body, given.clone()) {
            Ok(answer) => answer,
            Err(refusal) => refusal.raise(),
        })
        .catch_others(|e| crate::error::reraise_clean(e))
        .execute()
    }
}
