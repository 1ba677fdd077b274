//! Hive-style partition directories (`year=2023/month=7/`): how a value
//! names one directory level and how a directory name gives it back. Shared
//! by the file sources (reading partition columns from paths), the Parquet
//! and Delta targets (writing them) and `validate`, so none of those imports
//! another for it.

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use arrow::util::display::array_value_to_string;

/// What Hive, Spark, DuckDB and pyarrow call a NULL partition value.
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Hive-style escaping of a partition value so it names exactly one directory
/// level inside the target: `/`, `\`, `=`, `%`, `:`, control characters and
/// the other characters Hive escapes become `%XX`; a leading `.` or `_`
/// (hidden from readers, or `..`) is escaped too; empty becomes the NULL name.
pub fn escape_partition_value(value: &str) -> String {
    if value.is_empty() {
        return HIVE_DEFAULT_PARTITION.to_string();
    }
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let escape = c.is_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            )
            || (i == 0 && matches!(c, '.' | '_'));
        if escape {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value a Hive directory name encodes (`%XX` escapes undone).
pub fn unescape_partition_value(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len() + 1
            && let Some(hex) = v.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory name of row `row`'s value in a partition column.
pub fn partition_value(array: &dyn Array, row: usize) -> Result<String, ArrowError> {
    if array.is_null(row) {
        return Ok(HIVE_DEFAULT_PARTITION.to_string());
    }
    let s = array_value_to_string(array, row)?;
    // date_part() and friends may yield floats: 2023.0 names the same
    // partition as 2023.
    let s = match array.data_type() {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
        }
        _ => s,
    };
    Ok(escape_partition_value(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_partition_values_stay_one_level_deep() {
        for v in [
            "..",
            "../../etc",
            "a/b",
            "a=b",
            "50%",
            "x\0y",
            ".hidden",
            "_tmp",
            "",
        ] {
            let e = escape_partition_value(v);
            assert!(!e.contains('/'), "{v:?} -> {e}");
            assert!(!e.contains('\0'), "{v:?} -> {e}");
            assert!(
                !e.starts_with('.') && !e.starts_with('_') || e == HIVE_DEFAULT_PARTITION,
                "{v:?} -> {e}"
            );
            assert_ne!(e, "..");
        }
        assert_eq!(escape_partition_value("2023"), "2023");
        assert_eq!(escape_partition_value("a/b"), "a%2Fb");
        assert_eq!(escape_partition_value(".."), "%2E.");
        assert_eq!(escape_partition_value("é"), "é");
    }
}
