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
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!("[{lo}, {hi})"),
            _ => "all rows".to_string(),
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
    let chunks = plan_unchecked(job, range)?;
    check_unique(&chunks)?;
    Ok(chunks)
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
        });
        lo = hi;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interval::{MICROS_PER_DAY, parse_time};
    use crate::spec::RangeSpec;
    use proptest::prelude::*;

    fn t(s: &str) -> RangeValue {
        RangeValue::Time(parse_time(s).unwrap())
    }

    /// `[range]` over `column` from `start` to `end` in chunks of `chunk`.
    fn range(column: &str, chunk: ChunkSize, start: RangeValue, end: RangeValue) -> RangeSpec {
        RangeSpec {
            column: column.into(),
            column_loc: Default::default(),
            start: Some(start),
            end: Some(end),
            chunk,
            ordered: false,
            end_now: false,
            lookback: 1,
            extend_to: None,
            partitions: None,
            calendar: Calendar::default(),
            naive_local: None,
        }
    }

    fn assert_tiles(chunks: &[Chunk], start: RangeValue, end: RangeValue) {
        assert_eq!(chunks.first().and_then(|c| c.lo), Some(start));
        assert_eq!(chunks.last().and_then(|c| c.hi), Some(end));
        for pair in chunks.windows(2) {
            assert_eq!(
                pair[0].hi, pair[1].lo,
                "gap or overlap between {} and {}",
                pair[0], pair[1]
            );
        }
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index, i);
            assert!(c.lo < c.hi, "empty chunk {c}");
        }
        let mut ids: Vec<_> = chunks.iter().map(|c| &c.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), chunks.len(), "chunk ids must be unique");
    }

    #[test]
    fn weekly_chunks_over_2023() {
        let chunks = plan_bounds(
            "job",
            "created_at",
            t("2023-01-01"),
            t("2024-01-01"),
            ChunkSize::Fixed(7 * MICROS_PER_DAY),
        )
        .unwrap();
        assert_eq!(chunks.len(), 53);
        assert_tiles(&chunks, t("2023-01-01"), t("2024-01-01"));
        assert_eq!(chunks[52].bounds(), "[2023-12-31, 2024-01-01)");
    }

    #[test]
    fn months_follow_the_calendar_with_leap_day() {
        let chunks = plan_bounds(
            "job",
            "d",
            t("2024-01-01"),
            t("2025-01-01"),
            ChunkSize::Months(1),
        )
        .unwrap();
        assert_eq!(chunks.len(), 12);
        assert_eq!(chunks[1].bounds(), "[2024-02-01, 2024-03-01)");
        let feb = chunks[1].hi.unwrap().raw() - chunks[1].lo.unwrap().raw();
        assert_eq!(feb, 29 * MICROS_PER_DAY);
        assert_tiles(&chunks, t("2024-01-01"), t("2025-01-01"));
    }

    #[test]
    fn daily_chunks_include_the_leap_day() {
        let chunks = plan_bounds(
            "job",
            "d",
            t("2024-02-28"),
            t("2024-03-01"),
            ChunkSize::Fixed(MICROS_PER_DAY),
        )
        .unwrap();
        let bounds: Vec<_> = chunks.iter().map(Chunk::bounds).collect();
        assert_eq!(
            bounds,
            ["[2024-02-28, 2024-02-29)", "[2024-02-29, 2024-03-01)"]
        );
    }

    #[test]
    fn years_and_a_clipped_last_chunk() {
        let chunks = plan_bounds(
            "job",
            "d",
            t("2020-03-15"),
            t("2023-01-01"),
            ChunkSize::Months(12),
        )
        .unwrap();
        let bounds: Vec<_> = chunks.iter().map(Chunk::bounds).collect();
        assert_eq!(
            bounds,
            [
                "[2020-03-15, 2021-03-15)",
                "[2021-03-15, 2022-03-15)",
                "[2022-03-15, 2023-01-01)"
            ]
        );
    }

    #[test]
    fn single_and_empty_ranges() {
        let one = plan_bounds(
            "job",
            "id",
            RangeValue::Int(1),
            RangeValue::Int(5),
            ChunkSize::Count(100),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].bounds(), "[1, 5)");
        let empty = plan_bounds(
            "job",
            "id",
            RangeValue::Int(5),
            RangeValue::Int(5),
            ChunkSize::Count(1),
        )
        .unwrap();
        assert!(empty.is_empty());
        let all = plan("job", None).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].lo, None);
    }

    #[test]
    fn sequence_batches() {
        let chunks = plan_bounds(
            "job",
            "event_id",
            RangeValue::Int(1),
            RangeValue::Int(10_000_001),
            ChunkSize::Count(100_000),
        )
        .unwrap();
        assert_eq!(chunks.len(), 100);
        assert_tiles(&chunks, RangeValue::Int(1), RangeValue::Int(10_000_001));
    }

    #[test]
    fn ids_are_stable_when_the_range_grows() {
        let a = plan_bounds(
            "job",
            "c",
            t("2023-01-01"),
            t("2023-03-01"),
            ChunkSize::Months(1),
        )
        .unwrap();
        let b = plan_bounds(
            "job",
            "c",
            t("2023-01-01"),
            t("2023-06-01"),
            ChunkSize::Months(1),
        )
        .unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_eq!(a[1].id, b[1].id);
        let other_column = plan_bounds(
            "job",
            "d",
            t("2023-01-01"),
            t("2023-03-01"),
            ChunkSize::Months(1),
        )
        .unwrap();
        assert_ne!(a[0].id, other_column[0].id);
    }

    #[test]
    fn ids_carry_the_job_and_64_bits() {
        let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
        let a = plan_bounds("eu", "c", t("2023-01-01"), t("2023-03-01"), week).unwrap();
        let b = plan_bounds("us", "c", t("2023-01-01"), t("2023-03-01"), week).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_ne!(x.id, y.id, "two jobs share the id of {x}");
            assert_eq!(x.id.len(), 16);
            assert!(is_chunk_id(&x.id));
        }
        // The name's length is hashed too: ("a|b", "c") and ("a", "b|c")
        // must not make one text.
        let x = plan_bounds("a|b", "c", t("2023-01-01"), t("2023-01-02"), week).unwrap();
        let y = plan_bounds("a", "b|c", t("2023-01-01"), t("2023-01-02"), week).unwrap();
        assert_ne!(x[0].id, y[0].id);
        let v = plan_values("eu", "region", &["a".into(), "b".into()]).unwrap();
        let w = plan_values("us", "region", &["a".into(), "b".into()]).unwrap();
        assert_ne!(v[0].id, w[0].id);
    }

    #[test]
    fn legacy_ids_are_the_first_versions() {
        // Ids of the first version, as a state written then recorded them.
        let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
        let r = range("created_at", week, t("2023-01-01"), t("2024-01-01"));
        let chunks = plan("transactions", Some(&r)).unwrap();
        let text = format!(
            "v1|created_at|{week}|{:?}|{:?}",
            chunks[0].lo.unwrap(),
            chunks[0].hi.unwrap()
        );
        let want = format!("{:012x}", XxHash3_64::oneshot(text.as_bytes()) >> 16);
        assert_eq!(legacy_id(Some(&r), &chunks[0]), want);
        let all = plan("x", None).unwrap();
        let want = format!(
            "{:012x}",
            XxHash3_64::oneshot(format!("v1||{}|-|-", ChunkSize::All).as_bytes()) >> 16
        );
        assert_eq!(legacy_id(None, &all[0]), want);
        assert!(is_chunk_id(&want));
    }

    #[test]
    fn colliding_ids_are_refused() {
        let mut chunks = plan_bounds(
            "job",
            "id",
            RangeValue::Int(0),
            RangeValue::Int(10),
            ChunkSize::Count(1),
        )
        .unwrap();
        assert_eq!(check_unique(&chunks), Ok(()));
        chunks[7].id = chunks[2].id.clone();
        let err = check_unique(&chunks).unwrap_err();
        assert!(matches!(err, PlanError::IdCollision { .. }));
        let text = err.to_string();
        assert!(text.contains("#2 ") && text.contains("#7 "), "{text}");
    }

    #[test]
    fn extending_keeps_every_planned_chunk_and_follows_the_grid() {
        let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
        let mut r = range("c", week, t("2023-01-01"), t("2024-01-01"));
        let fixed = plan("job", Some(&r)).unwrap();
        r.extend_to = Some(t("2024-01-10"));
        let extended = plan("job", Some(&r)).unwrap();
        assert_eq!(&extended[..fixed.len()], &fixed[..]);
        // [2023-12-31, 2024-01-01) stays; then [2024-01-01, 2024-01-07), [2024-01-07, 2024-01-14).
        let tail: Vec<String> = extended[fixed.len()..].iter().map(|c| c.bounds()).collect();
        assert_eq!(
            tail,
            ["[2024-01-01, 2024-01-07)", "[2024-01-07, 2024-01-14)"]
        );
        // end = "now": the grid from the start, up to the chunk holding now.
        r.end = None;
        r.end_now = true;
        let now = plan("job", Some(&r)).unwrap();
        assert_eq!(now.len(), 54);
        assert_eq!(now[53].bounds(), "[2024-01-07, 2024-01-14)");
        assert_ne!(fingerprint(Some(&r)), fingerprint(None));
    }

    #[test]
    fn estimates_bound_the_plan() {
        let r = |chunk, start, end| range("c", chunk, start, end);
        let weekly = r(
            ChunkSize::Fixed(7 * MICROS_PER_DAY),
            t("2023-01-01"),
            t("2024-01-01"),
        );
        assert_eq!(estimate(Some(&weekly)), Some(53));
        let monthly = r(ChunkSize::Months(1), t("2023-01-01"), t("2024-01-01"));
        let n = estimate(Some(&monthly)).unwrap();
        assert!((12..=14).contains(&n), "{n}");
        let absurd = r(
            ChunkSize::Count(1),
            RangeValue::Int(0),
            RangeValue::Int(i64::MAX),
        );
        assert_eq!(plan("job", Some(&absurd)), Err(PlanError::TooManyChunks));
        assert_eq!(estimate(None), None);
    }

    #[test]
    fn mismatched_kinds_are_refused() {
        let err = plan_bounds(
            "job",
            "c",
            t("2023-01-01"),
            t("2023-03-01"),
            ChunkSize::Count(5),
        )
        .unwrap_err();
        assert!(matches!(err, PlanError::KindMismatch { .. }));
    }

    #[test]
    fn overlap_selection() {
        let chunks = plan_bounds(
            "job",
            "c",
            t("2023-01-01"),
            t("2023-01-29"),
            ChunkSize::Fixed(7 * MICROS_PER_DAY),
        )
        .unwrap();
        let picked: Vec<_> = chunks
            .iter()
            .filter(|c| c.overlaps(Some(t("2023-01-08")), Some(t("2023-01-09"))))
            .map(|c| c.index)
            .collect();
        assert_eq!(picked, [1]);
        let picked: Vec<_> = chunks
            .iter()
            .filter(|c| c.overlaps(Some(t("2023-01-14")), None))
            .map(|c| c.index)
            .collect();
        assert_eq!(picked, [1, 2, 3]);
    }

    fn chunk_size() -> impl Strategy<Value = ChunkSize> {
        prop_oneof![
            (1i64..=400).prop_map(|h| ChunkSize::Fixed(h * 3600 * 1_000_000)),
            (1i64..=90).prop_map(|m| ChunkSize::Fixed(m * 60 * 1_000_000 + 17)),
            (1u32..=30).prop_map(ChunkSize::Months),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn time_chunks_tile_the_range(
            start in -2_000_000_000i64..4_000_000_000i64,
            len in 1i64..40_000_000i64,
            chunk in chunk_size(),
        ) {
            let s = RangeValue::Time(start * 1_000_000);
            let e = RangeValue::Time((start + len) * 1_000_000);
            let chunks = plan_bounds("job", "t", s, e, chunk).unwrap();
            assert_tiles(&chunks, s, e);
        }

        #[test]
        fn integer_chunks_tile_the_range(start in -1_000_000i64..1_000_000, len in 1i64..100_000, width in 1i64..5_000) {
            let s = RangeValue::Int(start);
            let e = RangeValue::Int(start + len);
            let chunks = plan_bounds("job", "id", s, e, ChunkSize::Count(width)).unwrap();
            assert_tiles(&chunks, s, e);
            prop_assert_eq!(chunks.len() as i64, (len + width - 1) / width);
        }
    }
}
