//! Where rows go. A sink writes one chunk attempt under names readers skip,
//! then publishes it once the state store has recorded the commit (see the
//! protocol in `backfill_core::state`).

mod parquet;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use backfill_core::ErrorClass;
use backfill_core::plan::Chunk;
use backfill_core::spec::{TargetFormat, TargetSpec};
use backfill_core::state::OwnedFile;

pub use parquet::{HIVE_DEFAULT_PARTITION, ParquetSink, escape_partition_value};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: ::parquet::errors::ParquetError,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(
        "target.partition_by: column \"{column}\" is not in the transformed rows (columns: {available})"
    )]
    MissingPartitionColumn { column: String, available: String },
    #[error("partition column \"{column}\" has type {data_type}, which cannot name a directory")]
    BadPartitionType { column: String, data_type: String },
    #[error(
        "file {path} of a committed chunk is missing: neither it nor its staged copy {staged} exists"
    )]
    Lost { path: String, staged: String },
    #[error("the chunk writer stopped unexpectedly")]
    WriterGone,
    #[error("{0}")]
    Injected(#[from] crate::failpoint::Injected),
}

impl SinkError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::InvalidInput => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
            SinkError::Parquet { source, .. } => match source {
                ::parquet::errors::ParquetError::External(e) if e.is::<std::io::Error>() => {
                    ErrorClass::Transient
                }
                _ => ErrorClass::Permanent,
            },
            SinkError::WriterGone => ErrorClass::Transient,
            SinkError::Injected(i) => i.class,
            _ => ErrorClass::Permanent,
        }
    }
}

/// The files one attempt wrote, not yet visible to readers.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub files: Vec<OwnedFile>,
    pub rows: u64,
    pub bytes: u64,
}

/// Receives one chunk attempt's batches.
#[async_trait]
pub trait ChunkWriter: Send {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError>;
    /// Flushes and syncs everything; nothing is visible to readers yet.
    async fn finish(self: Box<Self>) -> Result<Staged, SinkError>;
    /// Gives up the attempt and removes what it wrote.
    async fn abort(self: Box<Self>);
}

/// What a scan of the target found that belongs to this tool.
#[derive(Debug, Default)]
pub struct TargetFiles {
    /// Published data files, by the chunk id in their name.
    pub published: BTreeMap<String, Vec<String>>,
    /// Staged (unpublished) files.
    pub staged: Vec<String>,
}

#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    async fn begin(&self, chunk: &Chunk, attempt: u32) -> Result<Box<dyn ChunkWriter>, SinkError>;
    /// Makes staged files visible. Idempotent: files already published are
    /// left alone, so recovery can call it again after a crash.
    async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError>;
    /// Deletes files (relative paths); missing ones are not an error.
    async fn remove(&self, paths: &[String]) -> Result<(), SinkError>;
    /// Lists the files of this tool in the target, to find orphans after a crash.
    async fn scan(&self) -> Result<TargetFiles, SinkError>;
    fn describe(&self) -> String;
}

pub fn open(spec: &TargetSpec) -> Arc<dyn Sink> {
    match spec.format {
        TargetFormat::Parquet => Arc::new(ParquetSink::new(spec)),
    }
}
