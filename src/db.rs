//! Every SPI call of twitch_sync: reading state before a run, writing its
//! outcome after. Statements are parameterised; the set-based writes live in
//! sql/schema.sql (twitch_sync.apply_sync), called here once per chunk of
//! answers (run() writes a run's answers in several chunks as they arrive).

use crate::error::SyncError;
use pgrx::datum::DatumWithOid;
use pgrx::spi::Spi;
use pgrx::JsonB;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use twitch_sync_core::engine::{CachedToken, Credentials};
use twitch_sync_core::ratelimit::RateLimitSnapshot;
use twitch_sync_core::streams::LiveStream;

/// Advisory lock keys of the run lock ('twit', 1); status() looks for the same pair.
const RUN_LOCK: (i32, i32) = (1_953_720_692, 1);

fn internal(e: pgrx::spi::Error) -> SyncError {
    SyncError::Internal(e.to_string())
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn from_epoch(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

/// Takes the run lock for the rest of the transaction, if no other run holds it.
/// A transaction-level lock cannot be orphaned: it ends with the transaction,
/// however the backend ends.
pub fn try_lock_run() -> Result<bool, SyncError> {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
        &[RUN_LOCK.0.into(), RUN_LOCK.1.into()],
    )
    .map(|v| v.unwrap_or(false))
    .map_err(internal)
}

pub struct DbState {
    pub credentials: Credentials,
    pub token: Option<CachedToken>,
    pub rate_limit: Option<(RateLimitSnapshot, SystemTime)>,
    pub broadcaster_ids: Vec<String>,
}

pub fn read_state() -> Result<DbState, SyncError> {
    Spi::connect(|client| {
        let creds = client
            .select(
                "SELECT client_id, client_secret, access_token,
                        extract(epoch FROM token_expires_at)::float8,
                        extract(epoch FROM token_validated_at)::float8
                   FROM twitch_sync.credentials",
                None,
                &[],
            )
            .map_err(internal)?;
        let Some(row) = creds.into_iter().next() else {
            return Err(SyncError::NoCredentials);
        };
        let credentials = Credentials {
            client_id: row.get::<String>(1).map_err(internal)?.unwrap_or_default(),
            client_secret: row.get::<String>(2).map_err(internal)?.unwrap_or_default(),
        };
        let token = match (
            row.get::<String>(3).map_err(internal)?,
            row.get::<f64>(4).map_err(internal)?,
        ) {
            (Some(access_token), Some(expires)) => Some(CachedToken {
                access_token,
                expires_at: from_epoch(expires),
                validated_at: row.get::<f64>(5).map_err(internal)?.map(from_epoch),
            }),
            _ => None,
        };

        let rl = client
            .select(
                "SELECT bucket_limit, remaining, extract(epoch FROM reset_at)::float8,
                        extract(epoch FROM observed_at)::float8
                   FROM twitch_sync.rate_limit",
                None,
                &[],
            )
            .map_err(internal)?;
        let rate_limit = match rl.into_iter().next() {
            Some(r) => match (
                r.get::<i32>(1).map_err(internal)?,
                r.get::<i32>(2).map_err(internal)?,
                r.get::<f64>(3).map_err(internal)?,
                r.get::<f64>(4).map_err(internal)?,
            ) {
                (Some(limit), Some(remaining), Some(reset), Some(seen)) => Some((
                    RateLimitSnapshot {
                        limit: limit.max(0) as u32,
                        remaining: remaining.max(0) as u32,
                        reset: reset as u64,
                    },
                    from_epoch(seen),
                )),
                _ => None,
            },
            None => None,
        };

        let ids = client
            .select(
                "SELECT broadcaster_id FROM twitch_sync.channels WHERE enabled ORDER BY broadcaster_id",
                None,
                &[],
            )
            .map_err(internal)?;
        let mut broadcaster_ids = Vec::with_capacity(ids.len());
        for r in ids {
            if let Some(id) = r.get::<String>(1).map_err(internal)? {
                broadcaster_ids.push(id);
            }
        }
        Ok(DbState {
            credentials,
            token,
            rate_limit,
            broadcaster_ids,
        })
    })
}

pub fn save_token(token: &CachedToken) -> Result<(), SyncError> {
    Spi::run_with_args(
        "UPDATE twitch_sync.credentials
            SET access_token = $1, token_expires_at = pg_catalog.to_timestamp($2),
                token_validated_at = pg_catalog.to_timestamp($3)",
        &[
            token.access_token.clone().into(),
            epoch(token.expires_at).into(),
            token.validated_at.map(epoch).into(),
        ],
    )
    .map_err(internal)
}

pub fn save_rate_limit(s: &RateLimitSnapshot) -> Result<(), SyncError> {
    Spi::run_with_args(
        "INSERT INTO twitch_sync.rate_limit AS r (singleton, bucket_limit, remaining, reset_at, observed_at)
         VALUES (true, $1, $2, pg_catalog.to_timestamp($3), pg_catalog.clock_timestamp())
         ON CONFLICT (singleton) DO UPDATE
            SET bucket_limit = EXCLUDED.bucket_limit, remaining = EXCLUDED.remaining,
                reset_at = EXCLUDED.reset_at, observed_at = EXCLUDED.observed_at",
        &[
            (s.limit.min(i32::MAX as u32) as i32).into(),
            (s.remaining.min(i32::MAX as u32) as i32).into(),
            (s.reset as f64).into(),
        ],
    )
    .map_err(internal)
}

/// What twitch_sync.apply_sync reports back.
pub struct Applied {
    pub updated: i64,
    pub started: i64,
    pub ended: i64,
    pub changes: serde_json::Value,
}

/// Writes checked channels and their live streams with one call of
/// twitch_sync.apply_sync (a handful of set-based statements).
pub fn apply(
    checked: &[String],
    live: &[LiveStream],
    offline_after_misses: i32,
    notify: bool,
) -> Result<Applied, SyncError> {
    let col = |f: fn(&LiveStream) -> Option<String>| -> Vec<Option<String>> {
        live.iter().map(f).collect()
    };
    // Per checked channel: listed live by Helix, and its login if so.
    let logins: HashMap<&str, Option<&str>> = live
        .iter()
        .map(|s| (s.broadcaster_id.as_str(), s.login.as_deref()))
        .collect();
    let listed: Vec<bool> = checked
        .iter()
        .map(|id| logins.contains_key(id.as_str()))
        .collect();
    let login: Vec<Option<String>> = checked
        .iter()
        .map(|id| {
            logins
                .get(id.as_str())
                .copied()
                .flatten()
                .map(str::to_string)
        })
        .collect();
    let args: Vec<DatumWithOid> = vec![
        checked.to_vec().into(),
        listed.into(),
        login.into(),
        offline_after_misses.into(),
        notify.into(),
        col(|s| Some(s.stream_id.clone())).into(),
        col(|s| Some(s.broadcaster_id.clone())).into(),
        live.iter()
            .map(|s| s.viewer_count)
            .collect::<Vec<i32>>()
            .into(),
        col(|s| Some(s.title.clone())).into(),
        col(|s| Some(s.game_id.clone())).into(),
        col(|s| Some(s.game_name.clone())).into(),
        col(|s| Some(s.language.clone())).into(),
        col(|s| s.started_at.clone()).into(),
    ];
    let doc = Spi::get_one_with_args::<JsonB>(
        "SELECT twitch_sync.apply_sync($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &args,
    )
    .map_err(internal)?
    .map(|j| j.0)
    .unwrap_or_default();
    let n = |k: &str| doc.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    Ok(Applied {
        updated: n("updated"),
        started: n("started"),
        ended: n("ended"),
        changes: doc
            .get("changes")
            .cloned()
            .unwrap_or(serde_json::Value::Array(vec![])),
    })
}

/// One row of twitch_sync.runs.
pub struct RunRecord {
    pub started_at: SystemTime,
    pub status: &'static str,
    pub channels_checked: i64,
    pub live: i64,
    pub updated: i64,
    pub started: i64,
    pub ended: i64,
    pub errors: i64,
    pub helix_requests: i64,
    pub retries: i64,
    pub rate_limited: i64,
    pub rate_limit_remaining: Option<i32>,
    pub error: Option<String>,
}

/// Inserts the run's row; returns its run_id and finished_at (RFC 3339).
pub fn record_run(r: &RunRecord) -> Result<(i64, String), SyncError> {
    let to_i32 = |v: i64| v.clamp(0, i32::MAX as i64) as i32;
    Spi::get_two_with_args::<i64, String>(
        "INSERT INTO twitch_sync.runs (started_at, finished_at, status, channels_checked, live,
                 updated, started, ended, errors, helix_requests, retries, rate_limited,
                 rate_limit_remaining, error)
         VALUES (pg_catalog.to_timestamp($1), pg_catalog.clock_timestamp(), $2, $3, $4, $5, $6,
                 $7, $8, $9, $10, $11, $12, $13)
         RETURNING run_id, pg_catalog.to_json(finished_at) #>> '{}'",
        &[
            epoch(r.started_at).into(),
            r.status.into(),
            to_i32(r.channels_checked).into(),
            to_i32(r.live).into(),
            to_i32(r.updated).into(),
            to_i32(r.started).into(),
            to_i32(r.ended).into(),
            to_i32(r.errors).into(),
            to_i32(r.helix_requests).into(),
            to_i32(r.retries).into(),
            to_i32(r.rate_limited).into(),
            r.rate_limit_remaining.into(),
            r.error.clone().into(),
        ],
    )
    .map_err(internal)
    .map(|(id, at)| (id.unwrap_or_default(), at.unwrap_or_default()))
}

/// Prunes runs and samples past their retention (bounded work per call);
/// returns (runs, samples) deleted.
pub fn prune() -> Result<(i64, i64), SyncError> {
    Spi::get_two::<i64, i64>("SELECT runs_deleted, samples_deleted FROM twitch_sync.prune()")
        .map_err(internal)
        .map(|(r, s)| (r.unwrap_or(0), s.unwrap_or(0)))
}
