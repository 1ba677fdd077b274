//! Hash buckets (`[range] buckets`): which bucket a row is in, as a
//! DataFusion expression (the local engine, and the file sources' filters)
//! and as PostgreSQL SQL (the PostgreSQL source's pushdown, the PostgreSQL
//! target's slice of a chunk). The hash is [`backfill_core::plan::bucket_of`]:
//! MD5 of the value's text, so DuckDB and PostgreSQL can reproduce it.

use std::any::Any;
use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, UInt64Type};
use backfill_core::plan::{Bucket, bucket_of};
use datafusion::common::Column;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use md5::{Digest, Md5};

pub const UDF: &str = "__bf_bucket";

/// The column a job hashes into buckets.
#[derive(Debug, Clone)]
pub struct BucketColumn {
    pub name: String,
}

/// Integers (hashed as their decimal text) and strings (as they are); a
/// float or a timestamp has no text every engine writes alike.
pub fn supported(dt: &DataType) -> bool {
    match dt {
        DataType::Dictionary(_, v) => supported(v),
        dt => {
            dt.is_integer()
                || matches!(
                    dt,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
        }
    }
}

/// Each row's bucket of `of`; NULL is bucket 0.
pub fn buckets(a: &ArrayRef, of: u32) -> Result<UInt32Array, DataFusionError> {
    let of_text = |text: &[u8]| bucket_of(Md5::digest(text).into(), of);
    let dt = a.data_type();
    if let DataType::Dictionary(_, v) = dt {
        return buckets(&cast(a, v)?, of);
    }
    let mut buf = String::new();
    let mut by_number = |v: &dyn std::fmt::Display| {
        buf.clear();
        let _ = write!(buf, "{v}");
        of_text(buf.as_bytes())
    };
    Ok(match dt {
        DataType::UInt64 => a
            .as_primitive::<UInt64Type>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| by_number(&v))))
            .collect(),
        dt if dt.is_integer() => cast(a, &DataType::Int64)?
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| Some(v.map_or(0, |v| by_number(&v))))
            .collect(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(a, &DataType::Utf8)?;
            s.as_string::<i32>()
                .iter()
                .map(|v| Some(v.map_or(0, |v| of_text(v.as_bytes()))))
                .collect()
        }
        other => {
            return Err(DataFusionError::Plan(format!(
                "a bucket column must hold integers or strings, not {other}"
            )));
        }
    })
}

/// `__bf_bucket(column)`: the row's bucket, for a bucket count fixed per job.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BucketUdf {
    of: u32,
    signature: Signature,
}

impl BucketUdf {
    pub fn new(of: u32) -> BucketUdf {
        BucketUdf {
            of,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for BucketUdf {
    fn name(&self) -> &str {
        UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(a) = arrays.first() else {
            return Err(DataFusionError::Internal(format!("{UDF} takes a column")));
        };
        Ok(ColumnarValue::Array(Arc::new(buckets(a, self.of)?)))
    }
}

/// `__bf_bucket(column) = index`.
pub fn datafusion(column: &BucketColumn, bucket: Bucket) -> Expr {
    ScalarUDF::new_from_impl(BucketUdf::new(bucket.of))
        .call(vec![Expr::Column(Column::new_unqualified(
            column.name.clone(),
        ))])
        .eq(lit(bucket.index))
}

/// The bucket of the SQL expression `value` in PostgreSQL: the same hash as
/// [`bucket_of`], on the value's text (`42`, or a string as it is).
pub fn postgres_expr(value: &str, of: u32) -> String {
    format!("coalesce(('x' || left(md5(({value})::text), 15))::bit(60)::bigint % {of}, 0)")
}

/// The `__bf_bucket(...)` of a DataFusion call, in PostgreSQL SQL, for the
/// PostgreSQL source's pushdown.
pub fn postgres_of_call(func: &ScalarUDF, arg_sql: &str) -> Option<String> {
    let udf = (func.inner().as_ref() as &dyn Any).downcast_ref::<BucketUdf>()?;
    Some(postgres_expr(arg_sql, udf.of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};

    #[test]
    fn integers_hash_as_their_text_and_null_is_bucket_zero() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![Some(42), None, Some(-7)]));
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("42"), None, Some("-7")]));
        let a = buckets(&ints, 7).unwrap();
        let b = buckets(&strings, 7).unwrap();
        assert_eq!(a, b);
        // md5("42") = a1d0c6e83f027327...
        assert_eq!(a.value(0), (0xa1d0c6e83f02732u64 % 7) as u32);
        assert_eq!(a.value(1), 0);
    }
}
