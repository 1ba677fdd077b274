//! The order-independent checksum of the rows a chunk wrote.
//!
//! The state store keeps it per chunk, and `validate` recomputes it from the
//! files (or database rows) and from a fresh run of the chunk. It is the
//! wrapping sum, over rows, of a 64-bit hash of each row's data columns,
//! seeded by the partition directory the row went to, so the order in which
//! rows are written or read never matters.
//!
//! Two definitions exist, and the state store records which one a chunk's
//! checksum used:
//! - **1** hashes Arrow's row format of the row with xxh3. Encoding every
//!   row into that format was a tenth of a chunk's instructions.
//! - **2** (current) hashes column by column: each value becomes a 64-bit
//!   word (its bits, or xxh3 of its bytes), folded into the row's running
//!   hash with a 128-bit multiply, and the row hash is finished with an
//!   avalanche. Strings hash by their bytes whatever their Arrow layout
//!   (`Utf8`, `LargeUtf8`, views) and dictionaries by their values.
//!
//! Both need the same column types on both sides: the writer's batch and the
//! rows read back (files keep their Arrow schema; database rows are cast to
//! the transform's types before they are compared).

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::*;
use arrow::row::{RowConverter, SortField};
use twox_hash::XxHash3_64;

use super::SinkError;

/// Which definition of the checksum a chunk's recorded value uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumVersion {
    /// xxh3 of Arrow's row format (releases before checksum versions).
    RowFormat = 1,
    /// Column-wise word hashes folded per row.
    Columns = 2,
}

impl ChecksumVersion {
    /// What new commits record.
    pub const CURRENT: ChecksumVersion = ChecksumVersion::Columns;

    /// The version a state store recorded, if this release knows it.
    pub fn from_recorded(v: u32) -> Option<ChecksumVersion> {
        match v {
            1 => Some(ChecksumVersion::RowFormat),
            2 => Some(ChecksumVersion::Columns),
            _ => None,
        }
    }

    pub fn number(self) -> u32 {
        self as u32
    }
}

/// Computes one version of the checksum for batches of one schema.
#[derive(Debug)]
pub struct RowChecksum {
    version: ChecksumVersion,
    /// Version 1: the whole row. Version 2: per column whose values have no
    /// word form (nested types, intervals, 256-bit decimals), else `None`.
    converters: Vec<Option<RowConverter>>,
}

/// Odd constants with well-spread bits (from xxh3's and wyhash's primes).
const VALID: u64 = 0x9E37_79B1_85EB_CA87;
const NULL: u64 = 0xC2B2_AE3D_27D4_EB4F;
const NULL_WORD: u64 = 0x1656_67B1_9E37_79F9;
const START: u64 = 0xA076_1D64_78BD_642F;

/// Multiplies into 128 bits and folds the halves: every input bit reaches
/// both halves, unlike a plain 64-bit multiply whose high bits never reach
/// the low ones.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Murmur3's finaliser: each output bit depends on every input bit.
#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

impl RowChecksum {
    pub fn new(version: ChecksumVersion, schema: &Schema) -> Result<RowChecksum, SinkError> {
        let converters = match version {
            ChecksumVersion::RowFormat => vec![Some(RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )?)],
            ChecksumVersion::Columns => schema
                .fields()
                .iter()
                .map(|f| {
                    let dt = value_type(f.data_type());
                    if has_words(dt) {
                        Ok(None)
                    } else {
                        RowConverter::new(vec![SortField::new(dt.clone())]).map(Some)
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(RowChecksum {
            version,
            converters,
        })
    }

    /// The checksum of the rows of `batch`, all of one partition with
    /// directory seed `seed` (see [`super::partition_seed`]).
    pub fn rows(&self, batch: &RecordBatch, seed: u64) -> Result<u64, SinkError> {
        match self.version {
            ChecksumVersion::RowFormat => {
                let Some(Some(encoder)) = self.converters.first() else {
                    return Err(mismatch(&DataType::Null));
                };
                let rows = encoder.convert_columns(batch.columns())?;
                let mut sum = 0u64;
                for row in rows.iter() {
                    sum = sum.wrapping_add(XxHash3_64::oneshot_with_seed(seed, row.as_ref()));
                }
                Ok(sum)
            }
            ChecksumVersion::Columns => {
                let mut hashes = vec![fold(seed ^ START, VALID); batch.num_rows()];
                for (i, column) in batch.columns().iter().enumerate() {
                    let converter = self.converters.get(i).and_then(Option::as_ref);
                    fold_column(column, converter, &mut hashes)?;
                }
                Ok(hashes
                    .into_iter()
                    .fold(0u64, |sum, h| sum.wrapping_add(avalanche(h))))
            }
        }
    }
}

/// A 64-bit hash per row of `column`, as version 2 folds it into a row:
/// equal values give equal hashes whatever their layout, and every NULL
/// the same one. The Parquet writer counts distinct values with it.
pub fn value_hashes(column: &ArrayRef) -> Result<Vec<u64>, SinkError> {
    let dt = value_type(column.data_type());
    let converter = if has_words(dt) {
        None
    } else {
        Some(RowConverter::new(vec![SortField::new(dt.clone())])?)
    };
    let mut hashes = vec![0; column.len()];
    fold_column(column, converter.as_ref(), &mut hashes)?;
    Ok(hashes)
}

/// A batch whose columns are not those the checksum was made for.
fn mismatch(dt: &DataType) -> SinkError {
    SinkError::Arrow(arrow::error::ArrowError::InvalidArgumentError(format!(
        "the checksum was set up for other columns than a batch's (found {dt})"
    )))
}

/// A dictionary's values are what the checksum sees.
fn value_type(dt: &DataType) -> &DataType {
    match dt {
        DataType::Dictionary(_, v) => value_type(v),
        other => other,
    }
}

fn has_words(dt: &DataType) -> bool {
    use DataType::*;
    dt.is_integer()
        || dt.is_floating()
        || matches!(
            dt,
            Null | Boolean
                | Date32
                | Date64
                | Time32(_)
                | Time64(_)
                | Timestamp(..)
                | Duration(_)
                | Decimal32(..)
                | Decimal64(..)
                | Decimal128(..)
                | Utf8
                | LargeUtf8
                | Utf8View
                | Binary
                | LargeBinary
                | BinaryView
                | FixedSizeBinary(_)
        )
}

/// Folds one column's values into the row hashes.
fn fold_column(
    column: &ArrayRef,
    converter: Option<&RowConverter>,
    hashes: &mut [u64],
) -> Result<(), SinkError> {
    if let DataType::Dictionary(_, v) = column.data_type() {
        let values = arrow::compute::cast(column, value_type(v))?;
        return fold_column(&values, converter, hashes);
    }
    let nulls = column.logical_nulls();
    let nulls = nulls.as_ref().filter(|n| n.null_count() > 0);
    // Each arm turns value `i` into a word; nulls fold a constant instead.
    macro_rules! fold_words {
        ($word:expr) => {{
            let word = $word;
            match nulls {
                None => {
                    for (i, h) in hashes.iter_mut().enumerate() {
                        *h = fold(*h ^ word(i), VALID);
                    }
                }
                Some(n) => {
                    for (i, h) in hashes.iter_mut().enumerate() {
                        *h = if n.is_valid(i) {
                            fold(*h ^ word(i), VALID)
                        } else {
                            fold(*h ^ NULL_WORD, NULL)
                        };
                    }
                }
            }
        }};
    }
    macro_rules! primitive {
        ($t:ty, $conv:expr) => {{
            let values = column.as_primitive::<$t>().values();
            let conv = $conv;
            fold_words!(|i: usize| conv(values[i]))
        }};
    }
    let bytes = |b: &[u8]| XxHash3_64::oneshot(b);
    match column.data_type() {
        DataType::Null => fold_words!(|_| 0u64),
        DataType::Boolean => {
            let values = column.as_boolean();
            fold_words!(|i: usize| values.value(i) as u64)
        }
        DataType::Int8 => primitive!(Int8Type, |v: i8| v as i64 as u64),
        DataType::Int16 => primitive!(Int16Type, |v: i16| v as i64 as u64),
        DataType::Int32 => primitive!(Int32Type, |v: i32| v as i64 as u64),
        DataType::Int64 => primitive!(Int64Type, |v: i64| v as u64),
        DataType::UInt8 => primitive!(UInt8Type, |v: u8| v as u64),
        DataType::UInt16 => primitive!(UInt16Type, |v: u16| v as u64),
        DataType::UInt32 => primitive!(UInt32Type, |v: u32| v as u64),
        DataType::UInt64 => primitive!(UInt64Type, |v: u64| v),
        DataType::Float16 => primitive!(
            Float16Type,
            |v: <Float16Type as ArrowPrimitiveType>::Native| { v.to_bits() as u64 }
        ),
        DataType::Float32 => primitive!(Float32Type, |v: f32| v.to_bits() as u64),
        DataType::Float64 => primitive!(Float64Type, |v: f64| v.to_bits()),
        DataType::Date32 => primitive!(Date32Type, |v: i32| v as i64 as u64),
        DataType::Date64 => primitive!(Date64Type, |v: i64| v as u64),
        DataType::Time32(TimeUnit::Second) => {
            primitive!(Time32SecondType, |v: i32| v as i64 as u64)
        }
        DataType::Time32(_) => primitive!(Time32MillisecondType, |v: i32| v as i64 as u64),
        DataType::Time64(TimeUnit::Microsecond) => {
            primitive!(Time64MicrosecondType, |v: i64| v as u64)
        }
        DataType::Time64(_) => primitive!(Time64NanosecondType, |v: i64| v as u64),
        DataType::Timestamp(TimeUnit::Second, _) => {
            primitive!(TimestampSecondType, |v: i64| v as u64)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            primitive!(TimestampMillisecondType, |v: i64| v as u64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            primitive!(TimestampMicrosecondType, |v: i64| v as u64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            primitive!(TimestampNanosecondType, |v: i64| v as u64)
        }
        DataType::Duration(TimeUnit::Second) => primitive!(DurationSecondType, |v: i64| v as u64),
        DataType::Duration(TimeUnit::Millisecond) => {
            primitive!(DurationMillisecondType, |v: i64| v as u64)
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            primitive!(DurationMicrosecondType, |v: i64| v as u64)
        }
        DataType::Duration(TimeUnit::Nanosecond) => {
            primitive!(DurationNanosecondType, |v: i64| v as u64)
        }
        DataType::Decimal32(..) => primitive!(Decimal32Type, |v: i32| v as i64 as u64),
        DataType::Decimal64(..) => primitive!(Decimal64Type, |v: i64| v as u64),
        DataType::Decimal128(..) => {
            // Both halves, the low one mixed first so they cannot cancel.
            primitive!(Decimal128Type, |v: i128| {
                let (low, high) = (v as u64, (v >> 64) as u64);
                fold(low, VALID) ^ high
            })
        }
        DataType::Utf8 => {
            let a = column.as_string::<i32>();
            fold_words!(|i: usize| bytes(a.value(i).as_bytes()))
        }
        DataType::LargeUtf8 => {
            let a = column.as_string::<i64>();
            fold_words!(|i: usize| bytes(a.value(i).as_bytes()))
        }
        DataType::Utf8View => {
            let a = column.as_string_view();
            fold_words!(|i: usize| bytes(a.value(i).as_bytes()))
        }
        DataType::Binary => {
            let a = column.as_binary::<i32>();
            fold_words!(|i: usize| bytes(a.value(i)))
        }
        DataType::LargeBinary => {
            let a = column.as_binary::<i64>();
            fold_words!(|i: usize| bytes(a.value(i)))
        }
        DataType::BinaryView => {
            let a = column.as_binary_view();
            fold_words!(|i: usize| bytes(a.value(i)))
        }
        DataType::FixedSizeBinary(_) => {
            let a = column.as_fixed_size_binary();
            fold_words!(|i: usize| bytes(a.value(i)))
        }
        other => {
            // Nested and rarer types: the column's own row format, hashed.
            let Some(converter) = converter else {
                return Err(mismatch(other));
            };
            let rows = converter.convert_columns(std::slice::from_ref(column))?;
            fold_words!(|i: usize| bytes(rows.row(i).as_ref()))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        DictionaryArray, Float64Array, Int32Array, Int64Array, LargeStringArray, ListArray,
        StringArray, StringViewArray,
    };

    use super::*;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).expect("batch")
    }

    fn sum(b: &RecordBatch, seed: u64) -> u64 {
        RowChecksum::new(ChecksumVersion::Columns, &b.schema())
            .and_then(|c| c.rows(b, seed))
            .expect("checksum")
    }

    #[test]
    fn order_free_but_sensitive_to_values_columns_nulls_and_partition() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("c")]));
        let base = batch(vec![("id", ids.clone()), ("name", names.clone())]);
        let reversed = batch(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![None, Some(2), Some(1)])),
            ),
            (
                "name",
                Arc::new(StringArray::from(vec![Some("c"), None, Some("a")])),
            ),
        ]);
        assert_eq!(sum(&base, 7), sum(&reversed, 7));
        // The sum of single rows is the checksum of all of them.
        let parts: u64 = (0..3)
            .map(|i| sum(&base.slice(i, 1), 7))
            .fold(0, u64::wrapping_add);
        assert_eq!(parts, sum(&base, 7));

        let others = [
            // another value
            batch(vec![
                (
                    "id",
                    Arc::new(Int64Array::from(vec![Some(1), Some(3), None])),
                ),
                ("name", names.clone()),
            ]),
            // a NULL where 0 was, and 0 where NULL was
            batch(vec![
                (
                    "id",
                    Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(0)])),
                ),
                ("name", names.clone()),
            ]),
            // values moved between rows of a column
            batch(vec![
                (
                    "id",
                    Arc::new(Int64Array::from(vec![Some(2), Some(1), None])),
                ),
                ("name", names.clone()),
            ]),
            // an empty string for a NULL
            batch(vec![
                ("id", ids.clone()),
                (
                    "name",
                    Arc::new(StringArray::from(vec![Some("a"), Some(""), Some("c")])),
                ),
            ]),
        ];
        for other in &others {
            assert_ne!(sum(&base, 7), sum(other, 7), "{other:?}");
        }
        assert_ne!(sum(&base, 7), sum(&base, 8));
        // The same values in the other column order.
        let swapped = batch(vec![
            ("a", Arc::new(Int64Array::from(vec![5, 6]))),
            ("b", Arc::new(Int64Array::from(vec![6, 5]))),
        ]);
        let same = batch(vec![
            ("a", Arc::new(Int64Array::from(vec![6, 5]))),
            ("b", Arc::new(Int64Array::from(vec![5, 6]))),
        ]);
        assert_eq!(sum(&swapped, 0), sum(&same, 0));
        let moved = batch(vec![
            ("a", Arc::new(Int64Array::from(vec![5, 5]))),
            ("b", Arc::new(Int64Array::from(vec![6, 6]))),
        ]);
        assert_ne!(sum(&swapped, 0), sum(&moved, 0));
    }

    #[test]
    fn the_high_bits_of_two_columns_do_not_cancel() {
        // A plain xor-and-multiply chain lets a flipped top bit in one word
        // cancel against the same flip in the next.
        let top = 1i64 << 63;
        let a = batch(vec![
            ("x", Arc::new(Int64Array::from(vec![1]))),
            ("y", Arc::new(Int64Array::from(vec![2]))),
        ]);
        let b = batch(vec![
            ("x", Arc::new(Int64Array::from(vec![1 ^ top]))),
            ("y", Arc::new(Int64Array::from(vec![2 ^ top]))),
        ]);
        assert_ne!(sum(&a, 0), sum(&b, 0));
    }

    #[test]
    fn strings_and_dictionaries_hash_by_value_whatever_their_layout() {
        let words = vec![
            Some("completed"),
            None,
            Some("a much longer string than twelve"),
        ];
        let plain = batch(vec![("s", Arc::new(StringArray::from(words.clone())))]);
        let large = batch(vec![("s", Arc::new(LargeStringArray::from(words.clone())))]);
        let view = batch(vec![("s", Arc::new(StringViewArray::from(words.clone())))]);
        let dict: DictionaryArray<Int32Type> = words.iter().copied().collect();
        let dict = batch(vec![("s", Arc::new(dict))]);
        let want = sum(&plain, 1);
        for b in [&large, &view, &dict] {
            assert_eq!(sum(b, 1), want, "{:?}", b.schema());
        }
    }

    #[test]
    fn nested_columns_use_their_row_format_and_version_1_is_the_row_format() {
        let list = |v: Vec<Option<Vec<Option<i32>>>>| -> ArrayRef {
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(v))
        };
        let a = batch(vec![
            ("l", list(vec![Some(vec![Some(1), Some(2)]), None])),
            ("f", Arc::new(Float64Array::from(vec![1.5, 2.5]))),
        ]);
        let b = batch(vec![
            ("l", list(vec![Some(vec![Some(2), Some(1)]), None])),
            ("f", Arc::new(Float64Array::from(vec![1.5, 2.5]))),
        ]);
        assert_ne!(sum(&a, 0), sum(&b, 0));

        // Version 1, for chunks committed before versions were recorded.
        let v1 = RowChecksum::new(ChecksumVersion::RowFormat, &a.schema()).expect("v1");
        let converter = RowConverter::new(
            a.schema()
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .expect("converter");
        let rows = converter.convert_columns(a.columns()).expect("rows");
        let want = rows
            .iter()
            .map(|r| XxHash3_64::oneshot_with_seed(3, r.as_ref()))
            .fold(0u64, u64::wrapping_add);
        assert_eq!(v1.rows(&a, 3).expect("v1 sum"), want);
        assert_ne!(want, sum(&a, 3));
        let ints = batch(vec![("i", Arc::new(Int32Array::from(vec![1, 2])))]);
        assert_ne!(sum(&ints, 0), 0);
    }
}
