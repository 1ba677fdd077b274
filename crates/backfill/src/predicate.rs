//! A chunk as a condition on the range column, in each dialect that needs
//! one: a DataFusion expression (the local engine, pushed by the file and
//! PostgreSQL sources into their scans), Spark SQL, and PostgreSQL SQL (the
//! PostgreSQL target's slice of a chunk).
//!
//! Chunk bounds are instants in microseconds or integers. A column coarser
//! than a bound (seconds, milliseconds, dates) gets the bound rounded up
//! ([`bound`]): a value `v` is in `[lo, hi)` exactly when `v >= ceil(lo)`
//! and `v < ceil(hi)`, so no row lands in two chunks or in none. DataFusion
//! and Spark compare in the column's own type, which keeps statistics
//! pruning; PostgreSQL compares the column with the exact bound as a
//! `timestamp`, which the server does exactly for any column type.

use arrow::datatypes::{DataType, TimeUnit};
use backfill_core::interval::{MICROS_PER_DAY, RangeValue};
use backfill_core::plan::Chunk;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, lit};

/// The range column's Arrow type decides how chunk bounds become literals.
#[derive(Debug, Clone)]
pub struct RangeColumn {
    pub name: String,
    pub data_type: DataType,
    /// `[range] buckets`: the column hashed into buckets.
    pub bucket: Option<crate::bucket::BucketColumn>,
    /// Kafka offsets: chunk bounds are positions (`partition *
    /// POSITION_BASE + offset`) over this partition column and the range
    /// column ([`backfill_core::plan::POSITION_BASE`]).
    pub position: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PredicateError {
    #[error("range bound {bound} does not fit column {column} of type {data_type}")]
    DoesNotFit {
        bound: RangeValue,
        column: String,
        data_type: DataType,
    },
    #[error("partition value {value:?} is not a {data_type}: {source}")]
    Value {
        value: String,
        data_type: DataType,
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

impl From<PredicateError> for datafusion::error::DataFusionError {
    fn from(e: PredicateError) -> Self {
        datafusion::error::DataFusionError::Plan(e.to_string())
    }
}

/// `a / b` rounded toward positive infinity.
pub(crate) fn ceil_div(a: i64, b: i64) -> i64 {
    let q = a.div_euclid(b);
    if a.rem_euclid(b) == 0 { q } else { q + 1 }
}

/// A bound as a value of the column's own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Int(i64),
    /// In the column's unit.
    Timestamp(TimeUnit, i64),
    /// Days since 1970.
    Date32(i32),
    /// Milliseconds since 1970.
    Date64(i64),
}

impl Bound {
    /// The bound in microseconds, for a time bound; what a value of the
    /// column's type converted to microseconds compares with.
    // Only the Spark dialect (and the tests) write bounds as microseconds.
    #[cfg_attr(not(feature = "spark"), allow(dead_code))]
    pub fn micros(self) -> Option<i64> {
        match self {
            Bound::Int(_) => None,
            Bound::Timestamp(TimeUnit::Second, v) => v.checked_mul(1_000_000),
            Bound::Timestamp(TimeUnit::Millisecond, v) => v.checked_mul(1_000),
            Bound::Timestamp(TimeUnit::Microsecond, v) => Some(v),
            Bound::Timestamp(TimeUnit::Nanosecond, v) => Some(v.div_euclid(1_000)),
            Bound::Date32(d) => i64::from(d).checked_mul(MICROS_PER_DAY),
            Bound::Date64(ms) => ceil_div(ms, 86_400_000).checked_mul(MICROS_PER_DAY),
        }
    }
}

/// `v` as a value of `col`'s type, rounded up for coarser types.
pub fn bound(col: &RangeColumn, v: RangeValue) -> Result<Bound, PredicateError> {
    let does_not_fit = || PredicateError::DoesNotFit {
        bound: v,
        column: col.name.clone(),
        data_type: col.data_type.clone(),
    };
    Ok(match (v, &col.data_type) {
        (RangeValue::Time(us), DataType::Timestamp(unit, _)) => Bound::Timestamp(
            *unit,
            match unit {
                TimeUnit::Second => ceil_div(us, 1_000_000),
                TimeUnit::Millisecond => ceil_div(us, 1_000),
                TimeUnit::Microsecond => us,
                TimeUnit::Nanosecond => us.checked_mul(1_000).ok_or_else(does_not_fit)?,
            },
        ),
        (RangeValue::Time(us), DataType::Date32) => {
            Bound::Date32(i32::try_from(ceil_div(us, MICROS_PER_DAY)).map_err(|_| does_not_fit())?)
        }
        (RangeValue::Time(us), DataType::Date64) => Bound::Date64(ceil_div(us, 1_000)),
        (RangeValue::Int(i), dt) if dt.is_integer() => Bound::Int(i),
        _ => return Err(does_not_fit()),
    })
}

/// `column >= lo AND column < hi` (or `column = value` for a partition
/// chunk) as a DataFusion expression; `None` for a chunk without bounds.
/// An integer upper bound past the column type's maximum means "no upper
/// bound".
pub fn datafusion(col: &RangeColumn, chunk: &Chunk) -> Result<Option<Expr>, PredicateError> {
    if let Some(partition) = &col.position {
        return Ok(position_datafusion(&col.name, partition, chunk));
    }
    let range = range_datafusion(col, chunk)?;
    let bucket = match (&col.bucket, chunk.bucket) {
        (Some(column), Some(b)) => Some(crate::bucket::datafusion(column, b)),
        _ => None,
    };
    Ok(match (range, bucket) {
        (Some(r), Some(b)) => Some(r.and(b)),
        (r, b) => r.or(b),
    })
}

/// A Kafka chunk: `_partition = p AND _offset >= lo AND _offset < hi`
/// when both bounds are in one partition (every planned chunk), which the
/// source reads as exactly that window; else the positions compared.
fn position_datafusion(offset: &str, partition: &str, chunk: &Chunk) -> Option<Expr> {
    use backfill_core::plan::{POSITION_BASE, position_parts};
    let offset_col = || Expr::Column(Column::new_unqualified(offset.to_string()));
    let partition_col = || Expr::Column(Column::new_unqualified(partition.to_string()));
    let (lo, hi) = (chunk.lo.map(|v| v.raw()), chunk.hi.map(|v| v.raw()));
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let (p, l) = position_parts(lo);
        let h = hi - i64::from(p) * POSITION_BASE;
        if (l..=POSITION_BASE).contains(&h) {
            return Some(
                partition_col()
                    .eq(lit(p))
                    .and(offset_col().gt_eq(lit(l)))
                    .and(offset_col().lt(lit(h))),
            );
        }
    }
    let position = || {
        datafusion::logical_expr::cast(partition_col(), DataType::Int64) * lit(POSITION_BASE)
            + offset_col()
    };
    match (lo, hi) {
        (Some(lo), Some(hi)) => Some(position().gt_eq(lit(lo)).and(position().lt(lit(hi)))),
        (Some(lo), None) => Some(position().gt_eq(lit(lo))),
        (None, Some(hi)) => Some(position().lt(lit(hi))),
        (None, None) => None,
    }
}

fn range_datafusion(col: &RangeColumn, chunk: &Chunk) -> Result<Option<Expr>, PredicateError> {
    let column = || Expr::Column(Column::new_unqualified(col.name.clone()));
    if let Some(v) = &chunk.value {
        // A Hive directory value is text; a listed one is cast like SQL
        // would.
        let value = ScalarValue::Utf8(Some(v.clone()))
            .cast_to(&col.data_type)
            .map_err(|source| PredicateError::Value {
                value: v.clone(),
                data_type: col.data_type.clone(),
                source,
            })?;
        return Ok(Some(column().eq(lit(value))));
    }
    let literal = |v: RangeValue| -> Result<ScalarValue, PredicateError> {
        let tz = match &col.data_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        Ok(match bound(col, v)? {
            Bound::Int(i) => ScalarValue::Int64(Some(i))
                .cast_to(&col.data_type)
                .map_err(|_| PredicateError::DoesNotFit {
                    bound: v,
                    column: col.name.clone(),
                    data_type: col.data_type.clone(),
                })?,
            Bound::Timestamp(TimeUnit::Second, t) => ScalarValue::TimestampSecond(Some(t), tz),
            Bound::Timestamp(TimeUnit::Millisecond, t) => {
                ScalarValue::TimestampMillisecond(Some(t), tz)
            }
            Bound::Timestamp(TimeUnit::Microsecond, t) => {
                ScalarValue::TimestampMicrosecond(Some(t), tz)
            }
            Bound::Timestamp(TimeUnit::Nanosecond, t) => {
                ScalarValue::TimestampNanosecond(Some(t), tz)
            }
            Bound::Date32(d) => ScalarValue::Date32(Some(d)),
            Bound::Date64(ms) => ScalarValue::Date64(Some(ms)),
        })
    };
    let mut pred: Option<Expr> = None;
    if let Some(lo) = chunk.lo {
        pred = Some(column().gt_eq(lit(literal(lo)?)));
    }
    if let Some(hi) = chunk.hi {
        match literal(hi) {
            Ok(v) => {
                let e = column().lt(lit(v));
                pred = Some(match pred {
                    Some(p) => p.and(e),
                    None => e,
                });
            }
            Err(_) if matches!(hi, RangeValue::Int(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pred)
}

/// The chunk's condition on the Spark SQL expression `expr` (the range
/// column, or a copy of it) of `col`'s type; `None` for a chunk without
/// bounds. Spark reads every timestamp at microsecond precision, so a
/// bound rounded up to the column's unit is compared as microseconds.
#[cfg(feature = "spark")]
pub fn spark(
    col: &RangeColumn,
    chunk: &Chunk,
    expr: &str,
) -> Result<Option<String>, PredicateError> {
    if let Some(v) = &chunk.value {
        let ty = crate::engine::spark::sql::spark_type(&col.data_type)
            .unwrap_or_else(|| "STRING".to_string());
        return Ok(Some(format!(
            "{expr} = CAST({} AS {ty})",
            crate::engine::spark::sql::string_lit(v)
        )));
    }
    let literal = |v: RangeValue| -> Result<String, PredicateError> {
        let b = bound(col, v)?;
        if let Bound::Int(i) = b {
            return Ok(format!("CAST({i} AS BIGINT)"));
        }
        let time = b
            .micros()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string())
            .ok_or_else(|| PredicateError::DoesNotFit {
                bound: v,
                column: col.name.clone(),
                data_type: col.data_type.clone(),
            })?;
        Ok(match &col.data_type {
            DataType::Timestamp(_, None) => format!("TIMESTAMP_NTZ '{time}'"),
            DataType::Timestamp(_, Some(_)) => format!("TIMESTAMP '{time}+00:00'"),
            _ => format!("DATE '{}'", &time[..10]),
        })
    };
    let mut parts = Vec::new();
    if let Some(lo) = chunk.lo {
        parts.push(format!("{expr} >= {}", literal(lo)?));
    }
    if let Some(hi) = chunk.hi {
        parts.push(format!("{expr} < {}", literal(hi)?));
    }
    Ok((!parts.is_empty()).then(|| parts.join(" AND ")))
}

/// The chunk's condition on PostgreSQL column `column` (already quoted):
/// the exact bounds as `timestamp` literals, which the server compares
/// exactly with a column of any time type; `true` for a chunk without
/// bounds.
/// `bucket_column` (quoted) is the column a bucket chunk hashes.
pub fn postgres(column: &str, chunk: &Chunk, bucket_column: Option<&str>) -> String {
    let range = range_postgres(column, chunk);
    match (chunk.bucket, bucket_column) {
        (Some(b), Some(c)) => format!(
            "{range} AND {} = {}",
            crate::bucket::postgres_expr(c, b.of),
            b.index
        ),
        _ => range,
    }
}

fn range_postgres(column: &str, chunk: &Chunk) -> String {
    if let Some(v) = &chunk.value {
        // The server casts the literal to the column's type.
        return format!("{column} = {}", crate::pg::quote_literal(v));
    }
    let literal = |v: RangeValue| match v {
        RangeValue::Int(i) => i.to_string(),
        RangeValue::Time(us) => match chrono::DateTime::from_timestamp_micros(us) {
            Some(t) => format!(
                "'{}'::timestamp",
                t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f")
            ),
            None => "NULL".into(),
        },
    };
    let mut parts = Vec::new();
    if let Some(lo) = chunk.lo {
        parts.push(format!("{column} >= {}", literal(lo)));
    }
    if let Some(hi) = chunk.hi {
        parts.push(format!("{column} < {}", literal(hi)));
    }
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" AND ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(lo: Option<RangeValue>, hi: Option<RangeValue>) -> Chunk {
        Chunk {
            index: 0,
            id: "c".into(),
            lo,
            hi,
            value: None,
            bucket: None,
        }
    }

    fn col(data_type: DataType) -> RangeColumn {
        RangeColumn {
            name: "t".into(),
            data_type,
            bucket: None,
            position: None,
        }
    }

    /// Every value of a coarser type lands in exactly one of two adjacent
    /// chunks, whatever the bound between them: the rounding rule, checked
    /// by brute force against the bounds in microseconds.
    #[test]
    fn a_coarser_value_is_in_exactly_one_of_two_adjacent_chunks() {
        let cases = [
            (DataType::Timestamp(TimeUnit::Second, None), 1_000_000i64),
            (DataType::Timestamp(TimeUnit::Millisecond, None), 1_000),
            (DataType::Date32, MICROS_PER_DAY),
        ];
        for (dt, unit) in cases {
            let c = col(dt.clone());
            for mid in [-3 * unit - 1, -unit, -1, 0, 1, unit / 2, unit, 5 * unit + 7] {
                let b = bound(&c, RangeValue::Time(mid)).expect("bound");
                for v in -6i64..=6 {
                    // Value `v` of the column's unit, in microseconds.
                    let us = v * unit;
                    let coarse = match b {
                        Bound::Timestamp(_, t) => t,
                        Bound::Date32(d) => i64::from(d),
                        other => panic!("{other:?}"),
                    };
                    assert_eq!(
                        v >= coarse,
                        us >= mid,
                        "{dt}: value {v} against bound {mid} us"
                    );
                }
                assert_eq!(b.micros().map(|m| m >= mid), Some(true), "{dt} {mid}");
            }
        }
    }

    #[test]
    fn each_dialect_says_the_same_bounds() {
        let c = chunk(
            Some(RangeValue::Time(1_672_531_200_000_000)),
            Some(RangeValue::Time(1_672_617_600_000_001)),
        );
        let df = datafusion(&col(DataType::Date32), &c)
            .expect("predicate")
            .expect("bounded");
        assert_eq!(
            df.to_string(),
            "t >= Date32(\"2023-01-01\") AND t < Date32(\"2023-01-03\")"
        );
        assert_eq!(
            postgres("\"t\"", &c, None),
            "\"t\" >= '2023-01-01 00:00:00.000000'::timestamp AND \"t\" < '2023-01-02 00:00:00.000001'::timestamp"
        );
        // Past the column type's maximum, an integer upper bound is none.
        let ints = chunk(Some(RangeValue::Int(5)), Some(RangeValue::Int(1 << 40)));
        let df = datafusion(&col(DataType::Int32), &ints)
            .expect("predicate")
            .expect("bounded");
        assert_eq!(df.to_string(), "t >= Int32(5)");
        assert!(
            datafusion(&col(DataType::Int32), &chunk(None, None))
                .expect("predicate")
                .is_none()
        );
        assert!(bound(&col(DataType::Utf8), RangeValue::Int(1)).is_err());
    }
}
