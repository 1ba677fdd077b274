//! Which files of a table hold rows of a chunk's range, as a Delta chunk
//! publish needs to know to replace *every* row of the range (whoever wrote
//! it: an earlier plan of this job, a compaction, another writer), and the
//! per-file statistics that let it tell without reading the files.
//!
//! A file lies outside the range, wholly inside it, or across its edge; a
//! file across the edge (or one whose statistics are unknown) is rewritten
//! without the range's rows. Rows whose range column is NULL belong to no
//! chunk, so they are never replaced.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use backfill_core::interval::RangeValue;
use backfill_core::plan::Chunk;
use chrono::DateTime;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::file::metadata::ParquetMetaData;

/// Where a file's rows lie against a chunk's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// No row of the file is in the range: it stays.
    Outside,
    /// Every row is in the range: the file goes.
    Inside,
    /// Some may be: the file is read and rewritten without them.
    Partial,
}

/// The range a chunk replaces: its rows of `column`.
pub struct ChunkRange<'a> {
    pub column: Option<&'a str>,
    pub chunk: &'a Chunk,
}

impl ChunkRange<'_> {
    /// A chunk over all rows (no `[range]`, or `chunk = "all"` without
    /// bounds) replaces every file.
    fn everything(&self) -> bool {
        self.column.is_none()
            || (self.chunk.lo.is_none() && self.chunk.hi.is_none() && self.chunk.value.is_none())
    }

    fn contains(&self, v: i64) -> bool {
        let raw = |b: Option<RangeValue>| b.map(|b| b.raw());
        raw(self.chunk.lo).is_none_or(|lo| v >= lo) && raw(self.chunk.hi).is_none_or(|hi| v < hi)
    }

    /// Where a file lies, from its partition values (when the range column
    /// is one) or its Delta statistics (JSON, as in the log's `add`).
    pub fn overlap(
        &self,
        partition_values: &HashMap<String, Option<String>>,
        stats: Option<&str>,
    ) -> Overlap {
        if self.everything() {
            return Overlap::Inside;
        }
        let Some(column) = self.column else {
            return Overlap::Inside;
        };
        if let Some(value) = partition_values.get(column) {
            return match value {
                // NULL is in no chunk.
                None => Overlap::Outside,
                Some(text) => match self.holds_text(text) {
                    Some(true) => Overlap::Inside,
                    Some(false) => Overlap::Outside,
                    None => Overlap::Partial,
                },
            };
        }
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return Overlap::Partial;
        };
        let min = &stats["minValues"][column];
        let max = &stats["maxValues"][column];
        let nulls = stats["nullCount"][column].as_u64();
        let rows = stats["numRecords"].as_u64();
        if rows == Some(0) {
            return Overlap::Outside;
        }
        if rows.is_some() && nulls == rows {
            return Overlap::Outside;
        }
        if let Some(value) = &self.chunk.value {
            let (Some(min), Some(max)) = (stat_text(min), stat_text(max)) else {
                return Overlap::Partial;
            };
            // Strings compare as their statistics do; other types (numbers
            // as text) cannot be ordered so, only matched.
            if min.as_str() == value && max.as_str() == value && nulls == Some(0) {
                return Overlap::Inside;
            }
            if min.as_str() == max.as_str() && min.as_str() != value {
                return Overlap::Outside;
            }
            if min_max_are_strings(&stats, column)
                && (value.as_str() < min.as_str() || value.as_str() > max.as_str())
            {
                return Overlap::Outside;
            }
            return Overlap::Partial;
        }
        let time = matches!(self.chunk.lo.or(self.chunk.hi), Some(RangeValue::Time(_)));
        let (Some((min, _)), Some((max, max_slack))) =
            (stat_value(min, time), stat_value(max, time))
        else {
            return Overlap::Partial;
        };
        // A truncated maximum can be below the true one by `max_slack`.
        let max_upper = max.saturating_add(max_slack);
        let below = self.chunk.lo.is_some_and(|lo| max_upper < lo.raw());
        let above = self.chunk.hi.is_some_and(|hi| min >= hi.raw());
        if below || above {
            return Overlap::Outside;
        }
        if nulls == Some(0) && self.contains(min) && self.contains(max_upper) {
            return Overlap::Inside;
        }
        Overlap::Partial
    }

    /// Whether a partition value (as written in a directory name or the log)
    /// lies in the chunk; `None` when it cannot be read as the range's kind.
    fn holds_text(&self, text: &str) -> Option<bool> {
        if let Some(value) = &self.chunk.value {
            return Some(text == value);
        }
        let v = match self.chunk.lo.or(self.chunk.hi)? {
            RangeValue::Int(_) => text.trim().parse::<i64>().ok()?,
            RangeValue::Time(_) => backfill_core::interval::parse_time(text.trim()).ok()?,
        };
        Some(self.contains(v))
    }

    /// Which rows of `batch` lie in the chunk (false for NULL, and for
    /// every row when the batch lacks the range column); `None` when every
    /// row does (a chunk over all rows).
    pub fn rows_in_range(&self, batch: &RecordBatch) -> Result<Option<BooleanArray>, String> {
        if self.everything() {
            return Ok(None);
        }
        let Some(column) = self.column else {
            return Ok(None);
        };
        let Some(array) = batch.column_by_name(column) else {
            return Ok(Some(BooleanArray::from(vec![false; batch.num_rows()])));
        };
        let in_range = if let Some(value) = &self.chunk.value {
            let text = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| e.to_string())?;
            let lit = arrow::array::StringArray::new_scalar(value.as_str());
            cmp::eq(&text, &lit).map_err(|e| e.to_string())?
        } else {
            let (values, kind) = comparable(array)?;
            let mut mask: Option<BooleanArray> = None;
            for (bound, lower) in [(self.chunk.lo, true), (self.chunk.hi, false)] {
                let Some(b) = bound else { continue };
                if b.kind() != kind {
                    return Err(format!(
                        "column \"{column}\" holds {kind} values, the chunk's range is {}",
                        b.kind()
                    ));
                }
                let lit = arrow::array::Int64Array::new_scalar(b.raw());
                let m = if lower {
                    cmp::gt_eq(&values, &lit)
                } else {
                    cmp::lt(&values, &lit)
                }
                .map_err(|e| e.to_string())?;
                mask = Some(match mask {
                    Some(prev) => arrow::compute::and(&prev, &m).map_err(|e| e.to_string())?,
                    None => m,
                });
            }
            match mask {
                Some(m) => m,
                None => return Ok(None),
            }
        };
        // NULL compares as NULL: not in the range.
        Ok(Some(match in_range.nulls() {
            Some(_) => BooleanArray::from_iter(in_range.iter().map(|v| Some(v == Some(true)))),
            None => in_range,
        }))
    }
}

fn min_max_are_strings(stats: &serde_json::Value, column: &str) -> bool {
    stats["minValues"][column].is_string() && stats["maxValues"][column].is_string()
}

fn stat_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A statistic as the range's raw value (microseconds for times), and how
/// far below the true value it may be: Delta truncates timestamp
/// statistics to milliseconds and dates to days.
fn stat_value(v: &serde_json::Value, time: bool) -> Option<(i64, i64)> {
    if !time {
        return v.as_i64().map(|i| (i, 0));
    }
    let text = v.as_str()?.trim();
    let micros = backfill_core::interval::parse_time(text).ok().or_else(|| {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros())
    })?;
    let slack = if text.len() <= 10 {
        86_400_000_000 - 1
    } else {
        match text.rsplit_once('.') {
            // Six fractional digits: exact.
            Some((_, frac)) if frac.trim_end_matches('Z').len() >= 6 => 0,
            _ => 999,
        }
    };
    Some((micros, slack))
}

/// The column as i64 (microseconds for times and dates) with its kind.
pub fn comparable(array: &ArrayRef) -> Result<(ArrayRef, backfill_core::ValueKind), String> {
    use backfill_core::ValueKind;
    let err = |e: arrow::error::ArrowError| e.to_string();
    match array.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let micros =
                arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))
                    .map_err(err)?;
            let raw = arrow::compute::cast(&micros, &DataType::Int64).map_err(err)?;
            Ok((raw, ValueKind::Time))
        }
        t if t.is_integer() => Ok((
            arrow::compute::cast(array, &DataType::Int64).map_err(err)?,
            ValueKind::Int,
        )),
        t => Err(format!("a range column of type {t} cannot be compared")),
    }
}

/// Delta statistics (`add.stats`) for one column of a Parquet file, from
/// its footer: the row count, and the column's minimum, maximum and NULL
/// count, as readers use them to skip files and a later chunk publish to
/// find the files of its range.
pub fn stats_json(metadata: &ParquetMetaData, column: Option<&str>) -> Option<String> {
    let mut stats = serde_json::json!({ "numRecords": metadata.file_metadata().num_rows() });
    let Some(column) = column else {
        return Some(stats.to_string());
    };
    let fm = metadata.file_metadata();
    let schema: Schema =
        parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata()).ok()?;
    let Ok(field) = schema.field_with_name(column) else {
        return Some(stats.to_string());
    };
    let converter = StatisticsConverter::try_new(column, &schema, fm.schema_descr()).ok()?;
    let groups = metadata.row_groups();
    let mins = converter.row_group_mins(groups.iter()).ok()?;
    let maxes = converter.row_group_maxes(groups.iter()).ok()?;
    let nulls = converter.row_group_null_counts(groups.iter()).ok()?;
    if mins.null_count() > 0 && mins.null_count() < mins.len() {
        // Some row group has no statistics: no bounds can be given.
        return Some(stats.to_string());
    }
    let null_count: u64 = nulls.iter().map(|n| n.unwrap_or(0)).sum();
    stats["nullCount"] = serde_json::json!({ column: null_count });
    if mins.null_count() == mins.len() {
        return Some(stats.to_string());
    }
    let lo = arrow::compute::min(&as_i64(&mins)?)?;
    let hi = arrow::compute::max(&as_i64(&maxes)?)?;
    let (min, max) = match field.data_type() {
        DataType::Timestamp(_, tz) => {
            // To the microsecond: the protocol writes milliseconds, but
            // readers parse more, and a maximum rounded up to the next
            // millisecond would reach into the next chunk's range.
            let fmt = |us: i64| {
                let t = DateTime::from_timestamp_micros(us)?;
                Some(match tz {
                    Some(_) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    // As delta-rs writes `timestamp_ntz` statistics.
                    None => t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
                })
            };
            (serde_json::json!(fmt(lo)?), serde_json::json!(fmt(hi)?))
        }
        DataType::Date32 | DataType::Date64 => {
            let fmt = |us: i64| {
                DateTime::from_timestamp_micros(us).map(|t| t.format("%Y-%m-%d").to_string())
            };
            (serde_json::json!(fmt(lo)?), serde_json::json!(fmt(hi)?))
        }
        t if t.is_integer() => (serde_json::json!(lo), serde_json::json!(hi)),
        _ => return Some(stats.to_string()),
    };
    stats["minValues"] = serde_json::json!({ column: min });
    stats["maxValues"] = serde_json::json!({ column: max });
    Some(stats.to_string())
}

/// Per-row-group statistics as i64 (microseconds for times and dates).
fn as_i64(array: &ArrayRef) -> Option<arrow::array::Int64Array> {
    let (raw, _) = comparable(array).ok()?;
    raw.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> RangeValue {
        RangeValue::Time(backfill_core::interval::parse_time(s).unwrap())
    }

    fn week() -> Chunk {
        Chunk {
            index: 0,
            id: "x".into(),
            lo: Some(t("2023-01-08")),
            hi: Some(t("2023-01-15")),
            value: None,
            bucket: None,
        }
    }

    fn stats(min: &str, max: &str, nulls: u64) -> String {
        serde_json::json!({
            "numRecords": 10,
            "minValues": {"c": min},
            "maxValues": {"c": max},
            "nullCount": {"c": nulls},
        })
        .to_string()
    }

    #[test]
    fn files_are_placed_by_their_statistics() {
        let chunk = week();
        let r = ChunkRange {
            column: Some("c"),
            chunk: &chunk,
        };
        let none = HashMap::new();
        let at = |min: &str, max: &str, nulls: u64| r.overlap(&none, Some(&stats(min, max, nulls)));
        assert_eq!(
            at("2023-01-08T00:00:00.000", "2023-01-14T23:59:59.000", 0),
            Overlap::Inside
        );
        // A maximum truncated to the millisecond may be up to 999 µs short.
        assert_eq!(
            at("2023-01-08T00:00:00.000", "2023-01-14T23:59:59.999", 0),
            Overlap::Inside
        );
        assert_eq!(
            at("2023-01-08T00:00:00.000", "2023-01-15T00:00:00.000", 0),
            Overlap::Partial
        );
        assert_eq!(
            at(
                "2023-01-08 00:00:00.000000",
                "2023-01-14 23:59:59.999999",
                0
            ),
            Overlap::Inside
        );
        assert_eq!(
            at("2023-01-08T00:00:00.000Z", "2023-01-10T00:00:00.000Z", 1),
            Overlap::Partial
        );
        assert_eq!(
            at("2023-01-01T00:00:00.000", "2023-01-07T23:59:59.000", 0),
            Overlap::Outside
        );
        assert_eq!(
            at("2023-01-15T00:00:00.000", "2023-02-01T00:00:00.000", 0),
            Overlap::Outside
        );
        assert_eq!(
            at("2023-01-01T00:00:00.000", "2023-02-01T00:00:00.000", 0),
            Overlap::Partial
        );
        assert_eq!(r.overlap(&none, None), Overlap::Partial);
        // A partition column decides by its value.
        let part = |v: Option<&str>| {
            let mut m = HashMap::new();
            m.insert("c".to_string(), v.map(str::to_string));
            r.overlap(&m, None)
        };
        assert_eq!(part(Some("2023-01-09")), Overlap::Inside);
        assert_eq!(part(Some("2023-01-15")), Overlap::Outside);
        assert_eq!(part(None), Overlap::Outside);
        // A chunk over all rows takes every file.
        let all = Chunk {
            lo: None,
            hi: None,
            ..week()
        };
        let r = ChunkRange {
            column: Some("c"),
            chunk: &all,
        };
        assert_eq!(r.overlap(&none, None), Overlap::Inside);
    }

    #[test]
    fn rows_in_range_skip_nulls() {
        use arrow::array::TimestampMicrosecondArray;
        let chunk = week();
        let r = ChunkRange {
            column: Some("c"),
            chunk: &chunk,
        };
        let col = TimestampMicrosecondArray::from(vec![
            Some(t("2023-01-07").raw()),
            Some(t("2023-01-08").raw()),
            None,
            Some(t("2023-01-14").raw()),
            Some(t("2023-01-15").raw()),
        ]);
        let batch =
            RecordBatch::try_from_iter([("c", std::sync::Arc::new(col) as ArrayRef)]).unwrap();
        let mask = r.rows_in_range(&batch).unwrap().unwrap();
        let got: Vec<Option<bool>> = mask.iter().collect();
        assert_eq!(
            got,
            [
                Some(false),
                Some(true),
                Some(false),
                Some(true),
                Some(false)
            ]
        );
    }
}
