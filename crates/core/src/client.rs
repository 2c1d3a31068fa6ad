//! HTTP calls to Twitch: the OAuth server (mint, validate) and Get Streams.

use crate::config::{SyncConfig, PAGE_SIZE};
use crate::error::HelixError;
use crate::ratelimit::RateLimitSnapshot;
use crate::streams::{parse_streams_page, StreamsPage};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use std::time::Duration;

const TOKEN: &str = "Twitch's OAuth token endpoint";
const VALIDATE: &str = "Twitch's OAuth validate endpoint";
const STREAMS: &str = "Helix Get Streams";

/// An app access token as the client-credentials grant returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppToken {
    pub access_token: String,
    pub expires_in: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    Valid { expires_in: Duration },
    Invalid,
}

pub struct TwitchClient {
    http: reqwest::Client,
    helix_url: String,
    auth_url: String,
    client_id: String,
    timeout_ms: u64,
    max_response_bytes: usize,
}

fn http_error(endpoint: &'static str, timeout_ms: u64, e: reqwest::Error) -> HelixError {
    if e.is_timeout() {
        return HelixError::Timeout {
            endpoint,
            timeout_ms,
        };
    }
    // reqwest's text names the URL; ours carry no secrets (the token is a header).
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
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m) }) => m.chars().take(200).collect(),
        _ => format!("{} bytes of non-JSON error body", body.len()),
    }
}

impl TwitchClient {
    pub fn new(cfg: &SyncConfig, client_id: &str) -> Result<Self, HelixError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(5)))
            // A redirect could lead anywhere: Twitch does not redirect these endpoints.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.max_concurrent_requests.max(1))
            .tcp_nodelay(true)
            .user_agent(concat!("twitch_sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| http_error(STREAMS, 0, e))?;
        Ok(TwitchClient {
            http,
            helix_url: cfg.helix_url.trim_end_matches('/').to_string(),
            auth_url: cfg.auth_url.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            timeout_ms: cfg.request_timeout.as_millis() as u64,
            max_response_bytes: cfg.max_response_bytes,
        })
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

    fn bearer(token: &str) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or(HeaderValue::from_static("Bearer invalid"));
        v.set_sensitive(true);
        v
    }

    /// Client-credentials grant: a new app access token.
    pub async fn mint_token(&self, client_secret: &str) -> Result<AppToken, HelixError> {
        #[derive(Deserialize)]
        struct TokenBody {
            access_token: String,
            expires_in: u64,
        }
        let resp = self
            .http
            .post(format!("{}/token", self.auth_url))
            .form(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", client_secret),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .map_err(|e| http_error(TOKEN, self.timeout_ms, e))?;
        let status = resp.status().as_u16();
        let body = self.body(TOKEN, resp).await?;
        if status != 200 {
            return Err(HelixError::Status {
                endpoint: TOKEN,
                status,
                message: error_message(&body),
            });
        }
        let t: TokenBody = serde_json::from_slice(&body).map_err(|e| HelixError::Malformed {
            endpoint: TOKEN,
            detail: e.to_string(),
        })?;
        if t.access_token.is_empty() {
            return Err(HelixError::Malformed {
                endpoint: TOKEN,
                detail: "empty access_token".into(),
            });
        }
        Ok(AppToken {
            access_token: t.access_token,
            expires_in: Duration::from_secs(t.expires_in),
        })
    }

    /// `GET /oauth2/validate`, which Twitch requires at start and hourly.
    pub async fn validate_token(&self, token: &str) -> Result<Validation, HelixError> {
        #[derive(Deserialize)]
        struct ValidBody {
            expires_in: u64,
        }
        let mut auth = HeaderValue::from_str(&format!("OAuth {token}"))
            .unwrap_or(HeaderValue::from_static("OAuth invalid"));
        auth.set_sensitive(true);
        let resp = self
            .http
            .get(format!("{}/validate", self.auth_url))
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .map_err(|e| http_error(VALIDATE, self.timeout_ms, e))?;
        let status = resp.status().as_u16();
        let body = self.body(VALIDATE, resp).await?;
        match status {
            200 => {
                let v: ValidBody =
                    serde_json::from_slice(&body).map_err(|e| HelixError::Malformed {
                        endpoint: VALIDATE,
                        detail: e.to_string(),
                    })?;
                Ok(Validation::Valid {
                    expires_in: Duration::from_secs(v.expires_in),
                })
            }
            401 => Ok(Validation::Invalid),
            _ => Err(HelixError::Status {
                endpoint: VALIDATE,
                status,
                message: error_message(&body),
            }),
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
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(broadcaster_ids.len() + 2);
        query.extend(broadcaster_ids.iter().map(|id| ("user_id", id.as_str())));
        let first = PAGE_SIZE.to_string();
        query.push(("first", &first));
        if let Some(a) = after {
            query.push(("after", a));
        }
        let sent = self
            .http
            .get(format!("{}/streams", self.helix_url))
            .query(&query)
            .header("Client-Id", &self.client_id)
            .header(AUTHORIZATION, Self::bearer(token))
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return (Err(http_error(STREAMS, self.timeout_ms, e)), None),
        };
        let snapshot = RateLimitSnapshot::from_headers(resp.headers());
        let status = resp.status().as_u16();
        let body = match self.body(STREAMS, resp).await {
            Ok(b) => b,
            Err(e) => return (Err(e), snapshot),
        };
        let result = match status {
            200 => parse_streams_page(&body).map_err(|e| HelixError::Malformed {
                endpoint: STREAMS,
                detail: e.to_string(),
            }),
            401 => Err(HelixError::Unauthorized {
                endpoint: STREAMS,
                message: error_message(&body),
            }),
            429 => Err(HelixError::RateLimited {
                endpoint: STREAMS,
                snapshot,
            }),
            _ => Err(HelixError::Status {
                endpoint: STREAMS,
                status,
                message: error_message(&body),
            }),
        };
        (result, snapshot)
    }
}
