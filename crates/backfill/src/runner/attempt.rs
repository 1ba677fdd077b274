//! One chunk from claim to clean-up: execute, stage, commit in the state,
//! publish, with retries of transient failures and the crash points the
//! torture tests stop at.

use super::*;

pub(crate) enum Outcome {
    Committed(ChunkMetrics),
    Failed(String),
    Interrupted,
    /// Another process sharing the state store holds or committed the chunk.
    Taken,
}

pub(crate) struct Shared {
    pub(crate) job: Arc<OpenJob>,
    pub(crate) state: Arc<dyn StateStore>,
    pub(crate) run_id: i64,
    pub(crate) policy: RetryPolicy,
    pub(crate) cancel: watch::Receiver<bool>,
    /// Files of chunks the state did not record, removed when the chunk commits.
    pub(crate) orphans: Mutex<BTreeMap<String, Vec<String>>>,
    /// Chunks to commit empty without a scan (see [`provably_empty`]).
    pub(crate) empty: HashSet<String>,
    pub(crate) index: Option<Arc<ChunkIndexes>>,
    /// A narrowed run runs committed chunks again.
    /// Committed chunks this run runs again (narrowed, lookback, moved
    /// dedup winners).
    pub(crate) rerun: HashSet<String>,
    /// Per chunk, the digest of the source part it may read, if the
    /// source can tell.
    pub(crate) source_digests: Option<Vec<u64>>,
    /// The state store and the target are one PostgreSQL database.
    pub(crate) same_database: bool,
    /// Time spent in the state store's per-chunk calls.
    pub(crate) state_nanos: std::sync::atomic::AtomicU64,
    /// The DataFusion settings of a chunk: the cores shared out among the
    /// chunks in flight ([`engine::local::chunk_config`]).
    pub(crate) chunk_config: SessionConfig,
    /// Each chunk's share of the memory limit for held-back dedup rows.
    pub(crate) hold_back: usize,
}

impl Shared {
    /// Runs a per-chunk state store call, adding its time to the run's
    /// account (reported with `-v`: the cost checkpointing adds per chunk).
    fn timed<T>(&self, call: impl FnOnce(&dyn StateStore) -> T) -> T {
        let t = Instant::now();
        let out = call(self.state.as_ref());
        self.state_nanos.fetch_add(
            t.elapsed().as_nanos() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        out
    }
}

/// Selected chunks that never committed and that the source's statistics
/// prove empty. File targets only: a never-committed chunk owns nothing
/// there, while a database target's replace would also delete rows already
/// in its range, which only running the chunk does.
pub(crate) async fn provably_empty(
    job: &OpenJob,
    records: &BTreeMap<String, ChunkRecord>,
    selected: &[Chunk],
) -> HashSet<String> {
    let Some(range) = &job.range else {
        return HashSet::new();
    };
    if job.sinks.target.empty_chunks_change_it() {
        return HashSet::new();
    }
    let fresh: Vec<Chunk> = selected
        .iter()
        .filter(|c| records.get(&c.id).is_none_or(|r| r.metrics.is_none()))
        .cloned()
        .collect();
    if fresh.is_empty() {
        return HashSet::new();
    }
    match job.source.estimate(range, &fresh).await {
        Ok(Some(estimates)) => fresh
            .into_iter()
            .zip(estimates)
            .filter(|(_, e)| e.empty)
            .map(|(c, _)| c.id)
            .collect(),
        Ok(None) => HashSet::new(),
        Err(e) => {
            tracing::warn!("cannot read source statistics, every chunk is scanned: {e}");
            HashSet::new()
        }
    }
}

pub(crate) async fn cancelled(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The message a panic carried.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

pub(crate) async fn run_chunk(shared: &Shared, chunk: &Chunk) -> Outcome {
    let mut tries = 0u32;
    loop {
        tries += 1;
        let claimed =
            shared.timed(|s| s.claim(shared.run_id, &chunk.id, shared.rerun.contains(&chunk.id)));
        let attempt = match claimed {
            Ok(Some(a)) => a,
            Ok(None) => return Outcome::Taken,
            Err(e) => return Outcome::Failed(format!("state store: {e}")),
        };
        // A panic is a bug, but it must fail this chunk (and the run's exit
        // code), not vanish with its task while the others go on.
        use futures::FutureExt;
        let result = match std::panic::AssertUnwindSafe(attempt_chunk(shared, chunk, attempt))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(payload) => Err(ChunkError::Panicked(panic_text(payload.as_ref()))),
        };
        match result {
            Ok(m) => return Outcome::Committed(m),
            Err(ChunkError::State(StateError::LeaseLost { .. })) => {
                tracing::warn!(
                    "chunk {}: another process took it over while this one ran it; leaving it to that process",
                    chunk.id
                );
                return Outcome::Taken;
            }
            Err(ChunkError::Interrupted) => {
                let _ = shared.state.fail_attempt(
                    shared.run_id,
                    &chunk.id,
                    attempt,
                    "interrupted",
                    true,
                );
                return Outcome::Interrupted;
            }
            Err(e) => {
                let message = crate::redact::redact(&backfill_core::error_chain(&e));
                let retry =
                    shared.policy.should_retry(tries, e.class()) && !*shared.cancel.borrow();
                if let Err(se) =
                    shared
                        .state
                        .fail_attempt(shared.run_id, &chunk.id, attempt, &message, retry)
                {
                    return Outcome::Failed(format!("{message}; and recording it failed: {se}"));
                }
                if !retry {
                    let kind = match e.class() {
                        ErrorClass::Transient => format!("after {tries} attempt(s)"),
                        ErrorClass::Permanent => "(not retried: permanent error)".to_string(),
                    };
                    return Outcome::Failed(format!("{message} {kind}"));
                }
                let delay = shared.policy.delay(tries, &mut rand::rng());
                tracing::warn!(
                    "chunk {} attempt {attempt} failed: {message}; retrying in {:.1}s",
                    chunk.id,
                    delay.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancelled(shared.cancel.clone()) => return Outcome::Interrupted,
                }
            }
        }
    }
}

/// One attempt: everything up to the commit point can be abandoned; after it
/// the chunk is committed and the rest only makes it visible and tidy.
pub(crate) async fn attempt_chunk(
    shared: &Shared,
    chunk: &Chunk,
    attempt: u32,
) -> Result<ChunkMetrics, ChunkError> {
    let job = &shared.job;
    let started = Instant::now();
    // Statistics prove the source has no row here and the chunk never
    // committed anything: commit it empty without a scan.
    let (files, mut metrics, staged_paths) = if shared.empty.contains(&chunk.id) {
        let metrics = ChunkMetrics {
            duration_ms: started.elapsed().as_millis() as u64,
            checksum_version: ChecksumVersion::CURRENT.number(),
            ..Default::default()
        };
        (Vec::new(), metrics, Vec::new())
    } else {
        // Before any writer opens, so that a damaged index leaves nothing
        // staged.
        let index = shared
            .index
            .as_ref()
            .map(|i| i.for_chunk(chunk.index))
            .transpose()?;
        let mut target = job.sinks.target.begin(chunk, attempt).await?;
        let mut quarantine = match job.sinks.quarantine.begin(chunk, attempt).await {
            Ok(w) => w,
            Err(e) => {
                target.abort().await;
                return Err(e.into());
            }
        };
        let query = ChunkQuery {
            spec: &job.spec,
            source: &job.source,
            lookups: &job.lookups,
            range: job.range.as_ref(),
            config: &shared.chunk_config,
            runtime: &job.runtime,
            index,
            run_id: shared.run_id,
            hold_back: shared.hold_back,
            spill_dir: job.spec.state.path.parent(),
        };
        let work =
            job.engine
                .execute_chunk(&query, chunk, attempt, target.as_mut(), quarantine.as_mut());
        let executed = tokio::select! {
            r = work => r,
            _ = cancelled(shared.cancel.clone()) => Err(ChunkError::Interrupted),
        };
        let stats = match executed {
            Ok(s) => s,
            Err(e) => {
                target.abort().await;
                quarantine.abort().await;
                return Err(e);
            }
        };
        let staged = match target.finish().await {
            Ok(s) => s,
            Err(e) => {
                quarantine.abort().await;
                return Err(e.into());
            }
        };
        let mut files = staged.files.clone();
        let q_staged = match quarantine.finish().await {
            Ok(q) => q,
            Err(e) => {
                let paths: Vec<String> = files.iter().map(|f| f.staged.clone()).collect();
                let _ = job.sinks.remove(&paths).await;
                return Err(e.into());
            }
        };
        files.extend(Sinks::prefix_quarantine(q_staged.files));
        let staged_paths: Vec<String> = files.iter().map(|f| f.staged.clone()).collect();
        if let Err(e) = failpoint::hit("after_write", chunk.index) {
            let _ = job.sinks.remove(&staged_paths).await;
            return Err(e.into());
        }
        let q = stats.quality;
        let metrics = ChunkMetrics {
            rows_read: stats.rows_read,
            rows_written: staged.rows,
            rows_quarantined: q.quarantined,
            rows_dropped: q.dropped,
            duplicates: q.duplicates,
            bytes_read: stats.bytes_read,
            bytes_written: staged.bytes + q_staged.bytes,
            files: files.len() as u64,
            duration_ms: started.elapsed().as_millis() as u64,
            checksum: staged.checksum,
            checksum_version: ChecksumVersion::CURRENT.number(),
            rules: q.per_rule,
            // Set below, for empty chunks too.
            dedup_section: None,
            source_digest: None,
        };
        (files, metrics, staged_paths)
    };
    metrics.dedup_section = shared.index.as_ref().and_then(|i| i.digest(chunk.index));
    metrics.source_digest = shared
        .source_digests
        .as_ref()
        .and_then(|d| d.get(chunk.index))
        .map(|d| format!("{d:016x}"));
    if shared.same_database {
        // State and target share a database: one transaction commits the
        // chunk and publishes its rows.
        let statements = match job.sinks.publish_statements(chunk, &files).await {
            Ok(s) => s,
            Err(e) => {
                let _ = job.sinks.remove(&staged_paths).await;
                return Err(e.into());
            }
        };
        if let Some((url, sql)) = statements {
            match shared.timed(|s| {
                s.commit_and_publish(
                    shared.run_id,
                    &chunk.id,
                    attempt,
                    &metrics,
                    &files,
                    &url,
                    &sql,
                )
            }) {
                Ok(Some(superseded)) => {
                    post_commit_point("after_commit", chunk);
                    // Superseded "files" of a database target are rows the
                    // transaction already replaced.
                    shared.timed(|s| s.forget_garbage(&superseded))?;
                    post_commit_point("after_cleanup", chunk);
                    return Ok(metrics);
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = job.sinks.remove(&staged_paths).await;
                    return Err(e.into());
                }
            }
        }
    }
    let superseded = match shared
        .timed(|s| s.commit_chunk(shared.run_id, &chunk.id, attempt, &metrics, &files))
    {
        Ok(s) => s,
        Err(e) => {
            let _ = job.sinks.remove(&staged_paths).await;
            return Err(e.into());
        }
    };
    // Committed. Failures from here on are repaired by the next run's recovery.
    post_commit_point("after_commit", chunk);
    publish_with_retries(&job.sinks, chunk, &files, &shared.policy).await?;
    shared.timed(|s| s.mark_published(&chunk.id))?;
    post_commit_point("after_publish", chunk);
    let mut doomed = superseded.clone();
    if let Ok(mut orphans) = shared.orphans.lock() {
        doomed.extend(orphans.remove(&chunk.id).unwrap_or_default());
    }
    // An orphan can carry the very name this attempt just published (a
    // state store that was reset starts again at attempt 1).
    doomed.retain(|d| !files.iter().any(|f| &f.path == d));
    if !doomed.is_empty() {
        job.sinks.remove(&doomed).await?;
        shared.timed(|s| s.forget_garbage(&superseded))?;
    }
    post_commit_point("after_cleanup", chunk);
    Ok(metrics)
}

/// Only aborts make sense past the commit point: an injected error there
/// would report a committed chunk as failed.
pub(crate) fn post_commit_point(point: &'static str, chunk: &Chunk) {
    if let Err(e) = failpoint::hit(point, chunk.index) {
        tracing::debug!("ignoring {e} past the commit point");
    }
}

/// Publishes a committed chunk, retrying transient failures as `[run]`
/// says (`retries`, `retry_backoff`), as for the chunk's attempts.
pub(crate) async fn publish_with_retries(
    sink: &Sinks,
    chunk: &Chunk,
    files: &[backfill_core::state::OwnedFile],
    policy: &RetryPolicy,
) -> Result<(), SinkError> {
    let mut tries = 0;
    loop {
        tries += 1;
        match sink.publish(chunk, files).await {
            Err(e) if policy.should_retry(tries, e.class()) => {
                tracing::warn!("publishing chunk {} failed: {e}; retrying", chunk.id);
                let delay = policy.delay(tries, &mut rand::rng());
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}
