//! PostgreSQL ↔ Arrow types, and the binary COPY value codecs both ways.
//!
//! Each supported PostgreSQL type has one canonical Arrow type. Reading
//! decodes into it; writing first casts a batch's column to the canonical type
//! of the target column (Arrow's cast kernel, overflow checked), so the
//! encoder only knows the canonical pairs.

use std::error::Error as StdError;
use std::sync::Arc;

use arrow::array::ListArray;
use arrow::array::NullBufferBuilder;
use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Date32Builder, Decimal128Array, Decimal128Builder, Float32Array, Float32Builder, Float64Array,
    Float64Builder, Int16Array, Int16Builder, Int32Array, Int32Builder, Int64Array, Int64Builder,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::types as wire;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn StdError + Sync + Send>;

/// PostgreSQL counts time from 2000-01-01, Arrow from 1970-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

pub const UTC: &str = "UTC";

/// The Arrow type rows of a PostgreSQL column decode into; `typmod` carries
/// numeric's precision and scale. `Err` says why the type is not supported.
pub fn arrow_type(ty: &Type, typmod: i32) -> Result<DataType, String> {
    if let Kind::Array(elem) = ty.kind() {
        // The modifier of `numeric(12,2)[]` is the elements'.
        let inner =
            arrow_type(elem, typmod).map_err(|e| format!("array of {}: {e}", elem.name()))?;
        return Ok(DataType::List(Arc::new(Field::new_list_field(inner, true))));
    }
    Ok(match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::JSON | Type::JSONB | Type::UUID => DataType::Utf8,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        Type::BYTEA => DataType::Binary,
        Type::NUMERIC => {
            if typmod < 4 {
                return Err(
                    "numeric without a declared precision cannot be read exactly; cast it, e.g. amount::numeric(18,2), in a query".into(),
                );
            }
            // typmod - 4 holds the precision (up to 1000) in the high 16
            // bits and the scale in the low 11, signed since PostgreSQL 15
            // (-1000..1000). Checked before narrowing: numeric(300,2) must
            // not wrap into numeric(44,2), nor 260 into 4.
            let m = typmod - 4;
            let precision = (m >> 16) & 0xffff;
            let scale = ((m & 0x7ff) ^ 1024) - 1024;
            let (Ok(p), Ok(sc)) = (u8::try_from(precision), i8::try_from(scale)) else {
                return Err(format!(
                    "numeric({precision},{scale}) does not fit Arrow decimal128 (at most 38 digits, scale -128 to 127); cast it in a query"
                ));
            };
            if p == 0 || p > 38 {
                return Err(format!(
                    "numeric({precision},{scale}) is wider than 38 digits (Arrow decimal128); cast it in a query"
                ));
            }
            DataType::Decimal128(p, sc)
        }
        _ => {
            return Err(format!(
                "type {} is not supported; cast it in a query, e.g. col::text",
                ty.name()
            ));
        }
    })
}

/// The column type `create = true` gives an Arrow column.
pub fn ddl_type(dt: &DataType) -> Option<String> {
    Some(match dt {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20,0)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Dictionary(_, v) if v.is_string() => "text".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        _ => return None,
    })
}

/// A column value as the server sent it, whatever its type.
pub struct Raw<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw<'a>, BoxError> {
        Ok(Raw(raw))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Builds one Arrow column from binary COPY values.
pub enum Decoder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Uuid(StringBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Numeric(Decimal128Builder, u8, i8),
    Bytea(BinaryBuilder),
    /// A one-dimensional array: element values, and where each row's end.
    List {
        elements: Box<Decoder>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        field: FieldRef,
    },
}

impl Decoder {
    pub fn new(ty: &Type, dt: &DataType) -> Decoder {
        if let (Kind::Array(elem), DataType::List(field)) = (ty.kind(), dt) {
            return Decoder::List {
                elements: Box::new(Decoder::new(elem, field.data_type())),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                field: field.clone(),
            };
        }
        match (ty, dt) {
            (_, DataType::Boolean) => Decoder::Bool(BooleanBuilder::new()),
            (_, DataType::Int16) => Decoder::I16(Int16Builder::new()),
            (_, DataType::Int32) => Decoder::I32(Int32Builder::new()),
            (_, DataType::Int64) => Decoder::I64(Int64Builder::new()),
            (_, DataType::Float32) => Decoder::F32(Float32Builder::new()),
            (_, DataType::Float64) => Decoder::F64(Float64Builder::new()),
            (&Type::JSONB, _) => Decoder::Jsonb(StringBuilder::new()),
            (&Type::UUID, _) => Decoder::Uuid(StringBuilder::new()),
            (_, DataType::Date32) => Decoder::Date(Date32Builder::new()),
            (_, DataType::Timestamp(_, tz)) => {
                Decoder::Ts(TimestampMicrosecondBuilder::new(), tz.clone())
            }
            (_, DataType::Decimal128(p, s)) => Decoder::Numeric(Decimal128Builder::new(), *p, *s),
            (_, DataType::Binary) => Decoder::Bytea(BinaryBuilder::new()),
            _ => Decoder::Text(StringBuilder::new()),
        }
    }

    pub fn push(&mut self, raw: Option<&[u8]>) -> Result<(), BoxError> {
        let Some(b) = raw else {
            match self {
                Decoder::Bool(x) => x.append_null(),
                Decoder::I16(x) => x.append_null(),
                Decoder::I32(x) => x.append_null(),
                Decoder::I64(x) => x.append_null(),
                Decoder::F32(x) => x.append_null(),
                Decoder::F64(x) => x.append_null(),
                Decoder::Text(x) | Decoder::Jsonb(x) | Decoder::Uuid(x) => x.append_null(),
                Decoder::Date(x) => x.append_null(),
                Decoder::Ts(x, _) => x.append_null(),
                Decoder::Numeric(x, ..) => x.append_null(),
                Decoder::Bytea(x) => x.append_null(),
                Decoder::List { offsets, nulls, .. } => {
                    offsets.push(offsets.last().copied().unwrap_or(0));
                    nulls.append_null();
                }
            }
            return Ok(());
        };
        match self {
            Decoder::Bool(x) => x.append_value(wire::bool_from_sql(b)?),
            Decoder::I16(x) => x.append_value(wire::int2_from_sql(b)?),
            Decoder::I32(x) => x.append_value(wire::int4_from_sql(b)?),
            Decoder::I64(x) => x.append_value(wire::int8_from_sql(b)?),
            Decoder::F32(x) => x.append_value(wire::float4_from_sql(b)?),
            Decoder::F64(x) => x.append_value(wire::float8_from_sql(b)?),
            Decoder::Text(x) => x.append_value(wire::text_from_sql(b)?),
            Decoder::Jsonb(x) => match b.split_first() {
                Some((1, rest)) => x.append_value(std::str::from_utf8(rest)?),
                _ => return Err("unknown jsonb version".into()),
            },
            Decoder::Uuid(x) => {
                let u = wire::uuid_from_sql(b)?;
                x.append_value(format_uuid(&u));
            }
            Decoder::Date(x) => {
                let d = wire::date_from_sql(b)?;
                let d = d
                    .checked_add(PG_EPOCH_DAYS)
                    .ok_or("date infinity cannot be represented")?;
                x.append_value(d);
            }
            Decoder::Ts(x, _) => {
                let t = wire::timestamp_from_sql(b)?;
                let t = t
                    .checked_add(PG_EPOCH_MICROS)
                    .ok_or("timestamp infinity cannot be represented")?;
                x.append_value(t);
            }
            Decoder::Numeric(x, _, scale) => x.append_value(numeric_from_sql(b, *scale)?),
            Decoder::Bytea(x) => x.append_value(wire::bytea_from_sql(b)),
            Decoder::List {
                elements,
                offsets,
                nulls,
                ..
            } => {
                let array = wire::array_from_sql(b)?;
                if array.dimensions().count()? > 1 {
                    return Err("multi-dimensional arrays are not supported".into());
                }
                let mut n: i32 = 0;
                let mut values = array.values();
                while let Some(v) = values.next()? {
                    elements.push(v)?;
                    n += 1;
                }
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last.checked_add(n).ok_or("array values overflow a list")?);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<ArrayRef, arrow::error::ArrowError> {
        Ok(match self {
            Decoder::Bool(x) => Arc::new(x.finish()),
            Decoder::I16(x) => Arc::new(x.finish()),
            Decoder::I32(x) => Arc::new(x.finish()),
            Decoder::I64(x) => Arc::new(x.finish()),
            Decoder::F32(x) => Arc::new(x.finish()),
            Decoder::F64(x) => Arc::new(x.finish()),
            Decoder::Text(x) | Decoder::Jsonb(x) | Decoder::Uuid(x) => Arc::new(x.finish()),
            Decoder::Date(x) => Arc::new(x.finish()),
            Decoder::Ts(x, tz) => Arc::new(x.finish().with_timezone_opt(tz.clone())),
            Decoder::Numeric(x, p, s) => Arc::new(x.finish().with_precision_and_scale(*p, *s)?),
            Decoder::Bytea(x) => Arc::new(x.finish()),
            Decoder::List {
                elements,
                offsets,
                nulls,
                field,
            } => {
                let values = elements.finish()?;
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(ListArray::try_new(
                    field.clone(),
                    offsets,
                    values,
                    nulls.finish(),
                )?)
            }
        })
    }
}

fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_uuid(s: &str) -> Result<[u8; 16], BoxError> {
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
    if hex.len() != 32 {
        return Err(format!("\"{s}\" is not a UUID").into());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair)?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| format!("\"{s}\" is not a UUID"))?;
    }
    Ok(out)
}

const NUMERIC_NEG: u16 = 0x4000;

/// Decodes a binary numeric (base-10000 digits) into an unscaled i128 at
/// `scale`, refusing NaN, infinities, overflow and lost digits.
fn numeric_from_sql(mut b: &[u8], scale: i8) -> Result<i128, BoxError> {
    let mut next = || -> Result<i16, BoxError> {
        if b.len() < 2 {
            return Err("truncated numeric".into());
        }
        let v = i16::from_be_bytes([b[0], b[1]]);
        b = &b[2..];
        Ok(v)
    };
    let ndigits = next()?;
    let weight = next()? as i32;
    let sign = next()? as u16;
    let _dscale = next()?;
    if sign != 0 && sign != NUMERIC_NEG {
        return Err("NaN or infinity cannot be stored in a decimal".into());
    }
    let mut acc: i128 = 0;
    for _ in 0..ndigits {
        let d = next()? as i128;
        acc = acc
            .checked_mul(10_000)
            .and_then(|a| a.checked_add(d))
            .ok_or("numeric overflows decimal128")?;
    }
    // acc × 10000^(weight - ndigits + 1), then × 10^scale.
    let exp10 = 4 * (weight - ndigits as i32 + 1) + scale as i32;
    if exp10 >= 0 {
        let f = 10i128
            .checked_pow(exp10 as u32)
            .ok_or("numeric overflows decimal128")?;
        acc = acc.checked_mul(f).ok_or("numeric overflows decimal128")?;
    } else {
        let f = 10i128
            .checked_pow((-exp10) as u32)
            .ok_or("numeric has more digits than its scale")?;
        if acc % f != 0 {
            return Err("numeric has more fractional digits than its declared scale".into());
        }
        acc /= f;
    }
    Ok(if sign == NUMERIC_NEG { -acc } else { acc })
}

/// Encodes an unscaled decimal as a binary numeric.
fn numeric_to_sql(v: i128, scale: i8, out: &mut BytesMut) {
    let scale = scale.max(0) as usize;
    let digits = v.unsigned_abs().to_string();
    let (int_part, frac_part) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("", digits.as_str())
    };
    let frac = format!("{}{}", "0".repeat(scale - frac_part.len()), frac_part);
    let int_pad = (4 - int_part.len() % 4) % 4;
    let int = format!("{}{}", "0".repeat(int_pad), int_part);
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac = format!("{}{}", frac, "0".repeat(frac_pad));
    let mut groups: Vec<i16> = int
        .as_bytes()
        .chunks(4)
        .chain(frac.as_bytes().chunks(4))
        .map(|g| g.iter().fold(0i16, |a, c| a * 10 + (c - b'0') as i16))
        .collect();
    let mut weight = (int.len() / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign: u16 = if v < 0 && !groups.is_empty() {
        NUMERIC_NEG
    } else {
        0
    };
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&(scale as i16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
}

/// A batch column cast to the canonical Arrow type of its target column.
#[derive(Debug)]
pub enum Column {
    Bool(BooleanArray),
    I16(Int16Array),
    I32(Int32Array),
    I64(Int64Array),
    F32(Float32Array),
    F64(Float64Array),
    Text(StringArray, TextKind),
    Date(Date32Array),
    Ts(TimestampMicrosecondArray),
    Numeric(Decimal128Array, i8),
    Bytea(BinaryArray),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Text,
    Jsonb,
    Uuid,
}

impl Column {
    /// Casts `array` for a target column of type `ty` (with `typmod`).
    pub fn new(array: &ArrayRef, ty: &Type, typmod: i32) -> Result<Column, String> {
        let want = match (ty, array.data_type()) {
            // An unconstrained numeric keeps the batch's own decimal scale.
            (&Type::NUMERIC, DataType::Decimal128(p, s)) if typmod < 4 => {
                DataType::Decimal128(*p, *s)
            }
            (&Type::NUMERIC, _) if typmod < 4 => DataType::Decimal128(38, 9),
            _ => arrow_type(ty, typmod)?,
        };
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let cast = cast_with_options(array, &want, &options)
            .map_err(|e| format!("cannot convert {} to {}: {e}", array.data_type(), ty.name()))?;
        let any = cast.as_any();
        macro_rules! down {
            ($t:ty) => {
                any.downcast_ref::<$t>()
                    .ok_or_else(|| format!("internal: cast to {want} failed"))?
                    .clone()
            };
        }
        Ok(match &want {
            DataType::Boolean => Column::Bool(down!(BooleanArray)),
            DataType::Int16 => Column::I16(down!(Int16Array)),
            DataType::Int32 => Column::I32(down!(Int32Array)),
            DataType::Int64 => Column::I64(down!(Int64Array)),
            DataType::Float32 => Column::F32(down!(Float32Array)),
            DataType::Float64 => Column::F64(down!(Float64Array)),
            DataType::Utf8 => {
                let kind = match *ty {
                    Type::JSONB => TextKind::Jsonb,
                    Type::UUID => TextKind::Uuid,
                    _ => TextKind::Text,
                };
                Column::Text(down!(StringArray), kind)
            }
            DataType::Date32 => Column::Date(down!(Date32Array)),
            DataType::Timestamp(..) => Column::Ts(down!(TimestampMicrosecondArray)),
            DataType::Decimal128(_, s) => Column::Numeric(down!(Decimal128Array), *s),
            DataType::Binary => Column::Bytea(down!(BinaryArray)),
            other => return Err(format!("internal: no encoder for {other}")),
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Bool(a) => a.is_null(row),
            Column::I16(a) => a.is_null(row),
            Column::I32(a) => a.is_null(row),
            Column::I64(a) => a.is_null(row),
            Column::F32(a) => a.is_null(row),
            Column::F64(a) => a.is_null(row),
            Column::Text(a, _) => a.is_null(row),
            Column::Date(a) => a.is_null(row),
            Column::Ts(a) => a.is_null(row),
            Column::Numeric(a, _) => a.is_null(row),
            Column::Bytea(a) => a.is_null(row),
        }
    }

    pub fn encode(&self, row: usize, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if self.is_null(row) {
            return Ok(IsNull::Yes);
        }
        match self {
            Column::Bool(a) => wire::bool_to_sql(a.value(row), out),
            Column::I16(a) => wire::int2_to_sql(a.value(row), out),
            Column::I32(a) => wire::int4_to_sql(a.value(row), out),
            Column::I64(a) => wire::int8_to_sql(a.value(row), out),
            Column::F32(a) => wire::float4_to_sql(a.value(row), out),
            Column::F64(a) => wire::float8_to_sql(a.value(row), out),
            Column::Text(a, TextKind::Text) => wire::text_to_sql(a.value(row), out),
            Column::Text(a, TextKind::Jsonb) => {
                out.extend_from_slice(&[1]);
                out.extend_from_slice(a.value(row).as_bytes());
            }
            Column::Text(a, TextKind::Uuid) => wire::uuid_to_sql(parse_uuid(a.value(row))?, out),
            Column::Date(a) => wire::date_to_sql(a.value(row) - PG_EPOCH_DAYS, out),
            Column::Ts(a) => wire::timestamp_to_sql(
                a.value(row)
                    .checked_sub(PG_EPOCH_MICROS)
                    .ok_or("timestamp out of PostgreSQL's range")?,
                out,
            ),
            Column::Numeric(a, s) => numeric_to_sql(a.value(row), *s, out),
            Column::Bytea(a) => wire::bytea_to_sql(a.value(row), out),
        }
        Ok(IsNull::No)
    }
}

/// One value of a [`Column`], as the COPY writer wants it: the row is
/// shared by a batch's cells so they are built once per batch.
#[derive(Debug)]
pub struct Cell<'a> {
    pub column: &'a Column,
    pub row: &'a std::sync::atomic::AtomicUsize,
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        self.column
            .encode(self.row.load(std::sync::atomic::Ordering::Relaxed), out)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers_never_wrap() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(
            arrow_type(&Type::NUMERIC, typmod(18, 2)),
            Ok(DataType::Decimal128(18, 2))
        );
        assert_eq!(
            arrow_type(&Type::NUMERIC, typmod(38, 0)),
            Ok(DataType::Decimal128(38, 0))
        );
        // PostgreSQL 15 allows a negative scale: numeric(5,-2) rounds to hundreds.
        assert_eq!(
            arrow_type(&Type::NUMERIC, typmod(5, -2)),
            Ok(DataType::Decimal128(5, -2))
        );
        // 260 and 300 digits would wrap to 4 and 44 as a byte.
        for p in [39, 260, 300, 1000] {
            let e = arrow_type(&Type::NUMERIC, typmod(p, 2)).expect_err("too wide");
            assert!(e.contains(&format!("numeric({p},2)")), "{e}");
        }
        assert!(arrow_type(&Type::NUMERIC, typmod(20, 200)).is_err());
    }

    fn roundtrip(v: i128, scale: i8) -> i128 {
        let mut b = BytesMut::new();
        numeric_to_sql(v, scale, &mut b);
        numeric_from_sql(&b, scale).unwrap()
    }

    #[test]
    fn numerics_round_trip() {
        for (v, s) in [
            (0, 2),
            (1, 0),
            (-1, 2),
            (12345, 2),
            (-100_000_000, 4),
            (99_999_999_999_999_999, 3),
            (10_000, 0),
            (5, 9),
            (i128::from(i64::MAX), 0),
        ] {
            assert_eq!(roundtrip(v, s), v, "{v} scale {s}");
        }
    }

    #[test]
    fn numeric_wire_format_matches_postgres() {
        // 123.45 as PostgreSQL sends it: 2 digits, weight 0, +, dscale 2: [123, 4500].
        let mut b = BytesMut::new();
        numeric_to_sql(12345, 2, &mut b);
        assert_eq!(&b[..], &[0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 0x11, 0x94]);
        // More digits than the column's scale are refused, not rounded.
        assert!(numeric_from_sql(&b, 1).is_err());
    }

    #[test]
    fn uuids() {
        let u = parse_uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(format_uuid(&u), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(parse_uuid("nope").is_err());
    }
}
