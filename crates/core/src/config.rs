//! Settings of one sync pass, as plain values, and the rules for the URL settings.

use std::time::Duration;

/// Ids per Get Streams request: Twitch's maximum for `user_id`.
pub const MAX_IDS_PER_REQUEST: usize = 100;
/// Page size sent with every Get Streams request: Twitch's maximum (the default is 20).
pub const PAGE_SIZE: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct SyncConfig {
    /// Base URL of Helix, without a trailing slash (`https://api.twitch.tv/helix`).
    pub helix_url: String,
    /// Base URL of Twitch's OAuth server (`https://id.twitch.tv/oauth2`).
    pub auth_url: String,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_retries: u32,
    /// The whole pass, HTTP and waiting included, ends by then.
    pub run_deadline: Duration,
    /// How many extra pages one batch may follow through `pagination.cursor`.
    pub max_pages_per_batch: u32,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Validate the cached token when it was last validated longer ago than this.
    pub validate_every: Duration,
    /// Mint a new token when the cached one expires within this.
    pub renew_before_expiry: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            helix_url: "https://api.twitch.tv/helix".into(),
            auth_url: "https://id.twitch.tv/oauth2".into(),
            request_timeout: Duration::from_secs(10),
            max_concurrent_requests: 32,
            max_retries: 3,
            run_deadline: Duration::from_secs(300),
            max_pages_per_batch: 10,
            max_response_bytes: 4 * 1024 * 1024,
            validate_every: Duration::from_secs(3600),
            renew_before_expiry: Duration::from_secs(3600),
        }
    }
}

/// Checks a base URL setting: `https://host[:port][/path]`, or `http://` only
/// for loopback hosts (127.0.0.0/8, `localhost`, `[::1]`); no userinfo, query
/// or fragment. Returns the URL without a trailing slash, or what is wrong.
pub fn validate_base_url(url: &str) -> Result<String, String> {
    const ALLOWED: &str =
        "use https://host[/path], or http:// only for 127.0.0.1, localhost or [::1]";
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("\"{url}\" is not an absolute URL: {ALLOWED}"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(format!("scheme \"{scheme}\" is not allowed: {ALLOWED}"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!(
            "a query or fragment is not allowed in \"{url}\": {ALLOWED}"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("credentials in the URL are not allowed: {ALLOWED}"));
    }
    if authority
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("\"{url}\" has whitespace in its host: {ALLOWED}"));
    }
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let end = stripped
            .find(']')
            .ok_or_else(|| format!("\"{url}\" has an unclosed IPv6 address: {ALLOWED}"))?;
        (&stripped[..end], stripped[end + 1..].strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host: {ALLOWED}"));
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("\"{url}\" has an invalid port: {ALLOWED}"));
    }
    if scheme == "http" && !is_loopback_host(host) {
        return Err(format!(
            "plain http is only allowed for loopback hosts, not \"{host}\": {ALLOWED}"
        ));
    }
    Ok(format!("{scheme}://{}", rest.trim_end_matches('/')))
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host == "::1" {
        return true;
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_loopback_http() {
        assert_eq!(
            validate_base_url("https://api.twitch.tv/helix/").unwrap(),
            "https://api.twitch.tv/helix"
        );
        assert_eq!(
            validate_base_url("HTTPS://id.twitch.tv/oauth2").unwrap(),
            "https://id.twitch.tv/oauth2"
        );
        assert_eq!(
            validate_base_url("http://127.0.0.1:8080/helix").unwrap(),
            "http://127.0.0.1:8080/helix"
        );
        assert_eq!(
            validate_base_url("http://127.9.9.9/helix").unwrap(),
            "http://127.9.9.9/helix"
        );
        assert_eq!(
            validate_base_url("http://localhost:1/x").unwrap(),
            "http://localhost:1/x"
        );
        assert_eq!(
            validate_base_url("http://[::1]:9000/helix").unwrap(),
            "http://[::1]:9000/helix"
        );
    }

    #[test]
    fn refuses_everything_else_with_a_reason() {
        for (url, why) in [
            ("http://api.twitch.tv/helix", "only allowed for loopback"),
            ("http://10.0.0.1/helix", "only allowed for loopback"),
            (
                "http://127.0.0.1.evil.com/helix",
                "only allowed for loopback",
            ),
            ("file:///etc/passwd", "scheme \"file\""),
            ("gopher://x", "scheme"),
            ("not a url", "not an absolute URL"),
            ("", "not an absolute URL"),
            ("https://user:pw@api.twitch.tv/helix", "credentials"),
            ("http://user@127.0.0.1/helix", "credentials"),
            ("https:///helix", "no host"),
            ("https://api.twitch.tv/helix?x=1", "query"),
            ("https://api.twitch.tv:99999/helix", "invalid port"),
            ("https://api.twitch.tv:abc/helix", "invalid port"),
        ] {
            let err = validate_base_url(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.contains("use https://"), "{url}: {err}");
        }
    }
}
