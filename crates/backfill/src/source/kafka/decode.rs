//! Kafka events as Arrow rows: the value decoded (JSON, text or bytes)
//! beside the event's partition, offset, timestamp and key.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Array, new_null_array,
};
use arrow::compute::take;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use backfill_core::spec::{
    ColumnType, KAFKA_DECODE_ERROR, KAFKA_KEY, KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP,
    KafkaValue,
};
use datafusion::error::Result as DfResult;
use rskafka::record::RecordAndOffset;

use super::{KafkaError, Shared};
use crate::source::SourceError;

/// The longest an error message quotes of an event that did not decode.
const PREVIEW: usize = 120;

/// The JSON fields' columns: inferred from `sample`, with the declared
/// types of `[source.columns]` over them (a declared field need not be in
/// the sample). Fields named like the Kafka columns are left out.
/// Each top-level field's type by what most of the sample's values are,
/// so a few bad events (`"amount": "lots"`) do not turn a column of
/// numbers into text; they fail to decode instead. Nested values take
/// arrow-json's inference over the values of the winning kind.
fn infer(sample: &[serde_json::Value]) -> Result<Schema, arrow::error::ArrowError> {
    use serde_json::Value;
    // Per field, in first-seen order: counts of int, float, bool, string,
    // and the nested values.
    let mut order: Vec<String> = Vec::new();
    let mut tallies: std::collections::HashMap<String, ([usize; 4], Vec<&Value>)> =
        std::collections::HashMap::new();
    for object in sample.iter().filter_map(Value::as_object) {
        for (k, v) in object {
            let entry = tallies.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                ([0; 4], Vec::new())
            });
            match v {
                Value::Number(n) if n.is_i64() || n.is_u64() => entry.0[0] += 1,
                Value::Number(_) => entry.0[1] += 1,
                Value::Bool(_) => entry.0[2] += 1,
                Value::String(_) => entry.0[3] += 1,
                Value::Object(_) | Value::Array(_) => entry.1.push(v),
                Value::Null => {}
            }
        }
    }
    let mut fields = Vec::with_capacity(order.len());
    for name in order {
        let (counts, nested) = &tallies[&name];
        let numbers = counts[0] + counts[1];
        let best = numbers.max(counts[2]).max(counts[3]);
        let data_type = if nested.len() > best {
            let objects: Vec<Value> = nested
                .iter()
                .map(|v| serde_json::json!({ "v": v }))
                .collect();
            let schema =
                arrow_json::reader::infer_json_schema_from_iterator(objects.iter().map(Ok))?;
            schema.field(0).data_type().clone()
        } else if best == 0 || counts[3] == best {
            DataType::Utf8
        } else if numbers == best {
            if counts[1] > 0 {
                DataType::Float64
            } else {
                DataType::Int64
            }
        } else {
            DataType::Boolean
        };
        fields.push(Field::new(name, data_type, true));
    }
    Ok(Schema::new(fields))
}

pub(super) fn json_schema(
    sample: &[serde_json::Value],
    declared: &[(String, ColumnType)],
    shown: &str,
) -> Result<SchemaRef, SourceError> {
    let inferred = infer(sample).map_err(|e| {
        KafkaError::Invalid(format!("{shown}: cannot infer the JSON fields' types: {e}"))
    })?;
    let reserved = [
        KAFKA_PARTITION,
        KAFKA_OFFSET,
        KAFKA_TIMESTAMP,
        KAFKA_KEY,
        KAFKA_DECODE_ERROR,
    ];
    let mut fields: Vec<Field> = inferred
        .fields()
        .iter()
        .filter(|f| !reserved.contains(&f.name().as_str()))
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for (name, ty) in declared {
        if reserved.contains(&name.as_str()) {
            return Err(KafkaError::Invalid(format!(
                "source.columns.{name}: {name} is a column every Kafka row has; it cannot be declared"
            ))
            .into());
        }
        let dt = crate::source::declared_type(*ty);
        match fields.iter_mut().find(|f| f.name() == name) {
            Some(f) => *f = Field::new(name, dt, true),
            None => fields.push(Field::new(name, dt, true)),
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Events as rows of the source's schema. A value that does not decode
/// leaves its columns NULL and says why in `_decode_error`.
pub(super) fn decode(shared: &Shared, rows: &[(i32, RecordAndOffset)]) -> DfResult<RecordBatch> {
    let n = rows.len();
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut timestamp = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut key = StringBuilder::with_capacity(n, n * 16);
    let mut errors: Vec<Option<String>> = vec![None; n];
    for (i, (p, r)) in rows.iter().enumerate() {
        partition.append_value(*p);
        offset.append_value(r.offset);
        timestamp.append_value(r.record.timestamp.timestamp_millis());
        match r.record.key.as_deref().map(std::str::from_utf8) {
            None => key.append_null(),
            Some(Ok(k)) => key.append_value(k),
            Some(Err(_)) => {
                key.append_null();
                errors[i] = Some("the key is not UTF-8 text".into());
            }
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(timestamp.finish()),
        Arc::new(key.finish()),
    ];
    let values = rows.iter().map(|(_, r)| r.record.value.as_deref());
    match shared.spec.value {
        KafkaValue::Bytes => {
            let mut b = BinaryBuilder::with_capacity(n, 0);
            for v in values {
                b.append_option(v);
            }
            columns.push(Arc::new(b.finish()));
        }
        KafkaValue::String => {
            let mut b = StringBuilder::with_capacity(n, 0);
            for (i, v) in values.enumerate() {
                match v.map(std::str::from_utf8) {
                    None => b.append_null(),
                    Some(Ok(s)) => b.append_value(s),
                    Some(Err(_)) => {
                        b.append_null();
                        errors[i].get_or_insert_with(|| {
                            format!(
                                "the value is not UTF-8 text: {}",
                                preview(v.unwrap_or_default())
                            )
                        });
                    }
                }
            }
            columns.push(Arc::new(b.finish()));
        }
        KafkaValue::Json => {
            columns.extend(decode_json(&shared.value_schema, rows, &mut errors)?);
        }
    }
    let mut e = StringBuilder::with_capacity(n, 0);
    for x in &errors {
        e.append_option(x.as_deref());
    }
    columns.push(Arc::new(e.finish()));
    Ok(RecordBatch::try_new(shared.schema.clone(), columns)?)
}

/// The JSON values' columns. Most batches are all good and are parsed
/// straight from their bytes in one pass; a batch with a bad event is
/// parsed again value by value, so one bad event costs only its row.
fn decode_json(
    schema: &SchemaRef,
    rows: &[(i32, RecordAndOffset)],
    errors: &mut [Option<String>],
) -> DfResult<Vec<ArrayRef>> {
    if let Some(columns) = decode_json_whole(schema, rows) {
        return Ok(columns);
    }
    decode_json_each(schema, rows, errors)
}

/// The batch's values through arrow-json's tape decoder, which parses
/// bytes into columns without building a JSON tree per event. `None`
/// unless every value is exactly one JSON object whose fields fit their
/// columns: then the event-by-event path says which events are bad and
/// why. A tombstone (no value) is decoded as `{}`, a row of NULLs.
fn decode_json_whole(schema: &SchemaRef, rows: &[(i32, RecordAndOffset)]) -> Option<Vec<ArrayRef>> {
    let mut d = arrow_json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        // Never stop early: one call per event must take the whole value.
        .with_batch_size(rows.len() + 1)
        .build_decoder()
        .ok()?;
    for (_, r) in rows {
        let v = r.record.value.as_deref().unwrap_or(b"{}");
        // Only an object is a row: the decoder would take `null` or `5`
        // as one too. Values concatenated must also not run into each
        // other, hence one whole value per call and a row count check.
        if v.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let before = d.len();
        let used = d.decode(v).ok()?;
        if used != v.len() || d.has_partial_record() || d.len() != before + 1 {
            return None;
        }
    }
    let batch = d.flush().ok()??;
    // A number too large for a double (`1e400`) is not JSON to serde, the
    // event-by-event path, but infinity to the tape decoder; JSON has no
    // other way to write infinity.
    if batch.num_rows() != rows.len() || batch.columns().iter().any(|c| has_infinity(&c.to_data()))
    {
        return None;
    }
    Some(batch.columns().to_vec())
}

fn has_infinity(data: &arrow::array::ArrayData) -> bool {
    let found = match data.data_type() {
        DataType::Float64 => arrow::array::Float64Array::from(data.clone())
            .iter()
            .any(|v| v.is_some_and(f64::is_infinite)),
        DataType::Float32 => arrow::array::Float32Array::from(data.clone())
            .iter()
            .any(|v| v.is_some_and(f32::is_infinite)),
        _ => false,
    };
    found || data.child_data().iter().any(has_infinity)
}

/// The JSON values' columns, each value parsed on its own; a type that
/// does not fit a column (text for a number) is found by decoding the
/// batch again event by event.
fn decode_json_each(
    schema: &SchemaRef,
    rows: &[(i32, RecordAndOffset)],
    errors: &mut [Option<String>],
) -> DfResult<Vec<ArrayRef>> {
    let n = rows.len();
    let mut objects: Vec<serde_json::Map<String, serde_json::Value>> = Vec::with_capacity(n);
    // Row of each decoded object; NULL where the value did not decode (or
    // is a tombstone, which keeps its columns NULL without an error).
    let mut at: Vec<Option<u32>> = vec![None; n];
    for (i, (_, r)) in rows.iter().enumerate() {
        let Some(v) = r.record.value.as_deref() else {
            continue;
        };
        match serde_json::from_slice::<serde_json::Value>(v) {
            Ok(serde_json::Value::Object(o)) => {
                at[i] = Some(objects.len() as u32);
                objects.push(o);
            }
            Ok(other) => {
                errors[i].get_or_insert_with(|| {
                    format!(
                        "the value is JSON but not an object: {}",
                        preview(other.to_string().as_bytes())
                    )
                });
            }
            Err(e) => {
                errors[i]
                    .get_or_insert_with(|| format!("the value is not JSON ({e}): {}", preview(v)));
            }
        }
    }
    let decoder = || {
        arrow_json::ReaderBuilder::new(schema.clone())
            .with_coerce_primitive(true)
            .build_decoder()
    };
    let decoded = {
        let mut d = decoder()?;
        d.serialize(&objects).and_then(|()| d.flush())
    };
    let batch = match decoded {
        Ok(b) => b,
        Err(_) => {
            // Find the events whose fields do not fit, and leave them out.
            let mut keep = Vec::with_capacity(objects.len());
            for (i, (_, r)) in rows.iter().enumerate() {
                let Some(j) = at[i] else { continue };
                let mut d = decoder()?;
                match d
                    .serialize(std::slice::from_ref(&objects[j as usize]))
                    .and_then(|()| d.flush())
                {
                    Ok(_) => keep.push(j as usize),
                    Err(e) => {
                        at[i] = None;
                        errors[i].get_or_insert_with(|| {
                            format!(
                                "a field does not fit its column ({e}): {}",
                                preview(r.record.value.as_deref().unwrap_or_default())
                            )
                        });
                    }
                }
            }
            let kept: Vec<&serde_json::Map<String, serde_json::Value>> =
                keep.iter().map(|&j| &objects[j]).collect();
            // Renumber the rows that stay.
            let mut k = 0u32;
            for slot in at.iter_mut() {
                if slot.is_some() {
                    *slot = Some(k);
                    k += 1;
                }
            }
            let mut d = decoder()?;
            d.serialize(&kept)?;
            d.flush()?
        }
    };
    let Some(batch) = batch else {
        return Ok(schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect());
    };
    let take_rows: UInt32Array = at.into_iter().collect();
    batch
        .columns()
        .iter()
        .map(|c| Ok(take(c.as_ref(), &take_rows, None)?))
        .collect()
}

fn preview(v: &[u8]) -> String {
    let text = String::from_utf8_lossy(&v[..v.len().min(PREVIEW)]);
    if v.len() > PREVIEW {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rskafka::record::Record;

    /// Values a topic can hold: good objects, and each way a value can be
    /// bad, including halves that are one good object when concatenated.
    const VALUES: &[Option<&[u8]>] = &[
        Some(br#"{"a": 1, "b": "x", "x": 2.5}"#),
        Some(br#"  {"b": "only b"}  "#),
        Some(br#"{"a": 7, "extra": [1, 2], "x": 3}"#),
        Some(br#"{"a": "lots"}"#),
        Some(br#"{"a": 1.5}"#),
        Some(br#"{"a": 1, "a": 2}"#),
        Some(br#"{"a":"#),
        Some(br#"1}"#),
        Some(br#"{"b": "y"} {"b": "z"}"#),
        Some(b"null"),
        Some(b"5"),
        Some(b"[1, 2]"),
        Some(b""),
        Some(b"   "),
        Some(b"{\"b\": \"\xff\"}"),
        Some(br#"{"b": "\ud800"}"#),
        Some(br#"{"x": 1e400}"#),
        Some(br#"{"x": -1e400, "a": 3}"#),
        Some(br#"{"a": 99999999999999999999}"#),
        Some(br#"{"a": -0, "x": 1e308}"#),
        None,
    ];

    fn rows(picks: &[usize]) -> Vec<(i32, RecordAndOffset)> {
        picks
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let record = Record {
                    key: None,
                    value: VALUES[k].map(<[u8]>::to_vec),
                    headers: Default::default(),
                    timestamp: chrono::DateTime::UNIX_EPOCH,
                };
                (
                    0,
                    RecordAndOffset {
                        record,
                        offset: i as i64,
                    },
                )
            })
            .collect()
    }

    proptest! {
        /// The one-pass path gives what the event-by-event path gives, or
        /// steps aside: no batch decodes differently for being whole.
        #[test]
        fn a_batch_decodes_the_same_whole_or_event_by_event(
            picks in proptest::collection::vec(0..VALUES.len(), 0..12),
        ) {
            let schema: SchemaRef = Arc::new(Schema::new(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", DataType::Utf8, true),
                Field::new("x", DataType::Float64, true),
            ]));
            let rows = rows(&picks);
            let mut errors_whole = vec![None; rows.len()];
            let mut errors_each = vec![None; rows.len()];
            let whole = decode_json(&schema, &rows, &mut errors_whole).unwrap();
            let each = decode_json_each(&schema, &rows, &mut errors_each).unwrap();
            prop_assert_eq!(&errors_whole, &errors_each);
            prop_assert_eq!(whole.len(), each.len());
            for (w, e) in whole.iter().zip(&each) {
                prop_assert_eq!(w.to_data(), e.to_data());
            }
        }
    }

    #[test]
    fn good_batches_take_the_one_pass_path_and_bad_ones_do_not() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let tombstone = VALUES.len() - 1;
        assert!(decode_json_whole(&schema, &rows(&[0, 1, 2, tombstone])).is_some());
        for bad in [3, 6, 8, 9, 12, 14] {
            assert!(
                decode_json_whole(&schema, &rows(&[0, bad])).is_none(),
                "{bad}"
            );
        }
    }
}
