//! Runs whose transaction was rolled back (a cancel, `statement_timeout`,
//! `pg_terminate_backend`, a shutdown, an error) took their own `runs` row
//! with them. So that every run still leaves its row, a run that holds the
//! run lock registers an abort callback; if its transaction aborts, the
//! callback keeps the run (database, start, end, the error that ended it) in
//! shared memory, and the next run in the same database records it
//! (`record_run`: status `failed`, error `rolled back: …`, and its alert).
//! A run that returned its document is not kept: its caller's transaction
//! decides about it as about any other statement's writes.
//!
//! Shared memory needs the library in `shared_preload_libraries`; without it
//! the runs are kept in the backend, and only the same session's next run
//! records them. The queue itself (size, dropping, the recorded error) is
//! twitch_sync_core::rolled_back.

use pgrx::{pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use twitch_sync_core::rolled_back::{to_record, Entry, Queue, RolledBackRun};

#[derive(Copy, Clone, Default)]
pub struct SharedQueue(Queue);

// SAFETY: plain old data of a fixed size (no pointers), changed under the lock.
unsafe impl PGRXSharedMemory for SharedQueue {}

static SHARED: PgLwLock<SharedQueue> = unsafe { PgLwLock::new(c"twitch_sync_rolled_back_runs") };
/// Set in the postmaster while it preloads the library; every backend inherits it.
static IN_SHARED_MEMORY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Without the preload: this backend's queue.
    static LOCAL: RefCell<Queue> = RefCell::new(Queue::default());
    /// The error ending the current run, set just before it is raised again.
    static CAUSE: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Runs this transaction took to record: kept again if it aborts.
    static TAKEN: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    /// The current run's "kept or returned" flag: its callbacks do nothing once set.
    static SETTLED: RefCell<Arc<AtomicBool>> = RefCell::new(Arc::default());
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

/// Called once a run holds the run lock: if its transaction aborts, the run
/// (and the rolled-back runs it took to record) are kept for the next run.
/// So they are if run() was called in a subtransaction (a PL/pgSQL block with
/// EXCEPTION) that is rolled back while the transaction goes on; once only.
pub fn watch(started_at: SystemTime) {
    CAUSE.with(|c| c.borrow_mut().take());
    TAKEN.with(|t| t.borrow_mut().clear());
    let database = database();
    let settled = Arc::new(AtomicBool::new(false));
    SETTLED.with(|s| *s.borrow_mut() = settled.clone());
    let keep_once = move || {
        if !settled.swap(true, Ordering::Relaxed) {
            keep(database, started_at);
        }
    };
    // SAFETY: called in a transaction (run() is a function).
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let on_abort = keep_once.clone();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, on_abort);
    pgrx::register_subxact_callback(
        pgrx::PgSubXactCallbackEvent::AbortSub,
        move |aborted, _parent| {
            if aborted == subtransaction {
                keep_once();
            }
        },
    );
}

/// The current run returned its document: whatever happens to its
/// transaction now is its caller's doing, and the run is not kept.
pub fn returned() {
    SETTLED.with(|s| s.borrow().store(true, Ordering::Relaxed));
}

/// The error about to end the current run, kept for its row.
pub fn ending_with(message: String) {
    CAUSE.with(|c| *c.borrow_mut() = Some(message));
}

/// The abort callback. Nothing here raises an ERROR.
fn keep(database: u32, started_at: SystemTime) {
    // SAFETY: a flag Postgres sets while the backend exits.
    let exiting = unsafe { pg_sys::proc_exit_inprogress };
    let message = CAUSE.with(|c| c.borrow_mut().take()).unwrap_or_else(|| {
        if exiting {
            "the session ended (pg_terminate_backend, a shutdown or a lost connection)".into()
        } else {
            "the transaction was rolled back before the run finished".into()
        }
    });
    let taken = TAKEN.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let run = Entry::new(database, started_at, &message);
    with_queue(|q| {
        for e in taken {
            q.push(e);
        }
        q.push(run);
    });
}

/// Takes this database's rolled-back runs, oldest first. Call after
/// [`watch`]: if this transaction aborts too, they are kept again.
pub fn take() -> Vec<RolledBackRun> {
    let (entries, dropped) = with_queue(|q| q.take(database()));
    TAKEN.with(|t| t.borrow_mut().extend_from_slice(&entries));
    to_record(&entries, dropped)
}
