//! Cron expressions for the scheduler, in UTC: the classic five fields
//! `minute hour day-of-month month day-of-week`, or six with a leading
//! `second` field (for schedules finer than a minute, e.g. `*/5 * * * * *`).
//!
//! Each field is `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or
//! `a/n` (from `a` to the field's end), or a comma-separated list of
//! those. Months and weekdays also take English three-letter names
//! (`jan`, `mon`); weekday 0 and 7 are both Sunday. As in Vixie cron,
//! when both day-of-month and day-of-week are restricted (neither is `*`),
//! a day matches if either does.

use std::fmt;

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression: {0}")]
pub struct CronError(String);

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month was `*` (or `*/1`).
    any_day: bool,
    /// Day-of-week was `*` (or `*/1`).
    any_weekday: bool,
    source: String,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.source)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Longest expression accepted, in bytes.
pub const MAX_CRON_BYTES: usize = 256;

/// How far ahead [`Cron::next_after`] looks before giving up (an
/// expression such as `0 0 30 2 *` never matches).
const HORIZON_SECS: i64 = 5 * 366 * 86_400;

impl Cron {
    /// Parse `text` (five or six fields, see the module docs).
    pub fn parse(text: &str) -> Result<Self, CronError> {
        if text.len() > MAX_CRON_BYTES {
            return Err(CronError(format!("longer than {MAX_CRON_BYTES} bytes")));
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError(format!(
                    "expected 5 fields (minute hour day month weekday) or 6 (with seconds first), got {n}"
                )));
            }
        };
        let (seconds, _) = field(sec, "second", 0, 59, &[])?;
        let (minutes, _) = field(rest[0], "minute", 0, 59, &[])?;
        let (hours, _) = field(rest[1], "hour", 0, 23, &[])?;
        let (days, any_day) = field(rest[2], "day-of-month", 1, 31, &[])?;
        let (months, _) = field(rest[3], "month", 1, 12, &MONTHS)?;
        let (mut weekdays, any_weekday) = field(rest[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        let cron = Self {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays,
            any_day,
            any_weekday,
            source: fields.join(" "),
        };
        Ok(cron)
    }

    /// Whether the expression has a seconds field finer than "at second 0".
    pub fn has_seconds(&self) -> bool {
        self.seconds != 1
    }

    /// The first matching time strictly after `after` (Unix seconds, UTC),
    /// or `None` if there is none within five years.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let limit = after.saturating_add(HORIZON_SECS);
        let mut t = after.checked_add(1)?;
        while t <= limit {
            let days = t.div_euclid(86_400);
            let secs = t.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            if !bit(self.months, m) {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            if !self.day_matches(days, d) {
                t = (days + 1) * 86_400;
                continue;
            }
            let (h, min, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
            if !bit(self.hours, h) {
                t = days * 86_400 + (h + 1) * 3600;
                continue;
            }
            if !bit(self.minutes, min) {
                t = days * 86_400 + h * 3600 + (min + 1) * 60;
                continue;
            }
            if !bit(self.seconds, s) {
                t += 1;
                continue;
            }
            return Some(t);
        }
        None
    }

    fn day_matches(&self, days: i64, day_of_month: i64) -> bool {
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4).rem_euclid(7);
        let dom = bit(self.days, day_of_month);
        let dow = bit(self.weekdays, weekday);
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }
}

fn bit(mask: u64, n: i64) -> bool {
    (0..64).contains(&n) && mask & (1 << n) != 0
}

/// One field as a bit mask, and whether it was `*` (every value).
fn field(
    text: &str,
    name: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<(u64, bool), CronError> {
    let bad = |why: &str| CronError(format!("{name} field {text:?}: {why}"));
    let value = |s: &str| -> Result<u32, CronError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names start at 1, weekday names at 0.
            return u32::try_from(i)
                .map(|i| i + min)
                .map_err(|_| bad("bad name"));
        }
        let v: u32 = s
            .parse()
            .map_err(|_| bad(&format!("{s:?} is not a number")))?;
        if v < min || v > max {
            return Err(bad(&format!("{v} is outside {min}-{max}")));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    let mut star = false;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(bad("empty list item"));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| bad(&format!("step {s:?} is not a number")))?;
                if step == 0 || step > max {
                    return Err(bad("the step must be between 1 and the field's maximum"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            if step == 1 {
                star = true;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(bad(&format!("range {a}-{b} is backwards")));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `a/n` runs from `a` to the end of the field.
            (a, if part.contains('/') { max } else { a })
        };
        let mut v = lo;
        while v <= hi {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok((mask, star))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month, day)` of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unix seconds of a UTC date and time.
    fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s
    }

    fn next(expr: &str, after: i64) -> Option<i64> {
        Cron::parse(expr).unwrap().next_after(after)
    }

    #[test]
    fn classic_expressions() {
        let t = at(2026, 12, 2, 10, 23, 37);
        assert_eq!(next("* * * * *", t), Some(at(2026, 12, 2, 10, 24, 0)));
        assert_eq!(next("*/15 * * * *", t), Some(at(2026, 12, 2, 10, 30, 0)));
        assert_eq!(next("0 9 * * *", t), Some(at(2026, 12, 3, 9, 0, 0)));
        assert_eq!(next("0 0 1 * *", t), Some(at(2027, 1, 1, 0, 0, 0)));
        assert_eq!(next("30 4 * * mon", t), Some(at(2026, 12, 7, 4, 30, 0)));
        assert_eq!(next("0 0 * * 7", t), Some(at(2026, 12, 6, 0, 0, 0)));
        assert_eq!(next("0 0 * * 0", t), Some(at(2026, 12, 6, 0, 0, 0)));
        assert_eq!(next("0 12 * feb *", t), Some(at(2027, 2, 1, 12, 0, 0)));
        assert_eq!(next("5,10-12 * * * *", t), Some(at(2026, 12, 2, 11, 5, 0)));
        assert_eq!(next("0 0 29 2 *", t), Some(at(2028, 2, 29, 0, 0, 0)));
        // Day-of-month or day-of-week when both are restricted.
        assert_eq!(next("0 0 25 * fri", t), Some(at(2026, 12, 4, 0, 0, 0)));
        // From exactly a matching time: the next one, not the same.
        assert_eq!(
            next("0 9 * * *", at(2026, 12, 3, 9, 0, 0)),
            Some(at(2026, 12, 4, 9, 0, 0))
        );
        assert_eq!(next("0 0 30 2 *", t), None, "never matches");
    }

    #[test]
    fn seconds_field() {
        let t = at(2026, 12, 2, 10, 23, 37);
        assert_eq!(next("* * * * * *", t), Some(t + 1));
        assert_eq!(next("*/5 * * * * *", t), Some(at(2026, 12, 2, 10, 23, 40)));
        assert_eq!(next("0 * * * * *", t), Some(at(2026, 12, 2, 10, 24, 0)));
        assert!(Cron::parse("* * * * * *").unwrap().has_seconds());
        assert!(!Cron::parse("* * * * *").unwrap().has_seconds());
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "* * * * funday",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        /// The answer matches the expression, is later than the start, and
        /// no second in between matches (checked by brute force over a
        /// minute-granular expression's minutes).
        #[test]
        fn next_is_the_first_match(
            minute in prop_oneof![Just("*".to_owned()), (0u32..60).prop_map(|m| m.to_string()), (1u32..30).prop_map(|s| format!("*/{s}"))],
            hour in prop_oneof![Just("*".to_owned()), (0u32..24).prop_map(|h| h.to_string())],
            start in 0i64..4_000_000_000,
        ) {
            let expr = format!("{minute} {hour} * * *");
            let cron = Cron::parse(&expr).unwrap();
            let found = cron.next_after(start).unwrap();
            prop_assert!(found > start);
            prop_assert_eq!(found % 60, 0);
            let matches = |t: i64| {
                let secs = t.rem_euclid(86_400);
                t % 60 == 0 && bit(cron.minutes, secs % 3600 / 60) && bit(cron.hours, secs / 3600)
            };
            prop_assert!(matches(found));
            let mut t = (start / 60 + 1) * 60;
            while t < found {
                prop_assert!(!matches(t), "{} matches before {}", t, found);
                t += 60;
            }
        }

        #[test]
        fn civil_dates_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
