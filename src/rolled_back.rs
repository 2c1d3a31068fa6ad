//! Runs whose writes were rolled back (a cancel, `statement_timeout`,
//! `pg_terminate_backend`, an error) took their own `runs` row with them. So
//! that every run still leaves its row, a run that holds the run lock
//! registers callbacks: when its transaction aborts, or the subtransaction it
//! was called in is rolled back, they keep the run (database, start, end, the
//! error that ended it) in shared memory, and the next run in the same
//! database records it (`record_run`: status `failed`, error `rolled back: …`,
//! and its alert). A run that returned its document is not kept: its caller
//! decides about it as about any other statement's writes; the rolled-back
//! runs it took to record are given back either way.
//!
//! Shared memory needs the library in `shared_preload_libraries`; without it
//! the runs are kept in the backend, and only the same session's next run
//! records them. The queue itself (size, dropping, the recorded rows) is
//! twitch_sync_core::rolled_back.

use pgrx::{pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};
use pgrx::{PgSubXactCallbackEvent, PgXactCallbackEvent};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use twitch_sync_core::rolled_back::{Entry, Queue, RolledBackRun, Taken};

#[derive(Copy, Clone, Default)]
pub struct SharedQueue(Queue);

// SAFETY: plain old data of a fixed size (no pointers), changed under the lock.
unsafe impl PGRXSharedMemory for SharedQueue {}

static SHARED: PgLwLock<SharedQueue> = unsafe { PgLwLock::new(c"twitch_sync_rolled_back_runs") };
/// Set in the postmaster while it preloads the library; every backend inherits it.
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

/// The current run, as its callbacks see it.
#[derive(Default)]
struct RunState {
    /// The callbacks did their work (once only).
    done: AtomicBool,
    /// run() returned its document: the run itself is its caller's now.
    returned: AtomicBool,
    /// The subtransaction whose abort undoes the run's writes: the one run()
    /// was called in, or, once that one is released, its parent's.
    subtransaction: AtomicU32,
}

thread_local! {
    /// Without the preload: this backend's queue.
    static LOCAL: RefCell<Queue> = RefCell::new(Queue::default());
    /// The error ending the current run, set just before it is raised again.
    static CAUSE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// What the current run took to record: given back if its writes are undone.
    static TAKEN: RefCell<Taken> = RefCell::new(Taken::default());
    static CURRENT: RefCell<Arc<RunState>> = RefCell::new(Arc::default());
}

/// From `_PG_init` while Postgres loads shared_preload_libraries.
// pg_shmem_init! tests features of PostgreSQL versions this crate does not declare.
#[allow(unexpected_cfgs)]
pub fn init() {
    use pgrx::pg_guard;
    pg_shmem_init!(SHARED);
    IN_SHARED_MEMORY.store(true, Ordering::Relaxed);
}

fn with_queue<T>(f: impl FnOnce(&mut Queue) -> T) -> T {
    if IN_SHARED_MEMORY.load(Ordering::Relaxed) {
        f(&mut SHARED.exclusive().0)
    } else {
        LOCAL.with(|q| f(&mut q.borrow_mut()))
    }
}

fn database() -> u32 {
    // SAFETY: set before any SQL function can be called.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Called once a run holds the run lock. If its writes are undone — its
/// transaction aborts, or the subtransaction it was called in (a PL/pgSQL
/// block with EXCEPTION, a savepoint) is rolled back — what it took to
/// record is given back, and the run itself is kept unless it had returned.
pub fn watch(started_at: SystemTime) {
    CAUSE.with(|c| c.borrow_mut().take());
    TAKEN.with(|t| *t.borrow_mut() = Taken::default());
    let database = database();
    let state = Arc::new(RunState::default());
    // SAFETY: called in a transaction (run() is a function).
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    state
        .subtransaction
        .store(subtransaction, Ordering::Relaxed);
    CURRENT.with(|c| *c.borrow_mut() = state.clone());
    let on_abort = state.clone();
    pgrx::register_xact_callback(PgXactCallbackEvent::Abort, move || {
        keep(database, started_at, &on_abort)
    });
    // Two-phase commit is refused: a ROLLBACK PREPARED in another session
    // would undo the rows this run recorded with no callback here to give
    // them back. The refusal aborts the transaction; the Abort callback then
    // gives back what the run took and keeps the run itself, which loses its
    // row through no choice of its caller.
    let on_prepare = state.clone();
    pgrx::register_xact_callback(PgXactCallbackEvent::PrePrepare, move || {
        let refusal = crate::error::SyncError::InPreparedTransaction;
        ending_with(format!("{refusal} (SQLSTATE 0A000)"));
        on_prepare.returned.store(false, Ordering::Relaxed);
        refusal.raise()
    });
    let on_release = state.clone();
    pgrx::register_subxact_callback(PgSubXactCallbackEvent::CommitSub, move |sub, parent| {
        // released into its parent: the parent's abort undoes the writes now
        let _ = on_release.subtransaction.compare_exchange(
            sub,
            parent,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    });
    pgrx::register_subxact_callback(PgSubXactCallbackEvent::AbortSub, move |sub, _parent| {
        if sub == state.subtransaction.load(Ordering::Relaxed) {
            keep(database, started_at, &state);
        }
    });
}

/// For a run that did not take the run lock (skipped): PREPARE is refused
/// for every call of run(), one rule whatever the call did.
pub fn refuse_prepare() {
    pgrx::register_xact_callback(PgXactCallbackEvent::PrePrepare, || {
        crate::error::SyncError::InPreparedTransaction.raise()
    });
}

/// The current run returned its document: whatever happens to its
/// transaction now is its caller's doing, and the run itself is not kept
/// (what it took to record still is given back).
pub fn returned() {
    CURRENT.with(|c| c.borrow().returned.store(true, Ordering::Relaxed));
}

/// The error about to end the current run, kept for its row.
pub fn ending_with(message: String) {
    CAUSE.with(|c| *c.borrow_mut() = Some(message));
}

/// The callbacks' work, once. Nothing here raises an ERROR.
fn keep(database: u32, started_at: SystemTime, state: &RunState) {
    if state.done.swap(true, Ordering::Relaxed) {
        return;
    }
    let run = (!state.returned.load(Ordering::Relaxed)).then(|| {
        // SAFETY: a flag Postgres sets while the backend exits.
        let exiting = unsafe { pg_sys::proc_exit_inprogress };
        let message = CAUSE.with(|c| c.borrow_mut().take()).unwrap_or_else(|| {
            if exiting {
                "the session ended (pg_terminate_backend or a lost connection)".into()
            } else {
                "the transaction was rolled back before the run finished".into()
            }
        });
        Entry::new(database, started_at, &message)
    });
    let taken = TAKEN.with(|t| std::mem::take(&mut *t.borrow_mut()));
    with_queue(|q| {
        q.give_back(taken);
        if let Some(run) = run {
            q.push(run);
        }
    });
}

/// Takes this database's rolled-back runs, oldest first. Call after
/// [`watch`]: if this run's writes are undone, they are given back.
pub fn take() -> Vec<RolledBackRun> {
    let taken = with_queue(|q| q.take(database()));
    let rows = taken.to_record();
    TAKEN.with(|t| *t.borrow_mut() = taken);
    rows
}
