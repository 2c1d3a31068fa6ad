//! HTTP/2 connections (negotiated by ALPN over TLS), served by hyper. The
//! handler and its [`Response`]s are the same as for HTTP/1.1: only the framing
//! differs. Delivery faults map onto HTTP/2 as a client sees them there: a body
//! cut short ends in RST_STREAM, a trickled body arrives in DATA frames spaced
//! in time.

use crate::http::{parse_urlencoded, Delivery, Request, Response};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A response body: whole, or fed by a task (trickled or cut short).
pub enum SimBody {
    Whole(Option<Bytes>),
    Fed(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            SimBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Fed(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Whole(None) => SizeHint::with_exact(0),
            SimBody::Fed(_) => SizeHint::default(),
        }
    }
}

async fn into_request(req: hyper::Request<Incoming>) -> Result<Request, ()> {
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| ())?
        .to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Request::new(
        parts.method.as_str().to_string(),
        parts.uri.path().to_string(),
        parse_urlencoded(parts.uri.query().unwrap_or("")),
        headers,
        body.to_vec(),
    ))
}

fn into_response(resp: Response) -> hyper::Response<SimBody> {
    let mut builder = hyper::Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    // The full length, also when the body is then cut short (as on HTTP/1.1).
    builder = builder.header("content-length", resp.body.len().to_string());
    let body = match resp.delivery {
        Delivery::Whole => SimBody::Whole(Some(Bytes::from(resp.body))),
        Delivery::DropAfter(n) => {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let part = Bytes::copy_from_slice(&resp.body[..n.min(resp.body.len())]);
            tokio::spawn(async move {
                let _ = tx.send(Ok(part)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("dropped mid-body")))
                    .await;
            });
            SimBody::Fed(rx)
        }
        Delivery::Trickle { chunk, pause } => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let body = resp.body;
            tokio::spawn(async move {
                for part in body.chunks(chunk.max(1)) {
                    if tx.send(Ok(Bytes::copy_from_slice(part))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
            SimBody::Fed(rx)
        }
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = hyper::Response::new(SimBody::Whole(Some(Bytes::from_static(b"bad header"))));
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Serves one HTTP/2 connection until the client closes it.
pub async fn serve_connection<IO, F, Fut>(io: IO, max_streams: u32, handler: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let resp = match into_request(req).await {
                Ok(req) => handler(req).await,
                Err(()) => Response::text(400, "bad request"),
            };
            Ok::<_, Infallible>(into_response(resp))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(max_streams)
        .serve_connection(TokioIo::new(io), service)
        .await;
}
