//! `format = "delta"` targets: the Hive Parquet writer stages and names the
//! files (`part-<chunk>-a<attempt>-t<stamp>-<n>.parquet`, partition
//! directories), and publishing a chunk is one Delta commit that adds its
//! new files and removes every row the table holds in the chunk's range,
//! whoever wrote it (replaceWhere semantics): files wholly inside the range
//! (by their partition values or statistics) are removed, files across its
//! edge are rewritten without the range's rows. So readers of the table see
//! the old chunk or the new one, never a mix, and a replan, a compaction by
//! another tool or rows another writer appended end with exactly one copy.
//!
//! The commit carries an application transaction (`backfill-<chunk>` at the
//! attempt's stamp), which makes publishing idempotent: recovery that
//! publishes a chunk again finds its version already in the log and stops.
//! Files a commit removes stay on disk for time travel until `VACUUM`.

use backfill_core::ErrorClass;
use std::collections::HashMap;
use std::sync::{Arc, Once};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use backfill_core::plan::Chunk;
use backfill_core::spec::TargetSpec;
use backfill_core::state::OwnedFile;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::TryStreamExt;
use tokio::sync::Mutex;

use super::range_files::{ChunkRange, Overlap};
use super::{
    ChunkWriter, Evolve, ForeignWrites, Location, Ownership, ParquetSink, ReadBack, Rewritten,
    Sink, SinkError, Staged, Target, TargetFiles,
};
use crate::hive::{HIVE_DEFAULT_PARTITION, unescape_partition_value};
use crate::store::Remote;

mod ownership;
mod read;
mod stores;

use stores::*;

#[derive(Debug)]
pub struct DeltaSink {
    /// Replace: the chunk's files, in the table's own layout. Merge: the
    /// chunk's rows staged unpartitioned under `_backfill_staging/`, the
    /// source of its MERGE, deleted once merged.
    files: ParquetSink,
    location: Location,
    shown: String,
    partition_by: Vec<String>,
    /// `mode = "merge"`: the keys; empty for replace.
    merge_keys: Vec<String>,
    range_column: Option<String>,
    /// One Delta commit at a time from this process: chunks touch disjoint
    /// files, but concurrent commits would only retry each other.
    commits: Arc<Mutex<()>>,
    /// The table is known to exist: later chunks need not read the log to
    /// find out.
    created: std::sync::atomic::AtomicBool,
    /// Merge: the order that tells newer versions of a key from older.
    versions: Vec<backfill_core::spec::OrderKey>,
    /// The footprint to record when this process creates the table.
    pending_footprint: std::sync::Mutex<Option<super::Footprint>>,
    /// Written into the `commitInfo` of this job's commits ([`JOB_KEY`]),
    /// so that a later run tells them from other writers'.
    job_tag: String,
}

/// The `commitInfo` key that names the job (by its tag) whose commit it is.
const JOB_KEY: &str = "backfill.job";

/// The table property holding a job's footprint (`backfill.footprint.<tag>`).
fn footprint_key(tag: &str) -> String {
    format!("backfill.footprint.{tag}")
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("delta table {shown}: {source}")]
    Delta {
        shown: String,
        // Boxed: the crate's error is several hundred bytes.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("delta table {shown}: {message}")]
    Invalid { shown: String, message: String },
}

impl DeltaError {
    /// The store failing, or another writer committing the same version
    /// first, may pass; a table that is not what the job needs will not.
    pub fn class(&self) -> ErrorClass {
        match self {
            DeltaError::Delta { source, .. } => match **source {
                deltalake::DeltaTableError::ObjectStore { .. }
                | deltalake::DeltaTableError::Io { .. }
                | deltalake::DeltaTableError::VersionAlreadyExists(_) => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            DeltaError::Invalid { .. } => ErrorClass::Permanent,
        }
    }
}

impl DeltaSink {
    pub fn new(
        spec: &TargetSpec,
        range_column: Option<&str>,
        job: &str,
    ) -> Result<DeltaSink, SinkError> {
        let location = Location::of(&spec.path, spec.url.as_deref(), &spec.path_shown)?;
        if let Location::Remote(_) = &location {
            register_object_store_schemes();
        }
        let files = if spec.merge_keys.is_empty() {
            ParquetSink::at(spec, location.clone(), spec.path_shown.clone(), true)?.for_job(job)
        } else {
            let flat = TargetSpec {
                partition_by: Vec::new(),
                ..spec.clone()
            };
            ParquetSink::at(
                &flat,
                location.child(STAGING)?,
                spec.path_shown.clone(),
                true,
            )?
            .for_job(job)
        };
        Ok(DeltaSink {
            files,
            location,
            shown: spec.path_shown.clone(),
            partition_by: spec.partition_by.clone(),
            merge_keys: spec.merge_keys.clone(),
            range_column: range_column.map(str::to_string),
            commits: Arc::new(Mutex::new(())),
            created: std::sync::atomic::AtomicBool::new(false),
            job_tag: super::job_tag(job),
            versions: Vec::new(),
            pending_footprint: std::sync::Mutex::new(None),
        })
    }

    /// Commit properties naming this job in `commitInfo` ([`JOB_KEY`]):
    /// every commit of the job carries them.
    fn tagged(&self) -> CommitProperties {
        CommitProperties::default().with_metadata([(
            JOB_KEY.to_string(),
            serde_json::Value::String(self.job_tag.clone()),
        )])
    }

    /// Replace by the range column: the table's rows in a range are the
    /// job's, so it keeps a footprint and follows other writers.
    fn owns_ranges(&self) -> bool {
        self.merge_keys.is_empty() && self.range_column.is_some()
    }

    /// Merge replaces a row only with a newer-or-equal version by `order`
    /// ([`super::newer_or_equal`]).
    pub fn with_versions(mut self, order: Vec<backfill_core::spec::OrderKey>) -> Self {
        self.versions = order;
        self
    }

    fn err(&self) -> impl Fn(deltalake::DeltaTableError) -> SinkError + '_ {
        |source| {
            SinkError::Delta(DeltaError::Delta {
                shown: self.shown.clone(),
                source: Box::new(source),
            })
        }
    }

    fn url(&self) -> Result<url::Url, SinkError> {
        self.location.url()
    }

    /// The table, or `None` when it was never created.
    async fn open(&self) -> Result<Option<DeltaTable>, SinkError> {
        if !self.location.has_dir("_delta_log").await? {
            return Ok(None);
        }
        deltalake::open_table(self.url()?)
            .await
            .map(Some)
            .map_err(self.err())
    }

    /// Creates the table with the rows' schema, if nobody has yet.
    async fn ensure(&self, schema: &SchemaRef) -> Result<(), SinkError> {
        use std::sync::atomic::Ordering;
        if self.created.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.commits.lock().await;
        if self.open().await?.is_some() {
            self.created.store(true, Ordering::Release);
            return Ok(());
        }
        if let Location::Local(root) = &self.location {
            std::fs::create_dir_all(root).map_err(|source| SinkError::Io {
                op: "creating",
                path: root.clone(),
                source,
            })?;
        }
        let st: StructType =
            deltalake::kernel::engine::arrow_conversion::TryIntoKernel::try_into_kernel(
                schema.as_ref(),
            )
            .map_err(|e| self.err()(e.into()))?;
        let footprint = self
            .owns_ranges()
            .then(|| {
                *self
                    .pending_footprint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
            .flatten()
            .map(|f| {
                (
                    footprint_key(&self.job_tag),
                    Some(super::encode_footprint(f)),
                )
            });
        CreateBuilder::new()
            .with_location(self.url()?.to_string())
            .with_columns(st.fields().cloned())
            .with_partition_columns(self.partition_by.clone())
            .with_configuration(footprint)
            // Ours is not a Delta property: accept it as an application's.
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(self.err())?;
        self.created.store(true, Ordering::Release);
        Ok(())
    }
}

impl DeltaSink {
    /// One MERGE of the chunk's staged rows on the keys, carrying the
    /// application transaction that makes it idempotent; the staged files
    /// go once it is in the log.
    async fn merge(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
        let Some(attempt) = files.first().and_then(|f| attempt_of(&f.path)) else {
            return Ok(());
        };
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        let _guard = self.commits.lock().await;
        let (table, done) = self.table_for_commit(chunk, Some(attempt)).await?;
        if !done {
            let staging = self.url()?.join(&format!("{STAGING}/")).map_err(|e| {
                SinkError::Delta(DeltaError::Invalid {
                    shown: self.shown.clone(),
                    message: e.to_string(),
                })
            })?;
            let abs: Vec<String> = paths.iter().map(|p| format!("{staging}{p}")).collect();
            let ctx = datafusion::prelude::SessionContext::new();
            if let Location::Remote(r) = &self.location {
                r.register(&ctx);
            }
            let source = ctx
                .read_parquet(abs, datafusion::prelude::ParquetReadOptions::default())
                .await
                .map_err(SinkError::read(format!(
                    "reading the staged rows of chunk {}",
                    chunk.id
                )))?;
            let columns: Vec<String> = source
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
            let predicate = self
                .merge_keys
                .iter()
                .map(|k| format!("target.{0} = source.{0}", q(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let newer = super::newer_or_equal(&self.versions, "source", "target", q);
            let props = self
                .tagged()
                .with_application_transaction(Transaction::new(app_id(chunk), attempt));
            table
                .merge(source, predicate.as_str())
                .with_source_alias("source")
                .with_target_alias("target")
                .with_commit_properties(props)
                .when_matched_update(|mut u| {
                    // Never an older version over a newer one: a re-run of
                    // an earlier window, or chunks finishing out of order.
                    if let Some(newer) = &newer {
                        u = u.predicate(newer.as_str());
                    }
                    for c in &columns {
                        u = u.update(q(c).as_str(), format!("source.{}", q(c)).as_str());
                    }
                    u
                })
                .map_err(self.err())?
                .when_not_matched_insert(|mut i| {
                    for c in &columns {
                        i = i.set(q(c).as_str(), format!("source.{}", q(c)).as_str());
                    }
                    i
                })
                .map_err(self.err())?
                .await
                .map_err(self.err())?;
        }
        self.files.remove(&paths).await
    }
}

impl DeltaSink {
    /// The `add.stats` of one of the table's files: row count and the range
    /// column's bounds, which later chunk publishes (and readers) use.
    async fn stats(&self, rel: &str) -> Result<Option<String>, SinkError> {
        let md = self.files.metadata(rel).await?;
        Ok(super::range_files::stats_json(
            &md,
            self.range_column.as_deref(),
        ))
    }
}

/// The application transaction a chunk's commits carry.
fn app_id(chunk: &Chunk) -> String {
    format!("backfill-{}", chunk.id)
}

impl DeltaSink {
    /// The table a chunk's commit goes into, and whether the log already
    /// holds that commit (the chunk's transaction at `attempt` or later).
    async fn table_for_commit(
        &self,
        chunk: &Chunk,
        attempt: Option<i64>,
    ) -> Result<(DeltaTable, bool), SinkError> {
        let Some(table) = self.open().await? else {
            return Err(SinkError::Lost {
                path: self.shown.clone(),
                staged: "(the Delta table does not exist)".into(),
            });
        };
        let Some(attempt) = attempt else {
            return Ok((table, false));
        };
        let done = table
            .snapshot()
            .map_err(self.err())?
            .transaction_version(table.log_store().as_ref(), &app_id(chunk))
            .await
            .map_err(self.err())?
            .is_some_and(|v| v >= attempt);
        Ok((table, done))
    }
}

/// Where merge mode stages a chunk's rows: inside the table directory, where
/// Delta readers look only at files the log names.
const STAGING: &str = "_backfill_staging";

/// The version of the chunk's application transaction that publishing
/// these files records: the attempt's stamp in their names (when it
/// began, so a later attempt always has a higher one, also after the
/// state was lost and attempts count from 1 again), or the attempt number
/// in names written before they carried a stamp (`part-<chunk>-a<N>-…`),
/// which every stamp exceeds.
fn attempt_of(path: &str) -> Option<i64> {
    if let Some(stamp) = super::stamp_of(path) {
        return i64::try_from(stamp).ok();
    }
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    let (_, tail) = rest.split_once("-a")?;
    tail.split('-').next()?.parse().ok()
}

/// Partition values from a file's directories (`year=2023/month=1/…`).
fn partition_values(path: &str) -> HashMap<String, Option<String>> {
    let mut out = HashMap::new();
    let dirs = path.rsplit_once('/').map_or("", |(d, _)| d);
    for seg in dirs.split('/') {
        if let Some((k, v)) = seg.split_once('=') {
            let value = (v != HIVE_DEFAULT_PARTITION).then(|| unescape_partition_value(v));
            out.insert(unescape_partition_value(k), value);
        }
    }
    out
}

/// Where a data file's rows lie, as the log says.
#[derive(Debug, Clone)]
struct FileRange {
    partition_values: HashMap<String, Option<String>>,
    stats: Option<String>,
}

struct DeltaChunkWriter {
    inner: Box<dyn ChunkWriter>,
    sink: Arc<DeltaSink>,
    chunk: Chunk,
    ensured: bool,
}

#[async_trait]
impl ChunkWriter for DeltaChunkWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        for key in &self.sink.merge_keys {
            let nulls = batch.column_by_name(key).map_or(0, |c| c.null_count());
            if nulls > 0 {
                return Err(SinkError::Delta(DeltaError::Invalid {
                    shown: self.sink.shown.clone(),
                    message: format!(
                        "merge key \"{key}\" is NULL in {nulls} row(s), which never match and would be inserted again by every re-run; quarantine them with a rule such as check = \"{key} IS NOT NULL\""
                    ),
                }));
            }
        }
        if !self.ensured {
            self.sink.ensure(&batch.schema()).await?;
            self.ensured = true;
        }
        self.inner.write(batch).await
    }

    /// Replace mode owns the table's rows by their range column, so every
    /// row a chunk writes must lie in its range: a transform that moves the
    /// column's values would put rows where another chunk's publish
    /// removes them. Checked on the staged files' statistics, before the
    /// commit point.
    async fn finish(self: Box<Self>) -> Result<Staged, SinkError> {
        let sink = self.sink.clone();
        let chunk = self.chunk.clone();
        let staged = self.inner.finish().await?;
        if !sink.merge_keys.is_empty() {
            return Ok(staged);
        }
        let range = ChunkRange {
            column: sink.range_column.as_deref(),
            chunk: &chunk,
        };
        for f in &staged.files {
            let stats = match sink.stats(&f.staged).await {
                Ok(s) => s,
                Err(e) => {
                    let paths: Vec<String> =
                        staged.files.iter().map(|f| f.staged.clone()).collect();
                    let _ = sink.files.remove(&paths).await;
                    return Err(e);
                }
            };
            if range.overlap(&HashMap::new(), stats.as_deref()) != Overlap::Inside {
                let paths: Vec<String> = staged.files.iter().map(|f| f.staged.clone()).collect();
                let _ = sink.files.remove(&paths).await;
                return Err(SinkError::Delta(DeltaError::Invalid {
                    shown: sink.shown.clone(),
                    message: format!(
                        "chunk {} wrote rows whose \"{}\" lies outside its range {}: a Delta table is replaced by \
                         the range column's values, so the transform must keep the column as the source has it \
                         (and the rows must not have it NULL)",
                        chunk.id,
                        sink.range_column.as_deref().unwrap_or_default(),
                        chunk.bounds()
                    ),
                }));
            }
        }
        Ok(staged)
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await
    }
}

#[async_trait]
impl Sink for Arc<DeltaSink> {
    async fn begin(&self, chunk: &Chunk, attempt: u32) -> Result<Box<dyn ChunkWriter>, SinkError> {
        Ok(Box::new(DeltaChunkWriter {
            inner: self.files.begin(chunk, attempt).await?,
            sink: self.clone(),
            chunk: chunk.clone(),
            ensured: false,
        }))
    }

    fn set_writer_memory(&self, memory: crate::memory::WriterMemory) {
        self.files.set_writer_memory(memory);
    }

    async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
        // Files first: in place but unknown to the log, readers ignore them.
        self.files.publish(chunk, files).await?;
        if !self.merge_keys.is_empty() {
            return self.merge(chunk, files).await;
        }
        // An empty chunk adds nothing but still removes its old files.
        let attempt = files.first().and_then(|f| attempt_of(&f.path));
        let _guard = self.commits.lock().await;
        if files.is_empty() && self.open().await?.is_none() {
            // No table yet (the chunks with rows have not created it):
            // there is nothing of its range to remove.
            return Ok(());
        }
        let (table, done) = self.table_for_commit(chunk, attempt).await?;
        if done {
            return Ok(());
        }
        let snapshot = table.snapshot().map_err(self.err())?;
        let log_store = table.log_store();
        let new: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        // Replace means the chunk's whole range, whoever wrote its rows: this
        // chunk's earlier versions, chunks of an earlier plan, a compaction,
        // another writer. Files wholly inside it go; files across its edge
        // are rewritten without its rows.
        let range = ChunkRange {
            column: self.range_column.as_deref(),
            chunk,
        };
        let in_log: Vec<(
            String,
            HashMap<String, Option<String>>,
            Option<String>,
            Action,
        )> = snapshot
            .snapshot()
            .file_views(log_store.as_ref(), None)
            .map_ok(|f| {
                (
                    f.path().to_string(),
                    f.partition_values_map(),
                    f.stats(),
                    Action::Remove(f.remove_action(true)),
                )
            })
            .try_collect()
            .await
            .map_err(self.err())?;
        let stamp = attempt.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        });
        let now = chrono::Utc::now().timestamp_millis();
        let mut actions: Vec<Action> = Vec::new();
        let mut rewritten = 0usize;
        for (path, partition_values, stats, remove) in in_log {
            if new.contains(path.as_str()) {
                continue;
            }
            match range.overlap(&partition_values, stats.as_deref()) {
                Overlap::Outside => {}
                Overlap::Inside => actions.push(remove),
                Overlap::Partial => {
                    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                    let to = format!(
                        "{dir}{}part-{}-r-t{stamp}-{rewritten:04}.parquet",
                        if dir.is_empty() { "" } else { "/" },
                        chunk.id
                    );
                    rewritten += 1;
                    match self
                        .files
                        .rewrite_without(&path, &to, |b| range.rows_in_range(b))
                        .await?
                    {
                        Rewritten::Untouched => {}
                        Rewritten::Emptied => actions.push(remove),
                        Rewritten::Kept { size, .. } => {
                            tracing::debug!(
                                "chunk {}: {path} holds rows in and out of the range; rewritten as {to}",
                                chunk.id
                            );
                            actions.push(remove);
                            actions.push(Action::Add(Add {
                                stats: self.stats(&to).await?,
                                path: to,
                                partition_values,
                                size: size as i64,
                                modification_time: now,
                                data_change: true,
                                ..Default::default()
                            }));
                        }
                    }
                }
            }
        }
        for f in files {
            let size = self.files.size(&f.path).await?;
            actions.push(Action::Add(Add {
                path: f.path.clone(),
                partition_values: partition_values(&f.path),
                size: size as i64,
                modification_time: now,
                data_change: true,
                stats: self.stats(&f.path).await?,
                ..Default::default()
            }));
        }
        if actions.is_empty() {
            return Ok(());
        }
        let predicate = format!("chunk {} {}", chunk.id, chunk.bounds());
        let mut props = self.tagged();
        if let Some(attempt) = attempt {
            props = props.with_application_transaction(Transaction::new(app_id(chunk), attempt));
        }
        CommitBuilder::from(props)
            .with_actions(actions)
            .build(
                Some(snapshot),
                log_store.clone(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: (!self.partition_by.is_empty())
                        .then(|| self.partition_by.clone()),
                    predicate: Some(predicate),
                },
            )
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Each part's rows go, in a commit of their own that removes the
    /// files wholly inside it and rewrites those across its edges, as a
    /// publish of no rows would. Merge mode never removed rows, and keeps
    /// them.
    async fn clear_retired(&self, _retired: &Chunk, parts: &[Chunk]) -> Result<(), SinkError> {
        if !self.owns_ranges() || self.open().await?.is_none() {
            return Ok(());
        }
        for part in parts {
            self.publish(part, &[]).await?;
        }
        Ok(())
    }

    /// Staged files go; files a Delta commit removed stay for readers of
    /// older versions until `VACUUM`.
    async fn remove(&self, paths: &[String]) -> Result<(), SinkError> {
        let staged: Vec<String> = paths
            .iter()
            .filter(|p| {
                p.rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with('.') && n.ends_with(".inprogress"))
            })
            .cloned()
            .collect();
        self.files.remove(&staged).await
    }

    async fn scan(&self) -> Result<TargetFiles, SinkError> {
        self.files.scan().await
    }

    /// Replace finds a chunk's rows in the table by the range column.
    fn check_rows(&self, rows: &arrow::datatypes::Schema, chunks: &[Chunk]) -> Result<(), String> {
        let Some(column) = self.range_column.as_deref().filter(|_| self.owns_ranges()) else {
            return Ok(());
        };
        let bounded = chunks
            .iter()
            .any(|c| c.lo.is_some() || c.hi.is_some() || c.value.is_some());
        if bounded && rows.field_with_name(column).is_err() {
            return Err(format!(
                "a Delta target replaces each chunk's range by the column \"{column}\" in the table; keep it in the transform's SELECT"
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Evolve for Arc<DeltaSink> {
    /// Added columns go into the table's schema in one metadata commit
    /// (nullable: older files have no values for them). Delta cannot widen
    /// a column's type without the `typeWidening` table feature, which this
    /// writer does not set.
    async fn evolve(
        &self,
        rows: &SchemaRef,
        diff: &crate::evolve::SchemaDiff,
    ) -> Result<(), SinkError> {
        if let Some((n, from, to, _)) = diff.changed.first() {
            return Err(SinkError::Delta(DeltaError::Invalid {
                shown: self.shown.clone(),
                message: format!(
                    "column \"{n}\" would change from {from} to {to}: Delta tables written by backfill cannot change a column's type; cast it in the SELECT"
                ),
            }));
        }
        if diff.added.is_empty() {
            return Ok(());
        }
        let _guard = self.commits.lock().await;
        let Some(table) = self.open().await? else {
            return Ok(());
        };
        let snapshot = table.snapshot().map_err(self.err())?;
        let current = snapshot.schema();
        let mut fields: Vec<deltalake::kernel::StructField> = current.fields().cloned().collect();
        let mut added = Vec::new();
        for (name, _) in &diff.added {
            let Ok(f) = rows.field_with_name(name) else {
                continue;
            };
            let nullable = f.as_ref().clone().with_nullable(true);
            let one = arrow::datatypes::Schema::new(vec![nullable]);
            let st: StructType =
                deltalake::kernel::engine::arrow_conversion::TryIntoKernel::try_into_kernel(&one)
                    .map_err(|e| self.err()(e.into()))?;
            let field = st.fields().next().cloned().ok_or_else(|| {
                self.err()(deltalake::DeltaTableError::Generic(format!(
                    "column {name} has no Delta type"
                )))
            })?;
            added.push(field.clone());
            fields.push(field);
        }
        let schema = StructType::try_new(fields).map_err(|e| self.err()(e.into()))?;
        use deltalake::kernel::MetadataExt;
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&schema)
            .map_err(|e| self.err()(e.into()))?;
        CommitBuilder::default()
            .with_actions(vec![Action::Metadata(metadata)])
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::AddColumn { fields: added },
            )
            .await
            .map_err(self.err())?;
        Ok(())
    }
}

impl Target for Arc<DeltaSink> {
    fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests;
