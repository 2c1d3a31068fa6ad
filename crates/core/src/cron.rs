//! When a pg_cron schedule next fires, for `twitch_sync.status()`.
//!
//! This module does not decide which schedules are valid: pg_cron does, when
//! `twitch_sync.schedule()` hands it the schedule. Here a schedule is only
//! evaluated, and anything that cannot be evaluated gives `None` ("unknown")
//! rather than an error, so that `status()` never fails because of an odd
//! schedule in `cron.job`.
//!
//! What is understood:
//! - five-field cron expressions (minute hour day-of-month month day-of-week,
//!   with `*`, lists, ranges, steps and month/weekday names; day of week 0 or 7
//!   is Sunday), evaluated by the `croner` crate in UTC, as pg_cron does
//!   (pg_cron 1.4 always uses GMT; 1.5+ uses `cron.timezone`, GMT by default).
//!   Day-of-month and day-of-week combine as in Vixie cron, whose parser
//!   pg_cron uses: when both are restricted either may match, unless one of
//!   them starts with `*` (such as `*/2`), then both must;
//! - the macros `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight` and `@hourly`;
//! - pg_cron 1.5+'s interval schedules, `'N seconds'` (N from 1 to 59), which
//!   pg_cron starts N seconds after the job's last start: the next run is the
//!   last start plus N seconds, unknown when there is no last start.
//!
//! `@reboot` and anything else give `None`.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A schedule as this module understands it.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (macros expanded).
    Cron(Box<Cron>),
    /// `'N seconds'`: N seconds after the last start.
    EverySeconds(u32),
}

impl Schedule {
    /// Reads a pg_cron schedule, or `None` if it is not one this module can
    /// evaluate (which is not the same as pg_cron refusing it).
    pub fn parse(schedule: &str) -> Option<Schedule> {
        let text = schedule.trim();
        if let Some(n) = every_seconds(text) {
            return Some(Schedule::EverySeconds(n));
        }
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if text.starts_with('@') => return None,
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return None;
        }
        // Vixie cron: a day field that starts with '*' makes the two day fields
        // combine with AND (a plain '*' then simply leaves the other one).
        let and = fields[2].starts_with('*') || fields[4].starts_with('*');
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .dom_and_dow(and)
            .build();
        parser
            .parse(&fields.join(" "))
            .ok()
            .map(|c| Schedule::Cron(Box::new(c)))
    }

    /// When the schedule next fires: for a cron expression, the first minute
    /// strictly after `after`; for `'N seconds'`, `last_start` plus N seconds
    /// (which may already be past if the job is late or still running), or
    /// `None` without a last start. Times are microseconds since the Unix
    /// epoch, UTC. `None` as well when no time is found (`0 0 31 2 *`) or the
    /// times are out of range.
    pub fn next_after(&self, after: i64, last_start: Option<i64>) -> Option<i64> {
        match self {
            Schedule::EverySeconds(n) => last_start?.checked_add(i64::from(*n) * 1_000_000),
            Schedule::Cron(cron) => {
                let secs = after.div_euclid(1_000_000);
                let from = DateTime::<Utc>::from_timestamp(secs, 0)?;
                // Strictly after `from`, a whole second: a fraction of a second
                // past it cannot be a cron minute's start anyway.
                // (from before year 1 the crate answers 0001-01-01, not the
                // next minute: no time found, rather than a wrong one)
                if chrono::Datelike::year(&from) < 1 {
                    return None;
                }
                let next = cron.find_next_occurrence(&from, false).ok()?;
                next.timestamp().checked_mul(1_000_000)
            }
        }
    }
}

/// `N seconds` / `N second` (any case, any spacing), N from 1 to 59.
fn every_seconds(text: &str) -> Option<u32> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let unit = text[digits..].trim().to_ascii_lowercase();
    if unit != "seconds" && unit != "second" {
        return None;
    }
    text[..digits]
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=59).contains(n))
}

/// When `schedule` next fires after `after` (see [`Schedule::next_after`]),
/// or `None` if that is unknown.
pub fn next_run(schedule: &str, after: i64, last_start: Option<i64>) -> Option<i64> {
    Schedule::parse(schedule)?.next_after(after, last_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25 14:03:30 UTC, a Wednesday, in microseconds
    const NOW: i64 = 1_795_615_410_000_000;
    const MINUTE: i64 = 60_000_000;

    fn next(s: &str) -> i64 {
        next_run(s, NOW, None).unwrap_or_else(|| panic!("{s}: no next run"))
    }

    fn at(day: i64, h: i64, m: i64) -> i64 {
        let midnight = NOW - (14 * 60 + 3) * MINUTE - 30_000_000;
        midnight + ((day * 24 + h) * 60 + m) * MINUTE
    }

    #[test]
    fn a_time_before_year_one_has_no_next_run() {
        // 4713-01-01 BC (PostgreSQL's earliest timestamptz): the crate
        // answered 0001-01-01, not the next minute
        let bc = -210_866_803_200_000_000;
        assert_eq!(next_run("* * * * *", bc, None), None);
    }

    #[test]
    fn finds_the_next_minute_in_utc() {
        assert_eq!(next("* * * * *"), at(0, 14, 4));
        assert_eq!(next("*/10 * * * *"), at(0, 14, 10));
        assert_eq!(next("  */10  *  * * *  "), at(0, 14, 10));
        assert_eq!(next("0 * * * *"), at(0, 15, 0));
        assert_eq!(next("@hourly"), at(0, 15, 0));
        assert_eq!(next("@daily"), at(1, 0, 0));
        assert_eq!(next("@midnight"), at(1, 0, 0));
        assert_eq!(next("30 2 * * *"), at(1, 2, 30));
        // Sundays at noon: 2026-11-29
        assert_eq!(next("0 12 * * 0"), at(4, 12, 0));
        assert_eq!(next("0 12 * * 7"), at(4, 12, 0));
        assert_eq!(next("0 12 * * sun"), at(4, 12, 0));
        assert_eq!(next("@weekly"), at(4, 0, 0));
        // 1st of December
        assert_eq!(next("0 0 1 * *"), at(6, 0, 0));
        assert_eq!(next("@monthly"), at(6, 0, 0));
        assert_eq!(next("5-7,20 14 * dec *"), at(6, 14, 5));
        assert_eq!(next("5-7,20 14 * DEC *"), at(6, 14, 5));
        // strictly after: a schedule due this very minute is not "next"
        assert_eq!(next_run("3 14 * * *", NOW, None), Some(at(1, 14, 3)));
        assert_eq!(
            next_run("4 14 * * *", at(0, 14, 4), None),
            Some(at(1, 14, 4))
        );
        assert_eq!(
            next_run("4 14 * * *", at(0, 14, 4) - 1, None),
            Some(at(0, 14, 4))
        );
    }

    #[test]
    fn day_fields_combine_as_in_vixie_cron() {
        // both restricted: either matches (the 1st, or a Friday: the 27th)
        assert_eq!(next("0 0 1 * fri"), at(2, 0, 0));
        // one starts with '*': both must match. Mondays on odd days of the
        // month: 2026-11-30 is a Monday but day 30; 2026-12-07 is day 7.
        assert_eq!(next("0 0 */2 * 1"), at(12, 0, 0));
        assert_eq!(next("0 0 * * 1"), at(5, 0, 0));
    }

    #[test]
    fn interval_schedules_run_n_seconds_after_the_last_start() {
        let last = NOW - 10_000_000;
        assert_eq!(
            next_run("30 seconds", NOW, Some(last)),
            Some(last + 30_000_000)
        );
        assert_eq!(
            next_run(" 5 Seconds ", NOW, Some(last)),
            Some(last + 5_000_000)
        );
        assert_eq!(
            next_run("1 second", NOW, Some(last)),
            Some(last + 1_000_000)
        );
        assert_eq!(
            next_run("59seconds", NOW, Some(last)),
            Some(last + 59_000_000)
        );
        // no last start yet: unknown
        assert_eq!(next_run("30 seconds", NOW, None), None);
    }

    #[test]
    fn what_cannot_be_evaluated_is_unknown_not_an_error() {
        for odd in [
            "",
            "   ",
            "nope",
            "* * * *",
            "* * * * * *",
            "61 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "a * * * *",
            "@reboot",
            "@sometimes",
            "0 seconds",
            "60 seconds",
            "-5 seconds",
            "30 minutes",
            "seconds",
            "99999999999999999999 seconds",
        ] {
            assert_eq!(next_run(odd, NOW, Some(NOW)), None, "{odd:?}");
        }
        // valid, but never
        assert_eq!(next_run("0 0 31 2 *", NOW, None), None);
        // out of chrono's range
        assert_eq!(next_run("* * * * *", i64::MAX, None), None);
        assert_eq!(next_run("30 seconds", NOW, Some(i64::MAX)), None);
    }
}
