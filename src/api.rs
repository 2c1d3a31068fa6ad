//! The SQL-facing layer of run(): read state, run the core, apply, record,
//! answer with a result document. Misuse raises; Twitch and network failures
//! are recorded and returned (so the run's row survives pg_cron's transaction).

use crate::db::{self, RunRecord};
use crate::error::SyncError;
use crate::{gucs, rolled_back, runtime};
use std::time::{Instant, SystemTime};
use twitch_sync_core::adaptive::{self, PollPolicy, PollingReport};
use twitch_sync_core::config::{load_ca_file, validate_base_url, MAX_IDS_PER_REQUEST};
use twitch_sync_core::discovery::{self, Category, DiscoveryReport, WalkPlan};
use twitch_sync_core::engine::{BatchFailure, Credentials, DirectoryResult};
use twitch_sync_core::ratelimit::DOCUMENTED_BUCKET_LIMIT;
use twitch_sync_core::report::{remaining, Pruned, Timings, SKIPPED_ERROR};
use twitch_sync_core::{
    sync_streaming, Applied, BatchBuffer, BatchResult, LiveSet, PassSummary, RunReport, RunStatus,
    SyncConfig, SyncInput,
};

/// run() writes answers in about this many chunks per run (plus the last) ...
const APPLY_CHUNKS: usize = 32;
/// ... of at least this many checked channels each (a chunk's call costs
/// about a millisecond beyond its rows: 10,000 channels go in four).
const MIN_APPLY_CHUNK: usize = 2500;

/// What waiting on the engine brought: a batch's answer, or the end of the pass.
enum Step {
    Batch(BatchResult),
    Done(PassSummary),
}

/// The answers not yet written, what the chunks written so far add up to, and
/// the channels a run could not check (recorded in twitch_sync.run_unchecked).
#[derive(Default)]
struct Written {
    pending: BatchBuffer,
    checked: usize,
    live: usize,
    applied: Applied,
    /// Live observations the transition layer refused (stream id owned by another broadcaster).
    conflicts: u32,
    failed_ids: Vec<String>,
    unknown_ids: Vec<String>,
    /// Chunks whose write failed (their subtransaction was rolled back).
    failures: Vec<BatchFailure>,
    /// Channels live when the run started, with their logins (see db::LiveAtStart).
    live_at_start: db::LiveAtStart,
    /// The enabled channels, when a category is tracked (directory walks ask).
    tracked: Tracked,
    /// Directory walks not yet written.
    directories: Vec<DirectoryResult>,
    /// What the walks did (None: no category tracked).
    discovery: Option<DiscoveryReport>,
    /// Channels a directory walk observed this run (one observation each).
    directory_seen: std::collections::HashSet<String>,
    /// Of those, the ones applied (adaptive polling counts them as checked).
    directory_checked: Vec<String>,
}

impl Written {
    /// Takes a batch's answer: pending until written; a failed batch's
    /// channels are unchecked.
    fn receive(&mut self, result: BatchResult) {
        match result {
            BatchResult::Directory(d) => self.directories.push(d),
            BatchResult::Failed(f) => {
                self.failed_ids.extend(f.broadcaster_ids.iter().cloned());
                self.pending.absorb(BatchResult::Failed(f));
            }
            checked => self.pending.absorb(checked),
        }
    }

    /// Writes the directory walks received so far: the channels not tracked
    /// yet are tracked within their category's cap (twitch_sync.discover_channels),
    /// then the live streams of tracked channels (old and new) go through the
    /// transition layer as live observations, one chunk per walk. Nothing is
    /// "not listed": absence from a directory is not offline.
    fn write_directories(&mut self, misses: i32, notify: bool) -> Result<(), SyncError> {
        for mut d in std::mem::take(&mut self.directories) {
            let candidates: Vec<&twitch_sync_core::LiveStream> = d
                .live
                .iter()
                .filter(|s| !self.tracked.contains(&s.broadcaster_id))
                .collect();
            let found = db::discover_channels(&d.report, &candidates)?;
            if let Some(error) = found.error {
                pgrx::warning!("twitch_sync: {error}");
                self.failures.push(BatchFailure {
                    channels: 0,
                    broadcaster_ids: Vec::new(),
                    error,
                });
            }
            let added: std::collections::HashSet<&str> =
                found.added.iter().map(String::as_str).collect();
            self.tracked.extend(found.added.iter().cloned());
            d.report.discovered = found.added.len() as u32;
            d.report.capped = found.capped.max(0) as u32;
            let live: Vec<twitch_sync_core::LiveStream> = std::mem::take(&mut d.live)
                .into_iter()
                .filter(|s| {
                    self.tracked.contains(&s.broadcaster_id)
                        && self.directory_seen.insert(s.broadcaster_id.clone())
                })
                .collect();
            let ids: Vec<String> = live.iter().map(|s| s.broadcaster_id.clone()).collect();
            if !ids.is_empty() {
                let r = db::apply_poll_chunk(&ids, &live, &self.live_at_start, misses, notify)?;
                if let Some(error) = r.error {
                    pgrx::warning!("twitch_sync: {error}");
                    self.failures.push(BatchFailure {
                        channels: 0,
                        broadcaster_ids: Vec::new(),
                        error,
                    });
                } else {
                    self.conflicts += r.conflicted.len() as u32;
                    let conflicted: std::collections::HashSet<&String> =
                        r.conflicted.iter().collect();
                    let applied: Vec<String> = ids
                        .iter()
                        .filter(|id| !conflicted.contains(id))
                        .cloned()
                        .collect();
                    d.report.refreshed = applied
                        .iter()
                        .filter(|id| !added.contains(id.as_str()))
                        .count() as u32;
                    self.directory_checked.extend(applied);
                    self.applied.updated += r.updated;
                    self.applied.started += r.started;
                    self.applied.ended += r.ended;
                    self.applied.events += r.events;
                }
            }
            if let Some(report) = self.discovery.as_mut() {
                report.add(d.report);
            }
        }
        Ok(())
    }

    /// Writes the pending answers through the transition layer (one call of
    /// twitch_sync.apply_poll, a subtransaction) and empties them.
    fn write(&mut self, misses: i32, notify: bool) -> Result<(), SyncError> {
        let pending = &mut self.pending;
        // Unknown channels (an entry about them was dropped) are left as they were.
        self.unknown_ids.append(&mut pending.unknown);
        if pending.checked.is_empty() {
            pending.clear();
            return Ok(());
        }
        let r = db::apply_poll_chunk(
            &pending.checked,
            &pending.live,
            &self.live_at_start,
            misses,
            notify,
        )?;
        if let Some(error) = r.error {
            pgrx::warning!("twitch_sync: {error}");
            self.failures.push(BatchFailure {
                channels: pending.checked.len(),
                broadcaster_ids: pending.checked.clone(),
                error,
            });
            self.failed_ids.append(&mut pending.checked);
        } else {
            let conflicted = r.conflicted.len();
            self.conflicts += conflicted as u32;
            self.checked += pending.checked.len() - conflicted;
            self.live += r.live as usize;
            self.applied.updated += r.updated;
            self.applied.started += r.started;
            self.applied.ended += r.ended;
            self.applied.events += r.events;
            self.unknown_ids.extend(r.conflicted);
        }
        pending.clear();
        Ok(())
    }
}

/// The enabled channels at the run's start and those discovered since (built
/// only when a category is tracked: directory walks ask).
type Tracked = std::collections::HashSet<String>;

/// The enabled channels `ids`, if directory walks will ask about them.
fn tracked(categories: &[Category], ids: &[String]) -> Tracked {
    if categories.is_empty() {
        Tracked::new()
    } else {
        ids.iter().cloned().collect()
    }
}

/// The settings of a pass (and of the EventSub worker's Helix client), checked.
pub(crate) fn settings() -> Result<SyncConfig, SyncError> {
    let url = |setting: &'static str, value: String| {
        validate_base_url(&value).map_err(|reason| SyncError::BadSetting { setting, reason })
    };
    Ok(SyncConfig {
        helix_url: url("twitch_sync.helix_url", gucs::helix_url())?,
        auth_url: url("twitch_sync.auth_url", gucs::auth_url())?,
        request_timeout: gucs::request_timeout(),
        max_concurrent_requests: gucs::max_concurrent_requests(),
        max_retries: gucs::max_retries(),
        run_deadline: gucs::run_deadline(),
        extra_ca_certs: load_ca_file(&gucs::extra_ca_file()).map_err(|reason| {
            SyncError::BadSetting {
                setting: "twitch_sync.extra_ca_file",
                reason,
            }
        })?,
        ..SyncConfig::default()
    })
}

#[pgrx::pg_schema]
mod twitch_sync {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// `twitch_sync.run()`: one sync pass; see README "SQL reference" for the result document.
    /// It reads the credentials, so it runs as the extension's owner with a pinned
    /// search_path (declared here, so every install and upgrade script carries it).
    #[pg_extern(volatile, parallel_unsafe, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn run() -> JsonB {
        PgTryBuilder::new(|| match super::run_pass() {
            Ok(doc) => {
                crate::rolled_back::returned();
                JsonB(doc)
            }
            Err(e) => e.raise(),
        })
        .catch_others(|e| {
            crate::rolled_back::ending_with(crate::error::caught_for_row(&e));
            crate::error::reraise_clean(e)
        })
        .execute()
    }
}

fn run_pass() -> Result<serde_json::Value, SyncError> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    db::check_schema_version()?;
    db::check_writable()?;
    if !db::try_lock_run()? {
        return skip(started_at, clock);
    }
    // From here on the run leaves its row even if its transaction aborts:
    // the next run records it, as this one records those before it.
    rolled_back::watch(started_at);
    db::record_rolled_back(rolled_back::take())?;
    let config = settings()?;
    db::ensure_sample_partitions()?;
    let policy = gucs::poll_policy();
    let mut state = db::read_state(policy.is_none())?;
    // The credentials a token minted by this run belongs to (finish).
    let minted_for = state.credentials.clone();
    let categories = db::read_categories()?;
    let (polling, walks, tracked) = match policy {
        Some(policy) => {
            let (report, chosen, walks, tracked) = plan_checks(&policy, &mut state, &categories)?;
            (Some((report, chosen)), walks, tracked)
        }
        None => (
            None,
            discovery::plan_walks(&categories, None),
            tracked(&categories, &state.broadcaster_ids),
        ),
    };
    let discovery = (!categories.is_empty()).then(|| DiscoveryReport {
        categories: categories.len(),
        skipped: walks.skipped,
        pages_planned: walks.pages,
        covered: walks.covered,
        ..DiscoveryReport::default()
    });
    let read_ms = clock.elapsed().as_secs_f64() * 1000.0;
    let (outcome, written, later_read_ms, apply_ms) =
        stream_and_apply(config, state, tracked, walks, discovery)?;
    let read_ms = read_ms + later_read_ms;
    let http_ms = clock.elapsed().as_secs_f64() * 1000.0 - read_ms - apply_ms;
    finish(
        started_at,
        clock,
        &minted_for,
        outcome,
        written,
        polling,
        (read_ms, http_ms, apply_ms),
    )
}

/// Adaptive polling: narrows the run to the channels that are due, most
/// overdue first, within the budget (twitch_sync_core::adaptive), after the
/// directory walks' pages are set aside from it (twitch_sync_core::discovery).
/// Returns the plan's report, the channels it chose, the walks, and (when a
/// category is tracked) every enabled channel.
fn plan_checks(
    policy: &PollPolicy,
    state: &mut db::DbState,
    categories: &[Category],
) -> Result<(PollingReport, Vec<String>, WalkPlan, Tracked), SyncError> {
    let input = db::read_poll_input()?;
    let bucket = state
        .rate_limit
        .as_ref()
        .map_or(DOCUMENTED_BUCKET_LIMIT, |(s, _)| s.limit.max(1));
    let budget = policy.budget_requests(bucket, input.run_period);
    let walks = discovery::plan_walks(categories, Some(budget));
    // Live channels the walks will most likely list again are left to them.
    let covered = discovery::covered_by_walks(
        policy,
        &input.channels,
        &input.live_in,
        &walks.walks,
        input.now,
        input.run_period,
    );
    let rest: Vec<usize> = (0..input.channels.len()).filter(|&i| !covered[i]).collect();
    let candidates: Vec<adaptive::PolledChannel> =
        rest.iter().map(|&i| input.channels[i].clone()).collect();
    let plan = adaptive::plan(
        policy,
        &candidates,
        input.now,
        input.run_period,
        budget.saturating_sub(walks.pages) * MAX_IDS_PER_REQUEST,
    );
    let plan = adaptive::Plan {
        chosen: plan.chosen.iter().map(|&k| rest[k]).collect(),
        due: plan.due,
    };
    let mut chosen: Vec<String> = plan.chosen.iter().map(|&i| input.ids[i].clone()).collect();
    chosen.sort_unstable();
    state.broadcaster_ids = chosen.clone();
    let report = PollingReport {
        budget_requests: budget,
        period_secs: input.run_period,
        due: plan.due,
        chosen: chosen.len(),
        classes: adaptive::staleness(policy, &input.channels, input.now),
    };
    let tracked = tracked(categories, &input.ids);
    Ok((
        report,
        chosen,
        WalkPlan {
            covered: input.channels.len() - rest.len(),
            ..walks
        },
        tracked,
    ))
}

/// Another run holds the lock: record a skipped run and say so.
fn skip(started_at: SystemTime, clock: Instant) -> Result<serde_json::Value, SyncError> {
    rolled_back::refuse_prepare();
    let (run_id, finished) = db::record_run(&RunRecord {
        error: Some(SKIPPED_ERROR.into()),
        ..RunRecord::new(started_at, RunStatus::Skipped.as_str())
    })?;
    pgrx::log!("twitch_sync: run {run_id} skipped: another run is in progress");
    Ok(RunReport::skipped(run_id, clock.elapsed().as_millis() as u64, finished).to_json())
}

/// The pass itself: the engine's requests on the runtime, and the answers
/// written through the transition layer in chunks as they arrive, while later
/// requests are still in flight (the database work hides behind Helix's
/// latency). Returns the engine's summary, what was written, the time spent
/// reading the live set once the first requests were out, and the time spent
/// writing (ms).
fn stream_and_apply(
    config: SyncConfig,
    state: db::DbState,
    tracked: Tracked,
    walks: WalkPlan,
    discovery: Option<DiscoveryReport>,
) -> Result<(PassSummary, Written, f64, f64), SyncError> {
    let total = state.broadcaster_ids.len();
    pgrx::log!("twitch_sync: run started: {total} channels to check");
    let chunk = (total / APPLY_CHUNKS).max(MIN_APPLY_CHUNK);
    let (misses, notify) = (gucs::offline_after_misses(), gucs::notify_events());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (give_live, live_before) = LiveSet::channel();
    // On the runtime's worker: requests go on while this thread writes.
    let mut engine = Box::pin(runtime::spawn(sync_streaming(
        SyncInput {
            config,
            credentials: state.credentials,
            token: state.token,
            broadcaster_ids: state.broadcaster_ids,
            rate_limit: state.rate_limit,
            directories: walks.walks,
            live_before,
        },
        tx,
    )));
    // Nothing needs the live set before the first answer: read it while the
    // first requests are on the wire (a batch that might follow a cursor
    // waits for it).
    let t = Instant::now();
    let live_at_start = db::read_live_at_start()?;
    let _ = give_live.send(Some(std::sync::Arc::new(
        live_at_start.keys().cloned().collect(),
    )));
    let read_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut written = Written {
        live_at_start,
        tracked,
        discovery,
        ..Written::default()
    };
    let mut apply_ms = 0.0;
    let outcome = loop {
        let step = runtime::block_on_interruptible(async {
            tokio::select! {
                biased;
                Some(r) = rx.recv() => Step::Batch(r),
                done = engine.as_mut() => Step::Done(done.unwrap_or_else(|e| PassSummary {
                    fatal: Some(e),
                    ..PassSummary::default()
                })),
            }
        });
        let done = match step {
            Step::Done(done) => Some(done),
            Step::Batch(first) => {
                written.receive(first);
                None
            }
        };
        while let Ok(r) = rx.try_recv() {
            written.receive(r);
        }
        if done.is_some() || written.pending.checked.len() >= chunk {
            // The engine runs on the runtime's worker thread: its requests stay
            // on the wire while this backend writes.
            let t = Instant::now();
            written.write(misses, notify)?;
            apply_ms += t.elapsed().as_secs_f64() * 1000.0;
        }
        if !written.directories.is_empty() {
            let t = Instant::now();
            written.write_directories(misses, notify)?;
            apply_ms += t.elapsed().as_secs_f64() * 1000.0;
        }
        if let Some(done) = done {
            break done;
        }
    };
    Ok((outcome, written, read_ms, apply_ms))
}

/// After the pass: token and rate-limit state, the run's record, retention,
/// and the result document. `timings` are (read, http, apply) in ms.
fn finish(
    started_at: SystemTime,
    clock: Instant,
    minted_for: &Credentials,
    mut outcome: PassSummary,
    mut written: Written,
    polling: Option<(PollingReport, Vec<String>)>,
    (read_ms, http_ms, mut apply_ms): (f64, f64, f64),
) -> Result<serde_json::Value, SyncError> {
    let finish_clock = Instant::now();
    // A chunk whose write failed counts like a failed batch; a refused live
    // observation like a dropped entry.
    outcome.failures.append(&mut written.failures);
    outcome.stats.bad.stream_id_conflict += written.conflicts;
    outcome.checked = written.checked;
    outcome.live = written.live;
    outcome.unknown = written.unknown_ids.len();
    if outcome.token_changed {
        if let Some(t) = &outcome.token {
            db::save_token(t, minted_for)?;
        }
    }
    if let Some(s) = &outcome.rate_limit {
        db::save_rate_limit(s)?;
    }
    let status = outcome.status();
    let remaining = remaining(&outcome);
    // Checked: chosen, answered, and not left unknown.
    let polling = polling.map(|(report, chosen)| {
        let unchecked: std::collections::HashSet<&String> = written
            .failed_ids
            .iter()
            .chain(&written.unknown_ids)
            .collect();
        // A directory's live listing is a complete check of a live channel
        // (state, stream id, count): those need no id check until their
        // interval has passed without another listing (README, "Discovery").
        let checked: Vec<String> = chosen
            .into_iter()
            .filter(|id| !unchecked.contains(id))
            .chain(written.directory_checked.iter().cloned())
            .collect();
        (report, checked)
    });
    // Retention before the run's record, so that its finished_at (and the
    // duration status() and metrics() show) counts it.
    let prune_clock = Instant::now();
    let (pruned_runs, pruned_samples, pruned_events) = db::prune()?;
    let prune_ms = prune_clock.elapsed().as_secs_f64() * 1000.0;
    let (run_id, finished) = db::record_run(&RunRecord {
        started_at,
        status: status.as_str(),
        channels_checked: written.checked as i64,
        live: written.live as i64,
        updated: written.applied.updated,
        started: written.applied.started,
        ended: written.applied.ended,
        errors: outcome.failed_channels() as i64,
        helix_requests: outcome.helix_requests as i64,
        retries: outcome.retries as i64,
        rate_limited: outcome.rate_limited as i64,
        rate_limit_remaining: remaining,
        error: outcome.first_error(),
        unknown: written.unknown_ids.len() as i64,
        bad_entries: i64::from(outcome.stats.bad.total()),
        failed_ids: std::mem::take(&mut written.failed_ids),
        unknown_ids: std::mem::take(&mut written.unknown_ids),
        finished_at: None,
    })?;
    if let Some((report, checked)) = &polling {
        let checked = if status == RunStatus::Failed {
            Vec::new()
        } else {
            checked.clone()
        };
        db::record_polling(run_id, report, checked, started_at)?;
    }
    apply_ms += finish_clock.elapsed().as_secs_f64() * 1000.0 - prune_ms;
    let mut report = RunReport::finished(&outcome, written.applied, run_id, finished);
    report.duration_ms = clock.elapsed().as_millis() as u64;
    report.pruned = Some(Pruned {
        runs: pruned_runs,
        viewer_samples: pruned_samples,
        events: pruned_events,
    });
    report.timings_ms = Some(Timings::new(read_ms, http_ms, apply_ms, prune_ms));
    report.polling = polling.map(|(r, _)| r);
    report.discovery = written.discovery.take();
    let doc = report.to_json();
    for w in &outcome.warnings {
        pgrx::warning!("twitch_sync: {w}");
    }
    pgrx::log!("twitch_sync: run {run_id} finished: {doc}");
    Ok(doc)
}
