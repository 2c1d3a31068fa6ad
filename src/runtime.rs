//! The tokio runtime of this backend, and waiting on it in a way that honours
//! query cancel, statement_timeout and pg_terminate_backend.
//!
//! The runtime is a `current_thread` one built on first use (never in
//! `_PG_init`, which may run in the postmaster): every future runs on the
//! backend's own thread inside `block_on`, and no Postgres function is called
//! while it runs. Only the interrupt flags are read there, as plain memory.

use once_cell::sync::OnceCell;
use std::future::Future;
use std::time::Duration;

static RUNTIME: OnceCell<tokio::runtime::Runtime> = OnceCell::new();

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread tokio runtime can always be built")
    })
}

fn interrupt_pending() -> bool {
    // SAFETY: sig_atomic_t flags set by Postgres' signal handlers; reading them is what
    // CHECK_FOR_INTERRUPTS does, and this runs on the backend's main thread.
    unsafe { pgrx::pg_sys::QueryCancelPending != 0 || pgrx::pg_sys::ProcDiePending != 0 }
}

/// Runs `fut` to completion unless a cancel or terminate request arrives first;
/// then the future is dropped (closing its connections) and Postgres raises the
/// usual ERROR/FATAL from outside the runtime.
pub fn block_on_interruptible<F: Future>(fut: F) -> F::Output {
    let out = runtime().block_on(async {
        tokio::select! {
            out = fut => Some(out),
            _ = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if interrupt_pending() {
                        break;
                    }
                }
            } => None,
        }
    });
    match out {
        Some(v) => v,
        None => {
            // Postgres raises the cancel (57014) or terminate (FATAL) itself here,
            // unless interrupts are held off; then the run still stops, as canceled.
            pgrx::check_for_interrupts!();
            crate::error::SyncError::Interrupted(
                "twitch_sync.run() was interrupted while it waited on Twitch",
            )
            .raise()
        }
    }
}
