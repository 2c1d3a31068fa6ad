//! Errors raised to the SQL caller: each with a chosen SQLSTATE and a message
//! that says what to do. Failures of Twitch or the network are not raised:
//! run() records them and returns them in its result document.

use pgrx::pg_sys::panic::ErrorReport;
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
    /// A cancel, statement_timeout or terminate arrived while run() waited on
    /// Twitch, and Postgres did not raise it itself (interrupts held off).
    #[error("canceling statement: {0}")]
    Interrupted(&'static str),
    #[error("twitch_sync internal error: {0}")]
    Internal(String),
}

impl SyncError {
    fn code(&self) -> PgSqlErrorCode {
        match self {
            SyncError::NoCredentials => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SyncError::BadSetting { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            SyncError::Interrupted(_) => PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
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
                "Fix it with ALTER SYSTEM SET {setting} = '...' (or ALTER DATABASE ... SET), then SELECT pg_reload_conf();"
            )),
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
