//! Splits a range into ordered, half-open chunks `[lo, hi)` with stable ids.

use std::fmt;

use serde::Serialize;
use twox_hash::XxHash3_64;

use crate::interval::{Calendar, ChunkSize, RangeValue};
use crate::spec::RangeSpec;

/// Refuse plans that would take longer to record than to run.
pub const MAX_CHUNKS: usize = 5_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Stable id: a 64-bit hash of the job's name, the range column, the
    /// chunk width and the bounds, so the same chunk keeps its id when the
    /// plan is extended or re-made (or the state is lost), and two jobs
    /// writing into one target never share an id (nor a file name, a Delta
    /// transaction or a staging table, which all carry it).
    pub id: String,
    /// Inclusive lower bound; `None` for the single chunk of a full load.
    pub lo: Option<RangeValue>,
    /// Exclusive upper bound.
    pub hi: Option<RangeValue>,
    /// A partition chunk (`[range] partitions`): the rows whose range column
    /// equals this value; `lo` and `hi` are `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A hash-bucket chunk (`[range] buckets`): only the rows of `[lo, hi)`
    /// whose bucket column hashes to this bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
}

/// Bucket `index` of `of`: see [`bucket_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Bucket {
    pub index: u32,
    pub of: u32,
}

/// The bucket of a value given as its text (an integer in decimal, a
/// string as it is): the first 15 hex digits of its MD5, as an integer,
/// modulo `of`. Chosen so DuckDB, PostgreSQL and Spark can say the same:
/// `('0x' || left(md5(CAST(v AS VARCHAR)), 15))::BIGINT % of` in DuckDB,
/// `('x' || left(md5(v::text), 15))::bit(60)::bigint % of` in PostgreSQL.
/// NULL is in bucket 0.
pub fn bucket_of(digest: [u8; 16], of: u32) -> u32 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 15 hex digits are the top 60 bits of the first 64.
    ((u64::from_be_bytes(first) >> 4) % u64::from(of.max(1))) as u32
}

impl Chunk {
    /// Whether this chunk's range overlaps `[from, to)` (open ends when `None`).
    pub fn overlaps(&self, from: Option<RangeValue>, to: Option<RangeValue>) -> bool {
        let after_from = match (self.hi, from) {
            (Some(hi), Some(from)) => hi > from,
            _ => true,
        };
        let before_to = match (self.lo, to) {
            (Some(lo), Some(to)) => lo < to,
            _ => true,
        };
        after_from && before_to
    }

    pub fn bounds(&self) -> String {
        if let Some(v) = &self.value {
            return format!("= {v}");
        }
        let range = match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!("[{lo}, {hi})"),
            _ => "all rows".to_string(),
        };
        match self.bucket {
            Some(b) => format!("{range} bucket {}/{}", b.index, b.of),
            None => range,
        }
    }
}

impl fmt::Display for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {} {}", self.index, self.id, self.bounds())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("range.chunk {chunk} does not fit a range of {kind}")]
    KindMismatch { chunk: String, kind: String },
    #[error("the range would have more than {MAX_CHUNKS} chunks; use a wider range.chunk")]
    TooManyChunks,
    #[error("chunk bounds overflow the representable range")]
    Overflow,
    #[error(
        "chunks {a} and {b} have the same id {id}: a 64-bit hash collision, which should never happen; rename the job ([job] name) to plan new ids"
    )]
    IdCollision { id: String, a: String, b: String },
}

/// The fingerprint of a range definition: when it changes, existing chunks no
/// longer describe the same slices of the target.
pub fn fingerprint(range: Option<&RangeSpec>) -> String {
    match range {
        None => "all".to_string(),
        Some(r) => {
            let text = match &r.partitions {
                // Adding partitions only adds chunks; sync_plan accepts that.
                Some(_) => format!("column={}|partitions", r.column),
                None => {
                    let mut text = format!(
                        "column={}|start={}|end={}|chunk={}",
                        r.column,
                        opt(r.start),
                        if r.end_now { "now".into() } else { opt(r.end) },
                        r.chunk
                    );
                    // Only when set, so jobs without them keep their
                    // fingerprints.
                    if let Some(z) = r.calendar.zone {
                        text.push_str(&format!("|timezone={}", z.name()));
                    }
                    if let Some(w) = r.calendar.week_start {
                        text.push_str(&format!("|week_start={w}"));
                    }
                    if r.naive_local == Some(true) {
                        text.push_str("|naive=local");
                    }
                    if let Some(b) = &r.buckets {
                        text.push_str(&format!("|buckets={}:{}", b.count, b.column));
                    }
                    if r.start_earliest {
                        text.push_str("|start=earliest");
                    }
                    if r.end_latest {
                        text.push_str("|end=latest");
                    }
                    text
                }
            };
            format!("{text}|{:016x}", XxHash3_64::oneshot(text.as_bytes()))
        }
    }
}

fn opt(v: Option<RangeValue>) -> String {
    v.map(|v| format!("{v:?}")).unwrap_or_else(|| "-".into())
}

/// The id of the chunk `[lo, hi)` of job `job`: 64 bits, so that even
/// the largest plan (5M chunks) has collision odds near 1e-6, and every
/// plan is checked for collisions anyway ([`check_unique`]).
fn chunk_id(
    job: &str,
    column: &str,
    chunk: ChunkSize,
    lo: Option<RangeValue>,
    hi: Option<RangeValue>,
) -> String {
    id_of(&format!(
        "v2|{}|{job}|{column}|{chunk}|{}|{}",
        job.len(),
        opt(lo),
        opt(hi)
    ))
}

fn id_of(text: &str) -> String {
    format!("{:016x}", XxHash3_64::oneshot(text.as_bytes()))
}

/// Whether `id` looks like a chunk id (of this version or the first, which
/// had 12 hex digits), e.g. when read back from a file name.
pub fn is_chunk_id(id: &str) -> bool {
    matches!(id.len(), 12 | 16) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The id the first version gave a chunk (48 bits, the job's name left
/// out): files and states written before ids carried the job still name
/// their chunks so, and an upgraded state is re-keyed from it.
pub fn legacy_id(range: Option<&RangeSpec>, chunk: &Chunk) -> String {
    let text = match (range, &chunk.value) {
        (Some(r), Some(v)) => format!("v1|{}|partition|{v}", r.column),
        (Some(r), None) if chunk.lo.is_some() => format!(
            "v1|{}|{}|{}|{}",
            r.column,
            r.chunk,
            opt(chunk.lo),
            opt(chunk.hi)
        ),
        (Some(r), None) => format!("v1|{}|{}|-|-", r.column, ChunkSize::All),
        (None, _) => format!("v1||{}|-|-", ChunkSize::All),
    };
    let h = XxHash3_64::oneshot(text.as_bytes());
    format!("{:012x}", h >> 16)
}

fn partition_id(job: &str, column: &str, value: &str) -> String {
    id_of(&format!(
        "v2|{}|{job}|{column}|partition|{value}",
        job.len()
    ))
}

/// The id `plan` gives a chunk of these bounds in job `job` over `range`.
pub fn id_for(job: &str, range: Option<&RangeSpec>, chunk: &Chunk) -> String {
    match (range, &chunk.value) {
        (Some(r), Some(v)) => partition_id(job, &r.column, v),
        (Some(r), None) if chunk.lo.is_some() => {
            chunk_id(job, &r.column, r.chunk, chunk.lo, chunk.hi)
        }
        (Some(r), None) => chunk_id(job, &r.column, ChunkSize::All, None, None),
        (None, _) => chunk_id(job, "", ChunkSize::All, None, None),
    }
}

/// Refuses a plan in which two chunks share an id.
pub fn check_unique(chunks: &[Chunk]) -> Result<(), PlanError> {
    let mut ids: Vec<(u64, usize)> = chunks
        .iter()
        .map(|c| (u64::from_str_radix(&c.id, 16).unwrap_or(0), c.index))
        .collect();
    ids.sort_unstable();
    for w in ids.windows(2) {
        if w[0].0 == w[1].0 {
            let show = |i: usize| {
                chunks
                    .iter()
                    .find(|c| c.index == i)
                    .map(|c| c.to_string())
                    .unwrap_or_default()
            };
            return Err(PlanError::IdCollision {
                id: format!("{:016x}", w[0].0),
                a: show(w[0].1),
                b: show(w[1].1),
            });
        }
    }
    Ok(())
}

/// About how many chunks `plan` would make, without making them (for
/// guards and `plan` summaries); `None` when there is no range.
pub fn estimate(range: Option<&RangeSpec>) -> Option<u64> {
    let r = range?;
    let Some(start) = r.start else {
        return Some(1);
    };
    let Some(end) = [r.end, r.extend_to].into_iter().flatten().max() else {
        return Some(1);
    };
    let span = end.raw().saturating_sub(start.raw()).max(0) as u64;
    let width = match r.chunk {
        ChunkSize::All => return Some(1),
        ChunkSize::Fixed(w) | ChunkSize::Count(w) => w.max(1) as u64,
        // The shortest month has 28 days.
        ChunkSize::Months(m) => u64::from(m.max(1)) * 28 * 86_400_000_000,
    };
    Some(span.div_ceil(width))
}

/// One chunk per partition value, sorted, duplicates dropped.
pub fn plan_values(job: &str, column: &str, values: &[String]) -> Result<Vec<Chunk>, PlanError> {
    let mut sorted: Vec<&String> = values.iter().collect();
    sorted.sort();
    sorted.dedup();
    let chunks: Vec<Chunk> = sorted
        .into_iter()
        .enumerate()
        .map(|(index, v)| Chunk {
            index,
            id: partition_id(job, column, v),
            lo: None,
            hi: None,
            value: Some(v.clone()),
            bucket: None,
        })
        .collect();
    check_unique(&chunks)?;
    Ok(chunks)
}

/// Plans the chunks of a range. No range means one chunk over all rows.
/// `partitions = "source"` plans nothing here: the values come from the
/// source (see [`plan_values`]). `job` is the job's name, part of every
/// chunk id.
pub fn plan(job: &str, range: Option<&RangeSpec>) -> Result<Vec<Chunk>, PlanError> {
    let mut chunks = plan_unchecked(job, range)?;
    if let Some(b) = range.and_then(|r| r.buckets.as_ref()) {
        chunks = split_into_buckets(&chunks, b.count, &b.column)?;
    }
    check_unique(&chunks)?;
    Ok(chunks)
}

/// Each window chunk as `count` bucket chunks, window by window, so chunk
/// `w * count + b` is bucket `b` of window `w`. A bucket chunk's id is its
/// window's id with the bucket and the column hashed in.
fn split_into_buckets(
    windows: &[Chunk],
    count: u32,
    column: &str,
) -> Result<Vec<Chunk>, PlanError> {
    if windows.len().saturating_mul(count as usize) > MAX_CHUNKS {
        return Err(PlanError::TooManyChunks);
    }
    let mut out = Vec::with_capacity(windows.len() * count as usize);
    for w in windows {
        for index in 0..count {
            out.push(Chunk {
                index: out.len(),
                id: id_of(&format!(
                    "bucket|{}|{index}|{count}|{}|{column}",
                    w.id,
                    column.len()
                )),
                lo: w.lo,
                hi: w.hi,
                value: None,
                bucket: Some(Bucket { index, of: count }),
            });
        }
    }
    Ok(out)
}

fn plan_unchecked(job: &str, range: Option<&RangeSpec>) -> Result<Vec<Chunk>, PlanError> {
    if let Some(r) = range {
        match &r.partitions {
            Some(crate::spec::Partitions::List(values)) => {
                return plan_values(job, &r.column, values);
            }
            Some(crate::spec::Partitions::Source) => return Ok(Vec::new()),
            None => {}
        }
    }
    let Some(r) = range else {
        return Ok(vec![Chunk {
            index: 0,
            id: chunk_id(job, "", ChunkSize::All, None, None),
            lo: None,
            hi: None,
            value: None,
            bucket: None,
        }]);
    };
    if estimate(Some(r)).is_some_and(|n| n > MAX_CHUNKS as u64 * 2) {
        return Err(PlanError::TooManyChunks);
    }
    match (r.start, r.end) {
        (Some(start), end) if r.extend_to.is_some() => {
            let mut chunks = match end {
                Some(end) => {
                    plan_bounds_in(job, &r.column, start, end, r.chunk, &r.plan_calendar())?
                }
                None => Vec::new(),
            };
            if let Some(to) = r.extend_to {
                let grid = Grid {
                    start,
                    chunk: r.chunk,
                    calendar: r.plan_calendar(),
                };
                extend(&mut chunks, job, &r.column, &grid, to)?;
            }
            Ok(chunks)
        }
        (Some(start), Some(end)) => {
            plan_bounds_in(job, &r.column, start, end, r.chunk, &r.plan_calendar())
        }
        _ => Ok(vec![Chunk {
            index: 0,
            id: chunk_id(job, &r.column, ChunkSize::All, None, None),
            lo: None,
            hi: None,
            value: None,
            bucket: None,
        }]),
    }
}

/// Continues a plan past its last chunk (or from `start`) along the chunk
/// grid anchored at `start`, up to the chunk that holds `to`. The first new
/// chunk may be short when the old end was not on the grid: the chunks
/// already planned, and so committed ones, keep their bounds and ids.
/// Where chunk bounds fall: chunk widths from `start` on a calendar.
struct Grid {
    start: RangeValue,
    chunk: ChunkSize,
    calendar: Calendar,
}

fn extend(
    chunks: &mut Vec<Chunk>,
    job: &str,
    column: &str,
    grid: &Grid,
    to: RangeValue,
) -> Result<(), PlanError> {
    let (start, chunk) = (grid.start, grid.chunk);
    let mut lo = chunks.last().and_then(|c| c.hi).unwrap_or(start);
    if chunk == ChunkSize::All || chunk.kind() != Some(start.kind()) {
        return Err(PlanError::KindMismatch {
            chunk: chunk.to_string(),
            kind: start.kind().to_string(),
        });
    }
    let mut k: u64 = 0;
    while lo < to {
        k += 1;
        let hi = grid
            .calendar
            .step(chunk, start, k)
            .ok_or(PlanError::Overflow)?;
        if hi <= lo {
            continue;
        }
        if chunks.len() >= MAX_CHUNKS {
            return Err(PlanError::TooManyChunks);
        }
        chunks.push(Chunk {
            index: chunks.len(),
            id: chunk_id(job, column, chunk, Some(lo), Some(hi)),
            lo: Some(lo),
            hi: Some(hi),
            value: None,
            bucket: None,
        });
        lo = hi;
    }
    Ok(())
}

/// Chunks of `[start, end)` on UTC's calendar; empty when `end <= start`.
pub fn plan_bounds(
    job: &str,
    column: &str,
    start: RangeValue,
    end: RangeValue,
    chunk: ChunkSize,
) -> Result<Vec<Chunk>, PlanError> {
    plan_bounds_in(job, column, start, end, chunk, &Calendar::default())
}

/// Chunks of `[start, end)` on `calendar`; empty when `end <= start`.
pub fn plan_bounds_in(
    job: &str,
    column: &str,
    start: RangeValue,
    end: RangeValue,
    chunk: ChunkSize,
    calendar: &Calendar,
) -> Result<Vec<Chunk>, PlanError> {
    if end <= start {
        return Ok(Vec::new());
    }
    if chunk == ChunkSize::All {
        return Ok(vec![Chunk {
            index: 0,
            id: chunk_id(job, column, chunk, Some(start), Some(end)),
            lo: Some(start),
            hi: Some(end),
            value: None,
            bucket: None,
        }]);
    }
    if chunk.kind() != Some(start.kind()) || start.kind() != end.kind() {
        return Err(PlanError::KindMismatch {
            chunk: chunk.to_string(),
            kind: start.kind().to_string(),
        });
    }
    let mut out = Vec::new();
    let mut lo = start;
    let mut k: u64 = 0;
    while lo < end {
        if out.len() >= MAX_CHUNKS {
            return Err(PlanError::TooManyChunks);
        }
        k += 1;
        let step = calendar.step(chunk, start, k).ok_or(PlanError::Overflow)?;
        let hi = step.min(end);
        if hi <= lo {
            return Err(PlanError::Overflow);
        }
        out.push(Chunk {
            index: out.len(),
            id: chunk_id(job, column, chunk, Some(lo), Some(hi)),
            lo: Some(lo),
            hi: Some(hi),
            value: None,
            bucket: None,
        });
        lo = hi;
    }
    Ok(out)
}

/// Kafka offset chunks carry positions, `partition * POSITION_BASE +
/// offset`, as bounds: one integer range holds every partition's offsets
/// in order, and a chunk, a window of one partition, stays `[lo, hi)`.
/// 10^14 leaves room for 10^14 offsets per partition (three years at a
/// million events a second) and 92,233 partitions, and reads in decimal.
pub const POSITION_BASE: i64 = 100_000_000_000_000;

/// A position's partition and offset.
pub fn position_parts(position: i64) -> (i32, i64) {
    (
        (position.div_euclid(POSITION_BASE)) as i32,
        position.rem_euclid(POSITION_BASE),
    )
}

/// The offsets one partition's chunks cover: from `start` to each of
/// `ends` in turn (a plan frozen at `ends[0]`, extended later to
/// `ends[1]`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionSpan {
    pub partition: i32,
    pub start: i64,
    pub ends: Vec<i64>,
}

/// Offset-window chunks of a Kafka topic, partition by partition. Windows
/// sit on a grid of `width` offsets from 0, so a chunk's bounds do not
/// depend on where the log started when the plan was made; where a plan
/// was extended, the chunk before the old end stays as it was (short) and
/// the next starts there.
pub fn plan_offsets(
    job: &str,
    column: &str,
    width: i64,
    spans: &[PartitionSpan],
) -> Result<Vec<Chunk>, PlanError> {
    if width <= 0 {
        return Err(PlanError::Overflow);
    }
    let mut out = Vec::new();
    let mut spans: Vec<&PartitionSpan> = spans.iter().collect();
    spans.sort_by_key(|s| s.partition);
    for s in spans {
        let base = i64::from(s.partition)
            .checked_mul(POSITION_BASE)
            .ok_or(PlanError::Overflow)?;
        let mut lo = s.start.max(0);
        for &end in &s.ends {
            let end = end.min(POSITION_BASE);
            while lo < end {
                if out.len() >= MAX_CHUNKS {
                    return Err(PlanError::TooManyChunks);
                }
                let grid = (lo / width + 1).saturating_mul(width);
                let hi = grid.min(end);
                let (l, h) = (RangeValue::Int(base + lo), RangeValue::Int(base + hi));
                out.push(Chunk {
                    index: out.len(),
                    id: chunk_id(job, column, ChunkSize::Count(width), Some(l), Some(h)),
                    lo: Some(l),
                    hi: Some(h),
                    value: None,
                    bucket: None,
                });
                lo = hi;
            }
        }
    }
    check_unique(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests;
