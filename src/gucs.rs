//! twitch_sync's settings (GUCs): private statics, one `init()`, typed accessors.
//! Every setting is superuser-only (`SUSET`): the URLs decide where the
//! extension sends credentials, the extra CA file whom it trusts with them,
//! and the rest bound its load on Twitch. `twitch_sync.eventsub_database` is
//! `SIGHUP` (postgresql.conf or ALTER SYSTEM): the background worker reads it
//! before it connects to any database.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;
use std::time::Duration;
use twitch_sync_core::config::defaults;

static HELIX_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(defaults::HELIX_URL));
static AUTH_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(defaults::AUTH_URL));
static EXTRA_CA_FILE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(defaults::EXTRA_CA_FILE));
static EVENTSUB_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static EVENTSUB_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(defaults::EVENTSUB_URL));
static EVENTSUB_RECONCILE_SECS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::EVENTSUB_RECONCILE_SECS);
static EVENTSUB_GRACE_SECS: GucSetting<i32> = GucSetting::<i32>::new(defaults::EVENTSUB_GRACE_SECS);
static EVENTSUB_CHANGES_PER_PASS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::EVENTSUB_CHANGES_PER_PASS);
static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(defaults::REQUEST_TIMEOUT_MS);
static MAX_CONCURRENT_REQUESTS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::MAX_CONCURRENT_REQUESTS);
static MAX_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(defaults::MAX_RETRIES);
static RUN_DEADLINE_MS: GucSetting<i32> = GucSetting::<i32>::new(defaults::RUN_DEADLINE_MS);
static OFFLINE_AFTER_MISSES: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::OFFLINE_AFTER_MISSES);
static NOTIFY_EVENTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static NOTIFY_ALERTS: GucSetting<bool> = GucSetting::<bool>::new(true);
static RUNS_RETENTION_DAYS: GucSetting<i32> = GucSetting::<i32>::new(defaults::RUNS_RETENTION_DAYS);
static SAMPLES_RETENTION_DAYS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::SAMPLES_RETENTION_DAYS);
static ADAPTIVE_POLLING: GucSetting<bool> = GucSetting::<bool>::new(defaults::ADAPTIVE_POLLING);
static POLL_HOT_VIEWERS: GucSetting<i32> = GucSetting::<i32>::new(defaults::POLL_HOT_VIEWERS);
static POLL_HOT_INTERVAL_SECS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::POLL_HOT_INTERVAL_SECS);
static POLL_LIVE_INTERVAL_SECS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::POLL_LIVE_INTERVAL_SECS);
static POLL_OFFLINE_INTERVAL_SECS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::POLL_OFFLINE_INTERVAL_SECS);
static POLL_COVERED_INTERVAL_SECS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::POLL_COVERED_INTERVAL_SECS);
static POLL_BUDGET_SHARE: GucSetting<f64> = GucSetting::<f64>::new(defaults::POLL_BUDGET_SHARE);
static MAX_SAMPLE_GAP_SECS: GucSetting<i32> = GucSetting::<i32>::new(defaults::MAX_SAMPLE_GAP_SECS);
static ROLLUPS_RETENTION_DAYS: GucSetting<i32> =
    GucSetting::<i32>::new(defaults::ROLLUPS_RETENTION_DAYS);

pub fn init() {
    GucRegistry::define_string_guc(
        c"twitch_sync.helix_url",
        c"Base URL of the Twitch Helix API.",
        c"https:// required; http:// only for loopback hosts (a local simulator).",
        &HELIX_URL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"twitch_sync.auth_url",
        c"Base URL of Twitch's OAuth server.",
        c"https:// required; http:// only for loopback hosts (a local simulator).",
        &AUTH_URL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"twitch_sync.extra_ca_file",
        c"PEM file of CA certificates trusted for https:// in addition to the bundled web PKI roots.",
        c"An absolute path, read by run(); empty: none. Certificates are always verified.",
        &EXTRA_CA_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"twitch_sync.eventsub_database",
        c"Database whose twitch_sync the EventSub background worker serves; empty: no worker.",
        c"Needs twitch_sync in shared_preload_libraries. Set in postgresql.conf or with ALTER SYSTEM, then SELECT pg_reload_conf().",
        &EVENTSUB_DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"twitch_sync.eventsub_url",
        c"EventSub WebSocket URL the worker's conduit shard connects to.",
        c"wss:// required; ws:// only for loopback hosts (a local simulator). Read when the worker connects.",
        &EVENTSUB_URL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.eventsub_reconcile_secs",
        c"Seconds between the EventSub worker's reconciliations of subscriptions with the tracked channels.",
        c"",
        &EVENTSUB_RECONCILE_SECS,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.eventsub_grace_secs",
        c"Seconds after an EventSub online or offline during which a poll that contradicts it is ignored.",
        c"Helix's listing lags EventSub; read by the transition layer (twitch_sync.held_by_events).",
        &EVENTSUB_GRACE_SECS,
        0,
        3_600,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.eventsub_changes_per_pass",
        c"Subscription changes (create or delete) the EventSub worker makes per reconciliation at most.",
        c"",
        &EVENTSUB_CHANGES_PER_PASS,
        1,
        10_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.request_timeout_ms",
        c"Timeout of one HTTP request to Twitch, in milliseconds.",
        c"",
        &REQUEST_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.max_concurrent_requests",
        c"Cap on Get Streams requests in flight at once during a run.",
        c"Below the cap, the rate-limit bucket and the connection decide (HTTP/2: 100 streams; HTTP/1.1: 100 connections).",
        &MAX_CONCURRENT_REQUESTS,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.max_retries",
        c"Retries of a request after a timeout, dropped connection, 5xx or 429.",
        c"",
        &MAX_RETRIES,
        0,
        10,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.run_deadline_ms",
        c"Longest time one twitch_sync.run() may spend talking to Twitch, in milliseconds.",
        c"Batches not finished by then count as errors; their channels are left as they were.",
        &RUN_DEADLINE_MS,
        1_000,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.offline_after_misses",
        c"Consecutive successful checks a live stream must be missing from before it is ended.",
        c"",
        &OFFLINE_AFTER_MISSES,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"twitch_sync.notify_events",
        c"Send NOTIFY twitch_sync when a stream goes live, ends or restarts.",
        c"",
        &NOTIFY_EVENTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"twitch_sync.notify_alerts",
        c"Send NOTIFY twitch_sync_alerts when a run fails or is partial.",
        c"Read by the trigger on twitch_sync.runs.",
        &NOTIFY_ALERTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.runs_retention_days",
        c"Rows of twitch_sync.runs older than this many days are pruned (0 keeps them).",
        c"Read by twitch_sync.prune(), which run() calls after each pass.",
        &RUNS_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.samples_retention_days",
        c"Rows of twitch_sync.viewer_samples older than this many days are pruned (0 keeps them).",
        c"Read by twitch_sync.prune(), which run() calls after each pass.",
        &SAMPLES_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"twitch_sync.adaptive_polling",
        c"Check each channel by its own schedule (live by viewer tier, offline less often) within a request budget.",
        c"Off: every run checks every channel. See README \"Adaptive polling\".",
        &ADAPTIVE_POLLING,
        GucContext::Suset,
        GucFlags::default(),
    );
    for (name, short, setting, min, max) in [
        (
            c"twitch_sync.poll_hot_viewers",
            c"Adaptive polling: live streams with at least this many viewers are hot.",
            &POLL_HOT_VIEWERS,
            0,
            i32::MAX,
        ),
        (
            c"twitch_sync.poll_hot_interval_secs",
            c"Adaptive polling: seconds between checks of hot live streams.",
            &POLL_HOT_INTERVAL_SECS,
            1,
            86_400,
        ),
        (
            c"twitch_sync.poll_live_interval_secs",
            c"Adaptive polling: seconds between checks of other live streams.",
            &POLL_LIVE_INTERVAL_SECS,
            1,
            86_400,
        ),
        (
            c"twitch_sync.poll_offline_interval_secs",
            c"Adaptive polling: seconds between checks of offline channels.",
            &POLL_OFFLINE_INTERVAL_SECS,
            1,
            86_400,
        ),
        (
            c"twitch_sync.poll_covered_interval_secs",
            c"Adaptive polling: seconds between safety checks of offline channels EventSub covers.",
            &POLL_COVERED_INTERVAL_SECS,
            1,
            604_800,
        ),
    ] {
        GucRegistry::define_int_guc(
            name,
            short,
            c"Divided by 1 + the channel's priority.",
            setting,
            min,
            max,
            GucContext::Suset,
            GucFlags::default(),
        );
    }
    GucRegistry::define_float_guc(
        c"twitch_sync.poll_budget_share",
        c"Adaptive polling: the share of the rate-limit bucket one run may spend, of what it refills since the previous run.",
        c"The rest is left for other apps on the same client id.",
        &POLL_BUDGET_SHARE,
        0.0,
        1.0,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.max_sample_gap_secs",
        c"Two samples of a broadcast further apart than this are not interpolated (hours watched, average viewers).",
        c"Set it to about twice the polling interval. Read by the transition layer and twitch_sync.maintain().",
        &MAX_SAMPLE_GAP_SECS,
        1,
        86_400,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"twitch_sync.rollups_retention_days",
        c"Rows of twitch_sync.channel_days and category_days older than this many days are deleted (0 keeps them).",
        c"Read by twitch_sync.maintain().",
        &ROLLUPS_RETENTION_DAYS,
        0,
        36_500,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Every twitch_sync.* setting is defined above: a misspelt one
    // (SET twitch_sync.helix_ulr = ...) is an error, not a silent placeholder.
    // SAFETY: called from _PG_init, after the definitions, with a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"twitch_sync".as_ptr()) };
}

fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The database the EventSub worker serves, if set.
pub fn eventsub_database() -> Option<String> {
    Some(string(&EVENTSUB_DATABASE)).filter(|d| !d.trim().is_empty())
}
pub fn eventsub_url() -> String {
    string(&EVENTSUB_URL)
}
pub fn eventsub_reconcile_every() -> Duration {
    Duration::from_secs(EVENTSUB_RECONCILE_SECS.get().max(1) as u64)
}
pub fn eventsub_changes_per_pass() -> usize {
    EVENTSUB_CHANGES_PER_PASS.get().max(1) as usize
}
pub fn helix_url() -> String {
    string(&HELIX_URL)
}
pub fn auth_url() -> String {
    string(&AUTH_URL)
}
/// The extra CA file setting as written ('' when unset).
pub fn extra_ca_file() -> String {
    string(&EXTRA_CA_FILE)
}
pub fn request_timeout() -> Duration {
    Duration::from_millis(REQUEST_TIMEOUT_MS.get() as u64)
}
pub fn max_concurrent_requests() -> usize {
    MAX_CONCURRENT_REQUESTS.get() as usize
}
pub fn max_retries() -> u32 {
    MAX_RETRIES.get() as u32
}
pub fn run_deadline() -> Duration {
    Duration::from_millis(RUN_DEADLINE_MS.get() as u64)
}
pub fn offline_after_misses() -> i32 {
    OFFLINE_AFTER_MISSES.get()
}
/// The adaptive polling policy, or None when adaptive polling is off.
pub fn poll_policy() -> Option<twitch_sync_core::adaptive::PollPolicy> {
    ADAPTIVE_POLLING
        .get()
        .then(|| twitch_sync_core::adaptive::PollPolicy {
            hot_viewers: POLL_HOT_VIEWERS.get().max(0) as u32,
            hot_interval: f64::from(POLL_HOT_INTERVAL_SECS.get()),
            live_interval: f64::from(POLL_LIVE_INTERVAL_SECS.get()),
            offline_interval: f64::from(POLL_OFFLINE_INTERVAL_SECS.get()),
            covered_interval: f64::from(POLL_COVERED_INTERVAL_SECS.get()),
            budget_share: POLL_BUDGET_SHARE.get(),
        })
}
pub fn notify_events() -> bool {
    NOTIFY_EVENTS.get()
}

#[pgrx::pg_schema]
mod twitch_sync {
    use pgrx::prelude::*;
    use std::ffi::{CStr, CString};

    /// `twitch_sync.setting(name)`: the current value of one of twitch_sync's
    /// settings, as text. The SQL parts read their settings through it rather
    /// than with `current_setting()`: calling it loads this library, which
    /// defines every `twitch_sync.*` setting as superuser-only, so a value a
    /// non-superuser `SET` before the library was loaded (a placeholder) is
    /// dropped with a WARNING, and a `SECURITY DEFINER` function such as
    /// `prune()` never acts on it. The defaults come from the definitions
    /// above (one source). Executable by PUBLIC (sql/finalize.sql): the SQL
    /// functions a reader is granted call it, and every setting is readable
    /// with SHOW anyway.
    #[pg_extern(stable, parallel_safe, strict)]
    fn setting(name: &str) -> String {
        let own = name
            .strip_prefix("twitch_sync.")
            .is_some_and(|rest| !rest.is_empty());
        let refuse = |message: &'static str| -> ! {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                message,
                "twitch_sync",
            )
            .set_hint("Pass the name of a twitch_sync.* setting (README \"Configuration\").")
            .report(PgLogLevel::ERROR);
            unreachable!("ERROR does not return")
        };
        let c_name = CString::new(name).ok().filter(|_| own);
        let Some(c_name) = c_name else {
            refuse("not a twitch_sync setting")
        };
        // SAFETY: a NUL-terminated name; with missing_ok an unknown name
        // returns NULL (with it false, Postgres raised 42704 from inside this
        // Rust function, which pgrx reported with a Rust backtrace in DETAIL),
        // and the result is copied before anything else can change the setting.
        let value = unsafe { pg_sys::GetConfigOption(c_name.as_ptr(), true, false) };
        if value.is_null() {
            // NULL too for a string setting that is unset (eventsub_database's
            // default): SHOW's form tells it from an unknown name ('' for unset).
            // SAFETY: as above; with missing_ok an unknown name returns NULL.
            let shown = unsafe {
                pg_sys::GetConfigOptionByName(c_name.as_ptr(), std::ptr::null_mut(), true)
            };
            if shown.is_null() {
                refuse("unknown twitch_sync setting")
            }
            return String::new();
        }
        // SAFETY: GetConfigOption returns a NUL-terminated string.
        unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned()
    }
}
