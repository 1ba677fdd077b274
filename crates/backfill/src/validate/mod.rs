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

mod measure;
mod strays;
use measure::*;
use strays::*;

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
    /// A Kafka source no longer holds the chunk's offsets (retention, a
    /// recreated topic): the source side cannot be read, which is not the
    /// same as rows missing from the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_forgotten: Option<String>,
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
            // Kafka rows always have offsets and timestamps; counting
            // would read the whole topic.
            Some(_) if job.source.as_kafka().is_some() => 0,
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

/// Why the source can no longer give a chunk's rows, if that is what `e`
/// says (a Kafka log that forgot the chunk's offsets).
fn forgotten(e: &ChunkError) -> Option<String> {
    use crate::source::kafka::KafkaError;
    let ChunkError::Query(q) = e else {
        return None;
    };
    match q.find_root() {
        datafusion::error::DataFusionError::External(inner) => inner
            .downcast_ref::<KafkaError>()
            .filter(|k| matches!(k, KafkaError::Gone { .. } | KafkaError::Truncated { .. }))
            .map(ToString::to_string),
        _ => None,
    }
}

/// The check of a chunk whose source offsets are gone: what the ledger
/// recorded, and the reason in place of a comparison.
fn forgotten_check(chunk: &Chunk, record: Option<&ChunkRecord>, why: String) -> ChunkCheck {
    let m = record.and_then(|r| r.metrics.as_ref());
    ChunkCheck {
        index: chunk.index,
        id: chunk.id.clone(),
        bounds: chunk.bounds(),
        status: record.map_or(ChunkStatus::Pending, |r| r.status),
        source_rows: 0,
        expected_rows_in: 0,
        expected_target: 0,
        expected_quarantined: 0,
        expected_removed: 0,
        expected_checksum: String::new(),
        target_rows: 0,
        unaccounted_rows: 0,
        target_checksum: String::new(),
        quarantined_rows: 0,
        recorded_rows_read: m.map(|m| m.rows_read),
        recorded_written: m.map(|m| m.rows_written),
        recorded_quarantined: m.map(|m| m.rows_quarantined),
        recorded_dropped: m.map(|m| m.rows_dropped),
        recorded_duplicates: m.map(|m| m.duplicates),
        recorded_checksum: m.map(|m| hex(m.checksum)),
        sums: BTreeMap::new(),
        problems: vec![format!(
            "cannot be checked, the source no longer holds it: {why}"
        )],
        source_forgotten: Some(why),
    }
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
        lookups: &job.lookups,
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
            Err(e) => {
                if let Some(why) = forgotten(&e) {
                    return Ok((forgotten_check(chunk, record, why), BTreeMap::new()));
                }
                return Err(Error::Usage(format!("validating chunk {}: {e}", chunk.id)));
            }
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
    // A join with a lookup table keeps or drops a source row, never makes
    // two of it, unless the table repeats a key: then every count above
    // agrees with itself and only this says so.
    if !spec.tables.is_empty() && all.rows > stats.rows_read {
        problems.push(format!(
            "the transform gives {} rows for the chunk's {} source rows: a lookup table ([[tables]]) matches some rows more than once (a repeated key?)",
            all.rows, stats.rows_read
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
            source_forgotten: None,
        },
        per_group,
    ))
}
