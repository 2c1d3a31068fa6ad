//! EventSub over real sockets on 127.0.0.1: the core's Helix client, socket
//! driver, state machine and admission against the simulator's EventSub
//! WebSocket server and conduit/subscription endpoints. No database.

use helix_sim::eventsub::{EsFault, EventSubConfig};
use helix_sim::world::WorldConfig;
use helix_sim::{Config, Simulator};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use twitch_sync_core::client::TwitchClient;
use twitch_sync_core::eventsub::dedup::{Admission, Verdict};
use twitch_sync_core::eventsub::helix::{conduit_gone, CreateOutcome, SubscriptionFilter};
use twitch_sync_core::eventsub::message::{Envelope, Message, StreamEvent};
use twitch_sync_core::eventsub::now_micros;
use twitch_sync_core::eventsub::session::ShardConfig;
use twitch_sync_core::eventsub::socket::{run_shard, run_shard_with_token, ShardParams, ShardView};
use twitch_sync_core::{HelixError, SyncConfig};

struct Rig {
    sim: Simulator,
    client: Arc<TwitchClient>,
    token: String,
    rt: tokio::runtime::Runtime,
}

fn rig(es: EventSubConfig) -> Rig {
    let sim = Simulator::start(Config {
        world: WorldConfig {
            channels: 20,
            live_fraction: 0.0,
            ..Default::default()
        },
        ..Config::default()
    })
    .unwrap();
    sim.start_eventsub(es).unwrap();
    let cfg = SyncConfig {
        helix_url: sim.helix_url(),
        auth_url: sim.auth_url(),
        ..SyncConfig::default()
    };
    let client = Arc::new(TwitchClient::new(&cfg, &sim.client_id()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = rt
        .block_on(client.mint_token(&sim.client_secret()))
        .unwrap()
        .access_token;
    Rig {
        sim,
        client,
        token,
        rt,
    }
}

fn fast() -> EventSubConfig {
    EventSubConfig {
        ping_every: Some(Duration::from_millis(500)),
        ..EventSubConfig::default()
    }
}

fn channel(sim: &Simulator, i: usize) -> String {
    sim.world(|w| w.channels[i].id.clone())
}

/// A running shard: its deliveries, its view, and the switch to stop it.
struct Running {
    rx: mpsc::UnboundedReceiver<Envelope>,
    view: Arc<Mutex<ShardView>>,
    stop: Option<oneshot::Sender<()>>,
    conduit: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Rig {
    /// A conduit with one shard, online and offline subscriptions for
    /// `channels`, and a shard running against the simulator.
    fn run(&self, channels: &[String], keepalive: u32) -> Running {
        self.run_with(channels, keepalive, None)
    }

    /// [`Rig::run`], with a token its owner can replace when `token` is given.
    fn run_with(
        &self,
        channels: &[String],
        keepalive: u32,
        token: Option<watch::Receiver<String>>,
    ) -> Running {
        let conduit = self
            .rt
            .block_on(self.client.create_conduit(&self.token, 1))
            .0
            .unwrap();
        for b in channels {
            for kind in ["stream.online", "stream.offline"] {
                let r = self
                    .rt
                    .block_on(
                        self.client
                            .create_subscription(&self.token, kind, b, &conduit.id),
                    )
                    .0
                    .unwrap();
                assert!(matches!(r, CreateOutcome::Created { .. }), "{r:?}");
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let view = Arc::new(Mutex::new(ShardView::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let params = ShardParams {
            config: ShardConfig {
                base_url: self.sim.eventsub_url().unwrap(),
                keepalive_seconds: keepalive,
                ..ShardConfig::default()
            },
            conduit_id: conduit.id.clone(),
            shard_id: "0".into(),
            seed: 1,
        };
        let client = self.client.clone();
        match token {
            None => self.rt.spawn(run_shard(
                params,
                client,
                self.token.clone(),
                tx,
                view.clone(),
                stop_rx,
            )),
            Some(t) => self.rt.spawn(run_shard_with_token(
                params,
                client,
                t,
                tx,
                view.clone(),
                stop_rx,
            )),
        };
        let r = Running {
            rx,
            view,
            stop: Some(stop_tx),
            conduit: conduit.id,
        };
        r.wait(Duration::from_secs(5), |v| v.connected);
        r
    }
}

impl Running {
    fn wait(&self, limit: Duration, f: impl Fn(&ShardView) -> bool) -> ShardView {
        let t = Instant::now();
        loop {
            let v = self.view.lock().unwrap().clone();
            if f(&v) {
                return v;
            }
            assert!(t.elapsed() < limit, "condition not met in {limit:?}: {v:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn next(&mut self, rt: &tokio::runtime::Runtime, limit: Duration) -> Option<Envelope> {
        rt.block_on(async {
            tokio::time::timeout(limit, self.rx.recv())
                .await
                .ok()
                .flatten()
        })
    }

    fn event(&mut self, rt: &tokio::runtime::Runtime) -> StreamEvent {
        match self.next(rt, Duration::from_secs(5)).map(|e| e.message) {
            Some(Message::Notification(n)) => n.event,
            other => panic!("expected a notification, got {other:?}"),
        }
    }
}

#[test]
fn online_and_offline_arrive_on_the_assigned_shard() {
    let r = rig(fast());
    let b = channel(&r.sim, 3);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let shards = r.sim.es_shards(&run.conduit);
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].1, "enabled");
    assert_eq!(shards[0].0, run.view.lock().unwrap().session_id);

    r.sim.world(|w| w.go_live(&b));
    let stream_id = r.sim.world(|w| w.stream_of(&b).unwrap().id.clone());
    match run.event(&r.rt) {
        StreamEvent::Online {
            broadcaster_id,
            stream_id: s,
            login,
            started_at,
            stream_type,
        } => {
            assert_eq!(broadcaster_id, b);
            assert_eq!(s, stream_id);
            assert_eq!(login.as_deref(), Some("sim_channel_3"));
            assert!(started_at.is_some());
            assert_eq!(stream_type, "live");
        }
        e => panic!("{e:?}"),
    }
    r.sim.world(|w| w.go_offline(&b));
    assert_eq!(
        run.event(&r.rt),
        StreamEvent::Offline {
            broadcaster_id: b.clone(),
            login: Some("sim_channel_3".into()),
            stream_id: Some(stream_id)
        }
    );
    // a channel without subscriptions sends nothing
    let other = channel(&r.sim, 4);
    r.sim.world(|w| w.go_live(&other));
    assert!(run.next(&r.rt, Duration::from_millis(300)).is_none());
    assert_eq!(run.view.lock().unwrap().drops.total(), 0);
}

#[test]
fn keepalives_keep_an_idle_session_alive() {
    let r = rig(fast());
    let run = r.run(&[channel(&r.sim, 1)], 10);
    std::thread::sleep(Duration::from_millis(11_500));
    let v = run.view.lock().unwrap().clone();
    assert!(v.connected, "{v:?}");
    assert_eq!(v.stats.keepalive_timeouts, 0);
    assert_eq!(v.stats.connects, 1);
    assert!(r.sim.es_counters().keepalives >= 1);
}

#[test]
fn silence_is_a_lost_connection_and_the_shard_is_reassigned() {
    let r = rig(fast());
    let b = channel(&r.sim, 2);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let first = run.view.lock().unwrap().session_id.clone();
    r.sim.es_fault(EsFault::Silence(true));
    let t = Instant::now();
    let v = run.wait(Duration::from_secs(15), |v| v.stats.keepalive_timeouts == 1);
    assert!(v.stats.connects >= 2);
    r.sim.es_fault(EsFault::Silence(false));
    let v = run.wait(Duration::from_secs(5), |v| {
        v.connected && v.session_id != first && v.stats.assigned == 2
    });
    // keepalive (10 s) + slack (2 s, a fifth) + a reconnect and a PATCH on loopback
    assert!(
        t.elapsed() < Duration::from_secs(14),
        "{:?} {v:?}",
        t.elapsed()
    );
    r.sim.world(|w| w.go_live(&b));
    assert!(matches!(run.event(&r.rt), StreamEvent::Online { .. }));
}

#[test]
fn a_401_on_the_assignment_renews_the_token_and_retries_on_the_same_socket() {
    let r = rig(fast());
    let b = channel(&r.sim, 7);
    let (token_tx, token_rx) = watch::channel(r.token.clone());
    let mut run = r.run_with(std::slice::from_ref(&b), 10, Some(token_rx));
    let first = run.view.lock().unwrap().session_id.clone();
    // Twitch stops accepting the token; the next assignment (of the new
    // session after a drop) is refused with 401
    r.sim.expire_tokens();
    r.sim.es_fault(EsFault::DropSockets);
    // the token's owner (the background worker) mints a new one when asked
    run.wait(Duration::from_secs(5), |v| v.token_refused == 1);
    let fresh =
        r.rt.block_on(r.client.mint_token(&r.sim.client_secret()))
            .unwrap()
            .access_token;
    token_tx.send(fresh).unwrap();
    let v = run.wait(Duration::from_secs(5), |v| {
        v.connected && v.session_id != first
    });
    assert_eq!(v.stats.connects, 2, "retried on the same socket: {v:?}");
    assert_eq!(v.stats.assign_failures, 0, "{v:?}");
    assert_eq!(v.stats.assigned, 2, "{v:?}");
    assert_eq!(v.token_refused, 1, "{v:?}");
    assert_eq!(v.last_assign_error, None, "{v:?}");
    assert_eq!(r.sim.es_shards(&run.conduit)[0].1, "enabled");
    r.sim.world(|w| w.go_live(&b));
    assert!(matches!(run.event(&r.rt), StreamEvent::Online { .. }));
}

#[test]
fn a_401_with_a_token_nobody_renews_drops_the_socket_at_once() {
    let r = rig(fast());
    let b = channel(&r.sim, 8);
    let run = r.run(std::slice::from_ref(&b), 10);
    r.sim.expire_tokens();
    r.sim.es_fault(EsFault::DropSockets);
    // run_shard's token is fixed: no wait for a new one, the assignment fails
    let v = run.wait(Duration::from_secs(2), |v| v.stats.assign_failures >= 1);
    assert_eq!(v.token_refused, 0, "{v:?}");
    assert!(
        v.last_assign_error
            .as_deref()
            .is_some_and(|e| e.contains("401")),
        "{v:?}"
    );
}

#[test]
fn dropped_socket_and_close_codes_lead_to_a_new_assigned_session() {
    let r = rig(fast());
    let b = channel(&r.sim, 5);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let mut sessions = vec![run.view.lock().unwrap().session_id.clone().unwrap()];
    for (k, fault) in [
        EsFault::DropSockets,
        EsFault::CloseSockets(4000),
        EsFault::CloseSockets(4005),
        EsFault::CloseSockets(4006),
    ]
    .into_iter()
    .enumerate()
    {
        r.sim.es_fault(fault.clone());
        let v = run.wait(Duration::from_secs(10), |v| {
            v.connected && v.stats.assigned == k as u64 + 2
        });
        let s = v.session_id.unwrap();
        assert!(!sessions.contains(&s), "{fault:?}: a new session");
        sessions.push(s);
        assert_eq!(r.sim.es_shards(&run.conduit)[0].1, "enabled");
    }
    let v = run.view.lock().unwrap().clone();
    assert_eq!(v.stats.closes.get("none"), Some(&1), "{v:?}");
    for c in ["4000", "4005", "4006"] {
        assert_eq!(v.stats.closes.get(c), Some(&1), "{c}: {v:?}");
    }
    r.sim.world(|w| w.go_live(&b));
    assert!(matches!(run.event(&r.rt), StreamEvent::Online { .. }));
}

#[test]
fn reconnect_keeps_the_session_and_loses_nothing() {
    let r = rig(fast());
    let b = channel(&r.sim, 6);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let session = run.view.lock().unwrap().session_id.clone();
    assert_eq!(r.sim.es_reconnect(), 1);
    let v = run.wait(Duration::from_secs(5), |v| {
        v.stats.reconnects == 1 && v.connected
    });
    assert_eq!(v.session_id, session, "Twitch keeps the session id");
    assert_eq!(
        v.stats.assigned, 1,
        "the same session needs no new assignment"
    );
    r.sim.world(|w| w.go_live(&b));
    assert!(matches!(run.event(&r.rt), StreamEvent::Online { .. }));
    // the old socket was closed by the client: no 4004 from the server
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.sim.es_counters().closes.get(&4004), None);
    // a storm: reconnect after reconnect
    for _ in 0..5 {
        r.sim.es_reconnect();
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = run.wait(Duration::from_secs(5), |v| {
        v.stats.reconnects >= 2 && v.connected
    });
    assert_eq!(v.session_id, session);
    r.sim.world(|w| w.go_offline(&b));
    assert!(matches!(run.event(&r.rt), StreamEvent::Offline { .. }));
}

#[test]
fn an_unassigned_session_is_closed_with_4003() {
    let r = rig(EventSubConfig {
        assign_deadline: Duration::from_millis(500),
        ..fast()
    });
    let url = r.sim.eventsub_url().unwrap();
    let code = r.rt.block_on(async {
        use futures_util::StreamExt;
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let mut code = None;
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
                break;
            }
        }
        code
    });
    assert_eq!(code, Some(4003));
}

#[test]
fn an_invalid_reconnect_url_is_closed_with_4007_and_inbound_text_with_4001() {
    let r = rig(fast());
    let url = r.sim.eventsub_url().unwrap();
    let (c1, c2) = r.rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as M;
        async fn close_code(
            ws: &mut tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
        ) -> Option<u16> {
            while let Some(Ok(m)) = ws.next().await {
                if let M::Close(f) = m {
                    return f.map(|f| u16::from(f.code));
                }
            }
            None
        }
        let (mut a, _) = tokio_tungstenite::connect_async(format!("{url}?reconnect=nope"))
            .await
            .unwrap();
        let c1 = close_code(&mut a).await;
        let (mut b, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        b.send(M::Text("hello".into())).await.unwrap();
        let c2 = close_code(&mut b).await;
        (c1, c2)
    });
    assert_eq!(c1, Some(4007));
    assert_eq!(c2, Some(4001));
}

#[test]
fn duplicates_and_out_of_order_events_are_caught_by_admission() {
    let r = rig(fast());
    let b = channel(&r.sim, 7);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let mut adm = Admission::default();
    let mut judge = |e: Envelope| match &e.message {
        Message::Notification(n) => {
            adm.admit(&e.message_id, e.message_timestamp, &n.event, now_micros())
        }
        m => panic!("{m:?}"),
    };
    r.sim.es_fault(EsFault::DuplicateSameId(1));
    r.sim.world(|w| w.go_live(&b));
    let e1 = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    let e2 = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    assert_eq!(e1.message_id, e2.message_id);
    assert_eq!(judge(e1), Verdict::New);
    assert_eq!(judge(e2), Verdict::Duplicate);

    r.sim.es_fault(EsFault::DuplicateNewId(1));
    r.sim.world(|w| w.go_offline(&b));
    let e1 = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    let e2 = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    assert_ne!(e1.message_id, e2.message_id);
    assert_eq!(judge(e1), Verdict::New);
    assert_eq!(
        judge(e2),
        Verdict::Duplicate,
        "same event, another message id"
    );

    // a restart (offline of the old broadcast, online of the new) delivered newest first
    r.sim.world(|w| w.go_live(&b));
    assert_eq!(
        judge(run.next(&r.rt, Duration::from_secs(5)).unwrap()),
        Verdict::New
    );
    std::thread::sleep(Duration::from_millis(5));
    r.sim.es_fault(EsFault::Reorder(1));
    r.sim.world(|w| w.restart(&b));
    let first = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    let second = run.next(&r.rt, Duration::from_secs(5)).unwrap();
    let Message::Notification(n) = &first.message else {
        panic!()
    };
    assert!(
        matches!(n.event, StreamEvent::Online { .. }),
        "newest first"
    );
    assert_eq!(judge(first), Verdict::New);
    assert_eq!(judge(second), Verdict::OutOfOrder);
}

#[test]
fn revocations_are_delivered_and_garbage_is_counted() {
    let r = rig(fast());
    let b = channel(&r.sim, 8);
    let mut run = r.run(std::slice::from_ref(&b), 10);
    let (sub_id, ..) = r.sim.es_subscriptions().into_iter().next().unwrap();
    assert!(r.sim.es_revoke(&sub_id, "authorization_revoked"));
    match run.next(&r.rt, Duration::from_secs(5)).map(|e| e.message) {
        Some(Message::Revocation(s)) => {
            assert_eq!(s.id, sub_id);
            assert_eq!(s.status, "authorization_revoked");
            assert_eq!(s.broadcaster_id, b);
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(r.sim.es_send_raw("{not json"), 1);
    assert_eq!(r.sim.es_send_raw(r#"{"metadata":{"message_id":"x","message_type":"notification","message_timestamp":"2026-11-20T00:00:00Z","subscription_type":"channel.update","subscription_version":"1"},"payload":{}}"#), 1);
    let v = run.wait(Duration::from_secs(5), |v| v.drops.total() == 2);
    assert_eq!(v.drops.malformed, 1);
    assert_eq!(v.drops.unsupported, 1);
    assert!(v.connected, "garbage does not end the session");
}

#[test]
fn subscription_rules_409_429_costs_and_listing() {
    let r = rig(fast());
    let c = &r.client;
    let t = &r.token;
    let conduit = r.rt.block_on(c.create_conduit(t, 2)).0.unwrap();
    assert_eq!(conduit.shard_count, 2);
    let ids: Vec<String> = (0..6).map(|i| channel(&r.sim, i)).collect();
    let create = |kind: &str, b: &str| {
        r.rt.block_on(c.create_subscription(t, kind, b, &conduit.id))
            .0
    };
    match create("stream.online", &ids[0]).unwrap() {
        CreateOutcome::Created {
            subscription,
            budget,
        } => {
            assert_eq!(subscription.status, "enabled");
            assert_eq!(subscription.cost, 1);
            assert_eq!(
                subscription.conduit_id.as_deref(),
                Some(conduit.id.as_str())
            );
            assert_eq!((budget.total_cost, budget.max_total_cost), (1, 10_000));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(
        create("stream.online", &ids[0]).unwrap(),
        CreateOutcome::AlreadyExists
    );
    // an authorised broadcaster costs nothing
    r.sim.es_authorize(&ids[1]);
    match create("stream.online", &ids[1]).unwrap() {
        CreateOutcome::Created { budget, .. } => assert_eq!(budget.total_cost, 1),
        o => panic!("{o:?}"),
    }
    // the budget is read from answers: a limit of 3 leaves room for 2 more
    r.sim.es_set_max_total_cost(3);
    assert!(create("stream.offline", &ids[0]).is_ok());
    match create("stream.offline", &ids[2]).unwrap() {
        CreateOutcome::Created { budget, .. } => assert_eq!(budget.remaining(), 0),
        o => panic!("{o:?}"),
    }
    match create("stream.online", &ids[3]) {
        Err(HelixError::Status { status: 429, .. }) => {}
        o => panic!("a full budget is a 429 that is not the bucket: {o:?}"),
    }
    // an unknown broadcaster, a bad conduit: 400
    assert!(matches!(
        create("stream.online", "999999999999"),
        Err(HelixError::Status { status: 400, .. })
    ));
    assert!(matches!(
        r.rt.block_on(c.create_subscription(t, "stream.online", &ids[4], "nope"))
            .0,
        Err(HelixError::Status { status: 400, .. })
    ));
    // listing, filter and pages
    let page =
        r.rt.block_on(c.get_subscriptions(t, &SubscriptionFilter::None, None))
            .0
            .unwrap();
    assert_eq!(page.subscriptions.len(), 4);
    assert_eq!(page.budget.total_cost, 3);
    assert_eq!(page.budget.max_total_cost, 3);
    assert_eq!(page.cursor, None);
    let by_user =
        r.rt.block_on(c.get_subscriptions(t, &SubscriptionFilter::UserId(ids[0].clone()), None))
            .0
            .unwrap();
    assert_eq!(by_user.subscriptions.len(), 2);
    // delete: 204 then 404
    let id = by_user.subscriptions[0].id.clone();
    assert_eq!(r.rt.block_on(c.delete_subscription(t, &id)).0, Ok(true));
    assert_eq!(r.rt.block_on(c.delete_subscription(t, &id)).0, Ok(false));
    // the bucket: a 429 with no points left is RateLimited, with the headers
    r.sim.drain_bucket(&r.sim.client_id());
    match create("stream.online", &ids[5]) {
        Err(HelixError::RateLimited {
            snapshot: Some(s), ..
        }) => assert_eq!(s.remaining, 0),
        o => panic!("{o:?}"),
    }
}

/// A 409 is looked up on every page of the broadcaster's subscriptions, not
/// only the first: Twitch documents no page size for the listing. (With one
/// subscription a page, the offline one was not found, and the channel was
/// held back as "on another transport".)
#[test]
fn a_409_is_found_on_a_later_page_of_the_listing() {
    use twitch_sync_core::eventsub::reconcile::{execute, Change, Outcome};
    let r = rig(fast());
    let (c, t) = (&r.client, &r.token);
    let conduit = r.rt.block_on(c.create_conduit(t, 1)).0.unwrap();
    let id = channel(&r.sim, 0);
    for kind in ["stream.online", "stream.offline"] {
        let created =
            r.rt.block_on(c.create_subscription(t, kind, &id, &conduit.id))
                .0;
        assert!(
            matches!(created, Ok(CreateOutcome::Created { .. })),
            "{created:?}"
        );
    }
    r.sim.es_set_subscriptions_page_size(1);
    let changes = vec![Change::Create {
        broadcaster_id: id.clone(),
        kind: "stream.offline",
    }];
    let res = r.rt.block_on(execute(c, t, &conduit.id, changes, None));
    match res.outcomes.as_slice() {
        [Outcome::Created(s)] => {
            assert_eq!(
                (s.kind.as_str(), s.broadcaster_id.as_str()),
                ("stream.offline", id.as_str())
            )
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(res.requests, 3, "the create, then two pages");
}

#[test]
fn shard_update_errors_come_back_inside_the_202() {
    let r = rig(fast());
    let (c, t) = (&r.client, &r.token);
    let conduit = r.rt.block_on(c.create_conduit(t, 1)).0.unwrap();
    let u =
        r.rt.block_on(c.update_conduit_shards(
            t,
            &conduit.id,
            &[
                ("0".into(), "no-such-session".into()),
                ("3".into(), "no-such-session".into()),
            ],
        ))
        .0
        .unwrap();
    assert!(u.updated.is_empty());
    assert!(u
        .shard("0")
        .unwrap_err()
        .contains("The websocket session is not connected."));
    assert!(u
        .shard("3")
        .unwrap_err()
        .contains("outside of the conduit's range"));
    let listed = r.rt.block_on(c.get_conduits(t)).0.unwrap();
    assert_eq!(listed, vec![conduit.clone()]);
    // a sixth conduit is refused (five per client id)
    for _ in 0..4 {
        r.rt.block_on(c.create_conduit(t, 1)).0.unwrap();
    }
    assert!(matches!(
        r.rt.block_on(c.create_conduit(t, 1)).0,
        Err(HelixError::Status { status: 429, .. })
    ));
    assert!(matches!(
        r.rt.block_on(c.update_conduit_shards(t, "missing", &[("0".into(), "s".into())]))
            .0,
        Err(HelixError::Status { status: 404, .. })
    ));
}

#[test]
fn a_deleted_conduit_answers_404_and_the_shard_reports_it_gone() {
    let r = rig(fast());
    let b = channel(&r.sim, 9);
    let run = r.run(std::slice::from_ref(&b), 10);
    assert!(!run.view.lock().unwrap().conduit_gone);
    // deleted at Twitch (Delete Conduit, or 72 h with every shard disabled):
    // its subscriptions are disabled with it
    assert!(r.sim.es_delete_conduit(&run.conduit));
    let subs = r.sim.es_subscriptions();
    assert_eq!(subs.len(), 2);
    assert!(subs.iter().all(|s| s.3 == "conduit_deleted"), "{subs:?}");
    // Get Conduit Shards answers 404: the conduit is gone, not a passing failure
    let e =
        r.rt.block_on(r.client.get_conduit_shards(&r.token, &run.conduit))
            .0
            .unwrap_err();
    assert!(conduit_gone(&e), "{e:?}");
    // the socket stays open; once it drops, the new session's assignment
    // answers 404 and the shard says the conduit is gone
    r.sim.es_fault(EsFault::DropSockets);
    let v = run.wait(Duration::from_secs(5), |v| v.conduit_gone);
    assert!(!v.connected, "{v:?}");
    assert!(
        v.last_assign_error
            .as_deref()
            .is_some_and(|e| e.contains("404")),
        "{v:?}"
    );
    // a new conduit works as the first did
    let mut run2 = r.run(std::slice::from_ref(&b), 10);
    assert!(!run2.view.lock().unwrap().conduit_gone);
    r.sim.world(|w| w.go_live(&b));
    assert!(matches!(run2.event(&r.rt), StreamEvent::Online { .. }));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads frames until a close frame; returns its code, and the texts seen before it.
async fn until_close(ws: &mut Ws) -> (Option<u16>, Vec<String>) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let mut texts = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            M::Close(f) => return (f.map(|f| u16::from(f.code)), texts),
            M::Text(t) => texts.push(t.as_str().to_string()),
            _ => {}
        }
    }
    (None, texts)
}

#[test]
fn a_client_that_never_answers_pings_is_closed_with_4002() {
    let r = rig(fast());
    let url = r.sim.eventsub_url().unwrap();
    let code = r.rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        // not reading means not answering the server's pings
        tokio::time::sleep(Duration::from_millis(3500)).await;
        until_close(&mut ws).await.0
    });
    assert_eq!(code, Some(4002));
}

#[test]
fn an_old_socket_kept_open_after_a_reconnect_is_closed_with_4004() {
    let r = rig(EventSubConfig {
        reconnect_grace: Duration::from_millis(600),
        assign_deadline: Duration::from_secs(60),
        ..fast()
    });
    let url = r.sim.eventsub_url().unwrap();
    let (old_code, new_welcome) = r.rt.block_on(async {
        use futures_util::StreamExt;
        let (mut old, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let welcome = old.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(welcome.contains("session_welcome"));
        assert_eq!(r.sim.es_reconnect(), 1);
        let msg = old.next().await.unwrap().unwrap().into_text().unwrap();
        let env = twitch_sync_core::eventsub::message::parse_message(msg.as_str()).unwrap();
        let Message::Reconnect(s) = env.message else {
            panic!("{msg}")
        };
        let (mut new, _) = tokio_tungstenite::connect_async(s.reconnect_url.unwrap().as_str())
            .await
            .unwrap();
        let w = new.next().await.unwrap().unwrap().into_text().unwrap();
        let code = until_close(&mut old).await.0;
        (code, w.as_str().to_string())
    });
    assert_eq!(old_code, Some(4004));
    assert!(new_welcome.contains("session_welcome"));
}

#[test]
fn webhook_signatures_of_the_simulator_verify_and_tampering_fails() {
    use std::time::SystemTime;
    use twitch_sync_core::eventsub::webhook::{verify, WebhookError};
    let secret = "a-webhook-secret-of-20";
    let ts = helix_sim::eventsub::rfc3339_nanos(SystemTime::now());
    let body =
        r#"{"subscription":{"type":"stream.online"},"event":{"id":"1","broadcaster_user_id":"7"}}"#;
    let h = helix_sim::eventsub::webhook_headers(
        secret,
        "msg-1",
        &ts,
        "notification",
        "stream.online",
        body,
    );
    let get = |k: &str| {
        h.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let sig = get("twitch-eventsub-message-signature");
    assert!(verify(
        secret,
        &get("twitch-eventsub-message-id"),
        &get("twitch-eventsub-message-timestamp"),
        body.as_bytes(),
        &sig,
        SystemTime::now()
    )
    .is_ok());
    // the timestamp re-formatted (milliseconds), the body re-serialised, another secret: refused
    let millis = format!("{}Z", &ts[..23]);
    assert_eq!(
        verify(
            secret,
            "msg-1",
            &millis,
            body.as_bytes(),
            &sig,
            SystemTime::now()
        ),
        Err(WebhookError::BadSignature)
    );
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<serde_json::Value>(body).unwrap()).unwrap();
    assert_ne!(reserialised, body);
    assert_eq!(
        verify(
            secret,
            "msg-1",
            &ts,
            reserialised.as_bytes(),
            &sig,
            SystemTime::now()
        ),
        Err(WebhookError::BadSignature)
    );
    assert_eq!(
        verify(
            "another-secret-123",
            "msg-1",
            &ts,
            body.as_bytes(),
            &sig,
            SystemTime::now()
        ),
        Err(WebhookError::BadSignature)
    );
}
