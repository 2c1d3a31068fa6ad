//! Subscriptions reconciled with the tracked channels, within Twitch's cost
//! budget: [`plan`] decides (plain data in, plain data out), [`list_conduit`]
//! and [`execute`] talk to Helix. The background worker reads the inputs over
//! SPI, runs these on tokio and records the outcomes over SPI.
//!
//! The rule (README "EventSub"):
//! - every enabled tracked channel wants `stream.online` and `stream.offline`;
//!   a channel is covered when both are enabled;
//! - channels are taken in the order the database ranks them
//!   (`twitch_sync.eventsub_ranked_channels()`: priority, then most watched,
//!   then longest tracked); each new subscription is assumed to cost 1 until
//!   an answer says otherwise, and creation stops at the first channel whose
//!   missing subscriptions no longer fit the budget (`max_total_cost -
//!   total_cost` from the last answer, never a hard-coded 10,000): the rest
//!   stay poll-only;
//! - subscriptions of channels no longer tracked are deleted; a subscription
//!   already paid for is kept even when a higher-ranked channel does not fit;
//! - a revoked subscription (`authorization_revoked`, `user_removed`, ...)
//!   is recreated no sooner than [`PlanConfig::retry_revoked_after`];
//! - a channel whose creation failed (Twitch answered 400 for a banned or
//!   deleted user, say) is held back ([`CreateBackoff`]): it costs no request,
//!   budget or change slot until its wait is over, so it cannot starve the
//!   channels ranked below it;
//! - at most [`PlanConfig::max_changes`] requests per pass, and a pass stops
//!   while a quarter of the rate-limit bucket is left ([`BUCKET_RESERVE`]):
//!   polling (and other apps on the client id) keep it; the next pass waits
//!   for `Ratelimit-Reset`.

use super::helix::{Budget, CreateOutcome, Subscription, SubscriptionFilter};
use crate::client::TwitchClient;
use crate::error::HelixError;
use crate::ratelimit::RateLimitSnapshot;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The share of the bucket a reconciliation leaves to everything else.
pub const BUCKET_RESERVE: f64 = 0.25;

/// The two subscription types twitch_sync uses.
pub const TYPES: [&str; 2] = ["stream.online", "stream.offline"];

/// A subscription as the database has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub broadcaster_id: String,
    pub kind: String,
    pub subscription_id: String,
    pub status: String,
    /// Seconds since its status last changed.
    pub status_age: f64,
    /// What it costs (Twitch's answer; 0 once disabled).
    pub cost: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    pub retry_revoked_after: Duration,
    pub max_changes: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            retry_revoked_after: Duration::from_secs(3600),
            max_changes: 100,
        }
    }
}

/// How long a channel whose subscription could not be created waits before
/// the next try: this after its first failure, twice as long after each
/// further one, up to [`PlanConfig::retry_revoked_after`].
pub const CREATE_RETRY_FIRST: Duration = Duration::from_secs(60);

/// Channels whose subscription creation failed, and until when each is held
/// back from the passes (in the worker's memory: a restart tries them all
/// again). A creation that succeeds forgets the channel.
#[derive(Debug, Clone, Default)]
pub struct CreateBackoff {
    failed: HashMap<String, (u32, Instant)>,
}

impl CreateBackoff {
    /// Learns from a pass's outcomes: creations Twitch refused for the
    /// channel wait longer, created subscriptions end their channel's wait.
    /// Waits long over are dropped.
    /// A pass counts once per channel, however many of its subscriptions
    /// (online and offline) Twitch refused in it; one it created ends the
    /// wait.
    pub fn record(&mut self, outcomes: &[Outcome], now: Instant, cap: Duration) {
        let mut refused: HashSet<&str> = HashSet::new();
        let mut created: HashSet<&str> = HashSet::new();
        for o in outcomes {
            match o {
                Outcome::Failed {
                    change: Change::Create { broadcaster_id, .. },
                    about_channel: true,
                    ..
                } => {
                    refused.insert(broadcaster_id);
                }
                Outcome::Created(s) => {
                    created.insert(&s.broadcaster_id);
                }
                _ => {}
            }
        }
        for b in refused.difference(&created) {
            let failures = self.failed.get(*b).map_or(0, |f| f.0) + 1;
            let wait = CREATE_RETRY_FIRST
                .saturating_mul(1 << (failures - 1).min(16))
                .min(cap.max(CREATE_RETRY_FIRST));
            self.failed.insert(b.to_string(), (failures, now + wait));
        }
        for b in created {
            self.failed.remove(b);
        }
        // a channel that stopped failing long ago (untracked, say) is forgotten
        self.failed.retain(|_, (_, until)| *until + cap > now);
    }

    /// The channels still waiting at `now`.
    pub fn held_back(&self, now: Instant) -> HashSet<&str> {
        self.failed
            .iter()
            .filter(|(_, (_, until))| *until > now)
            .map(|(b, _)| b.as_str())
            .collect()
    }
}

/// One request of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create {
        broadcaster_id: String,
        kind: &'static str,
    },
    Delete {
        broadcaster_id: String,
        kind: String,
        subscription_id: String,
        /// Budget freed by deleting it.
        cost: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Deletions first (they free budget), then creations in rank order.
    pub changes: Vec<Change>,
    /// Tracked channels that will be covered once the plan is carried out.
    pub covered: usize,
    /// Tracked channels left to polling alone by the budget.
    pub poll_only: usize,
    /// Changes wanted beyond `max_changes`, left for the next pass.
    pub deferred: usize,
    /// Some channel was left to polling because the budget had no room for
    /// it (not only held back or revoked).
    pub budget_bound: bool,
}

/// Plans one pass. `remaining` is the cost budget left according to the last
/// answer (None before any answer: the first creation finds out).
/// `held_back`: channels whose creation failed recently ([`CreateBackoff`]),
/// left to polling for this pass.
pub fn plan(
    ranked: &[String],
    recorded: &[Recorded],
    remaining: Option<u64>,
    held_back: &HashSet<&str>,
    cfg: &PlanConfig,
) -> Plan {
    let tracked: HashSet<&str> = ranked.iter().map(String::as_str).collect();
    let mut by_channel: HashMap<(&str, &str), &Recorded> = HashMap::new();
    for r in recorded {
        by_channel.insert((r.broadcaster_id.as_str(), r.kind.as_str()), r);
    }
    let mut p = Plan::default();
    let mut wanted = Vec::new();
    let mut freed = 0;
    for r in recorded {
        if !tracked.contains(r.broadcaster_id.as_str()) {
            let cost = if r.status == "enabled" { r.cost } else { 0 };
            freed += cost;
            wanted.push(Change::Delete {
                broadcaster_id: r.broadcaster_id.clone(),
                kind: r.kind.clone(),
                subscription_id: r.subscription_id.clone(),
                cost,
            });
        }
    }
    // deletions go first: what they free is spent in the same pass
    let mut budget = remaining.map(|left| left + freed);
    let mut full = false;
    for b in ranked {
        let missing: Vec<&'static str> = TYPES
            .into_iter()
            .filter(|k| match by_channel.get(&(b.as_str(), *k)) {
                None => true,
                Some(r) if r.status == "enabled" => false,
                Some(r) => r.status_age >= cfg.retry_revoked_after.as_secs_f64(),
            })
            .collect();
        let enabled = TYPES.len()
            - TYPES
                .iter()
                .filter(|k| {
                    by_channel
                        .get(&(b.as_str(), **k))
                        .is_none_or(|r| r.status != "enabled")
                })
                .count();
        if missing.is_empty() {
            if enabled == TYPES.len() {
                p.covered += 1;
            } else {
                p.poll_only += 1;
            }
            continue;
        }
        if held_back.contains(b.as_str()) {
            p.poll_only += 1;
            continue;
        }
        let cost = missing.len() as u64;
        if full || budget.is_some_and(|left| left < cost) {
            full = true;
            p.poll_only += 1;
            continue;
        }
        if let Some(left) = budget.as_mut() {
            *left -= cost;
        }
        if enabled + missing.len() == TYPES.len() {
            p.covered += 1;
        } else {
            p.poll_only += 1;
        }
        for kind in missing {
            wanted.push(Change::Create {
                broadcaster_id: b.clone(),
                kind,
            });
        }
    }
    p.budget_bound = full;
    p.deferred = wanted.len().saturating_sub(cfg.max_changes);
    wanted.truncate(cfg.max_changes);
    p.changes = wanted;
    p
}

/// What one change came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created(Subscription),
    /// Gone (deleted now, or Twitch no longer knew it), freeing `cost`.
    Deleted {
        broadcaster_id: String,
        kind: String,
        cost: u64,
    },
    Failed {
        change: Change,
        error: String,
        /// Twitch refused this request for what it asks (400, 403, 422: a
        /// banned or deleted user, a subscription on another transport), not
        /// for the moment (429, 5xx, the network): only these are held back
        /// ([`CreateBackoff`]).
        about_channel: bool,
    },
}

/// The result of a pass.
#[derive(Debug, Clone, Default)]
pub struct PassResult {
    pub outcomes: Vec<Outcome>,
    pub budget: Option<Budget>,
    /// The pass stopped on a 429 of the bucket (the rest waits for the next).
    pub rate_limited: bool,
    /// A 401: the token needs minting again.
    pub unauthorized: bool,
    pub requests: u64,
    /// The last rate-limit headers seen.
    pub rate_limit: Option<RateLimitSnapshot>,
}

impl PassResult {
    /// The pass left off to spare the bucket (or was refused by it): the
    /// next one waits until the bucket refills.
    pub fn bucket_low(&self) -> bool {
        self.rate_limited || self.rate_limit.is_some_and(low)
    }
}

/// Less than [`BUCKET_RESERVE`] of the bucket left.
fn low(s: RateLimitSnapshot) -> bool {
    f64::from(s.remaining) < f64::from(s.limit) * BUCKET_RESERVE
}

/// Requests of a pass in flight at once (each one point of the bucket; the
/// pass stops at its reserve between waves).
pub const CONCURRENCY: usize = 16;

/// What one change came to, with what its answers said.
struct Done {
    change: Change,
    outcome: Result<Outcome, HelixError>,
    snap: Option<RateLimitSnapshot>,
    budget: Option<Budget>,
    requests: u64,
}

/// Pages of a broadcaster's subscriptions read to find the one a 409 names
/// (its online and offline ones, and any other of the client that names it).
const LOOKUP_PAGES: u64 = 10;

async fn carry_out(client: &TwitchClient, token: &str, conduit_id: &str, change: Change) -> Done {
    let (outcome, snap, budget, requests) = match &change {
        Change::Create {
            broadcaster_id,
            kind,
        } => {
            let (r, snap) = client
                .create_subscription(token, kind, broadcaster_id, conduit_id)
                .await;
            match r {
                Ok(CreateOutcome::Created {
                    subscription,
                    budget,
                }) => (Ok(Outcome::Created(subscription)), snap, Some(budget), 1),
                Ok(CreateOutcome::AlreadyExists) => {
                    // 409: find its id, so that it is recorded like a new one
                    // (on any page: Twitch's page size is its own)
                    let filter = SubscriptionFilter::UserId(broadcaster_id.clone());
                    let (mut after, mut snap, mut budget, mut requests) = (None, snap, None, 1);
                    let outcome = loop {
                        let (r, snap2) = client
                            .get_subscriptions(token, &filter, after.as_deref())
                            .await;
                        requests += 1;
                        snap = snap2.or(snap);
                        let page = match r {
                            Ok(page) => page,
                            Err(e) => break Err(e),
                        };
                        budget = Some(page.budget);
                        if let Some(s) = page.subscriptions.into_iter().find(|s| {
                            s.kind == *kind
                                && s.broadcaster_id == *broadcaster_id
                                && s.conduit_id.as_deref() == Some(conduit_id)
                        }) {
                            break Ok(Outcome::Created(s));
                        }
                        match page.cursor {
                            Some(c)
                                if requests <= LOOKUP_PAGES
                                    && after.as_deref() != Some(c.as_str()) =>
                            {
                                after = Some(c);
                            }
                            _ => {
                                break Ok(Outcome::Failed {
                                    change: change.clone(),
                                    error: "409: the subscription exists on another transport"
                                        .into(),
                                    about_channel: true,
                                })
                            }
                        }
                    };
                    (outcome, snap, budget, requests)
                }
                Err(e) => (Err(e), snap, None, 1),
            }
        }
        Change::Delete {
            broadcaster_id,
            kind,
            subscription_id,
            cost,
        } => {
            let (r, snap) = client.delete_subscription(token, subscription_id).await;
            let outcome = r.map(|_| Outcome::Deleted {
                broadcaster_id: broadcaster_id.clone(),
                kind: kind.clone(),
                cost: *cost,
            });
            (outcome, snap, None, 1)
        }
    };
    Done {
        change,
        outcome,
        snap,
        budget,
        requests,
    }
}

/// Carries out `changes` in order, [`CONCURRENCY`] at a time, from the
/// `budget` known before the pass (deletions free their cost, answers
/// replace it). A 409 on create is looked up by broadcaster, so its id is
/// recorded too. Stops after a 429 of the bucket, a 401, or when the bucket
/// is down to its reserve.
pub async fn execute(
    client: &TwitchClient,
    token: &str,
    conduit_id: &str,
    changes: Vec<Change>,
    budget: Option<Budget>,
) -> PassResult {
    let mut res = PassResult {
        budget,
        ..PassResult::default()
    };
    let mut rest = changes.into_iter().peekable();
    while rest.peek().is_some() {
        if res.rate_limit.is_some_and(low) {
            break;
        }
        let wave: Vec<Change> = rest.by_ref().take(CONCURRENCY).collect();
        let done = futures_util::future::join_all(
            wave.into_iter()
                .map(|c| carry_out(client, token, conduit_id, c)),
        )
        .await;
        let mut stop = false;
        // answers of a wave arrive in any order: the one counting the most is the latest
        if let Some(b) = done
            .iter()
            .filter_map(|d| d.budget)
            .max_by_key(|b| b.total_cost)
        {
            res.budget = Some(b);
        }
        for d in done {
            res.requests += d.requests;
            // the answer with the fewest points left is the latest
            if let Some(s) = d.snap {
                if res
                    .rate_limit
                    .is_none_or(|r| s.remaining <= r.remaining || s.reset > r.reset)
                {
                    res.rate_limit = Some(s);
                }
            }
            match d.outcome {
                Ok(o) => {
                    if let (Outcome::Deleted { cost, .. }, Some(b)) = (&o, res.budget.as_mut()) {
                        b.total_cost = b.total_cost.saturating_sub(*cost);
                    }
                    res.outcomes.push(o);
                }
                Err(HelixError::RateLimited { .. }) => {
                    res.rate_limited = true;
                    stop = true;
                }
                Err(HelixError::Unauthorized { .. }) => {
                    res.unauthorized = true;
                    stop = true;
                }
                Err(e) => res.outcomes.push(Outcome::Failed {
                    change: d.change,
                    about_channel: matches!(
                        e,
                        HelixError::Status {
                            status: 400 | 403 | 422,
                            ..
                        }
                    ),
                    error: e.to_string(),
                }),
            }
        }
        if stop {
            break;
        }
    }
    res
}

/// The statuses a `stream.online` / `stream.offline` subscription of an app
/// can be revoked with (Twitch sends each revocation once, on the shard's
/// connection; one sent while the shard was disconnected is lost).
pub const REVOKED_STATUSES: [&str; 3] =
    ["authorization_revoked", "user_removed", "version_removed"];

/// The subscriptions of `conduit_id` revoked with one of [`REVOKED_STATUSES`]
/// (Get EventSub Subscriptions with the `status` filter, which lists only
/// those: a few pages where a full listing takes two per 100 channels; at
/// most `max_pages` pages per status), with the budget the last answer gave.
pub async fn list_revoked(
    client: &TwitchClient,
    token: &str,
    conduit_id: &str,
    max_pages: usize,
) -> Result<(Vec<Subscription>, Budget), HelixError> {
    let filters = REVOKED_STATUSES.map(|s| SubscriptionFilter::Status(s.to_string()));
    list_filtered(client, token, conduit_id, &filters, max_pages).await
}

/// The client's cost budget as Twitch counts it now: one page of Get
/// EventSub Subscriptions (its `total_cost` and `max_total_cost` are the
/// client's, whatever the filter). The budget changes outside this worker
/// (another conduit's subscriptions deleted, a limit raised): a pass with
/// channels left to polling by the budget reads it again.
pub async fn read_budget(client: &TwitchClient, token: &str) -> Result<Budget, HelixError> {
    let filter = SubscriptionFilter::Status("enabled".into());
    Ok(client
        .get_subscriptions(token, &filter, None)
        .await
        .0?
        .budget)
}

/// Every `stream.online` / `stream.offline` subscription of `conduit_id`
/// (both types, every page; at most `max_pages` pages per type), with the
/// last budget seen.
pub async fn list_conduit(
    client: &TwitchClient,
    token: &str,
    conduit_id: &str,
    max_pages: usize,
) -> Result<(Vec<Subscription>, Budget), HelixError> {
    let filters = TYPES.map(|k| SubscriptionFilter::Type(k.to_string()));
    list_filtered(client, token, conduit_id, &filters, max_pages).await
}

/// The `stream.online` / `stream.offline` subscriptions of `conduit_id`
/// listed under each of `filters` in turn (every page, at most `max_pages`
/// per filter, stopping at a repeated cursor), with the last budget seen.
async fn list_filtered(
    client: &TwitchClient,
    token: &str,
    conduit_id: &str,
    filters: &[SubscriptionFilter],
    max_pages: usize,
) -> Result<(Vec<Subscription>, Budget), HelixError> {
    let mut all = Vec::new();
    let mut budget = Budget::default();
    for filter in filters {
        let mut after: Option<String> = None;
        for _ in 0..max_pages {
            let page = client
                .get_subscriptions(token, filter, after.as_deref())
                .await
                .0?;
            budget = page.budget;
            all.extend(page.subscriptions.into_iter().filter(|s| {
                TYPES.contains(&s.kind.as_str()) && s.conduit_id.as_deref() == Some(conduit_id)
            }));
            match page.cursor {
                Some(c) if after.as_deref() != Some(c.as_str()) => after = Some(c),
                _ => break,
            }
        }
    }
    Ok((all, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(b: &str, kind: &str, status: &str, age: f64) -> Recorded {
        Recorded {
            broadcaster_id: b.into(),
            kind: kind.into(),
            subscription_id: format!("{b}-{kind}"),
            status: status.into(),
            status_age: age,
            cost: u64::from(status == "enabled"),
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| i.to_string()).collect()
    }

    fn creates(p: &Plan) -> Vec<(String, &'static str)> {
        p.changes
            .iter()
            .filter_map(|c| match c {
                Change::Create {
                    broadcaster_id,
                    kind,
                } => Some((broadcaster_id.clone(), *kind)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_channel_gets_both_types_when_the_budget_allows() {
        let p = plan(
            &ids(3),
            &[],
            Some(100),
            &HashSet::new(),
            &PlanConfig::default(),
        );
        assert_eq!(creates(&p).len(), 6);
        assert_eq!((p.covered, p.poll_only, p.deferred), (3, 0, 0));
        assert!(!p.budget_bound);
        assert_eq!(creates(&p)[0], ("1".into(), "stream.online"));
        assert_eq!(creates(&p)[1], ("1".into(), "stream.offline"));
    }

    #[test]
    fn the_budget_covers_the_highest_ranked_and_the_rest_stay_poll_only() {
        // 5 units: channels 1 and 2 (2 each); 3 needs 2 and only 1 is left: it
        // and everything after it stay poll-only, even 4 which needs 1
        let recorded = [rec("4", "stream.online", "enabled", 0.0)];
        let p = plan(
            &ids(4),
            &recorded,
            Some(5),
            &HashSet::new(),
            &PlanConfig::default(),
        );
        assert_eq!(
            creates(&p),
            vec![
                ("1".into(), "stream.online"),
                ("1".into(), "stream.offline"),
                ("2".into(), "stream.online"),
                ("2".into(), "stream.offline"),
            ]
        );
        assert_eq!((p.covered, p.poll_only), (2, 2));
        assert!(p.budget_bound);
        // nothing already paid for is deleted to make room
        assert!(p.changes.iter().all(|c| matches!(c, Change::Create { .. })));
    }

    #[test]
    fn untracked_channels_lose_their_subscriptions_first() {
        let recorded = [
            rec("9", "stream.online", "enabled", 0.0),
            rec("9", "stream.offline", "authorization_revoked", 0.0),
            rec("1", "stream.online", "enabled", 0.0),
            rec("1", "stream.offline", "enabled", 0.0),
        ];
        let p = plan(
            &ids(2),
            &recorded,
            None,
            &HashSet::new(),
            &PlanConfig::default(),
        );
        assert!(
            matches!(&p.changes[0], Change::Delete { subscription_id, .. } if subscription_id == "9-stream.online")
        );
        assert!(
            matches!(&p.changes[1], Change::Delete { subscription_id, .. } if subscription_id == "9-stream.offline")
        );
        assert_eq!(creates(&p).len(), 2, "channel 2");
        assert_eq!((p.covered, p.poll_only), (2, 0));
    }

    #[test]
    fn what_deletions_free_is_spent_in_the_same_pass() {
        // budget full; channel 9 untracked frees 2 units: channel 2 gets them
        let recorded = [
            rec("9", "stream.online", "enabled", 0.0),
            rec("9", "stream.offline", "enabled", 0.0),
            rec("1", "stream.online", "enabled", 0.0),
            rec("1", "stream.offline", "enabled", 0.0),
        ];
        let p = plan(
            &ids(3),
            &recorded,
            Some(0),
            &HashSet::new(),
            &PlanConfig::default(),
        );
        assert_eq!(
            creates(&p),
            vec![
                ("2".into(), "stream.online"),
                ("2".into(), "stream.offline")
            ]
        );
        assert_eq!((p.covered, p.poll_only), (2, 1));
    }

    #[test]
    fn channels_whose_creation_fails_wait_and_do_not_starve_the_rest() {
        let cfg = PlanConfig::default();
        let failed = |b: &str| Outcome::Failed {
            change: Change::Create {
                broadcaster_id: b.into(),
                kind: "stream.online",
            },
            error: "400: The user specified in the condition object does not exist.".into(),
            about_channel: true,
        };
        let t0 = Instant::now();
        // budget for two channels: the two top-ranked ones, banned, take it
        let p = plan(&ids(6), &[], Some(4), &HashSet::new(), &cfg);
        let first: Vec<String> = creates(&p).into_iter().map(|c| c.0).collect();
        assert_eq!(first, ["1", "1", "2", "2"]);
        let mut backoff = CreateBackoff::default();
        // (both of a channel's subscriptions refused in one pass: one failure)
        let failed_offline = |b: &str| Outcome::Failed {
            change: Change::Create {
                broadcaster_id: b.into(),
                kind: "stream.offline",
            },
            error: "400: The user specified in the condition object does not exist.".into(),
            about_channel: true,
        };
        backoff.record(
            &[
                failed("1"),
                failed_offline("1"),
                failed("2"),
                failed_offline("2"),
            ],
            t0,
            cfg.retry_revoked_after,
        );
        // the next pass skips them: channels 3 and 4 get the budget
        let p = plan(&ids(6), &[], Some(4), &backoff.held_back(t0), &cfg);
        let next: Vec<String> = creates(&p).into_iter().map(|c| c.0).collect();
        assert_eq!(next, ["3", "3", "4", "4"]);
        assert_eq!(p.poll_only, 4);
        // their wait: a minute, then two after a second failure
        let after = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(backoff.held_back(after(59)).len(), 2);
        assert!(backoff.held_back(after(61)).is_empty());
        backoff.record(&[failed("1")], after(61), cfg.retry_revoked_after);
        assert!(backoff.held_back(after(61 + 119)).contains("1"));
        assert!(backoff.held_back(after(61 + 121)).is_empty());
        // never longer than retry_revoked_after
        for i in 0..20 {
            backoff.record(&[failed("1")], after(200 + i), cfg.retry_revoked_after);
        }
        assert!(backoff.held_back(after(219 + 3599)).contains("1"));
        assert!(backoff.held_back(after(219 + 3601)).is_empty());
        // a creation that succeeds ends the wait
        let created = Outcome::Created(Subscription {
            id: "s1".into(),
            status: "enabled".into(),
            kind: "stream.online".into(),
            version: "1".into(),
            broadcaster_id: "1".into(),
            conduit_id: Some("c".into()),
            cost: 0,
        });
        backoff.record(&[failed("1"), created], after(300), cfg.retry_revoked_after);
        assert!(backoff.held_back(after(300)).is_empty());
        // a failure of the moment (a 5xx, over the cost budget) holds nothing back
        let busy = Outcome::Failed {
            change: Change::Create {
                broadcaster_id: "2".into(),
                kind: "stream.online",
            },
            error: "503".into(),
            about_channel: false,
        };
        backoff.record(&[busy], after(400), cfg.retry_revoked_after);
        assert!(backoff.held_back(after(400)).is_empty());
    }

    #[test]
    fn revoked_subscriptions_wait_before_they_are_created_again() {
        let cfg = PlanConfig::default();
        let recorded = [
            rec("1", "stream.online", "enabled", 0.0),
            rec("1", "stream.offline", "user_removed", 10.0),
        ];
        let p = plan(&ids(1), &recorded, Some(10), &HashSet::new(), &cfg);
        assert!(p.changes.is_empty());
        assert_eq!((p.covered, p.poll_only), (0, 1));
        let recorded = [
            rec("1", "stream.online", "enabled", 0.0),
            rec("1", "stream.offline", "user_removed", 3601.0),
        ];
        let p = plan(&ids(1), &recorded, Some(10), &HashSet::new(), &cfg);
        assert_eq!(creates(&p), vec![("1".into(), "stream.offline")]);
        assert_eq!(p.covered, 1);
    }

    #[test]
    fn a_pass_is_bounded_and_the_rest_deferred() {
        let cfg = PlanConfig {
            max_changes: 5,
            ..PlanConfig::default()
        };
        let p = plan(&ids(10), &[], None, &HashSet::new(), &cfg);
        assert_eq!(p.changes.len(), 5);
        assert_eq!(p.deferred, 15);
    }

    #[test]
    fn a_pass_spares_the_last_quarter_of_the_bucket() {
        let snap = |remaining| RateLimitSnapshot {
            limit: 800,
            remaining,
            reset: 0,
        };
        let mut r = PassResult {
            rate_limit: Some(snap(200)),
            ..PassResult::default()
        };
        assert!(!r.bucket_low());
        r.rate_limit = Some(snap(199));
        assert!(r.bucket_low());
        r.rate_limit = None;
        r.rate_limited = true;
        assert!(r.bucket_low());
    }

    #[test]
    fn a_full_budget_creates_nothing() {
        let p = plan(
            &ids(3),
            &[],
            Some(0),
            &HashSet::new(),
            &PlanConfig::default(),
        );
        assert!(p.changes.is_empty());
        assert_eq!((p.covered, p.poll_only), (0, 3));
    }
}
