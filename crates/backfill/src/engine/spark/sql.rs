//! Spark SQL text: identifiers, literals and type names. A leaf, so that
//! the chunk predicate ([`crate::predicate`]) speaks Spark SQL without
//! importing the engine.

use arrow::datatypes::DataType;

/// A Spark SQL identifier: `` a`b `` becomes `` `a``b` ``.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A Spark SQL string literal (backslash escapes are on by default).
pub fn string_lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The Spark SQL type for an Arrow type, for casts and text-source schemas.
pub fn spark_type(dt: &DataType) -> Option<String> {
    Some(
        match dt {
            DataType::Boolean => "BOOLEAN",
            DataType::Int8 => "TINYINT",
            DataType::Int16 | DataType::UInt8 => "SMALLINT",
            DataType::Int32 | DataType::UInt16 => "INT",
            DataType::Int64 | DataType::UInt32 => "BIGINT",
            DataType::Float32 => "FLOAT",
            DataType::Float64 => "DOUBLE",
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING",
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BINARY",
            DataType::Date32 | DataType::Date64 => "DATE",
            DataType::Timestamp(_, None) => "TIMESTAMP_NTZ",
            DataType::Timestamp(_, Some(_)) => "TIMESTAMP",
            DataType::Decimal128(p, s) => return Some(format!("DECIMAL({p},{s})")),
            _ => return None,
        }
        .to_string(),
    )
}
