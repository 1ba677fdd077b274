//! The scheduler: open the job, recover from any crash, then run the selected
//! chunks with bounded concurrency, each through
//! claim → execute → stage → commit (state) → publish → clean up,
//! retrying transient failures with backoff.
//!
//! Here: the public facade ([`Backfill`]), opening and binding a job, the
//! read-only commands and the scheduler. One chunk's attempt and the commit
//! protocol are in `attempt.rs`, crash and replan repair in `recover.rs`,
//! the dedup passes in `index.rs`, opening and binding a job in `job.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backfill_core::interval::RangeValue;
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
use crate::engine::{self, ChunkQuery, RangeColumn};
use crate::error::{ChunkError, Error};
use crate::failpoint;
use crate::progress::{Progress, ProgressMode};
use crate::sink::checksum::ChecksumVersion;
use crate::sink::{SinkError, Sinks};
use crate::source::{self, Source};
use crate::store::StoreError;

mod attempt;
mod index;
mod job;
mod recover;

use attempt::*;
pub(crate) use index::dedup_index;
pub(crate) use job::*;
use recover::*;

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
        let job = self.open().await?;
        let known: BTreeMap<String, ChunkRecord> = match self.open_state_existing()? {
            Some(s) => s.chunks()?.into_iter().map(|c| (c.id.clone(), c)).collect(),
            None => BTreeMap::new(),
        };
        let estimates = match &job.range {
            Some(range) => job.source.estimate(range, &job.chunks).await?,
            None => None,
        };
        Ok(job
            .chunks
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
                    estimate: estimates.as_ref().and_then(|e| e.get(i).copied()),
                    chunk: c,
                }
            })
            .collect())
    }

    /// Per-chunk state from the state store; chunks of a job that never ran
    /// are listed as pending. Reads no data.
    pub fn status(&self) -> Result<Vec<ChunkRecord>, Error> {
        let recorded = match self.open_state_existing()? {
            Some(s) => s.chunks()?,
            None => Vec::new(),
        };
        if !recorded.is_empty() {
            return Ok(recorded);
        }
        Ok(plan::plan(&self.spec.name, self.spec.range.as_ref())?
            .into_iter()
            .map(|c| ChunkRecord {
                id: c.id,
                index: c.index,
                lo: c.lo,
                hi: c.hi,
                value: c.value,
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
            Ok(v) => backfill_core::interval::parse_time(&v)
                .map_err(|e| Error::Usage(format!("BACKFILL_NOW: {e}")))?,
            Err(_) => chrono::Utc::now().timestamp_micros(),
        };
        r.extend_to = Some(RangeValue::Time(now));
        Ok(Backfill { spec })
    }

    /// Incremental jobs re-run their last committed chunks.
    fn lookback(&self) -> Option<u32> {
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

    async fn run_locked(
        &self,
        job: Arc<OpenJob>,
        state: Arc<dyn StateStore>,
        opts: &RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        let fp = fingerprint(job.spec.range.as_ref());
        if opts.replan {
            // Before the state forgets the old plan: a target that replaces
            // by range (Delta, PostgreSQL) keeps a retired chunk's rows
            // where no new chunk will replace them. Clearing first and
            // retiring after is safe to repeat: a crash in between leaves
            // the old plan recorded, and the next `--replan` clears again.
            clear_retired(&job, &state.chunks()?).await?;
        }
        let t = Instant::now();
        let sync = state.sync_plan(
            &crate::redact::redact(&job.spec.name),
            &fp,
            &job.chunks,
            opts.replan,
        )?;
        tracing::debug!(
            "state: plan of {} chunks synced in {:.0} ms",
            job.chunks.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        if !sync.retired.is_empty() {
            tracing::warn!(
                "--replan retired {} chunk(s) of the previous plan; their files are removed",
                sync.retired.len()
            );
        }
        let pending_orphans = recover(&job, state.as_ref(), &mut summary.recovered).await?;
        self.check_schema(&job).await?;
        reconcile_footprint(&job).await?;
        if let Some(range) = &job.range {
            // Counted once per source change: without statistics (CSV,
            // JSON) it is a scan of the whole source. How the files are
            // parsed decides which values read as NULL, so it is part of
            // what was counted.
            let src = &job.spec.source;
            let parsing = format!(
                "{:?}|{}|{:?}|{:?}",
                range.data_type, src.has_header, src.delimiter, src.columns
            );
            let counted_at = format!(
                "{}|{}|{:016x}",
                range.name,
                job.source.fingerprint(),
                twox_hash::XxHash3_64::oneshot(parsing.as_bytes())
            );
            let known = state.note(NOTE_NULL_RANGE)?.and_then(|v| {
                v.rsplit_once('\t')
                    .filter(|(at, _)| *at == counted_at)
                    .and_then(|(_, n)| n.parse::<u64>().ok())
            });
            summary.null_range_rows = match known {
                Some(n) => {
                    tracing::debug!(
                        "{n} source row(s) with a NULL {}: counted before, the source is unchanged",
                        range.name
                    );
                    n
                }
                None => {
                    let n = engine::count_null_range(&job.source, range, &job.config, &job.runtime)
                        .await
                        .map_err(|source| crate::source::SourceError::Read {
                            shown: job.source.describe(),
                            source,
                        })?;
                    state.set_note(NOTE_NULL_RANGE, &format!("{counted_at}\t{n}"))?;
                    n
                }
            };
            if summary.null_range_rows > 0 {
                tracing::warn!(
                    "{} source row(s) have a NULL {}: no chunk covers them, so they are not in the target",
                    summary.null_range_rows,
                    range.name
                );
            }
        }

        let records: BTreeMap<String, ChunkRecord> = state
            .chunks()?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let mut selected = select(&job.chunks, &records, opts, self.lookback());
        // A chunk whose publish failed in recovery keeps its committed
        // files for the next run; running it now would only stack another
        // version behind them. It fails this run.
        for (id, error) in &summary.recovered.stuck {
            selected.retain(|c| &c.id != id);
            if let Some(c) = job.chunks.iter().find(|c| &c.id == id) {
                summary.failed.push(FailedChunk {
                    index: c.index,
                    id: c.id.clone(),
                    bounds: c.bounds(),
                    error: format!(
                        "committed, but publishing it failed again: {error}; the next run tries again"
                    ),
                });
            }
        }
        let committed = |c: &Chunk| {
            records
                .get(&c.id)
                .is_some_and(|r| r.status == ChunkStatus::Committed)
        };
        // Another writer's rows in a committed chunk's range: the chunk
        // runs again, which replaces its range. The mark moves on only
        // after a run that left nothing undone, so a crash before the
        // re-runs commit finds the same writes again.
        let foreign = {
            let done: Vec<Chunk> = job
                .chunks
                .iter()
                .filter(|c| committed(c) && !selected.iter().any(|s| s.index == c.index))
                .cloned()
                .collect();
            let mark = state.note(NOTE_TARGET_MARK)?;
            match job
                .sinks
                .target
                .foreign_writes(mark.as_deref(), &done)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(
                        "could not read the target's log for other writers' changes ({e}); committed chunks stay as they are"
                    );
                    None
                }
            }
        };
        if let Some(found) = &foreign {
            let touched: HashSet<usize> = found.touched.iter().copied().collect();
            let more = job
                .chunks
                .iter()
                .filter(|c| touched.contains(&c.index))
                .cloned()
                .collect();
            summary.foreign_reruns = run_again(
                &mut selected,
                more,
                "another writer changed rows in their range of the table",
            );
        }
        let foreign_mark = foreign.map(|f| f.mark);
        // What each chunk may read of the source now, recorded with its
        // commit; a committed chunk whose part of the source changed since
        // runs again.
        let source_digests = match job
            .source
            .chunk_digests(job.range.as_ref(), &job.chunks)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(
                    "could not tell which chunks' source files changed ({e}); committed chunks stay as they are"
                );
                None
            }
        };
        if let Some(now) = &source_digests {
            let changed = changed_since_commit(&job.chunks, &records, &selected, |c, m| {
                m.source_digest
                    .as_deref()
                    .zip(now.get(c.index))
                    .is_some_and(|(recorded, now)| recorded != format!("{now:016x}"))
            });
            summary.source_reruns = run_again(
                &mut selected,
                changed,
                "source files under them were added, changed or removed",
            );
        }
        // The index follows the current source. It is needed when chunks
        // run, and also when none would: a changed source may have moved
        // the winners of keys in committed chunks.
        let index = if selected.is_empty() && !job.chunks.iter().any(committed) {
            None
        } else {
            dedup_index(&job, true).await?
        };
        let moved = match &index {
            Some(index) => changed_since_commit(&job.chunks, &records, &selected, |c, m| {
                m.dedup_section.as_ref().is_some_and(|recorded| {
                    index.digest(c.index).is_some_and(|now| &now != recorded)
                })
            }),
            None => Vec::new(),
        };
        summary.dedup_reruns = run_again(
            &mut selected,
            moved,
            "the source moved the dedup winners of their keys",
        );
        summary.selected = selected.len();
        if selected.is_empty() {
            if let Some(mark) = &foreign_mark {
                state.set_note(NOTE_TARGET_MARK, mark)?;
            }
            return Ok(());
        }
        // Committed chunks this run takes on deliberately: a shared state
        // lets it claim them again.
        let rerun: HashSet<String> = selected
            .iter()
            .filter(|c| committed(c))
            .map(|c| c.id.clone())
            .collect();
        let empty = provably_empty(&job, &records, &selected).await;

        let ordered = job.spec.range.as_ref().is_some_and(|r| r.ordered);
        let parallelism = if ordered {
            1
        } else {
            opts.parallelism.unwrap_or(job.spec.run.parallelism).max(1)
        };
        let run_id = state.begin_run(&std::env::args().collect::<Vec<_>>().join(" "))?;
        let cancel_rx = opts.cancel.clone().unwrap_or_default().subscribe();
        let progress = Arc::new(Progress::new(opts.progress, selected.len()));
        let shared = Arc::new(Shared {
            job: job.clone(),
            state: state.clone(),
            run_id,
            policy: RetryPolicy::new(job.spec.run.retries, job.spec.run.retry_backoff),
            cancel: cancel_rx.clone(),
            orphans: Mutex::new(pending_orphans),
            empty,
            index,
            rerun,
            source_digests,
            same_database: match (&job.spec.state.postgres, &job.spec.target.postgres) {
                (Some(s), Some(t)) => s.url == t.url,
                _ => false,
            },
            state_nanos: Default::default(),
            chunk_config: engine::chunk_config(&job.config, parallelism.min(selected.len())),
            hold_back: job.memory.hold_back(parallelism.min(selected.len())),
        });
        job.sinks
            .set_writer_memory(job.memory.writer(parallelism.min(selected.len())));
        tracing::debug!("memory limit: {}", job.memory.describe());

        let mut queue = selected.into_iter();
        let mut tasks: JoinSet<(Chunk, Outcome)> = JoinSet::new();
        let mut stop_scheduling = false;
        loop {
            while !stop_scheduling && !*cancel_rx.borrow() && tasks.len() < parallelism {
                let Some(chunk) = queue.next() else { break };
                let shared = shared.clone();
                tasks.spawn(async move {
                    let outcome = run_chunk(&shared, &chunk).await;
                    (chunk, outcome)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let (chunk, outcome) = match joined {
                Ok(x) => x,
                Err(e) => {
                    // Panics are caught per attempt; only a cancelled task
                    // gets here.
                    tracing::error!("a chunk task ended without an outcome: {e}");
                    summary.left += 1;
                    continue;
                }
            };
            match outcome {
                Outcome::Committed(m) => {
                    summary.committed += 1;
                    if shared.empty.contains(&chunk.id) {
                        summary.empty += 1;
                    }
                    summary.rows_read += m.rows_read;
                    summary.rows_written += m.rows_written;
                    summary.rows_quarantined += m.rows_quarantined;
                    summary.rows_dropped += m.rows_dropped;
                    summary.duplicates += m.duplicates;
                    backfill_core::state::add_rule_counts(&mut summary.rules, &m.rules);
                    summary.bytes_read += m.bytes_read;
                    summary.bytes_written += m.bytes_written;
                    progress.committed(&chunk, &m);
                }
                Outcome::Failed(error) => {
                    progress.failed(&chunk, &error);
                    summary.failed.push(FailedChunk {
                        index: chunk.index,
                        id: chunk.id.clone(),
                        bounds: chunk.bounds(),
                        error,
                    });
                    if ordered {
                        // Later chunks must not commit past a gap.
                        stop_scheduling = true;
                    }
                }
                Outcome::Interrupted => summary.left += 1,
                Outcome::Taken => {
                    summary.taken += 1;
                    progress.taken(&chunk);
                }
            }
        }
        progress.finish();
        let chunks = summary.committed;
        if chunks > 0 {
            let nanos = shared
                .state_nanos
                .load(std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                "state: {:.2} ms per committed chunk in the state store ({} chunks)",
                nanos as f64 / 1e6 / chunks as f64,
                chunks
            );
        }
        summary.left += queue.len();
        summary.interrupted = *cancel_rx.borrow();
        summary.failed.sort_by_key(|f| f.index);
        let status = if summary.interrupted {
            "interrupted"
        } else if summary.failed.is_empty() {
            "ok"
        } else {
            "failed"
        };
        state.release_interrupted()?;
        if let Some(mark) = foreign_mark
            .as_deref()
            .filter(|_| status == "ok" && summary.left == 0)
        {
            state.set_note(NOTE_TARGET_MARK, mark)?;
        }
        state.finish_run(run_id, status)?;
        Ok(())
    }
}

/// The chunks a run picks: without --from/--to those not yet committed; with
/// them every chunk overlapping the window (committed ones run again).
/// The chunks a run takes on. `lookback`: in an incremental run, that many
/// of the last committed chunks run again too, for rows that arrived late.
fn select(
    chunks: &[Chunk],
    records: &BTreeMap<String, ChunkRecord>,
    opts: &RunOptions,
    lookback: Option<u32>,
) -> Vec<Chunk> {
    let narrowed = opts.from.is_some() || opts.to.is_some();
    let status = |c: &Chunk| {
        records
            .get(&c.id)
            .map(|r| r.status)
            .unwrap_or(ChunkStatus::Pending)
    };
    let again: HashSet<usize> = match lookback {
        Some(n) if !narrowed && !opts.only_failed => chunks
            .iter()
            .rev()
            .filter(|c| status(c) == ChunkStatus::Committed)
            .take(n as usize)
            .map(|c| c.index)
            .collect(),
        _ => HashSet::new(),
    };
    chunks
        .iter()
        .filter(|c| {
            let status = status(c);
            if opts.only_failed {
                status == ChunkStatus::Failed && c.overlaps(opts.from, opts.to)
            } else if narrowed {
                c.overlaps(opts.from, opts.to)
            } else {
                status != ChunkStatus::Committed || again.contains(&c.index)
            }
        })
        .cloned()
        .collect()
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

/// Adds committed chunks to the run, in plan order, saying why; returns
/// how many.
fn run_again(selected: &mut Vec<Chunk>, more: Vec<Chunk>, why: &str) -> usize {
    let n = more.len();
    if n > 0 {
        tracing::info!("{n} committed chunk(s) run again: {why}");
        selected.extend(more);
        selected.sort_by_key(|c| c.index);
    }
    n
}

/// The committed chunks not `selected` for which `changed` says that what
/// they depend on differs from what their commit recorded. Chunks recorded
/// before a digest was kept have none, and stay as they are.
fn changed_since_commit(
    chunks: &[Chunk],
    records: &BTreeMap<String, ChunkRecord>,
    selected: &[Chunk],
    changed: impl Fn(&Chunk, &ChunkMetrics) -> bool,
) -> Vec<Chunk> {
    let chosen: HashSet<usize> = selected.iter().map(|c| c.index).collect();
    chunks
        .iter()
        .filter(|c| !chosen.contains(&c.index))
        .filter(|c| {
            records.get(&c.id).is_some_and(|r| {
                r.status == ChunkStatus::Committed
                    && r.metrics.as_ref().is_some_and(|m| changed(c, m))
            })
        })
        .cloned()
        .collect()
}
