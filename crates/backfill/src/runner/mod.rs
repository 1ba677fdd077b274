//! The scheduler: open the job, recover from any crash, then run the selected
//! chunks with bounded concurrency, each through
//! claim → execute → stage → commit (state) → publish → clean up,
//! retrying transient failures with backoff.
//!
//! Here: the public facade ([`Backfill`]) and the read-only commands. The
//! scheduler is in `schedule.rs`, one chunk's attempt and the commit
//! protocol in `attempt.rs`, crash and replan repair in `recover.rs`, the
//! dedup passes in `index.rs`, opening and binding a job in `job.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backfill_core::interval::{RangeValue, ValueKind};
use backfill_core::plan::{self, Chunk};
use backfill_core::retry::RetryPolicy;
use backfill_core::spec::JobSpec;
use backfill_core::state::{
    ChunkMetrics, ChunkRecord, ChunkStatus, JobOwner, LockHolder, NOTE_NULL_RANGE,
    NOTE_TARGET_MARK, SqliteStateStore, StateError, StateStore,
};
use backfill_core::{ErrorClass, fingerprint};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::dedup::{self, ChunkIndexes, DedupIndex, SavedIndex, saved as saved_index};
use crate::engine::local::ChunkQuery;
use crate::engine::{self, Engine};
use crate::error::{ChunkError, Error};
use crate::failpoint;
use crate::predicate::RangeColumn;
use crate::progress::{Progress, ProgressMode};
use crate::sink::checksum::ChecksumVersion;
use crate::sink::{SinkError, Sinks};
use crate::source::{self, Source};
use crate::store::StoreError;

mod attempt;
mod index;
mod job;
mod recover;
mod schedule;

use attempt::*;
pub(crate) use index::dedup_index;
pub(crate) use job::*;
use recover::*;
use schedule::select;

/// A backfill job, ready to plan, run or inspect.
///
/// ```no_run
/// # async fn demo() -> Result<(), backfill::Error> {
/// let job = backfill::Backfill::from_file("backfill.toml")?;
/// let summary = job.run().await?;
/// println!("{} chunks committed, {} rows written", summary.committed, summary.rows_written);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Backfill {
    spec: JobSpec,
}

/// How `run` behaves; the defaults run every chunk not yet committed.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only chunks overlapping `[from, to)`; committed ones among them run again.
    pub from: Option<RangeValue>,
    pub to: Option<RangeValue>,
    /// Overrides `[run] parallelism`.
    pub parallelism: Option<usize>,
    /// Accept a changed `[range]`: retire old chunks and plan anew.
    pub replan: bool,
    /// Show what would run, run nothing.
    pub dry_run: bool,
    /// Only chunks whose last attempt failed.
    pub only_failed: bool,
    pub progress: ProgressMode,
    /// Stops the run cleanly when cancelled (the CLI cancels on Ctrl-C and
    /// SIGTERM); `None`: runs to the end.
    pub cancel: Option<crate::Cancel>,
    /// Told as each chunk ends.
    pub on_chunk: Option<crate::progress::OnChunk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedChunk {
    pub index: usize,
    pub id: String,
    pub bounds: String,
    pub error: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub job: String,
    pub planned: usize,
    pub selected: usize,
    pub committed: usize,
    pub failed: Vec<FailedChunk>,
    /// Chunks left for the next run (interrupted, or after an ordered failure).
    pub left: usize,
    /// Chunks another process sharing the state store ran instead.
    pub taken: usize,
    /// Chunks committed empty without a scan: statistics proved them empty.
    pub empty: usize,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    pub rows_dropped: u64,
    pub duplicates: u64,
    /// Rejected rows per rule, over the chunks this run committed.
    pub rules: BTreeMap<String, backfill_core::RuleCount>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub elapsed_secs: f64,
    /// Source rows with a NULL range column: in no chunk, so not in the target.
    pub null_range_rows: u64,
    pub interrupted: bool,
    pub dry_run: bool,
    /// Chunks a dry run would run.
    pub would_run: Vec<Chunk>,
    /// Crash leftovers the run repaired before starting.
    pub recovered: Recovery,
    /// The run was limited by --from/--to or --only-failed.
    pub narrowed: bool,
    /// Committed chunks run again because source files they may read were
    /// added, changed or removed.
    pub source_reruns: usize,
    /// Committed chunks run again because the source moved the dedup
    /// winners of their keys (a late, changed or deleted source file).
    pub dedup_reruns: usize,
    /// Committed chunks run again because another writer added or removed
    /// rows in their range of the table (Delta).
    pub foreign_reruns: usize,
}

impl RunSummary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows_read as f64 / self.elapsed_secs.max(1e-6)
    }

    pub fn nothing_to_do(&self) -> bool {
        self.selected == 0
    }
}

/// What recovery found and fixed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub republished_chunks: usize,
    pub lost_chunks: usize,
    pub garbage_removed: usize,
    pub orphans_removed: usize,
    pub interrupted_chunks: usize,
    /// Committed chunks whose publish failed again (id, error): they stay
    /// committed and unpublished for the next run, and this run goes on
    /// without them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<(String, String)>,
}

/// One row of `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedChunk {
    #[serde(flatten)]
    pub chunk: Chunk,
    pub status: ChunkStatus,
    /// From source metadata (Parquet statistics); `None` without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::source::Estimate>,
    /// Committed chunks: the rows a run would replace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrites: Option<u64>,
}

/// A Kafka partition in a plan: the offsets the log holds now and the
/// offsets the plan covers (frozen by the first run, extended by each run
/// of an `end = "now"` job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedPartition {
    pub partition: i32,
    /// The first offset still in the log.
    pub earliest: i64,
    /// The offset the next event will get.
    pub latest: i64,
    pub planned_start: i64,
    pub planned_end: i64,
}

/// `plan` in full: the chunks, and a Kafka job's partitions.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub chunks: Vec<PlannedChunk>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PlannedPartition>,
}

impl Backfill {
    /// Reads and checks a job file (no I/O beyond reading it).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Backfill, Error> {
        Ok(Backfill::from_spec(JobSpec::from_file(path)?))
    }

    pub fn from_spec(mut spec: JobSpec) -> Backfill {
        crate::redact::register(&spec.secrets);
        resolve_state_path(&mut spec);
        Backfill { spec }
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The chunks with their current status (pending where the state store
    /// has no record yet). Checks the job against the source.
    pub async fn plan(&self) -> Result<Vec<PlannedChunk>, Error> {
        Ok(self.plan_in_full().await?.chunks)
    }

    /// [`Backfill::plan`], with a Kafka job's offsets per partition.
    pub async fn plan_in_full(&self) -> Result<Plan, Error> {
        let job = self.open().await?;
        let partitions = match (job.source.as_kafka(), &job.kafka_spans) {
            (Some(kafka), Some(spans)) => kafka
                .offsets()
                .iter()
                .filter_map(|o| {
                    let span = spans.iter().find(|s| s.partition == o.partition)?;
                    Some(PlannedPartition {
                        partition: o.partition,
                        earliest: o.earliest,
                        latest: o.latest,
                        planned_start: span.start,
                        planned_end: span.ends.last().copied().unwrap_or(span.start),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let known: BTreeMap<String, ChunkRecord> = match self.open_state_existing()? {
            Some(s) => s.chunks()?.into_iter().map(|c| (c.id.clone(), c)).collect(),
            None => BTreeMap::new(),
        };
        let estimates = match &job.range {
            Some(range) => job.source.estimate(range, &job.chunks).await?,
            None => None,
        };
        let chunks =
            job.chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let record = known.get(&c.id);
                    PlannedChunk {
                        status: record.map_or(ChunkStatus::Pending, |r| r.status),
                        overwrites: record
                            .filter(|r| r.status == ChunkStatus::Committed)
                            .and_then(|r| r.metrics.as_ref())
                            .map(|m| m.rows_written),
                        // A bucket holds about its share of the window's rows
                        // (it reads the whole window's bytes).
                        estimate: estimates.as_ref().and_then(|e| e.get(i).copied()).map(
                            |mut e| {
                                if let Some(b) = c.bucket {
                                    e.rows = e.rows.div_ceil(u64::from(b.of));
                                }
                                e
                            },
                        ),
                        chunk: c,
                    }
                })
                .collect();
        Ok(Plan { chunks, partitions })
    }

    /// `from` and `to` as values of the range: dates and naive times in
    /// the job's zone (`[range] timezone`), integers for sequence ranges.
    /// `names` are what errors call them (the CLI's `--from`/`--to`).
    pub fn window(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        names: [&str; 2],
    ) -> Result<(Option<RangeValue>, Option<RangeValue>), Error> {
        let range = self.spec.range.as_ref();
        if (from.is_some() || to.is_some()) && range.is_none() {
            return Err(Error::Usage(format!(
                "{}/{} need a [range] in the job file; this job is one full-load chunk",
                names[0], names[1]
            )));
        }
        let kind = range.and_then(|r| r.kind());
        let calendar = range.map(|r| r.plan_calendar()).unwrap_or_default();
        let parse = |name: &str, text: &str| {
            let parsed = match kind {
                Some(ValueKind::Time) => calendar.parse_time(text).map(RangeValue::Time),
                Some(ValueKind::Int) => text
                    .replace('_', "")
                    .parse::<i64>()
                    .map(RangeValue::Int)
                    .map_err(|_| format!("\"{text}\" is not an integer")),
                None => RangeValue::parse(text),
            };
            parsed.map_err(|e| Error::Usage(format!("{name}: {e}")))
        };
        Ok((
            from.map(|t| parse(names[0], t)).transpose()?,
            to.map(|t| parse(names[1], t)).transpose()?,
        ))
    }

    /// Per-chunk state from the state store; chunks of a job that never ran
    /// are listed as pending. Reads no data.
    pub fn status(&self) -> Result<Vec<ChunkRecord>, Error> {
        let recorded = match self.open_state_existing()? {
            Some(s) => s.chunks()?,
            None => Vec::new(),
        };
        let planned = plan::plan(&self.spec.name, self.spec.range.as_ref());
        if !recorded.is_empty() {
            // Buckets are not stored; the plan knows each bucket chunk's.
            let buckets: std::collections::HashMap<String, plan::Bucket> = planned
                .iter()
                .flatten()
                .filter_map(|c| Some((c.id.clone(), c.bucket?)))
                .collect();
            return Ok(recorded
                .into_iter()
                .map(|mut r| {
                    r.bucket = buckets.get(&r.id).copied();
                    r
                })
                .collect());
        }
        Ok(planned?
            .into_iter()
            .map(|c| ChunkRecord {
                id: c.id,
                index: c.index,
                lo: c.lo,
                hi: c.hi,
                value: c.value,
                bucket: c.bucket,
                status: ChunkStatus::Pending,
                attempts: 0,
                metrics: None,
                last_error: None,
                updated_at: None,
            })
            .collect())
    }

    /// Marks chunks overlapping `[from, to)` (all when both are `None`) to run
    /// again; their files stay visible until the new attempt commits.
    pub fn reset(&self, from: Option<RangeValue>, to: Option<RangeValue>) -> Result<usize, Error> {
        // A partition chunk has no bounds, so every one would "overlap".
        if (from.is_some() || to.is_some())
            && self
                .spec
                .range
                .as_ref()
                .is_some_and(|r| r.partitions.is_some())
        {
            return Err(Error::Usage(
                "--from/--to select ranges; this job's chunks are partitions (use `reset --all`)"
                    .into(),
            ));
        }
        let Some(state) = self.open_state_existing()? else {
            return Ok(0);
        };
        with_lock(state.as_ref(), || {
            let ids: Vec<String> = state
                .chunks()?
                .into_iter()
                .filter(|c| c.chunk().overlaps(from, to))
                .map(|c| c.id)
                .collect();
            Ok(state.reset(&ids)?)
        })
    }

    /// The same job planned up to now along its chunk grid (`run
    /// --incremental`): chunks past `[range] end` are added, the planned
    /// ones keep their bounds, and runs re-run the last `lookback` committed
    /// chunks. `BACKFILL_NOW` (a date or timestamp) stands in for the clock.
    pub fn incremental(&self) -> Result<Backfill, Error> {
        let mut spec = self.spec.clone();
        let Some(r) = spec.range.as_mut() else {
            return Err(Error::Usage(
                "--incremental needs a [range] over a time column".into(),
            ));
        };
        if r.start
            .is_some_and(|s| s.kind() != backfill_core::ValueKind::Time)
            || r.chunk.kind() != Some(backfill_core::ValueKind::Time)
        {
            return Err(Error::Usage(
                "--incremental needs a time [range] with a chunk width such as \"1d\"".into(),
            ));
        }
        let now = match std::env::var("BACKFILL_NOW") {
            Ok(v) => r
                .calendar
                .parse_time(&v)
                .map_err(|e| Error::Usage(format!("BACKFILL_NOW: {e}")))?,
            Err(_) => chrono::Utc::now().timestamp_micros(),
        };
        r.extend_to = Some(RangeValue::Time(r.instant_as_value(now)));
        Ok(Backfill { spec })
    }

    /// Incremental jobs re-run their last committed chunks.
    fn lookback(&self) -> Option<u32> {
        // Kafka offset windows never receive late events.
        if self.spec.position_column().is_some() {
            return None;
        }
        let r = self.spec.range.as_ref()?;
        r.extend_to.map(|_| r.lookback)
    }

    /// Removes the job's lock (ends its leases, in a shared state),
    /// unless its holder is a process of this host that is running.
    pub fn unlock(&self) -> Result<Option<LockHolder>, Error> {
        let Some(state) = self.open_state_existing()? else {
            return Ok(None);
        };
        if let Some(h) = state.holders()?.into_iter().find(LockHolder::is_alive_here) {
            return Err(StateError::HolderAlive {
                pid: h.pid,
                host: h.host,
            }
            .into());
        }
        Ok(state.force_unlock()?)
    }

    /// Runs every chunk not yet committed.
    pub async fn run(&self) -> Result<RunSummary, Error> {
        self.run_with(RunOptions::default()).await
    }

    pub async fn run_with(&self, opts: RunOptions) -> Result<RunSummary, Error> {
        let started = Instant::now();
        let job = Arc::new(self.open().await?);
        let mut summary = RunSummary {
            job: job.spec.name.clone(),
            planned: job.chunks.len(),
            dry_run: opts.dry_run,
            narrowed: opts.from.is_some() || opts.to.is_some() || opts.only_failed,
            ..Default::default()
        };
        if let (Some(from), Some(to)) = (opts.from, opts.to)
            && to <= from
        {
            return Err(Error::Usage(format!(
                "--to {to} must be after --from {from}"
            )));
        }
        if let Some(r) = &self.spec.range {
            if r.partitions.is_some() && (opts.from.is_some() || opts.to.is_some()) {
                return Err(Error::Usage(
                    "--from/--to select ranges; this job's chunks are partitions (use `reset --all` or --only-failed)".into(),
                ));
            }
            for (flag, v) in [("--from", opts.from), ("--to", opts.to)] {
                if let (Some(v), Some(kind)) = (v, r.kind())
                    && v.kind() != kind
                {
                    return Err(Error::Usage(format!(
                        "{flag} {v} is not {kind}, like the job's range"
                    )));
                }
            }
        }

        if !opts.dry_run {
            for (dir, key) in [
                (&self.spec.target.path, "target.path"),
                (&self.spec.quarantine.path, "quarantine.path"),
            ] {
                // Object stores have no directories to create.
                if dir.as_os_str().is_empty() {
                    continue;
                }
                std::fs::create_dir_all(dir).map_err(|e| {
                    self.job_error(
                        self.spec.target.path_loc,
                        key,
                        format!("cannot create {}: {e}", dir.display()),
                    )
                })?;
            }
        }
        if opts.dry_run {
            // Read-only: no lock, no recovery, no state changes.
            let records: BTreeMap<String, ChunkRecord> = match self.open_state_existing()? {
                Some(s) => s.chunks()?.into_iter().map(|c| (c.id.clone(), c)).collect(),
                None => BTreeMap::new(),
            };
            summary.would_run = select(&job.chunks, &records, &opts, self.lookback());
            summary.selected = summary.would_run.len();
            summary.elapsed_secs = started.elapsed().as_secs_f64();
            return Ok(summary);
        }
        let state = self.open_state()?;
        let holder = LockHolder::current();
        if let Some(stale) = state.lock(&holder)? {
            tracing::warn!(
                "took over the lock of pid {} on {} (since {}), which is no longer running",
                stale.pid,
                stale.host,
                stale.since
            );
        }
        let result = self
            .run_locked(job, state.clone(), &opts, &mut summary)
            .await;
        if let Err(e) = state.unlock(&holder) {
            tracing::warn!("could not release the job lock: {e}");
        }
        summary.elapsed_secs = started.elapsed().as_secs_f64();
        result.map(|()| summary)
    }
}

/// Runs `f` holding the job's lock, as `run` does: a change to the state
/// (`reset`, `gaps --fix`) waits for no one and is refused while a live
/// run holds the job (a shared state has no job lock: it leases chunks).
pub(crate) fn with_lock<T>(
    state: &dyn StateStore,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    let me = LockHolder::current();
    state.lock(&me)?;
    let out = f();
    if let Err(e) = state.unlock(&me) {
        tracing::warn!("could not release the job lock: {e}");
    }
    out
}
