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
use crate::hive::{escape_partition_value, partition_value};

use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::AsyncFileReader;
use tokio::io::AsyncWriteExt;

use super::rowgroups::RowGroupWriter;
use super::{
    ChunkWriter, Evolve, Ownership, ReadBack, Sink, SinkError, Staged, Target, TargetFiles,
};
use crate::dedup::holdback::{MAX_LEVEL, Pending, Spill};
use crate::failpoint;
use crate::memory::WriterMemory;
use crate::store::Remote;

mod names;
mod read;
mod rewrite;
mod writer;

use names::*;
pub use names::{job_tag, partition_seed, stamp_of, tag_of};
pub use rewrite::Rewritten;
use writer::*;

/// The smallest row group many open files are given: below it, more
/// partitions wait for a later round instead.
const MIN_GROUP_BYTES: usize = 256 * 1024;

fn spill_err(e: datafusion::error::DataFusionError) -> SinkError {
    SinkError::Spill(e.to_string())
}

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
                    SinkError::Invalid(format!("{}: not an absolute local path", root.display()))
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
    /// `[target] max_file_rows`.
    max_file_rows: Option<u64>,
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
            max_file_rows: spec.max_file_rows,
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

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        path: path.to_path_buf(),
        source,
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
            max_file_rows: self.max_file_rows,
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

#[async_trait]
impl Evolve for ParquetSink {
    fn derived_columns(&self) -> Vec<String> {
        self.partition_by.clone()
    }
}

/// A folder owns no range: its files carry the job's tag.
impl Ownership for ParquetSink {}

impl Target for ParquetSink {
    fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests;
