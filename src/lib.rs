//! twitch_sync: keeps Twitch live-stream state and viewer counts current
//! inside PostgreSQL.
//!
//! Layout, in the direction data flows:
//! - `api`: the SQL-facing `twitch_sync.run()`;
//! - `schedule`: `twitch_sync.cron_next_run()`, for `status()`;
//! - `webhook`: `twitch_sync.eventsub_webhook()`, EventSub's webhook transport;
//! - `db`: every SPI call (read state, apply, record the run);
//! - `twitch_sync_core` (crates/core): Helix client, rate limiter, batch
//!   planner, parsing and the sync engine, with no Postgres in them;
//! - `runtime`: the backend's tokio runtime and interruptible waiting;
//! - `rolled_back`: runs whose transaction aborted, kept in shared memory for
//!   the next run to record;
//! - `worker`: the EventSub background worker (conduit shard, events,
//!   subscriptions);
//! - `gucs`, `error`: settings and SQL errors.
//!
//! Tables and the SQL-side functions are in sql/: schema.sql (tables, track,
//! untrack, set_credentials), analytics.sql (history, rollups, maintain(),
//! the analytics views and functions), transitions.sql (the transition layer),
//! operations.sql (record_run, channel_status, schedule, prune),
//! discovery.sql (tracked categories, track_category, discover_channels),
//! dashboard.sql (the HTML dashboard), eventsub.sql (EventSub notifications
//! and subscriptions), webhook.sql (the webhook secret) and finalize.sql
//! (status, metrics, privileges).

mod api;
mod db;
mod error;
mod gucs;
mod rolled_back;
mod runtime;
mod schedule;
mod webhook;
mod worker;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
// Settings are read in SQL through twitch_sync.setting() (src/gucs.rs), which
// the SQL-language functions of every file below name in their bodies.
pgrx::extension_sql_file!(
    "../sql/analytics.sql",
    name = "analytics",
    requires = ["schema", gucs::twitch_sync::setting]
);
pgrx::extension_sql_file!(
    "../sql/transitions.sql",
    name = "transitions",
    requires = ["schema", "analytics"]
);
pgrx::extension_sql_file!(
    "../sql/operations.sql",
    name = "operations",
    requires = ["schema", "transitions"]
);
pgrx::extension_sql_file!(
    "../sql/dashboard.sql",
    name = "dashboard",
    requires = ["schema", "analytics", "transitions", "operations"]
);
pgrx::extension_sql_file!(
    "../sql/eventsub.sql",
    name = "eventsub",
    requires = ["schema", "transitions"]
);
pgrx::extension_sql_file!(
    "../sql/webhook.sql",
    name = "webhook",
    requires = ["schema", "transitions", "eventsub"]
);
pgrx::extension_sql_file!(
    "../sql/discovery.sql",
    name = "discovery",
    requires = ["schema", "transitions"]
);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // The EventSub worker and the shared queue of rolled-back runs exist only
    // when the library is preloaded.
    // SAFETY: a flag Postgres sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        rolled_back::init();
        worker::register();
    }
}

// The in-database suite lives in pgrx-tests/ and is compiled into the
// extension for `cargo pgrx test` only.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    include!("../pgrx-tests/tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// Both URL settings point at a closed loopback port, so that no test of
    /// the in-database suite can reach Twitch (or anything else), whichever
    /// endpoint it would call first.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "twitch_sync.helix_url = 'http://127.0.0.1:1/helix'",
            "twitch_sync.auth_url = 'http://127.0.0.1:1/oauth2'",
        ]
    }
}
