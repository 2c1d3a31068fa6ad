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
//! first). Times are seconds (f64, any epoch): tests and the simulation run on
//! simulated clocks.

use crate::config::defaults;
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

    /// Requests one run may send: the budget share of the bucket (at least one).
    pub fn budget_requests(&self, bucket_limit: u32) -> usize {
        ((f64::from(bucket_limit) * self.budget_share.clamp(0.0, 1.0)).floor() as usize).max(1)
    }
}

/// What a run checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Indexes into the channels, most overdue first.
    pub chosen: Vec<usize>,
    /// Channels that were due (chosen, or left for a later run by the budget).
    pub due: usize,
}

/// The channels a run at `now` checks: the due ones, most overdue first, at
/// most `max_ids`. `run_period` is the time between runs: a channel is due
/// when its last check is at least its interval minus half a period old, so
/// that a check never waits a whole period past its interval.
pub fn plan(
    policy: &PollPolicy,
    channels: &[PolledChannel],
    now: f64,
    run_period: f64,
    max_ids: usize,
) -> Plan {
    let slack = (run_period / 2.0).max(0.0);
    let mut due: Vec<(f64, usize)> = channels
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let interval = policy.interval(policy.class(c), c.priority);
            match c.checked_at {
                None => Some((f64::INFINITY, i)),
                Some(at) => {
                    let age = now - at;
                    // ranked by how late it would be if left to the next run
                    (age >= interval - slack).then_some(((age + run_period) / interval, i))
                }
            }
        })
        .collect();
    let due_count = due.len();
    if due.len() > max_ids {
        // Only the most overdue max_ids are needed: partial selection, then sort those.
        due.select_nth_unstable_by(max_ids, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        due.truncate(max_ids);
    }
    due.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    Plan {
        chosen: due.into_iter().map(|(_, i)| i).collect(),
        due: due_count,
    }
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
    /// Requests this run could spend (the budget share of the bucket).
    pub budget_requests: usize,
    pub due: usize,
    /// Channels chosen (due, most overdue first, within the budget).
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
        assert_eq!(p.budget_requests(800), 760);
        assert_eq!(p.budget_requests(0), 1);
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

    /// A world of `n` channels, `live` of them live (1 in 10 of those hot),
    /// that changes a little every run; runs every `period` seconds for
    /// `horizon` seconds with `budget` requests each. Returns the worst
    /// staleness seen per class at the moment of each run (after the first
    /// full cycle), and the most requests any run used.
    fn simulate(
        p: &PollPolicy,
        n: usize,
        live: usize,
        period: f64,
        horizon: f64,
        budget: usize,
        seed: u64,
    ) -> (std::collections::BTreeMap<PollClass, f64>, usize) {
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
        let mut most = 0;
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
            let chosen = plan(p, &known, t, period, budget * 100).chosen;
            most = most.max(chosen.len().div_ceil(100));
            for i in chosen {
                known[i].live_viewers = truth[i];
                known[i].checked_at = Some(t);
            }
            if t >= 2.0 * p.offline_interval {
                for s in staleness(p, &known, t) {
                    let w = worst.entry(s.class).or_insert(0.0f64);
                    *w = w.max(s.max);
                }
            }
            t += period * (0.95 + 0.1 * rng.unit());
        }
        (worst, most)
    }

    #[test]
    fn with_enough_budget_every_channel_is_checked_within_its_interval_plus_one_run() {
        let p = PollPolicy::default();
        // 5,000 channels, 500 live: needs about 50 hot + 450/2 live + 4,500/10
        // offline ids a minute = 7.3 requests; give it 10
        let (worst, most) = simulate(&p, 5_000, 500, 60.0, 6.0 * 3600.0, 10, 7);
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
        let (worst, most) = simulate(&p, 5_000, 500, 60.0, 6.0 * 3600.0, 4, 11);
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
}
