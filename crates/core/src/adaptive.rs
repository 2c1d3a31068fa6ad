//! Adaptive polling: which channels a run checks, within a request budget.
//!
//! Each channel has a class from its state — live with many viewers (`hot`),
//! live, offline, or offline and covered by EventSub — and each class a
//! polling interval, divided by `1 + priority` for channels an app marks as
//! important. A run checks the channels that are due (their last check is at
//! least the interval minus half a run period ago), most overdue first, where
//! "overdue" is how late a channel would be if left to the next run — the age
//! of its last check plus one run period, divided by its interval — and at
//! most the budget: a share of the rate-limit bucket.
//!
//! Ordering by that ratio is what keeps it fair: when the budget does not
//! cover every due channel, every class falls behind by the same factor of its
//! interval instead of one class starving (a channel never checked comes
//! first). And a run looks ahead: when checks that fall due together would
//! overflow a later run (every channel starts never checked, so the first
//! runs check them in a few large groups that fall due together again each
//! interval), it checks some channels before they are due, just enough to
//! keep every run ahead within the budget less a reserve ([`plan`]). Times
//! are seconds (f64, any epoch): tests and the simulation run on simulated
//! clocks.

use crate::config::defaults;
use crate::ratelimit::DOCUMENTED_PERIOD_SECS as BUCKET_REFILL_SECS;
use serde::Serialize;

/// A channel's polling class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PollClass {
    /// Live with at least `hot_viewers` viewers.
    Hot,
    /// Live with fewer.
    Live,
    /// Not live.
    Offline,
    /// Not live, and EventSub reports its online/offline events: a slow
    /// safety sweep is enough.
    Covered,
}

impl PollClass {
    pub const ALL: [PollClass; 4] = [
        PollClass::Hot,
        PollClass::Live,
        PollClass::Offline,
        PollClass::Covered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PollClass::Hot => "hot",
            PollClass::Live => "live",
            PollClass::Offline => "offline",
            PollClass::Covered => "covered",
        }
    }
}

/// The polling policy (the `twitch_sync.poll_*` settings).
#[derive(Clone, Debug, PartialEq)]
pub struct PollPolicy {
    pub hot_viewers: u32,
    pub hot_interval: f64,
    pub live_interval: f64,
    pub offline_interval: f64,
    pub covered_interval: f64,
    /// The share of the rate-limit bucket one run may spend (0..=1).
    pub budget_share: f64,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            hot_viewers: defaults::POLL_HOT_VIEWERS as u32,
            hot_interval: f64::from(defaults::POLL_HOT_INTERVAL_SECS),
            live_interval: f64::from(defaults::POLL_LIVE_INTERVAL_SECS),
            offline_interval: f64::from(defaults::POLL_OFFLINE_INTERVAL_SECS),
            covered_interval: f64::from(defaults::POLL_COVERED_INTERVAL_SECS),
            budget_share: defaults::POLL_BUDGET_SHARE,
        }
    }
}

/// What the planner knows of one channel.
#[derive(Clone, Debug, PartialEq)]
pub struct PolledChannel {
    /// Viewers of its live stream; None when not live.
    pub live_viewers: Option<u32>,
    /// EventSub covers its online and offline events.
    pub covered: bool,
    /// 0 (default) to 10: the interval is divided by 1 + priority.
    pub priority: u8,
    /// Its last successful check; None if never.
    pub checked_at: Option<f64>,
}

impl PollPolicy {
    pub fn class(&self, c: &PolledChannel) -> PollClass {
        match (c.live_viewers, c.covered) {
            (Some(v), _) if v >= self.hot_viewers => PollClass::Hot,
            (Some(_), _) => PollClass::Live,
            (None, true) => PollClass::Covered,
            (None, false) => PollClass::Offline,
        }
    }

    /// The interval of a class for a channel of `priority`, in seconds.
    pub fn interval(&self, class: PollClass, priority: u8) -> f64 {
        let base = match class {
            PollClass::Hot => self.hot_interval,
            PollClass::Live => self.live_interval,
            PollClass::Offline => self.offline_interval,
            PollClass::Covered => self.covered_interval,
        };
        base.max(1.0) / (1.0 + f64::from(priority.min(10)))
    }

    /// Requests one run may send (at least one): the budget share of what the
    /// bucket refills in `run_period` seconds. Twitch refills the bucket's
    /// limit over a minute, so runs a minute or more apart may each spend the
    /// share of the whole bucket, and runs 30 s apart half of it each: runs
    /// closer than a minute together never spend more than the share of the
    /// bucket a minute, and the rest stays with other apps on the client id.
    pub fn budget_requests(&self, bucket_limit: u32, run_period: f64) -> usize {
        let refilled = f64::from(bucket_limit) * (run_period / BUCKET_REFILL_SECS).clamp(0.0, 1.0);
        ((refilled * self.budget_share.clamp(0.0, 1.0)).floor() as usize).max(1)
    }
}

/// What a run checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Indexes into the channels: the due ones, most overdue first, then
    /// those checked ahead of time to level the load ([`plan`], step 2).
    pub chosen: Vec<usize>,
    /// Channels that were due (chosen, or left for a later run by the budget).
    pub due: usize,
}

/// How many runs ahead the planner looks to level its load (a day of
/// one-minute runs; longer intervals are levelled over this window).
pub const LOOKAHEAD_RUNS: usize = 1_440;

/// The channels a run at `now` checks, at most `max_ids`. `run_period` is the
/// time between runs: a channel is due when its last check is at least its
/// interval minus half a period old, so that a check never waits a whole
/// period past its interval.
///
/// 1. The due channels, most overdue first: ranked by how late each would be
///    if left to the next run, (age + period) / interval (never checked:
///    first). When they exceed `max_ids`, the least overdue wait, so every
///    class falls behind by the same factor of its interval.
/// 2. Levelling, when the due channels fit: checks that fall due together
///    (every channel starts never checked, so the first runs check them in a
///    few large groups, whose checks fall due together again each interval)
///    would overflow some later runs while others have budget left, and the
///    ranking would then leave the longest intervals (offline channels) a run
///    late. So the run looks ahead — up to the longest interval, in runs, at
///    most [`LOOKAHEAD_RUNS`] — counting the checks falling due in each run
///    (every channel's later checks too, at its interval), and checks
///    however many it must so that the runs after it, checking at most the
///    budget less [`LEVELLING_RESERVE`] each (or the mean load ahead, if more),
///    can take every check when it falls due (earliest due first): max over h
///    of (checks due in the next h runs, this one included) − (h − 1) × that
///    capacity. The difference is made up with channels not yet due: first
///    those due within the stretch that h is (the most crowded ahead) whose
///    next check, made now, falls after it, as each takes a check out of it
///    for good; then soonest due (then the nearest to their interval). A
///    channel checked early keeps its earlier phase, so levelling is paid
///    for once per group, not every interval; when the runs ahead fit,
///    nothing is checked early, and neither when the due channels alone
///    fill the budget.
pub fn plan(
    policy: &PollPolicy,
    channels: &[PolledChannel],
    now: f64,
    run_period: f64,
    max_ids: usize,
) -> Plan {
    let period = run_period.max(0.0);
    let slack = period / 2.0;
    // Runs from now: when each channel falls due (0: now) and, once checked,
    // how many runs until it is due again.
    let runs = |secs: f64| -> usize {
        if period > 0.0 {
            (secs / period - 0.5)
                .ceil()
                .clamp(0.0, LOOKAHEAD_RUNS as f64) as usize
        } else {
            0
        }
    };
    // When a channel falls due, in runs from now (0: due), and its interval.
    let when = |c: &PolledChannel| -> (usize, f64) {
        let interval = policy.interval(policy.class(c), c.priority);
        let in_runs = match c.checked_at {
            None => 0,
            Some(at) if now - at >= interval - slack => 0,
            Some(at) => runs(interval - (now - at)).max(1),
        };
        (in_runs, interval)
    };
    let mut due: Vec<(f64, usize)> = Vec::new();
    // Per class and priority (which set the interval): the runs between its
    // checks, and its channels by runs until they are due.
    let mut load: Vec<(usize, Vec<usize>)> = Vec::with_capacity(PollClass::ALL.len() * 11);
    for class in PollClass::ALL {
        for priority in 0..=10 {
            load.push((runs(policy.interval(class, priority)).max(1), Vec::new()));
        }
    }
    // Each channel's (runs until due, interval), for levelling below too.
    let whens: Vec<(usize, f64)> = channels.iter().map(when).collect();
    for (i, (c, &(in_runs, interval))) in channels.iter().zip(&whens).enumerate() {
        if in_runs == 0 {
            // ranked by how late it would be if left to the next run (never
            // checked: first)
            let rank = c
                .checked_at
                .map_or(f64::INFINITY, |at| (now - at + period) / interval);
            due.push((rank, i));
        }
        if period > 0.0 && in_runs < LOOKAHEAD_RUNS {
            let group = &mut load[policy.class(c) as usize * 11 + usize::from(c.priority.min(10))];
            if group.1.len() <= in_runs {
                group.1.resize(in_runs + 1, 0);
            }
            group.1[in_runs] += 1;
        }
    }
    let due_count = due.len();
    let by_rank = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if due.len() > max_ids {
        // Only the most overdue max_ids are needed: partial selection, then sort those.
        due.select_nth_unstable_by(max_ids, by_rank);
        due.truncate(max_ids);
    }
    due.sort_unstable_by(by_rank);
    let mut chosen: Vec<usize> = due.into_iter().map(|(_, i)| i).collect();

    let (target, window) = levelled_load(&load, max_ids);
    let target = target.min(max_ids);
    if target > chosen.len() {
        // Not due yet: (whether checking it now leaves a check in the runs
        // up to `window`, the most crowded stretch ahead, runs until due,
        // share of its interval already gone, index). First the channels due
        // within that stretch whose next check, checked now, falls after it:
        // each takes one check out of it for good (a channel due again
        // within it, such as a hot one due every few runs, would only be
        // checked early every run while the crowd stays where it is); then
        // soonest due, then the nearest to its interval.
        let mut later: Vec<(bool, usize, f64, usize)> = channels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let (in_runs, interval) = whens[i];
                let at = c.checked_at?;
                let stays = in_runs > window || runs(interval).max(1) <= window;
                (in_runs > 0).then_some((stays, in_runs, (now - at) / interval, i))
            })
            .collect();
        let extra = (target - chosen.len()).min(later.len());
        let soonest = |a: &(bool, usize, f64, usize), b: &(bool, usize, f64, usize)| {
            a.0.cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(b.2.total_cmp(&a.2))
                .then(a.3.cmp(&b.3))
        };
        if later.len() > extra {
            later.select_nth_unstable_by(extra, soonest);
            later.truncate(extra);
        }
        later.sort_unstable_by(soonest);
        chosen.extend(later.into_iter().map(|(_, _, _, i)| i));
    }
    Plan {
        chosen,
        due: due_count,
    }
}

/// The share of the budget levelling keeps free in the runs ahead, for what
/// cannot be foreseen (streams starting and ending change classes).
pub const LEVELLING_RESERVE: f64 = 0.05;

/// How many channels this run must check so that the runs ahead, checking
/// at most `plan_capacity` each, meet every check at its interval (earliest
/// due first), where `plan_capacity` is `capacity` less the
/// [`LEVELLING_RESERVE`], or the mean load of the runs ahead when that is
/// more (a load the budget cannot carry is not levelled below its mean):
/// max over h of (checks due in runs 0..h) − (h − 1) × `plan_capacity`.
/// `load`: per interval, the runs between checks and the channels by runs
/// until they are due; a channel's later checks count too. Also returns the
/// last run of the stretch that needs it (the h it is the max at).
fn levelled_load(load: &[(usize, Vec<usize>)], capacity: usize) -> (usize, usize) {
    let horizon = load
        .iter()
        .filter(|(_, by_next)| !by_next.is_empty())
        .map(|(cycle, by_next)| (*cycle).max(by_next.len()))
        .max()
        .unwrap_or(0)
        .min(LOOKAHEAD_RUNS);
    let mut per_run = vec![0usize; horizon];
    for (cycle, by_next) in load {
        for (next, &n) in by_next.iter().enumerate().filter(|(_, n)| **n > 0) {
            for t in (next..horizon).step_by(*cycle) {
                per_run[t] += n;
            }
        }
    }
    let total: usize = per_run.iter().sum();
    let plan_capacity =
        (capacity as f64 * (1.0 - LEVELLING_RESERVE)).max(total as f64 / horizon.max(1) as f64);
    let (mut sum, mut need, mut window) = (0usize, 0.0f64, 0usize);
    for (h, n) in per_run.iter().enumerate() {
        sum += n;
        let here = sum as f64 - h as f64 * plan_capacity;
        if here > need {
            (need, window) = (here, h);
        }
    }
    (need.ceil() as usize, window)
}

/// Staleness of one class: how long ago its channels were last checked
/// (seconds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassStaleness {
    pub class: PollClass,
    pub channels: usize,
    /// Channels never checked (not in the percentiles).
    pub never_checked: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// What adaptive polling did in one run: the `polling` key of run()'s result
/// and of twitch_sync.runs, read by status() and metrics(). Staleness is as
/// it was when the run began, before its checks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PollingReport {
    /// Requests this run could spend (the budget share of what the bucket
    /// refills in `period_secs`, at most of the whole bucket).
    pub budget_requests: usize,
    /// Seconds since the previous run began (60 for the first run), as the
    /// budget and the due times reckon the run period.
    pub period_secs: f64,
    pub due: usize,
    /// Channels chosen: the due ones within the budget, and any checked
    /// before they are due to keep the runs ahead within it (so it may
    /// exceed `due`).
    pub chosen: usize,
    pub classes: Vec<ClassStaleness>,
}

/// Staleness per class at `now` (classes with no channel are left out).
pub fn staleness(policy: &PollPolicy, channels: &[PolledChannel], now: f64) -> Vec<ClassStaleness> {
    PollClass::ALL
        .iter()
        .filter_map(|&class| {
            let of_class: Vec<&PolledChannel> = channels
                .iter()
                .filter(|c| policy.class(c) == class)
                .collect();
            if of_class.is_empty() {
                return None;
            }
            let mut ages: Vec<f64> = of_class
                .iter()
                .filter_map(|c| c.checked_at.map(|at| (now - at).max(0.0)))
                .collect();
            ages.sort_unstable_by(f64::total_cmp);
            let pct = |p: f64| -> f64 {
                if ages.is_empty() {
                    return 0.0;
                }
                let rank = ((p * ages.len() as f64).ceil() as usize).clamp(1, ages.len());
                ages[rank - 1]
            };
            Some(ClassStaleness {
                class,
                channels: of_class.len(),
                never_checked: of_class.len() - ages.len(),
                p50: pct(0.50),
                p95: pct(0.95),
                max: ages.last().copied().unwrap_or(0.0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64 as Rng;

    fn ch(live: Option<u32>, checked_at: Option<f64>) -> PolledChannel {
        PolledChannel {
            live_viewers: live,
            covered: false,
            priority: 0,
            checked_at,
        }
    }

    #[test]
    fn classes_and_intervals_follow_the_policy() {
        let p = PollPolicy::default();
        assert_eq!(p.class(&ch(Some(1000), None)), PollClass::Hot);
        assert_eq!(p.class(&ch(Some(999), None)), PollClass::Live);
        assert_eq!(p.class(&ch(None, None)), PollClass::Offline);
        let covered = PolledChannel {
            covered: true,
            ..ch(None, None)
        };
        assert_eq!(p.class(&covered), PollClass::Covered);
        // covered only matters while offline
        let covered_live = PolledChannel {
            covered: true,
            ..ch(Some(5), None)
        };
        assert_eq!(p.class(&covered_live), PollClass::Live);
        assert_eq!(p.interval(PollClass::Offline, 0), 600.0);
        assert_eq!(p.interval(PollClass::Offline, 1), 300.0);
        assert_eq!(p.interval(PollClass::Hot, 0), 60.0);
        assert_eq!(p.budget_requests(800, 60.0), 760);
        assert_eq!(
            p.budget_requests(800, 600.0),
            760,
            "the bucket holds a minute's refill"
        );
        assert_eq!(
            p.budget_requests(800, 30.0),
            380,
            "runs 30 s apart: half a minute's refill each"
        );
        assert_eq!(p.budget_requests(800, 1.0), 12);
        assert_eq!(p.budget_requests(0, 60.0), 1);
    }

    #[test]
    fn a_run_checks_due_channels_most_overdue_first_within_the_budget() {
        let p = PollPolicy::default();
        let now = 10_000.0;
        let channels = vec![
            ch(None, Some(now - 100.0)),      // offline, not due (600 s)
            ch(None, Some(now - 1200.0)),     // offline, 2x overdue
            ch(Some(2000), Some(now - 90.0)), // hot, 1.5x
            ch(Some(10), Some(now - 115.0)),  // live, due (within half a period of 120 s)
            ch(None, None),                   // never checked: first
            ch(Some(10), Some(now - 30.0)),   // live, not due
        ];
        // never checked; hot (90 + 60) / 60 = 2.5; offline (1200 + 60) / 600 =
        // 2.1; live (115 + 60) / 120 = 1.46
        assert_eq!(plan(&p, &channels, now, 60.0, 100).chosen, vec![4, 2, 1, 3]);
        assert_eq!(plan(&p, &channels, now, 60.0, 2).due, 4);
        assert_eq!(plan(&p, &channels, now, 60.0, 2).chosen, vec![4, 2]);
        // priority 5 makes the first one due (600 / 6 = 100 s)
        let mut important = channels.clone();
        important[0].priority = 5;
        assert!(plan(&p, &important, now, 60.0, 100).chosen.contains(&0));
    }

    /// What a simulation saw (after the first two offline intervals).
    struct Seen {
        /// Per class, the worst staleness right after a run's checks.
        after: std::collections::BTreeMap<PollClass, f64>,
        /// Per class, the worst age of a channel's last check as a run
        /// began (before its checks): how late a check came.
        before: std::collections::BTreeMap<PollClass, f64>,
        /// The most requests any run used.
        most: usize,
        /// Requests per run, on average.
        mean: f64,
    }

    /// A world of `n` channels, `live` of them live (1 in 10 of those hot),
    /// that changes a little every run; runs every `period` seconds (with
    /// ±5% jitter) for `horizon` seconds with `budget` requests each; what
    /// it saw after the first two offline intervals.
    fn simulate(
        p: &PollPolicy,
        n: usize,
        live: usize,
        period: f64,
        horizon: f64,
        budget: usize,
        seed: u64,
    ) -> Seen {
        let mut rng = Rng(seed);
        let mut truth: Vec<Option<u32>> = (0..n)
            .map(|i| {
                (i < live).then(|| {
                    if i % 10 == 0 {
                        1000 + (i % 5000) as u32
                    } else {
                        10
                    }
                })
            })
            .collect();
        let mut known: Vec<PolledChannel> = (0..n).map(|_| ch(None, None)).collect();
        let mut worst = std::collections::BTreeMap::new();
        let mut before = std::collections::BTreeMap::new();
        let (mut most, mut total, mut runs) = (0, 0, 0);
        let mut t = 0.0;
        while t < horizon {
            // churn: a few streams end, as many start
            for _ in 0..(live / 500).max(1) {
                let a = rng.below(n);
                let b = rng.below(n);
                if truth[a].is_some() && truth[b].is_none() {
                    truth.swap(a, b);
                }
            }
            let measured = t >= 2.0 * p.offline_interval;
            if measured {
                for s in staleness(p, &known, t) {
                    let w = before.entry(s.class).or_insert(0.0f64);
                    *w = w.max(s.max);
                }
            }
            let chosen = plan(p, &known, t, period, budget * 100).chosen;
            most = most.max(chosen.len().div_ceil(100));
            total += chosen.len().div_ceil(100);
            runs += 1;
            for i in chosen {
                known[i].live_viewers = truth[i];
                known[i].checked_at = Some(t);
            }
            if measured {
                for s in staleness(p, &known, t) {
                    let w = worst.entry(s.class).or_insert(0.0f64);
                    *w = w.max(s.max);
                }
            }
            t += period * (0.95 + 0.1 * rng.unit());
        }
        Seen {
            after: worst,
            before,
            most,
            mean: total as f64 / runs.max(1) as f64,
        }
    }

    #[test]
    fn with_enough_budget_every_channel_is_checked_within_its_interval_plus_one_run() {
        let p = PollPolicy::default();
        // 5,000 channels, 500 live: needs about 50 hot + 450/2 live + 4,500/10
        // offline ids a minute = 7.3 requests; give it 10
        let Seen {
            after: worst, most, ..
        } = simulate(&p, 5_000, 500, 60.0, 6.0 * 3600.0, 10, 7);
        assert!(most <= 10, "budget exceeded: {most}");
        for (class, w) in &worst {
            let limit = p.interval(*class, 0) + 60.0 * 1.05;
            assert!(*w <= limit, "{class:?}: worst staleness {w} s > {limit} s");
        }
        assert!(worst.contains_key(&PollClass::Hot) && worst.contains_key(&PollClass::Offline));
    }

    #[test]
    fn when_the_budget_binds_staleness_degrades_evenly_and_no_class_starves() {
        let p = PollPolicy::default();
        // the same world with half the budget it needs
        let Seen {
            after: worst, most, ..
        } = simulate(&p, 5_000, 500, 60.0, 6.0 * 3600.0, 4, 11);
        assert!(most <= 4, "budget exceeded: {most}");
        let ratios: Vec<f64> = worst
            .iter()
            .map(|(class, w)| w / p.interval(*class, 0))
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        // every class is late, by comparable factors of its interval
        assert!(
            lo > 1.0,
            "someone is on time with half the budget: {worst:?}"
        );
        assert!(hi / lo < 3.0, "uneven: {worst:?}");
        // and nobody starves: every channel was checked within a few intervals
        assert!(hi < 6.0, "starving: {worst:?}");
    }

    #[test]
    fn a_tight_budget_that_suffices_keeps_every_check_on_time_over_a_long_horizon() {
        let p = PollPolicy::default();
        // 20,000 channels, 2,000 live: needs 200 hot + 1,800 / 2 live +
        // 18,000 / 10 offline = 2,900 ids a run (29 requests); 31 is 94% used.
        // Every channel starts never checked, so the first runs check them
        // in a few large groups whose checks fall due together again.
        let (period, budget) = (60.0, 31);
        let seen = simulate(&p, 20_000, 2_000, period, 12.0 * 3600.0, budget, 3);
        assert!(seen.most <= budget, "budget exceeded: {}", seen.most);
        // A channel is due once its age reaches its interval minus half a
        // period, so on time means checked at the first run after that:
        // never older than its interval plus half a (jittered) period.
        for class in [PollClass::Hot, PollClass::Live, PollClass::Offline] {
            let w = seen.before[&class];
            let limit = p.interval(class, 0) + 0.55 * period;
            assert!(
                w <= limit,
                "{class:?}: checked at age {w} s > {limit} s: {:?}",
                seen.before
            );
        }
        // and no more than the checks need (29 requests, a little for churn)
        assert!(
            seen.mean <= 30.0,
            "too many early checks: {} requests a run",
            seen.mean
        );
    }

    #[test]
    fn checks_that_fall_due_together_are_spread_ahead_of_time() {
        let p = PollPolicy::default();
        // 1,000 offline channels all checked at 0; 150 ids a run, one run a
        // minute: at 600 s all would be due at once. They are spread over
        // the runs before, as late as they can be while no run ahead needs
        // more than the budget less the reserve (142.5), and none is late.
        let mut channels: Vec<PolledChannel> = (0..1_000).map(|_| ch(None, Some(0.0))).collect();
        let mut per_run = Vec::new();
        for run in 1..=40 {
            let now = f64::from(run) * 60.0;
            for c in &channels {
                let age = now - c.checked_at.unwrap();
                assert!(age <= 600.0, "checked late: {age} s at {now}");
            }
            let chosen = plan(&p, &channels, now, 60.0, 150).chosen;
            assert!(chosen.len() <= 150);
            for &i in &chosen {
                channels[i].checked_at = Some(now);
            }
            per_run.push(chosen.len());
        }
        assert!(per_run.iter().all(|&n| n <= 143), "{per_run:?}");
        // the spreading starts as soon as it must (1,000 − 7 × 142.5 = 2.5
        // at 180 s), and every channel is checked once in every 10 runs
        assert_eq!(per_run[..4], [0, 0, 3, 142], "{per_run:?}");
        for cycle in per_run.chunks(10) {
            assert_eq!(cycle.iter().sum::<usize>(), 1_000, "{per_run:?}");
        }
    }

    #[test]
    fn levelling_checks_early_the_channels_whose_checks_fall_due_together() {
        // 20 hot, 80 live and 1,900 offline channels, intervals 6, 12 and 30
        // s, all checked at 0 (by fixed polling, before adaptive polling was
        // turned on), then a run every 2 s checking at most 100: the offline
        // checks fall due together at 30 s. Levelling must spread those, not
        // spend the runs before re-checking the hot and live channels that
        // are due again in a run or two anyway (they took every early check,
        // and the offline ones went to twice their interval).
        let p = PollPolicy {
            hot_interval: 6.0,
            live_interval: 12.0,
            offline_interval: 30.0,
            ..PollPolicy::default()
        };
        let mut channels: Vec<PolledChannel> = (0..2_000)
            .map(|i| {
                let viewers = match i {
                    0..20 => Some(5_000),
                    20..100 => Some(10),
                    _ => None,
                };
                ch(viewers, Some(0.0))
            })
            .collect();
        let (mut early_short, mut worst_offline) = (0usize, 0.0f64);
        let mut t = 2.0;
        while t < 150.0 {
            for c in channels.iter().filter(|c| c.live_viewers.is_none()) {
                if let Some(at) = c.checked_at {
                    worst_offline = worst_offline.max(t - at);
                }
            }
            let chosen = plan(&p, &channels, t, 2.0, 100).chosen;
            assert!(chosen.len() <= 100);
            for i in chosen {
                let c = &mut channels[i];
                let interval = p.interval(p.class(c), 0);
                if c.live_viewers.is_some()
                    && c.checked_at.is_some_and(|at| t - at < interval - 1.0)
                {
                    early_short += 1;
                }
                c.checked_at = Some(t);
            }
            t += 2.0;
        }
        // (the 14 runs before 30 s have room for about 1,050 of the 1,900
        // besides the hot and live checks: the rest cannot be on time, and
        // is done at about 75 a run after; every early check of a hot or
        // live channel made that later still)
        assert!(
            worst_offline <= 30.0 * 1.75,
            "offline channels waited {worst_offline} s on a 30 s interval ({early_short} early checks of hot and live channels)"
        );
        assert!(
            early_short <= 100,
            "{early_short} early checks of hot and live channels"
        );
    }

    #[test]
    fn nothing_is_checked_early_when_the_runs_ahead_fit_the_budget() {
        let p = PollPolicy::default();
        // all just checked, covered ones among them: an idle run checks nothing
        let mut channels: Vec<PolledChannel> = (0..300)
            .map(|i| PolledChannel {
                covered: i % 3 == 0,
                ..ch((i % 2 == 0).then_some(5000), Some(1000.0))
            })
            .collect();
        assert_eq!(
            plan(&p, &channels, 1001.0, 1.0, 72_000).chosen,
            Vec::<usize>::new()
        );
        // a run checks what is due and only that, even with a budget of
        // one request and the rest of the channels due together later
        let p8 = PollPolicy {
            offline_interval: 8.0,
            ..PollPolicy::default()
        };
        let mut twenty: Vec<PolledChannel> = (0..20).map(|_| ch(None, Some(0.0))).collect();
        twenty[0].priority = 3; // 8 s / 4 = 2 s
        let run = plan(&p8, &twenty, 2.2, 2.2, 100);
        assert_eq!((run.chosen, run.due), (vec![0], 1));
        // covered channels (an hour): with a budget to spare, checked at
        // their sweep, not before
        channels.iter_mut().for_each(|c| c.live_viewers = None);
        let mut checks = vec![0usize; channels.len()];
        for run in 1..=240 {
            let now = 1000.0 + f64::from(run) * 60.0;
            for i in plan(&p, &channels, now, 60.0, 10_000).chosen {
                let age = now - channels[i].checked_at.unwrap();
                let interval = p.interval(p.class(&channels[i]), 0);
                assert!(age >= interval - 30.0, "checked at {age} s of {interval} s");
                channels[i].checked_at = Some(now);
                checks[i] += 1;
            }
        }
        // 4 hours: covered ones 4 times, the others 24
        for (i, n) in checks.iter().enumerate() {
            assert_eq!(*n, if i % 3 == 0 { 4 } else { 24 }, "channel {i}");
        }
    }
}
