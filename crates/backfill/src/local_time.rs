//! `local_time(ts)`: a timestamp as the wall-clock time of the job's zone
//! (`[range] timezone`), for transforms that derive local days and months
//! (`date_trunc('day', local_time(created_at))`), the same calendar the
//! chunks follow. The result has no zone: it is the local reading.

use std::sync::Arc;

use arrow::array::{Array, AsArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use backfill_core::interval::{Calendar, Tz};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

pub const NAME: &str = "local_time";

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LocalTime {
    zone: Tz,
    /// Naive times are already the zone's wall clock
    /// (`naive_timestamps = "local"`), so they pass unchanged.
    naive_local: bool,
    signature: Signature,
}

impl LocalTime {
    pub fn new(zone: Tz, naive_local: bool) -> LocalTime {
        LocalTime {
            zone,
            naive_local,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

const OUT: DataType = DataType::Timestamp(TimeUnit::Microsecond, None);

impl ScalarUDFImpl for LocalTime {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType, DataFusionError> {
        match args.first() {
            Some(DataType::Timestamp(_, _)) => Ok(OUT),
            other => Err(DataFusionError::Plan(format!(
                "{NAME}() takes a timestamp, not {}",
                other.map_or("nothing".to_string(), |t| t.to_string())
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(a) = arrays.first() else {
            return Err(DataFusionError::Plan(format!("{NAME}() takes a timestamp")));
        };
        let naive = matches!(a.data_type(), DataType::Timestamp(_, None));
        // Dropping the zone keeps the UTC instant (Arrow stores UTC).
        let utc = cast(a, &OUT)?;
        if naive && self.naive_local {
            return Ok(ColumnarValue::Array(utc));
        }
        let calendar = Calendar {
            zone: Some(self.zone),
            week_start: None,
        };
        let out: TimestampMicrosecondArray = utc
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .map(|v| v.and_then(|us| calendar.wall_value(us)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
