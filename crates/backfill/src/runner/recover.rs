//! Repairing what a crash or a replan left: publishing committed but
//! unpublished files, deleting superseded and staged leftovers, removing the
//! rows of retired chunks the new plan does not cover.

use super::*;

/// Removes from the target what chunks of the recorded plan that the new
/// plan drops left where no new chunk will replace it.
pub(crate) async fn clear_retired(job: &OpenJob, recorded: &[ChunkRecord]) -> Result<(), Error> {
    let current: HashSet<&str> = job.chunks.iter().map(|c| c.id.as_str()).collect();
    let retired: Vec<Chunk> = recorded
        .iter()
        .filter(|r| !current.contains(r.id.as_str()))
        .map(|r| r.chunk())
        .collect();
    if retired.is_empty() {
        return Ok(());
    }
    let mut cleared = 0usize;
    for old in &retired {
        let parts = uncovered_parts(old, &job.chunks);
        job.sinks.target.clear_retired(old, &parts).await?;
        job.sinks.quarantine.clear_retired(old, &parts).await?;
        cleared += parts.len();
    }
    if cleared > 0 {
        tracing::info!(
            "--replan: cleared {cleared} range(s) of retired chunks that the new plan does not cover"
        );
    }
    Ok(())
}

/// A table that owns ranges (Delta, PostgreSQL replace) records the range
/// the job's rows may lie in, its footprint. Where the plan no longer
/// covers part of it (a range shrunk by `--replan`, also after the state
/// that knew the old plan was lost) that part's rows go, as a retired
/// chunk's do; then the footprint becomes the plan's range. Clearing first
/// is safe to repeat: a crash in between clears again next time.
pub(crate) async fn reconcile_footprint(job: &OpenJob) -> Result<(), Error> {
    let (Some(lo), Some(hi)) = (
        job.chunks.first().and_then(|c| c.lo),
        job.chunks.last().and_then(|c| c.hi),
    ) else {
        return Ok(());
    };
    let target = &job.sinks.target;
    if let Some((was_lo, was_hi)) = target.footprint().await? {
        let old = Chunk {
            // Beyond the plan: no failpoint or chunk of it is meant.
            index: job.chunks.len(),
            id: format!(
                "{:016x}",
                twox_hash::XxHash3_64::oneshot(format!("footprint {}", job.spec.name).as_bytes())
            ),
            lo: Some(was_lo),
            hi: Some(was_hi),
            value: None,
            bucket: None,
        };
        let parts = uncovered_parts(&old, &job.chunks);
        if !parts.is_empty() {
            tracing::warn!(
                "the target holds this job's rows of an earlier plan in {} range(s) the plan no longer covers ([{was_lo}, {was_hi}) then, [{lo}, {hi}) now); removing them",
                parts.len()
            );
            target.clear_retired(&old, &parts).await?;
        }
    }
    target.set_footprint((lo, hi)).await?;
    Ok(())
}

/// The pieces of `old`'s range that no chunk of `plan` covers, as chunks
/// carrying `old`'s id: a partition value no longer planned, or the parts
/// of a range before and after the plan's (chunks of a plan are contiguous).
pub(crate) fn uncovered_parts(old: &Chunk, plan: &[Chunk]) -> Vec<Chunk> {
    // `usize::MAX` would mean "bounds unknown" to the sinks; these are known.
    let piece = |lo, hi, value| Chunk {
        index: old.index,
        id: old.id.clone(),
        lo,
        hi,
        value,
        bucket: old.bucket,
    };
    if let Some(v) = &old.value {
        let planned = plan.iter().any(|c| c.value.as_ref() == Some(v));
        return if planned {
            Vec::new()
        } else {
            vec![piece(None, None, Some(v.clone()))]
        };
    }
    let (Some(lo), Some(hi)) = (old.lo, old.hi) else {
        return Vec::new();
    };
    let (Some(first), Some(last)) = (plan.first(), plan.last()) else {
        return vec![old.clone()];
    };
    if first.value.is_some() || lo.kind() != first.lo.map_or(lo.kind(), |v| v.kind()) {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let start = first.lo.map_or(i64::MIN, |v| v.raw());
    let end = last.hi.map_or(i64::MAX, |v| v.raw());
    if lo.raw() < start {
        let cut = if hi.raw() < start {
            hi
        } else {
            first.lo.unwrap_or(hi)
        };
        parts.push(piece(Some(lo), Some(cut), None));
    }
    if hi.raw() > end {
        let from = if lo.raw() > end {
            lo
        } else {
            last.hi.unwrap_or(lo)
        };
        parts.push(piece(Some(from), Some(hi), None));
    }
    parts
}

/// Repairs what a crash left: publishes committed-but-unpublished files,
/// deletes superseded files and staged leftovers. Returns published files of
/// chunks the state does not record (left by a lost or reset state), to be
/// deleted when their chunk commits.
pub(crate) async fn recover(
    job: &OpenJob,
    state: &dyn StateStore,
    rec: &mut Recovery,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    rec.interrupted_chunks = state.release_interrupted()?;
    let by_id: BTreeMap<&str, &Chunk> = job.chunks.iter().map(|c| (c.id.as_str(), c)).collect();
    for (chunk_id, files) in state.unpublished()? {
        let chunk = by_id
            .get(chunk_id.as_str())
            .map(|c| (*c).clone())
            .unwrap_or(Chunk {
                index: usize::MAX,
                id: chunk_id.clone(),
                lo: None,
                hi: None,
                value: None,
                bucket: None,
            });
        match job.sinks.publish(&chunk, &files).await {
            Ok(()) => {
                state.mark_published(&chunk_id)?;
                rec.republished_chunks += 1;
                tracing::info!(
                    "recovered chunk {chunk_id}: published its {} committed file(s)",
                    files.len()
                );
            }
            Err(SinkError::Lost { path, .. }) => {
                tracing::error!(
                    "chunk {chunk_id} was committed but its file {path} is gone; it will run again"
                );
                state.mark_published(&chunk_id)?;
                state.reset(std::slice::from_ref(&chunk_id))?;
                rec.lost_chunks += 1;
            }
            // One chunk whose publish keeps failing (a target refusing its
            // files, an object too large to copy) must not hold back every
            // other chunk: it is reported, and the next run tries again.
            Err(e) => {
                tracing::error!(
                    "chunk {chunk_id} is committed but publishing it failed again: {e}; the other chunks go on"
                );
                rec.stuck.push((chunk_id.clone(), e.to_string()));
            }
        }
    }
    let garbage = state.garbage()?;
    if !garbage.is_empty() {
        job.sinks.remove(&garbage).await?;
        state.forget_garbage(&garbage)?;
        rec.garbage_removed += garbage.len();
    }
    let mut on_disk = job.sinks.scan().await?;
    let records = state.chunks()?;
    // Chunk ids are this job's alone (they hash its name), so files and
    // staging tables of other jobs writing into the same target are never
    // taken for this job's leftovers. Files named by first-version ids
    // (before ids carried the job's name) are mapped to the current ones.
    let mut ours: HashMap<String, String> = job
        .chunks
        .iter()
        .map(|c| (c.id.clone(), c.id.clone()))
        .chain(records.iter().map(|c| (c.id.clone(), c.id.clone())))
        .collect();
    let legacy_named = on_disk
        .published
        .keys()
        .map(String::as_str)
        .chain(on_disk.staged.iter().flat_map(|p| id_tokens(p)))
        .any(|id| id.len() == 12 && !ours.contains_key(id));
    if legacy_named {
        for c in &job.chunks {
            ours.insert(plan::legacy_id(job.spec.range.as_ref(), c), c.id.clone());
        }
    }
    let owner = |path: &str| id_tokens(path).find_map(|t| ours.get(t).cloned());
    // In a shared state store, other live processes stage files right now.
    let busy = state.busy_chunks()?;
    on_disk
        .staged
        .retain(|path| owner(path).is_some_and(|chunk| !busy.contains(&chunk)));
    if !on_disk.staged.is_empty() {
        tracing::info!(
            "removing {} staged file(s) left by an interrupted attempt",
            on_disk.staged.len()
        );
        job.sinks.remove(&on_disk.staged).await?;
        rec.orphans_removed += on_disk.staged.len();
    }
    // Every file a commit of this job owns, whatever id named it.
    let recorded: HashSet<String> = state.committed_files()?.into_values().flatten().collect();
    let statuses: BTreeMap<String, ChunkStatus> =
        records.into_iter().map(|c| (c.id, c.status)).collect();
    let mut pending_orphans: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut foreign = 0usize;
    let tag = crate::sink::job_tag(&job.spec.name);
    let mut old_plan: Vec<String> = Vec::new();
    for (named, files) in on_disk.published {
        let unknown: Vec<String> = files
            .into_iter()
            .filter(|f| !recorded.contains(f))
            .collect();
        if unknown.is_empty() {
            continue;
        }
        let chunk_id = ours.get(&named).cloned().unwrap_or(named);
        match statuses.get(&chunk_id) {
            Some(ChunkStatus::Committed) => {
                tracing::info!(
                    "removing {} file(s) of committed chunk {chunk_id} that its commit does not own",
                    unknown.len()
                );
                job.sinks.remove(&unknown).await?;
                rec.orphans_removed += unknown.len();
            }
            Some(_) => {
                pending_orphans.entry(chunk_id).or_default().extend(unknown);
            }
            None if ours.contains_key(&chunk_id) => {
                pending_orphans.entry(chunk_id).or_default().extend(unknown);
            }
            // This job's files of a plan whose chunks the state no longer
            // knows (a lost state, then another chunk width): no chunk
            // will ever replace them, so they go now, as a replan's
            // retired files do.
            None => {
                let (mine, theirs): (Vec<String>, Vec<String>) =
                    unknown.into_iter().partition(|f| {
                        let name = f.strip_prefix(crate::sink::QUARANTINE_PREFIX).unwrap_or(f);
                        crate::sink::tag_of(name) == Some(tag.as_str())
                    });
                foreign += theirs.len();
                old_plan.extend(mine);
            }
        }
    }
    if !old_plan.is_empty() {
        tracing::info!(
            "removing {} file(s) this job wrote for chunks of an earlier plan that its state does not know",
            old_plan.len()
        );
        job.sinks.remove(&old_plan).await?;
        rec.orphans_removed += old_plan.len();
    }
    if foreign > 0 {
        tracing::info!(
            "{foreign} file(s) in the target belong to other jobs or to chunks no longer planned; they are left alone"
        );
    }
    Ok(pending_orphans)
}

/// The hex runs of a file or table name that could be chunk ids.
pub(crate) fn id_tokens(path: &str) -> impl Iterator<Item = &str> {
    path.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|t| plan::is_chunk_id(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_core::RangeValue;

    fn chunk(id: &str, lo: i64, hi: i64) -> Chunk {
        Chunk {
            index: 0,
            id: id.into(),
            lo: Some(RangeValue::Int(lo)),
            hi: Some(RangeValue::Int(hi)),
            value: None,
            bucket: None,
        }
    }

    fn bounds(parts: &[Chunk]) -> Vec<(i64, i64)> {
        parts
            .iter()
            .map(|p| {
                (
                    p.lo.map_or(i64::MIN, |v| v.raw()),
                    p.hi.map_or(i64::MAX, |v| v.raw()),
                )
            })
            .collect()
    }

    #[test]
    fn a_retired_chunk_leaves_what_the_new_plan_does_not_cover() {
        let plan = [chunk("a", 10, 20), chunk("b", 20, 30)];
        let parts = |lo, hi| bounds(&uncovered_parts(&chunk("old", lo, hi), &plan));
        assert_eq!(parts(10, 30), [], "covered");
        assert_eq!(parts(12, 18), [], "inside");
        assert_eq!(parts(0, 10), [(0, 10)], "before");
        assert_eq!(parts(30, 40), [(30, 40)], "after");
        assert_eq!(parts(5, 15), [(5, 10)], "across the start");
        assert_eq!(parts(25, 35), [(30, 35)], "across the end");
        assert_eq!(parts(0, 40), [(0, 10), (30, 40)], "around");
        assert!(
            uncovered_parts(&chunk("old", 0, 40), &plan)
                .iter()
                .all(|p| p.id == "old")
        );

        let value = |v: &str| Chunk {
            index: 0,
            id: format!("p-{v}"),
            lo: None,
            hi: None,
            value: Some(v.into()),
            bucket: None,
        };
        let plan = [value("eu")];
        assert!(uncovered_parts(&value("eu"), &plan).is_empty());
        assert_eq!(
            uncovered_parts(&value("us"), &plan)[0].value.as_deref(),
            Some("us")
        );
    }
}
