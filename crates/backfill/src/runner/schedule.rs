//! The scheduler: recover from any crash, then run the selected chunks with
//! bounded concurrency, each through claim → execute → stage → commit
//! (state) → publish → clean up ([`super::attempt`]), retrying transient
//! failures with backoff.

use super::*;

impl Backfill {
    pub(super) async fn run_locked(
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
        if let Some(spans) = &job.kafka_spans {
            let frozen = super::job::FrozenSpans {
                fingerprint: fp.clone(),
                spans: spans.clone(),
            };
            let text = serde_json::to_string(&frozen)
                .map_err(|e| Error::Usage(format!("internal: recording the Kafka plan: {e}")))?;
            state.set_note(super::job::NOTE_KAFKA_SPANS, &text)?;
        }
        if !sync.retired.is_empty() {
            tracing::warn!(
                "--replan retired {} chunk(s) of the previous plan; their files are removed",
                sync.retired.len()
            );
        }
        let pending_orphans = recover(&job, state.as_ref(), &mut summary.recovered).await?;
        self.check_schema(&job).await?;
        reconcile_footprint(&job).await?;
        // Kafka rows always have an offset, and counting would read the
        // whole topic.
        if let Some(range) = job
            .range
            .as_ref()
            .filter(|_| job.source.as_kafka().is_none())
        {
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
                    let n = engine::local::count_null_range(
                        &job.source,
                        range,
                        &job.config,
                        &job.runtime,
                    )
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
        let progress = Arc::new(
            Progress::new(opts.progress, selected.len()).with_callback(opts.on_chunk.clone()),
        );
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
            same_database: job.spec.state_in_target_database(),
            state_nanos: Default::default(),
            chunk_config: engine::local::chunk_config(&job.config, parallelism.min(selected.len())),
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
/// `lookback`: in an incremental run, that many
/// of the last committed chunks run again too, for rows that arrived late.
pub(super) fn select(
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
