//! The dedup passes put together for a run or `validate`: load the saved
//! index, or find the repeated keys and build it within the memory limit.

use super::*;

/// The global dedup index over the whole job range (also when the run is
/// narrowed), loaded from the state directory or rebuilt when stale.
pub(crate) async fn dedup_index(
    job: &OpenJob,
    for_run: bool,
) -> Result<Option<Arc<ChunkIndexes>>, Error> {
    let Some(dedup) = &job.spec.dedup else {
        return Ok(None);
    };
    // Several chunks need each row's chunk, found from the source's range
    // column as the chunks' predicates select rows.
    let range = if job.chunks.len() > 1 {
        job.range.as_ref()
    } else {
        None
    };
    let key_fields: Vec<arrow::datatypes::Field> = dedup
        .keys
        .iter()
        .filter_map(|k| job.transformed.field_with_name(k).ok().cloned())
        .collect();
    let key_schema = Arc::new(arrow::datatypes::Schema::new(key_fields));
    // What the transform reads: the source and any lookup table.
    let mut read = job.source.fingerprint();
    for (name, table) in &job.lookups.tables {
        read.push_str(&format!("|{name}:{}", table.fingerprint()));
    }
    let fp = dedup::index_fingerprint(&job.spec, &read, &key_schema);
    let (Some(first), Some(last)) = (job.chunks.first(), job.chunks.last()) else {
        return Ok(None);
    };
    let whole = Chunk {
        index: 0,
        id: String::new(),
        lo: first.lo,
        hi: last.hi,
        value: None,
        bucket: None,
    };
    // An engine may keep its winners' index itself (Spark, on the cluster
    // side); validate, which measures with the local engine, builds the
    // local one.
    if for_run
        && job
            .engine
            .prepare_dedup(&whole, &fp, job.chunks.len() > 1)
            .await?
    {
        return Ok(None);
    }
    let path = job.spec.state.path.with_extension("dedup-index");
    if let Some(index) = SavedIndex::open(&path, &fp, job.chunks.len()) {
        tracing::debug!(
            "dedup index loaded: {} keys with several versions",
            index.keys
        );
        return Ok(Some(Arc::new(ChunkIndexes::Saved(index))));
    }
    let t = Instant::now();
    // Both passes decode the range column of every row just to evaluate
    // the job's range predicate; when the statistics prove every source row
    // is in the range, it would filter nothing.
    let covers_all = match job.range.as_ref() {
        Some(r) => job
            .source
            .estimate(r, std::slice::from_ref(&whole))
            .await
            .ok()
            .flatten()
            .is_some_and(|e| e.first().is_some_and(|e| e.covers_all)),
        None => false,
    };
    if covers_all {
        tracing::debug!("dedup index: every source row is in the range; no range predicate");
    }
    let ctx = engine::local::index_context(
        &job.spec,
        &job.source,
        &job.lookups,
        range.map(|r| (r, job.chunks.as_slice())),
        job.range.as_ref().filter(|_| !covers_all),
        &whole,
        &job.config,
        &job.runtime,
    )
    .await?;
    let spill = path.parent().unwrap_or(Path::new("."));
    let repeated =
        engine::local::repeated_keys(&ctx, dedup, spill, job.memory.repeated_keys()).await?;
    if job.chunks.len() == 1 {
        // The one chunk sees every version of every key: it holds back the
        // rows of repeated keys and keeps each key's best at its end, which
        // spares the second pass. Nothing is saved; the hashes are cheap.
        tracing::info!(
            "dedup: {} repeated keys, resolved within the one chunk ({:.1}s)",
            repeated.len(),
            t.elapsed().as_secs_f64()
        );
        return Ok(Some(Arc::new(ChunkIndexes::Within(Arc::new(
            DedupIndex::within_one_chunk(repeated),
        )))));
    }
    let versions = repeated.versions();
    let stream =
        engine::local::index_rows(&ctx, &job.spec, dedup, range.is_some(), repeated).await?;
    let indexes = saved_index::build(
        stream,
        dedup,
        &path,
        &fp,
        job.chunks.len(),
        versions,
        job.memory.index_build(),
        spill,
    )
    .await?;
    tracing::debug!("dedup index built in {:.1}s", t.elapsed().as_secs_f64());
    // The chunks read their sections from the file: the freed index goes
    // back to the system rather than staying in the allocator's arenas.
    release_free_memory();
    Ok(Some(Arc::new(indexes)))
}

/// Returns the free pages of glibc's heaps to the system. Freed memory
/// otherwise stays resident in the arenas, and a large structure freed
/// between the index pass and the chunks would count towards the run's
/// peak for the rest of it.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
