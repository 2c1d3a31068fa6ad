//! The SQL-facing layer of run(): read state, run the core, apply, record,
//! answer with a result document. Misuse raises; Twitch and network failures
//! are recorded and returned (so the run's row survives pg_cron's transaction).

use crate::db::{self, RunRecord};
use crate::error::SyncError;
use crate::{gucs, runtime};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};
use twitch_sync_core::config::validate_base_url;
use twitch_sync_core::{sync_streaming, BatchResult, SyncConfig, SyncInput, SyncOutcome};

/// run() writes answers in about this many chunks per run (plus the last) ...
const APPLY_CHUNKS: usize = 32;
/// ... of at least this many checked channels each.
const MIN_APPLY_CHUNK: usize = 1000;

/// What waiting on the engine brought: a batch's answer, or the end of the pass.
enum Step {
    Batch(BatchResult),
    Done(SyncOutcome),
}

/// What the chunks written so far add up to.
#[derive(Default)]
struct Totals {
    checked: usize,
    live: usize,
    updated: i64,
    started: i64,
    ended: i64,
    failures: Vec<twitch_sync_core::engine::BatchFailure>,
}

impl Totals {
    /// Writes the pending answers (one call of twitch_sync.apply_sync) and empties them.
    fn apply(
        &mut self,
        pending: &mut SyncOutcome,
        misses: i32,
        notify: bool,
    ) -> Result<(), SyncError> {
        self.failures.append(&mut pending.failures);
        if pending.checked.is_empty() {
            return Ok(());
        }
        let a = db::apply(&pending.checked, &pending.live, misses, notify)?;
        for change in a.changes.as_array().into_iter().flatten() {
            pgrx::debug1!("twitch_sync: {change}");
        }
        self.checked += pending.checked.len();
        self.live += pending.live.len();
        self.updated += a.updated;
        self.started += a.started;
        self.ended += a.ended;
        pending.checked.clear();
        pending.live.clear();
        Ok(())
    }
}

fn settings() -> Result<SyncConfig, SyncError> {
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
        ..SyncConfig::default()
    })
}

#[pgrx::pg_schema]
mod twitch_sync {
    use pgrx::prelude::*;
    use pgrx::JsonB;

    /// `twitch_sync.run()`: one sync pass; see README "SQL reference" for the result document.
    #[pg_extern(volatile, parallel_unsafe)]
    fn run() -> JsonB {
        match super::run_pass() {
            Ok(doc) => JsonB(doc),
            Err(e) => e.raise(),
        }
    }
}

fn run_pass() -> Result<serde_json::Value, SyncError> {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    if !db::try_lock_run()? {
        let (run_id, finished) = db::record_run(&RunRecord {
            started_at,
            status: "skipped",
            channels_checked: 0,
            live: 0,
            updated: 0,
            started: 0,
            ended: 0,
            errors: 0,
            helix_requests: 0,
            retries: 0,
            rate_limited: 0,
            rate_limit_remaining: None,
            error: Some("another twitch_sync.run() is in progress".into()),
        })?;
        pgrx::log!("twitch_sync: run {run_id} skipped: another run is in progress");
        return Ok(json!({
            "success": true, "skipped": true, "run_id": run_id, "status": "skipped",
            "total_streams": 0, "updated": 0, "started": 0, "ended": 0, "errors": 0,
            "helix_requests": 0, "retries": 0, "duration_ms": clock.elapsed().as_millis() as u64,
            "rate_limit_remaining": null, "timestamp": finished,
        }));
    }
    let config = settings()?;
    let state = db::read_state()?;
    let read_ms = clock.elapsed().as_secs_f64() * 1000.0;
    let total = state.broadcaster_ids.len();
    pgrx::log!("twitch_sync: run started: {total} channels to check");

    // Answers are written as they arrive, in a few chunks, while later requests
    // are still in flight: the database work hides behind Helix's latency.
    let chunk = (total / APPLY_CHUNKS).max(MIN_APPLY_CHUNK);
    let (misses, notify) = (gucs::offline_after_misses(), gucs::notify_events());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut engine = Box::pin(sync_streaming(
        SyncInput {
            config,
            credentials: state.credentials,
            token: state.token,
            broadcaster_ids: state.broadcaster_ids,
            rate_limit: state.rate_limit,
        },
        tx,
    ));
    let mut pending = SyncOutcome::default();
    let mut totals = Totals::default();
    let mut apply_ms = 0.0;
    let mut outcome = loop {
        let step = runtime::block_on_interruptible(async {
            tokio::select! {
                biased;
                Some(r) = rx.recv() => Step::Batch(r),
                done = engine.as_mut() => Step::Done(done),
            }
        });
        let done = match step {
            Step::Done(done) => Some(done),
            Step::Batch(first) => {
                pending.absorb(first);
                None
            }
        };
        while let Ok(r) = rx.try_recv() {
            pending.absorb(r);
        }
        if done.is_some() || pending.checked.len() >= chunk {
            if done.is_none() {
                // Let the runtime put the next requests on the wire first, so they
                // travel while this backend writes.
                runtime::block_on_interruptible(async {
                    tokio::time::sleep(Duration::from_millis(1)).await
                });
                while let Ok(r) = rx.try_recv() {
                    pending.absorb(r);
                }
            }
            let t = Instant::now();
            totals.apply(&mut pending, misses, notify)?;
            apply_ms += t.elapsed().as_secs_f64() * 1000.0;
        }
        if let Some(done) = done {
            break done;
        }
    };
    let http_ms = clock.elapsed().as_secs_f64() * 1000.0 - read_ms - apply_ms;
    let finish_clock = Instant::now();
    outcome.failures.append(&mut totals.failures);
    if totals.checked == 0 && outcome.fatal.is_none() {
        outcome.fatal = outcome.first_error();
    }
    if outcome.token_changed {
        if let Some(t) = &outcome.token {
            db::save_token(t)?;
        }
    }
    if let Some(s) = &outcome.rate_limit {
        db::save_rate_limit(s)?;
    }
    let status = if outcome.fatal.is_some() {
        "failed"
    } else if !outcome.failures.is_empty() {
        "partial"
    } else {
        "ok"
    };
    let error = outcome.first_error();
    let remaining = outcome
        .rate_limit
        .map(|s| s.remaining.min(i32::MAX as u32) as i32);
    let (run_id, finished) = db::record_run(&RunRecord {
        started_at,
        status,
        channels_checked: totals.checked as i64,
        live: totals.live as i64,
        updated: totals.updated,
        started: totals.started,
        ended: totals.ended,
        errors: outcome.failed_channels() as i64,
        helix_requests: outcome.helix_requests as i64,
        retries: outcome.retries as i64,
        rate_limited: outcome.rate_limited as i64,
        rate_limit_remaining: remaining,
        error: error.clone(),
    })?;
    apply_ms += finish_clock.elapsed().as_secs_f64() * 1000.0;
    let (pruned_runs, pruned_samples) = db::prune()?;
    let failures: Vec<_> = outcome
        .failures
        .iter()
        .map(|f| json!({"channels": f.channels, "error": f.error}))
        .collect();
    let doc = json!({
        "success": status != "failed",
        "status": status,
        "run_id": run_id,
        "total_streams": totals.checked,
        "live": totals.live,
        "updated": totals.updated,
        "started": totals.started,
        "ended": totals.ended,
        "errors": outcome.failed_channels(),
        "error": error,
        "failures": failures,
        "warnings": outcome.warnings,
        "helix_requests": outcome.helix_requests,
        "retries": outcome.retries,
        "rate_limited": outcome.rate_limited,
        "rate_limit_remaining": remaining,
        "duration_ms": clock.elapsed().as_millis() as u64,
        "pruned": {"runs": pruned_runs, "viewer_samples": pruned_samples},
        "timings_ms": {"read": round2(read_ms), "http": round2(http_ms), "apply": round2(apply_ms)},
        "timestamp": finished,
    });
    for w in &outcome.warnings {
        pgrx::warning!("twitch_sync: {w}");
    }
    pgrx::log!("twitch_sync: run {run_id} finished: {doc}");
    Ok(doc)
}

fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}
