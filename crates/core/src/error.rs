//! What can go wrong talking to Twitch, and which of it is worth a retry.

use crate::ratelimit::RateLimitSnapshot;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HelixError {
    #[error("could not reach {endpoint}: {detail}")]
    Network {
        endpoint: &'static str,
        detail: String,
    },
    #[error("{endpoint} did not answer within {timeout_ms} ms")]
    Timeout {
        endpoint: &'static str,
        timeout_ms: u64,
    },
    #[error("{endpoint} answered HTTP {status}: {message}")]
    Status {
        endpoint: &'static str,
        status: u16,
        message: String,
    },
    #[error("{endpoint} answered HTTP 401 (unauthorized): {message}")]
    Unauthorized {
        endpoint: &'static str,
        message: String,
    },
    #[error("{endpoint} answered HTTP 429 (rate limited)")]
    RateLimited {
        endpoint: &'static str,
        snapshot: Option<RateLimitSnapshot>,
    },
    #[error("{endpoint} sent an answer that is not the JSON Twitch documents: {detail}")]
    Malformed {
        endpoint: &'static str,
        detail: String,
    },
    #[error("{endpoint} sent an answer larger than {limit} bytes")]
    TooLarge {
        endpoint: &'static str,
        limit: usize,
    },
    #[error("the run deadline passed before this request could finish")]
    Deadline,
}

impl HelixError {
    /// Timeouts, dropped connections, 5xx and garbled answers may go away on a retry.
    pub fn is_transient(&self) -> bool {
        match self {
            HelixError::Network { .. }
            | HelixError::Timeout { .. }
            | HelixError::Malformed { .. } => true,
            HelixError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// The longest text from the network an error keeps.
pub const MAX_ERROR_CHARS: usize = 300;

/// Text a server sent (an error body's `message`, a parser's description of
/// a bad answer, which quotes it) made fit for an error: NULs removed (no
/// Postgres text can hold one), at most [`MAX_ERROR_CHARS`] characters.
pub fn network_text(s: &str) -> String {
    crate::streams::clean_text(s, MAX_ERROR_CHARS).0
}

/// Removes every occurrence of each secret from a message (secrets shorter than
/// 4 characters are left alone: they would only garble the text).
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let e = |status| HelixError::Status {
            endpoint: "x",
            status,
            message: String::new(),
        };
        assert!(e(500).is_transient());
        assert!(e(503).is_transient());
        assert!(!e(400).is_transient());
        assert!(!e(404).is_transient());
        assert!(HelixError::Timeout {
            endpoint: "x",
            timeout_ms: 1
        }
        .is_transient());
        assert!(!HelixError::Deadline.is_transient());
        assert!(!HelixError::Unauthorized {
            endpoint: "x",
            message: String::new()
        }
        .is_transient());
    }

    #[test]
    fn redacts_secrets() {
        assert_eq!(
            redact("token abcd1234 and abcd1234", &["abcd1234", "", "ab"]),
            "token [redacted] and [redacted]"
        );
    }
}
