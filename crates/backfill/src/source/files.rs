//! Parquet, CSV and newline-delimited JSON files: a file, a directory
//! (recursive) or a glob, read through DataFusion's listing table so a
//! chunk's predicate prunes files and row groups by their statistics.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use backfill_core::spec::{SourceCompression, SourceFormat, SourceSpec};
use datafusion::catalog::TableProvider;
use datafusion::config::TableParquetOptions;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use futures::TryStreamExt;

use super::{Estimate, Source, SourceError};

#[derive(Debug)]
pub struct FileSource {
    table: Arc<ListingTable>,
    schema: SchemaRef,
    shown: String,
    fingerprint: String,
    format: SourceFormat,
    store: Arc<dyn object_store::ObjectStore>,
    files: Vec<object_store::ObjectMeta>,
    /// Row groups' range-column bounds, read from the footers once.
    row_groups: tokio::sync::OnceCell<Vec<RowGroupSpan>>,
    partition_values: Vec<String>,
    /// Per file (as `files`), its `column=value/` directory's value when the
    /// source was opened with a Hive partition column.
    file_partitions: Option<Vec<Option<String>>>,
}

/// Per file, the value of its `column=value/` directory under the source,
/// percent-decoded as Hive writers encode them.
fn hive_value_per_file(
    files: &[object_store::ObjectMeta],
    column: &str,
    url: &ListingTableUrl,
) -> Vec<Option<String>> {
    let prefix = format!("{column}=");
    let base = url.prefix().as_ref().to_string();
    files
        .iter()
        .map(|m| {
            let key = m.location.as_ref();
            let rel = key.strip_prefix(base.as_str()).unwrap_or(key);
            rel.split('/')
                .find_map(|seg| seg.strip_prefix(prefix.as_str()))
                .map(crate::hive::unescape_partition_value)
        })
        .collect()
}

/// One row group as its statistics describe it.
#[derive(Debug, Clone, Copy)]
struct RowGroupSpan {
    /// Which of the source's files it is in.
    file: usize,
    /// Range column min and max (micros or integers); `None` without statistics.
    bounds: Option<(i64, i64)>,
    /// NULL range values; `None` without statistics.
    nulls: Option<u64>,
    rows: u64,
    bytes: u64,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl FileSource {
    pub async fn open(
        spec: &SourceSpec,
        ctx: &SessionContext,
        hive_column: Option<&str>,
    ) -> Result<FileSource, SourceError> {
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
            SourceFormat::Postgres | SourceFormat::Kafka => {
                return Err(SourceError::Postgres(crate::pg::PgError::Invalid(
                    "internal: a database or Kafka source opened as files".into(),
                )));
            }
            SourceFormat::Csv => (Arc::new(CsvFormat::default()), ".csv"),
            SourceFormat::Json => (Arc::new(JsonFormat::default()), ".json"),
        };
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
        let state = ctx.state();
        let compression = match spec.format {
            SourceFormat::Csv | SourceFormat::Json => {
                compression(spec, &url, &state, &path, is_dir || globbed, ext, &shown).await?
            }
            _ => SourceCompression::None,
        };
        let codec = file_compression_type(compression);
        let format: Arc<dyn FileFormat> = match spec.format {
            SourceFormat::Csv => Arc::new(
                CsvFormat::default()
                    .with_has_header(spec.has_header)
                    .with_delimiter(spec.delimiter)
                    .with_file_compression_type(codec),
            ),
            SourceFormat::Json => Arc::new(JsonFormat::default().with_file_compression_type(codec)),
            _ => format,
        };
        // A directory keeps to the format's extension (and its codec's); a
        // named file or a glob says exactly what to read.
        let dir_extension = format!("{ext}{}", compression.extension());
        let extension = if is_dir && !globbed {
            dir_extension.as_str()
        } else {
            ""
        };
        let mut options = ListingOptions::new(format).with_file_extension(extension);
        if let Some(c) = hive_column {
            options = options.with_table_partition_cols(vec![(c.to_string(), DataType::Utf8)]);
        }
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
                let found = found_there(&url, &state).await;
                return Err(SourceError::Empty {
                    shown,
                    format: spec.format.name(),
                    found,
                });
            }
            Err(e) => return Err(read_err(e)),
        };
        let schema = apply_overrides(&inferred, spec, &shown)?;
        let files = list_files(&url, &state, &options.file_extension)
            .await
            .map_err(read_err)?;
        let fingerprint = listing_fingerprint(&files);
        let file_partitions = hive_column.map(|c| hive_value_per_file(&files, c, &url));
        let mut partition_values: Vec<String> = file_partitions
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .collect();
        partition_values.sort();
        partition_values.dedup();
        let store = state.runtime_env().object_store(&url).map_err(read_err)?;
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        let table = ListingTable::try_new(config).map_err(read_err)?;
        Ok(FileSource {
            // The files' columns, plus a Hive partition column if any.
            schema: table.schema(),
            table: Arc::new(table),
            shown,
            fingerprint,
            format: spec.format,
            store,
            files,
            row_groups: tokio::sync::OnceCell::new(),
            partition_values,
            file_partitions,
        })
    }

    /// Reads every Parquet footer once for the range column's statistics.
    async fn row_groups(&self, range: &str) -> Result<&Vec<RowGroupSpan>, SourceError> {
        self.row_groups
            .get_or_try_init(|| async {
                let mut out = Vec::new();
                for (i, meta) in self.files.iter().enumerate() {
                    let mut file = crate::store::ObjectFile {
                        store: self.store.clone(),
                        key: meta.location.clone(),
                        size: meta.size,
                    };
                    let size = meta.size;
                    let md = parquet::file::metadata::ParquetMetaDataReader::new()
                        .load_and_finish(&mut file, size)
                        .await
                        .map_err(|e| SourceError::Corrupt {
                            shown: self.shown.clone(),
                            file: format!("/{}", meta.location),
                            reason: e.to_string(),
                        })?;
                    out.extend(spans(&md, range, i));
                }
                Ok(out)
            })
            .await
    }
}

/// The range column's bounds per row group, as microseconds (times, dates)
/// or integers; unknown where a file lacks the column or its statistics.
fn spans(
    md: &parquet::file::metadata::ParquetMetaData,
    column: &str,
    file: usize,
) -> Vec<RowGroupSpan> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    let groups = md.row_groups();
    let unknown = || {
        groups
            .iter()
            .map(|g| RowGroupSpan {
                file,
                bounds: None,
                nulls: None,
                rows: g.num_rows().max(0) as u64,
                bytes: g.compressed_size().max(0) as u64,
            })
            .collect()
    };
    let descr = md.file_metadata().schema_descr();
    let Ok(schema) =
        parquet::arrow::parquet_to_arrow_schema(descr, md.file_metadata().key_value_metadata())
    else {
        return unknown();
    };
    let Ok(conv) = StatisticsConverter::try_new(column, &schema, descr) else {
        return unknown();
    };
    let as_i64 = |a: arrow::array::ArrayRef| -> Option<arrow::array::ArrayRef> {
        let target = match a.data_type() {
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            dt if dt.is_integer() => DataType::Int64,
            _ => return None,
        };
        let cast = arrow::compute::cast(&a, &target).ok()?;
        arrow::compute::cast(&cast, &DataType::Int64).ok()
    };
    let (Some(mins), Some(maxes)) = (
        conv.row_group_mins(groups.iter()).ok().and_then(as_i64),
        conv.row_group_maxes(groups.iter()).ok().and_then(as_i64),
    ) else {
        return unknown();
    };
    let (mins, maxes) = (
        mins.as_primitive::<Int64Type>(),
        maxes.as_primitive::<Int64Type>(),
    );
    let nulls = conv.row_group_null_counts(groups.iter()).ok();
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| RowGroupSpan {
            file,
            bounds: (mins.is_valid(i) && maxes.is_valid(i))
                .then(|| (mins.value(i), maxes.value(i))),
            nulls: nulls
                .as_ref()
                .and_then(|n| n.is_valid(i).then(|| n.value(i))),
            rows: g.num_rows().max(0) as u64,
            bytes: g.compressed_size().max(0) as u64,
        })
        .collect()
}

/// Rows and bytes of row groups overlapping `[lo, hi)`, pro rata to the
/// overlap of their `[min, max]` (values assumed spread evenly).
fn estimate_chunk(spans: &[RowGroupSpan], lo: Option<i64>, hi: Option<i64>) -> Estimate {
    let mut est = Estimate {
        empty: true,
        covers_all: true,
        ..Default::default()
    };
    let (mut rows, mut bytes) = (0f64, 0f64);
    for s in spans {
        let Some((min, max)) = s.bounds else {
            est.empty = false;
            est.covers_all = false;
            rows += s.rows as f64;
            bytes += s.bytes as f64;
            continue;
        };
        // Statistics in nanoseconds were cast to microseconds, which rounds
        // toward zero: a value is only known to within 1 either way.
        est.covers_all &= s.nulls == Some(0)
            && lo.is_none_or(|l| min > l)
            && hi.is_none_or(|h| max.saturating_add(1) < h);
        let from = lo.map_or(min, |l| l.max(min));
        let to = hi.map_or(max.saturating_add(1), |h| h.min(max.saturating_add(1)));
        if to <= from {
            continue;
        }
        est.empty = false;
        let width = (max as f64 - min as f64 + 1.0).max(1.0);
        let share = ((to as f64 - from as f64) / width).min(1.0);
        rows += s.rows as f64 * share;
        bytes += s.bytes as f64 * share;
    }
    est.rows = rows.round() as u64;
    est.bytes = bytes.round() as u64;
    est
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
fn listing_fingerprint(metas: &[object_store::ObjectMeta]) -> String {
    let mut files: Vec<String> = metas.iter().map(file_identity).collect();
    files.sort();
    format!(
        "{}:{:016x}",
        files.len(),
        twox_hash::XxHash3_64::oneshot(files.join("\n").as_bytes())
    )
}

/// A file as the fingerprints see it: its name, size and modification time.
fn file_identity(m: &object_store::ObjectMeta) -> String {
    format!(
        "{}|{}|{}",
        m.location,
        m.size,
        m.last_modified.timestamp_micros()
    )
}

/// The codec of the source's CSV or JSON files: the one `[source]
/// compression` names, else what their names say. One scan decodes one
/// way, so files of a folder or glob must agree.
async fn compression(
    spec: &SourceSpec,
    url: &ListingTableUrl,
    state: &datafusion::execution::SessionState,
    path: &str,
    listed: bool,
    ext: &str,
    shown: &str,
) -> Result<SourceCompression, SourceError> {
    if spec.compression != SourceCompression::Auto {
        return Ok(spec.compression);
    }
    if !listed {
        return Ok(SourceCompression::of_file(path));
    }
    let files = list_files(url, state, "")
        .await
        .map_err(|source| SourceError::Read {
            shown: shown.to_string(),
            source,
        })?;
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut codecs = Vec::new();
    for f in &files {
        let name = f.location.filename().unwrap_or_default();
        let codec = SourceCompression::of_file(name);
        if name.ends_with(&format!("{ext}{}", codec.extension())) {
            *seen.entry(codec.name()).or_default() += 1;
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
    }
    match codecs.as_slice() {
        // Nothing of the format: the listing reports it, with what is there.
        [] => Ok(SourceCompression::None),
        [one] => Ok(*one),
        _ => Err(SourceError::MixedCompression {
            shown: shown.to_string(),
            found: seen
                .iter()
                .map(|(codec, n)| format!("{n} {codec}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn file_compression_type(c: SourceCompression) -> FileCompressionType {
    match c {
        SourceCompression::Gzip => FileCompressionType::GZIP,
        SourceCompression::Zstd => FileCompressionType::ZSTD,
        SourceCompression::Bzip2 => FileCompressionType::BZIP2,
        SourceCompression::Xz => FileCompressionType::XZ,
        SourceCompression::Auto | SourceCompression::None => FileCompressionType::UNCOMPRESSED,
    }
}

/// What a source path that has none of the format's files holds, for the
/// message: `" (it holds 3 .txt and 1 .parquet files)"`.
async fn found_there(url: &ListingTableUrl, state: &datafusion::execution::SessionState) -> String {
    let Ok(files) = list_files(url, state, "").await else {
        return String::new();
    };
    if files.is_empty() {
        return " (it holds no files)".into();
    }
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in &files {
        let name = f.location.filename().unwrap_or_default();
        let kind = match name.split_once('.') {
            Some((_, rest)) if !rest.is_empty() => format!(".{rest}"),
            _ => "without an extension".to_string(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = kinds
        .iter()
        .take(5)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let more = if kinds.len() > 5 { ", ..." } else { "" };
    format!(" (it holds files: {}{more})", shown.join(", "))
}

/// The source's files, in name order.
async fn list_files(
    url: &ListingTableUrl,
    state: &datafusion::execution::SessionState,
    extension: &str,
) -> datafusion::error::Result<Vec<object_store::ObjectMeta>> {
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<object_store::ObjectMeta> = url
        .list_all_files(state, store.as_ref(), extension)
        .await?
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
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
        let dt = crate::source::declared_type(*ty);
        *field = Field::new(name, dt, true);
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[async_trait::async_trait]
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

    fn partition_values(&self) -> Vec<String> {
        self.partition_values.clone()
    }

    /// Each file counts towards the chunks it may hold rows of: by its
    /// Hive directory for partition chunks of a partitioned source, by its
    /// row groups' range statistics (widened by one, for rounding) for
    /// ranges; a Parquet file without statistics counts everywhere. CSV and
    /// JSON files carry no statistics, so any file would count towards
    /// every chunk and any new file re-run the whole history: `None`.
    async fn chunk_digests(
        &self,
        range: Option<&crate::predicate::RangeColumn>,
        chunks: &[backfill_core::plan::Chunk],
    ) -> Result<Option<Vec<u64>>, SourceError> {
        if self.format != SourceFormat::Parquet {
            return Ok(None);
        }
        let hash = |m: &object_store::ObjectMeta| {
            twox_hash::XxHash3_64::oneshot(file_identity(m).as_bytes())
        };
        let mut digests = vec![0u64; chunks.len()];
        let mut everywhere = 0u64;
        let partitions = chunks.iter().any(|c| c.value.is_some());
        match (range, &self.file_partitions) {
            (_, Some(values)) if partitions => {
                let by_value: std::collections::HashMap<&str, usize> = chunks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.value.as_deref().map(|v| (v, i)))
                    .collect();
                for (m, v) in self.files.iter().zip(values) {
                    match v {
                        // Another partition's file is in no chunk.
                        Some(v) => {
                            if let Some(&i) = by_value.get(v.as_str()) {
                                digests[i] = digests[i].wrapping_add(hash(m));
                            }
                        }
                        None => everywhere = everywhere.wrapping_add(hash(m)),
                    }
                }
            }
            (Some(range), _) if !partitions => {
                let spans = self.row_groups(&range.name).await?;
                // Per file: the union of its row groups' bounds, or None
                // when one of them has rows and no statistics.
                let mut bounds: Vec<Option<Option<(i64, i64)>>> =
                    vec![Some(None); self.files.len()];
                for g in spans {
                    let Some(b) = bounds.get_mut(g.file) else {
                        continue;
                    };
                    match (g.bounds, b.as_mut()) {
                        (Some((lo, hi)), Some(acc)) => {
                            *acc = Some(match acc {
                                Some((a, z)) => ((*a).min(lo), (*z).max(hi)),
                                None => (lo, hi),
                            });
                        }
                        (None, _) if g.rows > 0 => *b = None,
                        _ => {}
                    }
                }
                for (m, b) in self.files.iter().zip(bounds) {
                    match b {
                        None => everywhere = everywhere.wrapping_add(hash(m)),
                        // No rows: in no chunk.
                        Some(None) => {}
                        Some(Some((min, max))) => {
                            let (min, max) = (min.saturating_sub(1), max.saturating_add(1));
                            // Chunks are in order and disjoint: the first
                            // ending after `min` to the last starting at or
                            // before `max`.
                            let first =
                                chunks.partition_point(|c| c.hi.is_some_and(|hi| hi.raw() <= min));
                            let end =
                                chunks.partition_point(|c| c.lo.is_none_or(|lo| lo.raw() <= max));
                            for d in digests.iter_mut().take(end).skip(first) {
                                *d = d.wrapping_add(hash(m));
                            }
                        }
                    }
                }
            }
            _ => {
                for m in &self.files {
                    everywhere = everywhere.wrapping_add(hash(m));
                }
            }
        }
        for d in &mut digests {
            *d = d.wrapping_add(everywhere);
        }
        Ok(Some(digests))
    }

    /// Parquet only: CSV and JSON files carry no statistics.
    async fn estimate(
        &self,
        range: &crate::predicate::RangeColumn,
        chunks: &[backfill_core::plan::Chunk],
    ) -> Result<Option<Vec<Estimate>>, SourceError> {
        // Partition chunks are pruned by directory, not by statistics.
        if self.format != SourceFormat::Parquet || chunks.iter().any(|c| c.value.is_some()) {
            return Ok(None);
        }
        let spans = self.row_groups(&range.name).await?;
        Ok(Some(
            chunks
                .iter()
                .map(|c| estimate_chunk(spans, c.lo.map(|v| v.raw()), c.hi.map(|v| v.raw())))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_share_row_groups_by_overlap_and_prove_emptiness() {
        let g = |lo, hi, rows| RowGroupSpan {
            file: 0,
            bounds: Some((lo, hi)),
            nulls: Some(0),
            rows,
            bytes: rows * 10,
        };
        let spans = [g(0, 99, 100), g(100, 199, 100)];
        let half = estimate_chunk(&spans, Some(50), Some(150));
        assert_eq!((half.rows, half.bytes, half.empty), (100, 1000, false));
        let none = estimate_chunk(&spans, Some(200), Some(300));
        assert!(none.empty);
        assert_eq!(none.rows, 0);
        let unknown = [RowGroupSpan {
            file: 0,
            bounds: None,
            nulls: None,
            rows: 5,
            bytes: 5,
        }];
        assert!(!estimate_chunk(&unknown, Some(200), Some(300)).empty);

        // Covering every row takes every group inside, with a margin of one
        // for rounded statistics, and no NULLs.
        assert!(estimate_chunk(&spans, Some(-1), Some(201)).covers_all);
        assert!(estimate_chunk(&spans, None, None).covers_all);
        assert!(!estimate_chunk(&spans, Some(0), Some(201)).covers_all);
        assert!(!estimate_chunk(&spans, Some(-1), Some(200)).covers_all);
        assert!(!half.covers_all);
        assert!(!estimate_chunk(&unknown, None, None).covers_all);
        let mut with_nulls = spans;
        with_nulls[1].nulls = Some(1);
        assert!(!estimate_chunk(&with_nulls, None, None).covers_all);
        with_nulls[1].nulls = None;
        assert!(!estimate_chunk(&with_nulls, None, None).covers_all);
    }
}
