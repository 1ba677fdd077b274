//! `plan` and `status` as Arrow tables, handed to Python through the Arrow
//! C stream interface (`__arrow_c_stream__`): `pyarrow.table(stream)`,
//! `polars.from_arrow` and pandas take the batches without a copy and
//! without JSON in between.

use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, RecordBatchIterator, RecordBatchReader,
    StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::ffi_stream::FFI_ArrowArrayStream;
use backfill::PlannedChunk;
use backfill::core::RangeValue;
use backfill::core::plan::position_parts;
use backfill::core::state::ChunkRecord;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::BackfillError;

const STREAM: &CStr = c"arrow_array_stream";

/// A table's batches, readable once through `__arrow_c_stream__`.
#[pyclass(module = "backfill._engine")]
pub(crate) struct ArrowStream {
    reader: Mutex<Option<Box<dyn RecordBatchReader + Send>>>,
}

#[pymethods]
impl ArrowStream {
    /// The Arrow PyCapsule protocol. `requested_schema` is not honoured
    /// (the protocol allows that): the table has one schema.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let reader = self
            .reader
            .lock()
            .map_err(|_| BackfillError::new_err("the table's stream is poisoned"))?
            .take()
            .ok_or_else(|| BackfillError::new_err("the table's stream was already read"))?;
        PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), STREAM)
    }
}

fn stream(batch: RecordBatch) -> ArrowStream {
    let schema = batch.schema();
    ArrowStream {
        reader: Mutex::new(Some(Box::new(RecordBatchIterator::new(
            vec![Ok(batch)],
            schema,
        )))),
    }
}

/// A chunk's lower and upper bound.
type Bounds = (Option<RangeValue>, Option<RangeValue>);

/// Bounds as typed columns: timestamps (µs, UTC) for a time range,
/// integers for a sequence; for a Kafka offset range, the partition and
/// the offsets apart.
fn bounds(
    fields: &mut Vec<Field>,
    columns: &mut Vec<ArrayRef>,
    bounds: &[Bounds],
    positions: bool,
) {
    let time = bounds
        .iter()
        .any(|(lo, hi)| matches!(lo.or(*hi), Some(RangeValue::Time(_))));
    let raw = |v: Option<RangeValue>| match v {
        Some(RangeValue::Time(t) | RangeValue::Int(t)) => Some(t),
        None => None,
    };
    if positions {
        let partition: Int64Array = bounds
            .iter()
            .map(|(lo, _)| raw(*lo).map(|p| i64::from(position_parts(p).0)))
            .collect();
        let lo: Int64Array = bounds
            .iter()
            .map(|(lo, _)| raw(*lo).map(|p| position_parts(p).1))
            .collect();
        // The upper bound of a partition's last window is its end, which
        // as a position reads as offset 0 of the next partition.
        let hi: Int64Array = bounds
            .iter()
            .map(|(lo, hi)| {
                let (p, _) = position_parts(raw(*lo)?);
                let h = raw(*hi)?;
                Some(h - i64::from(p) * backfill::core::plan::POSITION_BASE)
            })
            .collect();
        fields.push(Field::new("partition", DataType::Int64, true));
        fields.push(Field::new("from_offset", DataType::Int64, true));
        fields.push(Field::new("to_offset", DataType::Int64, true));
        columns.extend([Arc::new(partition) as ArrayRef, Arc::new(lo), Arc::new(hi)]);
    } else if time {
        let ts = |pick: fn(&Bounds) -> Option<RangeValue>| {
            Arc::new(
                bounds
                    .iter()
                    .map(|b| raw(pick(b)))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ) as ArrayRef
        };
        let t = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        fields.push(Field::new("from", t.clone(), true));
        fields.push(Field::new("to", t, true));
        columns.push(ts(|b| b.0));
        columns.push(ts(|b| b.1));
    } else {
        let ints = |pick: fn(&Bounds) -> Option<RangeValue>| {
            Arc::new(bounds.iter().map(|b| raw(pick(b))).collect::<Int64Array>()) as ArrayRef
        };
        fields.push(Field::new("from", DataType::Int64, true));
        fields.push(Field::new("to", DataType::Int64, true));
        columns.push(ints(|b| b.0));
        columns.push(ints(|b| b.1));
    }
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> PyResult<ArrowStream> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map(stream)
        .map_err(|e| BackfillError::new_err(format!("cannot build the table: {e}")))
}

/// One row per planned chunk: index, id, bounds, status, and the rows a
/// chunk will read where the source can tell.
pub(crate) fn plan(chunks: &[PlannedChunk], positions: bool) -> PyResult<ArrowStream> {
    let mut fields = vec![
        Field::new("index", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            chunks
                .iter()
                .map(|c| c.chunk.index as u64)
                .collect::<UInt64Array>(),
        ),
        Arc::new(
            chunks
                .iter()
                .map(|c| Some(c.chunk.id.as_str()))
                .collect::<StringArray>(),
        ),
    ];
    let b: Vec<_> = chunks.iter().map(|c| (c.chunk.lo, c.chunk.hi)).collect();
    bounds(&mut fields, &mut columns, &b, positions);
    fields.push(Field::new("status", DataType::Utf8, false));
    columns.push(Arc::new(
        chunks
            .iter()
            .map(|c| Some(c.status.to_string()))
            .collect::<StringArray>(),
    ));
    fields.push(Field::new("estimated_rows", DataType::UInt64, true));
    columns.push(Arc::new(
        chunks
            .iter()
            .map(|c| c.estimate.map(|e| e.rows))
            .collect::<UInt64Array>(),
    ));
    fields.push(Field::new("empty", DataType::Boolean, true));
    columns.push(Arc::new(
        chunks
            .iter()
            .map(|c| c.estimate.map(|e| e.empty))
            .collect::<BooleanArray>(),
    ));
    fields.push(Field::new("overwrites", DataType::UInt64, true));
    columns.push(Arc::new(
        chunks.iter().map(|c| c.overwrites).collect::<UInt64Array>(),
    ));
    batch(fields, columns)
}

/// One row per chunk in the state: its status, attempts, the counts of
/// its last commit and its last error.
pub(crate) fn status(records: &[ChunkRecord], positions: bool) -> PyResult<ArrowStream> {
    let mut fields = vec![
        Field::new("index", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(
            records
                .iter()
                .map(|r| r.index as u64)
                .collect::<UInt64Array>(),
        ),
        Arc::new(
            records
                .iter()
                .map(|r| Some(r.id.as_str()))
                .collect::<StringArray>(),
        ),
    ];
    let b: Vec<_> = records.iter().map(|r| (r.lo, r.hi)).collect();
    bounds(&mut fields, &mut columns, &b, positions);
    fields.push(Field::new("status", DataType::Utf8, false));
    columns.push(Arc::new(
        records
            .iter()
            .map(|r| Some(r.status.to_string()))
            .collect::<StringArray>(),
    ));
    fields.push(Field::new("attempts", DataType::UInt32, false));
    columns.push(Arc::new(
        records.iter().map(|r| r.attempts).collect::<UInt32Array>(),
    ));
    let metric = |name: &str, f: fn(&backfill::core::ChunkMetrics) -> u64| {
        (
            Field::new(name, DataType::UInt64, true),
            Arc::new(
                records
                    .iter()
                    .map(|r| r.metrics.as_ref().map(f))
                    .collect::<UInt64Array>(),
            ) as ArrayRef,
        )
    };
    for (field, column) in [
        metric("rows_read", |m| m.rows_read),
        metric("rows_written", |m| m.rows_written),
        metric("rows_quarantined", |m| m.rows_quarantined),
        metric("rows_dropped", |m| m.rows_dropped),
        metric("duplicates", |m| m.duplicates),
        metric("bytes_read", |m| m.bytes_read),
        metric("bytes_written", |m| m.bytes_written),
        metric("files", |m| m.files),
        metric("duration_ms", |m| m.duration_ms),
    ] {
        fields.push(field);
        columns.push(column);
    }
    let text = |name: &str, f: fn(&ChunkRecord) -> Option<String>| {
        (
            Field::new(name, DataType::Utf8, true),
            Arc::new(
                records
                    .iter()
                    .map(|r| f(r).map(|s| backfill::redact::redact(&s)))
                    .collect::<StringArray>(),
            ) as ArrayRef,
        )
    };
    for (field, column) in [
        text("last_error", |r| r.last_error.clone()),
        text("updated_at", |r| r.updated_at.clone()),
    ] {
        fields.push(field);
        columns.push(column);
    }
    batch(fields, columns)
}
