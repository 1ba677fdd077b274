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
    ChunkWriter, ForeignWrites, Location, ParquetSink, Rewritten, Sink, SinkError, Staged,
    TargetFiles,
};
use crate::hive::{HIVE_DEFAULT_PARTITION, unescape_partition_value};
use crate::store::Remote;

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

/// Lets deltalake open `s3://`, `gs://` and `az://` tables with our
/// object-store clients (credentials from the environment, see
/// [`crate::store`]) and its default log store, which commits a version with
/// a conditional put (`If-None-Match`), so two writers never both win.
fn register_object_store_schemes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in backfill_core::spec::OBJECT_STORE_SCHEMES {
            let Ok(url) = url::Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            deltalake::logstore::object_store_factories()
                .insert(url.clone(), Arc::new(StoreFactory));
            deltalake::logstore::logstore_factories().insert(url, Arc::new(StoreFactory));
        }
    });
}

struct StoreFactory;

impl deltalake::logstore::ObjectStoreFactory for StoreFactory {
    fn parse_url_opts(
        &self,
        url: &url::Url,
        _config: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<(
        deltalake::logstore::ObjectStoreRef,
        object_store::path::Path,
    )> {
        let remote = Remote::open(url.as_str(), url.as_str())
            .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        Ok((remote.store, remote.prefix))
    }
}

impl deltalake::logstore::LogStoreFactory for StoreFactory {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &url::Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
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

    async fn footprint(&self) -> Result<Option<super::Footprint>, SinkError> {
        if !self.owns_ranges() {
            return Ok(None);
        }
        let Some(table) = self.open().await? else {
            return Ok(None);
        };
        let snapshot = table.snapshot().map_err(self.err())?;
        Ok(snapshot
            .metadata()
            .configuration()
            .get(&footprint_key(&self.job_tag))
            .and_then(|v| super::decode_footprint(v)))
    }

    /// A table property, in a metadata commit carrying the job's tag (so
    /// the next run does not take it for another writer's).
    async fn set_footprint(&self, range: super::Footprint) -> Result<(), SinkError> {
        if !self.owns_ranges() {
            return Ok(());
        }
        *self
            .pending_footprint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(range);
        let _guard = self.commits.lock().await;
        let Some(table) = self.open().await? else {
            // Recorded as the table is created.
            return Ok(());
        };
        let key = footprint_key(&self.job_tag);
        let value = super::encode_footprint(range);
        let current = table
            .snapshot()
            .map_err(self.err())?
            .metadata()
            .configuration()
            .get(&key)
            .cloned();
        if current.as_deref() == Some(value.as_str()) {
            return Ok(());
        }
        table
            .set_tbl_properties()
            .with_properties(HashMap::from([(key, value)]))
            .with_raise_if_not_exists(false)
            .with_commit_properties(self.tagged())
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Reads the log's commits after version `since` (all of them after
    /// `-1`, the mark of a table that did not exist yet): a commit that does
    /// not carry this job's tag and adds or removes data files
    /// (`dataChange`: a compaction does not) touches every committed chunk
    /// whose range those files overlap, unless this job committed the
    /// chunk again later in the log (which replaced the range).
    async fn foreign_writes(
        &self,
        since: Option<&str>,
        committed: &[Chunk],
    ) -> Result<Option<ForeignWrites>, SinkError> {
        if !self.owns_ranges() {
            return Ok(None);
        }
        // Before the table exists, every version it will have is to read:
        // the mark says so with -1.
        let Some(table) = self.open().await? else {
            return Ok(Some(ForeignWrites {
                mark: "-1".into(),
                touched: Vec::new(),
            }));
        };
        let Some(current) = table.version() else {
            return Ok(None);
        };
        let mark = current.to_string();
        // The first version to read.
        let first = match since.map(str::parse::<i64>) {
            Some(Ok(v)) if v < 0 => 0,
            Some(Ok(v)) if v as u64 <= current => v as u64 + 1,
            Some(Ok(v)) => {
                tracing::warn!(
                    "{}: the table is at version {current}, before version {v} this job last read: it was recreated; other writers' changes before now are not looked for",
                    self.shown
                );
                return Ok(Some(ForeignWrites {
                    mark,
                    touched: Vec::new(),
                }));
            }
            // The first look: the job's own commits before it carry no tag
            // to tell them from others'.
            _ => {
                return Ok(Some(ForeignWrites {
                    mark,
                    touched: Vec::new(),
                }));
            }
        };
        let log_store = table.log_store();
        // Files another writer changed (path, partition values, stats;
        // removes carry no stats and are looked up) at each version, and
        // the last version at which this job committed each chunk.
        let mut foreign: Vec<(u64, FileRange)> = Vec::new();
        let mut unresolved: Vec<(u64, String, HashMap<String, Option<String>>)> = Vec::new();
        let mut added: HashMap<String, FileRange> = HashMap::new();
        let mut ours: HashMap<String, u64> = HashMap::new();
        for version in first..=current {
            let Some(bytes) = log_store
                .read_commit_entry(version)
                .await
                .map_err(self.err())?
            else {
                tracing::warn!(
                    "{}: the log no longer holds version {version} (log retention): other writers' changes up to it are not looked for",
                    self.shown
                );
                continue;
            };
            let actions = deltalake::logstore::get_actions(version, &bytes).map_err(self.err())?;
            let mine = actions.iter().any(|a| {
                matches!(a, Action::CommitInfo(ci)
                    if ci.info.get(JOB_KEY).and_then(|v| v.as_str()) == Some(self.job_tag.as_str()))
            });
            for action in actions {
                match action {
                    Action::Txn(t) if mine => {
                        if let Some(id) = t.app_id.strip_prefix("backfill-") {
                            ours.insert(id.to_string(), version);
                        }
                    }
                    Action::Add(a) => {
                        let file = FileRange {
                            partition_values: a.partition_values,
                            stats: a.stats,
                        };
                        if !mine && a.data_change {
                            foreign.push((version, file.clone()));
                        }
                        added.insert(a.path, file);
                    }
                    Action::Remove(r) if !mine && r.data_change => match added.get(&r.path) {
                        Some(file) => foreign.push((version, file.clone())),
                        None => unresolved.push((
                            version,
                            r.path,
                            r.partition_values.unwrap_or_default(),
                        )),
                    },
                    _ => {}
                }
            }
        }
        let mut known: HashMap<String, FileRange> = HashMap::new();
        if let (false, Some(before)) = (unresolved.is_empty(), first.checked_sub(1)) {
            // Files removed that were added before the versions read:
            // their ranges are in the table as it was then.
            let mut old = deltalake::open_table(self.url()?)
                .await
                .map_err(self.err())?;
            known = match old.load_version(before).await {
                Ok(()) => old
                    .snapshot()
                    .map_err(self.err())?
                    .snapshot()
                    .file_views(old.log_store().as_ref(), None)
                    .map_ok(|f| {
                        (
                            f.path().to_string(),
                            FileRange {
                                partition_values: f.partition_values_map(),
                                stats: f.stats(),
                            },
                        )
                    })
                    .try_collect()
                    .await
                    .map_err(self.err())?,
                Err(e) => {
                    tracing::debug!("{}: version {before} unreadable ({e})", self.shown);
                    HashMap::new()
                }
            };
        }
        // A file not found there counts as touching every chunk its
        // partition values allow.
        for (version, path, partition_values) in unresolved {
            let file = known.get(&path).cloned().unwrap_or(FileRange {
                partition_values,
                stats: None,
            });
            foreign.push((version, file));
        }
        let touched = committed
            .iter()
            .filter(|chunk| {
                let range = ChunkRange {
                    column: self.range_column.as_deref(),
                    chunk,
                };
                let replaced = ours.get(&chunk.id).copied();
                foreign.iter().any(|(version, f)| {
                    replaced.is_none_or(|r| *version > r)
                        && range.overlap(&f.partition_values, f.stats.as_deref())
                            != Overlap::Outside
                })
            })
            .map(|c| c.index)
            .collect();
        Ok(Some(ForeignWrites { mark, touched }))
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

    async fn open_file(
        &self,
        rel: &str,
    ) -> Result<Box<dyn parquet::arrow::async_reader::AsyncFileReader>, SinkError> {
        self.files.open_file(rel).await
    }

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

    /// The table's current version, as the log describes it.
    async fn table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        let Some(table) = self.open().await? else {
            return Ok(None);
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(self.err())?;
        let provider = table
            .table_provider()
            .await
            .map_err(SinkError::read(format!("scanning {}", self.shown)))?;
        Ok(Some(provider))
    }

    /// `validate` reads the chunk's range from the table's current version,
    /// as readers see it: rows another writer added to the range, or a
    /// copy a publish failed to remove, count against the chunk.
    async fn read_chunk(
        &self,
        chunk: &Chunk,
    ) -> Result<Option<datafusion::physical_plan::SendableRecordBatchStream>, SinkError> {
        let what = format!("reading {}", self.shown);
        let read = |e| SinkError::read(what.clone())(e);
        let ctx = datafusion::prelude::SessionContext::new();
        let Some(table) = self.open().await? else {
            return Ok(Some(
                ctx.read_empty()
                    .map_err(read)?
                    .execute_stream()
                    .await
                    .map_err(read)?,
            ));
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(self.err())?;
        let provider = table.table_provider().await.map_err(read)?;
        let mut df = ctx.read_table(provider).map_err(read)?;
        if let Some(col) = &self.range_column {
            let c = format!("\"{}\"", col.replace('"', "\"\""));
            let lit = |v: backfill_core::interval::RangeValue| match v {
                backfill_core::interval::RangeValue::Int(i) => i.to_string(),
                backfill_core::interval::RangeValue::Time(us) => {
                    chrono::DateTime::from_timestamp_micros(us).map_or("NULL".into(), |t| {
                        format!(
                            "TIMESTAMP '{}'",
                            t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f")
                        )
                    })
                }
            };
            let mut parts = Vec::new();
            if let Some(v) = &chunk.value {
                parts.push(format!("{c} = '{}'", v.replace('\'', "''")));
            }
            if let Some(lo) = chunk.lo {
                parts.push(format!("{c} >= {}", lit(lo)));
            }
            if let Some(hi) = chunk.hi {
                parts.push(format!("{c} < {}", lit(hi)));
            }
            if !parts.is_empty() {
                let expr = df.parse_sql_expr(&parts.join(" AND ")).map_err(read)?;
                df = df.filter(expr).map_err(read)?;
            }
        }
        Ok(Some(df.execute_stream().await.map_err(read)?))
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_partition_directories() {
        assert_eq!(
            attempt_of("year=2023/month=1/part-0123456789ab-a12-0000.parquet"),
            Some(12)
        );
        assert_eq!(
            attempt_of("year=2023/part-0123456789abcdef-a1-t1733520000123456-0000.parquet"),
            Some(1_733_520_000_123_456)
        );
        assert_eq!(attempt_of("x.parquet"), None);
        let pv = partition_values(
            "year=2023/region=a%2Fb/k=__HIVE_DEFAULT_PARTITION__/part-x-a1-0000.parquet",
        );
        assert_eq!(pv["year"].as_deref(), Some("2023"));
        assert_eq!(pv["region"].as_deref(), Some("a/b"));
        assert_eq!(pv["k"], None);
    }
}
