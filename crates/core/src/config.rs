//! Settings of one sync pass, as plain values, and the rules for the URL settings.

use std::time::Duration;

/// Ids per Get Streams request: Twitch's maximum for `user_id`.
pub const MAX_IDS_PER_REQUEST: usize = 100;
/// Page size sent with every Get Streams request: Twitch's maximum (the default is 20).
pub const PAGE_SIZE: usize = 100;
/// Twitch's page size when `first` is not sent (or not heeded): 20.
pub const DEFAULT_PAGE_SIZE: usize = 20;

/// Defaults of the settings: the one source for the GUCs (src/gucs.rs) and
/// for [`SyncConfig::default`]. Integers are the GUCs' own units.
pub mod defaults {
    use std::ffi::CStr;
    pub const HELIX_URL: &CStr = c"https://api.twitch.tv/helix";
    pub const AUTH_URL: &CStr = c"https://id.twitch.tv/oauth2";
    pub const REQUEST_TIMEOUT_MS: i32 = 10_000;
    /// A cap only: the bucket and the connection decide (crate::concurrency).
    pub const MAX_CONCURRENT_REQUESTS: i32 = 800;
    /// No extra CA certificates: the bundled web PKI roots only.
    pub const EXTRA_CA_FILE: &CStr = c"";
    pub const MAX_RETRIES: i32 = 3;
    pub const RUN_DEADLINE_MS: i32 = 300_000;
    pub const OFFLINE_AFTER_MISSES: i32 = 1;
    pub const RUNS_RETENTION_DAYS: i32 = 30;
    pub const SAMPLES_RETENTION_DAYS: i32 = 90;
    /// About twice the default 10-minute polling interval.
    pub const MAX_SAMPLE_GAP_SECS: i32 = 1_200;
    /// 0: daily rollups are kept.
    pub const ROLLUPS_RETENTION_DAYS: i32 = 0;
    /// Adaptive polling (off by default: every run checks every channel).
    pub const ADAPTIVE_POLLING: bool = false;
    pub const POLL_HOT_VIEWERS: i32 = 1_000;
    pub const POLL_HOT_INTERVAL_SECS: i32 = 60;
    pub const POLL_LIVE_INTERVAL_SECS: i32 = 120;
    pub const POLL_OFFLINE_INTERVAL_SECS: i32 = 600;
    pub const POLL_COVERED_INTERVAL_SECS: i32 = 3_600;
    /// 5% of the bucket is left for other apps on the same client id.
    pub const POLL_BUDGET_SHARE: f64 = 0.95;
    /// EventSub's WebSocket server (the conduit shard connects here).
    pub const EVENTSUB_URL: &CStr = c"wss://eventsub.wss.twitch.tv/ws";
    /// Seconds between the worker's subscription reconciliations.
    pub const EVENTSUB_RECONCILE_SECS: i32 = 60;
    /// Helix's listing lags EventSub by 30-60 s and more: a poll contradicting
    /// an event this recent is ignored (sql/transitions.sql, held_by_events).
    pub const EVENTSUB_GRACE_SECS: i32 = 180;
    /// Subscription requests per reconciliation: 100 a minute is an eighth of
    /// the default bucket, so polling keeps most of it.
    pub const EVENTSUB_CHANGES_PER_PASS: i32 = 100;
}

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
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
    /// Validate the cached token when it was last validated longer ago than this.
    pub validate_every: Duration,
    /// Mint a new token when the cached one expires within this.
    pub renew_before_expiry: Duration,
    /// CA certificates (DER) trusted in addition to the web PKI roots
    /// (`twitch_sync.extra_ca_file`, read by [`load_ca_file`]).
    pub extra_ca_certs: Vec<Vec<u8>>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            helix_url: defaults::HELIX_URL.to_string_lossy().into_owned(),
            auth_url: defaults::AUTH_URL.to_string_lossy().into_owned(),
            request_timeout: Duration::from_millis(defaults::REQUEST_TIMEOUT_MS as u64),
            max_concurrent_requests: defaults::MAX_CONCURRENT_REQUESTS as usize,
            max_retries: defaults::MAX_RETRIES as u32,
            run_deadline: Duration::from_millis(defaults::RUN_DEADLINE_MS as u64),
            max_response_bytes: 4 * 1024 * 1024,
            validate_every: Duration::from_secs(3600),
            renew_before_expiry: Duration::from_secs(3600),
            extra_ca_certs: Vec::new(),
        }
    }
}

/// What a URL setting may be, for every error message.
const ALLOWED: &str = "use https://host[:port][/path], or http:// only for a loopback host \
                       (127.0.0.0/8, localhost or [::1]); no credentials, query or fragment";

/// Checks a base URL setting: `https://host[:port][/path]`, or `http://` only
/// for loopback hosts (127.0.0.0/8, `localhost`, `[::1]`); no userinfo, query
/// or fragment. Returns the URL without a trailing slash, or what is wrong.
///
/// The URL is parsed by the `url` crate, the parser reqwest itself uses, and
/// the returned text is that parser's own serialisation: the host that is
/// checked here is the host that will be connected to (`http://0x7f.0.0.1`
/// comes back as `http://127.0.0.1`, `http://%6C%6Fcalhost` as
/// `http://localhost`). Whitespace, control characters, backslashes and `@`
/// are refused outright rather than repaired, although the parser would
/// silently drop or reinterpret some of them.
pub fn validate_base_url(url: &str) -> Result<String, String> {
    use url::{Host, ParseError, Url};
    let url = url.trim();
    let parsed = Url::parse(url).map_err(|e| match e {
        ParseError::RelativeUrlWithoutBase => {
            format!("\"{url}\" is not an absolute URL: {ALLOWED}")
        }
        ParseError::EmptyHost => format!("\"{url}\" has no host: {ALLOWED}"),
        ParseError::InvalidPort => format!("\"{url}\" has an invalid port: {ALLOWED}"),
        e => format!("\"{url}\" is not a valid URL ({e}): {ALLOWED}"),
    })?;
    let scheme = parsed.scheme();
    if scheme != "https" && scheme != "http" {
        return Err(format!("scheme \"{scheme}\" is not allowed: {ALLOWED}"));
    }
    if url.contains('@') || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "credentials in the URL (\"@\") are not allowed: {ALLOWED}"
        ));
    }
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\')
    {
        return Err(format!(
            "\"{}\" has a character that is not allowed in it ({c:?}): {ALLOWED}",
            url.escape_debug()
        ));
    }
    // The parser reads "https:host" and "https:///host" as "https://host/";
    // whoever wrote them meant something else.
    let after_scheme = url.get(scheme.len()..).unwrap_or_default();
    if !after_scheme.starts_with("://") || after_scheme[3..].starts_with('/') {
        return Err(format!(
            "\"{url}\" has no host after \"{scheme}://\": {ALLOWED}"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "a query or fragment is not allowed in \"{url}\": {ALLOWED}"
        ));
    }
    let loopback = match parsed.host() {
        None => return Err(format!("\"{url}\" has no host: {ALLOWED}")),
        Some(Host::Domain(d)) => d == "localhost",
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
    };
    if scheme == "http" && !loopback {
        let host = parsed.host_str().unwrap_or_default();
        return Err(format!(
            "plain http is only allowed for loopback hosts, not \"{host}\": {ALLOWED}"
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Largest `twitch_sync.extra_ca_file` read (a whole public CA bundle is
/// about 0.2 MiB).
pub const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// Reads the CA certificates of a PEM file (`twitch_sync.extra_ca_file`): every
/// `CERTIFICATE` block, each checked to be usable as a trust anchor the way
/// rustls will use it. Other blocks (a private key, say) are ignored. An empty
/// path means none. Errors say what is wrong with the file, never what is in it.
pub fn load_ca_file(path: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::{self, PemObject, SectionKind};
    let path = path.trim();
    if path.is_empty() {
        return Ok(Vec::new());
    }
    if !std::path::Path::new(path).is_absolute() {
        return Err(format!(
            "\"{path}\" is not an absolute path: name a PEM file of CA certificates \
             by its absolute path, or set '' for none"
        ));
    }
    // A FIFO or a device would block the backend in open() or read() where
    // no cancel reaches it, or fill its memory: only a regular file of a
    // bounded size is read.
    let cannot_read = |e: std::io::Error| format!("cannot read the file \"{path}\": {e}");
    let meta = std::fs::metadata(path).map_err(cannot_read)?;
    if !meta.is_file() {
        return Err(format!(
            "\"{path}\" is not a regular file: name a PEM file of CA certificates"
        ));
    }
    if meta.len() > MAX_CA_FILE_BYTES {
        return Err(format!(
            "\"{path}\" is larger than {} MiB: name a PEM file of only the CA certificates to add",
            MAX_CA_FILE_BYTES >> 20
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(cannot_read)?,
            MAX_CA_FILE_BYTES,
        ),
        &mut bytes,
    )
    .map_err(cannot_read)?;
    let mut certs = Vec::new();
    for section in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&bytes) {
        match section {
            Ok((SectionKind::Certificate, der)) => certs.push(der),
            Ok(_) => {}
            Err(e) => {
                let why: String = match e {
                    pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
                    pem::Error::IllegalSectionStart { .. } => {
                        "a PEM BEGIN line is malformed".into()
                    }
                    pem::Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
                    e => format!("{e:?}").chars().take(100).collect(),
                };
                return Err(format!("\"{path}\" is not a valid PEM file: {why}"));
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "\"{path}\" holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certs.iter().enumerate() {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.as_slice()))
            .map_err(|e| {
                format!(
                    "certificate {} of \"{path}\" cannot be a trusted CA certificate: {e}",
                    i + 1
                )
            })?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_https_and_loopback_http() {
        for (url, normalised) in [
            (
                "https://api.twitch.tv/helix/",
                "https://api.twitch.tv/helix",
            ),
            ("https://api.twitch.tv/helix", "https://api.twitch.tv/helix"),
            ("https://api.twitch.tv", "https://api.twitch.tv"),
            (
                "https://api.twitch.tv:8443/helix",
                "https://api.twitch.tv:8443/helix",
            ),
            // the default port is dropped, as reqwest would
            (
                "https://api.twitch.tv:443/helix",
                "https://api.twitch.tv/helix",
            ),
            ("HTTPS://id.twitch.tv/oauth2", "https://id.twitch.tv/oauth2"),
            ("HtTpS://ID.Twitch.TV/oauth2", "https://id.twitch.tv/oauth2"),
            (
                "  https://id.twitch.tv/oauth2 \n",
                "https://id.twitch.tv/oauth2",
            ),
            ("http://127.0.0.1:8080/helix", "http://127.0.0.1:8080/helix"),
            ("http://127.9.9.9/helix", "http://127.9.9.9/helix"),
            ("http://localhost:1/x", "http://localhost:1/x"),
            ("http://LOCALHOST:1/x", "http://localhost:1/x"),
            ("HTTP://127.0.0.1/helix", "http://127.0.0.1/helix"),
            ("http://[::1]:9000/helix", "http://[::1]:9000/helix"),
            ("http://[::1]", "http://[::1]"),
            ("http://[0:0:0:0:0:0:0:1]/x", "http://[::1]/x"),
            // other spellings of a loopback address are what the client will
            // connect to, and come back in the form it will use
            ("http://0x7f.0.0.1/helix", "http://127.0.0.1/helix"),
            ("http://2130706433/helix", "http://127.0.0.1/helix"),
            ("http://%6C%6Fcalhost/x", "http://localhost/x"),
            ("http://%31%32%37.0.0.1/x", "http://127.0.0.1/x"),
            (
                "https://api.twitch.tv/a/../helix",
                "https://api.twitch.tv/helix",
            ),
        ] {
            assert_eq!(validate_base_url(url).as_deref(), Ok(normalised), "{url:?}");
        }
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
            (
                "http://127.0.0.1%2Eevil.com/helix",
                "only allowed for loopback",
            ),
            (
                "http://localhost.evil.com/helix",
                "only allowed for loopback",
            ),
            ("http://localhost./helix", "only allowed for loopback"),
            (
                "http://[::ffff:127.0.0.1]/helix",
                "only allowed for loopback",
            ),
            ("http://0.0.0.0/helix", "only allowed for loopback"),
            ("http://[::]/helix", "only allowed for loopback"),
            ("http://localhost@evil.com/helix", "credentials"),
            ("http://127.0.0.1@evil.com/helix", "credentials"),
            ("http://evil.com@127.0.0.1/helix", "credentials"),
            ("https://user:pw@api.twitch.tv/helix", "credentials"),
            ("http://user@127.0.0.1/helix", "credentials"),
            ("http://@127.0.0.1/helix", "credentials"),
            ("file:///etc/passwd", "scheme \"file\""),
            ("gopher://x", "scheme"),
            ("ftp://127.0.0.1/x", "scheme"),
            ("javascript:alert(1)", "scheme"),
            ("not a url", "not an absolute URL"),
            ("", "not an absolute URL"),
            ("   ", "not an absolute URL"),
            ("//api.twitch.tv/helix", "not an absolute URL"),
            ("https://", "no host"),
            ("https:///helix", "no host"),
            ("https:api.twitch.tv/helix", "no host"),
            ("http:/127.0.0.1/helix", "no host"),
            ("http://:80/x", "no host"),
            ("https://api.twitch.tv/helix?x=1", "query"),
            ("https://api.twitch.tv/helix?", "query"),
            ("https://api.twitch.tv/helix#frag", "fragment"),
            ("https://api.twitch.tv:99999/helix", "invalid port"),
            ("https://api.twitch.tv:abc/helix", "invalid port"),
            // the parser would drop these characters; refusing them is clearer
            ("http://127.0.0.1\n.evil.com/helix", "not allowed in it"),
            ("http://127.0.0.1\t.evil.com/helix", "not allowed in it"),
            ("https://api.twitch.tv/he lix", "not allowed in it"),
            ("https:\\\\api.twitch.tv\\helix", "not allowed in it"),
            ("http://[::1/helix", "not a valid URL"),
            ("http://exa mple.com", "not a valid URL"),
        ] {
            let err = validate_base_url(url).unwrap_err();
            assert!(err.contains(why), "{url:?}: {err}");
            assert!(err.contains("use https://"), "{url:?}: {err}");
        }
    }
}
