//! Parquet, CSV and newline-delimited JSON files: a file, a directory
//! (recursive) or a glob, read through DataFusion's listing table so a
//! chunk's predicate prunes files and row groups by their statistics.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use backfill_core::spec::{ColumnType, SourceFormat, SourceSpec};
use datafusion::catalog::TableProvider;
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use futures::TryStreamExt;

use super::{Source, SourceError};

#[derive(Debug)]
pub struct FileSource {
    table: Arc<ListingTable>,
    schema: SchemaRef,
    shown: String,
    fingerprint: String,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl FileSource {
    pub async fn open(spec: &SourceSpec, ctx: &SessionContext) -> Result<FileSource, SourceError> {
        let shown = spec.path_shown.clone();
        let (path, globbed, is_dir) = match &spec.url {
            Some(u) => remote_location(u, &shown, ctx).await?,
            None => {
                let path = spec.path.to_string_lossy().into_owned();
                let globbed = has_glob(&path);
                if !globbed && !spec.path.exists() {
                    return Err(SourceError::NotFound { shown });
                }
                (path, globbed, spec.path.is_dir())
            }
        };
        let (format, ext): (Arc<dyn FileFormat>, &str) = match spec.format {
            SourceFormat::Parquet => {
                let mut opts = TableParquetOptions::default();
                // Late materialisation: rows outside the chunk are filtered
                // while decoding, and pages outside it are skipped by the page index.
                opts.global.pushdown_filters = true;
                opts.global.reorder_filters = true;
                (
                    Arc::new(ParquetFormat::default().with_options(opts)),
                    ".parquet",
                )
            }
            SourceFormat::Postgres => {
                return Err(SourceError::Postgres(crate::pg::PgError::Invalid(
                    "internal: a postgres source opened as files".into(),
                )));
            }
            SourceFormat::Csv => (
                Arc::new(
                    CsvFormat::default()
                        .with_has_header(spec.has_header)
                        .with_delimiter(spec.delimiter),
                ),
                ".csv",
            ),
            SourceFormat::Json => (Arc::new(JsonFormat::default()), ".json"),
        };
        // A directory keeps to the format's extension; a named file or a glob
        // says exactly what to read.
        let extension = if is_dir && !globbed { ext } else { "" };
        let url_text = if is_dir && !path.ends_with('/') {
            format!("{path}/")
        } else {
            path.clone()
        };
        let read_err = |source| SourceError::Read {
            shown: shown.clone(),
            source,
        };
        let url = ListingTableUrl::parse(&url_text).map_err(read_err)?;
        let options = ListingOptions::new(format).with_file_extension(extension);
        let state = ctx.state();
        if spec.format == SourceFormat::Parquet {
            check_parquet_footers(&url, &state, &options.file_extension)
                .await
                .map_err(|e| match e {
                    FooterError::Read(source) => SourceError::Read {
                        shown: shown.clone(),
                        source,
                    },
                    FooterError::Corrupt { file, reason } => SourceError::Corrupt {
                        shown: shown.clone(),
                        file,
                        reason,
                    },
                })?;
        }
        let inferred = match options.infer_schema(&state, &url).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("No files found") => {
                return Err(SourceError::Empty {
                    shown,
                    format: spec.format.name(),
                });
            }
            Err(e) => return Err(read_err(e)),
        };
        let schema = apply_overrides(&inferred, spec, &shown)?;
        let fingerprint = listing_fingerprint(&url, &state, &options.file_extension)
            .await
            .map_err(read_err)?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema.clone());
        let table = ListingTable::try_new(config).map_err(read_err)?;
        Ok(FileSource {
            table: Arc::new(table),
            schema,
            shown,
            fingerprint,
        })
    }
}

/// Registers the bucket's store with DataFusion and tells a file from a
/// directory (a prefix): `(url, globbed, is_dir)`.
async fn remote_location(
    text: &str,
    shown: &str,
    ctx: &SessionContext,
) -> Result<(String, bool, bool), SourceError> {
    use object_store::ObjectStoreExt;
    let remote = crate::store::Remote::open(text, shown)?;
    remote.register(ctx);
    if has_glob(text) {
        return Ok((text.to_string(), true, false));
    }
    let trimmed = text.trim_end_matches('/');
    let is_file = !text.ends_with('/')
        && match remote.store.head(&remote.prefix).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(remote.err("reading", &remote.prefix)(e).into()),
        };
    Ok((trimmed.to_string(), false, !is_file))
}

enum FooterError {
    Read(datafusion::error::DataFusionError),
    Corrupt { file: String, reason: String },
}

/// Checks each Parquet file's trailer (metadata length + `PAR1`) before the
/// reader sees it: the parquet crate panics on some impossible lengths, and
/// a truncated or foreign file deserves an error that names it.
async fn check_parquet_footers(
    url: &ListingTableUrl,
    state: &datafusion::execution::SessionState,
    extension: &str,
) -> Result<(), FooterError> {
    use datafusion::object_store::ObjectStoreExt;
    let store = state
        .runtime_env()
        .object_store(url)
        .map_err(FooterError::Read)?;
    let files: Vec<_> = url
        .list_all_files(state, store.as_ref(), extension)
        .await
        .map_err(FooterError::Read)?
        .try_collect()
        .await
        .map_err(FooterError::Read)?;
    for meta in files {
        let file = format!("/{}", meta.location);
        let corrupt = |reason: String| FooterError::Corrupt {
            file: file.clone(),
            reason,
        };
        if meta.size < 12 {
            return Err(corrupt(format!(
                "{} bytes is too short for a Parquet file",
                meta.size
            )));
        }
        let tail = store
            .get_range(&meta.location, meta.size - 8..meta.size)
            .await
            .map_err(|e| FooterError::Read(e.into()))?;
        let magic = &tail[4..8];
        if magic != b"PAR1" && magic != b"PARE" {
            return Err(corrupt(
                "it does not end with the Parquet magic bytes (truncated, or not Parquet)".into(),
            ));
        }
        let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if len + 12 > meta.size {
            return Err(corrupt(format!(
                "its footer claims {len} bytes of metadata but the file has {} bytes (truncated?)",
                meta.size
            )));
        }
    }
    Ok(())
}

/// Names, sizes and modification times of the files: when any changes, data
/// derived from the whole source (the global dedup index) is rebuilt.
async fn listing_fingerprint(
    url: &ListingTableUrl,
    state: &datafusion::execution::SessionState,
    extension: &str,
) -> datafusion::error::Result<String> {
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<String> = url
        .list_all_files(state, store.as_ref(), extension)
        .await?
        .map_ok(|m| {
            format!(
                "{}|{}|{}",
                m.location,
                m.size,
                m.last_modified.timestamp_micros()
            )
        })
        .try_collect()
        .await?;
    files.sort();
    Ok(format!(
        "{}:{:016x}",
        files.len(),
        twox_hash::XxHash3_64::oneshot(files.join("\n").as_bytes())
    ))
}

/// `[source.columns]` replaces inferred types, e.g. text timestamps in CSV.
fn apply_overrides(
    inferred: &Schema,
    spec: &SourceSpec,
    shown: &str,
) -> Result<SchemaRef, SourceError> {
    let mut fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (name, ty) in &spec.columns {
        let Some(field) = fields.iter_mut().find(|f| f.name() == name) else {
            return Err(SourceError::UnknownColumn {
                shown: shown.to_string(),
                column: name.clone(),
                available: inferred
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let dt = match ty {
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            ColumnType::Date => DataType::Date32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
        };
        *field = Field::new(name, dt, true);
    }
    Ok(Arc::new(Schema::new(fields)))
}

impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table(&self) -> Arc<dyn TableProvider> {
        self.table.clone()
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
