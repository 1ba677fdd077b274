//! `validate`: re-reads the source and the target and proves, per chunk and
//! per group, `source rows = target rows + quarantined + dropped + duplicates`.
//!
//! Three views of each chunk are compared:
//! - *recorded*: the counts and checksum the state store kept at commit;
//! - *actual*: the chunk's target and quarantine files as they are now;
//! - *expected*: the chunk's pipeline run again over the source as it is
//!   now, without writing (the same transform, rules and dedup index).
//!
//! A target file deleted or altered shows as actual ≠ recorded; rows added to
//! the source after the chunk ran show as expected ≠ recorded; a chunk never
//! run is reported as such.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::array_value_to_string;
use async_trait::async_trait;
use backfill_core::interval::RangeValue;
use backfill_core::plan::Chunk;
use backfill_core::state::{ChunkRecord, ChunkStatus};
use futures::TryStreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use serde::Serialize;

use crate::engine::ExecStats;
use crate::engine::local::{self, ChunkQuery};
use crate::error::{ChunkError, Error};
use crate::hive::{escape_partition_value, partition_value, unescape_partition_value};
use crate::runner::{Backfill, OpenJob, dedup_index};
use crate::sink::checksum::{ChecksumVersion, RowChecksum};
use crate::sink::{ChunkWriter, QUARANTINE_PREFIX, Sink, SinkError, Staged, partition_seed};

#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// Columns of the transformed rows to reconcile per group.
    pub group_by: Vec<String>,
    /// Only these chunk ids (all when empty).
    pub chunks: Vec<String>,
    pub from: Option<RangeValue>,
    pub to: Option<RangeValue>,
}

/// Row count and sums for one group.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tally {
    pub rows: u64,
    pub sums: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkCheck {
    pub index: usize,
    pub id: String,
    pub bounds: String,
    pub status: ChunkStatus,
    /// Source rows in the chunk's range now (before the transform).
    pub source_rows: u64,
    /// Rows the transform yields now, and what the pipeline makes of them.
    pub expected_rows_in: u64,
    pub expected_target: u64,
    pub expected_quarantined: u64,
    pub expected_removed: u64,
    pub expected_checksum: String,
    /// What the files hold now.
    pub target_rows: u64,
    /// Rows in the chunk's range that readers of a file target see in files
    /// no commit of this job recorded.
    pub unaccounted_rows: u64,
    pub target_checksum: String,
    pub quarantined_rows: u64,
    /// What the state store recorded at commit.
    pub recorded_rows_read: Option<u64>,
    pub recorded_written: Option<u64>,
    pub recorded_quarantined: Option<u64>,
    pub recorded_dropped: Option<u64>,
    pub recorded_duplicates: Option<u64>,
    pub recorded_checksum: Option<String>,
    /// `[validate] sum` columns: (expected, actual) over target rows.
    pub sums: BTreeMap<String, (f64, f64)>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupCheck {
    pub group: Vec<String>,
    pub source: u64,
    pub target: u64,
    pub quarantined: u64,
    /// Dropped by rules or removed as duplicates (recomputed).
    pub removed: u64,
    pub expected_target: u64,
    pub sums: BTreeMap<String, (f64, f64)>,
    /// Chunks where this group does not reconcile.
    pub chunks: Vec<String>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateReport {
    pub job: String,
    pub group_by: Vec<String>,
    pub sum_columns: Vec<String>,
    pub chunks: Vec<ChunkCheck>,
    pub groups: Vec<GroupCheck>,
    /// Source rows with a NULL range column, which no chunk covers.
    pub null_range_rows: u64,
    pub ok: bool,
}

impl ValidateReport {
    pub fn mismatched_chunks(&self) -> Vec<&ChunkCheck> {
        self.chunks
            .iter()
            .filter(|c| !c.problems.is_empty())
            .collect()
    }
}

/// Accumulates rows, a checksum and per-group tallies of what would be (or
/// was) written, without writing anything.
pub struct Measure {
    partition_by: Vec<String>,
    group_by: Vec<String>,
    sums: Vec<String>,
    /// Which checksum to compute, if any.
    checksum_version: Option<ChecksumVersion>,
    pub rows: u64,
    pub checksum: u64,
    pub groups: HashMap<Vec<String>, Tally>,
    row_checksum: Option<RowChecksum>,
    /// The first observed batch's schema: what rows read back from a
    /// database are cast to before they are compared.
    schema: Option<arrow::datatypes::SchemaRef>,
}

impl Measure {
    fn new(
        partition_by: &[String],
        group_by: &[String],
        sums: &[String],
        checksum_version: Option<ChecksumVersion>,
    ) -> Measure {
        Measure {
            partition_by: partition_by.to_vec(),
            group_by: group_by.to_vec(),
            sums: sums.to_vec(),
            checksum_version,
            rows: 0,
            checksum: 0,
            groups: HashMap::new(),
            row_checksum: None,
            schema: None,
        }
    }

    /// A group value as both sides spell it: partition columns in their
    /// escaped directory form, others as Arrow displays them.
    fn value(&self, col: &str, array: &dyn Array, row: usize) -> Result<String, SinkError> {
        if self.partition_by.iter().any(|p| p == col) {
            Ok(partition_value(array, row)?)
        } else if array.is_null(row) {
            Ok("NULL".to_string())
        } else {
            Ok(array_value_to_string(array, row)?)
        }
    }

    /// Tallies a batch of transformed rows (all columns present).
    fn observe(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if self.schema.is_none() {
            self.schema = Some(batch.schema());
        }
        self.tally(batch, &HashMap::new())?;
        if self.checksum_version.is_some() {
            self.checksum = self
                .checksum
                .wrapping_add(self.checksum_by_partition(batch)?);
        }
        Ok(())
    }

    /// Counts rows and sums per group. Group columns found in `dir_values`
    /// (partition values of a published file's directory) take that value.
    fn tally(
        &mut self,
        batch: &RecordBatch,
        dir_values: &HashMap<String, String>,
    ) -> Result<(), SinkError> {
        let n = batch.num_rows();
        self.rows += n as u64;
        let schema = batch.schema();
        let sums = sum_arrays(batch, &self.sums)?;
        let mut keys: Vec<Vec<String>> = vec![Vec::with_capacity(self.group_by.len()); n];
        for g in &self.group_by {
            if let Some(v) = dir_values.get(&escape_partition_value(g)) {
                keys.iter_mut().for_each(|k| k.push(v.clone()));
                continue;
            }
            let col = batch.column(schema.index_of(g)?);
            for (i, key) in keys.iter_mut().enumerate() {
                key.push(self.value(g, col.as_ref(), i)?);
            }
        }
        for (i, key) in keys.into_iter().enumerate() {
            let t = self.groups.entry(key).or_default();
            t.rows += 1;
            t.sums.resize(sums.len(), 0.0);
            for (s, arr) in t.sums.iter_mut().zip(&sums) {
                if let Some(a) = arr
                    && !a.is_null(i)
                {
                    *s += a.value(i);
                }
            }
        }
        Ok(())
    }

    /// The checksum, made for the first batch's columns.
    fn row_checksum(&mut self, schema: &Schema) -> Result<&RowChecksum, SinkError> {
        if self.row_checksum.is_none() {
            let version = self.checksum_version.unwrap_or(ChecksumVersion::CURRENT);
            self.row_checksum = Some(RowChecksum::new(version, schema)?);
        }
        self.row_checksum.as_ref().ok_or(SinkError::WriterGone)
    }

    /// The sink's checksum of these rows, as if written.
    fn checksum_by_partition(&mut self, batch: &RecordBatch) -> Result<u64, SinkError> {
        let schema = batch.schema();
        let part_idx: Vec<usize> = self
            .partition_by
            .iter()
            .map(|p| schema.index_of(p))
            .collect::<Result<_, _>>()?;
        let data_idx: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !part_idx.contains(i))
            .collect();
        let data = batch.project(&data_idx)?;
        let mut by_dir: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let mut dir = String::new();
            for (&p, name) in part_idx.iter().zip(&self.partition_by) {
                dir.push_str(&escape_partition_value(name));
                dir.push('=');
                dir.push_str(&partition_value(batch.column(p).as_ref(), i)?);
                dir.push('/');
            }
            by_dir.entry(dir).or_default().push(i as u32);
        }
        let checksum = self.row_checksum(&data.schema())?;
        let mut sum = 0u64;
        for (dir, idx) in by_dir {
            let part = take_record_batch(&data, &UInt32Array::from(idx))?;
            sum = sum.wrapping_add(checksum.rows(&part, partition_seed(&dir))?);
        }
        Ok(sum)
    }

    /// Tallies rows read back from a database table, cast column by column
    /// to `like` (the rows as the transform produced them), so the checksum
    /// compares values, not how the database spells their types.
    async fn observe_stream(
        &mut self,
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
        like: Option<arrow::datatypes::SchemaRef>,
    ) -> Result<(), SinkError> {
        use futures::StreamExt;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(SinkError::read("reading the target"))?;
            let batch = match &like {
                Some(schema) => {
                    let mut columns = Vec::with_capacity(schema.fields().len());
                    for f in schema.fields() {
                        let col = batch.column_by_name(f.name()).ok_or_else(|| {
                            SinkError::Invalid(format!("the table has no column \"{}\"", f.name()))
                        })?;
                        columns.push(arrow::compute::cast(col, f.data_type())?);
                    }
                    RecordBatch::try_new(schema.clone(), columns)?
                }
                None => batch,
            };
            self.observe(&batch)?;
        }
        Ok(())
    }

    /// Tallies a published file; partition values come from its directory.
    async fn observe_file(&mut self, sink: &dyn Sink, rel: &str) -> Result<(), SinkError> {
        let file = sink.open_file(rel).await?;
        let pq = |source| SinkError::Parquet {
            path: rel.into(),
            source,
        };
        let mut reader = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(pq)?
            .build()
            .map_err(pq)?;
        let dir = rel
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| format!("{d}/"));
        let dir_values: HashMap<String, String> = dir
            .split('/')
            .filter_map(|seg| seg.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let seed = partition_seed(&dir);
        while let Some(batch) = reader.try_next().await.map_err(pq)? {
            if self.checksum_version.is_some() {
                let sum = self.row_checksum(&batch.schema())?.rows(&batch, seed)?;
                self.checksum = self.checksum.wrapping_add(sum);
            }
            self.tally(&batch, &dir_values)?;
        }
        Ok(())
    }
}

/// The `[validate] sum` columns of a batch as f64 (None where absent).
fn sum_arrays(
    batch: &RecordBatch,
    cols: &[String],
) -> Result<Vec<Option<Float64Array>>, SinkError> {
    let schema = batch.schema();
    cols.iter()
        .map(|c| match schema.index_of(c) {
            Ok(i) => {
                let a: ArrayRef = cast(batch.column(i), &DataType::Float64)?;
                Ok(a.as_any().downcast_ref::<Float64Array>().cloned())
            }
            Err(_) => Ok(None),
        })
        .collect()
}

#[async_trait]
impl ChunkWriter for Measure {
    async fn write(&mut self, batch: arrow::array::RecordBatch) -> Result<(), SinkError> {
        self.observe(&batch)
    }

    async fn finish(self: Box<Self>) -> Result<Staged, SinkError> {
        Ok(Staged::default())
    }

    async fn abort(self: Box<Self>) {}
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

impl Backfill {
    /// Reconciles the target with the source, chunk by chunk (and per group).
    pub async fn validate(&self, opts: ValidateOptions) -> Result<ValidateReport, Error> {
        let job = self.open().await?;
        let spec = &job.spec;
        for g in &opts.group_by {
            if job.transformed.field_with_name(g).is_err() {
                return Err(Error::Usage(format!(
                    "--group-by {g}: no such column in the transformed rows (columns: {})",
                    job.transformed
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for col in &spec.validate.sum {
            match job.transformed.field_with_name(col) {
                Ok(f) if f.data_type().is_numeric() => {}
                Ok(f) => {
                    return Err(Error::Usage(format!(
                        "[validate] sum: column \"{col}\" is {}, not numeric",
                        f.data_type()
                    )));
                }
                Err(_) => {
                    return Err(Error::Usage(format!(
                        "[validate] sum: no column \"{col}\" in the transformed rows"
                    )));
                }
            }
        }
        let (records, files): (BTreeMap<String, ChunkRecord>, BTreeMap<String, Vec<String>>) =
            match crate::runner::open_state_existing(spec)? {
                Some(s) => (
                    s.chunks()?.into_iter().map(|c| (c.id.clone(), c)).collect(),
                    s.committed_files()?,
                ),
                None => (BTreeMap::new(), BTreeMap::new()),
            };
        let index = dedup_index(&job, false).await?;
        let recorded: std::collections::HashSet<&str> = files
            .values()
            .flatten()
            .filter(|f| !f.starts_with(QUARANTINE_PREFIX))
            .map(String::as_str)
            .collect();
        let unaccounted = unaccounted_rows(&job, &recorded).await?;
        let selected: Vec<&Chunk> = job
            .chunks
            .iter()
            .filter(|c| opts.chunks.is_empty() || opts.chunks.contains(&c.id))
            .filter(|c| c.overlaps(opts.from, opts.to))
            .collect();
        if !opts.chunks.is_empty() {
            for id in &opts.chunks {
                if !job.chunks.iter().any(|c| &c.id == id) {
                    return Err(Error::Usage(format!(
                        "--chunks: no chunk {id} in this job's plan"
                    )));
                }
            }
        }
        let sum_cols = spec.validate.sum.clone();
        let mut checks = Vec::new();
        let mut groups: BTreeMap<Vec<String>, GroupCheck> = BTreeMap::new();
        for chunk in selected {
            let (check, per_group) = check_chunk(
                &job,
                &opts,
                index.as_deref(),
                chunk,
                records.get(&chunk.id),
                files.get(&chunk.id),
                unaccounted.get(&chunk.id),
            )
            .await?;
            for (key, g) in per_group {
                let entry = groups.entry(key.clone()).or_insert_with(|| GroupCheck {
                    group: key,
                    source: 0,
                    target: 0,
                    quarantined: 0,
                    removed: 0,
                    expected_target: 0,
                    sums: BTreeMap::new(),
                    chunks: Vec::new(),
                    ok: true,
                });
                entry.source += g.source;
                entry.target += g.target;
                entry.quarantined += g.quarantined;
                entry.removed += g.removed;
                entry.expected_target += g.expected_target;
                for (col, (e, a)) in g.sums {
                    let s = entry.sums.entry(col).or_insert((0.0, 0.0));
                    s.0 += e;
                    s.1 += a;
                }
                if !g.ok {
                    entry.ok = false;
                    entry.chunks.extend(g.chunks);
                }
            }
            checks.push(check);
        }
        let ok = checks.iter().all(|c| c.problems.is_empty()) && groups.values().all(|g| g.ok);
        let null_range_rows = match &job.range {
            Some(r) => local::count_null_range(&job.source, r, &job.config, &job.runtime)
                .await
                .map_err(|source| crate::source::SourceError::Read {
                    shown: job.source.describe(),
                    source,
                })?,
            None => 0,
        };
        Ok(ValidateReport {
            job: spec.name.clone(),
            group_by: opts.group_by.clone(),
            sum_columns: sum_cols,
            chunks: checks,
            groups: groups.into_values().collect(),
            null_range_rows,
            ok,
        })
    }
}

/// Rows that readers of a file target see in each chunk's range, in files no
/// commit of this job recorded (another writer's, a stray copy, a file a
/// lost state left): per chunk id, the rows and the files. Only the range
/// column of such files is read; there are none after a clean run.
async fn unaccounted_rows(
    job: &OpenJob,
    recorded: &std::collections::HashSet<&str>,
) -> Result<BTreeMap<String, (u64, Vec<String>)>, Error> {
    let mut out: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let Some(visible) = job.sinks.target.visible_files().await? else {
        return Ok(out);
    };
    // A file named by another backfill job is that job's to account for:
    // jobs that share a Parquet folder each own their files (EU and US
    // sources into one table). A copy of one of this job's files, or a
    // file no job of ours named, is a stray.
    let ours = crate::sink::job_tag(&job.spec.name);
    let strays: Vec<String> = visible
        .into_iter()
        .filter(|f| !recorded.contains(f.as_str()))
        .filter(|f| crate::sink::tag_of(f).is_none_or(|t| t == ours))
        .collect();
    if strays.is_empty() {
        return Ok(out);
    }
    let column = job.range.as_ref().map(|r| r.name.as_str());
    let in_dirs = column.is_some_and(|c| job.spec.target.partition_by.iter().any(|p| p == c));
    let sink = job.sinks.target.as_ref();
    for rel in strays {
        let what = format!("{}: reading {rel}", sink.describe());
        let read = |e: Box<dyn std::error::Error + Send + Sync>| {
            Error::Sink(SinkError::read(what.clone())(e))
        };
        let file = sink.open_file(&rel).await?;
        let builder = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(|e| read(e.into()))?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        match column {
            None => {
                if let Some(c) = job.chunks.first() {
                    counts.insert(c.id.clone(), rows);
                }
            }
            Some(col) if in_dirs => {
                let escaped = escape_partition_value(col);
                let value = rel
                    .split('/')
                    .filter_map(|seg| seg.split_once('='))
                    .find(|(k, _)| *k == escaped)
                    .map(|(_, v)| unescape_partition_value(v));
                if let Some(c) = value.as_deref().and_then(|v| chunk_of_text(&job.chunks, v)) {
                    counts.insert(c.id.clone(), rows);
                }
            }
            Some(col) => {
                let Some(idx) = builder
                    .schema()
                    .fields()
                    .iter()
                    .position(|f| f.name() == col)
                else {
                    continue;
                };
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
                let mut stream = builder
                    .with_projection(mask)
                    .build()
                    .map_err(|e| read(e.into()))?;
                while let Some(batch) = stream.try_next().await.map_err(|e| read(e.into()))? {
                    let array = batch.column(0);
                    if job.chunks.iter().any(|c| c.value.is_some()) {
                        let text = cast(array, &DataType::Utf8).map_err(|e| read(e.into()))?;
                        let text = text
                            .as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .ok_or_else(|| read("not text".into()))?;
                        for v in text.iter().flatten() {
                            if let Some(c) = chunk_of_text(&job.chunks, v) {
                                *counts.entry(c.id.clone()).or_default() += 1;
                            }
                        }
                        continue;
                    }
                    let (values, _) =
                        crate::sink::range_files::comparable(array).map_err(|e| read(e.into()))?;
                    let values = values
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .ok_or_else(|| read("not comparable".into()))?;
                    for v in values.iter().flatten() {
                        if let Some(c) = chunk_of_value(&job.chunks, v) {
                            *counts.entry(c.id.clone()).or_default() += 1;
                        }
                    }
                }
            }
        }
        for (chunk, n) in counts {
            let e = out.entry(chunk).or_default();
            e.0 += n;
            e.1.push(rel.clone());
        }
    }
    Ok(out)
}

/// The chunk whose range holds `v` (chunks are sorted and tile the range).
fn chunk_of_value(chunks: &[Chunk], v: i64) -> Option<&Chunk> {
    if chunks.len() == 1 && chunks[0].lo.is_none() && chunks[0].hi.is_none() {
        return chunks.first();
    }
    let after = chunks.partition_point(|c| c.lo.is_none_or(|lo| lo.raw() <= v));
    let c = chunks.get(after.checked_sub(1)?)?;
    c.hi.is_none_or(|hi| v < hi.raw()).then_some(c)
}

/// The chunk a range value written as text (a partition directory, a
/// partition chunk's value) falls in.
fn chunk_of_text<'a>(chunks: &'a [Chunk], text: &str) -> Option<&'a Chunk> {
    if let Some(c) = chunks.iter().find(|c| c.value.as_deref() == Some(text)) {
        return Some(c);
    }
    let kind = chunks.iter().find_map(|c| c.lo.or(c.hi))?.kind();
    let v = match kind {
        backfill_core::ValueKind::Int => text.trim().parse().ok()?,
        backfill_core::ValueKind::Time => backfill_core::interval::parse_time(text).ok()?,
    };
    chunk_of_value(chunks, v)
}

async fn check_chunk(
    job: &OpenJob,
    opts: &ValidateOptions,
    index: Option<&crate::dedup::ChunkIndexes>,
    chunk: &Chunk,
    record: Option<&ChunkRecord>,
    files: Option<&Vec<String>>,
    unaccounted: Option<&(u64, Vec<String>)>,
) -> Result<(ChunkCheck, BTreeMap<Vec<String>, GroupCheck>), Error> {
    let spec = &job.spec;
    // A merged Delta chunk was staged (and checksummed) unpartitioned.
    let parts: &[String] = if spec.target.merge_keys.is_empty() {
        &spec.target.partition_by
    } else {
        &[]
    };
    let sums = &spec.validate.sum;
    // Checksums are compared with the commit's, so they use its definition.
    let version = match record.and_then(|r| r.metrics.as_ref()) {
        Some(m) => ChecksumVersion::from_recorded(m.checksum_version).ok_or_else(|| {
            Error::Usage(format!(
                "chunk {} was committed with checksum version {}, which this release does not know; \
                 validate it with the release that ran it, or run the chunk again",
                chunk.id, m.checksum_version
            ))
        })?,
        None => ChecksumVersion::CURRENT,
    };
    let mut all = Measure::new(parts, &opts.group_by, sums, None);
    let mut target = Measure::new(parts, &opts.group_by, sums, Some(version));
    let mut quarantine = Measure::new(parts, &opts.group_by, &[], None);
    let query = ChunkQuery {
        spec,
        source: &job.source,
        range: job.range.as_ref(),
        config: &job.config,
        runtime: &job.runtime,
        index: index.map(|i| i.for_chunk(chunk.index)).transpose()?,
        run_id: 0,
        hold_back: job.memory.hold_back(1),
        spill_dir: spec.state.path.parent(),
    };
    let stats =
        match local::measure_chunk(&query, chunk, &mut target, &mut quarantine, &mut all).await {
            Ok(s) => s,
            // A fail rule or max_ratio still lets us count; other errors stop validation.
            Err(ChunkError::RuleFailed { .. } | ChunkError::TooManyRejected { .. }) => {
                ExecStats::default()
            }
            Err(e) => return Err(Error::Usage(format!("validating chunk {}: {e}", chunk.id))),
        };

    let mut actual = Measure::new(parts, &opts.group_by, sums, Some(version));
    let mut actual_q = Measure::new(parts, &opts.group_by, &[], None);
    let mut problems = Vec::new();
    // A database target (or a merged Delta table) is read back by the
    // chunk's slice; a file target by the files its commit recorded.
    let mut from_files = (true, true);
    match job.sinks.target.read_chunk(chunk).await {
        Ok(Some(t)) => {
            from_files.0 = false;
            if let Err(e) = actual.observe_stream(t, target.schema.clone()).await {
                problems.push(format!("cannot read the chunk's rows back: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => {
            from_files.0 = false;
            problems.push(format!("cannot read the chunk's rows back: {e}"));
        }
    }
    match job.sinks.quarantine.read_chunk(chunk).await {
        Ok(Some(q)) => {
            from_files.1 = false;
            if let Err(e) = actual_q.observe_stream(q, None).await {
                problems.push(format!(
                    "cannot read the chunk's quarantined rows back: {e}"
                ));
            }
        }
        Ok(None) => {}
        Err(e) => {
            from_files.1 = false;
            problems.push(format!(
                "cannot read the chunk's quarantined rows back: {e}"
            ));
        }
    }
    for f in files.map(Vec::as_slice).unwrap_or_default() {
        let result = match f.strip_prefix(QUARANTINE_PREFIX) {
            Some(q) if from_files.1 => {
                actual_q
                    .observe_file(job.sinks.quarantine.as_ref(), q)
                    .await
            }
            None if from_files.0 => actual.observe_file(job.sinks.target.as_ref(), f).await,
            _ => continue,
        };
        if let Err(e) = result {
            problems.push(format!("cannot read committed file {f}: {e}"));
        }
    }

    if let Some((rows, examples)) = unaccounted {
        problems.push(format!(
            "{rows} row(s) in this chunk's range are in {} file(s) that no commit of this job recorded, \
             and readers of the target see them (e.g. {}): another writer's files or stray copies; \
             replace owns only this job's files, so remove them from the target",
            examples.len(),
            examples.first().map(String::as_str).unwrap_or_default()
        ));
    }
    let status = record.map(|r| r.status).unwrap_or(ChunkStatus::Pending);
    let m = record.and_then(|r| r.metrics.clone());
    let committed =
        status == ChunkStatus::Committed || (m.is_some() && status != ChunkStatus::Pending);
    if status != ChunkStatus::Committed {
        problems.push(match (&m, status) {
            (Some(_), s) => format!("chunk is {s}; its last committed version is checked below"),
            (None, s) => format!(
                "chunk was never committed (status: {s}); {} source rows are not in the target",
                stats.rows_read
            ),
        });
    }
    if let Some(m) = &m {
        if actual.rows != m.rows_written || actual.checksum != m.checksum {
            problems.push(format!(
                "target files differ from the commit: {} rows now, {} committed (checksum {} vs {}); a file was deleted or altered",
                actual.rows,
                m.rows_written,
                hex(actual.checksum),
                hex(m.checksum)
            ));
        }
        if actual_q.rows != m.rows_quarantined {
            problems.push(format!(
                "quarantine files hold {} rows, {} committed",
                actual_q.rows, m.rows_quarantined
            ));
        }
        if stats.rows_read != m.rows_read {
            problems.push(format!(
                "the source has {} rows in this range now, {} when the chunk ran; run it again",
                stats.rows_read, m.rows_read
            ));
        } else if target.rows != m.rows_written || target.checksum != m.checksum {
            problems.push(format!(
                "running the chunk now would write {} rows (checksum {}), {} were committed (checksum {}); the source or the dedup winners changed",
                target.rows,
                hex(target.checksum),
                m.rows_written,
                hex(m.checksum)
            ));
        }
        let removed = m.rows_dropped + m.duplicates;
        if all.rows != actual.rows + actual_q.rows + removed {
            problems.push(format!(
                "rows do not add up: {} from the transform = {} target + {} quarantined + {} dropped + {} duplicates is false",
                all.rows, actual.rows, actual_q.rows, m.rows_dropped, m.duplicates
            ));
        }
    }
    let mut sum_pairs = BTreeMap::new();
    for (i, col) in sums.iter().enumerate() {
        let e: f64 = target
            .groups
            .values()
            .map(|t| t.sums.get(i).copied().unwrap_or(0.0))
            .sum();
        let a: f64 = actual
            .groups
            .values()
            .map(|t| t.sums.get(i).copied().unwrap_or(0.0))
            .sum();
        if committed && !close(e, a) {
            problems.push(format!(
                "sum({col}) is {a} in the target, {e} expected from the source"
            ));
        }
        sum_pairs.insert(col.clone(), (e, a));
    }

    // Per group: source = target + quarantined + (dropped + duplicates).
    let mut per_group: BTreeMap<Vec<String>, GroupCheck> = BTreeMap::new();
    if !opts.group_by.is_empty() {
        let keys: std::collections::BTreeSet<Vec<String>> = all
            .groups
            .keys()
            .chain(actual.groups.keys())
            .chain(actual_q.groups.keys())
            .cloned()
            .collect();
        let zero = Tally::default();
        for key in keys {
            let src = all.groups.get(&key).unwrap_or(&zero);
            let exp_t = target.groups.get(&key).unwrap_or(&zero);
            let exp_q = quarantine.groups.get(&key).unwrap_or(&zero);
            let act_t = actual.groups.get(&key).unwrap_or(&zero);
            let act_q = actual_q.groups.get(&key).unwrap_or(&zero);
            let removed = src.rows.saturating_sub(exp_t.rows + exp_q.rows);
            let mut sums_g = BTreeMap::new();
            let mut ok = src.rows == act_t.rows + act_q.rows + removed;
            for (i, col) in sums.iter().enumerate() {
                let e = exp_t.sums.get(i).copied().unwrap_or(0.0);
                let a = act_t.sums.get(i).copied().unwrap_or(0.0);
                ok &= close(e, a);
                sums_g.insert(col.clone(), (e, a));
            }
            per_group.insert(
                key.clone(),
                GroupCheck {
                    group: key,
                    source: src.rows,
                    target: act_t.rows,
                    quarantined: act_q.rows,
                    removed,
                    expected_target: exp_t.rows,
                    sums: sums_g,
                    chunks: if ok {
                        Vec::new()
                    } else {
                        vec![chunk.id.clone()]
                    },
                    ok,
                },
            );
        }
        let bad: Vec<String> = per_group
            .values()
            .filter(|g| !g.ok)
            .map(|g| g.group.join("/"))
            .collect();
        if !bad.is_empty() {
            problems.push(format!("groups that do not reconcile: {}", bad.join(", ")));
        }
    }
    Ok((
        ChunkCheck {
            index: chunk.index,
            id: chunk.id.clone(),
            bounds: chunk.bounds(),
            status,
            source_rows: stats.rows_read,
            expected_rows_in: all.rows,
            expected_target: target.rows,
            expected_quarantined: quarantine.rows,
            expected_removed: all.rows.saturating_sub(target.rows + quarantine.rows),
            expected_checksum: hex(target.checksum),
            target_rows: actual.rows,
            unaccounted_rows: unaccounted.map_or(0, |u| u.0),
            target_checksum: hex(actual.checksum),
            quarantined_rows: actual_q.rows,
            recorded_rows_read: m.as_ref().map(|m| m.rows_read),
            recorded_written: m.as_ref().map(|m| m.rows_written),
            recorded_quarantined: m.as_ref().map(|m| m.rows_quarantined),
            recorded_dropped: m.as_ref().map(|m| m.rows_dropped),
            recorded_duplicates: m.as_ref().map(|m| m.duplicates),
            recorded_checksum: m.as_ref().map(|m| hex(m.checksum)),
            sums: sum_pairs,
            problems,
        },
        per_group,
    ))
}
