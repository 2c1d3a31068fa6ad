//! The EventSub background worker: one conduit whose shard 0 is a WebSocket
//! session held here, notifications applied through the transition layer as
//! they arrive, and `stream.online` / `stream.offline` subscriptions
//! reconciled with `twitch_sync.channels` within Twitch's cost budget.
//!
//! Flow, as everywhere in twitch_sync: this thread (the worker's only
//! Postgres thread) reads state over SPI (src/db.rs), the pgrx-free core does
//! the network on the tokio runtime (`eventsub::socket::run_shard_with_token`
//! for the shard, `eventsub::reconcile` for subscriptions), and results come
//! back over channels to be written here, each notification in its own short
//! transaction. Nothing on the runtime touches Postgres.
//!
//! Lifecycle (README "EventSub"):
//! - registered at server start when twitch_sync is in
//!   `shared_preload_libraries`; it waits (on its latch) until
//!   `twitch_sync.eventsub_database` names a database, then connects to it;
//! - it idles, holding no socket, while the extension is not installed
//!   there, credentials are not set, or no channel is tracked (checked every
//!   second while idle, every 5 s while running);
//! - running: app token (cached in `twitch_sync.credentials`, minted when
//!   needed), the stored conduit if Twitch still lists it, else a new one
//!   (stored in `twitch_sync.eventsub_worker`), shard 0 assigned to its
//!   WebSocket session, subscriptions reconciled every
//!   `twitch_sync.eventsub_reconcile_secs`;
//! - new binaries before `ALTER EXTENSION twitch_sync UPDATE` (another
//!   version in the database): sockets closed, the conduit kept, idle until
//!   the update;
//! - SIGTERM: sockets closed, state `stopped`, exit code 1 (restarted after
//!   [`RESTART_AFTER`], so `pg_terminate_backend` restarts the worker). DROP EXTENSION: sockets
//!   closed and the conduit deleted at Twitch (its subscriptions with it: a
//!   later CREATE EXTENSION starts clean, and the five-conduit limit is not
//!   used up); the worker idles until the extension is back;
//! - every `eventsub_reconcile_secs` the shard's status is read back (Get
//!   Conduit Shards): a shard Twitch disabled while the socket stayed open
//!   gets a new session;
//! - a 404 for the conduit (Get Conduit Shards, or the shard assignment):
//!   Twitch deleted it (Delete Conduit, or 72 h with every shard disabled)
//!   and disabled its subscriptions; the worker forgets it, marks the
//!   subscriptions on record `conduit_deleted` (polling covers those
//!   channels again at once) and starts again as with no stored conduit: a
//!   new one, shard 0 assigned, subscriptions created by reconciliation
//!   (the old id is deleted anyway, and replacements within a minute of
//!   each other back off);
//! - a changed `eventsub_database` (SIGHUP) or an ERROR outside the guarded
//!   transactions ends the process; Postgres starts it again after
//!   [`RESTART_AFTER`].

use crate::db::{self, WorkerRow};
use crate::error::SyncError;
use crate::{gucs, runtime};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::PgTryBuilder;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use twitch_sync_core::client::TwitchClient;
use twitch_sync_core::engine::{prepare_token, CachedToken, Credentials};
use twitch_sync_core::error::{redact, HelixError};
use twitch_sync_core::eventsub::apply::EventArgs;
use twitch_sync_core::eventsub::dedup::{Admission, Verdict};
use twitch_sync_core::eventsub::helix::{self, Budget, Subscription};
use twitch_sync_core::eventsub::message::{is_reconnect_url, Envelope, Message};
use twitch_sync_core::eventsub::now_micros;
use twitch_sync_core::eventsub::reconcile::{self, CreateBackoff, Outcome, PassResult, PlanConfig};
use twitch_sync_core::eventsub::session::ShardConfig;
use twitch_sync_core::eventsub::socket::{run_shard_with_token, ShardParams, ShardView};
use twitch_sync_core::SyncConfig;

/// Keys the worker's in-memory admission holds per set (message ids, event
/// keys): a few MB at most. Message ids are also deduplicated for 20 minutes
/// by twitch_sync.eventsub_messages; memory catches the same event resent
/// under a new id (seconds apart) and out-of-order pairs.
const ADMISSION_KEYS: usize = 8_192;
const ADMISSION_MEMORY: Duration = Duration::from_secs(20 * 60);
/// The worker gives freed heap back to the system this often (the runtime
/// thread's malloc arena keeps what it freed otherwise).
const TRIM_EVERY: Duration = Duration::from_secs(30);
/// Postgres starts the worker again this long after it exits with an error.
pub const RESTART_AFTER: Duration = Duration::from_secs(5);
/// The worker's shard of its conduit (a conduit of one shard).
const SHARD_ID: &str = "0";
/// How often the loop wakes with no event (reconciliation passes, the
/// shard's state, the heartbeat); an event wakes it at once ([`WakePipe`]).
const TICK: Duration = Duration::from_millis(100);
/// The wake-up interval when no wake pipe could be made: events then wait
/// for the next tick.
const TICK_WITHOUT_PIPE: Duration = Duration::from_millis(10);
/// How often the environment (extension, credentials, channels) is checked.
const CHECK_IDLE: Duration = Duration::from_secs(1);
const CHECK_RUNNING: Duration = Duration::from_secs(5);
/// Counters are written at most this often while events arrive.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// A connected worker writes its row at least this often: adaptive polling
/// trusts EventSub only while the row is younger than a minute.
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Pages per subscription type of a full listing (100 subscriptions a page).
const MAX_LIST_PAGES: usize = 1_000;
/// The conduit's subscriptions are listed in full every this many
/// reconciliation intervals (`eventsub_reconcile_secs`; 60 s by default: every
/// hour, one point a page of 100, 200 points an hour for 10,000 channels),
/// besides at start.
const RELIST_EVERY_PASSES: u32 = 60;
/// A failed start is retried after this long (doubling up to [`MAX_RETRY`]).
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Conduit replacements closer together than this back off (Worker::conduit_gone).
const REPLACE_WINDOW: Duration = Duration::from_secs(60);

/// Registers the worker; called from `_PG_init` while shared_preload_libraries loads.
pub fn register() {
    BackgroundWorkerBuilder::new("twitch_sync eventsub")
        .set_type("twitch_sync eventsub")
        .set_library("twitch_sync")
        .set_function("twitch_sync_eventsub_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// The worker's entry point (named in [`register`]).
#[pgrx::pg_guard]
#[no_mangle]
pub extern "C-unwind" fn twitch_sync_eventsub_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = loop {
        if BackgroundWorker::sighup_received() {
            reload_configuration();
        }
        if let Some(d) = gucs::eventsub_database() {
            break d;
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(60))) {
            exit_for_restart();
        }
    };
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    // The worker runs as the bootstrap superuser: a search_path the database's
    // owner set (ALTER DATABASE ... SET search_path) must not decide which
    // operator or function its statements call. As for the SECURITY DEFINER
    // functions: pg_catalog, then pg_temp.
    // SAFETY: static C strings; called once, before any statement.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    pgrx::log!("twitch_sync eventsub worker serving database \"{database}\"");
    Worker::new(database).run();
    exit_for_restart();
}

/// Exit code 1: Postgres starts the worker again after [`RESTART_AFTER`]
/// (exit code 0 would unregister it until the server restarts). So
/// `pg_terminate_backend(<worker pid>)` restarts the worker, and at server
/// shutdown Postgres starts nothing again anyway.
fn exit_for_restart() -> ! {
    // SAFETY: ends the process the way a background worker should.
    unsafe { pg_sys::proc_exit(1) }
}

fn reload_configuration() {
    // SAFETY: what a backend does on SIGHUP, on the worker's own thread.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs `f` in its own transaction. An ERROR raised inside (by Postgres or as
/// a [`SyncError`]) rolls the transaction back and comes back as its
/// message: one bad event or answer never stops the worker.
fn in_transaction<R>(f: impl FnOnce() -> Result<R, SyncError>) -> Result<R, String> {
    // SAFETY: the transaction calls a background worker makes between
    // statements. A cancel that came before the transaction began (while the
    // worker waited on the network) is not one for it: dropped, as in wait().
    unsafe {
        pg_sys::QueryCancelPending = 0;
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let body = std::panic::AssertUnwindSafe(move || f().map_err(|e| e.to_string()));
    let out = PgTryBuilder::new(body)
        .catch_others(|e| Err(crate::error::caught_message(&e)))
        .execute();
    // SAFETY: ends the transaction started above, committing only on success.
    unsafe {
        if out.is_ok() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    out
}

/// Why the worker could not start: the error's text (secret and token
/// redacted), whether Twitch refused the token, and whether that token was
/// the cached one (then a new one is minted and the start tried again, once).
struct StartFailure {
    message: String,
    refused: bool,
    with_cached_token: bool,
    /// The token this try minted or validated before it failed, if any.
    renewed: Option<CachedToken>,
}

/// A conduit shard running on the runtime, and its subscriptions' state.
struct Running {
    client: Arc<TwitchClient>,
    config: SyncConfig,
    credentials: Credentials,
    token: CachedToken,
    token_tx: watch::Sender<String>,
    conduit_id: String,
    stop: Option<oneshot::Sender<()>>,
    /// The shard's task (dropping it stops the task).
    _shard: runtime::Background<()>,
    /// The task passing events on and waking the loop (with the wake pipe).
    _forwarder: Option<runtime::Background<()>>,
    events: mpsc::UnboundedReceiver<Envelope>,
    view: Arc<Mutex<ShardView>>,
    /// The pass in flight, if any: its task and its answer.
    pass: Option<(runtime::Background<()>, oneshot::Receiver<PassOutput>)>,
    /// When the conduit's subscriptions were last listed (and recorded);
    /// None until the first listing. Listed again every
    /// [`RELIST_EVERY_PASSES`] intervals.
    listed_at: Option<Instant>,
    /// A session after the first began: the revocations Twitch sent while
    /// the shard was disconnected were lost (it sends each once), so the
    /// revoked subscriptions are listed (by status) before the next pass.
    revocations_due: bool,
    /// A session was seen before (the first is no reconnect).
    had_session: bool,
    budget: Option<Budget>,
    next_pass: Instant,
    /// Channels whose subscription creation failed, waiting before the next try.
    create_backoff: CreateBackoff,
    /// Get Conduit Shards in flight (the session it was asked for), and when
    /// the next is due: a shard Twitch disabled while the socket stayed open
    /// is found this way (README "EventSub").
    shard_check: Option<ShardCheck>,
    next_shard_check: Instant,
    /// The shard's welcomes, dropped frames and token refusals when last seen.
    seen_welcomes: u64,
    seen_drops: u64,
    seen_token_refused: u64,
    seen_session: Option<String>,
    /// The shard's last connect error already logged.
    seen_connect_error: Option<String>,
}

/// A Get Conduit Shards in flight: the session it asks about, its task, its answer.
type ShardCheck = (
    Option<String>,
    runtime::Background<()>,
    oneshot::Receiver<Result<Vec<helix::ConduitShard>, HelixError>>,
);

/// How reconciliation passes are planned (and how long a held-back channel
/// may wait at most): the settings, over the core's defaults.
fn plan_config() -> PlanConfig {
    PlanConfig {
        max_changes: gucs::eventsub_changes_per_pass(),
        ..PlanConfig::default()
    }
}

enum PassOutput {
    Listing(Result<(Vec<Subscription>, Budget), HelixError>),
    /// The conduit's revoked subscriptions, listed by status after a new
    /// session, with the budget.
    Revoked(Result<(Vec<Subscription>, Budget), HelixError>),
    Changes(PassResult),
    /// The budget read again: nothing could be created within the one known.
    Budget(Result<Budget, HelixError>),
}

struct Worker {
    database: String,
    row: WorkerRow,
    dirty: bool,
    flushed_at: Instant,
    running: Option<Running>,
    admission: Admission,
    next_check: Instant,
    retry: Duration,
    /// The extension was seen installed (to notice DROP EXTENSION).
    installed: bool,
    /// A session was welcomed since the worker started.
    welcomed: bool,
    trimmed_at: Instant,
    /// The last stored conduit of a dropped extension, deleted at Twitch.
    orphan: Option<(Arc<TwitchClient>, String, String)>,
    /// When the conduit was last replaced after a 404, and the wait before
    /// that replacement ([`Worker::conduit_gone`]).
    replaced: Option<(Instant, Duration)>,
    /// Wakes the loop when an event arrives (None: the pipe could not be made).
    wake: Option<WakePipe>,
    /// The state and detail last written to the log ([`Worker::set_state`]).
    logged: (&'static str, Option<String>),
}

/// Wakes the main loop as soon as the runtime delivers an event: the loop
/// waits on its latch and on this pipe's read end (WaitLatchOrSocket), and
/// the runtime writes a byte after each delivery. No Postgres function is
/// called off the main thread.
struct WakePipe {
    read: OwnedFd,
    write: Arc<OwnedFd>,
}

impl WakePipe {
    fn new() -> Option<WakePipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills `fds` with two new descriptors, owned from here on.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: both descriptors were just created and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Some(WakePipe {
            read,
            write: Arc::new(write),
        })
    }

    /// Passes events on, waking the loop after each (on the runtime).
    fn forward(
        &self,
        mut from: mpsc::UnboundedReceiver<Envelope>,
        to: mpsc::UnboundedSender<Envelope>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let write = self.write.clone();
        async move {
            while let Some(env) = from.recv().await {
                if to.send(env).is_err() {
                    break;
                }
                // A full pipe wakes the loop already: the result does not matter.
                // SAFETY: one byte from a live buffer to a descriptor this task keeps open.
                let _ = unsafe { libc::write(write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            }
        }
    }

    /// Empties the pipe (after a wake-up).
    fn drain(&self) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a live local buffer from a non-blocking descriptor owned here.
        while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {
        }
    }
}

impl Worker {
    fn new(database: String) -> Worker {
        Worker {
            database,
            row: WorkerRow {
                // SAFETY: reads the process' pid.
                pid: unsafe { pg_sys::MyProcPid },
                started_at: epoch(SystemTime::now()),
                state: "idle",
                ..WorkerRow::default()
            },
            dirty: true,
            flushed_at: Instant::now(),
            running: None,
            admission: Admission::new(ADMISSION_KEYS, ADMISSION_MEMORY),
            next_check: Instant::now(),
            retry: FIRST_RETRY,
            installed: false,
            welcomed: false,
            trimmed_at: Instant::now(),
            orphan: None,
            replaced: None,
            wake: WakePipe::new(),
            logged: ("idle", None),
        }
    }

    /// Waits for the latch, an event, or the next tick; false once the worker
    /// must stop (SIGTERM, or the postmaster died).
    fn wait(&self) -> bool {
        let mut events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH)
            as libc::c_int;
        let (socket, tick) = match &self.wake {
            Some(wake) => {
                events |= pg_sys::WL_SOCKET_READABLE as libc::c_int;
                (wake.read.as_raw_fd(), TICK)
            }
            None => (-1, TICK_WITHOUT_PIPE),
        };
        // SAFETY: the main thread of a background worker, on its own latch and a
        // descriptor it owns; the latch is reset before the interrupt check, as
        // BackgroundWorker::wait_latch does. A query cancel (pg_cancel_backend)
        // has no query to cancel between the worker's transactions: it is
        // dropped, not raised as an ERROR that would end the worker (a cancel
        // during a transaction rolls that one back: in_transaction).
        let woke = unsafe {
            let woke = pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                events,
                socket,
                tick.as_millis() as libc::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            pg_sys::QueryCancelPending = 0;
            woke
        };
        pg_sys::check_for_interrupts!();
        if let Some(wake) = &self.wake {
            wake.drain();
        }
        !BackgroundWorker::sigterm_received()
            && woke & pg_sys::WL_POSTMASTER_DEATH as libc::c_int == 0
    }

    fn run(&mut self) {
        while self.wait() {
            if BackgroundWorker::sighup_received() {
                reload_configuration();
                if gucs::eventsub_database().as_deref() != Some(self.database.as_str()) {
                    self.stop(
                        "stopped",
                        Some("twitch_sync.eventsub_database changed".into()),
                    );
                    self.flush(true);
                    pgrx::log!("twitch_sync eventsub worker: database setting changed, restarting");
                    exit_for_restart();
                }
            }
            self.apply_events();
            self.finish_pass();
            self.check_shard();
            if Instant::now() >= self.next_check {
                self.check_environment();
            }
            self.start_pass();
            self.observe_shard();
            self.flush(false);
            if self.trimmed_at.elapsed() >= TRIM_EVERY {
                runtime::trim_heap();
                self.trimmed_at = Instant::now();
            }
        }
        self.stop("stopped", None);
        self.flush(true);
    }

    fn set_state(&mut self, state: &'static str, detail: Option<String>) {
        // The detail goes to the log and to eventsub_worker: never a secret
        // in it, as for runs.error.
        let detail = detail.map(|d| match &self.running {
            Some(r) => redact(&d, &[&r.credentials.client_secret, &r.token.access_token]),
            None => d,
        });
        if self.row.state != state || self.row.detail != detail {
            // Logged once per new reason: retries after a failure (idle with
            // a reason, connecting, idle with the same reason again) add no
            // line until something else happens.
            let (last_state, last_detail) = &self.logged;
            let retrying = state == "connecting" && *last_state == "idle" && last_detail.is_some();
            let repeated = *last_state == state && *last_detail == detail;
            let detail_only = self.row.state == state && state == "connecting";
            if !(retrying || repeated || detail_only) {
                pgrx::log!(
                    "twitch_sync eventsub worker: {state}{}",
                    detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
                self.logged = (state, detail.clone());
            }
            self.row.state = state;
            self.row.detail = detail;
            self.write_soon();
        }
    }

    /// The row is written on the next tick (state changes, reconciliations).
    fn write_soon(&mut self) {
        self.dirty = true;
        self.flushed_at = Instant::now() - FLUSH_EVERY;
    }

    /// Writes the worker's row when something changed (state changes at
    /// once, counters at most every [`FLUSH_EVERY`]).
    fn flush(&mut self, force: bool) {
        let heartbeat = self.row.state == "connected" && self.flushed_at.elapsed() >= HEARTBEAT;
        if !self.installed
            || !(heartbeat || self.dirty && (force || self.flushed_at.elapsed() >= FLUSH_EVERY))
        {
            return;
        }
        let row = self.row.clone();
        if let Err(e) = in_transaction(|| db::save_worker_row(&row)) {
            pgrx::warning!("twitch_sync eventsub worker: could not record its state: {e}");
        }
        self.dirty = false;
        self.flushed_at = Instant::now();
    }

    /// Decides whether to run: extension installed, credentials, channels.
    fn check_environment(&mut self) {
        let env = match in_transaction(db::worker_environment) {
            Ok(env) => env,
            Err(e) => {
                self.next_check = Instant::now() + CHECK_IDLE;
                pgrx::warning!("twitch_sync eventsub worker: {e}");
                return;
            }
        };
        self.next_check = Instant::now()
            + if self.running.is_some() {
                CHECK_RUNNING
            } else {
                CHECK_IDLE
            };
        if let (false, Some(version)) = (env.installed, env.version.as_deref()) {
            // new binaries before ALTER EXTENSION ... UPDATE: wait, keep the
            // conduit (its subscriptions stay; the session is taken again)
            self.stop(
                "idle",
                Some(format!(
                    "the extension is version {version}, the library {}: run ALTER EXTENSION twitch_sync UPDATE",
                    db::SCHEMA_VERSION
                )),
            );
            self.installed = false;
            return;
        }
        if !env.installed {
            if self.installed || self.orphan.is_some() {
                // DROP EXTENSION: let go of Twitch
                self.stop("idle", None);
                if let Some((client, token, conduit)) = self.orphan.take() {
                    let deleted = runtime::block_on_until_shutdown(async move {
                        client.delete_conduit(&token, &conduit).await.0
                    });
                    pgrx::log!(
                        "twitch_sync eventsub worker: extension dropped; conduit deleted at Twitch: {}",
                        matches!(deleted, Some(Ok(true)))
                    );
                }
                self.installed = false;
            }
            self.row.state = "idle";
            return;
        }
        if !self.installed {
            self.installed = true;
            self.dirty = true;
        }
        let Some((credentials, token)) = env.credentials else {
            self.stop(
                "idle",
                Some("no credentials: run twitch_sync.set_credentials()".into()),
            );
            return;
        };
        if env.tracked_channels == 0 {
            self.stop("idle", Some("no tracked channels".into()));
            return;
        }
        if let Some(r) = &self.running {
            if r.credentials.client_id != credentials.client_id
                || r.credentials.client_secret != credentials.client_secret
            {
                self.stop("idle", Some("credentials changed".into()));
            } else {
                self.refresh_token();
                return;
            }
        }
        if self.running.is_none() {
            match self.start(credentials, token, env.conduit) {
                Ok(()) => self.retry = FIRST_RETRY,
                Err(e) => {
                    self.set_state("idle", Some(e));
                    self.next_check = Instant::now() + self.retry;
                    self.retry = (self.retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Token, conduit, shard: everything a running worker holds.
    fn start(
        &mut self,
        credentials: Credentials,
        cached: Option<CachedToken>,
        stored: Option<(String, String)>,
    ) -> Result<(), String> {
        let ws_url = gucs::eventsub_url();
        if !is_reconnect_url(&ws_url) {
            return Err(
                "invalid value for twitch_sync.eventsub_url: a wss:// URL (ws:// only for loopback hosts) \
                 with a host, at most 2,048 characters, and no credentials (\"@\"), spaces or control characters"
                    .into(),
            );
        }
        let config = crate::api::settings().map_err(|e| e.to_string())?;
        let client = Arc::new(
            TwitchClient::new(&config, &credentials.client_id).map_err(|e| e.to_string())?,
        );
        self.set_state("connecting", None);
        let stored_conduit = stored
            .filter(|(client_id, _)| *client_id == credentials.client_id)
            .map(|(_, c)| c);
        // the cached token, redacted from every failure (a retry's too)
        let cached_token = cached
            .as_ref()
            .map(|t| t.access_token.clone())
            .unwrap_or_default();
        let attempt = |cached: Option<CachedToken>| {
            let (c2, cfg2) = (client.clone(), config.clone());
            let (secret, stored_conduit) =
                (credentials.client_secret.clone(), stored_conduit.clone());
            let cached_token = cached_token.clone();
            async move {
                let mut warnings = Vec::new();
                let from_cache = cached.is_some();
                // (no session yet, so set_state cannot redact a failure: it is done here)
                let failed = |e: HelixError, token: Option<(&CachedToken, bool)>| {
                    let access = token.map(|t| t.0.access_token.as_str());
                    StartFailure {
                        with_cached_token: from_cache && access == Some(cached_token.as_str()),
                        refused: matches!(e, HelixError::Unauthorized { .. }),
                        message: redact(
                            &e.to_string(),
                            &[&secret, &cached_token, access.unwrap_or_default()],
                        ),
                        renewed: token.filter(|t| t.1).map(|t| t.0.clone()),
                    }
                };
                let (token, renewed) = prepare_token(&c2, &cfg2, &secret, cached, &mut warnings)
                    .await
                    .map_err(|e| failed(e, None))?;
                let access = Some((&token, renewed));
                let listed = c2
                    .get_conduits(&token.access_token)
                    .await
                    .0
                    .map_err(|e| failed(e, access))?;
                let reuse = stored_conduit.filter(|id| listed.iter().any(|c| c.id == *id));
                let conduit = match reuse {
                    Some(id) => (id, false),
                    None => (
                        c2.create_conduit(&token.access_token, 1)
                            .await
                            .0
                            .map_err(|e| failed(e, access))?
                            .id,
                        true,
                    ),
                };
                Ok::<_, StartFailure>((token, renewed, conduit))
            }
        };
        let mut prepared = runtime::block_on_until_shutdown(attempt(cached))
            .ok_or_else(|| "shutting down".to_string())?;
        // The cached token refused (revoked, or Twitch forgot it): a new one, once.
        if prepared
            .as_ref()
            .is_err_and(|f| f.refused && f.with_cached_token)
        {
            pgrx::log!(
                "twitch_sync eventsub worker: the cached token was refused; minting a new one"
            );
            prepared = runtime::block_on_until_shutdown(attempt(None))
                .ok_or_else(|| "shutting down".to_string())?;
        }
        let (token, renewed, (conduit_id, created)) = match prepared {
            Ok(p) => p,
            Err(f) => {
                // a token minted (or validated) before the failure is kept,
                // so that the next try does not mint another
                if let Some(t) = f.renewed {
                    in_transaction(|| db::save_token(&t, &credentials))?;
                }
                return Err(f.message);
            }
        };
        if renewed {
            let t = token.clone();
            in_transaction(|| db::save_token(&t, &credentials))?;
        }
        if created {
            let (client_id, cid) = (credentials.client_id.clone(), conduit_id.clone());
            in_transaction(|| db::save_conduit(&client_id, &cid))?;
            pgrx::log!("twitch_sync eventsub worker: created conduit {conduit_id}");
        }
        let (token_tx, token_rx) = watch::channel(token.access_token.clone());
        let (deliver, events) = mpsc::unbounded_channel();
        // With the wake pipe, events pass through a forwarder that wakes the loop.
        let (deliver, forwarder) = match &self.wake {
            Some(wake) => {
                let (to_forwarder, from_shard) = mpsc::unbounded_channel();
                let forwarder = runtime::spawn(wake.forward(from_shard, deliver));
                (to_forwarder, Some(forwarder))
            }
            None => (deliver, None),
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let view = Arc::new(Mutex::new(ShardView::default()));
        let params = ShardParams {
            config: ShardConfig {
                base_url: ws_url,
                ..ShardConfig::default()
            },
            conduit_id: conduit_id.clone(),
            shard_id: SHARD_ID.into(),
            seed: (now_micros() as u64) ^ u64::from(self.row.pid.unsigned_abs()),
        };
        // The task ends when `stop` fires or its handle is dropped.
        let shard = runtime::spawn(run_shard_with_token(
            params,
            client.clone(),
            token_rx,
            deliver,
            view.clone(),
            stop_rx,
        ));
        self.orphan = Some((
            client.clone(),
            token.access_token.clone(),
            conduit_id.clone(),
        ));
        self.row.client_id = Some(credentials.client_id.clone());
        self.row.conduit_id = Some(conduit_id.clone());
        self.row.shard_id = Some(SHARD_ID.into());
        self.running = Some(Running {
            client,
            config,
            credentials,
            token,
            token_tx,
            conduit_id,
            stop: Some(stop_tx),
            _shard: shard,
            _forwarder: forwarder,
            events,
            view,
            pass: None,
            listed_at: None,
            revocations_due: false,
            had_session: false,
            create_backoff: CreateBackoff::default(),
            budget: None,
            next_pass: Instant::now(),
            shard_check: None,
            next_shard_check: Instant::now() + gucs::eventsub_reconcile_every(),
            seen_welcomes: 0,
            seen_drops: 0,
            seen_token_refused: 0,
            seen_session: None,
            seen_connect_error: None,
        });
        self.dirty = true;
        Ok(())
    }

    /// Closes the shard's sockets (the conduit and its subscriptions stay:
    /// a restart needs only a new session, well within Twitch's 72 hours).
    fn stop(&mut self, state: &'static str, detail: Option<String>) {
        if let Some(mut r) = self.running.take() {
            if let Some(s) = r.stop.take() {
                let _ = s.send(());
            }
        }
        self.row.session_id = None;
        self.row.connected_since = None;
        self.set_state(state, detail);
    }

    /// Twitch answered 404 for the worker's conduit (`found_by`: Get Conduit
    /// Shards, or Update Conduit Shards when the shard was assigned): it was
    /// deleted at Twitch, and its subscriptions were disabled with it
    /// (`conduit_deleted`). The worker forgets it (here and in
    /// twitch_sync.eventsub_worker), marks the subscriptions on record
    /// `conduit_deleted` so that polling covers their channels again at once,
    /// closes the shard, and starts again at once the way it does when no
    /// stored conduit exists ([`Worker::start`]): a new conduit, shard 0
    /// assigned, a new [`Running`] whose first pass lists the new conduit
    /// and then subscribes every channel the budget covers.
    fn conduit_gone(&mut self, found_by: &str) {
        let Some(conduit) = self.running.as_ref().map(|r| r.conduit_id.clone()) else {
            return;
        };
        pgrx::log!(
            "twitch_sync eventsub worker: {found_by} answered 404 for conduit {conduit}: deleted at Twitch, making a new one"
        );
        if let Err(e) = in_transaction(|| db::forget_conduit(&conduit)) {
            // start() still finds it missing from Get Conduits
            pgrx::warning!("twitch_sync eventsub worker: {e}");
        }
        // Delete it anyway (a 404 again if it is gone): should the 404 have
        // been wrong, the old conduit does not linger until Twitch's 72 h
        // expiry, counting against the client's conduit limit.
        if let Some((client, token, old)) = self.orphan.take() {
            runtime::block_on_until_shutdown(
                async move { client.delete_conduit(&token, &old).await.0 },
            );
        }
        self.row.conduit_id = None;
        self.stop(
            "connecting",
            Some(format!(
                "conduit {conduit} was deleted at Twitch: making a new one"
            )),
        );
        // At once the first time; if Twitch keeps answering 404 for the new
        // conduits, each replacement within a minute of the last waits twice
        // as long (up to MAX_RETRY) instead of making conduits in a loop.
        let now = Instant::now();
        let wait = match self.replaced {
            Some((at, last)) if now.duration_since(at) < REPLACE_WINDOW => {
                (last * 2).clamp(FIRST_RETRY, MAX_RETRY)
            }
            _ => Duration::ZERO,
        };
        self.replaced = Some((now, wait));
        self.next_check = now + wait;
    }

    /// A token close to expiry (or refused) is replaced; the shard's next
    /// assignment uses the new one.
    fn refresh_token(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let (client, cfg, secret, cached) = (
            r.client.clone(),
            r.config.clone(),
            r.credentials.client_secret.clone(),
            Some(r.token.clone()),
        );
        let Some(Ok((token, renewed))) = runtime::block_on_until_shutdown(async move {
            let mut warnings = Vec::new();
            prepare_token(&client, &cfg, &secret, cached, &mut warnings).await
        }) else {
            return;
        };
        if renewed {
            let _ = r.token_tx.send(token.access_token.clone());
            r.token = token.clone();
            if let Some(o) = self.orphan.as_mut() {
                o.1.clone_from(&token.access_token);
            }
            let credentials = &r.credentials;
            if let Err(e) = in_transaction(|| db::save_token(&token, credentials)) {
                pgrx::warning!("twitch_sync eventsub worker: {e}");
            }
        }
    }

    /// A 401: the cached token is no longer good; mint a new one.
    fn token_refused(&mut self) {
        if let Some(r) = self.running.as_mut() {
            r.token.expires_at = SystemTime::now();
        }
        self.refresh_token();
    }

    /// Applies every notification that arrived, each in its own transaction.
    fn apply_events(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let mut batch = Vec::new();
        while let Ok(env) = r.events.try_recv() {
            batch.push(env);
        }
        let notify = gucs::notify_events();
        for env in batch {
            let now = now_micros();
            match &env.message {
                Message::Notification(n) => {
                    self.row.events_received += 1;
                    self.dirty = true;
                    match self.admission.admit(
                        &env.message_id,
                        env.message_timestamp,
                        &n.event,
                        now,
                    ) {
                        Verdict::New => {}
                        Verdict::Duplicate => {
                            self.row.events_duplicate += 1;
                            continue;
                        }
                        Verdict::Stale | Verdict::OutOfOrder => {
                            self.row.events_dropped += 1;
                            continue;
                        }
                    }
                    let Some(args) = EventArgs::of(&env) else {
                        self.row.events_dropped += 1;
                        continue;
                    };
                    match in_transaction(|| db::apply_event(&args, notify)) {
                        Ok(verdict) => {
                            match verdict.as_str() {
                                "applied" => self.row.events_applied += 1,
                                "duplicate" => self.row.events_duplicate += 1,
                                _ => self.row.events_dropped += 1,
                            }
                            let lag = (now_micros() - env.message_timestamp) as f64 / 1000.0;
                            self.row.last_event_lag_ms = Some(lag);
                            self.row.max_event_lag_ms =
                                Some(self.row.max_event_lag_ms.map_or(lag, |m| m.max(lag)));
                            self.row.last_event_at = Some(epoch(SystemTime::now()));
                        }
                        Err(e) => {
                            self.row.events_dropped += 1;
                            pgrx::warning!(
                                "twitch_sync eventsub worker: could not apply message {}: {e}",
                                args.message_id
                            );
                        }
                    }
                }
                Message::Revocation(s) => {
                    if self
                        .admission
                        .admit_message(&env.message_id, env.message_timestamp, now)
                        != Verdict::New
                    {
                        continue;
                    }
                    let (id, status) = (s.id.clone(), s.status.clone());
                    match in_transaction(|| db::record_revocation(&id, &status)) {
                        Ok(_) => pgrx::log!(
                            "twitch_sync eventsub worker: subscription {id} ({} of {}) revoked: {status}",
                            s.kind,
                            s.broadcaster_id
                        ),
                        Err(e) => pgrx::warning!("twitch_sync eventsub worker: {e}"),
                    }
                }
                _ => {}
            }
        }
    }

    /// Shard state for status(): connected, session, reconnects, dropped frames.
    fn observe_shard(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let v = r.view.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if v.conduit_gone {
            self.conduit_gone("Update Conduit Shards");
            return;
        }
        if v.session_id != r.seen_session {
            // a session after an earlier one: look for what was revoked meanwhile
            if v.session_id.is_some() {
                r.revocations_due |= r.had_session;
                r.had_session = true;
            }
            r.seen_session.clone_from(&v.session_id);
            self.row.session_id.clone_from(&v.session_id);
            self.row.connected_since = v.session_id.as_ref().map(|_| epoch(SystemTime::now()));
            self.dirty = true;
        }
        // every welcome after the worker's first is a reconnect (a
        // session_reconnect, or a new connection after a drop)
        if v.stats.welcomes > r.seen_welcomes {
            let mut new = v.stats.welcomes - r.seen_welcomes;
            if !self.welcomed {
                self.welcomed = true;
                new -= 1;
            }
            self.row.reconnects += i64::try_from(new).unwrap_or(0);
            r.seen_welcomes = v.stats.welcomes;
            self.dirty = true;
        }
        if v.drops.total() > r.seen_drops {
            // frames the socket dropped (bad JSON, a type not taken) were
            // received too: received = applied + duplicate + dropped
            let dropped = i64::try_from(v.drops.total() - r.seen_drops).unwrap_or(0);
            self.row.events_received += dropped;
            self.row.events_dropped += dropped;
            r.seen_drops = v.drops.total();
            self.dirty = true;
        }
        // Twitch refused the shard assignment's token (401): the shard waits
        // for a new one to try again within the assignment's 10 s
        let refused = v.token_refused > r.seen_token_refused;
        r.seen_token_refused = v.token_refused;
        if v.last_connect_error != r.seen_connect_error {
            if let Some(e) = &v.last_connect_error {
                let secrets = [r.credentials.client_secret.as_str(), &r.token.access_token];
                pgrx::log!("twitch_sync eventsub worker: {}", redact(e, &secrets));
            }
            r.seen_connect_error.clone_from(&v.last_connect_error);
        }
        let (state, detail) = if v.connected {
            ("connected", None)
        } else {
            (
                "connecting",
                v.last_connect_error.clone().or(v.last_assign_error.clone()),
            )
        };
        self.set_state(state, detail);
        if refused {
            self.token_refused();
        }
    }

    /// Asks Twitch for the shard's status every `eventsub_reconcile_secs`
    /// while connected; a shard Twitch reports not `enabled` for the session
    /// the worker holds gets a new session (and assignment).
    fn check_shard(&mut self) {
        let session = self.row.session_id.clone();
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if let Some((asked_for, _, rx)) = r.shard_check.as_mut() {
            let answer = match rx.try_recv() {
                Ok(a) => a,
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => {
                    r.shard_check = None;
                    return;
                }
            };
            let asked_for = asked_for.clone();
            r.shard_check = None;
            match answer {
                Ok(shards) => {
                    let shard = shards.iter().find(|s| s.id == SHARD_ID);
                    // enabled for another session (another database on
                    // this conduit, say, took the shard): not ours
                    let status = match shard {
                        None => "missing".to_string(),
                        Some(s)
                            if s.status == "enabled"
                                && s.session_id.is_some()
                                && s.session_id != asked_for =>
                        {
                            "assigned to another session".to_string()
                        }
                        Some(s) => s.status.clone(),
                    };
                    if status != "enabled" && asked_for.is_some() && asked_for == session {
                        pgrx::log!(
                            "twitch_sync eventsub worker: Twitch reports shard {SHARD_ID} {status}: new session"
                        );
                        self.stop(
                            "connecting",
                            Some(format!(
                                "shard {SHARD_ID} was {status} at Twitch: reconnecting"
                            )),
                        );
                        self.next_check = Instant::now();
                    }
                }
                Err(HelixError::Unauthorized { .. }) => self.token_refused(),
                Err(e) if helix::conduit_gone(&e) => self.conduit_gone("Get Conduit Shards"),
                Err(_) => {}
            }
            return;
        }
        if self.row.state != "connected" || Instant::now() < r.next_shard_check {
            return;
        }
        r.next_shard_check = Instant::now() + gucs::eventsub_reconcile_every();
        let (client, token, conduit) = (
            r.client.clone(),
            r.token.access_token.clone(),
            r.conduit_id.clone(),
        );
        let (tx, rx) = oneshot::channel();
        let task = runtime::spawn(async move {
            let _ = tx.send(client.get_conduit_shards(&token, &conduit).await.0);
        });
        r.shard_check = Some((session, task, rx));
    }

    /// Starts a reconciliation when one is due and none is in flight.
    fn start_pass(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.pass.is_some() || Instant::now() < r.next_pass {
            return;
        }
        // Subscriptions change at Twitch without a message to this worker (a
        // Delete EventSub Subscription by another client, say): the full
        // listing again, which forgets those the conduit lost, and the
        // reconciliation creates them anew.
        if r.listed_at
            .is_some_and(|t| t.elapsed() >= gucs::eventsub_reconcile_every() * RELIST_EVERY_PASSES)
        {
            r.listed_at = None;
        }
        let (client, token, conduit) = (
            r.client.clone(),
            r.token.access_token.clone(),
            r.conduit_id.clone(),
        );
        let (tx, rx) = oneshot::channel();
        let task = if r.listed_at.is_some() && r.revocations_due {
            r.revocations_due = false;
            runtime::spawn(async move {
                let out = reconcile::list_revoked(&client, &token, &conduit, MAX_LIST_PAGES).await;
                let _ = tx.send(PassOutput::Revoked(out));
            })
        } else if r.listed_at.is_none() {
            runtime::spawn(async move {
                let out = reconcile::list_conduit(&client, &token, &conduit, MAX_LIST_PAGES).await;
                let _ = tx.send(PassOutput::Listing(out));
            })
        } else {
            let state = match in_transaction(db::read_subscription_state) {
                Ok(s) => s,
                Err(e) => {
                    pgrx::warning!("twitch_sync eventsub worker: {e}");
                    r.next_pass = Instant::now() + gucs::eventsub_reconcile_every();
                    return;
                }
            };
            let cfg = plan_config();
            let plan = reconcile::plan(
                &state.0,
                &state.1,
                r.budget.map(|b| b.remaining()),
                &r.create_backoff.held_back(Instant::now()),
                &cfg,
            );
            if plan.changes.is_empty() && !plan.budget_bound {
                r.next_pass = Instant::now() + gucs::eventsub_reconcile_every();
                self.row.reconciled_at = Some(epoch(SystemTime::now()));
                self.dirty = true;
                return;
            }
            if plan.changes.is_empty() {
                // The budget keeps channels to polling: read it again (Twitch
                // counts the client's subscriptions, which change outside this
                // worker: another conduit's deleted, a limit raised), one
                // point a pass.
                runtime::spawn(async move {
                    let out = reconcile::read_budget(&client, &token).await;
                    let _ = tx.send(PassOutput::Budget(out));
                })
            } else {
                let budget = r.budget;
                runtime::spawn(async move {
                    let out =
                        reconcile::execute(&client, &token, &conduit, plan.changes, budget).await;
                    let _ = tx.send(PassOutput::Changes(out));
                })
            }
        };
        r.pass = Some((task, rx));
    }

    /// Records what a finished reconciliation learnt.
    fn finish_pass(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        let Some((_, rx)) = r.pass.as_mut() else {
            return;
        };
        let out = match rx.try_recv() {
            Ok(out) => out,
            Err(oneshot::error::TryRecvError::Empty) => return,
            Err(oneshot::error::TryRecvError::Closed) => {
                r.pass = None;
                return;
            }
        };
        r.pass = None;
        let every = gucs::eventsub_reconcile_every();
        let mut refused = false;
        match out {
            PassOutput::Listing(Ok((subs, budget))) => {
                r.listed_at = Some(Instant::now());
                r.budget = Some(budget);
                let ids: Vec<String> = subs.iter().map(|s| s.id.clone()).collect();
                let res = in_transaction(|| {
                    db::forget_unlisted_subscriptions(ids)?;
                    for s in &subs {
                        db::record_subscription(s)?;
                    }
                    Ok(())
                });
                if let Err(e) = res {
                    pgrx::warning!("twitch_sync eventsub worker: {e}");
                }
                // the changes follow at once
                r.next_pass = Instant::now();
            }
            PassOutput::Listing(Err(e)) => {
                refused = matches!(e, HelixError::Unauthorized { .. });
                pgrx::warning!("twitch_sync eventsub worker: listing subscriptions failed: {e}");
                r.next_pass = Instant::now() + every;
            }
            PassOutput::Revoked(Ok((subs, budget))) => {
                r.budget = Some(budget);
                let res = in_transaction(|| {
                    for s in &subs {
                        db::record_revocation(&s.id, &s.status)?;
                    }
                    Ok(())
                });
                for s in &subs {
                    pgrx::log!(
                        "twitch_sync eventsub worker: subscription {} ({} of {}) listed as revoked: {}",
                        s.id,
                        s.kind,
                        s.broadcaster_id,
                        s.status
                    );
                }
                if let Err(e) = res {
                    pgrx::warning!("twitch_sync eventsub worker: {e}");
                }
                // the changes follow at once
                r.next_pass = Instant::now();
            }
            PassOutput::Revoked(Err(e)) => {
                refused = matches!(e, HelixError::Unauthorized { .. });
                pgrx::warning!(
                    "twitch_sync eventsub worker: listing revoked subscriptions failed: {e}"
                );
                r.revocations_due = true;
                r.next_pass = Instant::now() + every;
            }
            PassOutput::Budget(Ok(budget)) => {
                // the next pass plans with it (not at once: Twitch's count
                // lags creations by a few seconds, and a listing read right
                // after them may show room that is not there)
                r.budget = Some(budget);
                r.next_pass = Instant::now() + every;
                self.row.reconciled_at = Some(epoch(SystemTime::now()));
                self.dirty = true;
            }
            PassOutput::Budget(Err(e)) => {
                refused = matches!(e, HelixError::Unauthorized { .. });
                pgrx::warning!(
                    "twitch_sync eventsub worker: reading the subscription budget failed: {e}"
                );
                r.next_pass = Instant::now() + every;
            }
            PassOutput::Changes(res) => {
                r.budget = res.budget;
                refused = res.unauthorized;
                let failures: Vec<String> = res
                    .outcomes
                    .iter()
                    .filter_map(|o| match o {
                        Outcome::Failed { error, .. } => Some(error.clone()),
                        _ => None,
                    })
                    .collect();
                let bucket_low = res.bucket_low();
                let reset = res.rate_limit.map_or(0, |s| s.reset);
                let outcomes = res.outcomes;
                r.create_backoff.record(
                    &outcomes,
                    Instant::now(),
                    plan_config().retry_revoked_after,
                );
                let recorded = in_transaction(|| {
                    for o in &outcomes {
                        match o {
                            Outcome::Created(s) => db::record_subscription(s)?,
                            Outcome::Deleted {
                                broadcaster_id,
                                kind,
                                ..
                            } => db::forget_subscription(broadcaster_id, kind)?,
                            Outcome::Failed { .. } => {}
                        }
                    }
                    Ok(())
                });
                if let Err(e) = recorded {
                    pgrx::warning!("twitch_sync eventsub worker: {e}");
                }
                if let Some(first) = failures.first() {
                    pgrx::warning!(
                        "twitch_sync eventsub worker: {} subscription request(s) failed, first: {first}",
                        failures.len()
                    );
                }
                // more to do right away unless Twitch pushed back; with the
                // bucket low, wait until it is full again
                r.next_pass = if bucket_low {
                    let wait = reset.saturating_sub(epoch(SystemTime::now()) as u64);
                    Instant::now() + Duration::from_secs(wait.clamp(1, 60))
                } else if refused || !failures.is_empty() {
                    Instant::now() + every
                } else {
                    Instant::now()
                };
            }
        }
        if let Some(b) = r.budget {
            self.row.total_cost = i32::try_from(b.total_cost).ok();
            self.row.max_total_cost = i32::try_from(b.max_total_cost).ok();
        }
        self.row.reconciled_at = Some(epoch(SystemTime::now()));
        self.write_soon();
        if refused {
            self.token_refused();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            if let Some(s) = r.stop.take() {
                let _ = s.send(());
            }
        }
    }
}
