//! `twitch_sync.cron_next_run()`: when a pg_cron schedule next fires, for
//! `twitch_sync.status()`. The evaluation is `twitch_sync_core::cron`'s; the
//! schedule's validity is pg_cron's business (`twitch_sync.schedule()` lets
//! pg_cron refuse a bad one).

use pgrx::datum::TimestampWithTimeZone;

/// TimestampWithTimeZone counts microseconds since 2000-01-01 (Unix 946684800).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn to_unix_micros(t: TimestampWithTimeZone) -> Option<i64> {
    let micros: i64 = t.into_inner();
    // ±infinity are i64::MAX / i64::MIN: no time to count from.
    if micros == i64::MAX || micros == i64::MIN {
        return None;
    }
    micros.checked_add(PG_EPOCH_MICROS)
}

/// Microseconds since the Unix epoch as a timestamptz (None outside its range).
pub(crate) fn from_unix_micros(micros: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(micros.checked_sub(PG_EPOCH_MICROS)?).ok()
}

#[pgrx::pg_schema]
mod twitch_sync {
    use pgrx::datum::TimestampWithTimeZone;
    use pgrx::prelude::*;

    /// `twitch_sync.cron_next_run(schedule, after, last_start DEFAULT NULL)`:
    /// when a pg_cron schedule next fires after `after`, in UTC as pg_cron
    /// evaluates it. Five-field schedules and `@hourly`-style macros: the first
    /// matching minute strictly after `after`. pg_cron 1.5+'s `'N seconds'`
    /// schedules: `last_start` + N seconds (NULL without `last_start`).
    ///
    /// Never raises: a schedule it cannot evaluate (invalid, `@reboot`, a
    /// date that never comes such as `0 0 31 2 *`) and NULL arguments give
    /// NULL, so `status()` cannot fail because of an odd schedule. It does
    /// not validate schedules: pg_cron does, in `twitch_sync.schedule()`.
    #[pg_extern(immutable, parallel_safe)]
    fn cron_next_run(
        schedule: Option<&str>,
        after: Option<TimestampWithTimeZone>,
        last_start: default!(Option<TimestampWithTimeZone>, "NULL"),
    ) -> Option<TimestampWithTimeZone> {
        let after = super::to_unix_micros(after?)?;
        let last_start = last_start.and_then(super::to_unix_micros);
        let next = twitch_sync_core::cron::next_run(schedule?, after, last_start)?;
        super::from_unix_micros(next)
    }
}
