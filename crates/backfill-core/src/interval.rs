//! Range values, chunk sizes and their text forms. Times are microseconds
//! since the Unix epoch in UTC: the resolution of the demo data and of most
//! warehouses, and wide enough for years 1677..2262 and beyond.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, TimeZone, Utc, Weekday};
pub use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// One end of a range: a UTC instant or an integer sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum RangeValue {
    /// Microseconds since 1970-01-01T00:00:00Z.
    Time(i64),
    Int(i64),
}

impl RangeValue {
    pub fn kind(&self) -> ValueKind {
        match self {
            RangeValue::Time(_) => ValueKind::Time,
            RangeValue::Int(_) => ValueKind::Int,
        }
    }

    pub fn raw(&self) -> i64 {
        match self {
            RangeValue::Time(v) | RangeValue::Int(v) => *v,
        }
    }

    /// Parses what a user writes on the command line or in a job file: an
    /// integer, a date (`2023-01-01`), or an RFC 3339 / ISO 8601 timestamp.
    pub fn parse(text: &str) -> Result<RangeValue, String> {
        let t = text.trim();
        if let Ok(i) = t.replace('_', "").parse::<i64>() {
            return Ok(RangeValue::Int(i));
        }
        parse_time(t).map(RangeValue::Time)
    }
}

impl fmt::Display for RangeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeValue::Int(i) => write!(f, "{i}"),
            RangeValue::Time(t) => f.write_str(&format_time(*t)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Time,
    Int,
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueKind::Time => "a date or timestamp",
            ValueKind::Int => "an integer",
        })
    }
}

/// Parses a date or timestamp into UTC microseconds. Naive timestamps are UTC.
pub fn parse_time(t: &str) -> Result<i64, String> {
    let t = t.trim();
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(naive_micros(d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc).timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(naive_micros(dt));
        }
    }
    if let Ok(dt) = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(dt.with_timezone(&Utc).timestamp_micros());
    }
    Err(format!(
        "\"{t}\" is not a date or timestamp (try \"2023-01-01\" or \"2023-01-01T00:00:00Z\")"
    ))
}

fn naive_micros(dt: NaiveDateTime) -> i64 {
    Utc.from_utc_datetime(&dt).timestamp_micros()
}

/// `2023-01-01` for midnights, `2023-01-01T06:00:00Z` otherwise.
pub fn format_time(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(dt) if micros.rem_euclid(MICROS_PER_DAY) == 0 => dt.format("%Y-%m-%d").to_string(),
        Some(dt) if micros.rem_euclid(MICROS_PER_SECOND) == 0 => {
            dt.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        }
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{micros}µs"),
    }
}

/// Whose calendar day, week, month and year chunks follow: UTC's, or a
/// zone's (`[range] timezone`), where a day is 23 or 25 hours long on a DST
/// change and starts at local midnight. Bounds stay UTC instants; only the
/// arithmetic between them is local.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calendar {
    pub zone: Option<Tz>,
    /// Weekly chunks start on this weekday (local midnight) instead of on
    /// `start`; the first chunk runs from `start` to the first such day.
    pub week_start: Option<Weekday>,
}

impl Calendar {
    /// The zone's wall-clock time at `micros` (UTC's without a zone).
    pub fn local(&self, micros: i64) -> Option<NaiveDateTime> {
        let utc = DateTime::<Utc>::from_timestamp_micros(micros)?;
        Some(match self.zone {
            Some(z) => utc.with_timezone(&z).naive_local(),
            None => utc.naive_utc(),
        })
    }

    /// The zone's wall-clock reading at `micros`, as a naive value (the
    /// microseconds it would be in UTC): what a column of local readings
    /// holds at that instant.
    pub fn wall_value(&self, micros: i64) -> Option<i64> {
        Calendar::default().instant(self.local(micros)?)
    }

    /// The instant of a wall-clock time. In a DST fold the earlier instant;
    /// in a gap (a time the clocks skip) the first instant after it, so a
    /// skipped local midnight starts the day when the clocks resume.
    pub fn instant(&self, local: NaiveDateTime) -> Option<i64> {
        let Some(z) = self.zone else {
            return Some(naive_micros(local));
        };
        let mut t = local;
        // Gaps are at most a few hours (zones have skipped 1 h, 30 min, and
        // whole days only at date-line moves, which a 48 h walk covers).
        for _ in 0..(48 * 4) {
            if let Some(dt) = z.from_local_datetime(&t).earliest() {
                // Back to where the gap ends: the wall clock jumped past it.
                return Some(dt.with_timezone(&Utc).timestamp_micros());
            }
            t = t.checked_add_signed(chrono::TimeDelta::minutes(15))?;
        }
        None
    }

    /// A date or timestamp as written in a job file or on the command line:
    /// a date is the zone's midnight, a timestamp without an offset the
    /// zone's wall-clock time, one with an offset that instant.
    pub fn parse_time(&self, t: &str) -> Result<i64, String> {
        let Some(_) = self.zone else {
            return parse_time(t);
        };
        let t = t.trim();
        if let Some(local) = parse_naive(t) {
            return self
                .instant(local)
                .ok_or_else(|| format!("\"{t}\" is out of range"));
        }
        parse_time(t)
    }

    /// The upper bound of chunk `k` (from 1) of a range starting at
    /// `start`: day and month arithmetic on the zone's wall clock, weeks
    /// from the week start on or before `start` when one is set.
    pub fn step(&self, size: ChunkSize, start: RangeValue, k: u64) -> Option<RangeValue> {
        let (RangeValue::Time(s), true) = (start, self.zone.is_some() || self.week_start.is_some())
        else {
            return size.step(start, k);
        };
        let k = u32::try_from(k).ok()?;
        let mut origin = self.local(s)?;
        if let (Some(first), ChunkSize::Fixed(w)) = (self.week_start, size)
            && w % (7 * MICROS_PER_DAY) == 0
        {
            let back =
                (7 + origin.weekday().num_days_from_monday() - first.num_days_from_monday()) % 7;
            origin = origin
                .date()
                .checked_sub_days(Days::new(u64::from(back)))?
                .and_hms_opt(0, 0, 0)?;
        }
        let local = match size {
            ChunkSize::Fixed(w) if w % MICROS_PER_DAY == 0 => {
                let days = u64::try_from(w / MICROS_PER_DAY)
                    .ok()?
                    .checked_mul(u64::from(k))?;
                origin.checked_add_days(Days::new(days))?
            }
            ChunkSize::Months(m) => origin.checked_add_months(Months::new(m.checked_mul(k)?))?,
            _ => return size.step(start, u64::from(k)),
        };
        self.instant(local).map(RangeValue::Time)
    }

    /// A bound for people: the zone's wall-clock time with its offset
    /// (`2023-03-12T00:00:00-05:00`), or [`format_time`] without a zone.
    pub fn format(&self, micros: i64) -> String {
        match (self.zone, DateTime::<Utc>::from_timestamp_micros(micros)) {
            (Some(z), Some(utc)) => utc
                .with_timezone(&z)
                .format("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            _ => format_time(micros),
        }
    }
}

/// A date or a timestamp without an offset.
fn parse_naive(t: &str) -> Option<NaiveDateTime> {
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0);
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
}

/// An IANA zone name (`America/New_York`, `Asia/Kolkata`, `UTC`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!(
            "\"{name}\" is not an IANA time zone (e.g. \"America/New_York\", \"Europe/Berlin\", \"UTC\")"
        )
    })
}

/// A weekday name, for `[range] week_start`.
pub fn parse_weekday(name: &str) -> Result<Weekday, String> {
    name.trim()
        .parse::<Weekday>()
        .map_err(|_| format!("\"{name}\" is not a weekday (e.g. \"monday\")"))
}

/// The width of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkSize {
    /// A fixed duration in microseconds (30m, 12h, 7d, 2w).
    Fixed(i64),
    /// Calendar months (1 month, 3 months, 1 year = 12).
    Months(u32),
    /// A count of sequence numbers.
    Count(i64),
    /// The whole range as one chunk.
    All,
}

impl ChunkSize {
    /// Parses `"7d"`, `"12h"`, `"30m"`, `"1 month"`, `"1 year"`, `"2w"`, `"all"`
    /// or an integer.
    pub fn parse(text: &str) -> Result<ChunkSize, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(ChunkSize::All);
        }
        if let Ok(n) = t.replace('_', "").parse::<i64>() {
            if n <= 0 {
                return Err(format!("chunk size must be positive, got {n}"));
            }
            return Ok(ChunkSize::Count(n));
        }
        let hint = "(try \"7d\", \"12h\", \"1 month\", an integer, or \"all\")";
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let n: i64 = num
            .parse()
            .map_err(|_| format!("\"{t}\" is not a duration {hint}"))?;
        if n == 0 {
            return Err(format!("\"{t}\" is a zero duration; a chunk must be wider"));
        }
        let fixed = |unit_micros: i64| {
            n.checked_mul(unit_micros)
                .map(ChunkSize::Fixed)
                .ok_or_else(|| format!("\"{t}\" is too long"))
        };
        match unit.as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => fixed(MICROS_PER_SECOND),
            "m" | "min" | "mins" | "minute" | "minutes" => fixed(60 * MICROS_PER_SECOND),
            "h" | "hr" | "hrs" | "hour" | "hours" => fixed(3600 * MICROS_PER_SECOND),
            "d" | "day" | "days" => fixed(MICROS_PER_DAY),
            "w" | "week" | "weeks" => fixed(7 * MICROS_PER_DAY),
            "mo" | "mon" | "month" | "months" => u32::try_from(n)
                .map(ChunkSize::Months)
                .map_err(|_| format!("\"{t}\" is too long")),
            "y" | "yr" | "year" | "years" => u32::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(12))
                .map(ChunkSize::Months)
                .ok_or_else(|| format!("\"{t}\" is too long")),
            _ => Err(format!("\"{t}\" is not a duration {hint}")),
        }
    }

    pub fn kind(&self) -> Option<ValueKind> {
        match self {
            ChunkSize::Fixed(_) | ChunkSize::Months(_) => Some(ValueKind::Time),
            ChunkSize::Count(_) => Some(ValueKind::Int),
            ChunkSize::All => None,
        }
    }

    /// The upper bound of the chunk that starts at `lo`, before clipping.
    /// Months are added from the range start so day-of-month never drifts.
    pub fn step(&self, start: RangeValue, k: u64) -> Option<RangeValue> {
        let k = i64::try_from(k).ok()?;
        match (self, start) {
            (ChunkSize::Fixed(w), RangeValue::Time(s)) => {
                w.checked_mul(k)?.checked_add(s).map(RangeValue::Time)
            }
            (ChunkSize::Count(w), RangeValue::Int(s)) => {
                w.checked_mul(k)?.checked_add(s).map(RangeValue::Int)
            }
            (ChunkSize::Months(m), RangeValue::Time(s)) => {
                let months = u32::try_from(i64::from(*m).checked_mul(k)?).ok()?;
                let start = DateTime::<Utc>::from_timestamp_micros(s)?;
                start
                    .checked_add_months(Months::new(months))
                    .map(|d| RangeValue::Time(d.timestamp_micros()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkSize::All => f.write_str("all"),
            ChunkSize::Count(n) => write!(f, "{n}"),
            ChunkSize::Months(m) if m % 12 == 0 => {
                write!(f, "{} year{}", m / 12, if *m == 12 { "" } else { "s" })
            }
            ChunkSize::Months(m) => write!(f, "{m} month{}", if *m == 1 { "" } else { "s" }),
            ChunkSize::Fixed(us) => f.write_str(&format_duration_micros(*us)),
        }
    }
}

fn format_duration_micros(us: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (7 * MICROS_PER_DAY, "w"),
        (MICROS_PER_DAY, "d"),
        (3600 * MICROS_PER_SECOND, "h"),
        (60 * MICROS_PER_SECOND, "m"),
        (MICROS_PER_SECOND, "s"),
    ];
    for (size, name) in UNITS {
        if us % size == 0 {
            return format!("{}{name}", us / size);
        }
    }
    format!("{us}us")
}

/// Parses a plain duration such as `"1s"`, `"500ms"`, `"2m"` (retry backoff).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("\"{t}\" is not a duration (try \"500ms\", \"1s\", \"2m\")"));
    }
    match ChunkSize::parse(t) {
        Ok(ChunkSize::Fixed(us)) => Ok(Duration::from_micros(us.unsigned_abs())),
        _ => Err(format!(
            "\"{t}\" is not a duration (try \"500ms\", \"1s\", \"2m\")"
        )),
    }
}

/// A size in bytes: a whole number with an optional unit, binary (`KiB`,
/// `MiB`, `GiB`, `TiB`, or `K`, `M`, `G`, `T`) or decimal (`kB`, `MB`, `GB`,
/// `TB`), or `B`. The error says what was expected, not what was written
/// (the text may come from the environment).
pub fn parse_size(text: &str) -> Result<u64, String> {
    const EXPECTED: &str = "is not a size (try \"512MiB\", \"2GiB\", \"4GB\")";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| EXPECTED.to_string())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(EXPECTED.to_string()),
    };
    n.checked_mul(scale).ok_or_else(|| EXPECTED.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_size("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("3G"), Ok(3 << 30));
        for bad in ["", "MiB", "1.5GiB", "-1GiB", "2 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn parses_chunk_sizes() {
        assert_eq!(
            ChunkSize::parse("7d"),
            Ok(ChunkSize::Fixed(7 * MICROS_PER_DAY))
        );
        assert_eq!(
            ChunkSize::parse("30m"),
            Ok(ChunkSize::Fixed(1800 * MICROS_PER_SECOND))
        );
        assert_eq!(
            ChunkSize::parse("12h"),
            Ok(ChunkSize::Fixed(12 * 3600 * MICROS_PER_SECOND))
        );
        assert_eq!(ChunkSize::parse("1 month"), Ok(ChunkSize::Months(1)));
        assert_eq!(ChunkSize::parse("1 year"), Ok(ChunkSize::Months(12)));
        assert_eq!(ChunkSize::parse("100000"), Ok(ChunkSize::Count(100_000)));
        assert_eq!(ChunkSize::parse("ALL"), Ok(ChunkSize::All));
        assert!(ChunkSize::parse("0d").unwrap_err().contains("zero"));
        assert!(
            ChunkSize::parse("7 dayz")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(ChunkSize::parse("-3").is_err());
        assert!(ChunkSize::parse("").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for text in [
            "7d", "2w", "12h", "30m", "1 month", "3 months", "1 year", "all", "500",
        ] {
            let parsed = ChunkSize::parse(text).unwrap();
            assert_eq!(
                ChunkSize::parse(&parsed.to_string()).unwrap(),
                parsed,
                "{text}"
            );
        }
    }

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1970-01-02"), Ok(MICROS_PER_DAY));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_time("1970-01-01 00:00:01"), Ok(MICROS_PER_SECOND));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_time(MICROS_PER_DAY), "1970-01-02");
        assert_eq!(format_time(MICROS_PER_SECOND), "1970-01-01T00:00:01Z");
    }

    #[test]
    fn local_days_are_23_or_25_hours_around_dst() {
        let ny = Calendar {
            zone: Some(parse_zone("America/New_York").unwrap()),
            week_start: None,
        };
        let start = RangeValue::Time(ny.parse_time("2023-03-11").unwrap());
        let day = ChunkSize::Fixed(MICROS_PER_DAY);
        let hours = |a: RangeValue, b: RangeValue| (b.raw() - a.raw()) / (3600 * MICROS_PER_SECOND);
        let d1 = ny.step(day, start, 1).unwrap();
        let d2 = ny.step(day, start, 2).unwrap();
        assert_eq!(hours(start, d1), 24);
        assert_eq!(hours(d1, d2), 23, "the spring-forward day");
        assert_eq!(ny.format(d1.raw()), "2023-03-12T00:00:00-05:00");
        assert_eq!(ny.format(d2.raw()), "2023-03-13T00:00:00-04:00");
        let nov = RangeValue::Time(ny.parse_time("2023-11-05").unwrap());
        assert_eq!(hours(nov, ny.step(day, nov, 1).unwrap()), 25);
        // Months and ISO weeks on the local calendar.
        let jan = RangeValue::Time(ny.parse_time("2023-01-01").unwrap());
        assert_eq!(
            ny.format(ny.step(ChunkSize::Months(3), jan, 1).unwrap().raw()),
            "2023-04-01T00:00:00-04:00"
        );
        let weeks = Calendar {
            week_start: Some(Weekday::Mon),
            ..ny
        };
        let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
        // 2023-01-01 is a Sunday: the first chunk is that day alone.
        assert_eq!(
            weeks.format(weeks.step(week, jan, 1).unwrap().raw()),
            "2023-01-02T00:00:00-05:00"
        );
        assert_eq!(
            weeks.format(weeks.step(week, jan, 2).unwrap().raw()),
            "2023-01-09T00:00:00-05:00"
        );
        // A half-hour zone; an instant with an offset is taken as given.
        let kolkata = Calendar {
            zone: Some(parse_zone("Asia/Kolkata").unwrap()),
            week_start: None,
        };
        assert_eq!(
            format_time(kolkata.parse_time("2023-01-02").unwrap()),
            "2023-01-01T18:30:00Z"
        );
        assert_eq!(
            ny.parse_time("2023-01-01T00:00:00Z"),
            parse_time("2023-01-01")
        );
        // A skipped local midnight (Santiago, 2023-09-03) starts at 01:00.
        let santiago = Calendar {
            zone: Some(parse_zone("America/Santiago").unwrap()),
            week_start: None,
        };
        assert_eq!(
            santiago.format(santiago.parse_time("2023-09-03").unwrap()),
            "2023-09-03T01:00:00-03:00"
        );
        assert!(parse_zone("Mars/Olympus").is_err());
        assert_eq!(parse_weekday("monday"), Ok(Weekday::Mon));
    }

    #[test]
    fn month_steps_do_not_drift() {
        let start = RangeValue::Time(parse_time("2024-01-31").unwrap());
        let m = ChunkSize::Months(1);
        let feb = m.step(start, 1).unwrap();
        let mar = m.step(start, 2).unwrap();
        assert_eq!(feb.to_string(), "2024-02-29");
        assert_eq!(mar.to_string(), "2024-03-31");
    }
}
