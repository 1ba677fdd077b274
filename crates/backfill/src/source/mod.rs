//! Where rows come from. A source hands DataFusion a table provider for the
//! raw data; the engine adds each chunk's range predicate on top, which
//! providers push down into their scans.

mod files;
pub mod kafka;
pub mod postgres;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use backfill_core::spec::{SourceFormat, SourceSpec};
use datafusion::catalog::TableProvider;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

pub use files::FileSource;

/// The Arrow type a declared column type (`[source.columns]`) reads as.
pub(crate) fn declared_type(ty: backfill_core::spec::ColumnType) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType, TimeUnit};
    use backfill_core::spec::ColumnType;
    match ty {
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::Date => DataType::Date32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Boolean => DataType::Boolean,
    }
}

/// What a transform can use besides the source: the lookup tables
/// (`[[tables]]`), each name with its rows, and `local_time()` in the job's
/// zone (`[range] timezone`).
#[derive(Default)]
pub struct Lookups {
    pub tables: Vec<(String, Arc<dyn Source>)>,
    /// The zone, and whether naive times are already local in it.
    pub zone: Option<(backfill_core::interval::Tz, bool)>,
}

/// Makes the lookup tables and `local_time()` visible to the transform in
/// `ctx`.
pub fn register_lookups(ctx: &SessionContext, lookups: &Lookups) -> datafusion::error::Result<()> {
    for (name, table) in &lookups.tables {
        ctx.register_table(name.as_str(), table.table())?;
    }
    if let Some((zone, naive_local)) = lookups.zone {
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            crate::local_time::LocalTime::new(zone, naive_local),
        ));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source path {shown} does not exist")]
    NotFound { shown: String },
    #[error("no {format} files found under source path {shown}{found}")]
    Empty {
        shown: String,
        format: &'static str,
        /// What is there instead, for the message.
        found: String,
    },
    #[error(
        "source {shown} mixes compressions ({found}); one scan reads one codec: split the files or set [source] compression"
    )]
    MixedCompression { shown: String, found: String },
    #[error("source {shown}: file {file} is not a readable Parquet file: {reason}")]
    Corrupt {
        shown: String,
        file: String,
        reason: String,
    },
    #[error("cannot read source {shown}: {source}")]
    Read {
        shown: String,
        #[source]
        source: DataFusionError,
    },
    #[error(transparent)]
    Postgres(#[from] crate::pg::PgError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Kafka(kafka::KafkaError),
    #[error("source.columns.{column}: no such column in source {shown} (columns: {available})")]
    UnknownColumn {
        shown: String,
        column: String,
        available: String,
    },
}

impl SourceError {
    /// Errors the user fixes in the job file or the filesystem layout.
    pub fn is_configuration(&self) -> bool {
        match self {
            SourceError::Postgres(e) => e.is_configuration(),
            SourceError::Kafka(e) => e.is_configuration(),
            SourceError::Store(e) => matches!(e, crate::store::StoreError::Invalid { .. }),
            _ => matches!(
                self,
                SourceError::NotFound { .. }
                    | SourceError::Empty { .. }
                    | SourceError::MixedCompression { .. }
                    | SourceError::UnknownColumn { .. }
            ),
        }
    }
}

/// About what a chunk will read, from metadata alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub rows: u64,
    pub bytes: u64,
    /// Proven empty: the statistics of every row group exclude the chunk.
    pub empty: bool,
    /// Proven to hold every row of the source: the statistics put every
    /// row group's range values inside the chunk, none of them NULL, so the
    /// range predicate would filter nothing.
    #[serde(skip)]
    pub covers_all: bool,
}

/// A source of rows for a backfill.
#[async_trait::async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The raw rows' schema (before the transform).
    fn schema(&self) -> SchemaRef;
    /// The raw rows, as a DataFusion table that accepts pushed-down filters.
    fn table(&self) -> Arc<dyn TableProvider>;
    /// For messages: the path or URL as written in the job file.
    fn describe(&self) -> String;
    /// Changes whenever the source's data may have changed.
    fn fingerprint(&self) -> String;

    /// A Kafka source, which plans its own chunks (offset windows).
    fn as_kafka(&self) -> Option<&kafka::KafkaSource> {
        None
    }

    /// The values of the Hive partition column it was opened with, sorted.
    fn partition_values(&self) -> Vec<String> {
        Vec::new()
    }

    /// Per chunk (in order): a digest of the part of the source it may
    /// read, from metadata only, which changes when that part may have
    /// changed (a file added, rewritten or removed). `None` when the source
    /// cannot tell: then committed chunks do not follow source changes.
    async fn chunk_digests(
        &self,
        range: Option<&crate::predicate::RangeColumn>,
        chunks: &[backfill_core::plan::Chunk],
    ) -> Result<Option<Vec<u64>>, SourceError> {
        let _ = (range, chunks);
        Ok(None)
    }

    /// Per chunk (in order): rows and bytes it will read, from metadata
    /// only; `None` when the source has no statistics to go by.
    async fn estimate(
        &self,
        range: &crate::predicate::RangeColumn,
        chunks: &[backfill_core::plan::Chunk],
    ) -> Result<Option<Vec<Estimate>>, SourceError> {
        let _ = (range, chunks);
        Ok(None)
    }
}

/// Opens the source a job file describes. `hive_column`: a column the
/// files' `column=value/` directories hold (`[range] partitions = "source"`).
pub async fn open(
    spec: &SourceSpec,
    ctx: &SessionContext,
    hive_column: Option<&str>,
) -> Result<Arc<dyn Source>, SourceError> {
    match spec.format {
        SourceFormat::Parquet | SourceFormat::Csv | SourceFormat::Json => {
            Ok(Arc::new(FileSource::open(spec, ctx, hive_column).await?))
        }
        SourceFormat::Kafka if hive_column.is_some() => Err(SourceError::Kafka(
            kafka::KafkaError::Invalid(
                "range.partitions = \"source\" needs a Hive-partitioned file source; a Kafka topic is chunked by offsets or time".into(),
            ),
        )),
        SourceFormat::Kafka => Ok(Arc::new(kafka::KafkaSource::open(spec).await?)),
        SourceFormat::Postgres if hive_column.is_some() => Err(SourceError::Postgres(
            crate::pg::PgError::Invalid(
                "range.partitions = \"source\" needs a Hive-partitioned file source (column=value/ directories); list the values instead".into(),
            ),
        )),
        SourceFormat::Postgres => match &spec.postgres {
            Some(pg) => Ok(Arc::new(
                postgres::PgSource::open(pg, &spec.path_shown).await?,
            )),
            None => Err(SourceError::Postgres(crate::pg::PgError::Invalid(
                "internal: format = \"postgres\" without its settings".into(),
            ))),
        },
    }
}
