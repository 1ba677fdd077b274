//! The local engine: executes one chunk as a DataFusion plan: the source scan with the chunk's
//! range predicate pushed down, counted, exposed to the transform SQL as the
//! table `source`, and streamed batch by batch into the sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::datatypes::{DataType, SchemaRef};
use backfill_core::plan::Chunk;
use backfill_core::spec::{DedupSpec, JobSpec};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use super::{ExecStats, quality_verdict};
use crate::dedup::index::{self as dedup_index, DedupIndex};
use crate::dedup::repeats::{self, KeyHashes, RepeatedKeys};
use crate::error::ChunkError;
use crate::failpoint;
use crate::quality::{self, Splitter};
use crate::sink::ChunkWriter;
use crate::source::{Lookups, Source, register_lookups};

/// The DataFusion settings every chunk runs with.
pub fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_batch_size(8192)
        // Plans stay small and per chunk; two cores are shared between
        // concurrent chunks, so more partitions only add overhead.
        .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .with_information_schema(false)
}

/// The settings of one chunk when `in_flight` chunks run at once: the
/// cores are shared out among them rather than each chunk planning for all
/// of them. Every scan partition holds a source row group's compressed
/// bytes and decoded pages, so with two chunks of two partitions each, four
/// row groups were in memory where two keep the cores as busy; and a chunk
/// of one partition needs no repartitioning between its stages.
pub fn chunk_config(base: &SessionConfig, in_flight: usize) -> SessionConfig {
    let partitions = (base.target_partitions() / in_flight.max(1)).max(1);
    base.clone().with_target_partitions(partitions)
}

/// DataFusion's share of `[run] memory_limit` for sorts, joins and
/// aggregations before they spill to disk.
pub fn runtime_env(memory: &crate::memory::Memory) -> DfResult<Arc<RuntimeEnv>> {
    datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(memory.engine(), 1.0)
        .build_arc()
}

use crate::predicate::RangeColumn;

/// One partition of a chunk's scan, as a partition of the `source` table.
/// Rows are counted as they leave the scan, after the range filter and before
/// the transform, which is what "rows read" means in the state store. One
/// table partition per scan partition lets the transform run where the rows
/// were read: a single-stream table would merge the partitions only for
/// DataFusion to deal them out again round-robin, two hand-offs per batch.
#[derive(Debug)]
struct CountedScan {
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    schema: SchemaRef,
    rows: Arc<AtomicU64>,
    counted: AtomicBool,
}

impl PartitionStream for CountedScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let stream = match self.plan.execute(self.partition, ctx) {
            Ok(s) => s,
            Err(e) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(async move { Err(e) }),
                ));
            }
        };
        // A transform that reads `source` twice (a self-join) scans twice;
        // count the first scan only.
        if self.counted.swap(true, Ordering::SeqCst) {
            return stream;
        }
        let rows = self.rows.clone();
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.inspect(move |b| {
                if let Ok(b) = b {
                    rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
            }),
        ))
    }
}

fn bytes_scanned(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("bytes_scanned"))
        .map_or(0, |v| v.as_usize() as u64);
    own + plan.children().into_iter().map(bytes_scanned).sum::<u64>()
}

/// Everything a chunk needs that is shared across chunks.
pub struct ChunkQuery<'a> {
    pub spec: &'a JobSpec,
    pub source: &'a Arc<dyn Source>,
    /// `[[tables]]`, which the transform may join.
    pub lookups: &'a Lookups,
    pub range: Option<&'a RangeColumn>,
    pub config: &'a SessionConfig,
    pub runtime: &'a Arc<RuntimeEnv>,
    pub index: Option<Arc<DedupIndex>>,
    pub run_id: i64,
    /// Bytes of held-back dedup rows the chunk keeps in memory.
    pub hold_back: usize,
    /// Where held-back rows spill beyond that.
    pub spill_dir: Option<&'a std::path::Path>,
}

fn transform_sql(spec: &JobSpec) -> &str {
    spec.transform
        .as_ref()
        .map_or("SELECT * FROM source", |t| t.sql.as_str())
}

/// Adds `__bf_rule` to the transformed rows when rules or dedup are
/// configured; the plain transform otherwise.
async fn with_quality_columns(ctx: &SessionContext, spec: &JobSpec) -> DfResult<DataFrame> {
    let transformed = ctx.sql(transform_sql(spec)).await?;
    if spec.rules.is_empty() && spec.dedup.is_none() {
        return Ok(transformed);
    }
    ctx.register_table("__bf_t", transformed.into_view())?;
    let rule = quality::rule_case(&spec.rules);
    let ruled = ctx
        .sql(&format!(
            "SELECT *, {rule} AS {} FROM \"__bf_t\"",
            quality::ident(quality::RULE_COL)
        ))
        .await?;
    Ok(ruled)
}

/// Reads, transforms, checks and writes one chunk.
pub async fn execute_chunk(
    q: &ChunkQuery<'_>,
    chunk: &Chunk,
    target: &mut dyn ChunkWriter,
    quarantine: &mut dyn ChunkWriter,
) -> Result<ExecStats, ChunkError> {
    run_chunk(q, chunk, target, quarantine, None).await
}

/// Runs a chunk's pipeline into measuring writers, also handing every
/// transformed row to `all` (for `validate`).
pub async fn measure_chunk(
    q: &ChunkQuery<'_>,
    chunk: &Chunk,
    target: &mut dyn ChunkWriter,
    quarantine: &mut dyn ChunkWriter,
    all: &mut dyn ChunkWriter,
) -> Result<ExecStats, ChunkError> {
    run_chunk(q, chunk, target, quarantine, Some(all)).await
}

async fn run_chunk(
    q: &ChunkQuery<'_>,
    chunk: &Chunk,
    target: &mut dyn ChunkWriter,
    quarantine: &mut dyn ChunkWriter,
    mut all: Option<&mut dyn ChunkWriter>,
) -> Result<ExecStats, ChunkError> {
    failpoint::hit("read", chunk.index)?;
    let ctx = SessionContext::new_with_config_rt(q.config.clone(), q.runtime.clone());
    register_lookups(&ctx, q.lookups)?;
    let mut raw = ctx.read_table(q.source.table())?;
    if let Some(col) = q.range
        && let Some(pred) =
            crate::predicate::datafusion(col, chunk).map_err(DataFusionError::from)?
    {
        raw = raw.filter(pred)?;
    }
    let scan = raw.create_physical_plan().await?;
    let rows = Arc::new(AtomicU64::new(0));
    let schema = scan.schema();
    let partitions = (0..scan.properties().output_partitioning().partition_count())
        .map(|partition| {
            Arc::new(CountedScan {
                plan: scan.clone(),
                partition,
                schema: schema.clone(),
                rows: rows.clone(),
                counted: AtomicBool::new(false),
            }) as Arc<dyn PartitionStream>
        })
        .collect();
    let table = StreamingTable::try_new(schema, partitions)?;
    ctx.register_table("source", Arc::new(table))?;
    let df = with_quality_columns(&ctx, q.spec).await?;
    let mut splitter = Splitter::new(
        q.spec,
        q.index.clone(),
        chunk,
        q.run_id,
        q.hold_back,
        q.spill_dir.map(|d| d.to_path_buf()),
    );
    // `[target] sort_by`: the target's rows go through a sort (after the
    // splitter, so held-back dedup winners are sorted with the rest).
    let keys = &q.spec.target.sort_by;
    let (mut out, sorting) = if keys.is_empty() {
        (super::sorted::TargetOut::Direct(target), None)
    } else {
        let target_schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(
            df.schema()
                .fields()
                .iter()
                .filter(|f| f.name() != quality::RULE_COL)
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let (tx, fut) = super::sorted::sorted_writer(&ctx, target_schema, keys, target);
        (super::sorted::TargetOut::Sorted(tx), Some(fut))
    };
    let mut stream = df.execute_stream().await?;
    let produce = async {
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            if !splitter.active() {
                splitter.counts.rows_in += batch.num_rows() as u64;
                if let Some(all) = all.as_deref_mut() {
                    all.write(batch.clone()).await?;
                }
                out.write(batch).await?;
                continue;
            }
            let split = splitter.split(&batch)?;
            if let Some(all) = all.as_deref_mut() {
                all.write(split.data).await?;
            }
            if let Some(t) = split.target {
                out.write(t).await?;
            }
            if let Some(qb) = split.quarantine {
                quarantine.write(qb).await?;
            }
        }
        while let Some(winners) = splitter.next_held_winners()? {
            out.write(winners).await?;
        }
        // The sort ends when its sender is gone.
        drop(out);
        Ok::<(), ChunkError>(())
    };
    match sorting {
        Some(sort) => {
            futures::try_join!(produce, sort)?;
        }
        None => produce.await?,
    }
    let counts = splitter.counts;
    quality_verdict(q.spec, &counts)?;
    Ok(ExecStats {
        rows_read: rows.load(Ordering::Relaxed),
        bytes_read: bytes_scanned(&scan),
        quality: counts,
    })
}

/// The transformed rows of the whole job range as `__bf_t`, for the dedup
/// index passes. With several chunks, `place` is the range column and each
/// row carries `__bf_c`, the chunk that selects its source row
/// ([`crate::placement`]). `filter` applies the range predicate, which the
/// caller skips when statistics prove every source row is in the range.
#[allow(clippy::too_many_arguments)]
pub async fn index_context(
    spec: &JobSpec,
    source: &Arc<dyn Source>,
    lookups: &Lookups,
    place: Option<(&RangeColumn, &[Chunk])>,
    filter: Option<&RangeColumn>,
    whole: &Chunk,
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
) -> DfResult<SessionContext> {
    let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
    register_lookups(&ctx, lookups)?;
    let mut raw = ctx.read_table(source.table())?;
    if let Some(range) = filter
        && let Some(pred) = crate::predicate::datafusion(range, whole)?
    {
        raw = raw.filter(pred)?;
    }
    let transformed = match place {
        Some((range, chunks)) => {
            crate::placement::transformed_with_chunks(
                &ctx,
                raw,
                transform_sql(spec),
                lookups,
                range,
                chunks,
            )
            .await?
        }
        None => {
            ctx.register_table("source", raw.into_view())?;
            ctx.sql(transform_sql(spec)).await?
        }
    };
    ctx.register_table("__bf_t", transformed.into_view())?;
    Ok(ctx)
}

fn key_list(dedup: &DedupSpec) -> String {
    dedup
        .keys
        .iter()
        .map(|k| quality::ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first dedup index pass over [`index_context`]'s rows: the hashes of
/// the keys met more than once, every row's key counted, passing or not (a
/// superset of the passing repeats). Each scan partition hashes its own
/// rows' keys (so both cores hash), spilling to `spill_dir`; then the
/// hashes are merged bucket by bucket.
pub async fn repeated_keys(
    ctx: &SessionContext,
    dedup: &DedupSpec,
    spill_dir: &std::path::Path,
    budget: usize,
) -> DfResult<RepeatedKeys> {
    let started = std::time::Instant::now();
    let dir = repeats::spill_dir(spill_dir)?;
    let path: Arc<std::path::Path> = dir.path().into();
    let plan = ctx
        .sql(&format!("SELECT {} FROM \"__bf_t\"", key_list(dedup)))
        .await?
        .create_physical_plan()
        .await?;
    let streams = datafusion::physical_plan::execute_stream_partitioned(plan, ctx.task_ctx())?;
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let hashes = KeyHashes::new(path.clone(), i, repeats::DEFAULT_BUDGET);
            tokio::spawn(dedup_index::hash_keys(stream, hashes))
        })
        .collect();
    let mut partitions = Vec::with_capacity(tasks.len());
    for t in tasks {
        partitions.push(
            t.await
                .map_err(|e| DataFusionError::External(Box::new(e)))??,
        );
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let repeated =
        tokio::task::spawn_blocking(move || RepeatedKeys::find(partitions, threads, budget))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
    // The spill files go now, not when the index has been built.
    drop(dir);
    tracing::debug!(
        "dedup index: {} repeated key hashes among {} rows in {:.2}s",
        repeated.len(),
        repeated.rows(),
        started.elapsed().as_secs_f64(),
    );
    if repeated.is_filter() {
        tracing::info!(
            "dedup: the {} repeated keys' hashes may need more than their {} MiB share of \
             memory_limit; a filter of {} MiB stands for them (it lets a few keys met once \
             through, which costs work, not correctness)",
            repeated.len(),
            budget >> 20,
            repeated.bytes() >> 20
        );
    }
    Ok(repeated)
}

/// The second pass: for the rows with a repeated key hash that pass the
/// rules, the key columns, order columns and, when several chunks need it,
/// the row's chunk `__bf_c`, for [`DedupIndex::build`]. It reads only the
/// columns it needs.
///
/// [`DedupIndex::build`]: crate::dedup::DedupIndex::build
pub async fn index_rows(
    ctx: &SessionContext,
    spec: &JobSpec,
    dedup: &DedupSpec,
    placed: bool,
    repeated: RepeatedKeys,
) -> DfResult<SendableRecordBatchStream> {
    let mut select = Vec::new();
    for (i, k) in dedup.keys.iter().enumerate() {
        select.push(format!("{} AS \"__bf_k{i}\"", quality::ident(k)));
    }
    for (i, o) in dedup.order_by.iter().enumerate() {
        select.push(format!("{} AS \"__bf_o{i}\"", quality::ident(&o.column)));
    }
    // With one chunk every row is in it; no placement is needed.
    if placed {
        select.push(quality::ident(crate::placement::CHUNK_COL));
    }
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        dedup_index::CandidateUdf::new(Arc::new(repeated)),
    ));
    let sql = format!(
        "SELECT {} FROM \"__bf_t\" WHERE {}({}) AND {}",
        select.join(", "),
        dedup_index::CANDIDATE_UDF,
        key_list(dedup),
        quality::all_rules_pass(&spec.rules),
    );
    ctx.sql(&sql).await?.execute_stream().await
}

/// Plans the transform once against the source schema, so a bad SQL or a
/// missing column fails before any chunk runs. Returns the output schema.
pub async fn check_transform(
    source_schema: SchemaRef,
    transform_sql: Option<&str>,
    lookups: &Lookups,
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
) -> Result<SchemaRef, DataFusionError> {
    let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
    register_lookups(&ctx, lookups)?;
    let empty = datafusion::datasource::empty::EmptyTable::new(source_schema);
    ctx.register_table("source", Arc::new(empty))?;
    let df = ctx
        .sql(transform_sql.unwrap_or("SELECT * FROM source"))
        .await?;
    Ok(Arc::new(df.schema().as_arrow().clone()))
}

pub fn check_range_type(dt: &DataType, kind: backfill_core::ValueKind) -> bool {
    match kind {
        backfill_core::ValueKind::Time => {
            matches!(
                dt,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            )
        }
        backfill_core::ValueKind::Int => dt.is_integer(),
    }
}

/// Plans one rule's check against the transform's output, so a bad condition
/// fails before any chunk runs.
pub async fn check_rule(
    transformed: SchemaRef,
    check: &str,
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
) -> Result<(), DataFusionError> {
    let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
    let empty = datafusion::datasource::empty::EmptyTable::new(transformed);
    ctx.register_table("__bf_t", Arc::new(empty))?;
    let df = ctx
        .sql(&format!("SELECT ({check}) AS ok FROM \"__bf_t\""))
        .await?;
    let dt = df.schema().field(0).data_type().clone();
    if dt != DataType::Boolean && dt != DataType::Null {
        return Err(DataFusionError::Plan(format!(
            "the check is of type {dt}, not a true/false condition"
        )));
    }
    Ok(())
}

/// Source rows whose range column is NULL: no chunk covers them, so they are
/// counted and reported rather than silently left out.
pub async fn count_null_range(
    source: &Arc<dyn Source>,
    range: &RangeColumn,
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
) -> DfResult<u64> {
    let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
    let column = Expr::Column(Column::new_unqualified(range.name.clone()));
    let n = ctx
        .read_table(source.table())?
        .filter(column.is_null())?
        .count()
        .await?;
    Ok(n as u64)
}
