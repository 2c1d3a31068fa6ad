//! At-least-once delivery, handled: which notifications are new.
//!
//! Twitch resends a message with the same `message_id`, has sent the same
//! `stream.online` under two message ids (twitchdev/issues#918), and says to
//! refuse messages older than 10 minutes. [`Admission`] applies three checks,
//! in this order, to each notification:
//!
//! 1. **Freshness**: `message_timestamp` more than [`MAX_AGE`] before now (or
//!    more than [`MAX_AGE`] after it: a clock that far off is not trusted) →
//!    [`Verdict::Stale`].
//! 2. **Message id** seen within the window → [`Verdict::Duplicate`].
//! 3. **Event key** ([`StreamEvent::event_key`]: online/offline + broadcaster +
//!    stream id) seen within the window → [`Verdict::Duplicate`]. The key
//!    catches the same state delivered twice (resends keep their message id,
//!    so check 2 is Twitch's dedupe); a change of state is news even when it
//!    repeats an earlier one. So an admitted offline of a broadcaster forgets
//!    its remembered online keys, and an admitted online its offline keys: a
//!    flap that keeps its stream id (online → offline → online of stream 10)
//!    is admitted whole, and an online repeated with no offline between is
//!    still a duplicate.
//! 4. **Order per broadcaster**: an event whose `message_timestamp` is older
//!    than the last admitted event of the same broadcaster → [`Verdict::OutOfOrder`]
//!    (an offline overtaken by a later online must not end the new broadcast).
//!
//! Memory is bounded: each [`SeenSet`] remembers at most `capacity` keys and
//! forgets each after `ttl` ([`REMEMBER`] = 20 minutes by default, twice the
//! freshness window, so any message young enough to be admitted is still
//! remembered). When full, the oldest key is forgotten early and counted in
//! `evicted`; a resend of exactly that message would then be admitted again,
//! which applying it tolerates (the transition layer is idempotent for a
//! repeated observation).

use super::message::StreamEvent;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Twitch: "Make sure the value in the message_timestamp field isn't older than 10 minutes."
pub const MAX_AGE: Duration = Duration::from_secs(600);
/// How long a key is remembered by default.
pub const REMEMBER: Duration = Duration::from_secs(1200);
/// Keys remembered at most, per set (twitch4j keeps 65,536 message ids).
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Keys seen in the last `ttl`, at most `capacity` of them. Times are
/// microseconds on any monotonic-enough clock the caller chooses.
#[derive(Debug)]
pub struct SeenSet {
    ttl_micros: i64,
    capacity: usize,
    seen: HashMap<String, i64>,
    /// Insertion order, for expiry and eviction; entries whose time no longer
    /// matches `seen` are stale and skipped.
    order: VecDeque<(i64, String)>,
    pub evicted: u64,
}

impl SeenSet {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        SeenSet {
            ttl_micros: i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX),
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    fn expire(&mut self, now: i64) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_sub(*t) < self.ttl_micros {
                break;
            }
            let (t, k) = self.order.pop_front().expect("front exists");
            if self.seen.get(&k) == Some(&t) {
                self.seen.remove(&k);
            }
        }
    }

    /// True if `key` was seen in the last `ttl`; otherwise remembers it and returns false.
    pub fn check_and_insert(&mut self, key: &str, now: i64) -> bool {
        self.expire(now);
        if self.seen.contains_key(key) {
            return true;
        }
        // forgotten keys leave stale order entries behind: keep at most twice
        // the capacity of them
        while self.seen.len() >= self.capacity || self.order.len() >= 2 * self.capacity {
            match self.order.pop_front() {
                Some((t, k)) => {
                    if self.seen.get(&k) == Some(&t) {
                        self.seen.remove(&k);
                        self.evicted += 1;
                    }
                }
                None => break,
            }
        }
        self.seen.insert(key.to_string(), now);
        self.order.push_back((now, key.to_string()));
        false
    }

    /// Forgets `key` (its order entry goes stale and is skipped).
    pub fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }

    pub fn contains(&self, key: &str) -> bool {
        self.seen.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
    Stale,
    OutOfOrder,
}

/// Counts of every verdict but `New` (those are the events received).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AdmissionStats {
    pub admitted: u64,
    pub duplicate_message: u64,
    pub duplicate_event: u64,
    pub stale: u64,
    pub out_of_order: u64,
}

/// The checks of this module's doc, with their memory.
#[derive(Debug)]
pub struct Admission {
    messages: SeenSet,
    events: SeenSet,
    /// Last admitted `message_timestamp` per broadcaster, forgotten after
    /// [`MAX_AGE`] (anything older than that is stale anyway), at most `capacity`.
    last: HashMap<String, i64>,
    last_order: VecDeque<(i64, String)>,
    /// Per broadcaster with keys to note: the event keys admitted since its
    /// state last changed (true: online ones, false: offline ones), what its
    /// next change of state forgets in `events`. Keys `events` no longer
    /// holds are dropped when the broadcaster is next seen, and everywhere
    /// once `capacity` keys were noted since the last sweep: at most twice
    /// `capacity` keys.
    state_keys: HashMap<String, (bool, Vec<String>)>,
    added_since_sweep: usize,
    capacity: usize,
    pub stats: AdmissionStats,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(DEFAULT_CAPACITY, REMEMBER)
    }
}

const MAX_AGE_MICROS: i64 = 600 * 1_000_000;

impl Admission {
    pub fn new(capacity: usize, remember: Duration) -> Self {
        Admission {
            messages: SeenSet::new(capacity, remember.max(MAX_AGE)),
            events: SeenSet::new(capacity, remember.max(MAX_AGE)),
            last: HashMap::new(),
            last_order: VecDeque::new(),
            state_keys: HashMap::new(),
            added_since_sweep: 0,
            capacity: capacity.max(1),
            stats: AdmissionStats::default(),
        }
    }

    /// Only the freshness rule (for messages that are not notifications:
    /// revocations are judged by freshness and message id only).
    pub fn is_fresh(message_timestamp: i64, now: i64) -> bool {
        (now.saturating_sub(MAX_AGE_MICROS)..=now.saturating_add(MAX_AGE_MICROS))
            .contains(&message_timestamp)
    }

    /// Judges a message by id and timestamp only (revocations).
    pub fn admit_message(&mut self, message_id: &str, message_timestamp: i64, now: i64) -> Verdict {
        if !Self::is_fresh(message_timestamp, now) {
            self.stats.stale += 1;
            return Verdict::Stale;
        }
        if self.messages.check_and_insert(message_id, now) {
            self.stats.duplicate_message += 1;
            return Verdict::Duplicate;
        }
        self.stats.admitted += 1;
        Verdict::New
    }

    /// Judges a notification; `now` and `message_timestamp` in microseconds
    /// since the Unix epoch.
    pub fn admit(
        &mut self,
        message_id: &str,
        message_timestamp: i64,
        event: &StreamEvent,
        now: i64,
    ) -> Verdict {
        if !Self::is_fresh(message_timestamp, now) {
            self.stats.stale += 1;
            return Verdict::Stale;
        }
        if self.messages.check_and_insert(message_id, now) {
            self.stats.duplicate_message += 1;
            return Verdict::Duplicate;
        }
        let key = event.event_key();
        if let Some(k) = &key {
            if self.events.check_and_insert(k, now) {
                self.stats.duplicate_event += 1;
                return Verdict::Duplicate;
            }
        }
        // forget order entries older than the freshness window
        while let Some((t, _)) = self.last_order.front() {
            if now.saturating_sub(*t) <= MAX_AGE_MICROS
                && self.last.len() < self.capacity
                && self.last_order.len() < 2 * self.capacity
            {
                break;
            }
            let (t, b) = self.last_order.pop_front().expect("front exists");
            if self.last.get(&b) == Some(&t) {
                self.last.remove(&b);
            }
        }
        let b = event.broadcaster_id();
        if let Some(&prev) = self.last.get(b) {
            if message_timestamp < prev {
                // Not admitted: its event key must not make a later delivery
                // of the same state a duplicate.
                if let Some(k) = &key {
                    self.events.forget(k);
                }
                self.stats.out_of_order += 1;
                return Verdict::OutOfOrder;
            }
        }
        self.last.insert(b.to_string(), message_timestamp);
        self.last_order
            .push_back((message_timestamp, b.to_string()));
        self.remember_state(event, key);
        self.stats.admitted += 1;
        Verdict::New
    }

    /// An admitted event: a change of state forgets the broadcaster's event
    /// keys of the state it leaves (see the module doc), then `key` is noted.
    fn remember_state(&mut self, event: &StreamEvent, key: Option<String>) {
        let online = matches!(event, StreamEvent::Online { .. });
        let b = event.broadcaster_id();
        let events = &mut self.events;
        let mut keys = match self.state_keys.remove(b) {
            Some((was_online, keys)) if was_online != online => {
                for k in &keys {
                    events.forget(k);
                }
                Vec::new()
            }
            Some((_, mut keys)) => {
                keys.retain(|k| events.contains(k));
                keys
            }
            None => Vec::new(),
        };
        if let Some(k) = key {
            keys.push(k);
            self.added_since_sweep += 1;
        }
        if !keys.is_empty() {
            self.state_keys.insert(b.to_string(), (online, keys));
        }
        if self.added_since_sweep >= self.capacity {
            self.added_since_sweep = 0;
            self.state_keys.retain(|_, (_, keys)| {
                keys.retain(|k| events.contains(k));
                !keys.is_empty()
            });
        }
    }

    /// Keys held now (message ids, event keys, broadcasters, and the event
    /// keys noted per broadcaster), for memory checks.
    pub fn held(&self) -> usize {
        self.messages.len()
            + self.events.len()
            + self.last.len()
            + self
                .state_keys
                .values()
                .map(|(_, k)| k.len())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_795_000_000 * S;

    fn online(b: &str, s: &str) -> StreamEvent {
        StreamEvent::Online {
            broadcaster_id: b.into(),
            login: None,
            stream_id: s.into(),
            stream_type: "live".into(),
            started_at: None,
        }
    }
    fn offline(b: &str, s: Option<&str>) -> StreamEvent {
        StreamEvent::Offline {
            broadcaster_id: b.into(),
            login: None,
            stream_id: s.map(str::to_string),
        }
    }

    #[test]
    fn seen_set_remembers_for_ttl_then_forgets() {
        let mut s = SeenSet::new(10, Duration::from_secs(60));
        assert!(!s.check_and_insert("a", T0));
        assert!(s.check_and_insert("a", T0 + 59 * S));
        assert!(!s.check_and_insert("a", T0 + 60 * S));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn seen_set_is_bounded_and_evicts_oldest() {
        let mut s = SeenSet::new(3, Duration::from_secs(600));
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(!s.check_and_insert(k, T0 + i as i64));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.evicted, 1);
        assert!(!s.check_and_insert("a", T0 + 10), "a was evicted");
        assert!(s.check_and_insert("d", T0 + 11));
    }

    #[test]
    fn forgotten_keys_are_new_and_their_order_entries_stay_bounded() {
        let mut s = SeenSet::new(3, Duration::from_secs(600));
        for i in 0..100 {
            assert!(!s.check_and_insert("a", T0 + i));
            assert!(s.contains("a"));
            s.forget("a");
            assert!(!s.contains("a"));
        }
        assert!(s.order.len() <= 6, "{}", s.order.len());
        assert_eq!(s.evicted, 0);
    }

    #[test]
    fn memory_stays_flat_over_many_messages() {
        let mut a = Admission::new(1000, REMEMBER);
        for i in 0..100_000i64 {
            let now = T0 + i * S / 10;
            let v = a.admit(
                &format!("m{i}"),
                now,
                &online(&(1 + i % 5000).to_string(), &i.to_string()),
                now,
            );
            assert_eq!(v, Verdict::New);
        }
        // each set at most 1000 keys; the keys noted per broadcaster at most 2000
        assert!(a.held() <= 5000, "held {}", a.held());
    }

    #[test]
    fn same_message_id_is_a_duplicate() {
        let mut a = Admission::default();
        let e = online("1", "10");
        assert_eq!(a.admit("m1", T0, &e, T0), Verdict::New);
        assert_eq!(a.admit("m1", T0, &e, T0 + S), Verdict::Duplicate);
        assert_eq!(a.stats.duplicate_message, 1);
    }

    #[test]
    fn same_event_under_another_message_id_is_a_duplicate() {
        let mut a = Admission::default();
        assert_eq!(a.admit("m1", T0, &online("1", "10"), T0), Verdict::New);
        assert_eq!(
            a.admit("m2", T0 + S, &online("1", "10"), T0 + S),
            Verdict::Duplicate
        );
        assert_eq!(a.stats.duplicate_event, 1);
        // a new broadcast of the same channel is new
        assert_eq!(
            a.admit("m3", T0 + 2 * S, &online("1", "11"), T0 + 2 * S),
            Verdict::New
        );
        // an offline without a stream id cannot be keyed: judged by message id only
        assert_eq!(
            a.admit("m4", T0 + 3 * S, &offline("1", None), T0 + 3 * S),
            Verdict::New
        );
        assert_eq!(
            a.admit("m5", T0 + 4 * S, &offline("1", None), T0 + 4 * S),
            Verdict::New
        );
        assert_eq!(
            a.admit("m6", T0 + 5 * S, &offline("1", Some("11")), T0 + 5 * S),
            Verdict::New
        );
        assert_eq!(
            a.admit("m7", T0 + 6 * S, &offline("1", Some("11")), T0 + 6 * S),
            Verdict::Duplicate
        );
    }

    #[test]
    fn a_change_of_state_makes_the_other_state_new_again() {
        let mut a = Admission::default();
        let mut n = 0;
        let mut admit = |a: &mut Admission, e: StreamEvent| {
            n += 1;
            let t = T0 + n * S;
            a.admit(&format!("m{n}"), t, &e, t)
        };
        // a flap that keeps its stream id, each message under a new id: all news
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::New);
        assert_eq!(admit(&mut a, offline("1", Some("10"))), Verdict::New);
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::New);
        assert_eq!(admit(&mut a, offline("1", Some("10"))), Verdict::New);
        // the same state twice, without a change between: still a duplicate
        assert_eq!(admit(&mut a, offline("1", Some("10"))), Verdict::Duplicate);
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::New);
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::Duplicate);
        // an offline without a stream id is a change of state too
        assert_eq!(admit(&mut a, offline("1", None)), Verdict::New);
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::New);
        // another broadcaster's change forgets nothing of this one
        assert_eq!(admit(&mut a, online("2", "20")), Verdict::New);
        assert_eq!(admit(&mut a, offline("2", Some("20"))), Verdict::New);
        assert_eq!(admit(&mut a, online("1", "10")), Verdict::Duplicate);
        assert_eq!(a.stats.duplicate_event, 3);
    }

    #[test]
    fn older_than_ten_minutes_or_far_future_is_stale() {
        let mut a = Admission::default();
        let now = T0 + 3600 * S;
        assert_eq!(
            a.admit("m1", now - 601 * S, &online("1", "10"), now),
            Verdict::Stale
        );
        assert_eq!(
            a.admit("m2", now + 601 * S, &online("1", "10"), now),
            Verdict::Stale
        );
        assert_eq!(
            a.admit("m3", now - 599 * S, &online("1", "10"), now),
            Verdict::New
        );
        assert_eq!(a.stats.stale, 2);
        assert_eq!(a.admit_message("r1", now - 700 * S, now), Verdict::Stale);
        assert_eq!(a.admit_message("r2", now, now), Verdict::New);
        assert_eq!(a.admit_message("r2", now, now), Verdict::Duplicate);
    }

    #[test]
    fn an_older_event_of_the_same_broadcaster_is_out_of_order() {
        let mut a = Admission::default();
        // online of a new broadcast arrives first, the previous broadcast's offline later
        assert_eq!(
            a.admit("m2", T0 + 5 * S, &online("1", "11"), T0 + 6 * S),
            Verdict::New
        );
        assert_eq!(
            a.admit("m1", T0, &offline("1", Some("10")), T0 + 6 * S),
            Verdict::OutOfOrder
        );
        // other broadcasters are not affected
        assert_eq!(
            a.admit("m3", T0, &offline("2", Some("20")), T0 + 6 * S),
            Verdict::New
        );
        assert_eq!(a.stats.out_of_order, 1);
    }

    #[test]
    fn an_event_refused_as_out_of_order_is_not_remembered() {
        let mut a = Admission::default();
        assert_eq!(
            a.admit("m2", T0 + 5 * S, &offline("1", Some("10")), T0 + 6 * S),
            Verdict::New
        );
        // an online older than that offline is refused...
        assert_eq!(
            a.admit("m1", T0, &online("1", "12"), T0 + 6 * S),
            Verdict::OutOfOrder
        );
        // ...and does not make the real, later online of that stream a duplicate
        assert_eq!(
            a.admit("m3", T0 + 9 * S, &online("1", "12"), T0 + 10 * S),
            Verdict::New
        );
    }
}
