//! Schema evolution: the transformed rows' columns against the target's.
//!
//! Before a run writes anything, the target's current schema is compared
//! with the rows the transform produces. `[target] schema` decides what a
//! difference does: `strict` fails and shows it, `add_columns` adds new
//! columns (older rows read them as NULL), `merge` also widens compatible
//! types. A column that disappears or narrows is always an error naming it:
//! silently writing fewer or smaller columns would lose data.

use arrow::datatypes::{DataType, Schema};
use backfill_core::spec::SchemaMode;

/// How a column's type moves from the target to the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Same family, wider (int32 to int64, float32 to float64, decimal(10,2)
    /// to decimal(12,2)).
    Widen,
    /// Same family, narrower.
    Narrow,
    /// Different kinds of value.
    Incompatible,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaDiff {
    /// In the rows, not in the target.
    pub added: Vec<(String, DataType)>,
    /// In the target, not in the rows.
    pub removed: Vec<(String, DataType)>,
    /// `(column, target type, rows type, change)`.
    pub changed: Vec<(String, DataType, DataType, Change)>,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// One line per difference: `+ cents: Float64`, `- email: Utf8`,
    /// `~ qty: Int32 -> Int64 (wider)`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (n, t) in &self.added {
            out.push_str(&format!("  + {n}: {t}\n"));
        }
        for (n, t) in &self.removed {
            out.push_str(&format!("  - {n}: {t}\n"));
        }
        for (n, from, to, c) in &self.changed {
            let how = match c {
                Change::Widen => "wider",
                Change::Narrow => "narrower",
                Change::Incompatible => "incompatible",
            };
            out.push_str(&format!("  ~ {n}: {from} -> {to} ({how})\n"));
        }
        out
    }
}

/// Kinds of value, and a rank for widening inside one kind.
fn family(dt: &DataType) -> Option<(u8, i32, i32)> {
    use DataType::*;
    Some(match dt {
        Int8 => (0, 8, 0),
        Int16 => (0, 16, 0),
        Int32 => (0, 32, 0),
        Int64 => (0, 64, 0),
        // An unsigned type needs one more bit of a signed one.
        UInt8 => (0, 9, 0),
        UInt16 => (0, 17, 0),
        UInt32 => (0, 33, 0),
        UInt64 => (0, 65, 0),
        Float16 => (1, 16, 0),
        Float32 => (1, 32, 0),
        Float64 => (1, 64, 0),
        Decimal128(p, s) | Decimal256(p, s) => (2, i32::from(*p), i32::from(*s)),
        Utf8 | LargeUtf8 | Utf8View => (3, 0, 0),
        Binary | LargeBinary | BinaryView => (4, 0, 0),
        // Units and zones are the writer's representation of one instant.
        Timestamp(..) => (5, 0, 0),
        Date32 | Date64 => (6, 0, 0),
        Boolean => (7, 0, 0),
        Dictionary(_, v) => return family(v),
        _ => return None,
    })
}

/// `None` when a value of `rows` type fits the column as it is.
pub fn change(target: &DataType, rows: &DataType) -> Option<Change> {
    match (family(target), family(rows)) {
        (Some((ft, wt, st)), Some((fr, wr, sr))) if ft == fr => {
            if ft == 2 && st != sr {
                // Another scale changes what the stored digits mean.
                return Some(Change::Incompatible);
            }
            match wr.cmp(&wt) {
                std::cmp::Ordering::Equal => None,
                std::cmp::Ordering::Greater => Some(Change::Widen),
                std::cmp::Ordering::Less => Some(Change::Narrow),
            }
        }
        (Some(_), Some(_)) => Some(Change::Incompatible),
        _ if target.equals_datatype(rows) => None,
        _ => Some(Change::Incompatible),
    }
}

/// The target's columns against the rows', by name (case-sensitive);
/// columns in `ignore` (Hive partition directories) are skipped.
pub fn diff(target: &Schema, rows: &Schema, ignore: &[String]) -> SchemaDiff {
    let mut d = SchemaDiff::default();
    let skip = |n: &str| ignore.iter().any(|i| i == n);
    for f in rows.fields() {
        if skip(f.name()) {
            continue;
        }
        match target.field_with_name(f.name()) {
            Err(_) => d.added.push((f.name().clone(), f.data_type().clone())),
            Ok(t) => {
                if let Some(c) = change(t.data_type(), f.data_type()) {
                    d.changed.push((
                        f.name().clone(),
                        t.data_type().clone(),
                        f.data_type().clone(),
                        c,
                    ));
                }
            }
        }
    }
    for f in target.fields() {
        if !skip(f.name()) && rows.field_with_name(f.name()).is_err() {
            d.removed.push((f.name().clone(), f.data_type().clone()));
        }
    }
    d
}

/// What `mode` refuses in `d`, as a message for the job's error; `None`
/// when the run may go on (after the sink evolves the target).
pub fn refused(mode: SchemaMode, d: &SchemaDiff) -> Option<String> {
    if d.is_empty() {
        return None;
    }
    let mut why = Vec::new();
    if mode == SchemaMode::Strict {
        why.push("schema = \"strict\" accepts no change; set schema = \"add_columns\" or \"merge\" to evolve the target".to_string());
    }
    for (n, _) in &d.removed {
        why.push(format!(
            "column \"{n}\" is missing from the transformed rows; keep it in the SELECT (NULL AS {n} if it has no value)"
        ));
    }
    for (n, from, to, c) in &d.changed {
        match c {
            Change::Widen if mode == SchemaMode::Merge => {}
            Change::Widen => why.push(format!(
                "column \"{n}\" widens from {from} to {to}; schema = \"merge\" allows that"
            )),
            Change::Narrow => why.push(format!(
                "column \"{n}\" narrows from {from} to {to}; cast it back in the SELECT"
            )),
            Change::Incompatible => why.push(format!(
                "column \"{n}\" changes from {from} to {to}, which no mode converts; cast it in the SELECT"
            )),
        }
    }
    if why.is_empty() {
        return None;
    }
    Some(format!(
        "the transformed rows do not match the target's columns:\n{}{}",
        d.render(),
        why.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn schema(cols: &[(&str, DataType)]) -> Schema {
        Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn modes_accept_what_they_promise() {
        let target = schema(&[("id", DataType::Int32), ("name", DataType::Utf8)]);
        let added = schema(&[
            ("id", DataType::Int32),
            ("name", DataType::Utf8View),
            ("cents", DataType::Int64),
        ]);
        let d = diff(&target, &added, &[]);
        assert_eq!(d.added.len(), 1);
        assert!(d.changed.is_empty(), "string representations are one type");
        assert!(refused(SchemaMode::Strict, &d).is_some());
        assert!(refused(SchemaMode::AddColumns, &d).is_none());

        let widened = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        let d = diff(&target, &widened, &[]);
        assert_eq!(d.changed[0].3, Change::Widen);
        assert!(refused(SchemaMode::AddColumns, &d).is_some());
        assert!(refused(SchemaMode::Merge, &d).is_none());

        let dropped = schema(&[("id", DataType::Int32)]);
        let msg = refused(SchemaMode::Merge, &diff(&target, &dropped, &[])).unwrap();
        assert!(msg.contains("\"name\" is missing"), "{msg}");

        let narrowed = schema(&[("id", DataType::Int16), ("name", DataType::Utf8)]);
        let msg = refused(SchemaMode::Merge, &diff(&target, &narrowed, &[])).unwrap();
        assert!(msg.contains("narrows"), "{msg}");

        let other = schema(&[("id", DataType::Utf8), ("name", DataType::Utf8)]);
        let d = diff(&target, &other, &[]);
        assert_eq!(d.changed[0].3, Change::Incompatible);

        let parts = schema(&[
            ("id", DataType::Int32),
            ("name", DataType::Utf8),
            ("year", DataType::Int32),
        ]);
        assert!(diff(&target, &parts, &["year".to_string()]).is_empty());
    }
}
