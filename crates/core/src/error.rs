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

/// The forms a secret can take in what a server sends back: as is, as sent
/// in a form body or a query string (percent-encoded, with either case of hex
/// digits, a space as `+` or `%20`), and escaped in a JSON string. Longest
/// first, so that no form is left half replaced by a shorter one.
fn secret_forms(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let lower_hex = |s: &str| {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let hex = rest.get(i + 1..i + 3).unwrap_or("");
            out.push('%');
            out.push_str(&hex.to_ascii_lowercase());
            rest = &rest[(i + 1 + hex.len()).min(rest.len())..];
        }
        out.push_str(rest);
        out
    };
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json.trim_matches('"').to_string();
    let mut forms = vec![
        secret.to_string(),
        lower_hex(&form),
        form.replace('+', "%20"),
        lower_hex(&form.replace('+', "%20")),
        json.replace('/', "\\/"),
        json,
        form,
    ];
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

/// Removes each secret from a message, in every form a server may echo it
/// in ([`secret_forms`]), and a start of one that ends the message (a server's
/// text is cut at [`MAX_ERROR_CHARS`], perhaps inside a secret). Secrets
/// shorter than 4 characters are left alone: they would only garble the text.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        for form in secret_forms(s) {
            out = out.replace(&form, "[redacted]");
            // the longest start of the form (4 characters or more) ending the text
            let cut = (4..form.len())
                .rev()
                .filter(|&n| form.is_char_boundary(n))
                .find(|&n| out.ends_with(&form[..n]));
            if let Some(n) = cut {
                out.truncate(out.len() - n);
                out.push_str("[redacted]");
            }
        }
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

    #[test]
    fn redacts_secrets_in_every_form_an_answer_can_echo() {
        let secret = "SECRET+abc&123=x/y%z q";
        for echoed in [
            "SECRET+abc&123=x/y%z q",
            "SECRET%2Babc%26123%3Dx%2Fy%25z+q",
            "SECRET%2babc%26123%3dx%2fy%25z+q",
            "SECRET%2Babc%26123%3Dx%2Fy%25z%20q",
            "SECRET+abc&123=x\\/y%z q",
        ] {
            let text = format!("body: client_secret={echoed}&grant_type=client_credentials");
            assert_eq!(
                redact(&text, &[secret]),
                "body: client_secret=[redacted]&grant_type=client_credentials",
                "{echoed}"
            );
        }
        // cut inside the secret: its start is gone too
        assert_eq!(
            redact("client_secret=SECRET%2Babc%2", &[secret]),
            "client_secret=[redacted]"
        );
        assert_eq!(redact("nothing here", &[secret]), "nothing here");
    }
}
