//! Every SPI call of twitch_sync: reading state before a run, writing its
//! outcome after. Statements are parameterised; the set-based writes live in
//! sql/transitions.sql (twitch_sync.apply_poll), called here once per chunk
//! of answers (run() writes a run's answers in several chunks as they arrive).

use crate::error::SyncError;
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::pg_sys::PgOid;
use pgrx::spi::{OwnedPreparedStatement, Spi};
use std::collections::{HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use twitch_sync_core::adaptive::{PolledChannel, PollingReport};
use twitch_sync_core::discovery::{Category, WalkEnd, WalkReport};
use twitch_sync_core::engine::{CachedToken, Credentials};
use twitch_sync_core::ratelimit::RateLimitSnapshot;
use twitch_sync_core::report::RunStatus;
use twitch_sync_core::rolled_back::RolledBackRun;
use twitch_sync_core::streams::LiveStream;

fn internal(e: pgrx::spi::Error) -> SyncError {
    SyncError::Internal(e.to_string())
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A stored time in Unix seconds. One that is no time a run can use
/// (infinity, NaN, before 1970 or past the year 5138, written by hand or
/// restored from a dump) reads as the epoch: long ago, so a token is minted
/// again, validated again, and a rate-limit reading is stale. (It was an
/// XX000 error with Rust's words in every run.)
fn from_epoch(secs: f64) -> SystemTime {
    const LATEST: f64 = 1e11;
    if !(0.0..=LATEST).contains(&secs) {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

/// The schema version this library is built for: `extversion` must equal it.
pub const SCHEMA_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Set once this backend has seen the schema at [`SCHEMA_VERSION`].
static SCHEMA_CHECKED: AtomicBool = AtomicBool::new(false);

/// Checks, once per backend, that the installed extension's version (its SQL
/// objects) is the one this library is built for. After new binaries are
/// installed and before `ALTER EXTENSION twitch_sync UPDATE`, every call that
/// touches the schema stops here with SQLSTATE 55000 and the fix, instead of
/// failing deep inside on a function whose signature changed.
pub fn check_schema_version() -> Result<(), SyncError> {
    if SCHEMA_CHECKED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let installed = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'twitch_sync'",
    )
    .map_err(internal)?
    .unwrap_or_default();
    if installed != SCHEMA_VERSION {
        return Err(SyncError::SchemaVersionMismatch {
            installed,
            library: SCHEMA_VERSION,
        });
    }
    SCHEMA_CHECKED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Refuses a read-only transaction (`SET default_transaction_read_only`, `BEGIN
/// READ ONLY`, a hot standby) before run() sends anything to Twitch.
pub fn check_writable() -> Result<(), SyncError> {
    let read_only =
        Spi::get_one::<bool>("SELECT pg_catalog.current_setting('transaction_read_only')::bool")
            .map_err(internal)?
            .unwrap_or(false);
    if read_only {
        return Err(SyncError::ReadOnly);
    }
    Ok(())
}

/// The local transaction id (`MyProc->lxid`) in which this backend last took
/// the run lock; 0 (InvalidLocalTransactionId) before the first.
static RUN_LOCK_LXID: AtomicU32 = AtomicU32::new(0);

fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is set for every backend before it runs SQL, and lxid is
    // written only by this backend.
    unsafe { pgrx::pg_sys::MyProc.as_ref().map_or(0, |p| p.lxid) }
}

/// Takes the run lock (twitch_sync.try_run_lock) for the rest of the
/// transaction, if no other run holds it. A run already holding it in this
/// transaction (`SELECT twitch_sync.run() FROM generate_series(1, 3)`) counts
/// as another run: advisory locks are re-entrant, so the transaction that took
/// it is remembered, and only then is pg_locks asked (a millisecond).
pub fn try_lock_run() -> Result<bool, SyncError> {
    let lxid = local_transaction_id();
    let sql = if lxid != 0 && RUN_LOCK_LXID.load(Ordering::Relaxed) == lxid {
        // Taken earlier in this transaction, unless a rolled-back
        // subtransaction released it since: pg_locks tells.
        "SELECT CASE WHEN twitch_sync.run_lock_holder() = pg_catalog.pg_backend_pid() THEN false
                     ELSE twitch_sync.try_run_lock() END"
    } else {
        "SELECT twitch_sync.try_run_lock()"
    };
    let locked = Spi::get_one::<bool>(sql)
        .map(|v| v.unwrap_or(false))
        .map_err(internal)?;
    if locked {
        RUN_LOCK_LXID.store(lxid, Ordering::Relaxed);
    }
    Ok(locked)
}

pub struct DbState {
    pub credentials: Credentials,
    pub token: Option<CachedToken>,
    pub rate_limit: Option<(RateLimitSnapshot, SystemTime)>,
    /// The enabled channels, in numeric broadcaster id order (empty for
    /// adaptive polling: see read_state).
    pub broadcaster_ids: Vec<String>,
}

/// Broadcaster id → stored login, of the enabled channels live when the run
/// started. Only for these can "not listed" change anything (count a miss,
/// end a stream), so only these are sent to the transition layer as not-listed
/// observations; and a chunk sends a listed login only where it differs from
/// this one (the transition layer compares again). Reading every channel's
/// login instead cost a 100,000-channel run 20 ms.
pub type LiveAtStart = HashMap<String, Option<String>>;

/// Reads [`LiveAtStart`] (twitch_sync.live_channels). run() calls it once its
/// first requests are on the wire: nothing needs it before the first answer.
pub fn read_live_at_start() -> Result<LiveAtStart, SyncError> {
    let live = Spi::get_one::<String>("SELECT twitch_sync.live_channels()")
        .map_err(internal)?
        .unwrap_or_default();
    Ok(live
        .split(',')
        .filter(|c| !c.is_empty())
        .map(|c| match c.split_once(' ') {
            Some((id, login)) => (id.to_owned(), Some(login.to_owned())),
            None => (c.to_owned(), None),
        })
        .collect())
}

/// Makes sure viewer_samples has partitions for today and tomorrow (UTC), so
/// this run's samples have a place even if twitch_sync.maintain() never ran.
pub fn ensure_sample_partitions() -> Result<(), SyncError> {
    // Two catalog lookups; the function that creates them only when one is missing.
    Spi::run(
        "SELECT twitch_sync.create_sample_partitions(d, d + 1)
           FROM (SELECT (pg_catalog.now() AT TIME ZONE 'UTC')::date AS d) today
          WHERE pg_catalog.to_regclass('twitch_sync.' || twitch_sync.sample_partition(d)) IS NULL
             OR pg_catalog.to_regclass('twitch_sync.' || twitch_sync.sample_partition(d + 1)) IS NULL",
    )
    .map_err(internal)
}

/// The app's credentials and its cached token (NoCredentials when unset).
fn read_credentials(
    client: &pgrx::spi::SpiClient<'_>,
) -> Result<(Credentials, Option<CachedToken>), SyncError> {
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
    Ok((credentials, token))
}

/// The run's state. Without `channels` (adaptive polling, whose plan reads
/// the channels with what it needs about them: db::read_poll_input),
/// `broadcaster_ids` is left empty.
pub fn read_state(channels: bool) -> Result<DbState, SyncError> {
    Spi::connect(|client| {
        let (credentials, token) = read_credentials(client)?;

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

        let channels = if channels {
            client
                .select("SELECT twitch_sync.poll_channels()", None, &[])
                .and_then(|list| list.first().get_one::<String>())
                .map_err(internal)?
                .unwrap_or_default()
        } else {
            String::new()
        };
        // In broadcaster id order (numerically: an id is 1 to 20 digits with no
        // leading zero, so it fits a u128), sorted here: batches go in that order.
        let mut keyed: Vec<(u128, &str)> = channels
            .split(',')
            .filter(|id| !id.is_empty())
            .map(|id| (id.parse().unwrap_or(u128::MAX), id))
            .collect();
        keyed.sort_unstable_by_key(|k| k.0);
        let broadcaster_ids: Vec<String> = keyed.iter().map(|k| k.1.to_owned()).collect();
        Ok(DbState {
            credentials,
            token,
            rate_limit,
            broadcaster_ids,
        })
    })
}

/// Caches `token`, minted or validated with `credentials`, unless
/// set_credentials() replaced those meanwhile (it drops the cached token; a
/// token of the old client id would then be sent with the new one, and
/// Twitch answers 401 to that pair).
pub fn save_token(token: &CachedToken, credentials: &Credentials) -> Result<(), SyncError> {
    Spi::run_with_args(
        "UPDATE twitch_sync.credentials
            SET access_token = $1, token_expires_at = pg_catalog.to_timestamp($2),
                token_validated_at = pg_catalog.to_timestamp($3)
          WHERE client_id = $4 AND client_secret = $5",
        &[
            token.access_token.clone().into(),
            epoch(token.expires_at).into(),
            token.validated_at.map(epoch).into(),
            credentials.client_id.clone().into(),
            credentials.client_secret.clone().into(),
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

/// Adaptive polling's view of the enabled channels, aligned with `ids`.
pub struct PollInput {
    pub ids: Vec<String>,
    pub channels: Vec<PolledChannel>,
    /// Seconds since the epoch (the transaction's now()).
    pub now: f64,
    /// Seconds since the previous run started (60 when there was none).
    pub run_period: f64,
    /// The live stream's game id and language, per channel (None: not live).
    pub live_in: Vec<Option<(String, String)>>,
}

pub fn read_poll_input() -> Result<PollInput, SyncError> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT coalesce(array_agg(c.broadcaster_id), '{}'),
                        coalesce(array_agg(c.priority::int4), '{}'),
                        coalesce(array_agg(extract(epoch FROM c.checked_at)::float8), '{}'),
                        coalesce(array_agg(s.viewer_count), '{}'),
                        extract(epoch FROM pg_catalog.now())::float8,
                        (SELECT extract(epoch FROM pg_catalog.now() - max(r.started_at))::float8
                           FROM twitch_sync.runs r WHERE r.status <> 'skipped'),
                        coalesce(array_agg(e.broadcaster_id IS NOT NULL), '{}'),
                        coalesce(array_agg(CASE WHEN s.missed_polls = 0 THEN s.game_id END), '{}'),
                        coalesce(array_agg(s.language), '{}')
                   FROM twitch_sync.channels c
                   LEFT JOIN twitch_sync.streams s ON s.broadcaster_id = c.broadcaster_id AND s.is_live
                   LEFT JOIN twitch_sync.eventsub_covered() e ON e.broadcaster_id = c.broadcaster_id
                  WHERE c.enabled",
                None,
                &[],
            )
            .map_err(internal)?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Internal("no poll state".into()))?;
        let ids = row
            .get::<Vec<String>>(1)
            .map_err(internal)?
            .unwrap_or_default();
        let priorities = row
            .get::<Vec<i32>>(2)
            .map_err(internal)?
            .unwrap_or_default();
        let checked = row
            .get::<Vec<Option<f64>>>(3)
            .map_err(internal)?
            .unwrap_or_default();
        let viewers = row
            .get::<Vec<Option<i32>>>(4)
            .map_err(internal)?
            .unwrap_or_default();
        let covered = row
            .get::<Vec<bool>>(7)
            .map_err(internal)?
            .unwrap_or_default();
        let games = row
            .get::<Vec<Option<String>>>(8)
            .map_err(internal)?
            .unwrap_or_default();
        let languages = row
            .get::<Vec<Option<String>>>(9)
            .map_err(internal)?
            .unwrap_or_default();
        let live_in = (0..ids.len())
            .map(|i| match (games.get(i), languages.get(i)) {
                (Some(Some(g)), Some(l)) => Some((g.clone(), l.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        let channels = (0..ids.len())
            .map(|i| PolledChannel {
                live_viewers: viewers.get(i).copied().flatten().map(|v| v.max(0) as u32),
                covered: covered.get(i).copied().unwrap_or(false),
                priority: priorities.get(i).copied().unwrap_or(0).clamp(0, 10) as u8,
                checked_at: checked.get(i).copied().flatten(),
            })
            .collect();
        Ok(PollInput {
            ids,
            channels,
            now: row.get::<f64>(5).map_err(internal)?.unwrap_or(0.0),
            run_period: row
                .get::<f64>(6)
                .map_err(internal)?
                .map_or(60.0, |p| p.clamp(1.0, 3600.0)),
            live_in,
        })
    })
}

/// Records adaptive polling's plan on the run and the channels it checked.
pub fn record_polling(
    run_id: i64,
    report: &PollingReport,
    checked: Vec<String>,
    checked_at: SystemTime,
) -> Result<(), SyncError> {
    let doc = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    Spi::run_with_args(
        "SELECT twitch_sync.record_polling($1, $2, $3, pg_catalog.to_timestamp($4))",
        &[
            run_id.into(),
            pgrx::JsonB(doc).into(),
            checked.into(),
            epoch(checked_at).into(),
        ],
    )
    .map_err(internal)
}

/// What one chunk's write did: twitch_sync.apply_poll's result.
pub struct ChunkResult {
    pub live: i64,
    pub updated: i64,
    pub started: i64,
    pub ended: i64,
    /// Broadcasters left as they were: their live stream id belongs to another broadcaster.
    pub conflicted: Vec<String>,
    pub events: i64,
    /// Set when the chunk's subtransaction failed: nothing of it was written.
    pub error: Option<String>,
}

/// The call of twitch_sync.apply_poll that writes a chunk.
const APPLY_POLL_SQL: &str = "SELECT (c.applied).live, (c.applied).updated, (c.applied).started,
        (c.applied).ended, (c.applied).conflicted, (c.applied).events, c.error
   FROM twitch_sync.apply_poll(pg_catalog.to_timestamp($1), $2, $3, $4, $5, $6, $7, $8, $9,
                               $10, $11, $12, $13) c";

thread_local! {
    /// [`APPLY_POLL_SQL`], prepared once per backend (SPI_keepplan): a run
    /// writes up to about 33 chunks, and parsing and planning the call each
    /// time cost about 0.5 ms. Postgres' plan cache re-plans it if the
    /// function is replaced (an upgrade, or a reinstall in the same session).
    /// Never dropped (ManuallyDrop): its Drop would free the plan through
    /// SPI at process exit, after Postgres has shut down.
    static APPLY_POLL: once_cell::unsync::OnceCell<ManuallyDrop<OwnedPreparedStatement>> =
        const { once_cell::unsync::OnceCell::new() };
}

/// Writes one chunk of a poll through the transition layer
/// (twitch_sync.apply_poll, a subtransaction): the live streams listed, and
/// the checked channels that were not listed but had a live stream when the
/// run started (`live_at_start`; for any other channel "not listed" changes
/// nothing, so it costs nothing). The columns borrow the streams' strings.
pub fn apply_poll_chunk(
    checked: &[String],
    live: &[LiveStream],
    live_at_start: &LiveAtStart,
    offline_after_misses: i32,
    notify: bool,
) -> Result<ChunkResult, SyncError> {
    let listed: HashSet<&str> = live.iter().map(|s| s.broadcaster_id.as_str()).collect();
    let not_listed: Vec<&str> = checked
        .iter()
        .map(String::as_str)
        .filter(|id| !listed.contains(id) && live_at_start.contains_key(*id))
        .collect();
    let col = |f: fn(&LiveStream) -> &str| -> Vec<&str> { live.iter().map(f).collect() };
    let args: Vec<DatumWithOid> = vec![
        epoch(SystemTime::now()).into(),
        col(|s| &s.broadcaster_id).into(),
        col(|s| &s.stream_id).into(),
        live.iter()
            .map(|s| {
                s.login.as_deref().filter(|l| {
                    live_at_start.get(&s.broadcaster_id).map(Option::as_deref) != Some(Some(l))
                })
            })
            .collect::<Vec<Option<&str>>>()
            .into(),
        live.iter()
            .map(|s| s.viewer_count)
            .collect::<Vec<i32>>()
            .into(),
        col(|s| &s.title).into(),
        col(|s| &s.game_id).into(),
        col(|s| &s.game_name).into(),
        col(|s| &s.language).into(),
        live.iter()
            .map(|s| s.started_at.and_then(crate::schedule::from_unix_micros))
            .collect::<Vec<Option<TimestampWithTimeZone>>>()
            .into(),
        not_listed.into(),
        offline_after_misses.into(),
        notify.into(),
    ];
    Spi::connect(|client| {
        let rows = APPLY_POLL
            .with(|prepared| {
                let statement = prepared.get_or_try_init(|| {
                    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
                    client
                        .prepare_mut(APPLY_POLL_SQL, &types)
                        .map(|p| ManuallyDrop::new(p.keep()))
                })?;
                client.select(&**statement, None, &args)
            })
            .map_err(internal)?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Internal("apply_poll returned no row".into()))?;
        let n = |i: usize| -> Result<i64, SyncError> {
            Ok(i64::from(row.get::<i32>(i).map_err(internal)?.unwrap_or(0)))
        };
        Ok(ChunkResult {
            live: n(1)?,
            updated: n(2)?,
            started: n(3)?,
            ended: n(4)?,
            conflicted: row
                .get::<Vec<String>>(5)
                .map_err(internal)?
                .unwrap_or_default(),
            events: n(6)?,
            error: row.get::<String>(7).map_err(internal)?,
        })
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
    pub unknown: i64,
    pub bad_entries: i64,
    /// Channels of failed batches and chunks, and channels whose state was
    /// unknown: written to twitch_sync.run_unchecked.
    pub failed_ids: Vec<String>,
    pub unknown_ids: Vec<String>,
    /// None: the calling run, which ends now; a rolled-back run's end when a
    /// later run records it.
    pub finished_at: Option<SystemTime>,
}

impl RunRecord {
    /// A run that did nothing (yet): zero counts, no error.
    pub fn new(started_at: SystemTime, status: &'static str) -> RunRecord {
        RunRecord {
            started_at,
            status,
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
            error: None,
            unknown: 0,
            bad_entries: 0,
            failed_ids: Vec::new(),
            unknown_ids: Vec::new(),
            finished_at: None,
        }
    }
}

/// Records runs rolled back since the last run (src/rolled_back.rs), each as
/// failed, from its start to its end.
pub fn record_rolled_back(runs: Vec<RolledBackRun>) -> Result<(), SyncError> {
    for run in runs {
        let (run_id, _) = record_run(&RunRecord {
            error: Some(run.error),
            finished_at: Some(run.finished_at),
            ..RunRecord::new(run.started_at, RunStatus::Failed.as_str())
        })?;
        pgrx::log!(
            "twitch_sync: a rolled-back run is recorded as run {run_id} (if this run's \
             transaction commits)"
        );
    }
    Ok(())
}

/// Records the run with twitch_sync.record_run (its row, the counters, the
/// alert); returns its run_id and finished_at (RFC 3339).
pub fn record_run(r: &RunRecord) -> Result<(i64, String), SyncError> {
    let to_i32 = |v: i64| v.clamp(0, i32::MAX as i64) as i32;
    Spi::get_two_with_args::<i64, String>(
        "SELECT run_id, pg_catalog.to_json(finished_at) #>> '{}'
           FROM twitch_sync.record_run(pg_catalog.to_timestamp($1), $2, $3, $4, $5, $6, $7, $8,
                                       $9, $10, $11, $12, $13, $14, $15, $16, $17,
                                       pg_catalog.to_timestamp($18))",
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
            to_i32(r.unknown).into(),
            to_i32(r.bad_entries).into(),
            r.failed_ids.clone().into(),
            r.unknown_ids.clone().into(),
            r.finished_at.map(epoch).into(),
        ],
    )
    .map_err(internal)
    .map(|(id, at)| (id.unwrap_or_default(), at.unwrap_or_default()))
}

/// Prunes runs, samples, events and alerts past their retention (bounded work
/// per call); returns (runs, samples, events and alerts) deleted.
pub fn prune() -> Result<(i64, i64, i64), SyncError> {
    Spi::get_three::<i64, i64, i64>(
        "SELECT runs_deleted, samples_deleted, events_deleted FROM twitch_sync.prune()",
    )
    .map_err(internal)
    .map(|(r, s, e)| (r.unwrap_or(0), s.unwrap_or(0), e.unwrap_or(0)))
}

// ---- The EventSub background worker (src/worker.rs) ----

/// What the worker needs to decide whether to run, read in one transaction.
pub struct WorkerEnvironment {
    /// The extension exists in this database with this library's version.
    pub installed: bool,
    /// The extension's version in this database, if it exists at all.
    pub version: Option<String>,
    pub credentials: Option<(Credentials, Option<CachedToken>)>,
    pub tracked_channels: i64,
    /// The stored conduit: (client id, conduit id).
    pub conduit: Option<(String, String)>,
}

/// Reads the worker's environment; touches no twitch_sync table unless the
/// extension is installed (with this library's version).
pub fn worker_environment() -> Result<WorkerEnvironment, SyncError> {
    // a scalar subquery: one row (NULL) when the extension is not there
    let version = Spi::get_one::<String>(
        "SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'twitch_sync')",
    )
    .map_err(internal)?;
    if version.as_deref() != Some(SCHEMA_VERSION) {
        return Ok(WorkerEnvironment {
            installed: false,
            version,
            credentials: None,
            tracked_channels: 0,
            conduit: None,
        });
    }
    // credentials only: the worker checks every few seconds, and the
    // channel list read_state() reads is not its business
    let credentials = match Spi::connect(read_credentials) {
        Ok(c) => Some(c),
        Err(SyncError::NoCredentials) => None,
        Err(e) => return Err(e),
    };
    let tracked_channels =
        Spi::get_one::<i64>("SELECT count(*) FROM twitch_sync.channels WHERE enabled")
            .map_err(internal)?
            .unwrap_or(0);
    let conduit = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT client_id, conduit_id FROM twitch_sync.eventsub_worker
                  WHERE client_id IS NOT NULL AND conduit_id IS NOT NULL",
                None,
                &[],
            )
            .map_err(internal)?;
        match rows.into_iter().next() {
            Some(r) => Ok(
                match (
                    r.get::<String>(1).map_err(internal)?,
                    r.get::<String>(2).map_err(internal)?,
                ) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
            ),
            None => Ok(None),
        }
    })?;
    Ok(WorkerEnvironment {
        installed: true,
        version,
        credentials,
        tracked_channels,
        conduit,
    })
}

/// The worker's row of twitch_sync.eventsub_worker, as the worker sees itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerRow {
    pub pid: i32,
    pub started_at: f64,
    pub state: &'static str,
    pub detail: Option<String>,
    pub client_id: Option<String>,
    pub conduit_id: Option<String>,
    pub shard_id: Option<String>,
    pub session_id: Option<String>,
    pub connected_since: Option<f64>,
    pub reconnects: i64,
    pub events_received: i64,
    pub events_applied: i64,
    pub events_duplicate: i64,
    pub events_dropped: i64,
    pub last_event_at: Option<f64>,
    pub last_event_lag_ms: Option<f64>,
    pub max_event_lag_ms: Option<f64>,
    pub total_cost: Option<i32>,
    pub max_total_cost: Option<i32>,
    pub reconciled_at: Option<f64>,
}

/// Writes the worker's row (one upsert).
pub fn save_worker_row(w: &WorkerRow) -> Result<(), SyncError> {
    Spi::run_with_args(
        "INSERT INTO twitch_sync.eventsub_worker AS w (singleton, pid, started_at, state, detail,
                client_id, conduit_id, shard_id, session_id, connected_since, reconnects,
                events_received, events_applied, events_duplicate, events_dropped, last_event_at,
                last_event_lag_ms, max_event_lag_ms, total_cost, max_total_cost, reconciled_at, updated_at)
         VALUES (true, $1, pg_catalog.to_timestamp($2), $3, $4, $5, $6, $7, $8, pg_catalog.to_timestamp($9),
                 $10, $11, $12, $13, $14, pg_catalog.to_timestamp($15), $16, $17, $18, $19,
                 pg_catalog.to_timestamp($20), pg_catalog.now())
         ON CONFLICT (singleton) DO UPDATE SET
                pid = excluded.pid, started_at = excluded.started_at, state = excluded.state,
                detail = excluded.detail,
                client_id = coalesce(excluded.client_id, w.client_id),
                conduit_id = CASE WHEN excluded.client_id IS NULL THEN w.conduit_id ELSE excluded.conduit_id END,
                shard_id = excluded.shard_id, session_id = excluded.session_id,
                connected_since = excluded.connected_since, reconnects = excluded.reconnects,
                events_received = excluded.events_received, events_applied = excluded.events_applied,
                events_duplicate = excluded.events_duplicate, events_dropped = excluded.events_dropped,
                last_event_at = excluded.last_event_at, last_event_lag_ms = excluded.last_event_lag_ms,
                max_event_lag_ms = excluded.max_event_lag_ms,
                total_cost = coalesce(excluded.total_cost, w.total_cost),
                max_total_cost = coalesce(excluded.max_total_cost, w.max_total_cost),
                reconciled_at = coalesce(excluded.reconciled_at, w.reconciled_at),
                updated_at = excluded.updated_at",
        &[
            w.pid.into(),
            w.started_at.into(),
            w.state.into(),
            w.detail.clone().into(),
            w.client_id.clone().into(),
            w.conduit_id.clone().into(),
            w.shard_id.clone().into(),
            w.session_id.clone().into(),
            w.connected_since.into(),
            w.reconnects.into(),
            w.events_received.into(),
            w.events_applied.into(),
            w.events_duplicate.into(),
            w.events_dropped.into(),
            w.last_event_at.into(),
            w.last_event_lag_ms.into(),
            w.max_event_lag_ms.into(),
            w.total_cost.into(),
            w.max_total_cost.into(),
            w.reconciled_at.into(),
        ],
    )
    .map_err(internal)
}

/// Applies one notification through twitch_sync.apply_eventsub; its verdict.
pub fn apply_event(
    a: &twitch_sync_core::eventsub::apply::EventArgs,
    notify: bool,
) -> Result<String, SyncError> {
    Spi::get_one_with_args::<String>(
        "SELECT twitch_sync.apply_eventsub($1, $2::timestamptz, $3, $4, $5, $6, $7::timestamptz, $8)",
        &[
            a.message_id.clone().into(),
            a.message_at.clone().into(),
            a.event.into(),
            a.broadcaster_id.clone().into(),
            a.stream_id.clone().into(),
            a.login.clone().into(),
            a.started_at.clone().into(),
            notify.into(),
        ],
    )
    .map_err(internal)
    .map(Option::unwrap_or_default)
}

/// A revocation: the subscription keeps the reason as its status.
pub fn record_revocation(subscription_id: &str, status: &str) -> Result<bool, SyncError> {
    Spi::get_one_with_args::<bool>(
        "SELECT twitch_sync.eventsub_record_revocation($1, $2)",
        &[subscription_id.into(), status.into()],
    )
    .map_err(internal)
    .map(|b| b.unwrap_or(false))
}

/// The tracked channels in EventSub rank order and the recorded subscriptions.
pub fn read_subscription_state() -> Result<
    (
        Vec<String>,
        Vec<twitch_sync_core::eventsub::reconcile::Recorded>,
    ),
    SyncError,
> {
    use twitch_sync_core::eventsub::reconcile::Recorded;
    let ranked = Spi::get_one::<Vec<String>>("SELECT twitch_sync.eventsub_ranked_channels()")
        .map_err(internal)?
        .unwrap_or_default();
    let recorded = Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT broadcaster_id, type, subscription_id, status,
                        extract(epoch FROM pg_catalog.now() - status_at)::float8, cost
                   FROM twitch_sync.eventsub_subscriptions",
                None,
                &[],
            )
            .map_err(internal)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Recorded {
                broadcaster_id: r.get::<String>(1).map_err(internal)?.unwrap_or_default(),
                kind: r.get::<String>(2).map_err(internal)?.unwrap_or_default(),
                subscription_id: r.get::<String>(3).map_err(internal)?.unwrap_or_default(),
                status: r.get::<String>(4).map_err(internal)?.unwrap_or_default(),
                status_age: r.get::<f64>(5).map_err(internal)?.unwrap_or(0.0),
                cost: r.get::<i32>(6).map_err(internal)?.unwrap_or(0).max(0) as u64,
            });
        }
        Ok::<_, SyncError>(out)
    })?;
    Ok((ranked, recorded))
}

/// Records a subscription created or listed.
pub fn record_subscription(
    s: &twitch_sync_core::eventsub::helix::Subscription,
) -> Result<(), SyncError> {
    Spi::run_with_args(
        "SELECT twitch_sync.eventsub_record_subscription($1, $2, $3, $4, $5)",
        &[
            s.broadcaster_id.clone().into(),
            s.kind.clone().into(),
            s.id.clone().into(),
            s.status.clone().into(),
            i32::try_from(s.cost).unwrap_or(i32::MAX).into(),
        ],
    )
    .map_err(internal)
}

/// Forgets a subscription that is gone (deleted, or not on Twitch's list).
pub fn forget_subscription(broadcaster_id: &str, kind: &str) -> Result<(), SyncError> {
    Spi::run_with_args(
        "DELETE FROM twitch_sync.eventsub_subscriptions WHERE broadcaster_id = $1 AND type = $2",
        &[broadcaster_id.into(), kind.into()],
    )
    .map_err(internal)
}

/// After a full listing of the conduit: rows Twitch does not list are gone.
pub fn forget_unlisted_subscriptions(listed_ids: Vec<String>) -> Result<(), SyncError> {
    Spi::run_with_args(
        "DELETE FROM twitch_sync.eventsub_subscriptions WHERE subscription_id <> ALL ($1)",
        &[listed_ids.into()],
    )
    .map_err(internal)
}

/// A new conduit (or none): all recorded subscriptions belonged to the old one.
pub fn save_conduit(client_id: &str, conduit_id: &str) -> Result<(), SyncError> {
    Spi::run_with_args(
        "INSERT INTO twitch_sync.eventsub_worker AS w (singleton, client_id, conduit_id)
         VALUES (true, $1, $2)
         ON CONFLICT (singleton) DO UPDATE SET client_id = excluded.client_id,
                conduit_id = excluded.conduit_id, updated_at = pg_catalog.now()",
        &[client_id.into(), conduit_id.into()],
    )
    .map_err(internal)?;
    Spi::run("DELETE FROM twitch_sync.eventsub_subscriptions").map_err(internal)
}

/// The stored conduit is gone at Twitch (deleted, its subscriptions
/// disabled with it): it is forgotten, so the worker's next start creates a
/// new one, and the subscriptions on record that were enabled become
/// `conduit_deleted` (Twitch's status for them), so
/// twitch_sync.eventsub_covered() no longer counts those channels and
/// polling covers them again at once. [`save_conduit`] clears them when the
/// new conduit is stored.
pub fn forget_conduit(conduit_id: &str) -> Result<(), SyncError> {
    Spi::run_with_args(
        "UPDATE twitch_sync.eventsub_worker SET conduit_id = NULL, updated_at = pg_catalog.now()
          WHERE conduit_id = $1",
        &[conduit_id.into()],
    )
    .map_err(internal)?;
    Spi::run(
        "UPDATE twitch_sync.eventsub_subscriptions
            SET status = 'conduit_deleted', status_at = pg_catalog.now()
          WHERE status = 'enabled'",
    )
    .map_err(internal)
}

// ---------------------------------------------------------------------------
// The webhook transport (src/webhook.rs, sql/webhook.sql). It applies
// notifications with apply_event and records revocations with
// record_revocation, as the worker does.

/// PostgREST's `request.headers` setting of this transaction, if any.
pub fn request_headers() -> Result<Option<String>, SyncError> {
    Spi::get_one::<String>("SELECT pg_catalog.current_setting('request.headers', true)")
        .map_err(internal)
}

/// The stored webhook secret (twitch_sync.credentials.webhook_secret), if set.
/// Callers never put it into a message.
pub fn webhook_secret() -> Result<Option<String>, SyncError> {
    // A scalar subquery: one row whether or not credentials are set.
    Spi::get_one::<String>("SELECT (SELECT webhook_secret FROM twitch_sync.credentials)")
        .map_err(internal)
}

/// Sets PostgREST's `response.headers` for the rest of the transaction.
pub fn set_response_headers(json: &str) -> Result<(), SyncError> {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('response.headers', $1, true)",
        &[json.into()],
    )
    .map_err(internal)
}

/// The tracked categories (twitch_sync.tracked_categories), with the room left
/// under each cap and how each was last walked: what a run's directory walks
/// are planned from. The one walked longest ago (or never) comes first:
/// [`twitch_sync_core::discovery::plan_walks`] hands out pages in this order,
/// so when pages are short every category gets its turn.
pub fn read_categories() -> Result<Vec<Category>, SyncError> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT t.game_id, t.language, t.max_channels,
                        greatest(t.max_channels - (SELECT count(*) FROM twitch_sync.channels c
                                                    WHERE c.discovered_via = t.game_id), 0)::int4,
                        t.last_pages, t.last_end, t.last_floor_viewers
                   FROM twitch_sync.tracked_categories t
                  WHERE t.language IS NULL OR twitch_sync.is_language(t.language)
                  ORDER BY t.last_paged_at NULLS FIRST, t.game_id",
                None,
                &[],
            )
            .map_err(internal)?;
        let mut out = Vec::new();
        for r in rows {
            let game_id = r.get::<String>(1).map_err(internal)?.unwrap_or_default();
            // The table's checks hold these rules; a row edited around them is skipped.
            let language = r.get::<String>(2).map_err(internal)?;
            if !twitch_sync_core::streams::is_numeric_id(&game_id) {
                continue;
            }
            out.push(Category {
                game_id,
                language,
                max_channels: r.get::<i32>(3).map_err(internal)?.unwrap_or(1).max(1) as u32,
                room: r.get::<i32>(4).map_err(internal)?.unwrap_or(0).max(0) as u32,
                last_pages: r.get::<i32>(5).map_err(internal)?.map(|p| p.max(0) as u32),
                // An end this build does not know reaches nothing (as never walked).
                last_end: r
                    .get::<String>(6)
                    .map_err(internal)?
                    .and_then(|e| WalkEnd::parse(&e)),
                last_floor: r.get::<i32>(7).map_err(internal)?.map(|v| v.max(0) as u32),
            });
        }
        Ok(out)
    })
}

/// What twitch_sync.discover_channels did with one walk.
pub struct Discovered {
    pub added: Vec<String>,
    pub capped: i32,
    /// Set when its write failed (nothing of it was kept).
    pub error: Option<String>,
}

/// Tracks the channels of one walk that are not tracked yet, in directory
/// order, within the category's cap, and records the walk on the category
/// (twitch_sync.discover_channels).
pub fn discover_channels(
    report: &WalkReport,
    candidates: &[&LiveStream],
) -> Result<Discovered, SyncError> {
    let end = report.end.as_str();
    let args: Vec<DatumWithOid> = vec![
        report.game_id.clone().into(),
        candidates
            .iter()
            .map(|s| s.broadcaster_id.clone())
            .collect::<Vec<String>>()
            .into(),
        candidates
            .iter()
            .map(|s| s.login.clone())
            .collect::<Vec<Option<String>>>()
            .into(),
        (report.pages.min(i32::MAX as u32) as i32).into(),
        // the live streams the directory listed in the category, those of
        // channels this run also checked by id included
        (report
            .streams
            .saturating_add(report.in_batches)
            .min(i32::MAX as u32) as i32)
            .into(),
        end.into(),
        report.error.clone().into(),
        report
            .floor_viewers
            .map(|v| v.min(i32::MAX as u32) as i32)
            .into(),
    ];
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT d.added, d.capped, d.error
                   FROM twitch_sync.discover_channels($1, $2, $3, $4, $5, $6, $7, $8) d",
                None,
                &args,
            )
            .map_err(internal)?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| SyncError::Internal("discover_channels returned no row".into()))?;
        Ok(Discovered {
            added: row
                .get::<Vec<String>>(1)
                .map_err(internal)?
                .unwrap_or_default(),
            capped: row.get::<i32>(2).map_err(internal)?.unwrap_or(0),
            error: row.get::<String>(3).map_err(internal)?,
        })
    })
}
