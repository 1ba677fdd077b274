//! `[range]`: the column, its bounds and the chunk size, or partitions.

use super::*;

/// A range bound: an integer, a TOML date/datetime, or a string holding either.
pub(super) fn range_value(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    name: &str,
) -> Option<Located<RangeValue>> {
    let key = t.key(name);
    let raw = t.raw(name)?;
    let span = raw.span();
    let parsed = match raw.get_ref() {
        DeValue::Integer(_) => match reader::int_value(raw.get_ref()) {
            Some(Ok(i)) => Ok(RangeValue::Int(i)),
            _ => Err("does not fit in a 64-bit integer".to_string()),
        },
        DeValue::Datetime(dt) => parse_time(&dt.to_string()).map(RangeValue::Time),
        DeValue::String(_) => {
            let s = reader::string_of(d, env, &key, raw)?;
            RangeValue::parse(&s.value).map_err(|e| e.replace(&s.value, &s.shown))
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
    let start = range_value(d, env, t, "start");
    let end_now = t
        .raw("end")
        .and_then(|v| {
            v.get_ref()
                .as_str()
                .map(|s| s.trim().eq_ignore_ascii_case("now"))
        })
        .unwrap_or(false);
    let end = if end_now {
        None
    } else {
        range_value(d, env, t, "end")
    };
    let chunk_raw = t.raw("chunk");
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
            Some(v) => match parse_time(&v) {
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
    } else {
        None
    };

    let chunk = match chunk_raw {
        None if partitions.is_some() => Some((ChunkSize::All, 0..0)),
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
    })
}
