//! A small HTTP/1.1 server (over TCP or TLS): keep-alive, Content-Length bodies, and the
//! delivery modes fault injection needs (dropping a connection mid-body,
//! trickling a body slowly). Hand-written so every byte on the wire is ours.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Decoded query parameters in order; repeated keys stay repeated.
    pub query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub(crate) fn new(
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Self {
        Request {
            method,
            path,
            query,
            headers,
            body,
        }
    }

    /// Header lookup, case-insensitive as HTTP requires.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn form(&self) -> Vec<(String, String)> {
        parse_urlencoded(&String::from_utf8_lossy(&self.body))
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .map(|v| v.eq_ignore_ascii_case("close"))
            .unwrap_or(false)
    }
}

/// How the body of a response reaches the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Whole,
    /// Send headers (with the full Content-Length) and this many body bytes, then close.
    DropAfter(usize),
    /// Send the body in chunks of `chunk` bytes with `pause` between them.
    Trickle {
        chunk: usize,
        pause: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delivery: Delivery,
    /// Wait this long before answering at all.
    pub delay: Duration,
}

impl Response {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(value).expect("json values serialize"),
            delivery: Delivery::Whole,
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delivery: Delivery::Whole,
            delay: Duration::ZERO,
        }
    }

    pub fn with_header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_urlencoded(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// Reads one request; `Ok(None)` when the client closed the connection cleanly.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > MAX_HEADER_BYTES {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // tolerate stray blank lines between requests
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_urlencoded(q)),
        None => (target.clone(), Vec::new()),
    };
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY_BYTES {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(Request {
        method,
        path,
        query,
        headers,
        body,
    }))
}

/// Writes a response; returns false when the connection must close afterwards.
async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
    close: bool,
) -> std::io::Result<bool> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    match &resp.delivery {
        Delivery::Whole => w.write_all(&resp.body).await?,
        Delivery::DropAfter(n) => {
            let n = (*n).min(resp.body.len());
            w.write_all(&resp.body[..n]).await?;
            w.flush().await?;
            return Ok(false);
        }
        Delivery::Trickle { chunk, pause } => {
            for part in resp.body.chunks((*chunk).max(1)) {
                w.write_all(part).await?;
                w.flush().await?;
                tokio::time::sleep(*pause).await;
            }
        }
    }
    w.flush().await?;
    Ok(!close)
}

/// Serves one HTTP/1.1 connection (plain TCP or TLS) until the peer closes it
/// or a response ends it.
pub async fn serve_connection<S, F, Fut>(stream: S, handler: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = BufReader::new(r);
    loop {
        let req = match read_request(&mut reader).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(_) => {
                let bad = Response::text(400, "bad request");
                let _ = write_response(&mut w, &bad, true).await;
                return;
            }
        };
        let close = req.wants_close();
        let resp = handler(req).await;
        match write_response(&mut w, &resp, close).await {
            Ok(true) => {}
            _ => {
                let _ = w.shutdown().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings() {
        let q = parse_urlencoded("user_id=1&user_id=2&user_login=a%20b&x=%zz&first=");
        assert_eq!(q[0], ("user_id".into(), "1".into()));
        assert_eq!(q[1], ("user_id".into(), "2".into()));
        assert_eq!(q[2], ("user_login".into(), "a b".into()));
        assert_eq!(q[3], ("x".into(), "%zz".into()));
        assert_eq!(q[4], ("first".into(), "".into()));
        assert_eq!(percent_decode("caf%C3%A9+x"), "café x");
        assert_eq!(percent_decode("trailing%4"), "trailing%4");
    }
}
