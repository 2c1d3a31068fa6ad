//! The outcome of one `twitch_sync.run()`: its status and the result document
//! it returns (README "twitch_sync.run()"). Built from plain values so its
//! shape is tested without a database.

use crate::engine::{BatchFailure, PassSummary};
use crate::streams::{BadEntries, Cleaned};
use serde::Serialize;

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every batch got an answer.
    Ok,
    /// Some batches failed (their channels were left as they were), others were checked.
    Partial,
    /// No usable answer: no token, Twitch down, or every batch failed.
    Failed,
    /// Another run held the lock; nothing was done.
    Skipped,
}

impl RunStatus {
    /// The rule: `failed` if the pass was fatal (no request could be made), or if
    /// nothing was checked and a batch failed; `partial` if some batch failed;
    /// else `ok` (also when there was nothing to check).
    pub fn of(summary: &PassSummary, checked_any: bool) -> RunStatus {
        if summary.fatal.is_some() || (!checked_any && !summary.failures.is_empty()) {
            RunStatus::Failed
        } else if !summary.failures.is_empty() {
            RunStatus::Partial
        } else {
            RunStatus::Ok
        }
    }

    /// As stored in `twitch_sync.runs.status` and shown in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }

    /// `success` of the document: false only when failed.
    pub fn success(self) -> bool {
        self != RunStatus::Failed
    }
}

/// What `twitch_sync.apply_sync` reported over all chunks of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Live rows updated.
    pub updated: i64,
    /// Broadcasts started (new, or reopened).
    pub started: i64,
    /// Broadcasts ended (offline or restarted).
    pub ended: i64,
    /// Events written to twitch_sync.events.
    pub events: i64,
}

/// Rows removed by retention after the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub runs: i64,
    pub viewer_samples: i64,
    /// Events and alerts.
    pub events: i64,
}

/// Where the run's time went, in milliseconds (rounded to 0.01): reading
/// state, waiting on HTTP, writing, and retention (`prune()`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    pub read: f64,
    pub http: f64,
    pub apply: f64,
    pub prune: f64,
}

impl Timings {
    pub fn new(read_ms: f64, http_ms: f64, apply_ms: f64, prune_ms: f64) -> Timings {
        let r = |ms: f64| (ms * 100.0).round() / 100.0;
        Timings {
            read: r(read_ms),
            http: r(http_ms),
            apply: r(apply_ms),
            prune: r(prune_ms),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The result document of `twitch_sync.run()`. Every key is present in both
/// the normal and the skipped document except `skipped` (only `true`, only
/// when skipped), `pruned` and `timings_ms` (only when the run did its work).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// False only when `status` is `failed`.
    pub success: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub skipped: bool,
    pub status: RunStatus,
    pub run_id: i64,
    /// Channels checked (their batch got a complete answer and their state is known).
    pub total_streams: u64,
    /// Live streams seen.
    pub live: u64,
    pub updated: i64,
    pub started: i64,
    pub ended: i64,
    /// Events written to twitch_sync.events (online, restart, offline).
    pub events: i64,
    /// Channels left as they were because an entry about them was dropped (see `bad_entries`).
    pub unknown: u64,
    /// Channels in failed batches.
    pub errors: u64,
    /// The first error (None when there was none; the lock message when skipped).
    pub error: Option<String>,
    /// Each failed batch's size and error.
    pub failures: Vec<BatchFailure>,
    pub warnings: Vec<String>,
    /// Entries of Helix answers dropped, per reason.
    pub bad_entries: BadEntries,
    /// Fields of kept entries repaired or replaced, per field.
    pub cleaned: Cleaned,
    /// Entries repeating a stream id already listed for the same broadcaster (dropped).
    pub duplicate_entries: u32,
    pub helix_requests: u32,
    pub retries: u32,
    /// 429s received.
    pub rate_limited: u32,
    /// `Ratelimit-Remaining` of the last answer.
    pub rate_limit_remaining: Option<i32>,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings_ms: Option<Timings>,
    /// Adaptive polling's plan (only when it is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polling: Option<crate::adaptive::PollingReport>,
    /// Discovery by category: the run's directory walks (only when categories are tracked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<crate::discovery::DiscoveryReport>,
    /// How the run spoke HTTP (absent when it sent nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpUse>,
    /// When the run finished (RFC 3339, from Postgres).
    pub timestamp: String,
}

/// The connections of a run: `{"version": "HTTP/2", "connections": 1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HttpUse {
    /// `HTTP/2` or `HTTP/1.1` as spoken with Helix; `unknown` if no connection to it was made.
    pub version: &'static str,
    /// Connections opened (over https, each with its TLS handshake).
    pub connections: u32,
}

/// The error a skipped run records.
pub const SKIPPED_ERROR: &str = "another twitch_sync.run() is in progress";

impl RunReport {
    /// The document of a run that found another run holding the lock.
    pub fn skipped(run_id: i64, duration_ms: u64, timestamp: String) -> RunReport {
        RunReport {
            success: true,
            skipped: true,
            status: RunStatus::Skipped,
            run_id,
            total_streams: 0,
            live: 0,
            updated: 0,
            started: 0,
            ended: 0,
            events: 0,
            unknown: 0,
            errors: 0,
            error: Some(SKIPPED_ERROR.into()),
            failures: vec![],
            warnings: vec![],
            bad_entries: BadEntries::default(),
            cleaned: Cleaned::default(),
            duplicate_entries: 0,
            helix_requests: 0,
            retries: 0,
            rate_limited: 0,
            rate_limit_remaining: None,
            duration_ms,
            pruned: None,
            timings_ms: None,
            polling: None,
            discovery: None,
            http: None,
            timestamp,
        }
    }

    /// The document of a run that did its work: status by
    /// [`PassSummary::status`], counts from the summary and from the writes.
    /// `duration_ms`, `pruned` and `timings_ms` are left for the caller to set.
    pub fn finished(
        summary: &PassSummary,
        applied: Applied,
        run_id: i64,
        timestamp: String,
    ) -> RunReport {
        let status = summary.status();
        RunReport {
            success: status.success(),
            skipped: false,
            status,
            run_id,
            total_streams: summary.checked as u64,
            live: summary.live as u64,
            updated: applied.updated,
            started: applied.started,
            ended: applied.ended,
            events: applied.events,
            unknown: summary.unknown as u64,
            errors: summary.failed_channels() as u64,
            error: summary.first_error(),
            failures: summary.failures.clone(),
            warnings: summary.warnings.clone(),
            bad_entries: summary.stats.bad,
            cleaned: summary.stats.cleaned,
            duplicate_entries: summary.stats.duplicates,
            helix_requests: summary.helix_requests,
            retries: summary.retries,
            rate_limited: summary.rate_limited,
            rate_limit_remaining: remaining(summary),
            duration_ms: 0,
            pruned: None,
            timings_ms: None,
            polling: None,
            discovery: None,
            http: summary.protocol.map(|p| HttpUse {
                version: p.as_str(),
                connections: summary.connections,
            }),
            timestamp,
        }
    }

    /// The document as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        // Serializing plain fields and derived structs cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// `Ratelimit-Remaining` of the last answer, as the runs table stores it.
pub fn remaining(summary: &PassSummary) -> Option<i32> {
    summary
        .rate_limit
        .map(|s| s.remaining.min(i32::MAX as u32) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::RateLimitSnapshot;
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn status_rule() {
        let mut s = PassSummary::default();
        assert_eq!(RunStatus::of(&s, false), RunStatus::Ok, "nothing to check");
        assert_eq!(RunStatus::of(&s, true), RunStatus::Ok);
        s.failures.push(BatchFailure {
            broadcaster_ids: Vec::new(),
            channels: 100,
            error: "HTTP 500".into(),
        });
        assert_eq!(RunStatus::of(&s, true), RunStatus::Partial);
        assert_eq!(RunStatus::of(&s, false), RunStatus::Failed);
        s.failures.clear();
        s.fatal = Some("no token".into());
        assert_eq!(RunStatus::of(&s, true), RunStatus::Failed);
        // no request could be made: every planned channel is an error
        s.planned = 300;
        assert_eq!(s.failed_channels(), 300);
        s.fatal = None;
        assert_eq!(s.failed_channels(), 0);
        s.checked = 5;
        assert_eq!(s.status(), RunStatus::Ok);
        let names: Vec<(&str, bool)> = [
            RunStatus::Ok,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Skipped,
        ]
        .iter()
        .map(|s| (s.as_str(), s.success()))
        .collect();
        assert_eq!(
            names,
            vec![
                ("ok", true),
                ("partial", true),
                ("failed", false),
                ("skipped", true)
            ]
        );
        assert_eq!(
            serde_json::to_value(RunStatus::Partial).unwrap(),
            json!("partial")
        );
    }

    #[test]
    fn skipped_document() {
        let doc = RunReport::skipped(7, 3, "2026-11-25T14:00:47.305+00:00".into()).to_json();
        assert_eq!(
            doc,
            json!({
                "success": true, "skipped": true, "status": "skipped", "run_id": 7,
                "total_streams": 0, "live": 0, "updated": 0, "started": 0, "ended": 0,
                "events": 0, "unknown": 0, "errors": 0, "error": "another twitch_sync.run() is in progress",
                "failures": [], "warnings": [],
                "bad_entries": {"malformed": 0, "bad_stream_id": 0, "bad_broadcaster_id": 0,
                                "stream_id_conflict": 0, "foreign_broadcaster": 0},
                "cleaned": {"login": 0, "text": 0, "game_id": 0, "started_at": 0,
                            "viewer_count": 0, "encoding": 0},
                "duplicate_entries": 0,
                "helix_requests": 0, "retries": 0, "rate_limited": 0,
                "rate_limit_remaining": null, "duration_ms": 3,
                "timestamp": "2026-11-25T14:00:47.305+00:00",
            })
        );
    }

    #[test]
    fn finished_document() {
        let mut s = PassSummary {
            helix_requests: 4,
            retries: 1,
            rate_limited: 1,
            rate_limit: Some(RateLimitSnapshot {
                limit: 800,
                remaining: 797,
                reset: 0,
            }),
            warnings: vec!["token validation skipped: x".into()],
            checked: 200,
            live: 60,
            unknown: 2,
            protocol: Some(crate::concurrency::Protocol::Http2),
            connections: 1,
            ..Default::default()
        };
        s.failures = vec![
            BatchFailure {
                broadcaster_ids: Vec::new(),
                channels: 100,
                error: "HTTP 500".into(),
            },
            BatchFailure {
                broadcaster_ids: Vec::new(),
                channels: 50,
                error: "timeout".into(),
            },
        ];
        s.stats.bad.bad_stream_id = 2;
        s.stats.cleaned.started_at = 3;
        s.stats.duplicates = 4;
        let mut r = RunReport::finished(
            &s,
            Applied {
                updated: 55,
                started: 5,
                ended: 3,
                events: 8,
            },
            42,
            "2026-11-25T14:00:47.305+00:00".into(),
        );
        r.duration_ms = 61;
        r.pruned = Some(Pruned {
            runs: 1,
            viewer_samples: 2,
            events: 3,
        });
        r.timings_ms = Some(Timings::new(1.234, 50.0, 9.999, 0.5));
        let doc = r.to_json();
        assert_eq!(
            doc,
            json!({
                "success": true, "status": "partial", "run_id": 42,
                "total_streams": 200, "live": 60, "updated": 55, "started": 5, "ended": 3,
                "events": 8, "unknown": 2, "errors": 150, "error": "HTTP 500 (and 1 more failed batches)",
                "failures": [{"channels": 100, "error": "HTTP 500"},
                             {"channels": 50, "error": "timeout"}],
                "warnings": ["token validation skipped: x"],
                "bad_entries": {"malformed": 0, "bad_stream_id": 2, "bad_broadcaster_id": 0,
                                "stream_id_conflict": 0, "foreign_broadcaster": 0},
                "cleaned": {"login": 0, "text": 0, "game_id": 0, "started_at": 3,
                            "viewer_count": 0, "encoding": 0},
                "duplicate_entries": 4,
                "helix_requests": 4, "retries": 1, "rate_limited": 1,
                "rate_limit_remaining": 797, "duration_ms": 61,
                "pruned": {"runs": 1, "viewer_samples": 2, "events": 3},
                "timings_ms": {"read": 1.23, "http": 50.0, "apply": 10.0, "prune": 0.5},
                "http": {"version": "HTTP/2", "connections": 1},
                "timestamp": "2026-11-25T14:00:47.305+00:00",
            })
        );
        // The keys README documents for run() are all there, in both documents.
        let documented = [
            "success",
            "status",
            "run_id",
            "total_streams",
            "live",
            "updated",
            "started",
            "ended",
            "errors",
            "error",
            "failures",
            "warnings",
            "helix_requests",
            "retries",
            "rate_limited",
            "rate_limit_remaining",
            "duration_ms",
            "timestamp",
        ];
        let skipped = RunReport::skipped(1, 0, String::new()).to_json();
        for k in documented {
            assert!(keys(&doc).contains(&k), "{k}");
            assert!(keys(&skipped).contains(&k), "{k}");
        }

        // every batch failed: failed, success false
        s.checked = 0;
        let r = RunReport::finished(&s, Applied::default(), 43, String::new());
        assert_eq!((r.status, r.success), (RunStatus::Failed, false));
        // nothing failed
        s.failures.clear();
        s.checked = 10;
        let doc = RunReport::finished(&s, Applied::default(), 44, String::new()).to_json();
        assert_eq!(doc["status"], "ok");
        assert_eq!(doc["error"], serde_json::Value::Null);
        assert_eq!(doc["failures"], json!([]));
        assert!(doc.get("skipped").is_none());
    }
}
