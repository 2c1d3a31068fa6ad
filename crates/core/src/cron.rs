//! pg_cron schedules: checking one and finding when it next fires.
//!
//! pg_cron 1.4 (Debian 12's) takes standard five-field cron expressions
//! (minute hour day-of-month month day-of-week, with `*`, lists, ranges and
//! steps, and `@hourly`-style macros) and evaluates them in UTC. Day-of-month
//! and day-of-week follow Vixie cron: if both are restricted, either may match.

/// A parsed schedule: for each field, the set of allowed values as a bitmask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_restricted: bool,
    dow_restricted: bool,
}

fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    what: &str,
) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + min);
        }
        s.parse::<u32>()
            .map_err(|_| format!("{what}: \"{s}\" is not a number"))
    };
    let mut mask = 0u64;
    let restricted = text != "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("{what}: bad step \"{s}\""))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step > 1 { max } else { v })
        };
        // day of week 7 is Sunday, like 0
        let (lo, hi) = if what == "day of week" {
            (lo, hi.min(7))
        } else {
            (lo, hi)
        };
        if lo < min || hi > max.max(if what == "day of week" { 7 } else { max }) || lo > hi {
            return Err(format!("{what}: \"{range}\" is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            let bit = if what == "day of week" && v == 7 {
                0
            } else {
                v
            };
            mask |= 1 << bit;
            v += step;
        }
    }
    Ok((mask, restricted))
}

impl CronSchedule {
    /// Parses a pg_cron schedule, or says what is wrong with it.
    pub fn parse(schedule: &str) -> Result<CronSchedule, String> {
        let expanded = match schedule.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "\"{schedule}\" has {} fields; a schedule has five: minute hour day-of-month month day-of-week, \
                 such as '*/10 * * * *'",
                parts.len()
            ));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minutes, _) = field(parts[0], 0, 59, &[], "minute")?;
        let (hours, _) = field(parts[1], 0, 23, &[], "hour")?;
        let (dom, dom_r) = field(parts[2], 1, 31, &[], "day of month")?;
        let (months, _) = field(parts[3], 1, 12, MONTHS, "month")?;
        let (dow, dow_r) = field(parts[4], 0, 6, DAYS, "day of week")?;
        Ok(CronSchedule {
            minutes,
            hours: hours as u32,
            days_of_month: dom as u32,
            months: months as u16,
            days_of_week: dow as u8,
            dom_restricted: dom_r,
            dow_restricted: dow_r,
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let dom = self.days_of_month & (1 << day) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first minute strictly after `after` (Unix seconds, UTC) at which the
    /// schedule fires, within the next eight years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let mut t = (after.div_euclid(60) + 1) * 60;
        let limit = t + 8 * 366 * 86_400;
        while t < limit {
            let days = t.div_euclid(86_400);
            let (year, month, day) = civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            if self.months & (1 << month) == 0 || !self.day_matches(day, weekday) {
                t = (days + 1) * 86_400;
                let _ = year;
                continue;
            }
            let secs = t.rem_euclid(86_400);
            let (hour, minute) = ((secs / 3600) as u32, (secs % 3600 / 60) as u32);
            if self.hours & (1 << hour) == 0 {
                t = days * 86_400 + (hour as i64 + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << minute) == 0 {
                t += 60;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-25 14:03:30 UTC, a Wednesday
    const NOW: i64 = 1_795_615_410;

    fn next(s: &str) -> i64 {
        CronSchedule::parse(s).unwrap().next_after(NOW).unwrap()
    }

    #[test]
    fn finds_the_next_minute() {
        let midnight = NOW - (14 * 3600 + 3 * 60 + 30);
        let at = |day: i64, h: i64, m: i64| midnight + day * 86_400 + h * 3600 + m * 60;
        assert_eq!(civil_from_days(NOW / 86_400), (2026, 11, 25));
        assert_eq!(next("* * * * *"), at(0, 14, 4));
        assert_eq!(next("*/10 * * * *"), at(0, 14, 10));
        assert_eq!(next("0 * * * *"), at(0, 15, 0));
        assert_eq!(next("@hourly"), at(0, 15, 0));
        assert_eq!(next("30 2 * * *"), at(1, 2, 30));
        // Sundays at noon: 2026-11-29
        assert_eq!(next("0 12 * * 0"), at(4, 12, 0));
        assert_eq!(next("0 12 * * 7"), at(4, 12, 0));
        assert_eq!(next("0 12 * * sun"), at(4, 12, 0));
        // 1st of December
        assert_eq!(next("0 0 1 * *"), at(6, 0, 0));
        assert_eq!(next("5-7,20 14 * dec *"), at(6, 14, 5));
        // either day field may match when both are restricted (the 1st, or a Friday: the 27th)
        assert_eq!(next("0 0 1 * fri"), at(2, 0, 0));
    }

    #[test]
    fn refuses_bad_schedules_with_a_reason() {
        for (bad, why) in [
            ("", "five"),
            ("* * * *", "five"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step"),
            ("a * * * *", "not a number"),
            ("5-1 * * * *", "outside"),
            ("1 seconds", "five"),
        ] {
            let e = CronSchedule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(CronSchedule::parse("0 0 31 2 *")
            .unwrap()
            .next_after(NOW)
            .is_none());
    }
}
