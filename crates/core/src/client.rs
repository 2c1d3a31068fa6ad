//! HTTP calls to Twitch: the OAuth server (mint, validate) and Get Streams.
//!
//! HTTPS is rustls with the bundled web PKI roots, plus any CA certificates of
//! `twitch_sync.extra_ca_file`; verification is never switched off. HTTP/2 is
//! offered by ALPN (one connection carries every request of a run), HTTP/1.1
//! spoken when the server offers only that.

use crate::concurrency::{ConnWatch, WatchLayer, HTTP1_MAX_CONNECTIONS};
use crate::config::{SyncConfig, PAGE_SIZE};
use crate::error::{network_text, HelixError};
use crate::ratelimit::RateLimitSnapshot;
use crate::streams::{parse_streams_page, StreamsPage};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "Twitch's OAuth token endpoint";
const VALIDATE: &str = "Twitch's OAuth validate endpoint";
const STREAMS: &str = "Helix Get Streams";

/// What a Get Streams request asks for.
#[derive(Debug, Clone, Copy)]
pub enum StreamsQuery<'a> {
    /// Up to 100 broadcaster ids (`user_id`, repeated).
    Ids(&'a [String]),
    /// A category's directory: `game_id`, and `language` when given (both
    /// checked by the caller: digits; a language code).
    Directory {
        game_id: &'a str,
        language: Option<&'a str>,
    },
}

/// An app access token as the client-credentials grant returns it (Debug
/// hides the token).
#[derive(Clone, PartialEq)]
pub struct AppToken {
    pub access_token: String,
    pub expires_in: Duration,
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppToken")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    Valid { expires_in: Duration },
    Invalid,
}

pub struct TwitchClient {
    pub(crate) http: reqwest::Client,
    pub(crate) helix_url: String,
    auth_url: String,
    pub(crate) client_id: String,
    timeout_ms: u64,
    max_response_bytes: usize,
    /// The connections this client opened, and what they tell about Helix.
    watch: Arc<ConnWatch>,
    /// The OAuth server and Helix share scheme, host and port (one connection pool).
    same_origin: bool,
}

fn http_error(endpoint: &'static str, timeout_ms: u64, e: reqwest::Error) -> HelixError {
    if e.is_timeout() {
        return HelixError::Timeout {
            endpoint,
            timeout_ms,
        };
    }
    // reqwest's text names the URL. Ours carry no secrets (the token is a
    // header), but a Get Streams query holds 100 ids: the error names the
    // URL without its query, short enough for runs.error and the dashboard.
    let mut e = e;
    if let Some(url) = e.url_mut() {
        url.set_query(None);
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    HelixError::Network { endpoint, detail }
}

/// Twitch's error bodies carry a `message`; anything else is summarised.
pub(crate) fn error_message(body: &[u8]) -> String {
    error_message_without(body, &[])
}

/// [`error_message`] with `secrets` redacted from the decoded message before
/// it is cut to fit (decoded: a JSON escape such as `\u0026` would hide a
/// secret from a redaction of the raw body).
pub(crate) fn error_message_without(body: &[u8], secrets: &[&str]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m) }) => network_text(&crate::error::redact(&m, secrets)),
        _ => format!("{} bytes of non-JSON error body", body.len()),
    }
}

impl TwitchClient {
    pub fn new(cfg: &SyncConfig, client_id: &str) -> Result<Self, HelixError> {
        let watch = Arc::new(ConnWatch::default());
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            // A redirect could lead anywhere: Twitch does not redirect these endpoints.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.max_concurrent_requests.clamp(1, HTTP1_MAX_CONNECTIONS))
            .tcp_nodelay(true)
            .user_agent(concat!("twitch_sync/", env!("CARGO_PKG_VERSION")))
            // Bodies as they are: without the header a server may send any
            // coding it likes (RFC 9110), and none is decoded here.
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::ACCEPT_ENCODING,
                reqwest::header::HeaderValue::from_static("identity"),
            )]))
            .connector_layer(WatchLayer(watch.clone()));
        // Added to the web PKI roots, never instead of them.
        for der in &cfg.extra_ca_certs {
            let cert = reqwest::Certificate::from_der(der).map_err(|e| HelixError::Network {
                endpoint: STREAMS,
                detail: format!("an extra CA certificate cannot be used: {e}"),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| http_error(STREAMS, 0, e))?;
        let origin = |u: &str| {
            url::Url::parse(u).ok().map(|u| {
                (
                    u.scheme().to_string(),
                    u.host_str().map(str::to_string),
                    u.port_or_known_default(),
                )
            })
        };
        let same_origin =
            origin(&cfg.helix_url).is_some() && origin(&cfg.helix_url) == origin(&cfg.auth_url);
        Ok(TwitchClient {
            http,
            helix_url: cfg.helix_url.trim_end_matches('/').to_string(),
            auth_url: cfg.auth_url.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            timeout_ms: cfg.request_timeout.as_millis() as u64,
            max_response_bytes: cfg.max_response_bytes,
            watch,
            same_origin,
        })
    }

    /// The connections this client opened, and the protocol Helix speaks.
    pub fn watch(&self) -> &Arc<ConnWatch> {
        &self.watch
    }

    /// Sends `request` and reads its answer: the status and the body, read
    /// under the size cap. Network errors and timeouts become [`HelixError`]s
    /// named after `endpoint`. The rate-limit headers come back whenever an
    /// answer arrived, even if reading its body then failed.
    pub(crate) async fn exchange(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> (Result<Answer, HelixError>, Option<RateLimitSnapshot>) {
        let helix = endpoint == STREAMS;
        let resp = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                if helix {
                    self.watch.helix_unreachable();
                }
                return (Err(http_error(endpoint, self.timeout_ms, e)), None);
            }
        };
        if helix || self.same_origin {
            self.watch.answered_by_helix(resp.version());
        }
        let status = resp.status().as_u16();
        // A 401's headers are those of the bucket of requests without a valid
        // token (30 points a minute), not the app's: read as the app's, they
        // held a new token's requests (Get Streams, EventSub's) to that bucket.
        let snapshot = RateLimitSnapshot::from_headers(resp.headers()).filter(|_| status != 401);
        // A coded body (gzip, say) sent though identity was asked for: named
        // as such, not as JSON that cannot be read at line 1. Only for a
        // successful answer, whose body is the data: a 429 or 5xx keeps its
        // status (and its wait) whatever its body.
        if let Some(coding) = resp
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .filter(|_| (200..300).contains(&status))
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|c| !c.is_empty() && c != "identity")
        {
            let coding: String = coding.chars().take(40).collect();
            return (
                Err(HelixError::Malformed {
                    endpoint,
                    detail: format!(
                        "its body is {coding}-coded (Content-Encoding), though the request asked for identity"
                    ),
                }),
                snapshot,
            );
        }
        let answer = self.body(endpoint, resp).await.map(|body| Answer {
            endpoint,
            status,
            body,
        });
        (answer, snapshot)
    }

    /// Reads a body, refusing to hold more than the cap.
    async fn body(
        &self,
        endpoint: &'static str,
        mut resp: reqwest::Response,
    ) -> Result<Vec<u8>, HelixError> {
        let limit = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(HelixError::TooLarge { endpoint, limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| http_error(endpoint, self.timeout_ms, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(HelixError::TooLarge { endpoint, limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Client-credentials grant: a new app access token.
    pub async fn mint_token(&self, client_secret: &str) -> Result<AppToken, HelixError> {
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            expires_in: u64,
        }
        let request = self.http.post(format!("{}/token", self.auth_url)).form(&[
            ("client_id", self.client_id.as_str()),
            ("client_secret", client_secret),
            ("grant_type", "client_credentials"),
        ]);
        let answer = self.exchange(TOKEN, request).await.0?;
        if answer.status != 200 {
            // an error answer may echo the form it was sent: the secret goes
            // before any of it is cut to fit an error
            return Err(answer.status_error_without(&[client_secret]));
        }
        let t: TokenBody = answer.json()?;
        if !is_usable_token(&t.access_token) {
            return Err(HelixError::Malformed {
                endpoint: TOKEN,
                detail: format!(
                    "the access_token is empty, longer than {MAX_TOKEN_BYTES} bytes or not visible ASCII"
                ),
            });
        }
        Ok(AppToken {
            access_token: t.access_token,
            expires_in: token_lifetime(t.expires_in),
        })
    }

    /// `GET /oauth2/validate`, which Twitch requires at start and hourly.
    pub async fn validate_token(&self, token: &str) -> Result<Validation, HelixError> {
        #[derive(Deserialize)]
        struct ValidBody {
            expires_in: u64,
        }
        let request = self
            .http
            .get(format!("{}/validate", self.auth_url))
            .header(AUTHORIZATION, authorization("OAuth", token));
        let answer = self.exchange(VALIDATE, request).await.0?;
        match answer.status {
            200 => {
                let v: ValidBody = answer.json()?;
                Ok(Validation::Valid {
                    expires_in: token_lifetime(v.expires_in),
                })
            }
            401 => Ok(Validation::Invalid),
            _ => Err(answer.status_error()),
        }
    }

    /// One Get Streams request for up to 100 broadcaster ids, with `first=100`.
    /// The rate-limit headers come back with success and failure alike.
    pub async fn get_streams(
        &self,
        token: &str,
        broadcaster_ids: &[String],
        after: Option<&str>,
    ) -> (Result<StreamsPage, HelixError>, Option<RateLimitSnapshot>) {
        self.get_streams_by(token, &StreamsQuery::Ids(broadcaster_ids), after)
            .await
    }

    /// One Get Streams request: by broadcaster ids, or one page of a
    /// category's directory (`game_id`, optional `language`, `type=live`);
    /// always `first=100`.
    pub async fn get_streams_by(
        &self,
        token: &str,
        by: &StreamsQuery<'_>,
        after: Option<&str>,
    ) -> (Result<StreamsPage, HelixError>, Option<RateLimitSnapshot>) {
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(104);
        match by {
            StreamsQuery::Ids(ids) => query.extend(ids.iter().map(|id| ("user_id", id.as_str()))),
            StreamsQuery::Directory { game_id, language } => {
                query.push(("game_id", game_id));
                if let Some(l) = language {
                    query.push(("language", l));
                }
                query.push(("type", "live"));
            }
        }
        let first = PAGE_SIZE.to_string();
        query.push(("first", &first));
        if let Some(a) = after {
            query.push(("after", a));
        }
        let request = self
            .http
            .get(format!("{}/streams", self.helix_url))
            .query(&query)
            .header("Client-Id", &self.client_id)
            .header(AUTHORIZATION, authorization("Bearer", token));
        let (answer, snapshot) = self.exchange(STREAMS, request).await;
        let result = answer.and_then(|answer| match answer.status {
            200 => parse_streams_page(&answer.body).map_err(|e| HelixError::Malformed {
                endpoint: STREAMS,
                detail: network_text(&e.to_string()),
            }),
            401 => Err(HelixError::Unauthorized {
                endpoint: STREAMS,
                message: error_message(&answer.body),
            }),
            429 => Err(HelixError::RateLimited {
                endpoint: STREAMS,
                snapshot,
            }),
            _ => Err(answer.status_error()),
        });
        (result, snapshot)
    }
}

/// The longest a token is taken to live, whatever `expires_in` says (Twitch's
/// app tokens live about 60 days, and are validated hourly anyway): a larger
/// figure could not be stored as a timestamp.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// A token's `expires_in` (seconds), at most [`MAX_TOKEN_LIFETIME`].
fn token_lifetime(expires_in: u64) -> Duration {
    Duration::from_secs(expires_in).min(MAX_TOKEN_LIFETIME)
}

/// An answer read in full (under the cap), for the endpoint that sent it.
pub(crate) struct Answer {
    pub(crate) endpoint: &'static str,
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The body as the JSON document `T`, or [`HelixError::Malformed`]. Every
    /// answer Twitch documents is an object: an array is refused, though
    /// serde would read a struct from one by position.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HelixError> {
        let malformed = |detail: String| HelixError::Malformed {
            endpoint: self.endpoint,
            detail: network_text(&detail),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&self.body).map_err(|e| malformed(e.to_string()))?;
        if !v.is_object() {
            return Err(malformed("the answer is not a JSON object".into()));
        }
        serde_json::from_value(v).map_err(|e| malformed(e.to_string()))
    }

    /// An answer with an unexpected status, as [`HelixError::Status`].
    pub(crate) fn status_error(&self) -> HelixError {
        self.status_error_without(&[])
    }

    /// [`Answer::status_error`] with `secrets` redacted from its message.
    pub(crate) fn status_error_without(&self, secrets: &[&str]) -> HelixError {
        HelixError::Status {
            endpoint: self.endpoint,
            status: self.status,
            message: error_message_without(&self.body, secrets),
        }
    }
}

/// Longest access token accepted from the token endpoint, in bytes (Twitch's
/// are 30 characters).
pub const MAX_TOKEN_BYTES: usize = 512;

/// A token that can be stored as it came and sent back in an `Authorization`
/// header: 1 to [`MAX_TOKEN_BYTES`] bytes of visible ASCII. Anything else (a
/// NUL, which text cannot hold; a line break, which a header cannot) is
/// refused where it arrives, naming the token endpoint.
pub fn is_usable_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && token.bytes().all(|b| b.is_ascii_graphic())
}

/// An `Authorization` header value (`Bearer <token>`, `OAuth <token>`), marked
/// sensitive so that it never shows in debug output. A token that cannot be a
/// header value is replaced by `invalid` (the server then refuses it).
pub(crate) fn authorization(scheme: &'static str, token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("{scheme} {token}"))
        .or_else(|_| HeaderValue::from_str(&format!("{scheme} invalid")))
        .unwrap_or(HeaderValue::from_static("invalid"));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_ascii_tokens_are_usable() {
        assert!(is_usable_token("abcdefghijklmnopqrstuvwxyz0123"));
        for bad in [
            "",
            "abc\u{0}def",
            "abc\ndef",
            "abc def",
            "é",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(!is_usable_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_secret_hidden_by_json_escapes_is_redacted_from_an_error_message() {
        // as Go's JSON writer sends '&': the raw body never holds the secret
        let body = br#"{"status":400,"message":"bad form: client_secret=abc\u0026def\u003cg"}"#;
        assert_eq!(
            error_message_without(body, &["abc&def<g"]),
            "bad form: client_secret=[redacted]"
        );
    }

    #[test]
    fn an_error_message_keeps_no_nul_and_no_more_than_its_cap() {
        assert_eq!(
            error_message(br#"{"error":"Bad Request","status":400,"message":"bad\u0000thing"}"#),
            "badthing"
        );
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(10_000));
        assert_eq!(
            error_message(long.as_bytes()).chars().count(),
            crate::error::MAX_ERROR_CHARS
        );
    }

    #[test]
    fn an_answer_written_as_an_array_is_not_read_as_an_object() {
        #[derive(Deserialize, Debug)]
        struct TokenBody {
            #[allow(dead_code)]
            access_token: String,
            #[allow(dead_code)]
            expires_in: u64,
        }
        let answer = |body: &[u8]| Answer {
            endpoint: "token",
            status: 200,
            body: body.to_vec(),
        };
        assert!(answer(br#"{"access_token":"t","expires_in":3600}"#)
            .json::<TokenBody>()
            .is_ok());
        let e = answer(br#"["t",3600]"#).json::<TokenBody>().unwrap_err();
        assert!(matches!(e, HelixError::Malformed { .. }), "{e}");
    }

    #[test]
    fn a_token_lives_at_most_a_year_whatever_expires_in_says() {
        assert_eq!(token_lifetime(5_000_000), Duration::from_secs(5_000_000));
        assert_eq!(token_lifetime(10_000_000_000_000), MAX_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(u64::MAX), MAX_TOKEN_LIFETIME);
        // the deadline it makes can be computed and stored
        assert!(std::time::SystemTime::now()
            .checked_add(token_lifetime(u64::MAX))
            .is_some());
    }
}
