//! Errors raised to the SQL caller: each with a chosen SQLSTATE and a message
//! that says what to do. Failures of Twitch or the network are not raised:
//! run() records them and returns them in its result document.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport, ErrorReportWithLevel};
use pgrx::PgSqlErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("twitch_sync has no Twitch credentials")]
    NoCredentials,
    #[error("invalid value for {setting}: {reason}")]
    BadSetting {
        setting: &'static str,
        reason: String,
    },
    #[error(
        "the twitch_sync library is version {library} but the extension in this database is \
         version {installed}"
    )]
    SchemaVersionMismatch {
        installed: String,
        library: &'static str,
    },
    /// run() was called in a read-only transaction (or on a standby): refused
    /// before any request is sent, since nothing it learns could be written.
    #[error("twitch_sync.run() cannot run in a read-only transaction")]
    ReadOnly,
    /// A cancel, statement_timeout or terminate arrived while run() waited on
    /// Twitch, and Postgres did not raise it itself (interrupts held off).
    #[error("canceling statement: {0}")]
    Interrupted(&'static str),
    /// PREPARE TRANSACTION of a transaction in which run() ran: its fate
    /// would be decided in another session, where a ROLLBACK PREPARED would
    /// lose the rolled-back runs it recorded (src/rolled_back.rs).
    #[error("cannot PREPARE a transaction that has called twitch_sync.run()")]
    InPreparedTransaction,
    #[error("twitch_sync internal error: {0}")]
    Internal(String),
}

impl SyncError {
    fn code(&self) -> PgSqlErrorCode {
        match self {
            SyncError::NoCredentials | SyncError::SchemaVersionMismatch { .. } => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            SyncError::BadSetting { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            SyncError::ReadOnly => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            SyncError::Interrupted(_) => PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            SyncError::InPreparedTransaction => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            SyncError::Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            SyncError::NoCredentials => Some(
                "Register an app at dev.twitch.tv/console/apps, then run \
                 SELECT twitch_sync.set_credentials('<client id>', '<client secret>');"
                    .into(),
            ),
            SyncError::BadSetting { setting, .. } => Some(format!(
                "Fix it with ALTER SYSTEM SET {setting} = '...' then SELECT pg_reload_conf(); \
                 or with ALTER DATABASE ... SET {setting} = '...', which new sessions see."
            )),
            SyncError::SchemaVersionMismatch { .. } => Some(
                "New twitch_sync binaries were installed: run ALTER EXTENSION twitch_sync UPDATE; \
                 as a superuser in this database (and in every other database that has it)."
                    .into(),
            ),
            SyncError::ReadOnly => Some(
                "run() writes what it learns: call it in a read-write transaction on the primary \
                 (default_transaction_read_only = off). No request was sent to Twitch."
                    .into(),
            ),
            SyncError::InPreparedTransaction => Some(
                "Call twitch_sync.run() in a transaction of its own, committed in its session."
                    .into(),
            ),
            SyncError::Interrupted(_) | SyncError::Internal(_) => None,
        }
    }

    /// Raises this error as an SQL ERROR; never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code(), self.to_string(), "twitch_sync");
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report.report(pgrx::PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// The report of a caught error, whatever raised it.
fn report(e: &CaughtError) -> &ErrorReportWithLevel {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    }
}

/// Raises a caught error again as a plain SQL error: the same SQLSTATE,
/// message, detail and hint, and nothing else. pgrx attaches a Rust backtrace to
/// errors it caught from Postgres (an SPI error, a statement_timeout while
/// waiting) and shows it in DETAIL when RUST_BACKTRACE is set in the server's
/// environment; users must never see one. Never returns.
pub fn reraise_clean(e: CaughtError) -> ! {
    let caught = report(&e);
    let (code, message) = (caught.sql_error_code(), caught.message().to_string());
    let (detail, hint) = (
        caught.detail().map(str::to_string),
        caught.hint().map(str::to_string),
    );
    drop(e);
    let mut report = ErrorReport::new(code, message, "twitch_sync");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(pgrx::PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// A caught error as a rolled-back run's row shows it: its message and
/// SQLSTATE, as psql would print them.
pub fn caught_for_row(e: &CaughtError) -> String {
    let caught = report(e);
    // PostgreSQL packs the five characters of a SQLSTATE six bits each.
    let packed = caught.sql_error_code() as u32;
    let sqlstate: String = (0..5)
        .map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3F) as u8))
        .collect();
    format!("{} (SQLSTATE {sqlstate})", caught.message())
}

/// The message of a caught error, for the background worker's log (it has
/// no SQL caller to raise it to).
pub fn caught_message(e: &CaughtError) -> String {
    let caught = report(e);
    format!(
        "{} (SQLSTATE {:?})",
        caught.message(),
        caught.sql_error_code()
    )
}
