//! Client side of Twitch's token bucket. It trusts the `Ratelimit-*` headers
//! over any documented number, never sends a request the bucket cannot pay
//! for, and waits for just enough refill rather than for a full bucket.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The three `Ratelimit-*` headers of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    pub limit: u32,
    pub remaining: u32,
    /// Unix epoch seconds at which the bucket is full again.
    pub reset: u64,
}

/// The largest `Ratelimit-Limit` believed (Twitch's app bucket is 800 points;
/// some clients are granted more, none a million).
pub const MAX_BUCKET_LIMIT: u32 = 1_000_000;

/// How far ahead of the clock a `Ratelimit-Reset` is believed, in seconds:
/// Twitch's bucket refills in a minute, so a later reset is a broken header
/// or a clock far off, and either way no reason to stop asking.
pub const MAX_RESET_AHEAD_SECS: u64 = 120;

impl RateLimitSnapshot {
    /// The three headers, if all are there and plausible: a limit of 1 to
    /// [`MAX_BUCKET_LIMIT`], at most that many remaining, a reset at most
    /// [`MAX_RESET_AHEAD_SECS`] ahead. Anything else is treated as an answer
    /// without the headers (a limit of 0, or a reset ten years ahead, would
    /// otherwise stop every later run from sending a request).
    pub fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        let num =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        RateLimitSnapshot {
            limit: u32::try_from(num("ratelimit-limit")?).ok()?,
            remaining: u32::try_from(num("ratelimit-remaining")?).ok()?,
            reset: num("ratelimit-reset")?,
        }
        .plausible(epoch_now())
    }

    /// This snapshot if it is plausible at `now` (Unix seconds; see
    /// [`RateLimitSnapshot::from_headers`]).
    pub fn plausible(self, now: f64) -> Option<Self> {
        (self.limit >= 1
            && self.limit <= MAX_BUCKET_LIMIT
            && self.remaining <= self.limit
            && (self.reset as f64) <= now + MAX_RESET_AHEAD_SECS as f64)
            .then_some(self)
    }
}

/// Twitch documents its bucket as refilling over a minute; the limiter uses it
/// only until headers tell better.
pub const DOCUMENTED_PERIOD_SECS: f64 = 60.0;
/// Refill estimates are already slow by construction (send time, rounded-down
/// remaining, rounded-up reset); this shades them a little more for clock jitter.
const SAFETY: f64 = 0.99;
/// The longest a waiting request sleeps before looking at the estimate again.
const RECHECK: Duration = Duration::from_millis(100);

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[derive(Debug)]
struct State {
    /// Points believed available now (None: nothing known yet, probe with one request).
    points: Option<f64>,
    limit: u32,
    per_second: f64,
    at: Instant,
    in_flight: u32,
    /// After a 429: send nothing until then.
    paused_until: Option<Instant>,
    /// Tickets handed out so far.
    issued: u64,
    /// Requests finished so far (answered, or failed without an answer).
    finished: u64,
    /// Of those, the ones that got no answer (not a 429): the server may count
    /// them at any time, so no answer is taken to account for them.
    unanswered: u64,
    /// Whether `per_second` was read from an answer of this pass (not the last run's).
    rate_read: bool,
    /// The latest headers: this pass's, else the last run's.
    last: Option<RateLimitSnapshot>,
    /// The latest headers of this pass (none: no answer carried them).
    heard: Option<RateLimitSnapshot>,
}

/// Points in an app access token's bucket, as Twitch documents it, until an
/// answer's `Ratelimit-Limit` says otherwise.
pub const DOCUMENTED_BUCKET_LIMIT: u32 = 800;

#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<State>,
}

impl RateLimiter {
    /// Starts from what the last run saw (headers and when), or from nothing.
    pub fn new(last_seen: Option<(RateLimitSnapshot, SystemTime)>) -> Self {
        let now = Instant::now();
        let mut st = State {
            points: None,
            limit: DOCUMENTED_BUCKET_LIMIT,
            per_second: f64::from(DOCUMENTED_BUCKET_LIMIT) / DOCUMENTED_PERIOD_SECS,
            at: now,
            in_flight: 0,
            paused_until: None,
            issued: 0,
            finished: 0,
            unanswered: 0,
            rate_read: false,
            last: None,
            heard: None,
        };
        // what the last run stored is believed as a fresh answer would be
        // (a row written before the headers were checked may hold anything)
        let last_seen = last_seen.and_then(|(snap, seen_at)| {
            let seen = seen_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            snap.plausible(seen).map(|snap| (snap, seen))
        });
        if let Some((snap, seen)) = last_seen {
            st.limit = snap.limit;
            st.per_second =
                rate_from(&snap, seen).unwrap_or(snap.limit as f64 / DOCUMENTED_PERIOD_SECS);
            let elapsed = (epoch_now() - seen).max(0.0);
            let points = if epoch_now() >= snap.reset as f64 {
                snap.limit as f64
            } else {
                (snap.remaining as f64 + elapsed * st.per_second).min(snap.limit as f64)
            };
            st.points = Some(points);
            st.last = Some(snap);
        }
        RateLimiter {
            state: Mutex::new(st),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one request can be paid for, then reserves it and returns
    /// its ticket. Returns `None` if that would mean waiting past `deadline`.
    pub async fn acquire(&self, deadline: Instant) -> Option<Ticket> {
        loop {
            let wait = {
                let mut st = self.lock();
                let now = Instant::now();
                match st.paused_until {
                    Some(t) if t > now => Some(t - now),
                    _ => {
                        st.paused_until = None;
                        refill(&mut st, now);
                        match st.points {
                            None if st.in_flight == 0 => return Some(issue(&mut st)),
                            None => Some(Duration::from_millis(5)),
                            Some(p) if p >= 1.0 => {
                                st.points = Some(p - 1.0);
                                return Some(issue(&mut st));
                            }
                            Some(p) => {
                                let secs = (1.0 - p) / st.per_second.max(1e-6);
                                Some(Duration::from_secs_f64(secs.clamp(0.005, 60.0)))
                            }
                        }
                    }
                }
            };
            // Look again soon: answers to other requests may correct the estimate.
            let wait = wait.unwrap_or_default().min(RECHECK);
            if Instant::now() + wait > deadline {
                return None;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Records what came back for the request of `ticket`.
    pub fn observe(&self, ticket: Ticket, heard: Heard, rate_limited: bool) {
        let (snap, answered) = match heard {
            Heard::Nothing => (None, false),
            Heard::Answer(snap) => (snap, true),
        };
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        // Requests that finished while this one was in flight: they may have
        // reached the server after it, so its answer may not count them.
        let finished_meanwhile = st.finished.saturating_sub(ticket.finished_before);
        st.finished += 1;
        let now = Instant::now();
        refill(&mut st, now);
        if rate_limited {
            // Empty, and whatever is still in flight will be paid for too. Paused
            // until `Ratelimit-Reset`; without the header, for a point's refill
            // (at least a second).
            st.points = Some(-(st.in_flight as f64));
            let until = match snap {
                Some(snap) => (snap.reset as f64 - epoch_now()).clamp(0.05, 120.0),
                None => (1.0 / st.per_second.max(1e-6)).clamp(1.0, 120.0),
            };
            st.paused_until = Some(now + Duration::from_secs_f64(until));
        }
        let Some(snap) = snap else {
            if !answered {
                // No answer (a timeout, a dropped connection): Twitch may still
                // count the request, at any time.
                st.unanswered += 1;
            } else if st.points.is_none() && !rate_limited {
                // An answer without the headers: Twitch counted the request when
                // it answered (its point was reserved when it was sent). Until an
                // answer carries them, the documented bucket stands in for them,
                // less this request and those in flight; a 429 corrects it.
                st.points = Some(f64::from(st.limit) - 1.0 - f64::from(st.in_flight));
            }
            return;
        };
        st.limit = snap.limit;
        // Time left until reset, counted from when the request was sent: the server
        // answered later than that, so this errs long (slow), however late we read it.
        // Each reading is a lower bound of the true rate (see rate_from), and
        // `Ratelimit-Reset`'s rounding makes some tighter than others: keep the
        // highest of this pass.
        match rate_from(&snap, ticket.issued_at) {
            Some(rate) if st.rate_read => st.per_second = st.per_second.max(rate),
            Some(rate) => {
                st.per_second = rate;
                st.rate_read = true;
            }
            None if st.last.is_none() => st.per_second = snap.limit as f64 / DOCUMENTED_PERIOD_SECS,
            None => {}
        }
        if !rate_limited {
            // Requests still unanswered, sent before or after this one, may or may not
            // be counted in this answer yet: assume they are not. The estimate may go
            // below zero: that debt is paid by refill before anything else is sent.
            let from_header = snap.remaining as f64 - st.in_flight as f64;
            // Requests that got no answer may be counted later than any answer.
            let from_header = from_header - st.unanswered as f64;
            // Concurrent requests reach the server in any order, so an answer may
            // predate requests sent before it: it can only lower the estimate. Only
            // a request sent alone, with nothing sent since, is answered after every
            // request we made: its answer may raise it (to correct a pessimistic start).
            let accounts_for_all = ticket.alone && ticket.seq == st.issued;
            // What is certainly left: every request the answer may not count is
            // either still in flight or finished while this one was. When answers
            // come back out of order (a burst), taking the minimum above leaves
            // the estimate a burst's worth of points low; this bound, once
            // requests trickle, gives those points back.
            let certain = from_header - finished_meanwhile as f64;
            st.points = Some(match st.points {
                Some(p) if !accounts_for_all => p.min(from_header).max(certain),
                _ => from_header,
            });
        }
        st.last = Some(snap);
        st.heard = Some(snap);
    }

    /// The last headers seen in this pass: not the last run's it started
    /// from, which would be reported (and stored) again as if just heard.
    pub fn last_seen(&self) -> Option<RateLimitSnapshot> {
        self.lock().heard
    }
}

/// What came back for a request, as [`RateLimiter::observe`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// No answer (a timeout, a dropped connection).
    Nothing,
    /// An answer, with its `Ratelimit-*` headers if it carried all three.
    /// Twitch documents them on every answer; one without them neither
    /// lowers the estimate nor leaves the requests that follow one at a time.
    Answer(Option<RateLimitSnapshot>),
}

/// A reservation made by [`RateLimiter::acquire`], handed back to
/// [`RateLimiter::observe`] with the answer to its request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticket {
    /// Its place in the order tickets were issued (the first is 1).
    seq: u64,
    /// When it was issued, in Unix seconds: about when its request was sent.
    issued_at: f64,
    /// Whether no other request was in flight when it was issued.
    alone: bool,
    /// Requests finished before it was issued.
    finished_before: u64,
}

fn issue(st: &mut State) -> Ticket {
    let alone = st.in_flight == 0;
    st.in_flight += 1;
    st.issued += 1;
    Ticket {
        seq: st.issued,
        issued_at: epoch_now(),
        alone,
        finished_before: st.finished,
    }
}

fn refill(st: &mut State, now: Instant) {
    let dt = now.duration_since(st.at).as_secs_f64();
    st.at = now;
    if let Some(p) = st.points.as_mut() {
        *p = (*p + dt * st.per_second).min(st.limit as f64);
    }
}

/// Points per second implied by a snapshot seen at `seen` (epoch seconds): the
/// missing points come back by `reset`. Only a mostly empty bucket gives a
/// usable reading: `Ratelimit-Reset` is whole seconds, which near a full
/// bucket is most of the interval. Taken as rounded up (so the estimate errs
/// slow): Twitch documents it as when the bucket *is* full again, which a
/// second rounded down would not be yet.
/// `seen` is when the request was sent, so a late read cannot make it fast.
fn rate_from(snap: &RateLimitSnapshot, seen: f64) -> Option<f64> {
    // `Ratelimit-Remaining` is rounded down: up to one point more may be there.
    let missing = snap.limit.saturating_sub(snap.remaining) as f64 - 1.0;
    let secs = snap.reset as f64 - seen;
    if u64::from(snap.remaining) * 2 > u64::from(snap.limit) || secs < 1.0 || missing < 1.0 {
        return None;
    }
    Some(missing / secs * SAFETY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers of an answer.
    fn headers(limit: u32, remaining: u32, reset: u64) -> RateLimitSnapshot {
        RateLimitSnapshot {
            limit,
            remaining,
            reset,
        }
    }

    /// Asserts that the estimate is `want` points (within 0.1).
    fn assert_points(rl: &RateLimiter, want: f64) {
        let p = rl.lock().points.unwrap();
        assert!((p - want).abs() <= 0.1, "{p}, not {want}");
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn probes_with_one_request_when_nothing_is_known() {
        let rl = RateLimiter::new(None);
        let t = rl.acquire(far()).await.unwrap();
        // A second reservation waits for the first answer.
        let quick = Instant::now() + Duration::from_millis(30);
        assert!(rl.acquire(quick).await.is_none());
        let reset = epoch_now() as u64 + 60;
        rl.observe(t, Heard::Answer(Some(headers(800, 799, reset))), false);
        for _ in 0..799 {
            assert!(rl.acquire(far()).await.is_some());
        }
        assert!(rl.acquire(quick).await.is_none());
        assert_eq!(rl.last_seen().unwrap().remaining, 799);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn never_reserves_more_than_the_bucket_holds() {
        let reset = epoch_now() as u64 + 60;
        let snap = headers(800, 3, reset);
        let rl = RateLimiter::new(Some((snap, SystemTime::now())));
        for _ in 0..3 {
            assert!(rl.acquire(far()).await.is_some());
        }
        // 797 points come back over ~60 s: about 12.5 per second (estimated slow), so the next one is ~80 ms away.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(rl.acquire(soon).await.is_none());
        let t = Instant::now();
        assert!(rl.acquire(far()).await.is_some());
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(20) && waited < Duration::from_millis(400),
            "{waited:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_429_pauses_until_reset() {
        let rl = RateLimiter::new(None);
        let t = rl.acquire(far()).await.unwrap();
        // The headers say 500 points are left: only the 429 itself can hold
        // the next request back, until the reset (1 to 2 s from now).
        let reset = epoch_now() as u64 + 2;
        rl.observe(t, Heard::Answer(Some(headers(800, 500, reset))), true);
        let paused = Instant::now();
        assert!(
            rl.acquire(paused + Duration::from_millis(900))
                .await
                .is_none(),
            "a request within a second of a 429"
        );
        assert!(rl.acquire(far()).await.is_some());
        let (waited, at) = (paused.elapsed(), epoch_now());
        assert!(
            at >= reset as f64 - 0.02,
            "sent {:.3} s before the reset",
            reset as f64 - at
        );
        // and not much later (loose: a loaded machine wakes sleepers late)
        assert!(
            at < reset as f64 + 3.0 && waited < Duration::from_secs(5),
            "sent {:.3} s after the reset ({waited:?} after the 429)",
            at - reset as f64
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_raises_the_estimate_only_to_what_it_makes_certain() {
        let reset = epoch_now() as u64 + 30;
        let snap = |remaining| headers(800, remaining, reset);
        let rl = RateLimiter::new(Some((snap(10), SystemTime::now())));
        let a = rl.acquire(far()).await.unwrap();
        let b = rl.acquire(far()).await.unwrap();
        // b says 700 while a is in flight: a may not be counted yet, so 699 are certain.
        rl.observe(b, Heard::Answer(Some(snap(700))), false);
        assert_points(&rl, 699.0);
        // a, counted later (another client of the bucket spent points meanwhile),
        // lowers it.
        rl.observe(a, Heard::Answer(Some(snap(5))), false);
        assert_points(&rl, 5.0);
        // d answers before c with more than the estimate: c is still in flight.
        let c = rl.acquire(far()).await.unwrap();
        let d = rl.acquire(far()).await.unwrap();
        rl.observe(d, Heard::Answer(Some(snap(100))), false);
        assert_points(&rl, 99.0);
        // c finished after d, so d may have reached the server after c: c's 50
        // leaves 49 certain, and the estimate takes c's own reading, 50.
        rl.observe(c, Heard::Answer(Some(snap(50))), false);
        assert_points(&rl, 50.0);
        // A request alone in flight: its answer counts everything, and sets it.
        let e = rl.acquire(far()).await.unwrap();
        rl.observe(e, Heard::Answer(Some(snap(700))), false);
        assert_points(&rl, 700.0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_answered_out_of_order_leaves_no_debt_behind() {
        // 100 requests from a bucket of 200 holding 100; the server counts them in
        // order and refilled 10 points meanwhile (request j leaves 110 - j), but
        // the answers come back in reverse order. Each answer alone could leave
        // 99 requests uncounted; once all are in, 10 points are certain.
        let reset = epoch_now() as u64 + 30;
        let snap = |remaining| headers(200, remaining, reset);
        let rl = RateLimiter::new(Some((snap(100), SystemTime::now())));
        let tickets = reserve(&rl, 100).await;
        for (j, t) in tickets.into_iter().enumerate().rev() {
            rl.observe(t, Heard::Answer(Some(snap(110 - (j as u32 + 1)))), false);
        }
        assert_points(&rl, 10.0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_overtaken_on_the_server_cannot_overdraw() {
        // Two requests with one point left: t2 is processed first (remaining 1),
        // then t1 (remaining 0); t1's answer arrives first.
        let reset = epoch_now() as u64 + 30;
        let snap = |remaining| headers(800, remaining, reset);
        let rl = RateLimiter::new(Some((snap(2), SystemTime::now())));
        let t1 = rl.acquire(far()).await.unwrap();
        let t2 = rl.acquire(far()).await.unwrap();
        rl.observe(t1, Heard::Answer(Some(snap(0))), false);
        rl.observe(t2, Heard::Answer(Some(snap(1))), false);
        let p = rl.lock().points.unwrap();
        assert!(p < 0.5, "the server holds no point, the estimate says {p}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_429_without_headers_pauses_too() {
        let rl = RateLimiter::new(Some((
            headers(800, 100, epoch_now() as u64 + 60),
            SystemTime::now(),
        )));
        let t = rl.acquire(far()).await.unwrap();
        rl.observe(t, Heard::Answer(None), true);
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(rl.acquire(soon).await.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_without_an_answer_may_still_be_counted() {
        let reset = epoch_now() as u64 + 30;
        let rl = RateLimiter::new(Some((headers(800, 10, reset), SystemTime::now())));
        // a times out; Twitch may count it after it answers b, sent alone later.
        let a = rl.acquire(far()).await.unwrap();
        rl.observe(a, Heard::Nothing, false);
        let b = rl.acquire(far()).await.unwrap();
        rl.observe(b, Heard::Answer(Some(headers(800, 100, reset))), false);
        assert_points(&rl, 99.0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_without_headers_fall_back_to_the_documented_bucket() {
        // A Helix that sends no Ratelimit-* headers: after the first answer,
        // requests go out together, not one at a time.
        let rl = RateLimiter::new(None);
        let t = rl.acquire(far()).await.unwrap();
        rl.observe(t, Heard::Answer(None), false);
        let quick = Instant::now() + Duration::from_millis(30);
        for _ in 0..10 {
            assert!(rl.acquire(quick).await.is_some());
        }
        assert_points(&rl, f64::from(DOCUMENTED_BUCKET_LIMIT) - 11.0);
        assert_eq!(rl.last_seen(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn error_answers_without_headers_do_not_lower_the_estimate() {
        // 50 answers without headers (say, 500s), then one with them, sent alone:
        // they were answered, so Twitch cannot count them later.
        let reset = epoch_now() as u64 + 60;
        let rl = RateLimiter::new(Some((headers(800, 800, reset), SystemTime::now())));
        for _ in 0..50 {
            let t = rl.acquire(far()).await.unwrap();
            rl.observe(t, Heard::Answer(None), false);
        }
        let t = rl.acquire(far()).await.unwrap();
        rl.observe(t, Heard::Answer(Some(headers(800, 749, reset))), false);
        assert_points(&rl, 749.0);
        let t = rl.acquire(far()).await.unwrap();
        rl.observe(t, Heard::Answer(Some(headers(800, 748, reset))), false);
        assert_points(&rl, 748.0);
    }

    #[test]
    fn implausible_headers_are_not_believed() {
        let now = epoch_now() as u64;
        let with = |limit: &str, remaining: &str, reset: u64| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("Ratelimit-Limit", limit.parse().unwrap());
            h.insert("Ratelimit-Remaining", remaining.parse().unwrap());
            h.insert("Ratelimit-Reset", reset.to_string().parse().unwrap());
            RateLimitSnapshot::from_headers(&h)
        };
        assert_eq!(with("800", "0", now + 60), Some(headers(800, 0, now + 60)));
        // a bucket of nothing, one that wraps to nothing, or past belief
        assert_eq!(with("0", "0", now + 60), None);
        assert_eq!(with("4294967296", "0", now + 60), None);
        assert_eq!(with("4000000000", "3000000000", now + 60), None);
        // more left than the bucket holds
        assert_eq!(with("800", "900", now + 60), None);
        // a reset ten years ahead, or out of any timestamp's range
        assert_eq!(with("800", "0", now + 315_360_000), None);
        assert_eq!(with("800", "0", 99_999_999_999_999), None);
        // rate_from cannot overflow, whatever it is given
        assert_eq!(
            rate_from(&headers(u32::MAX, u32::MAX, now + 60), now as f64),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_implausible_snapshot_from_the_last_run_is_forgotten() {
        // what a run stored before headers were checked: an empty bucket of
        // 0 points, or one that refills in ten years
        for snap in [
            headers(0, 0, epoch_now() as u64 + 60),
            headers(800, 0, epoch_now() as u64 + 315_360_000),
        ] {
            let rl = RateLimiter::new(Some((snap, SystemTime::now())));
            assert_eq!(rl.lock().points, None, "{snap:?}");
            assert!(rl.acquire(far()).await.is_some(), "a probe goes out");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_last_runs_headers_are_not_reported_as_this_passs() {
        // A pass whose answers carry no headers reports none (a run stored
        // and reported the last run's snapshot again, as if just heard).
        let snap = headers(800, 797, epoch_now() as u64 + 60);
        let rl = RateLimiter::new(Some((snap, SystemTime::now())));
        let t = rl.acquire(far()).await.unwrap();
        rl.observe(t, Heard::Answer(None), false);
        assert_eq!(rl.last_seen(), None);
        let t = rl.acquire(far()).await.unwrap();
        let fresh = headers(800, 790, epoch_now() as u64 + 60);
        rl.observe(t, Heard::Answer(Some(fresh)), false);
        assert_eq!(rl.last_seen(), Some(fresh));
    }

    #[test]
    fn a_full_bucket_from_an_old_run_is_full_again() {
        let snap = headers(800, 0, epoch_now() as u64 - 5);
        let rl = RateLimiter::new(Some((snap, SystemTime::now() - Duration::from_secs(70))));
        assert_eq!(rl.lock().points, Some(800.0));
    }

    #[test]
    fn reads_headers_case_insensitively() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("Ratelimit-Limit", "800".parse().unwrap());
        h.insert("ratelimit-remaining", "12".parse().unwrap());
        h.insert("RATELIMIT-RESET", "1700000000".parse().unwrap());
        assert_eq!(
            RateLimitSnapshot::from_headers(&h),
            Some(headers(800, 12, 1_700_000_000))
        );
        h.remove("ratelimit-reset");
        assert_eq!(RateLimitSnapshot::from_headers(&h), None);
    }

    #[test]
    fn refill_rate_is_read_only_from_a_mostly_empty_bucket_and_errs_slow() {
        let now = 1_000_000.0;
        let snap = headers;
        // 800 a minute, empty bucket: reset 60 s away
        let r = rate_from(&snap(800, 0, 1_000_060), now).unwrap();
        assert!(r <= 800.0 / 60.0 && r > 800.0 / 60.0 * 0.9, "{r}");
        // half empty, 2 s to go: 2.5 points a second, less the point rounding may hide
        let r = rate_from(&snap(10, 5, 1_000_002), now).unwrap();
        assert!(r < 2.0 && r > 1.9, "{r}");
        // nearly full, or under a second to go: too coarse to use
        assert_eq!(rate_from(&snap(5, 4, 1_000_001), now + 0.9), None);
        assert_eq!(rate_from(&snap(800, 0, 1_000_000), now - 0.5), None);
        assert_eq!(rate_from(&snap(800, 800, 1_000_000), now), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_tightest_refill_reading_of_a_pass_is_kept() {
        let now = epoch_now();
        let start = headers(800, 400, now as u64 + 60);
        let rl = RateLimiter::new(Some((start, SystemTime::now())));
        let a = rl.acquire(far()).await.unwrap();
        let b = rl.acquire(far()).await.unwrap();
        let c = rl.acquire(far()).await.unwrap();
        let rate = || rl.lock().per_second;
        // 601 points missing, the bucket full 10-11 s from now: about 60 a second.
        let snap = |reset: f64| headers(800, 199, reset.ceil() as u64);
        rl.observe(a, Heard::Answer(Some(snap(now + 10.0))), false);
        let first = rate();
        assert!(first > 50.0 && first <= 60.0, "{first}");
        // A later reading whose reset was rounded up further says less: ignored.
        rl.observe(b, Heard::Answer(Some(snap(now + 11.5))), false);
        assert_eq!(rate(), first);
        // A tighter one is kept.
        rl.observe(c, Heard::Answer(Some(snap(now + 9.5))), false);
        assert!(rate() > first, "{} <= {first}", rate());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn in_flight_requests_are_a_debt_paid_by_refill() {
        // Bucket empty per the last answer, 3 requests still in flight: the next send
        // waits for 4 points of refill (over 0.4 s), not 1.
        // reset 2-3 s away: 20 points in that time is 6.5-10 a second, shaded
        let reset = (epoch_now() + 2.0).ceil() as u64;
        let rl = RateLimiter::new(Some((headers(20, 4, reset), SystemTime::now())));
        let tickets: Vec<Ticket> = reserve(&rl, 4).await;
        rl.observe(
            tickets[0],
            Heard::Answer(Some(headers(20, 0, reset))),
            false,
        );
        let p = rl.lock().points.unwrap();
        assert!((-3.01..=-2.9).contains(&p), "{p}");
        let t = Instant::now();
        assert!(rl.acquire(far()).await.is_some());
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
    }

    async fn reserve(rl: &RateLimiter, n: usize) -> Vec<Ticket> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(rl.acquire(far()).await.unwrap());
        }
        v
    }
}
