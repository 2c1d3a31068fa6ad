//! Real sockets for [`super::session::Shard`]: [`open`] connects one WebSocket
//! (tokio-tungstenite; `wss://` through rustls with bundled web PKI roots) and
//! reports its frames and its end as [`SocketEvent`]s; [`run_shard`] is the
//! driver loop that feeds a `Shard` and carries out its actions (connect,
//! close, PATCH the conduit shard, deliver).
//!
//! The client never sends a data frame: Twitch closes a connection that sends
//! anything but pongs (4001). tungstenite answers the server's pings itself.

use super::helix::{conduit_gone, ShardsUpdate};
use super::message::{parse_message, DropStats, Envelope};
use super::session::{Action, AssignError, Shard, ShardConfig, ShardStats, SocketId};
use crate::client::TwitchClient;
use crate::error::HelixError;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::{
    frame::coding::CloseCode, CloseFrame, WebSocketConfig,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Largest WebSocket message accepted, in bytes (frames beyond the parser's
/// cap are dropped there; this keeps the socket from buffering more).
pub const MAX_WS_MESSAGE_BYTES: usize = 1024 * 1024;
/// Longest time a connect (TCP + TLS + upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a socket closed by the client is still read, for the frames
/// the server sent before it saw the close.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub enum SocketEvent {
    Frame(SocketId, String),
    /// The socket ended: the close code if a close frame came.
    Closed(SocketId, Option<u16>),
    /// The socket never opened: why (it ended like `Closed(id, None)`).
    ConnectFailed(SocketId, String),
}

/// Asks a socket's task to close it (code 1000) and end.
pub struct SocketHandle {
    close: Option<oneshot::Sender<()>>,
}

impl SocketHandle {
    pub fn close(mut self) {
        if let Some(c) = self.close.take() {
            let _ = c.send(());
        }
    }
}

/// Opens `url` in a task of its own; its frames and its end go to `events`.
/// A failed connect is reported as `ConnectFailed` with its reason.
pub fn open(id: SocketId, url: String, events: mpsc::UnboundedSender<SocketEvent>) -> SocketHandle {
    let (close_tx, mut close_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut cfg = WebSocketConfig::default();
        cfg.max_message_size = Some(MAX_WS_MESSAGE_BYTES);
        cfg.max_frame_size = Some(MAX_WS_MESSAGE_BYTES);
        let connect = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(cfg), false);
        let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok((ws, _))) => ws,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                };
                let _ = events.send(SocketEvent::ConnectFailed(
                    id,
                    format!("connecting to {url} failed: {why}"),
                ));
                return;
            }
        };
        let (mut sink, mut stream) = ws.split();
        let code = loop {
            tokio::select! {
                _ = &mut close_rx => {
                    let _ = sink.send(WsMessage::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))).await;
                    // What the server sent before it saw the close is still
                    // delivered (Twitch: the old connection receives events
                    // until the new welcome; a reconnect closes it then):
                    // read until the server's close answers ours (RFC 6455),
                    // for at most CLOSE_DRAIN.
                    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                        while let Some(Ok(msg)) = stream.next().await {
                            match msg {
                                WsMessage::Text(t) => {
                                    let frame = SocketEvent::Frame(id, t.as_str().to_string());
                                    if events.send(frame).is_err() {
                                        return;
                                    }
                                }
                                WsMessage::Close(_) => return,
                                _ => {}
                            }
                        }
                    })
                    .await;
                    return;
                }
                msg = stream.next() => match msg {
                    Some(Ok(WsMessage::Text(t))) => {
                        if events.send(SocketEvent::Frame(id, t.as_str().to_string())).is_err() {
                            return;
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        // sends tungstenite's queued close reply (the closing handshake)
                        let _ = sink.flush().await;
                        break frame.map(|f| u16::from(f.code));
                    }
                    // pings are answered by tungstenite on the next read or write;
                    // flushing here sends the pong now
                    Some(Ok(WsMessage::Ping(_))) => { let _ = sink.flush().await; }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            }
        };
        let _ = events.send(SocketEvent::Closed(id, code));
    });
    SocketHandle {
        close: Some(close_tx),
    }
}

/// What [`run_shard`] needs to know.
pub struct ShardParams {
    pub config: ShardConfig,
    pub conduit_id: String,
    pub shard_id: String,
    pub seed: u64,
}

/// What a running shard shows (for status, and for tests).
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    pub connected: bool,
    pub session_id: Option<String>,
    pub stats: ShardStats,
    pub drops: DropStats,
    pub last_assign_error: Option<String>,
    /// Why the last WebSocket connection could not be opened (cleared by the
    /// next frame that arrives).
    pub last_connect_error: Option<String>,
    /// Shard assignments Twitch refused with 401: each asks the token's owner
    /// (who holds the sender of [`run_shard_with_token`]'s token) for a new
    /// token; the background worker mints one when this grows.
    pub token_refused: u64,
    /// Twitch answered 404 to a shard assignment: the conduit is gone
    /// ([`super::helix::conduit_gone`]). Every later assignment fails alike,
    /// so the shard's owner stops it and starts again with a new conduit
    /// (the background worker does).
    pub conduit_gone: bool,
}

/// The outcome of one PATCH for one shard, as the state machine wants it.
pub fn assign_result(
    r: Result<ShardsUpdate, HelixError>,
    shard_id: &str,
) -> Result<(), AssignError> {
    match r {
        Ok(u) => u.shard(shard_id).map_err(AssignError::Permanent),
        Err(e @ HelixError::RateLimited { .. }) => Err(AssignError::Transient(e.to_string())),
        Err(e) if e.is_transient() => Err(AssignError::Transient(e.to_string())),
        Err(e) => Err(AssignError::Permanent(e.to_string())),
    }
}

/// One text frame from `socket`: parsed and handed to the shard, or dropped
/// and counted. Either way it restarts the keepalive timer
/// ([`Shard::on_frame`]; [`Shard::on_message`] does it for a parsed one).
fn on_frame(
    shard: &mut Shard,
    drops: &mut DropStats,
    socket: SocketId,
    text: &str,
    now: Instant,
) -> Vec<Action> {
    match parse_message(text) {
        Ok(env) => shard.on_message(socket, env, now),
        Err(r) => {
            shard.on_frame(socket, now);
            drops.count(r);
            Vec::new()
        }
    }
}

/// The token to retry a refused (401) assignment with, once: a token that
/// already replaced `used` is taken at once; otherwise the owner is asked
/// ([`ShardView::token_refused`]) and its new token awaited for at most
/// `wait` (the state machine drops the socket at the assignment deadline
/// anyway). None when no new token can come (the sender is gone: a fixed
/// token) or none came in time; the 401 then stands.
async fn renewed_token(
    token: &mut watch::Receiver<String>,
    used: &str,
    view: &Mutex<ShardView>,
    wait: Duration,
) -> Option<String> {
    if token.borrow().as_str() != used {
        return Some(token.borrow_and_update().clone());
    }
    if token.has_changed().is_err() {
        return None;
    }
    view.lock().unwrap_or_else(|e| e.into_inner()).token_refused += 1;
    match tokio::time::timeout(wait, token.changed()).await {
        Ok(Ok(())) => Some(token.borrow_and_update().clone()),
        _ => None,
    }
}

/// Runs one conduit shard until `stop` fires: connects, assigns, follows
/// reconnects, and sends every notification or revocation to `deliver`
/// (admission — dedup, freshness, order — is the receiver's job).
pub async fn run_shard(
    params: ShardParams,
    client: Arc<TwitchClient>,
    token: String,
    deliver: mpsc::UnboundedSender<Envelope>,
    view: Arc<Mutex<ShardView>>,
    stop: oneshot::Receiver<()>,
) {
    // the sender goes at once: nobody renews a fixed token, so a 401 on the
    // assignment fails it without waiting for a new one
    let (_, token) = watch::channel(token);
    run_shard_with_token(params, client, token, deliver, view, stop).await;
}

/// [`run_shard`] with a token that can change while it runs (the
/// background worker mints a new one when Twitch refuses the old one): each
/// assignment uses the latest. A 401 on the assignment renews the token once
/// and retries with it ([`renewed_token`]), within the 10 s Twitch gives a
/// welcomed session: otherwise the socket would be dropped and every new
/// one refused alike until some other call got a 401. A 404 on the
/// assignment (the conduit is gone) sets [`ShardView::conduit_gone`]: no new
/// session can help, only a new conduit.
pub async fn run_shard_with_token(
    params: ShardParams,
    client: Arc<TwitchClient>,
    token: watch::Receiver<String>,
    deliver: mpsc::UnboundedSender<Envelope>,
    view: Arc<Mutex<ShardView>>,
    mut stop: oneshot::Receiver<()>,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<SocketEvent>();
    let (as_tx, mut as_rx) = mpsc::unbounded_channel::<(String, Result<(), AssignError>)>();
    let mut shard = Shard::new(params.config.clone(), params.seed, Instant::now());
    let mut sockets: HashMap<SocketId, SocketHandle> = HashMap::new();
    let mut drops = DropStats::default();
    let mut last_assign_error = None;
    let mut last_connect_error = None;
    let mut actions = shard.on_timer(Instant::now());
    loop {
        for a in actions.drain(..) {
            match a {
                Action::Connect { socket, url } => {
                    sockets.insert(socket, open(socket, url, ev_tx.clone()));
                }
                Action::Close { socket, .. } => {
                    if let Some(h) = sockets.remove(&socket) {
                        h.close();
                    }
                }
                Action::Assign { session_id } => {
                    let (client, mut token, tx, view) =
                        (client.clone(), token.clone(), as_tx.clone(), view.clone());
                    let (conduit, shard_id) = (params.conduit_id.clone(), params.shard_id.clone());
                    let wait = params.config.assign_deadline;
                    tokio::spawn(async move {
                        let pair = vec![(shard_id.clone(), session_id.clone())];
                        let used = token.borrow_and_update().clone();
                        let (mut r, _) = client.update_conduit_shards(&used, &conduit, &pair).await;
                        if matches!(r, Err(HelixError::Unauthorized { .. })) {
                            if let Some(fresh) = renewed_token(&mut token, &used, &view, wait).await
                            {
                                r = client
                                    .update_conduit_shards(&fresh, &conduit, &pair)
                                    .await
                                    .0;
                            }
                        }
                        if r.as_ref().is_err_and(conduit_gone) {
                            view.lock().unwrap_or_else(|e| e.into_inner()).conduit_gone = true;
                        }
                        let _ = tx.send((session_id, assign_result(r, &shard_id)));
                    });
                }
                Action::Deliver(env) => {
                    let _ = deliver.send(*env);
                }
            }
        }
        {
            let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
            v.connected = shard.is_connected();
            v.session_id = shard.assigned_session().map(str::to_string);
            v.stats = shard.stats.clone();
            v.drops = drops;
            v.last_assign_error.clone_from(&last_assign_error);
            v.last_connect_error.clone_from(&last_connect_error);
        }
        let wake = shard
            .next_wakeup()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = &mut stop => {
                for (_, h) in sockets.drain() {
                    h.close();
                }
                return;
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                actions = shard.on_timer(Instant::now());
            }
            Some(ev) = ev_rx.recv() => {
                actions = match ev {
                    SocketEvent::Frame(id, text) => {
                        last_connect_error = None;
                        on_frame(&mut shard, &mut drops, id, &text, Instant::now())
                    }
                    SocketEvent::Closed(id, code) => {
                        sockets.remove(&id);
                        shard.on_closed(id, code, Instant::now())
                    }
                    SocketEvent::ConnectFailed(id, why) => {
                        last_connect_error = Some(why);
                        sockets.remove(&id);
                        shard.on_closed(id, None, Instant::now())
                    }
                };
            }
            Some((session, result)) = as_rx.recv() => {
                if let Err(AssignError::Transient(e) | AssignError::Permanent(e)) = &result {
                    last_assign_error = Some(e.clone());
                }
                actions = shard.on_assigned(&session, result, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventsub::message::{Message, SessionInfo};

    /// A shard welcomed as `s1` (keepalive 10 s) and assigned at `t0`, and its socket.
    fn assigned(t0: Instant) -> (Shard, SocketId) {
        let cfg = ShardConfig {
            base_url: "ws://127.0.0.1:1/ws".into(),
            ..ShardConfig::default()
        };
        let mut sh = Shard::new(cfg, 7, t0);
        let sock = match sh.on_timer(t0).as_slice() {
            [Action::Connect { socket, .. }] => *socket,
            a => panic!("{a:?}"),
        };
        let welcome = Envelope {
            message_id: "m".into(),
            message_timestamp: 0,
            message: Message::Welcome(SessionInfo {
                id: "s1".into(),
                keepalive_timeout_seconds: Some(10),
                reconnect_url: None,
                connected_at: None,
            }),
        };
        sh.on_message(sock, welcome, t0);
        sh.on_assigned("s1", Ok(()), t0);
        assert!(sh.is_connected());
        (sh, sock)
    }

    /// A socket the client closes (a reconnect's old one) still delivers
    /// what the server sent before it saw the close. (It stopped reading at
    /// once: a notification in flight was lost.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_socket_delivers_what_was_sent_before_the_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(WsMessage::text("welcome")).await.unwrap();
            // the client closes meanwhile; the server has not read that yet
            // and sends what it had on its way, then answers the close
            tokio::time::sleep(Duration::from_millis(300)).await;
            ws.send(WsMessage::text("in flight")).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = open(1, url, tx);
        match rx.recv().await {
            Some(SocketEvent::Frame(1, f)) => assert_eq!(f, "welcome"),
            e => panic!("{e:?}"),
        }
        handle.close();
        let next = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        match next {
            Ok(Some(SocketEvent::Frame(1, f))) => assert_eq!(f, "in flight"),
            e => panic!("the frame sent before the close was lost: {e:?}"),
        }
        server.await.unwrap();
    }

    #[test]
    fn a_dropped_frame_still_resets_the_keepalive_timer() {
        let t0 = Instant::now();
        let (mut sh, sock) = assigned(t0);
        let before = sh.next_wakeup().expect("a keepalive deadline");
        let mut drops = DropStats::default();
        // Twitch sent something, so it had no reason to send a keepalive: the
        // connection is alive even if the client cannot use what came.
        let other_type = r#"{"metadata":{"message_id":"m2","message_type":"notification","message_timestamp":"2026-01-01T00:00:00Z","subscription_type":"channel.update","subscription_version":"2"},"payload":{}}"#;
        let too_large = "x".repeat(super::super::message::MAX_FRAME_BYTES + 1);
        let t = t0 + Duration::from_secs(9);
        for frame in [other_type, "not json", too_large.as_str()] {
            assert!(on_frame(&mut sh, &mut drops, sock, frame, t).is_empty());
        }
        assert_eq!(
            (drops.unsupported, drops.malformed, drops.too_large),
            (1, 1, 1)
        );
        assert_eq!(sh.next_wakeup(), Some(before + Duration::from_secs(9)));
        assert!(sh.on_timer(before).is_empty(), "no keepalive timeout");
        assert!(sh.is_connected());
    }
}
