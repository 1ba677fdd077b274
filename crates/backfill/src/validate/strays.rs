//! Rows in a file target that no commit of this job recorded: another
//! writer's files, a stray copy, a file a lost state left.

use super::*;

/// Rows that readers of a file target see in each chunk's range, in files no
/// commit of this job recorded (another writer's, a stray copy, a file a
/// lost state left): per chunk id, the rows and the files. Only the range
/// column of such files is read; there are none after a clean run.
pub(super) async fn unaccounted_rows(
    job: &OpenJob,
    recorded: &std::collections::HashSet<&str>,
) -> Result<BTreeMap<String, (u64, Vec<String>)>, Error> {
    let mut out: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let Some(visible) = job.sinks.target.visible_files().await? else {
        return Ok(out);
    };
    // A file named by another backfill job is that job's to account for:
    // jobs that share a Parquet folder each own their files (EU and US
    // sources into one table). A copy of one of this job's files, or a
    // file no job of ours named, is a stray.
    let ours = crate::sink::job_tag(&job.spec.name);
    let strays: Vec<String> = visible
        .into_iter()
        .filter(|f| !recorded.contains(f.as_str()))
        .filter(|f| crate::sink::tag_of(f).is_none_or(|t| t == ours))
        .collect();
    if strays.is_empty() {
        return Ok(out);
    }
    let column = job.range.as_ref().map(|r| r.name.as_str());
    let in_dirs = column.is_some_and(|c| job.spec.target.partition_by.iter().any(|p| p == c));
    let sink = job.sinks.target.as_ref();
    for rel in strays {
        let what = format!("{}: reading {rel}", sink.describe());
        let read = |e: Box<dyn std::error::Error + Send + Sync>| {
            Error::Sink(SinkError::read(what.clone())(e))
        };
        let file = sink.open_file(&rel).await?;
        let builder = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(|e| read(e.into()))?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        match column {
            None => {
                if let Some(c) = job.chunks.first() {
                    counts.insert(c.id.clone(), rows);
                }
            }
            Some(col) if in_dirs => {
                let escaped = escape_partition_value(col);
                let value = rel
                    .split('/')
                    .filter_map(|seg| seg.split_once('='))
                    .find(|(k, _)| *k == escaped)
                    .map(|(_, v)| unescape_partition_value(v));
                if let Some(c) = value.as_deref().and_then(|v| chunk_of_text(&job.chunks, v)) {
                    counts.insert(c.id.clone(), rows);
                }
            }
            Some(col) => {
                let Some(idx) = builder
                    .schema()
                    .fields()
                    .iter()
                    .position(|f| f.name() == col)
                else {
                    continue;
                };
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [idx]);
                let mut stream = builder
                    .with_projection(mask)
                    .build()
                    .map_err(|e| read(e.into()))?;
                while let Some(batch) = stream.try_next().await.map_err(|e| read(e.into()))? {
                    let array = batch.column(0);
                    if job.chunks.iter().any(|c| c.value.is_some()) {
                        let text = cast(array, &DataType::Utf8).map_err(|e| read(e.into()))?;
                        let text = text
                            .as_any()
                            .downcast_ref::<arrow::array::StringArray>()
                            .ok_or_else(|| read("not text".into()))?;
                        for v in text.iter().flatten() {
                            if let Some(c) = chunk_of_text(&job.chunks, v) {
                                *counts.entry(c.id.clone()).or_default() += 1;
                            }
                        }
                        continue;
                    }
                    let (values, _) =
                        crate::sink::range_files::comparable(array).map_err(|e| read(e.into()))?;
                    let values = values
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .ok_or_else(|| read("not comparable".into()))?;
                    for v in values.iter().flatten() {
                        if let Some(c) = chunk_of_value(&job.chunks, v) {
                            *counts.entry(c.id.clone()).or_default() += 1;
                        }
                    }
                }
            }
        }
        for (chunk, n) in counts {
            let e = out.entry(chunk).or_default();
            e.0 += n;
            e.1.push(rel.clone());
        }
    }
    Ok(out)
}

/// The chunk whose range holds `v` (chunks are sorted and tile the range).
pub(super) fn chunk_of_value(chunks: &[Chunk], v: i64) -> Option<&Chunk> {
    if chunks.len() == 1 && chunks[0].lo.is_none() && chunks[0].hi.is_none() {
        return chunks.first();
    }
    let after = chunks.partition_point(|c| c.lo.is_none_or(|lo| lo.raw() <= v));
    let c = chunks.get(after.checked_sub(1)?)?;
    c.hi.is_none_or(|hi| v < hi.raw()).then_some(c)
}

/// The chunk a range value written as text (a partition directory, a
/// partition chunk's value) falls in.
pub(super) fn chunk_of_text<'a>(chunks: &'a [Chunk], text: &str) -> Option<&'a Chunk> {
    if let Some(c) = chunks.iter().find(|c| c.value.as_deref() == Some(text)) {
        return Some(c);
    }
    let kind = chunks.iter().find_map(|c| c.lo.or(c.hi))?.kind();
    let v = match kind {
        backfill_core::ValueKind::Int => text.trim().parse().ok()?,
        backfill_core::ValueKind::Time => backfill_core::interval::parse_time(text).ok()?,
    };
    chunk_of_value(chunks, v)
}
