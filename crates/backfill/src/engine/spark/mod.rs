//! The Spark engine (`[engine] kind = "spark"`): each chunk's read,
//! transform, rules and dedup run on a Spark cluster through Spark Connect,
//! while backfill keeps planning, state, retries, publication and
//! validation.
//!
//! Per chunk attempt, in a session of its own:
//! 1. views `source` (the chunk's rows), `__bf_t` (the transform, in Spark
//!    SQL) and `__bf_m` (plus `__bf_rule`, the first failed rule, and
//!    `__bf_keep`, the dedup verdict), cached once so every step below reads
//!    the chunk once;
//! 2. one aggregate gives the counts per rule and the duplicates, so `fail`
//!    rules and `quarantine.max_ratio` stop the chunk before anything is
//!    written;
//! 3. Spark writes the kept rows and the quarantined rows as Parquet under
//!    the staging directory;
//! 4. backfill streams those files into the target's and the quarantine's
//!    chunk writers, which stage, checksum and later publish them exactly
//!    as for the local engine.
//!
//! Global dedup: once per job, Spark computes the winners' index (each key
//! with several passing versions, and the range value of its winning
//! version) into the staging directory; each chunk keeps a row when it is
//! the best version of its key in the chunk and the key's winner lies in
//! the chunk. Ties go to the lowest range value, as with the local engine.

pub mod client;
mod open;
pub mod sql;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use backfill_core::plan::Chunk;
use backfill_core::spec::{DedupScope, JobSpec, RuleAction, SourceFormat, SparkSpec};
use futures::StreamExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;

pub use client::{Session, Spark, SparkError};
pub(crate) use open::open;
pub use sql::{ident, spark_type, string_lit};

use super::{Engine, ExecStats, OpenError, Opened};
use crate::engine::local::ChunkQuery;
use crate::error::{ChunkError, EngineError, Error};
use crate::predicate::RangeColumn;
use crate::quality::QualityCounts;
use crate::sink::ChunkWriter;

/// The chunk's predicate on `expr` (the range column, or the index's copy
/// of it); `None` for a chunk without bounds.
pub fn chunk_predicate(
    col: &RangeColumn,
    chunk: &Chunk,
    expr: &str,
) -> Result<Option<String>, SparkError> {
    crate::predicate::spark(col, chunk, expr).map_err(|e| SparkError::Protocol(e.to_string()))
}

fn order_sql(spec: &JobSpec, prefix: &str) -> Vec<String> {
    spec.dedup
        .iter()
        .flat_map(|d| &d.order_by)
        .map(|o| {
            format!(
                "{prefix}{} {} NULLS {}",
                ident(&o.column),
                if o.descending { "DESC" } else { "ASC" },
                if o.nulls_first { "FIRST" } else { "LAST" }
            )
        })
        .collect()
}

fn key_sql(spec: &JobSpec, prefix: &str) -> Vec<String> {
    spec.dedup
        .iter()
        .flat_map(|d| &d.keys)
        .map(|k| format!("{prefix}{}", ident(k)))
        .collect()
}

/// What Spark needs besides the job: the source's schema and range column
/// (from the local open) and where staged output goes.
pub struct SparkJob {
    spark: Spark,
    spec: Arc<SparkSpec>,
    job: Arc<JobSpec>,
    source_schema: SchemaRef,
    range: Option<RangeColumn>,
    /// The transform's output, as Spark types it.
    pub transformed: SchemaRef,
    /// The global winners' index, once built.
    index: std::sync::OnceLock<PathBuf>,
}

impl std::fmt::Debug for SparkJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkJob")
            .field("remote", &self.spec.shown)
            .finish()
    }
}

/// Why a job cannot run on Spark, or what Spark said when checking it.
#[derive(Debug)]
pub enum CheckError {
    /// The job file asks for something this engine cannot do.
    Unsupported(String),
    Transform(SparkError),
    Rule(usize, String),
    /// Spark cannot read the source.
    Source(SparkError),
    /// Spark refused an `[engine] conf` setting.
    Settings(SparkError),
    Spark(SparkError),
}

/// Which part of a session's set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Settings,
    Source,
    Transform,
}

impl SparkJob {
    /// Connects and checks the job on Spark: the source is readable, the
    /// transform and each rule analyse. Returns the job with the transform's
    /// output schema.
    pub async fn open(
        job: &JobSpec,
        source_schema: SchemaRef,
        range: Option<RangeColumn>,
    ) -> Result<SparkJob, CheckError> {
        let Some(spec) = job.engine.spark.clone() else {
            return Err(CheckError::Unsupported(
                "engine.kind is not \"spark\"".into(),
            ));
        };
        if job.source.format == SourceFormat::Postgres {
            return Err(CheckError::Unsupported(
                "the Spark engine reads file sources (parquet, csv, json, locally shared or on an object store); a PostgreSQL source runs on the local engine".into(),
            ));
        }
        if !job.target.sort_by.is_empty() {
            return Err(CheckError::Unsupported(
                "[target] sort_by runs on the local engine for now".into(),
            ));
        }
        if job.range.as_ref().is_some_and(|r| r.buckets.is_some()) {
            return Err(CheckError::Unsupported(
                "hash buckets ([range] buckets) run on the local engine for now".into(),
            ));
        }
        let spark = Spark::connect(&spec).await.map_err(CheckError::Spark)?;
        let mut sj = SparkJob {
            spark,
            spec: Arc::new(spec),
            job: Arc::new(job.clone()),
            source_schema,
            range,
            transformed: Arc::new(Schema::empty()),
            index: std::sync::OnceLock::new(),
        };
        let mut s = match sj.setup(None).await {
            Ok(s) => s,
            Err((_, e)) if e.class() == backfill_core::ErrorClass::Transient => {
                return Err(CheckError::Spark(e));
            }
            Err((Step::Source, e)) => return Err(CheckError::Source(e)),
            Err((Step::Transform, e)) => return Err(CheckError::Transform(e)),
            Err((Step::Settings, e)) => return Err(CheckError::Settings(e)),
        };
        let checked = async {
            let t = s
                .schema_of("SELECT * FROM __bf_t")
                .await
                .map_err(CheckError::Transform)?;
            for (i, r) in sj.job.rules.iter().enumerate() {
                let out = s
                    .schema_of(&format!("SELECT ({}) AS ok FROM __bf_t", r.check))
                    .await
                    .map_err(|e| CheckError::Rule(i, e.to_string()))?;
                let dt = out.field(0).data_type();
                if *dt != DataType::Boolean && *dt != DataType::Null {
                    return Err(CheckError::Rule(
                        i,
                        format!("the check is of type {dt}, not a true/false condition"),
                    ));
                }
            }
            Ok(t)
        }
        .await;
        s.release().await;
        sj.transformed = checked?;
        Ok(sj)
    }

    fn source_location(&self) -> String {
        match &self.job.source.url {
            // Hadoop's S3 connector answers to s3a://.
            Some(u) => match u.strip_prefix("s3://") {
                Some(rest) => format!("s3a://{rest}"),
                None => u.clone(),
            },
            None => absolute(&self.job.source.path).display().to_string(),
        }
    }

    /// `CREATE TEMPORARY VIEW __bf_src ...` over the source files.
    fn source_view(&self) -> String {
        let src = &self.job.source;
        let mut options = vec![format!("path {}", string_lit(&self.source_location()))];
        let hive_partitions = self
            .job
            .range
            .as_ref()
            .is_some_and(|r| r.partitions == Some(backfill_core::spec::Partitions::Source));
        if !hive_partitions {
            // The local engine reads a directory's files at any depth.
            options.push("recursiveFileLookup 'true'".to_string());
        }
        let (using, schema) = match src.format {
            // A Kafka job is refused on Spark before it gets here.
            SourceFormat::Parquet | SourceFormat::Postgres | SourceFormat::Kafka => {
                ("parquet", None)
            }
            SourceFormat::Csv => {
                options.push(format!("header '{}'", src.has_header));
                options.push(format!(
                    "sep {}",
                    string_lit(&(src.delimiter as char).to_string())
                ));
                ("csv", Some(&self.source_schema))
            }
            SourceFormat::Json => ("json", Some(&self.source_schema)),
        };
        // Text sources get the schema the local open settled on, so both
        // engines see the same types.
        let columns = schema
            .map(|s| {
                let cols: Vec<String> = s
                    .fields()
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {}",
                            ident(f.name()),
                            spark_type(f.data_type()).unwrap_or_else(|| "STRING".into())
                        )
                    })
                    .collect();
                format!(" ({})", cols.join(", "))
            })
            .unwrap_or_default();
        format!(
            "CREATE OR REPLACE TEMPORARY VIEW __bf_src{columns} USING {using} OPTIONS ({})",
            options.join(", ")
        )
    }

    /// A session with the settings, the source, the chunk's `source` view
    /// (`None`: no rows, for checking) and the transform view `__bf_t`.
    async fn session(&self, chunk: Option<&Chunk>) -> Result<Session, SparkError> {
        self.setup(chunk).await.map_err(|(_, e)| e)
    }

    async fn setup(&self, chunk: Option<&Chunk>) -> Result<Session, (Step, SparkError)> {
        let mut s = self.spark.session();
        let mut conf = vec![
            // Both engines read naive timestamps as UTC.
            ("spark.sql.session.timeZone".to_string(), "UTC".to_string()),
            (
                "spark.sql.parquet.outputTimestampType".to_string(),
                "TIMESTAMP_MICROS".to_string(),
            ),
            // A chunk is a slice of the job: Spark's default of 200 shuffle
            // partitions turns each small chunk into hundreds of tiny tasks
            // (adaptive coalescing does not reach the cached chunk). Raise
            // it in `conf` for very large chunks.
            ("spark.sql.shuffle.partitions".to_string(), "8".to_string()),
        ];
        conf.extend(self.spec.conf.iter().cloned());
        let ready = async {
            s.set_conf(&conf).await.map_err(|e| (Step::Settings, e))?;
            let filter = match chunk {
                None => Some("FALSE".to_string()),
                Some(c) => match &self.range {
                    Some(r) => {
                        chunk_predicate(r, c, &ident(&r.name)).map_err(|e| (Step::Source, e))?
                    }
                    None => None,
                },
            };
            let filter = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
            s.command(&self.source_view())
                .await
                .map_err(|e| (Step::Source, e))?;
            s.command(&format!(
                "CREATE OR REPLACE TEMPORARY VIEW source AS SELECT * FROM __bf_src{filter}"
            ))
            .await
            .map_err(|e| (Step::Source, e))?;
            let sql = self
                .job
                .transform
                .as_ref()
                .map_or("SELECT * FROM source", |t| t.sql.as_str());
            s.command(&format!("CREATE OR REPLACE TEMPORARY VIEW __bf_t AS {sql}"))
                .await
                .map_err(|e| (Step::Transform, e))
        }
        .await;
        match ready {
            Ok(()) => Ok(s),
            Err(e) => {
                s.release().await;
                Err(e)
            }
        }
    }

    fn global_dedup(&self, many_chunks: bool) -> bool {
        many_chunks
            && self
                .job
                .dedup
                .as_ref()
                .is_some_and(|d| d.scope == DedupScope::Global)
    }

    /// Builds (or finds) the global winners' index over `whole`, the job's
    /// range, under the staging directory, named by `fingerprint`.
    pub async fn prepare(
        &self,
        whole: &Chunk,
        fingerprint: &str,
        many_chunks: bool,
    ) -> Result<(), SparkError> {
        if !self.global_dedup(many_chunks) {
            return Ok(());
        }
        let Some(range) = &self.range else {
            return Ok(());
        };
        let dir = self.spec.staging.join(format!("index-{fingerprint}"));
        if dir.join("_SUCCESS").exists() {
            let _ = self.index.set(dir);
            return Ok(());
        }
        let t = std::time::Instant::now();
        let keys = key_sql(&self.job, "");
        let aliased: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} AS __bf_k{i}"))
            .collect();
        let alias_names: Vec<String> = (0..keys.len()).map(|i| format!("__bf_k{i}")).collect();
        let mut order = order_sql(&self.job, "");
        order.push(format!("{} ASC", ident(&range.name)));
        let sql = format!(
            "SELECT {aliases}, __bf_w FROM (\
               SELECT {aliased}, {r} AS __bf_w, \
                 row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS __bf_rn, \
                 count(*) OVER (PARTITION BY {keys}) AS __bf_n \
               FROM __bf_t WHERE {pass}) \
             WHERE __bf_rn = 1 AND __bf_n > 1",
            aliases = alias_names.join(", "),
            aliased = aliased.join(", "),
            r = ident(&range.name),
            keys = keys.join(", "),
            order = order.join(", "),
            pass = crate::quality::all_rules_pass(&self.job.rules),
        );
        let mut s = self.session(Some(whole)).await?;
        let written = s
            .write_parquet(&sql, &[], &spark_path(&dir), HashMap::new())
            .await;
        s.release().await;
        written?;
        tracing::info!(
            "dedup index computed by Spark in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let _ = self.index.set(dir);
        Ok(())
    }

    /// `__bf_m`: the transformed rows with `__bf_rule` and `__bf_keep`.
    fn marked_view(&self, chunk: &Chunk) -> Result<String, SparkError> {
        let rule = crate::quality::rule_case(&self.job.rules);
        let ruled = format!("SELECT *, {rule} AS __bf_rule FROM __bf_t");
        if self.job.dedup.is_none() {
            return Ok(format!(
                "CREATE OR REPLACE TEMPORARY VIEW __bf_m AS SELECT *, TRUE AS __bf_keep FROM ({ruled})"
            ));
        }
        let keys = key_sql(&self.job, "r.");
        let mut order = order_sql(&self.job, "r.");
        let mut join = String::new();
        let mut winner = String::new();
        if let (Some(index), Some(range)) = (self.index.get(), &self.range) {
            order.push(format!("r.{} ASC", ident(&range.name)));
            let on: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("{k} <=> w.__bf_k{i}"))
                .collect();
            join = format!(
                " LEFT JOIN parquet.{} AS w ON {}",
                ident(&spark_path(index)),
                on.join(" AND ")
            );
            let in_chunk = chunk_predicate(range, chunk, "w.__bf_w")?.unwrap_or("TRUE".into());
            winner = format!(" AND (w.__bf_w IS NULL OR ({in_chunk}))");
        }
        Ok(format!(
            "CREATE OR REPLACE TEMPORARY VIEW __bf_m AS \
             SELECT r.*, (r.__bf_rule IS NULL AND row_number() OVER \
               (PARTITION BY r.__bf_rule IS NULL, {keys} ORDER BY {order}) = 1{winner}) AS __bf_keep \
             FROM ({ruled}) AS r{join}",
            keys = keys.join(", "),
            order = order.join(", "),
        ))
    }

    /// Runs one chunk attempt on Spark and streams its output into the
    /// writers.
    pub async fn execute_chunk(
        &self,
        chunk: &Chunk,
        attempt: u32,
        run_id: i64,
        target: &mut dyn ChunkWriter,
        quarantine: &mut dyn ChunkWriter,
    ) -> Result<ExecStats, ChunkError> {
        let dir = self.spec.staging.join(format!(
            "{}/chunk-{}-a{attempt}-{}",
            crate::hive::escape_partition_value(&self.job.name),
            chunk.id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let result = self
            .execute_into(chunk, run_id, &dir, target, quarantine)
            .await;
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing Spark staging {}: {e}", dir.display());
        }
        result
    }

    async fn execute_into(
        &self,
        chunk: &Chunk,
        run_id: i64,
        dir: &Path,
        target: &mut dyn ChunkWriter,
        quarantine: &mut dyn ChunkWriter,
    ) -> Result<ExecStats, ChunkError> {
        let started = std::time::Instant::now();
        let mut s = self.session(Some(chunk)).await?;
        let ran = self.run_in_session(&mut s, chunk, run_id, dir).await;
        s.release().await;
        let (stats, kept, quarantined) = ran?;
        let on_spark = started.elapsed();
        let expected = self.transformed.clone();
        let written = if kept > 0 {
            stream_files(&dir.join("target"), &expected, target).await?
        } else {
            0
        };
        if written != kept {
            return Err(ChunkError::from(SparkError::Protocol(format!(
                "Spark counted {kept} rows to keep but its files hold {written}"
            ))));
        }
        tracing::debug!(
            "chunk {}: {:.2}s on Spark, {:.2}s reading its {kept} rows back",
            chunk.id,
            on_spark.as_secs_f64(),
            (started.elapsed() - on_spark).as_secs_f64()
        );
        if quarantined > 0 {
            let q_schema = Arc::new(crate::quality::quarantine_schema(&expected));
            let n = stream_files(&dir.join("quarantine"), &q_schema, quarantine).await?;
            if n != quarantined {
                return Err(ChunkError::from(SparkError::Protocol(format!(
                    "Spark counted {quarantined} quarantined rows but its files hold {n}"
                ))));
            }
        }
        Ok(stats)
    }

    /// Everything on the Spark side of a chunk: counts, checks, writes.
    /// Returns the stats, the kept rows and the quarantined rows.
    async fn run_in_session(
        &self,
        s: &mut Session,
        chunk: &Chunk,
        run_id: i64,
        dir: &Path,
    ) -> Result<(ExecStats, u64, u64), ChunkError> {
        s.command(&self.marked_view(chunk)?).await?;
        s.command(
            "CACHE TABLE __bf_c OPTIONS ('storageLevel' 'MEMORY_AND_DISK') AS SELECT * FROM __bf_m",
        )
        .await?;
        let groups = s
            .query(
                "SELECT CAST(__bf_rule AS INT) AS r, __bf_keep AS k, count(*) AS n \
                 FROM __bf_c GROUP BY __bf_rule, __bf_keep",
            )
            .await?;
        let read = s.query("SELECT count(*) AS n FROM source").await?;
        let rows_read = first_int(&read).unwrap_or(0) as u64;
        let mut counts = QualityCounts::default();
        let mut kept = 0u64;
        for b in &groups {
            let r =
                arrow::compute::cast(b.column(0), &DataType::Int64).map_err(SparkError::from)?;
            let r = r
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .ok_or_else(|| SparkError::Protocol("rule index column".into()))?
                .clone();
            let k = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .ok_or_else(|| SparkError::Protocol("keep column".into()))?
                .clone();
            let n =
                arrow::compute::cast(b.column(2), &DataType::Int64).map_err(SparkError::from)?;
            let n = n
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .ok_or_else(|| SparkError::Protocol("count column".into()))?
                .clone();
            for i in 0..b.num_rows() {
                let count = n.value(i) as u64;
                counts.rows_in += count;
                if r.is_null(i) {
                    if !k.is_null(i) && k.value(i) {
                        kept += count;
                    } else {
                        counts.duplicates += count;
                    }
                    continue;
                }
                let Some(rule) = usize::try_from(r.value(i))
                    .ok()
                    .and_then(|x| self.job.rules.get(x))
                else {
                    return Err(SparkError::Protocol(format!(
                        "rule index {} out of range",
                        r.value(i)
                    ))
                    .into());
                };
                match rule.action {
                    RuleAction::Quarantine => {
                        counts.quarantined += count;
                        counts
                            .per_rule
                            .entry(rule.name.clone())
                            .or_default()
                            .quarantined += count;
                    }
                    RuleAction::Drop => {
                        counts.dropped += count;
                        counts
                            .per_rule
                            .entry(rule.name.clone())
                            .or_default()
                            .dropped += count;
                    }
                    RuleAction::Fail => {
                        counts.failed.entry(rule.name.clone()).or_default().0 += count;
                    }
                }
            }
        }
        if let Some(name) = counts.failed.keys().next().cloned() {
            let i = self
                .job
                .rules
                .iter()
                .position(|r| r.name == name)
                .unwrap_or_default();
            let examples = self.examples(s, i).await?;
            if let Some(e) = counts.failed.get_mut(&name) {
                e.1 = examples;
            }
        }
        super::quality_verdict(&self.job, &counts)?;
        let options = self.write_options();
        if kept > 0 {
            crate::failpoint::hit("spark_write", chunk.index)?;
            s.write_parquet(
                "SELECT * FROM __bf_c WHERE __bf_rule IS NULL AND __bf_keep",
                &["__bf_rule", "__bf_keep"],
                &spark_path(&dir.join("target")),
                options.clone(),
            )
            .await?;
        }
        if counts.quarantined > 0 {
            let (mut names, mut idx) = (Vec::new(), Vec::new());
            for (i, r) in self.job.rules.iter().enumerate() {
                if r.action == RuleAction::Quarantine {
                    names.push(format!("WHEN {i} THEN {}", string_lit(&r.name)));
                    idx.push(i.to_string());
                }
            }
            s.write_parquet(
                &format!(
                    "SELECT *, CASE __bf_rule {} END AS _rule, {} AS _chunk, CAST({run_id} AS BIGINT) AS _run \
                     FROM __bf_c WHERE __bf_rule IN ({})",
                    names.join(" "),
                    string_lit(&chunk.id),
                    idx.join(", ")
                ),
                &["__bf_rule", "__bf_keep"],
                &spark_path(&dir.join("quarantine")),
                options,
            )
            .await?;
        }
        let quarantined = counts.quarantined;
        Ok((
            ExecStats {
                rows_read,
                bytes_read: 0,
                quality: counts,
            },
            kept,
            quarantined,
        ))
    }

    async fn examples(&self, s: &mut Session, rule: usize) -> Result<Vec<String>, SparkError> {
        let cols: Vec<String> = match &self.job.dedup {
            Some(d) => d.keys.clone(),
            None => self
                .transformed
                .fields()
                .iter()
                .take(2)
                .map(|f| f.name().clone())
                .collect(),
        };
        let select: Vec<String> = cols
            .iter()
            .map(|c| format!("CAST({} AS STRING) AS {}", ident(c), ident(c)))
            .collect();
        let batches = s
            .query(&format!(
                "SELECT {} FROM __bf_c WHERE __bf_rule = {rule} LIMIT 5",
                select.join(", ")
            ))
            .await?;
        let mut out = Vec::new();
        for b in &batches {
            for row in 0..b.num_rows() {
                let parts: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let v = arrow::util::display::array_value_to_string(b.column(i), row)
                            .unwrap_or_default();
                        format!("{c}={v}")
                    })
                    .collect();
                out.push(parts.join(" "));
            }
        }
        Ok(out)
    }

    /// The staged files are read back once and re-encoded by the target's
    /// writer, so the fastest codec wins here.
    fn write_options(&self) -> HashMap<String, String> {
        HashMap::from([("compression".to_string(), "snappy".to_string())])
    }
}

/// A local path as Spark's Hadoop filesystem names it.
fn spark_path(p: &Path) -> String {
    format!("file://{}", absolute(p).display())
}

/// Spark resolves relative paths against its own working directory.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn first_int(batches: &[RecordBatch]) -> Option<i64> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let c = arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
    let c = c.as_any().downcast_ref::<arrow::array::Int64Array>()?;
    (!c.is_null(0)).then(|| c.value(0))
}

/// Streams every Parquet file Spark wrote under `dir` into `writer`, each
/// batch cast to `schema` (Spark may type a column differently, e.g. a
/// string as Utf8 where the local engine has Utf8View). Returns the rows.
async fn stream_files(
    dir: &Path,
    schema: &SchemaRef,
    writer: &mut dyn ChunkWriter,
) -> Result<u64, ChunkError> {
    // Spark writes without partitioning: the part files lie flat in `dir`,
    // beside `_SUCCESS` and hidden checksum files.
    let entries = std::fs::read_dir(dir).map_err(|source| crate::sink::SinkError::Io {
        op: "listing Spark output",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with(['.', '_']) && n.ends_with(".parquet"))
        })
        .collect();
    files.sort();
    let mut rows = 0u64;
    for path in files {
        let io = |source| crate::sink::SinkError::Io {
            op: "reading Spark output",
            path: path.clone(),
            source,
        };
        let file = tokio::fs::File::open(&path).await.map_err(io)?;
        let parquet_err = |e: parquet::errors::ParquetError| {
            ChunkError::from(SparkError::Protocol(format!(
                "reading {}: {e}",
                path.display()
            )))
        };
        let mut stream = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(parquet_err)?
            .with_batch_size(8192)
            .build()
            .map_err(parquet_err)?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(parquet_err)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(&batch, schema)?;
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
    }
    Ok(rows)
}

/// `batch` with `schema`'s columns, in its order and types.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ChunkError> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = batch.column_by_name(f.name()).ok_or_else(|| {
            SparkError::Protocol(format!("Spark's output lacks column \"{}\"", f.name()))
        })?;
        cols.push(if c.data_type() == f.data_type() {
            c.clone()
        } else {
            arrow::compute::cast(c, f.data_type()).map_err(SparkError::from)?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), cols).map_err(SparkError::from)?)
}
