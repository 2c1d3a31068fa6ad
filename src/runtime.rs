//! The tokio runtime of this backend, and waiting on it in a way that honours
//! query cancel, statement_timeout and pg_terminate_backend.
//!
//! The runtime is built on first use (never in `_PG_init`, which may run in the
//! postmaster). It has one worker thread, so that the HTTP side of a run (the
//! core's engine, [`spawn`]ed there) goes on sending requests and reading
//! answers while the backend's own thread writes earlier answers: the two
//! genuinely overlap. Nothing on the worker (or on tokio's blocking pool, used
//! for DNS) touches Postgres: the engine is the pgrx-free core, and it hands
//! results over a channel. Every runtime thread blocks all signals, so
//! Postgres' handlers (cancel, terminate, latch) only ever run on the
//! backend's thread. Futures given to [`block_on_interruptible`] run on the
//! backend's thread, which only reads the interrupt flags, as plain memory.

use once_cell::sync::OnceCell;
use std::future::Future;
use std::time::Duration;

static RUNTIME: OnceCell<tokio::runtime::Runtime> = OnceCell::new();

/// Blocks every signal in the calling thread (a runtime thread).
fn block_signals() {
    // SAFETY: plain libc calls on a local signal set; they affect only this thread.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("twitch_sync")
            .on_thread_start(block_signals)
            .enable_all()
            .build()
            .expect("a tokio runtime with one worker can always be built")
    })
}

/// A future running on the runtime's worker thread; dropping this handle
/// (at the end of a run, or when an error or an interrupt unwinds past it)
/// stops the future.
pub struct Background<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.0.abort();
        // The worker thread allocates from its own malloc arena, which keeps
        // freed memory mapped; the run's answers are gone now: give it back, so
        // a long-lived backend does not keep a run's peak.
        trim_heap();
    }
}

/// Gives free heap memory back to the system (every malloc arena).
pub fn trim_heap() {
    // SAFETY: a plain libc call; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl<T> Future for Background<T> {
    /// Err: the future panicked (a bug) or was cancelled. What a panic said is
    /// left out: it is no message for users (it reaches the run's result,
    /// `runs` row and alert) and may quote anything.
    type Output = Result<T, String>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| "internal error in the HTTP task".to_string()))
    }
}

/// Starts `fut` on the runtime's worker thread; await the handle (inside
/// [`block_on_interruptible`]) for its output.
pub fn spawn<F>(fut: F) -> Background<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Background(runtime().spawn(fut))
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

/// For the background worker: runs `fut` to completion unless Postgres asks
/// the worker to shut down first (SIGTERM sets `ShutdownRequestPending`);
/// then the future is dropped and None returned.
pub fn block_on_until_shutdown<F: Future>(fut: F) -> Option<F::Output> {
    runtime().block_on(async {
        tokio::select! {
            out = fut => Some(out),
            _ = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if shutdown_requested() {
                        break;
                    }
                }
            } => None,
        }
    })
}

/// SIGTERM reached the worker (pgrx's handler sets Postgres' flag).
pub fn shutdown_requested() -> bool {
    // SAFETY: a sig_atomic_t flag set by the signal handler, read as plain memory.
    unsafe { pgrx::pg_sys::ShutdownRequestPending != 0 }
}
