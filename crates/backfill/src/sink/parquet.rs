//! Hive-partitioned Parquet:
//! `root/year=2023/month=1/part-<chunk>-a<attempt>-t<stamp>-<n>.parquet`.
//!
//! A chunk owns the files named after its id. Files are written as
//! `.part-….parquet.inprogress` (hidden from DuckDB's `*.parquet` globs and
//! from pyarrow, which skips `.` and `_` prefixes), fsynced, and published by
//! rename once the commit is recorded. Re-running a chunk publishes its new
//! files, then deletes the old ones: on a plain filesystem there is a short
//! window in which a reader listing the directory may see both.
//!
//! On an object store (`s3://…`) the writer spools each file to a local
//! temporary directory (as Spark's S3A does by default), uploads it under
//! its staged key when the attempt finishes, and publishes it with a
//! server-side copy to the published key. Memory stays bounded by the row
//! group size either way.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use arrow::util::display::array_value_to_string;
use async_trait::async_trait;
use backfill_core::plan::Chunk;
use backfill_core::spec::{Compression, TargetSpec};
use backfill_core::state::OwnedFile;
use parquet::basic::{Compression as PqCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twox_hash::XxHash3_64;

use super::checksum::{ChecksumVersion, RowChecksum, value_hashes};
use crate::dedup::repeats::HashIsKey;

use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::AsyncFileReader;
use tokio::io::AsyncWriteExt;

use super::rowgroups::RowGroupWriter;
use super::{ChunkWriter, Sink, SinkError, Staged, TargetFiles};
use crate::dedup::holdback::{MAX_LEVEL, Pending, Spill};
use crate::failpoint;
use crate::memory::WriterMemory;
use crate::store::Remote;

/// The smallest row group many open files are given: below it, more
/// partitions wait for a later round instead.
const MIN_GROUP_BYTES: usize = 256 * 1024;

fn spill_err(e: datafusion::error::DataFusionError) -> SinkError {
    SinkError::Spill(e.to_string())
}

/// What Hive, Spark, DuckDB and pyarrow call a NULL partition value.
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";
const STAGED_SUFFIX: &str = ".inprogress";
/// Upload part size: S3's minimum is 5 MiB.
const UPLOAD_BUFFER: usize = 8 * 1024 * 1024;

/// Where a file table lives.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Box<Remote>),
}

impl Location {
    /// The location of a table from its job-file settings.
    pub fn of(path: &Path, url: Option<&str>, shown: &str) -> Result<Location, SinkError> {
        match url {
            Some(u) => Ok(Location::Remote(Box::new(Remote::open(u, shown)?))),
            None => Ok(Location::Local(path.to_path_buf())),
        }
    }

    /// As a directory URL (`file:///…` for a local one).
    pub fn url(&self) -> Result<url::Url, SinkError> {
        match self {
            Location::Remote(r) => Ok(r.url.clone()),
            Location::Local(root) => {
                let abs = std::path::absolute(root).map_err(io("resolving", root))?;
                url::Url::from_directory_path(&abs).map_err(|_| {
                    SinkError::Read(format!("{}: not an absolute local path", root.display()))
                })
            }
        }
    }

    /// Whether anything exists under the directory `rel`.
    pub async fn has_dir(&self, rel: &str) -> Result<bool, SinkError> {
        use futures::StreamExt;
        match self {
            Location::Remote(r) => {
                let key = r.key(rel)?;
                match r.store.list(Some(&key)).next().await {
                    None => Ok(false),
                    Some(Ok(_)) => Ok(true),
                    Some(Err(e)) => Err(r.err("listing", &key)(e).into()),
                }
            }
            Location::Local(root) => Ok(root.join(rel).is_dir()),
        }
    }

    /// A directory inside this one.
    pub fn child(&self, name: &str) -> Result<Location, SinkError> {
        match self {
            Location::Local(p) => Ok(Location::Local(p.join(name))),
            Location::Remote(r) => Ok(Location::Remote(Box::new(r.child(name)?))),
        }
    }
}

#[derive(Debug)]
pub struct ParquetSink {
    /// Where attempts write: the table directory, or the local spool of a
    /// remote table.
    root: PathBuf,
    remote: Option<Remote>,
    shown: String,
    partition_by: Vec<String>,
    props: WriterProperties,
    checksum: bool,
    /// See [`job_tag`].
    job_tag: String,
    /// `[target] max_file_size`.
    max_file_size: u64,
    /// Each chunk writer's share of `[run] memory_limit`: bytes (as two
    /// words, set once the run knows how many chunks run at once) and files
    /// open at once.
    memory: [AtomicUsize; 2],
}

impl ParquetSink {
    /// Names files with the tag of job `job`.
    pub fn for_job(mut self, job: &str) -> ParquetSink {
        self.job_tag = job_tag(job);
        self
    }

    /// The target table, which checksums what it writes.
    pub fn new(spec: &TargetSpec) -> Result<ParquetSink, SinkError> {
        let location = Location::of(&spec.path, spec.url.as_deref(), &spec.path_shown)?;
        Self::at(spec, location, spec.path_shown.clone(), true)
    }

    /// Another table with the target's layout and codec (the quarantine).
    pub fn at(
        spec: &TargetSpec,
        location: Location,
        shown: String,
        checksum: bool,
    ) -> Result<ParquetSink, SinkError> {
        let compression = match spec.compression {
            Compression::Zstd(level) => {
                PqCompression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default())
            }
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::Lz4 => PqCompression::LZ4_RAW,
            Compression::Gzip => PqCompression::GZIP(GzipLevel::default()),
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .build();
        let (root, remote) = match location {
            Location::Local(root) => (root, None),
            Location::Remote(r) => {
                let r = *r;
                // One directory per sink: dropping a sink removes its own,
                // and the first sink of a process those of dead processes.
                static SWEEP: std::sync::Once = std::sync::Once::new();
                SWEEP.call_once(sweep_dead_spools);
                (new_spool(&std::env::temp_dir())?, Some(r))
            }
        };
        Ok(ParquetSink {
            root,
            remote,
            shown,
            partition_by: spec.partition_by.clone(),
            props,
            checksum,
            job_tag: job_tag(""),
            max_file_size: spec.max_file_size,
            memory: [
                AtomicUsize::new(WriterMemory::UNBOUNDED.bytes),
                AtomicUsize::new(WriterMemory::UNBOUNDED.max_open),
            ],
        })
    }

    /// What each chunk writer may keep in memory and open.
    pub fn set_writer_memory(&self, m: WriterMemory) {
        self.memory[0].store(m.bytes, Ordering::Relaxed);
        self.memory[1].store(m.max_open, Ordering::Relaxed);
    }

    fn writer_memory(&self) -> WriterMemory {
        WriterMemory {
            bytes: self.memory[0].load(Ordering::Relaxed),
            max_open: self.memory[1].load(Ordering::Relaxed).max(1),
        }
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The table as a URL (`file:///…` for a local one).
    fn url(&self) -> Result<url::Url, SinkError> {
        match &self.remote {
            Some(r) => Ok(r.url.clone()),
            None => Location::Local(self.root.clone()).url(),
        }
    }

    /// The size of a published file.
    pub async fn size(&self, rel: &str) -> Result<u64, SinkError> {
        match &self.remote {
            Some(r) => {
                let key = r.key(rel)?;
                let meta = r
                    .store
                    .head(&key)
                    .await
                    .map_err(r.err("reading size of", &key))?;
                Ok(meta.size)
            }
            None => {
                let abs = self.abs(rel);
                Ok(std::fs::metadata(&abs)
                    .map_err(io("reading size of", &abs))?
                    .len())
            }
        }
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        if self.remote.is_some() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A new spool directory in `tmp`, `backfill-spool-<pid>-<random>`: a name
/// nobody can guess in advance, created (never reused: an existing folder
/// or symlink of that name is refused) with mode 0700, so another local
/// user can neither plant it nor read what is spooled.
fn new_spool(tmp: &Path) -> Result<PathBuf, SinkError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut tries = 0;
    loop {
        let path = tmp.join(format!(
            "backfill-spool-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(io("creating the spool directory", &path)(e)),
        }
    }
}

/// Removes spool directories (`backfill-spool-<pid>-<n>`) of processes that
/// are gone, e.g. killed while uploading.
fn sweep_dead_spools() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("backfill-spool-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !backfill_core::state::process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Copies a spooled file to its key; multipart for large files.
async fn upload(remote: &Remote, local: &Path, rel: &str) -> Result<(), SinkError> {
    let key = remote.key(rel)?;
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(io("reading spooled file", local))?;
    let mut w = object_store::buffered::BufWriter::with_capacity(
        remote.store.clone(),
        key.clone(),
        UPLOAD_BUFFER,
    );
    let copied = match tokio::io::copy(&mut file, &mut w).await {
        Ok(_) => w.shutdown().await,
        Err(e) => Err(e),
    };
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(SinkError::Io {
            op: "uploading",
            path: PathBuf::from(format!("{}/{rel}", remote.shown.trim_end_matches('/'))),
            source: e,
        });
    }
    Ok(())
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `part-<chunk>-a<attempt>-t<stamp>-j<job>-<n>.parquet`. The stamp (when
/// the attempt began, in microseconds since the epoch) keeps names unique
/// when attempt numbers start again at 1 after a state is lost, so a new
/// file never takes the name of one a reader or a Delta log still
/// references. The job tag ([`job_tag`]) lets a job recognise its own files
/// of an earlier plan after its state was lost, when their chunk ids are
/// no longer any chunk's.
fn file_name(chunk_id: &str, attempt: u32, stamp: u64, job: &str, n: usize) -> String {
    format!("part-{chunk_id}-a{attempt}-t{stamp}-j{job}-{n:04}.parquet")
}

/// A short tag of a job's name in its file names (32 bits of its hash).
pub fn job_tag(job: &str) -> String {
    format!("{:08x}", XxHash3_64::oneshot(job.as_bytes()) as u32)
}

/// The job tag in a file name of ours, if it has one (files written
/// before names carried it do not).
pub fn tag_of(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    rest.split('-').find_map(|part| part.strip_prefix('j'))
}

/// The stamp of a file name of ours, if it has one (files written before
/// names carried it do not).
pub fn stamp_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    rest.split('-')
        .find_map(|part| part.strip_prefix('t'))
        .and_then(|t| t.parse().ok())
}

/// Microseconds since the epoch: a new attempt's stamp.
fn stamp_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The chunk id in a published file name, if it is one of ours.
fn chunk_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("part-")?;
    let (id, tail) = rest.split_once('-')?;
    let ours =
        backfill_core::plan::is_chunk_id(id) && tail.starts_with('a') && name.ends_with(".parquet");
    ours.then_some(id)
}

fn staged_name(published: &str) -> String {
    match published.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/.{file}{STAGED_SUFFIX}"),
        None => format!(".{published}{STAGED_SUFFIX}"),
    }
}

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

pub fn partition_value(array: &dyn Array, row: usize) -> Result<String, SinkError> {
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

fn partitionable(dt: &DataType) -> bool {
    dt.is_integer()
        || dt.is_floating()
        || matches!(
            dt,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Decimal128(..)
        )
        || matches!(dt, DataType::Dictionary(_, v) if partitionable(v))
}

/// The seed for rows of a partition directory (`year=2023/month=1/`, or "").
pub fn partition_seed(dir: &str) -> u64 {
    XxHash3_64::oneshot(dir.as_bytes())
}

/// Rows of the first batch a chunk writer samples to choose encodings.
const DICTIONARY_SAMPLE: usize = 8192;
/// Below this many non-null values the sample says too little; the column
/// keeps Parquet's default (dictionary).
const DICTIONARY_MIN_SAMPLE: usize = 512;

/// Turns dictionary encoding off for columns whose sampled values are mostly
/// distinct (ids, timestamps, amounts, e-mails). For those the writer would
/// intern every value, give up only when the dictionary page passes 1 MiB
/// (more than a row group of such values fills), and store a dictionary as
/// large as the data: a third of the encoding time for no gain in size.
/// Decided once per chunk writer from its first batch, as DuckDB decides
/// from a sample; readers see the same values either way.
fn tune_dictionary(
    props: WriterProperties,
    batch: &RecordBatch,
) -> Result<WriterProperties, SinkError> {
    let mut builder = props.into_builder();
    let sample = batch.slice(0, batch.num_rows().min(DICTIONARY_SAMPLE));
    for (field, array) in sample.schema().fields().iter().zip(sample.columns()) {
        let dt = field.data_type();
        if dt.is_nested() || matches!(dt, DataType::Dictionary(..) | DataType::Boolean) {
            continue;
        }
        let values = array.len() - array.null_count();
        if values < DICTIONARY_MIN_SAMPLE {
            continue;
        }
        // Counted by the checksum's value hashes, which are uniform already:
        // a weekly job samples every column of every chunk, and encoding
        // rows to SipHash and compare them was 10% of such a job's
        // instructions at 1M rows. A collision only nudges a heuristic.
        let hashes = value_hashes(array)?;
        let mut distinct: HashSet<u64, BuildHasherDefault<HashIsKey>> =
            HashSet::with_capacity_and_hasher(values, Default::default());
        distinct.extend(
            hashes
                .iter()
                .enumerate()
                .filter(|&(i, _)| array.is_valid(i))
                .map(|(_, h)| *h),
        );
        if distinct.len() * 2 > values {
            let path = parquet::schema::types::ColumnPath::new(vec![field.name().clone()]);
            builder = builder.set_column_dictionary_enabled(path, false);
        }
    }
    Ok(builder.build())
}

/// Splits batches by partition values into one open file per partition.
///
/// At most `memory.max_open` files are open at once, and their row groups
/// share `memory.bytes`. Once that many partitions are open, the rows of
/// any other partition go to spill files on disk, by a hash of their
/// partition values; when the chunk's rows are all in, the open files are
/// closed and each spill file is written out in turn the same way (split
/// again if it still holds too many partitions). A partition thus still
/// gets one file per chunk (more only when row groups fill it), whatever
/// the order of the rows.
struct PartitionedWriter {
    root: PathBuf,
    chunk_id: String,
    attempt: u32,
    stamp: u64,
    job_tag: String,
    props: WriterProperties,
    partition_by: Vec<String>,
    layout: Option<Layout>,
    /// Index `i` names the file `RowGroupWriter` knows as `i` (this round's).
    files: Vec<OwnedFile>,
    by_key: HashMap<Box<[u8]>, usize>,
    /// Files opened in all rounds, which numbers their names.
    opened: usize,
    max_file_size: u64,
    memory: WriterMemory,
    /// Rows of partitions that found no open file, and the rounds to come.
    spill: Option<Spill>,
    pending: Vec<Pending>,
    spill_dir: Option<tempfile::TempDir>,
    spills: u32,
    level: u32,
    /// The closed rounds.
    done: Staged,
    rows: u64,
    /// Every path created, so an abort can remove them all.
    created: Vec<PathBuf>,
    checksum: bool,
    runtime: tokio::runtime::Handle,
}

struct Layout {
    part_cols: Vec<usize>,
    data_cols: Vec<usize>,
    converter: Option<RowConverter>,
    groups: RowGroupWriter,
}

impl PartitionedWriter {
    fn layout(&mut self, batch: &RecordBatch) -> Result<&Layout, SinkError> {
        if self.layout.is_none() {
            let schema = batch.schema();
            let mut part_cols = Vec::new();
            for name in &self.partition_by {
                let idx = schema
                    .index_of(name)
                    .map_err(|_| SinkError::MissingPartitionColumn {
                        column: name.clone(),
                        available: schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let dt = schema.field(idx).data_type();
                if !partitionable(dt) {
                    return Err(SinkError::BadPartitionType {
                        column: name.clone(),
                        data_type: dt.to_string(),
                    });
                }
                part_cols.push(idx);
            }
            let data_cols: Vec<usize> = (0..schema.fields().len())
                .filter(|i| !part_cols.contains(i))
                .collect();
            let data_schema = Arc::new(schema.project(&data_cols)?);
            self.props = tune_dictionary(self.props.clone(), &batch.project(&data_cols)?)?;
            let converter = if part_cols.is_empty() {
                None
            } else {
                Some(RowConverter::new(
                    part_cols
                        .iter()
                        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                        .collect(),
                )?)
            };
            let row_checksum = if self.checksum {
                Some(Arc::new(RowChecksum::new(
                    ChecksumVersion::CURRENT,
                    &data_schema,
                )?))
            } else {
                None
            };
            let mut groups =
                RowGroupWriter::new(self.runtime.clone(), data_schema.clone(), row_checksum);
            groups.set_file_bytes(self.max_file_size);
            self.layout = Some(Layout {
                part_cols,
                data_cols,
                converter,
                groups,
            });
        }
        self.layout.as_ref().ok_or(SinkError::WriterGone)
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.layout(batch)?;
        let Some(layout) = self.layout.as_ref() else {
            return Err(SinkError::WriterGone);
        };
        let data = batch.project(&layout.data_cols)?;
        let Some(converter) = layout.converter.as_ref() else {
            let f = self.file_for(&[], batch, 0)?;
            self.write_to(f, data)?;
            return self.close_if_full(&[], f);
        };
        let part_arrays: Vec<_> = layout
            .part_cols
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let started = std::time::Instant::now();
        let rows = converter.convert_columns(&part_arrays)?;
        // Input is usually sorted by time, so most batches hold one or two
        // partitions: group contiguous runs, then merge runs per key.
        let mut groups: Vec<(Box<[u8]>, Vec<u32>)> = Vec::new();
        let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        for i in 0..batch.num_rows() {
            let key = rows.row(i);
            let same = current.is_some_and(|g| groups[g].0.as_ref() == key.as_ref());
            if !same {
                let g = match index.get(key.as_ref()) {
                    Some(&g) => g,
                    None => {
                        let boxed: Box<[u8]> = key.as_ref().into();
                        groups.push((boxed.clone(), Vec::new()));
                        index.insert(boxed, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                current = Some(g);
            }
            if let Some(g) = current {
                groups[g].1.push(i as u32);
            }
        }
        let mut writing = std::time::Duration::ZERO;
        for (key, idx) in groups {
            if !self.by_key.contains_key(&key) && self.by_key.len() >= self.memory.max_open {
                self.spill_rows(batch, &rows, idx)?;
                continue;
            }
            let first = idx[0] as usize;
            let part = if idx.len() == batch.num_rows() {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(idx))?
            };
            let f = self.file_for(&key, batch, first)?;
            let start = std::time::Instant::now();
            self.write_to(f, part)?;
            self.close_if_full(&key, f)?;
            writing += start.elapsed();
        }
        if let Some(layout) = self.layout.as_mut() {
            let splitting = started.elapsed().saturating_sub(writing);
            let nanos = u64::try_from(splitting.as_nanos()).unwrap_or(u64::MAX);
            layout.groups.note_overhead(nanos, batch.num_rows());
        }
        Ok(())
    }

    /// Closes file `f` of partition `key` once it reached `max_file_size`:
    /// the partition's next rows open another file.
    fn close_if_full(&mut self, key: &[u8], f: usize) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        if layout.groups.is_full(f) {
            layout.groups.close_file(f)?;
            self.by_key.remove(key);
        }
        Ok(())
    }

    /// Sends rows `idx` of `batch` (partition values `keys`) to the spill,
    /// for a later round.
    fn spill_rows(
        &mut self,
        batch: &RecordBatch,
        keys: &arrow::row::Rows,
        idx: Vec<u32>,
    ) -> Result<(), SinkError> {
        if self.spill.is_none() {
            if self.spill_dir.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("backfill-partitions-")
                    .tempdir()
                    .map_err(io("creating a spill directory in", &std::env::temp_dir()))?;
                tracing::info!(
                    "chunk {}: more than {} partitions; the rows of the others wait in {}",
                    self.chunk_id,
                    self.memory.max_open,
                    dir.path().display()
                );
                self.spill_dir = Some(dir);
            }
            if let Some(dir) = &self.spill_dir {
                self.spill = Some(Spill::new(dir.path(), self.spills, self.level));
                self.spills += 1;
            }
        }
        let Some(spill) = self.spill.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        let rows = take_record_batch(batch, &UInt32Array::from(idx.clone()))?;
        spill.write(&rows, keys, &idx).map_err(spill_err)?;
        Ok(())
    }

    fn write_to(&mut self, f: usize, batch: RecordBatch) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        self.rows += batch.num_rows() as u64;
        layout.groups.write(f, batch)
    }

    fn file_for(
        &mut self,
        key: &[u8],
        batch: &RecordBatch,
        row: usize,
    ) -> Result<usize, SinkError> {
        if let Some(&f) = self.by_key.get(key) {
            return Ok(f);
        }
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        let mut dir = String::new();
        for (&col, name) in layout.part_cols.iter().zip(&self.partition_by) {
            let value = partition_value(batch.column(col).as_ref(), row)?;
            dir.push_str(&escape_partition_value(name));
            dir.push('=');
            dir.push_str(&value);
            dir.push('/');
        }
        let published = format!(
            "{dir}{}",
            file_name(
                &self.chunk_id,
                self.attempt,
                self.stamp,
                &self.job_tag,
                self.opened,
            )
        );
        let staged = staged_name(&published);
        let abs_dir = self.root.join(&dir);
        std::fs::create_dir_all(&abs_dir).map_err(io("creating directory", &abs_dir))?;
        let abs = self.root.join(&staged);
        let file = File::create(&abs).map_err(io("creating", &abs))?;
        self.created.push(abs.clone());
        let f = layout
            .groups
            .open(file, abs, self.props.clone(), partition_seed(&dir))?;
        self.files.push(OwnedFile {
            path: published,
            staged,
        });
        self.opened += 1;
        // The open files share the writer's memory.
        let open = layout.groups.open_files().max(1);
        layout
            .groups
            .set_group_bytes((self.memory.bytes / open).max(MIN_GROUP_BYTES));
        self.by_key.insert(key.into(), f);
        Ok(f)
    }

    /// Closes this round's files into `done`; they are durable before the
    /// commit point.
    fn close_round(&mut self) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Ok(());
        };
        let (sizes, checksum) = layout.groups.close_all()?;
        self.done.checksum = self.done.checksum.wrapping_add(checksum);
        for (bytes, owned) in sizes.into_iter().zip(std::mem::take(&mut self.files)) {
            self.done.bytes += bytes;
            self.done.files.push(owned);
        }
        self.by_key.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<Staged, SinkError> {
        loop {
            self.close_round()?;
            if let Some(spill) = self.spill.take() {
                self.pending.extend(spill.close().map_err(spill_err)?.0);
            }
            let Some(next) = self.pending.pop() else {
                break;
            };
            // A round whose spill cannot be split further keeps all its
            // partitions open.
            self.level = next.level;
            if self.level >= MAX_LEVEL {
                self.memory.max_open = usize::MAX;
            }
            let file = File::open(&next.path).map_err(io("reading", &next.path))?;
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)?;
            for batch in reader {
                self.write(&batch?)?;
            }
            let _ = std::fs::remove_file(&next.path);
        }
        let mut staged = std::mem::take(&mut self.done);
        staged.rows = self.rows;
        if let Some(layout) = self.layout.take() {
            layout.groups.finish()?;
        }
        Ok(staged)
    }

    fn cleanup(&self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct ParquetChunkWriter {
    tx: Option<mpsc::Sender<RecordBatch>>,
    worker: Option<JoinHandle<Result<Staged, SinkError>>>,
    aborted: Arc<AtomicBool>,
    chunk_index: usize,
    /// A remote table: the spool directory and where its files go.
    upload: Option<(PathBuf, Remote)>,
}

impl ParquetChunkWriter {
    async fn join(&mut self) -> Result<Staged, SinkError> {
        drop(self.tx.take());
        match self.worker.take() {
            Some(handle) => handle.await.map_err(|_| SinkError::WriterGone)?,
            None => Err(SinkError::WriterGone),
        }
    }
}

#[async_trait]
impl ChunkWriter for ParquetChunkWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        failpoint::hit("write", self.chunk_index)?;
        let Some(tx) = self.tx.as_ref() else {
            return Err(SinkError::WriterGone);
        };
        if tx.send(batch).await.is_err() {
            // The worker stopped early: its error says why.
            return match self.join().await {
                Err(e) => Err(e),
                Ok(_) => Err(SinkError::WriterGone),
            };
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged, SinkError> {
        let staged = self.join().await?;
        let Some((spool, remote)) = &self.upload else {
            return Ok(staged);
        };
        let mut result = Ok(());
        for (i, f) in staged.files.iter().enumerate() {
            let local = spool.join(&f.staged);
            if result.is_ok() {
                result = upload(remote, &local, &f.staged).await;
                if result.is_err() {
                    // What was uploaded is staged garbage for recovery,
                    // but need not wait for it.
                    for done in &staged.files[..i] {
                        if let Ok(key) = remote.key(&done.staged) {
                            let _ = remote.store.delete(&key).await;
                        }
                    }
                }
            }
            let _ = std::fs::remove_file(&local);
        }
        result.map(|()| staged)
    }

    async fn abort(mut self: Box<Self>) {
        self.aborted.store(true, Ordering::SeqCst);
        let _ = self.join().await;
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn begin(&self, chunk: &Chunk, attempt: u32) -> Result<Box<dyn ChunkWriter>, SinkError> {
        std::fs::create_dir_all(&self.root).map_err(io("creating target directory", &self.root))?;
        // Two batches in flight: the query keeps decoding while the worker
        // encodes, and memory stays bounded.
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(2);
        let aborted = Arc::new(AtomicBool::new(false));
        let flag = aborted.clone();
        let mut w = PartitionedWriter {
            root: self.root.clone(),
            chunk_id: chunk.id.clone(),
            attempt,
            stamp: stamp_now(),
            job_tag: self.job_tag.clone(),
            props: self.props.clone(),
            partition_by: self.partition_by.clone(),
            layout: None,
            files: Vec::new(),
            by_key: HashMap::new(),
            opened: 0,
            max_file_size: self.max_file_size,
            memory: self.writer_memory(),
            spill: None,
            pending: Vec::new(),
            spill_dir: None,
            spills: 0,
            level: 0,
            done: Staged::default(),
            rows: 0,
            created: Vec::new(),
            checksum: self.checksum,
            runtime: tokio::runtime::Handle::current(),
        };
        let worker = tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                if let Err(e) = w.write(&batch) {
                    w.cleanup();
                    return Err(e);
                }
            }
            if flag.load(Ordering::SeqCst) {
                w.cleanup();
                return Ok(Staged::default());
            }
            let created = w.created.clone();
            w.finish().inspect_err(|_| {
                for p in &created {
                    let _ = std::fs::remove_file(p);
                }
            })
        });
        Ok(Box::new(ParquetChunkWriter {
            tx: Some(tx),
            worker: Some(worker),
            aborted,
            chunk_index: chunk.index,
            upload: self.remote.clone().map(|r| (self.root.clone(), r)),
        }))
    }

    fn set_writer_memory(&self, memory: WriterMemory) {
        ParquetSink::set_writer_memory(self, memory);
    }

    async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
        if let Some(r) = &self.remote {
            return publish_remote(r, chunk, files).await;
        }
        let mut dirs = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let staged = self.abs(&f.staged);
            let published = self.abs(&f.path);
            match std::fs::rename(&staged, &published) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !published.exists() {
                        return Err(SinkError::Lost {
                            path: f.path.clone(),
                            staged: f.staged.clone(),
                        });
                    }
                }
                Err(e) => return Err(io("publishing", &published)(e)),
            }
            if let Some(d) = published
                .parent()
                .filter(|d| !dirs.iter().any(|x: &PathBuf| x == d))
            {
                dirs.push(d.to_path_buf());
            }
            if i == 0 && files.len() > 1 {
                failpoint::hit("mid_publish", chunk.index)?;
            }
        }
        // Renames are durable once their directories are synced.
        for d in dirs {
            if let Ok(dir) = File::open(&d) {
                dir.sync_all().map_err(io("syncing directory", &d))?;
            }
        }
        Ok(())
    }

    async fn remove(&self, paths: &[String]) -> Result<(), SinkError> {
        if let Some(r) = &self.remote {
            for p in paths {
                let key = r.key(p)?;
                match r.store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(r.err("deleting", &key)(e).into()),
                }
            }
            return Ok(());
        }
        for p in paths {
            let abs = self.abs(p);
            match std::fs::remove_file(&abs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing", &abs)(e)),
            }
        }
        Ok(())
    }

    async fn scan(&self) -> Result<TargetFiles, SinkError> {
        let mut found = TargetFiles::default();
        for (name, rel) in self.list().await? {
            classify(&mut found, &name, rel);
        }
        for files in found.published.values_mut() {
            files.sort();
        }
        found.staged.sort();
        Ok(found)
    }

    async fn visible_files(&self) -> Result<Option<Vec<String>>, SinkError> {
        let mut files: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|(name, rel)| {
                name.ends_with(".parquet")
                    && !rel
                        .split('/')
                        .any(|part| part.starts_with('.') || part.starts_with('_'))
            })
            .map(|(_, rel)| rel)
            .collect();
        files.sort();
        Ok(Some(files))
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }

    /// Published files only: staged ones end in `.inprogress`. Partition
    /// directories become text columns.
    async fn table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        match &self.remote {
            Some(r) => r.register(ctx),
            None if !self.root.exists() => return Ok(None),
            None => {}
        }
        let read = |e: datafusion::error::DataFusionError| {
            SinkError::Read(format!("scanning {}: {e}", self.shown))
        };
        let url = ListingTableUrl::parse(self.url()?.as_str()).map_err(read)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                self.partition_by
                    .iter()
                    .map(|c| (c.clone(), DataType::Utf8))
                    .collect(),
            );
        let schema = match options.infer_schema(&ctx.state(), &url).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("No files found") => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Some(Arc::new(ListingTable::try_new(config).map_err(read)?)))
    }

    /// The union of the published files' schemas, the widest type winning,
    /// from one footer per chunk (a chunk's files share one schema).
    async fn current_schema(
        &self,
        _ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<SchemaRef>, SinkError> {
        use futures::{StreamExt, TryStreamExt};
        let found = self.scan().await?;
        let firsts: Vec<String> = found
            .published
            .values()
            .filter_map(|files| files.first().cloned())
            .collect();
        let schemas: Vec<Schema> = futures::stream::iter(firsts)
            .map(|rel| async move { self.file_schema(&rel).await })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut fields: Vec<arrow::datatypes::Field> = Vec::new();
        for s in schemas {
            for f in s.fields() {
                match fields.iter_mut().find(|x| x.name() == f.name()) {
                    None => fields.push(f.as_ref().clone()),
                    Some(x) => {
                        if crate::evolve::change(x.data_type(), f.data_type())
                            == Some(crate::evolve::Change::Widen)
                        {
                            *x = f.as_ref().clone();
                        }
                    }
                }
            }
        }
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    fn derived_columns(&self) -> Vec<String> {
        self.partition_by.clone()
    }

    async fn open_file(&self, rel: &str) -> Result<Box<dyn AsyncFileReader>, SinkError> {
        match &self.remote {
            Some(r) => {
                let key = r.key(rel)?;
                let meta = r.store.head(&key).await.map_err(r.err("reading", &key))?;
                Ok(Box::new(crate::store::ObjectFile {
                    store: r.store.clone(),
                    key,
                    size: meta.size,
                }))
            }
            None => {
                let abs = self.abs(rel);
                let file = tokio::fs::File::open(&abs)
                    .await
                    .map_err(io("reading", &abs))?;
                Ok(Box::new(file))
            }
        }
    }
}

/// What [`ParquetSink::rewrite_without`] did with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewritten {
    /// No row was in the range: the file stays as it is.
    Untouched,
    /// Every row was: the file goes, and nothing replaces it.
    Emptied,
    /// The other rows were written to the new file (its size).
    Kept { rows: u64, size: u64 },
}

impl ParquetSink {
    /// A published file's footer.
    pub async fn metadata(
        &self,
        rel: &str,
    ) -> Result<Arc<parquet::file::metadata::ParquetMetaData>, SinkError> {
        let mut file = self.open_file(rel).await?;
        file.get_metadata(None)
            .await
            .map_err(|source| SinkError::Parquet {
                path: PathBuf::from(rel),
                source,
            })
    }

    /// Reads the table file `from` and writes its rows that `in_range`
    /// does not select to the file `to`, in the same directory (so with the
    /// same partition values) and with the same schema, streaming one
    /// batch at a time. The new file is fsynced (or uploaded) before this
    /// returns; `from` is left in place, for the caller's commit to remove.
    pub async fn rewrite_without(
        &self,
        from: &str,
        to: &str,
        in_range: impl Fn(&RecordBatch) -> Result<Option<arrow::array::BooleanArray>, String>,
    ) -> Result<Rewritten, SinkError> {
        use futures::TryStreamExt;
        let pq = |path: &str| {
            let path = PathBuf::from(path);
            move |source| SinkError::Parquet { path, source }
        };
        let reader = self.open_file(from).await?;
        let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(pq(from))?;
        let schema = builder.schema().clone();
        let mut stream = builder.build().map_err(pq(from))?;
        // Local: a hidden name beside the final one, renamed once complete.
        // Remote: a spool file, uploaded once complete.
        let local = match &self.remote {
            Some(_) => {
                std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
                self.root
                    .join(format!(".rewrite-{}", to.replace('/', "%2F")))
            }
            None => self.abs(&staged_name(to)),
        };
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let file = File::create(&local).map_err(io("creating", &local))?;
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, schema, Some(self.props.clone()))
                .map_err(pq(to))?;
        let (mut matched, mut kept) = (0u64, 0u64);
        let result: Result<(), SinkError> = async {
            while let Some(batch) = stream.try_next().await.map_err(pq(from))? {
                let mask = in_range(&batch)
                    .map_err(|e| SinkError::Read(format!("{}: {from}: {e}", self.shown)))?;
                let rest = match mask {
                    None => {
                        matched += batch.num_rows() as u64;
                        continue;
                    }
                    Some(m) => {
                        matched += m.true_count() as u64;
                        let keep = arrow::compute::not(&m)?;
                        arrow::compute::filter_record_batch(&batch, &keep)?
                    }
                };
                kept += rest.num_rows() as u64;
                if rest.num_rows() > 0 {
                    writer.write(&rest).map_err(pq(to))?;
                }
            }
            Ok(())
        }
        .await;
        let discard = |local: &Path| {
            let _ = std::fs::remove_file(local);
        };
        if let Err(e) = result {
            discard(&local);
            return Err(e);
        }
        if matched == 0 || kept == 0 {
            drop(writer);
            discard(&local);
            return Ok(if matched == 0 {
                Rewritten::Untouched
            } else {
                Rewritten::Emptied
            });
        }
        let file = writer.into_inner().map_err(pq(to))?;
        file.sync_all().map_err(io("syncing", &local))?;
        let size = file
            .metadata()
            .map_err(io("reading size of", &local))?
            .len();
        drop(file);
        match &self.remote {
            Some(r) => {
                let uploaded = upload(r, &local, to).await;
                discard(&local);
                uploaded?;
            }
            None => {
                let dest = self.abs(to);
                std::fs::rename(&local, &dest).map_err(io("publishing", &dest))?;
            }
        }
        Ok(Rewritten::Kept { rows: kept, size })
    }

    /// A published file's Arrow schema, from its footer.
    async fn file_schema(&self, rel: &str) -> Result<Schema, SinkError> {
        let mut file = self.open_file(rel).await?;
        let pq = |source| SinkError::Parquet {
            path: PathBuf::from(rel),
            source,
        };
        let md = file.get_metadata(None).await.map_err(pq)?;
        let fm = md.file_metadata();
        parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map_err(pq)
    }
}

impl ParquetSink {
    /// Every file under the table, as (file name, path relative to it).
    async fn list(&self) -> Result<Vec<(String, String)>, SinkError> {
        let mut out = Vec::new();
        if let Some(r) = &self.remote {
            use futures::TryStreamExt;
            let mut listing = r.store.list(Some(&r.prefix));
            while let Some(meta) = listing
                .try_next()
                .await
                .map_err(r.err("listing", &r.prefix))?
            {
                if let Some(rel) = r.relative(&meta.location) {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    out.push((name.to_string(), rel.to_string()));
                }
            }
            return Ok(out);
        }
        if !self.root.exists() {
            return Ok(out);
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(io("listing", &dir))?;
            for entry in entries {
                let entry = entry.map_err(io("listing", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Never follow links: the walk stays inside the target.
                let ft = entry.file_type().map_err(io("inspecting", &entry.path()))?;
                let rel_path = format!("{rel}{name}");
                if ft.is_dir() {
                    stack.push((entry.path(), format!("{rel_path}/")));
                } else if ft.is_file() {
                    out.push((name, rel_path));
                }
            }
        }
        Ok(out)
    }
}

/// Sorts one of our files into published (by chunk) or staged.
fn classify(found: &mut TargetFiles, name: &str, rel: String) {
    if let Some(published) = name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(STAGED_SUFFIX))
    {
        if chunk_of(published).is_some() {
            found.staged.push(rel);
        }
    } else if let Some(id) = chunk_of(name) {
        found.published.entry(id.to_string()).or_default().push(rel);
    }
}

/// Object stores have no rename: each staged object is copied to its
/// published key on the server, then deleted. Idempotent like the local
/// publish: a file already copied is recognised by its published key.
async fn publish_remote(r: &Remote, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
    for (i, f) in files.iter().enumerate() {
        let staged = r.key(&f.staged)?;
        let published = r.key(&f.path)?;
        match r.store.copy(&staged, &published).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => match r.store.head(&published).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(SinkError::Lost {
                        path: f.path.clone(),
                        staged: f.staged.clone(),
                    });
                }
                Err(e) => return Err(r.err("reading", &published)(e).into()),
            },
            Err(e) => return Err(r.err("publishing", &published)(e).into()),
        }
        match r.store.delete(&staged).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(r.err("deleting", &staged)(e).into()),
        }
        if i == 0 && files.len() > 1 {
            failpoint::hit("mid_publish", chunk.index)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_is_new_private_and_unguessable() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("temp dir");
        let a = new_spool(tmp.path()).expect("spool");
        let b = new_spool(tmp.path()).expect("spool");
        assert_ne!(a, b);
        for p in [&a, &b] {
            let mode = std::fs::metadata(p).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", p.display());
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let random = name.rsplit('-').next().unwrap_or_default();
            assert_eq!(random.len(), 16, "{name}");
        }
    }
    use arrow::array::ArrayRef;

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

    #[test]
    fn dictionary_only_for_repeating_columns() {
        use arrow::array::{Int64Array, StringArray};
        use parquet::schema::types::ColumnPath;
        let n = 4096;
        let ids = Int64Array::from_iter_values(0..n as i64);
        let status = StringArray::from_iter_values((0..n).map(|i| ["a", "b", "c"][i % 3]));
        // Half the values NULL, the rest distinct: judged on the values.
        let sparse = Int64Array::from_iter((0..n as i64).map(|i| (i % 2 == 0).then_some(i)));
        let few = Int64Array::from_iter((0..n as i64).map(|i| (i < 100).then_some(i)));
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(ids) as ArrayRef),
            ("status", Arc::new(status) as ArrayRef),
            ("sparse", Arc::new(sparse) as ArrayRef),
            ("few", Arc::new(few) as ArrayRef),
        ])
        .unwrap();
        let props = tune_dictionary(WriterProperties::default(), &batch).unwrap();
        let dict = |c: &str| props.dictionary_enabled(&ColumnPath::new(vec![c.to_string()]));
        assert!(!dict("id"));
        assert!(dict("status"));
        assert!(!dict("sparse"));
        // Too few values to judge: Parquet's default stays.
        assert!(dict("few"));
        // A small first batch changes nothing.
        let props = tune_dictionary(WriterProperties::default(), &batch.slice(0, 100)).unwrap();
        assert!(props.dictionary_enabled(&ColumnPath::new(vec!["id".to_string()])));
    }

    #[test]
    fn recognises_its_own_file_names() {
        let name = file_name("0123456789abcdef", 2, 1_733_520_000_123_456, "0badc0de", 7);
        assert_eq!(
            name,
            "part-0123456789abcdef-a2-t1733520000123456-j0badc0de-0007.parquet"
        );
        assert_eq!(tag_of(&format!("y=1/{name}")), Some("0badc0de"));
        assert_eq!(tag_of("part-0123456789ab-a2-0007.parquet"), None);
        assert_eq!(chunk_of(&name), Some("0123456789abcdef"));
        assert_eq!(
            stamp_of(&format!("y=1/{name}")),
            Some(1_733_520_000_123_456)
        );
        // Files written before ids had 64 bits and names a stamp.
        assert_eq!(
            chunk_of("part-0123456789ab-a2-0007.parquet"),
            Some("0123456789ab")
        );
        assert_eq!(stamp_of("part-0123456789ab-a2-0007.parquet"), None);
        assert_eq!(chunk_of("part-0.parquet"), None);
        assert_eq!(chunk_of("data.parquet"), None);
        assert_eq!(
            staged_name("y=1/part-x.parquet"),
            "y=1/.part-x.parquet.inprogress"
        );
    }
}
