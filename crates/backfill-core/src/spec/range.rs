//! `[range]`: the column, its bounds and the chunk size, or partitions.

use super::*;
use crate::interval::MICROS_PER_DAY;

/// `[range] partitions`: one chunk per value of the range column.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitions {
    /// The Hive partitions (`column=value/` directories) of a file source.
    Source,
    /// These values.
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RangeSpec {
    pub column: String,
    pub column_loc: Loc,
    /// `None` only with `chunk = "all"` and no bounds: the whole source.
    pub start: Option<RangeValue>,
    pub end: Option<RangeValue>,
    pub chunk: ChunkSize,
    pub ordered: bool,
    /// `end = "now"`: an incremental job, planned up to the present.
    pub end_now: bool,
    /// Incremental runs also re-run this many of the last committed chunks,
    /// for rows that arrived late.
    pub lookback: u32,
    /// Plan on past `end` (or from `start`, without one) along the same
    /// chunk grid, up to the chunk holding this instant: set from the clock
    /// for `end = "now"` and by `run --incremental`.
    pub extend_to: Option<RangeValue>,
    /// One chunk per partition value instead of ranges.
    pub partitions: Option<Partitions>,
    /// `timezone` and `week_start`: the calendar chunks follow.
    pub calendar: Calendar,
    /// `naive_timestamps`: `Some(true)` for "local" (a column without a
    /// zone holds wall-clock times in `timezone`, so chunks are cut on that
    /// wall clock), `Some(false)` for "utc", `None` when not said.
    pub naive_local: Option<bool>,
    /// `buckets`: each chunk split by a hash of a column.
    pub buckets: Option<Buckets>,
    /// `start = "earliest"` (a Kafka source: each partition's first
    /// offset still in the log when the plan was made).
    pub start_earliest: bool,
    /// `end = "latest"` (a Kafka source: each partition's end offset when
    /// the plan was made).
    pub end_latest: bool,
}

/// `[range] buckets = N` (with `bucket_column`, or on `column` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buckets {
    pub count: u32,
    pub column: String,
    pub loc: Loc,
}

impl RangeSpec {
    pub fn kind(&self) -> Option<ValueKind> {
        self.start.map(|s| s.kind()).or(self.chunk.kind())
    }

    /// The calendar chunk bounds are computed on. A column of wall-clock
    /// times is cut at wall-clock midnights, which as values of that column
    /// are plain UTC-style arithmetic: the zone only says what "now" is.
    pub fn plan_calendar(&self) -> Calendar {
        if self.naive_local == Some(true) {
            Calendar {
                zone: None,
                ..self.calendar
            }
        } else {
            self.calendar
        }
    }

    /// An instant (the clock's "now") as a value of the range: itself, or
    /// the zone's wall clock for naive times declared local.
    pub fn instant_as_value(&self, micros: i64) -> i64 {
        match self.naive_local {
            Some(true) => self.calendar.wall_value(micros).unwrap_or(micros),
            _ => micros,
        }
    }
}

/// A range bound: an integer, a TOML date/datetime, or a string holding either.
pub(super) fn range_value(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    name: &str,
    calendar: &Calendar,
) -> Option<Located<RangeValue>> {
    let key = t.key(name);
    let raw = t.raw(name)?;
    let span = raw.span();
    let parsed = match raw.get_ref() {
        DeValue::Integer(_) => match reader::int_value(raw.get_ref()) {
            Some(Ok(i)) => Ok(RangeValue::Int(i)),
            _ => Err("does not fit in a 64-bit integer".to_string()),
        },
        DeValue::Datetime(dt) => calendar.parse_time(&dt.to_string()).map(RangeValue::Time),
        DeValue::String(_) => {
            let s = reader::string_of(d, env, &key, raw)?;
            match RangeValue::parse(&s.value) {
                Ok(RangeValue::Time(_)) => calendar.parse_time(&s.value).map(RangeValue::Time),
                other => other,
            }
            .map_err(|e| e.replace(&s.value, &s.shown))
        }
        other => Err(format!(
            "expected a date, timestamp or integer, found {}",
            other.type_str()
        )),
    };
    match parsed {
        Ok(v) => Some(Located {
            value: v,
            shown: v.to_string(),
            span,
        }),
        Err(e) => {
            d.push(span, &key, e);
            None
        }
    }
}

pub(super) fn read_range(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    text: &str,
) -> Option<RangeSpec> {
    let column = t.string(d, env, "column");
    let zone = t.string(d, env, "timezone");
    let week_start = t.string(d, env, "week_start");
    let naive = t.string(d, env, "naive_timestamps");
    let zone_span = t.raw_span("timezone");
    let week_span = t.raw_span("week_start");
    let mut calendar = Calendar::default();
    if let Some(z) = &zone {
        match parse_zone(&z.value) {
            Ok(tz) => calendar.zone = Some(tz),
            Err(e) => d.push(
                z.span.clone(),
                "range.timezone",
                e.replace(&z.value, &z.shown),
            ),
        }
    }
    if let Some(w) = &week_start {
        match parse_weekday(&w.value) {
            Ok(day) => calendar.week_start = Some(day),
            Err(e) => d.push(
                w.span.clone(),
                "range.week_start",
                e.replace(&w.value, &w.shown),
            ),
        }
    }
    let naive_local = match &naive {
        None => None,
        Some(n) => match n.value.trim().to_ascii_lowercase().as_str() {
            "utc" => Some(false),
            "local" if zone.is_some() => Some(true),
            "local" => {
                d.push(
                    n.span.clone(),
                    "range.naive_timestamps",
                    "\"local\" needs range.timezone (the zone the times are in)",
                );
                None
            }
            _ => {
                d.push(
                    n.span.clone(),
                    "range.naive_timestamps",
                    format!("\"{}\" is not utc or local", n.shown),
                );
                None
            }
        },
    };
    // Bounds are values of the column: instants, or for naive times
    // declared local, wall-clock readings written as they are.
    let values = match naive_local {
        Some(true) => Calendar {
            zone: None,
            ..calendar
        },
        _ => calendar,
    };
    // Kafka offsets: the topic's own ends, resolved per partition at plan
    // time.
    let word = |t: &mut TableReader, key: &str, w: &str| {
        t.raw(key)
            .and_then(|v| v.get_ref().as_str())
            .is_some_and(|s| s.trim().eq_ignore_ascii_case(w))
    };
    let start_earliest = word(t, "start", "earliest");
    let end_latest = word(t, "end", "latest");
    let start = if start_earliest {
        None
    } else {
        range_value(d, env, t, "start", &values)
    };
    let end_now = t
        .raw("end")
        .and_then(|v| {
            v.get_ref()
                .as_str()
                .map(|s| s.trim().eq_ignore_ascii_case("now"))
        })
        .unwrap_or(false);
    let end = if end_now || end_latest {
        None
    } else {
        range_value(d, env, t, "end", &values)
    };
    let chunk_raw = t.raw("chunk");
    let buckets_raw = t.raw("buckets");
    let bucket_column = t.string(d, env, "bucket_column");
    let ordered = t.bool(d, "ordered");
    let lookback_raw = t.raw("lookback");
    let partitions_raw = t.raw("partitions");
    t.finish(
        d,
        &[
            "column",
            "start",
            "end",
            "chunk",
            "ordered",
            "lookback",
            "partitions",
            "timezone",
            "week_start",
            "naive_timestamps",
            "buckets",
            "bucket_column",
        ],
    );
    let partitions = match partitions_raw {
        None => None,
        Some(raw) => {
            let parsed = match raw.get_ref() {
                DeValue::String(s) if s.trim().eq_ignore_ascii_case("source") => {
                    Ok(Partitions::Source)
                }
                DeValue::Array(items) => {
                    let values: Vec<String> = items
                        .iter()
                        .filter_map(|v| v.get_ref().as_str().map(str::to_string))
                        .collect();
                    if values.len() != items.len() || values.is_empty() {
                        Err("must be \"source\" or a non-empty list of strings".to_string())
                    } else if values.iter().any(|v| v.is_empty()) {
                        Err("partition values must not be empty".to_string())
                    } else {
                        Ok(Partitions::List(values))
                    }
                }
                _ => Err(
                    "must be \"source\" or a list of strings, e.g. [\"eu\", \"us\"]".to_string(),
                ),
            };
            match parsed {
                Ok(p) => {
                    if start.is_some() || end.is_some() || end_now || chunk_raw.is_some() {
                        d.push(
                            raw.span(),
                            "range.partitions",
                            "plans one chunk per value: leave out start, end and chunk",
                        );
                    }
                    Some(p)
                }
                Err(e) => {
                    d.push(raw.span(), "range.partitions", e);
                    None
                }
            }
        }
    };
    let lookback = match lookback_raw {
        None => 1,
        Some(raw) => match reader::int_value(raw.get_ref()) {
            Some(Ok(n)) if (0..=10_000).contains(&n) => n as u32,
            _ => {
                d.push(
                    raw.span(),
                    "range.lookback",
                    "must be a number of chunks from 0 to 10000",
                );
                1
            }
        },
    };
    let now = if end_now {
        match env("BACKFILL_NOW") {
            Some(v) => match calendar.parse_time(&v) {
                Ok(us) => Some(us),
                Err(e) => {
                    d.push(
                        t.raw_span("end").unwrap_or_else(|| t.span()),
                        "range.end",
                        format!("\"now\" from BACKFILL_NOW: {e}"),
                    );
                    None
                }
            },
            None => Some(chrono::Utc::now().timestamp_micros()),
        }
        // Wall-clock values: "now" is the zone's wall clock, as a value.
        .map(|us| match naive_local {
            Some(true) => calendar.wall_value(us).unwrap_or(us),
            _ => us,
        })
    } else {
        None
    };

    let chunk = match chunk_raw {
        None if partitions.is_some() || buckets_raw.is_some() => Some((ChunkSize::All, 0..0)),
        None => {
            if !t.has("chunk") {
                d.push(
                    t.span(),
                    "range.chunk",
                    "missing (e.g. \"7d\", \"1 month\", 100000 or \"all\")",
                );
            }
            None
        }
        Some(raw) => {
            let parsed = match raw.get_ref() {
                DeValue::Integer(_) => match reader::int_value(raw.get_ref()) {
                    Some(Ok(n)) if n > 0 => Ok(ChunkSize::Count(n)),
                    Some(Ok(n)) => Err(format!("chunk size must be positive, got {n}")),
                    _ => Err("does not fit in a 64-bit integer".to_string()),
                },
                DeValue::String(_) => match reader::string_of(d, env, "range.chunk", raw) {
                    Some(s) => {
                        ChunkSize::parse(&s.value).map_err(|e| e.replace(&s.value, &s.shown))
                    }
                    None => return None,
                },
                other => Err(format!(
                    "expected a duration string or an integer, found {}",
                    other.type_str()
                )),
            };
            match parsed {
                Ok(c) => Some((c, raw.span())),
                Err(e) => {
                    d.push(raw.span(), "range.chunk", e);
                    None
                }
            }
        }
    };
    let column = match column {
        Some(c) if c.value.trim().is_empty() => {
            d.push(c.span, "range.column", "must not be empty");
            None
        }
        Some(c) => Some(c),
        None => {
            if !t.has("column") {
                d.push(
                    t.span(),
                    "range.column",
                    "missing (the timestamp, date or integer column to split on)",
                );
            }
            None
        }
    };
    if let (Some(s), Some(e)) = (&start, &end) {
        if s.value.kind() != e.value.kind() {
            d.push(
                e.span.clone(),
                "range.end",
                format!(
                    "is {} but range.start is {}",
                    e.value.kind(),
                    s.value.kind()
                ),
            );
        } else if e.value <= s.value {
            d.push(
                e.span.clone(),
                "range.end",
                format!(
                    "{} must be after range.start ({}); the range is [start, end)",
                    e.shown, s.shown
                ),
            );
        }
    }
    let (chunk, chunk_span) = chunk?;
    let all = chunk == ChunkSize::All;
    if !all && partitions.is_none() {
        if start.is_none() && !t.has("start") {
            d.push(t.span(), "range.start", "missing (inclusive lower bound)");
        }
        if end.is_none() && !end_now && !t.has("end") {
            d.push(t.span(), "range.end", "missing (exclusive upper bound)");
        }
    }
    if start.is_some() != end.is_some() && all {
        d.push(
            t.span(),
            "range",
            "give both start and end, or neither with chunk = \"all\"",
        );
    }
    if let (Some(s), Some(ck)) = (&start, chunk.kind())
        && ck != s.value.kind()
    {
        let msg = match ck {
            ValueKind::Int => {
                "an integer chunk needs integer bounds, but the range is in time; use a duration such as \"7d\""
            }
            ValueKind::Time => {
                "a duration chunk needs date or timestamp bounds, but the range is integers; use an integer chunk size"
            }
        };
        d.push(chunk_span.clone(), "range.chunk", msg);
    }
    if end_now {
        if all {
            d.push(
                chunk_span.clone(),
                "range.chunk",
                "end = \"now\" needs a chunk width: a single chunk would change every run",
            );
        } else if start
            .as_ref()
            .is_some_and(|s| s.value.kind() != ValueKind::Time)
        {
            d.push(
                t.span(),
                "range.end",
                "\"now\" is a time; the range is integers",
            );
        }
    }
    match chunk {
        _ if calendar == Calendar::default() => {}
        ChunkSize::Count(_) => d.push(
            zone_span.clone().or(week_span.clone()).unwrap_or_else(|| t.span()),
            "range.timezone",
            "applies to time ranges; this range is integers",
        ),
        ChunkSize::Fixed(w) if calendar.zone.is_some() && w % MICROS_PER_DAY != 0 => d.push(
            zone_span.clone().unwrap_or_else(|| t.span()),
            "range.timezone",
            format!(
                "applies to day, week, month and year chunks; {chunk} chunks are the same instants in every zone (leave timezone out)"
            ),
        ),
        _ => {}
    }
    if calendar.week_start.is_some()
        && !matches!(chunk, ChunkSize::Fixed(w) if w % (7 * MICROS_PER_DAY) == 0)
    {
        d.push(
            week_span.unwrap_or_else(|| t.span()),
            "range.week_start",
            format!("applies to weekly chunks (\"1w\", \"7d\", \"2w\"), not {chunk}"),
        );
    }
    let buckets = match buckets_raw {
        None => {
            if let Some(c) = &bucket_column {
                d.push(
                    c.span.clone(),
                    "range.bucket_column",
                    "only applies with range.buckets",
                );
            }
            None
        }
        Some(raw) => {
            let count = match reader::int_value(raw.get_ref()) {
                Some(Ok(n)) if (1..=10_000).contains(&n) => Some(n as u32),
                _ => {
                    d.push(
                        raw.span(),
                        "range.buckets",
                        "must be a number of hash buckets from 1 to 10000",
                    );
                    None
                }
            };
            if partitions.is_some() {
                d.push(
                    raw.span(),
                    "range.buckets",
                    "does not combine with range.partitions",
                );
            }
            let windowed = start.is_some() || end.is_some() || end_now;
            let hashed = match (&bucket_column, &column) {
                (Some(b), _) if b.value.trim().is_empty() => {
                    d.push(b.span.clone(), "range.bucket_column", "must not be empty");
                    None
                }
                (Some(b), _) => Some((b.value.clone(), loc(text, &b.span))),
                (None, Some(c)) if !windowed => Some((c.value.clone(), loc(text, &c.span))),
                (None, _) => {
                    d.push(
                        raw.span(),
                        "range.bucket_column",
                        "missing: the column to hash (range.column is the time range's)",
                    );
                    None
                }
            };
            match (count, hashed) {
                (Some(count), Some((column, loc))) => Some(Buckets { count, column, loc }),
                _ => None,
            }
        }
    };
    Some(RangeSpec {
        column_loc: loc(text, &column.as_ref()?.span),
        column: column?.value,
        start: start.map(|s| s.value),
        end: end.map(|e| e.value),
        chunk,
        ordered: ordered.unwrap_or(false),
        end_now,
        lookback,
        extend_to: now.map(RangeValue::Time),
        partitions,
        calendar,
        naive_local,
        buckets,
        start_earliest,
        end_latest,
    })
}
