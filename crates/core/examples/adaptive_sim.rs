//! Adaptive polling on a simulated clock (issue 15's targets): the planner of
//! twitch_sync_core::adaptive against a world of channels that go live and
//! offline, one run a minute, 100 ids per request. Prints staleness per class
//! and requests per run against the budget. `scripts/bench` runs it:
//!
//!     cargo run --release -p twitch_sync_core --example adaptive_sim [A's budget]

use std::collections::BTreeMap;
use twitch_sync_core::adaptive::{plan, staleness, PollClass, PollPolicy, PolledChannel};
use twitch_sync_core::rng::SplitMix64 as Rng;

struct Outcome {
    /// Per class: the largest p95 and max staleness seen at any run (after warm-up).
    /// Means are over the runs after warm-up, the max over all.
    worst: BTreeMap<PollClass, (f64, f64)>,
    max_requests: usize,
    /// The most requests of a run after warm-up.
    max_requests_after: usize,
    mean_requests: f64,
    /// Channels checked before they were due (levelling), per run on average.
    mean_early: f64,
}

/// `n` channels, `live` live (one in twenty with 1,000+ viewers), 1% of the
/// live ones ending (and as many starting) each minute; runs every 60 s for
/// `minutes`; `budget` requests per run.
fn simulate(
    p: &PollPolicy,
    n: usize,
    live: usize,
    budget: usize,
    minutes: usize,
    warmup: usize,
) -> Outcome {
    let mut rng = Rng(20261125);
    let viewers = |i: usize| -> u32 {
        if i.is_multiple_of(20) {
            1_000 + (i % 30_000) as u32
        } else {
            (i % 900) as u32
        }
    };
    let mut truth: Vec<Option<u32>> = (0..n).map(|i| (i < live).then(|| viewers(i))).collect();
    let mut known: Vec<PolledChannel> = (0..n)
        .map(|_| PolledChannel {
            live_viewers: None,
            covered: false,
            priority: 0,
            checked_at: None,
        })
        .collect();
    let mut live_ids: Vec<usize> = (0..live).collect();
    let mut worst: BTreeMap<PollClass, (f64, f64)> = BTreeMap::new();
    let (mut max_requests, mut max_requests_after) = (0usize, 0usize);
    let (mut total_requests, mut early) = (0usize, 0usize);
    for minute in 0..minutes {
        let now = minute as f64 * 60.0;
        for _ in 0..live / 100 {
            let k = rng.below(live_ids.len());
            let ending = live_ids[k];
            let starting = rng.below(n);
            if truth[starting].is_none() {
                truth[ending] = None;
                truth[starting] = Some(viewers(starting));
                live_ids[k] = starting;
            }
        }
        let planned = plan(p, &known, now, 60.0, budget * 100);
        let chosen = planned.chosen;
        let requests = chosen.len().div_ceil(100);
        max_requests = max_requests.max(requests);
        if minute >= warmup {
            max_requests_after = max_requests_after.max(requests);
            total_requests += requests;
            early += chosen.len().saturating_sub(planned.due);
        }
        if minute >= warmup {
            for s in staleness(p, &known, now) {
                let w = worst.entry(s.class).or_insert((0.0, 0.0));
                w.0 = w.0.max(s.p95);
                w.1 = w.1.max(s.max);
            }
        }
        for i in chosen {
            known[i].live_viewers = truth[i];
            known[i].checked_at = Some(now);
        }
    }
    Outcome {
        worst,
        max_requests,
        max_requests_after,
        mean_requests: total_requests as f64 / (minutes - warmup) as f64,
        mean_early: early as f64 / (minutes - warmup) as f64,
    }
}

fn print(name: &str, o: &Outcome, budget: usize, targets: &[(PollClass, f64)]) -> bool {
    println!("\n{name}");
    println!("| class | p95 staleness (worst run) | max staleness | target (max) | met |");
    println!("|---|---|---|---|---|");
    let mut all = true;
    for (class, (p95, max)) in &o.worst {
        let target = targets.iter().find(|t| t.0 == *class).map(|t| t.1);
        let met = target.is_none_or(|t| *max <= t);
        all &= met;
        println!(
            "| {} | {:.0} s | {:.0} s | {} | {} |",
            class.as_str(),
            p95,
            max,
            target.map_or("-".into(), |t| format!("{t:.0} s")),
            if target.is_some() {
                if met {
                    "yes"
                } else {
                    "NO"
                }
            } else {
                "-"
            }
        );
    }
    let within = o.max_requests <= budget;
    all &= within;
    println!(
        "requests per run: max {} (after warm-up: max {}, mean {:.1}), budget {} ({}); 429s: 0 by construction when the budget is within the bucket",
        o.max_requests,
        o.max_requests_after,
        o.mean_requests,
        budget,
        if within { "within" } else { "EXCEEDED" }
    );
    println!(
        "checked before due (levelling): {:.0} channels per run on average",
        o.mean_early
    );
    all
}

fn main() {
    // A: 500,000 tracked / 50,000 live on one client id (800 points a minute),
    // default policy (hot 60 s, live 120 s, offline 600 s, 95% of the bucket).
    // (an argument overrides A's budget in requests, to find its margin)
    let p = PollPolicy::default();
    let budget = std::env::args()
        .nth(1)
        .map_or(p.budget_requests(800, 60.0), |b| {
            b.parse().expect("a budget in requests")
        });
    let a = simulate(&p, 500_000, 50_000, budget, 24 * 60, 60);
    let ok_a = print(
        "A. 500,000 tracked / 50,000 live, 800 points/min, default policy, 24 simulated hours (measured after the first)",
        &a,
        budget,
        &[
            (PollClass::Hot, 120.0),
            (PollClass::Live, 120.0),
            (PollClass::Offline, 600.0),
        ],
    );

    // B: the request budget of fixed 10-minute polling of 100,000 / 20,000
    // (1,000 requests per 10 minutes = 100 a minute), spent adaptively.
    let p = PollPolicy {
        live_interval: 300.0,
        offline_interval: 1200.0,
        budget_share: 100.0 / 800.0,
        ..PollPolicy::default()
    };
    let budget = p.budget_requests(800, 60.0);
    let b = simulate(&p, 100_000, 20_000, budget, 24 * 60, 120);
    let ok_b = print(
        "B. 100,000 / 20,000 on fixed 10-minute polling's budget (100 requests a minute): hot 60 s, live 300 s, offline 1,200 s",
        &b,
        budget,
        &[(PollClass::Hot, 60.0)],
    );
    println!("   fixed 10-minute polling: every class, hot streams included, up to 600 s stale (p95 570 s)");
    println!(
        "\nadaptive polling targets met: {}",
        if ok_a && ok_b { "yes" } else { "no" }
    );
}
