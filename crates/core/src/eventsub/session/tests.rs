use super::*;
use crate::eventsub::message::{Notification, SessionInfo, StreamEvent, SubscriptionInfo};

fn env(message: Message) -> Envelope {
    Envelope {
        message_id: "m".into(),
        message_timestamp: 0,
        message,
    }
}

fn welcome(id: &str, keepalive: u32) -> Envelope {
    env(Message::Welcome(SessionInfo {
        id: id.into(),
        keepalive_timeout_seconds: Some(keepalive),
        reconnect_url: None,
        connected_at: None,
    }))
}

fn reconnect(id: &str, url: &str) -> Envelope {
    env(Message::Reconnect(SessionInfo {
        id: id.into(),
        keepalive_timeout_seconds: None,
        reconnect_url: Some(url.into()),
        connected_at: None,
    }))
}

fn notification() -> Envelope {
    env(Message::Notification(Notification {
        subscription: SubscriptionInfo {
            id: "sub".into(),
            status: "enabled".into(),
            kind: "stream.offline".into(),
            broadcaster_id: "1".into(),
            conduit_id: None,
        },
        event: StreamEvent::Offline {
            broadcaster_id: "1".into(),
            login: None,
            stream_id: None,
        },
    }))
}

fn cfg() -> ShardConfig {
    ShardConfig {
        base_url: "ws://127.0.0.1:1/ws".into(),
        ..ShardConfig::default()
    }
}

fn connect_of(actions: &[Action]) -> (SocketId, String) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Connect { socket, url } => Some((*socket, url.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Connect in {actions:?}"))
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A shard connected, welcomed as `s1` and assigned, at t0 + 1 s.
fn assigned(t0: Instant) -> (Shard, SocketId) {
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, url) = connect_of(&sh.on_timer(t0));
    assert_eq!(url, "ws://127.0.0.1:1/ws?keepalive_timeout_seconds=10");
    let a = sh.on_message(sock, welcome("s1", 10), t0 + secs(1));
    assert_eq!(
        a,
        vec![Action::Assign {
            session_id: "s1".into()
        }]
    );
    assert!(
        !sh.is_connected(),
        "not connected before the assignment is confirmed"
    );
    assert!(sh.on_assigned("s1", Ok(()), t0 + secs(1)).is_empty());
    assert!(sh.is_connected());
    assert_eq!(sh.assigned_session(), Some("s1"));
    (sh, sock)
}

#[test]
fn connect_url_clamps_keepalive() {
    let mut c = cfg();
    c.keepalive_seconds = 5;
    assert!(c.connect_url().ends_with("?keepalive_timeout_seconds=10"));
    c.keepalive_seconds = 9000;
    assert!(c.connect_url().ends_with("=600"));
    c.base_url = "ws://h/ws?x=1".into();
    assert_eq!(
        c.connect_url(),
        "ws://h/ws?x=1&keepalive_timeout_seconds=600"
    );
}

#[test]
fn welcome_leads_to_assignment_and_notifications_are_delivered() {
    let t0 = Instant::now();
    let (mut sh, sock) = assigned(t0);
    let a = sh.on_message(sock, notification(), t0 + secs(2));
    assert!(matches!(a.as_slice(), [Action::Deliver(_)]));
    assert_eq!(sh.stats.delivered, 1);
    assert_eq!(sh.session_age(t0 + secs(5)), Some(secs(4)));
    // frames from an unknown socket are ignored
    assert!(sh.on_message(99, notification(), t0 + secs(2)).is_empty());
}

#[test]
fn notifications_before_welcome_are_not_delivered() {
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, _) = connect_of(&sh.on_timer(t0));
    assert!(sh.on_message(sock, notification(), t0).is_empty());
}

#[test]
fn keepalive_timeout_is_keepalive_plus_slack_and_reconnects_at_once() {
    let t0 = Instant::now();
    let (mut sh, sock) = assigned(t0);
    // keepalive at t0+10 resets the timer; 10 s window + 2 s slack (a fifth)
    sh.on_message(sock, env(Message::Keepalive), t0 + secs(10));
    assert_eq!(sh.next_wakeup(), Some(t0 + secs(22)));
    assert!(sh.on_timer(t0 + secs(21)).is_empty());
    let a = sh.on_timer(t0 + secs(22));
    assert_eq!(sh.stats.keepalive_timeouts, 1);
    assert!(a.contains(&Action::Close {
        socket: sock,
        why: "keepalive timeout"
    }));
    // first retry after a healthy period: immediately, a fresh socket to the base URL
    let (s2, url) = connect_of(&a);
    assert_ne!(s2, sock);
    assert!(url.starts_with("ws://127.0.0.1:1/ws?"));
    // the new session is assigned even if Twitch reused the session id
    let a = sh.on_message(s2, welcome("s1", 10), t0 + secs(23));
    assert_eq!(
        a,
        vec![Action::Assign {
            session_id: "s1".into()
        }]
    );
}

#[test]
fn keepalive_grace_grows_with_the_keepalive_window() {
    let t0 = Instant::now();
    // the larger of the fixed grace (1 s) and a fifth of the window
    for (keepalive, grace, wait) in [(10, 1, 12), (30, 1, 36), (600, 1, 720), (10, 5, 15)] {
        let mut sh = Shard::new(
            ShardConfig {
                keepalive_grace: secs(grace),
                ..cfg()
            },
            7,
            t0,
        );
        let (sock, _) = connect_of(&sh.on_timer(t0));
        sh.on_message(sock, welcome("s1", keepalive), t0);
        sh.on_assigned("s1", Ok(()), t0);
        assert_eq!(sh.next_wakeup(), Some(t0 + secs(wait)), "{keepalive} s");
        assert!(sh.on_timer(t0 + secs(wait - 1)).is_empty(), "{keepalive} s");
        assert!(
            sh.on_timer(t0 + secs(wait)).contains(&Action::Close {
                socket: sock,
                why: "keepalive timeout"
            }),
            "{keepalive} s"
        );
    }
}

#[test]
fn no_welcome_in_time_closes_and_retries() {
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, _) = connect_of(&sh.on_timer(t0));
    assert_eq!(sh.next_wakeup(), Some(t0 + secs(10)));
    let a = sh.on_timer(t0 + secs(10));
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == sock)));
    assert_eq!(sh.stats.welcome_timeouts, 1);
    connect_of(&a); // first retry immediate
}

#[test]
fn failed_assignment_is_retried_within_ten_seconds_then_the_socket_goes() {
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, _) = connect_of(&sh.on_timer(t0));
    sh.on_message(sock, welcome("s1", 10), t0);
    // a transient failure: retried after assign_retry
    assert!(sh
        .on_assigned(
            "s1",
            Err(AssignError::Transient("503".into())),
            t0 + secs(1)
        )
        .is_empty());
    assert_eq!(sh.next_wakeup(), Some(t0 + secs(2)));
    assert_eq!(
        sh.on_timer(t0 + secs(2)),
        vec![Action::Assign {
            session_id: "s1".into()
        }]
    );
    // another failure with no time left before the 10 s deadline: give up on this socket
    let a = sh.on_assigned(
        "s1",
        Err(AssignError::Transient("503".into())),
        t0 + secs(9),
    );
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == sock)));
    assert_eq!(sh.stats.assign_failures, 2);
    assert!(!sh.is_connected());
    // next connection after the backoff (first one: immediate)
    connect_of(&sh.on_timer(t0 + secs(9)));
}

#[test]
fn permanent_assignment_error_drops_the_socket_at_once() {
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, _) = connect_of(&sh.on_timer(t0));
    sh.on_message(sock, welcome("s1", 10), t0);
    let a = sh.on_assigned(
        "s1",
        Err(AssignError::Permanent(
            "The websocket session is not connected.".into(),
        )),
        t0 + secs(1),
    );
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == sock)));
    // an answer for a session that is gone changes nothing
    assert!(sh.on_assigned("s1", Ok(()), t0 + secs(1)).is_empty());
    assert_eq!(sh.stats.assigned, 0);
}

#[test]
fn assignment_without_answer_by_the_deadline_drops_the_socket() {
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg(), 7, t0);
    let (sock, _) = connect_of(&sh.on_timer(t0));
    sh.on_message(sock, welcome("s1", 60), t0);
    assert_eq!(sh.next_wakeup(), Some(t0 + secs(10)));
    let a = sh.on_timer(t0 + secs(10));
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == sock)));
}

#[test]
fn reconnect_keeps_the_old_socket_until_the_new_welcome() {
    let t0 = Instant::now();
    let (mut sh, old) = assigned(t0);
    let a = sh.on_message(
        old,
        reconnect("s1", "ws://127.0.0.1:1/ws?r=abc"),
        t0 + secs(5),
    );
    let (new, url) = connect_of(&a);
    assert_eq!(
        url, "ws://127.0.0.1:1/ws?r=abc",
        "the reconnect URL is used as is"
    );
    assert!(sh.reconnecting());
    // the old socket still delivers, and its keepalive is not enforced meanwhile
    assert!(matches!(
        sh.on_message(old, notification(), t0 + secs(20)).as_slice(),
        [Action::Deliver(_)]
    ));
    assert!(sh.on_timer(t0 + secs(33)).is_empty());
    assert!(sh.is_connected());
    // a second reconnect while one is in progress opens nothing (storm)
    assert!(sh
        .on_message(
            old,
            reconnect("s1", "ws://127.0.0.1:1/ws?r=def"),
            t0 + secs(21)
        )
        .is_empty());
    // new welcome with the same session id: old closed, no new assignment needed
    let a = sh.on_message(new, welcome("s1", 10), t0 + secs(34));
    assert_eq!(
        a,
        vec![Action::Close {
            socket: old,
            why: "replaced by the reconnected session"
        }]
    );
    assert_eq!(sh.stats.reconnects, 1);
    assert!(sh.is_connected());
    // a notification the old socket still reads (in flight when the new
    // welcome came: Twitch sends on it until then) is delivered; the
    // message-id check downstream drops a copy. Nothing else from it counts.
    assert!(matches!(
        sh.on_message(old, notification(), t0 + secs(34)).as_slice(),
        [Action::Deliver(_)]
    ));
    assert!(sh
        .on_message(
            old,
            reconnect("s1", "ws://127.0.0.1:1/ws?r=ghi"),
            t0 + secs(34)
        )
        .is_empty());
    assert!(!sh.reconnecting());
    assert!(matches!(
        sh.on_message(new, notification(), t0 + secs(35)).as_slice(),
        [Action::Deliver(_)]
    ));
}

#[test]
fn reconnect_to_a_new_session_id_assigns_it() {
    let t0 = Instant::now();
    let (mut sh, old) = assigned(t0);
    let (new, _) = connect_of(&sh.on_message(old, reconnect("s1", "ws://127.0.0.1:1/r"), t0));
    let a = sh.on_message(new, welcome("s2", 10), t0 + secs(1));
    assert!(a.contains(&Action::Assign {
        session_id: "s2".into()
    }));
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == old)));
}

#[test]
fn successor_without_welcome_is_dropped_after_thirty_seconds() {
    let t0 = Instant::now();
    let (mut sh, old) = assigned(t0);
    let (new, _) = connect_of(&sh.on_message(old, reconnect("s1", "ws://127.0.0.1:1/r"), t0));
    sh.on_message(old, env(Message::Keepalive), t0 + secs(25));
    let a = sh.on_timer(t0 + secs(30));
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Close { socket, .. } if *socket == new)));
    assert_eq!(sh.stats.reconnect_timeouts, 1);
    // the old one is closed by Twitch with 4004: a fresh connection follows
    assert!(sh.on_closed(old, Some(4004), t0 + secs(31)).is_empty());
    let (fresh, url) = connect_of(&sh.on_timer(t0 + secs(31)));
    assert!(url.contains("keepalive_timeout_seconds"));
    assert!(fresh > new);
    assert_eq!(
        sh.last_close.map(|c| c.meaning),
        Some("reconnect grace time expired")
    );
}

#[test]
fn old_socket_closing_during_reconnect_hands_over_to_the_successor() {
    let t0 = Instant::now();
    let (mut sh, old) = assigned(t0);
    let (new, _) = connect_of(&sh.on_message(old, reconnect("s1", "ws://127.0.0.1:1/r"), t0));
    assert!(sh.on_closed(old, Some(4000), t0 + secs(1)).is_empty());
    // no fresh connection while the successor may still welcome
    assert!(sh.on_timer(t0 + secs(2)).is_empty());
    let a = sh.on_message(new, welcome("s1", 10), t0 + secs(3));
    // the old socket is gone already; the session is the registered one: no assignment
    assert!(a.is_empty(), "{a:?}");
    assert!(sh.is_connected());
}

#[test]
fn every_close_code_reconnects_with_growing_backoff() {
    let t0 = Instant::now();
    let (mut sh, mut sock) = assigned(t0);
    let mut t = t0 + secs(2);
    let mut delays = Vec::new();
    for code in [
        Some(4000),
        Some(4001),
        Some(4002),
        Some(4003),
        Some(4005),
        Some(4006),
        Some(4007),
        None,
    ] {
        assert!(sh.on_closed(sock, code, t).is_empty());
        let due = sh.next_wakeup().expect("a connection is due");
        delays.push(due - t);
        t = due;
        let (s, url) = connect_of(&sh.on_timer(t));
        assert!(url.starts_with("ws://127.0.0.1:1/ws?"), "{url}");
        sock = s;
    }
    assert_eq!(delays[0], Duration::ZERO);
    assert!(delays[1] >= Duration::from_millis(500) && delays[1] < secs(1));
    assert!(delays[2] >= secs(1) && delays[2] < secs(2));
    assert!(delays.windows(2).all(|w| w[1] >= w[0] / 2), "{delays:?}");
    assert!(delays.iter().all(|d| *d <= secs(60)));
    assert_eq!(sh.stats.closes.get("4003"), Some(&1));
    assert_eq!(sh.stats.closes.get("none"), Some(&1));
    // a successful assignment resets the backoff
    sh.on_message(sock, welcome("s9", 10), t);
    sh.on_assigned("s9", Ok(()), t);
    sh.on_closed(sock, Some(4005), t);
    assert_eq!(sh.next_wakeup(), Some(t));
}

#[test]
fn close_codes_are_classified() {
    assert!(close_decision(Some(4001)).our_fault);
    assert!(close_decision(Some(4002)).our_fault);
    assert!(close_decision(Some(4003)).our_fault);
    for c in [4000, 4004, 4005, 4006, 4007] {
        let d = close_decision(Some(c));
        assert!(!d.our_fault && d.transient, "{c}");
    }
    assert_eq!(close_decision(Some(4007)).meaning, "invalid reconnect URL");
    assert_eq!(
        close_decision(Some(4004)).meaning,
        "reconnect grace time expired"
    );
    assert!(!close_decision(Some(3999)).transient);
}

#[test]
fn backoff_is_capped_and_jittered() {
    let mut b = Backoff::new(BackoffConfig::default(), 1);
    let d: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
    assert_eq!(d[0], Duration::ZERO);
    assert!(d.iter().all(|x| *x <= secs(60)));
    assert!(d[30..].iter().all(|x| *x >= secs(30)));
    let mut b2 = Backoff::new(BackoffConfig::default(), 2);
    let d2: Vec<Duration> = (0..40).map(|_| b2.next_delay()).collect();
    assert_ne!(d, d2, "different seeds, different jitter");
    b.reset();
    assert_eq!(b.next_delay(), Duration::ZERO);
}
