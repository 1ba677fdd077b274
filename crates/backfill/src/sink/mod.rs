//! Where rows go. A sink writes one chunk attempt under names readers skip,
//! then publishes it once the state store has recorded the commit (see the
//! protocol in `backfill_core::state`).

pub mod checksum;
pub mod delta;
mod parquet;
pub mod postgres;
pub(crate) mod range_files;
mod rowgroups;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use backfill_core::ErrorClass;
use backfill_core::interval::RangeValue;
use backfill_core::plan::Chunk;
use backfill_core::spec::OrderKey;
use backfill_core::spec::TargetFormat;
use backfill_core::state::OwnedFile;

use postgres::PgSink;

pub use parquet::{Location, ParquetSink, Rewritten, job_tag, partition_seed, stamp_of, tag_of};

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
    #[error(transparent)]
    Postgres(#[from] crate::pg::PgError),
    /// Reading the target back (for `validate`, `gaps`, a rewrite or a
    /// merge) failed; its cause decides whether to try again.
    #[error("{what}: {source}")]
    Read {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A target that cannot serve what was asked of it.
    #[error("{0}")]
    Invalid(String),
    #[error("spilling rows to disk: {0}")]
    Spill(String),
    #[error(transparent)]
    Delta(#[from] delta::DeltaError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
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
                | std::io::ErrorKind::NotADirectory
                | std::io::ErrorKind::IsADirectory
                | std::io::ErrorKind::InvalidInput => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
            SinkError::Parquet { source, .. } => match source {
                ::parquet::errors::ParquetError::External(e) if e.is::<std::io::Error>() => {
                    ErrorClass::Transient
                }
                _ => ErrorClass::Permanent,
            },
            SinkError::WriterGone | SinkError::Spill(_) => ErrorClass::Transient,
            SinkError::Postgres(e) => e.class(),
            SinkError::Store(e) => e.class(),
            SinkError::Delta(e) => e.class(),
            SinkError::Injected(i) => i.class,
            SinkError::Read { source, .. } => read_class(source.as_ref()),
            _ => ErrorClass::Permanent,
        }
    }
}

impl SinkError {
    /// A read-back failure of `what`, keeping its cause.
    pub fn read<E>(what: impl Into<String>) -> impl FnOnce(E) -> SinkError
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let what = what.into();
        move |e| SinkError::Read {
            what,
            source: e.into(),
        }
    }
}

/// A read-back failure is worth another try when something in its chain
/// of causes is: I/O, an object store's transient answer, a lost
/// PostgreSQL connection.
fn read_class(e: &(dyn std::error::Error + 'static)) -> ErrorClass {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return ErrorClass::Transient;
        }
        if let Some(d) = e.downcast_ref::<datafusion::error::DataFusionError>()
            && matches!(
                d,
                datafusion::error::DataFusionError::IoError(_)
                    | datafusion::error::DataFusionError::ObjectStore(_)
            )
        {
            return ErrorClass::Transient;
        }
        if let Some(p) = e.downcast_ref::<crate::pg::PgError>() {
            return p.class();
        }
        if let Some(s) = e.downcast_ref::<crate::store::StoreError>() {
            return s.class();
        }
        cur = e.source();
    }
    ErrorClass::Permanent
}

/// The files one attempt wrote, not yet visible to readers.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub files: Vec<OwnedFile>,
    pub rows: u64,
    pub bytes: u64,
    /// See [`checksum`] (its current version); 0 when the sink does not
    /// checksum.
    pub checksum: u64,
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

/// A range `[lo, hi)` of the range column.
pub type Footprint = (RangeValue, RangeValue);

/// A footprint as stored: `lo|hi`, each bound as the state encodes it.
pub fn encode_footprint(f: Footprint) -> String {
    let enc = |v| backfill_core::state::encode_bound(Some(v)).unwrap_or_default();
    format!("{}|{}", enc(f.0), enc(f.1))
}

pub fn decode_footprint(s: &str) -> Option<Footprint> {
    let (lo, hi) = s.split_once('|')?;
    let dec = |b: &str| {
        backfill_core::state::decode_bound(Some(b.to_string()))
            .ok()
            .flatten()
    };
    Some((dec(lo)?, dec(hi)?))
}

/// What [`Sink::foreign_writes`] found.
#[derive(Debug, Default)]
pub struct ForeignWrites {
    /// Where the look ended: the next one starts after it.
    pub mark: String,
    /// Indexes (in the plan) of the committed chunks whose range another
    /// writer added rows to or removed rows from after this job's last
    /// commit of the chunk.
    pub touched: Vec<usize>,
}

/// What every target is: something shown in messages by a name that
/// carries no secret.
pub trait Target: Send + Sync + std::fmt::Debug {
    fn describe(&self) -> String;
}

/// A target a run writes: stage a chunk's rows, publish them after the
/// commit, clean up what a crash or a replan left. Reading back, the range
/// a target owns and schema changes are traits of their own, which every
/// target implements (their defaults fit targets that need nothing there).
#[async_trait]
pub trait Sink: Target + Ownership + ReadBack + Evolve {
    async fn begin(&self, chunk: &Chunk, attempt: u32) -> Result<Box<dyn ChunkWriter>, SinkError>;
    /// What each chunk writer may keep in memory and open from now on
    /// (writers that stream elsewhere ignore it).
    fn set_writer_memory(&self, _memory: crate::memory::WriterMemory) {}
    /// Makes staged files visible. Idempotent: files already published are
    /// left alone, so recovery can call it again after a crash.
    async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError>;
    /// For a database target: its URL and the SQL that publishes `files`, so
    /// that a state store in the same database commits and publishes in one
    /// transaction. `None` for targets without transactions.
    async fn publish_statements(
        &self,
        chunk: &Chunk,
        files: &[OwnedFile],
    ) -> Result<Option<(String, String)>, SinkError> {
        let _ = (chunk, files);
        Ok(None)
    }
    /// Deletes files (relative paths); missing ones are not an error.
    async fn remove(&self, paths: &[String]) -> Result<(), SinkError>;
    /// After a replan retired `retired`, removes what it left in the target
    /// where no chunk of the new plan will replace it: `parts` are the
    /// pieces of its range the new plan does not cover. Idempotent. A
    /// target whose files the state tracks needs nothing: the retired
    /// chunk's files are removed as garbage.
    async fn clear_retired(&self, retired: &Chunk, parts: &[Chunk]) -> Result<(), SinkError> {
        let _ = (retired, parts);
        Ok(())
    }
    /// Lists the files of this tool in the target, to find orphans after a crash.
    async fn scan(&self) -> Result<TargetFiles, SinkError>;
    /// Whether the transformed rows (`rows`) carry what this target needs
    /// to find a chunk's rows in it; the message says what is missing.
    fn check_rows(&self, rows: &arrow::datatypes::Schema, chunks: &[Chunk]) -> Result<(), String> {
        let _ = (rows, chunks);
        Ok(())
    }
    /// An empty chunk still changes this target (a replace deletes the
    /// rows already in its range, which only running the chunk does), so
    /// statistics proving the source empty there do not spare the scan.
    fn empty_chunks_change_it(&self) -> bool {
        false
    }
}

/// The range a job owns in a target that records it itself, and the
/// changes other writers made there (Delta tables, PostgreSQL replace).
#[async_trait]
pub trait Ownership: Target {
    /// The range this job's rows in the target may lie in, as the target
    /// itself records it (so it survives a lost state): `None` when the
    /// target keeps none (yet), or owns no ranges (a Parquet folder, whose
    /// files carry the job's tag; merge mode).
    async fn footprint(&self) -> Result<Option<Footprint>, SinkError> {
        Ok(None)
    }
    /// Records `range` as the footprint: at once when the table exists,
    /// else as the table is created.
    async fn set_footprint(&self, range: Footprint) -> Result<(), SinkError> {
        let _ = range;
        Ok(())
    }
    /// The chunks among `committed` whose range another writer changed in
    /// the target since `since` (a mark this method returned before), and
    /// the mark to keep for the next look. `None` when the target cannot
    /// tell (a Parquet folder, whose replace owns only the job's files; a
    /// PostgreSQL table, which keeps no change log; merge mode, which never
    /// owns a range).
    async fn foreign_writes(
        &self,
        since: Option<&str>,
        committed: &[Chunk],
    ) -> Result<Option<ForeignWrites>, SinkError> {
        let _ = (since, committed);
        Ok(None)
    }
}

/// Reading the target back, for `validate`, `gaps` and the schema check.
#[async_trait]
pub trait ReadBack: Target {
    /// The whole target as a table, for `gaps` to scan; `None` when it does
    /// not exist yet.
    async fn table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        let _ = ctx;
        Err(SinkError::Invalid(format!(
            "{} cannot be scanned as a table",
            self.describe()
        )))
    }

    /// The target's columns now; `None` while it has none (no table, no
    /// files yet).
    async fn current_schema(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<arrow::datatypes::SchemaRef>, SinkError> {
        Ok(self.table(ctx).await?.map(|t| t.schema()))
    }

    /// Every data file a reader of a file target sees (`.parquet` files,
    /// none under a name starting with `.` or `_`, as DuckDB's globs and
    /// pyarrow read a folder), for `validate` to find files no commit
    /// recorded; `None` for targets read as tables.
    async fn visible_files(&self) -> Result<Option<Vec<String>>, SinkError> {
        Ok(None)
    }

    /// A published file of a file target, for `validate` to read.
    async fn open_file(
        &self,
        rel: &str,
    ) -> Result<Box<dyn ::parquet::arrow::async_reader::AsyncFileReader>, SinkError> {
        Err(SinkError::Invalid(format!(
            "{}: {rel} is not a file this target holds",
            self.describe()
        )))
    }

    /// For a database target: the rows the chunk owns now, read back for
    /// `validate`. `None` for file targets (their files are read instead).
    async fn read_chunk(
        &self,
        chunk: &Chunk,
    ) -> Result<Option<datafusion::physical_plan::SendableRecordBatchStream>, SinkError> {
        let _ = chunk;
        Ok(None)
    }
}

/// Changing the target's schema under `[target] schema`.
#[async_trait]
pub trait Evolve: Target {
    /// Columns the target does not store (Hive partition directories),
    /// left out of schema comparisons.
    fn derived_columns(&self) -> Vec<String> {
        Vec::new()
    }

    /// A database casts values on insert: only a column too narrow for the
    /// new values matters, not a representation that differs.
    fn casts_on_insert(&self) -> bool {
        false
    }

    /// Prepares the target for rows with the accepted differences `diff`
    /// (adds columns, widens types). File targets need nothing: new files
    /// carry the new columns.
    async fn evolve(
        &self,
        rows: &arrow::datatypes::SchemaRef,
        diff: &crate::evolve::SchemaDiff,
    ) -> Result<(), SinkError> {
        let _ = (rows, diff);
        Ok(())
    }
}

/// Files of the quarantine table are recorded in the state store with this
/// prefix, so one chunk commit covers both tables. (`:` is escaped in
/// partition directory names, so no target path can start with it.)
pub const QUARANTINE_PREFIX: &str = "quarantine::";

/// The order that tells a newer version of a key from an older one, for
/// a merge that must never replace a row with an older version: `[target]
/// version_column` (larger is newer), else the `[dedup] order_by` (its
/// first row wins); empty (last writer wins) without either.
pub fn merge_versions(spec: &backfill_core::spec::JobSpec) -> Vec<OrderKey> {
    if let Some(column) = &spec.target.version_column {
        // The larger value is the newer version; a NULL version never wins.
        return vec![OrderKey {
            column: column.clone(),
            descending: true,
            nulls_first: false,
        }];
    }
    spec.dedup
        .as_ref()
        .map(|d| d.order_by.clone())
        .unwrap_or_default()
}

/// SQL, for PostgreSQL and DataFusion alike, that is true when row `new`
/// is at least as new as row `old` by `order` (`new` sorts first or ties
/// in it): the condition under which a merge replaces `old`. Ties replace,
/// so a re-run of the same rows, or a correction at the same version,
/// still lands. `None` for an empty order.
pub fn newer_or_equal(
    order: &[OrderKey],
    new: &str,
    old: &str,
    quote: impl Fn(&str) -> String,
) -> Option<String> {
    if order.is_empty() {
        return None;
    }
    let mut acc: Option<String> = None;
    for key in order.iter().rev() {
        let n = format!("{new}.{}", quote(&key.column));
        let o = format!("{old}.{}", quote(&key.column));
        let op = if key.descending { ">" } else { "<" };
        // Every operand in parentheses: DataFusion's parser (for Delta)
        // binds `IS NOT DISTINCT FROM` looser than `AND`.
        let first = if key.nulls_first {
            format!(
                "((({n} IS NULL) AND ({o} IS NOT NULL)) OR (({n} IS NOT NULL) AND ({o} IS NOT NULL) AND ({n} {op} {o})))"
            )
        } else {
            format!("(({n} IS NOT NULL) AND (({o} IS NULL) OR ({n} {op} {o})))")
        };
        let tie = format!("({n} IS NOT DISTINCT FROM {o})");
        acc = Some(match acc {
            // The last key: a tie in every key replaces.
            None => format!("({first} OR {tie})"),
            Some(rest) => format!("({first} OR ({tie} AND {rest}))"),
        });
    }
    acc
}

/// The target and its quarantine table, as one place to publish into,
/// remove from and scan.
#[derive(Debug, Clone)]
pub struct Sinks {
    pub target: Arc<dyn Sink>,
    pub quarantine: Arc<dyn Sink>,
}

fn split<T: Clone>(
    items: &[T],
    path: impl Fn(&T) -> &str,
    strip: impl Fn(&T) -> T,
) -> (Vec<T>, Vec<T>) {
    let mut target = Vec::new();
    let mut quarantine = Vec::new();
    for item in items {
        if path(item).starts_with(QUARANTINE_PREFIX) {
            quarantine.push(strip(item));
        } else {
            target.push(item.clone());
        }
    }
    (target, quarantine)
}

fn strip(p: &str) -> String {
    p.strip_prefix(QUARANTINE_PREFIX).unwrap_or(p).to_string()
}

impl Sinks {
    pub fn open(spec: &backfill_core::spec::JobSpec) -> Result<Sinks, SinkError> {
        if let (TargetFormat::Postgres, Some(pg), Some(q)) = (
            spec.target.format,
            &spec.target.postgres,
            &spec.quarantine.table,
        ) {
            let range = spec.range.as_ref().map(|r| r.column.as_str());
            let bucket_column = spec
                .range
                .as_ref()
                .and_then(|r| r.buckets.as_ref())
                .map(|b| b.column.as_str());
            let slice = PgSink::mode_slice(pg.mode, &pg.keys, range);
            let target = PgSink::new(
                &pg.url,
                &spec.target.path_shown,
                &pg.table,
                slice,
                range,
                pg.create,
            )
            .with_versions(merge_versions(spec))
            .with_buckets(bucket_column)
            .with_positions(spec.position_column())
            .for_job(&spec.name);
            let quarantine = PgSink::new(
                &pg.url,
                &spec.quarantine.path_shown,
                q,
                postgres::Slice::ChunkColumn,
                range,
                true,
            );
            return Ok(Sinks {
                target: Arc::new(target),
                quarantine: Arc::new(quarantine),
            });
        }
        let target: Arc<dyn Sink> = match spec.target.format {
            TargetFormat::Delta => Arc::new(Arc::new(
                delta::DeltaSink::new(
                    &spec.target,
                    spec.range.as_ref().map(|r| r.column.as_str()),
                    &spec.name,
                )?
                .with_versions(merge_versions(spec)),
            )),
            _ => Arc::new(ParquetSink::new(&spec.target)?.for_job(&spec.name)),
        };
        let q = &spec.quarantine;
        let quarantine: Arc<dyn Sink> = Arc::new(
            ParquetSink::at(
                &spec.target,
                Location::of(&q.path, q.url.as_deref(), &q.path_shown)?,
                q.path_shown.clone(),
                false,
            )?
            .for_job(&spec.name),
        );
        Ok(Sinks { target, quarantine })
    }

    /// Shares each chunk writer's memory out: see [`Sink::set_writer_memory`].
    pub fn set_writer_memory(&self, memory: crate::memory::WriterMemory) {
        self.target.set_writer_memory(memory);
        self.quarantine.set_writer_memory(memory);
    }

    pub fn prefix_quarantine(files: Vec<OwnedFile>) -> Vec<OwnedFile> {
        files
            .into_iter()
            .map(|f| OwnedFile {
                path: format!("{QUARANTINE_PREFIX}{}", f.path),
                staged: format!("{QUARANTINE_PREFIX}{}", f.staged),
            })
            .collect()
    }

    pub async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
        let (t, q) = split(
            files,
            |f| f.path.as_str(),
            |f| OwnedFile {
                path: strip(&f.path),
                staged: strip(&f.staged),
            },
        );
        self.target.publish(chunk, &t).await?;
        self.quarantine.publish(chunk, &q).await
    }

    pub async fn remove(&self, paths: &[String]) -> Result<(), SinkError> {
        let (t, q) = split(paths, |p| p.as_str(), |p| strip(p));
        self.target.remove(&t).await?;
        self.quarantine.remove(&q).await
    }

    /// Both tables' publish statements, when both live in one database.
    pub async fn publish_statements(
        &self,
        chunk: &Chunk,
        files: &[OwnedFile],
    ) -> Result<Option<(String, String)>, SinkError> {
        let (t, q) = split(
            files,
            |f| f.path.as_str(),
            |f| OwnedFile {
                path: strip(&f.path),
                staged: strip(&f.staged),
            },
        );
        let Some((url, mut sql)) = self.target.publish_statements(chunk, &t).await? else {
            return Ok(None);
        };
        match self.quarantine.publish_statements(chunk, &q).await? {
            Some((q_url, q_sql)) if q_url == url => sql.push_str(&q_sql),
            _ => return Ok(None),
        }
        Ok(Some((url, sql)))
    }

    pub async fn scan(&self) -> Result<TargetFiles, SinkError> {
        let mut all = self.target.scan().await?;
        let q = self.quarantine.scan().await?;
        for (chunk, files) in q.published {
            all.published
                .entry(chunk)
                .or_default()
                .extend(files.into_iter().map(|f| format!("{QUARANTINE_PREFIX}{f}")));
        }
        all.staged.extend(
            q.staged
                .into_iter()
                .map(|f| format!("{QUARANTINE_PREFIX}{f}")),
        );
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_back_failure_keeps_its_cause_and_is_retried_only_for_io() {
        // Issue 21: `SinkError::Read(String)` dropped the cause and was never
        // retried, whatever had failed.
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
        let io = SinkError::read("reading back chunk 3")(
            datafusion::error::DataFusionError::IoError(reset),
        );
        assert_eq!(io.class(), ErrorClass::Transient);
        assert!(std::error::Error::source(&io).is_some());
        assert!(
            backfill_core::error_chain(&io).contains("peer reset"),
            "{}",
            backfill_core::error_chain(&io)
        );
        let bad = SinkError::read("reading back chunk 3")("no such column \"x\"");
        assert_eq!(bad.class(), ErrorClass::Permanent);
        assert_eq!(
            bad.to_string(),
            "reading back chunk 3: no such column \"x\""
        );
    }
}
