//! `backfill gaps`: what is missing from the target, at the data level.
//!
//! Per period of an expected cadence (hourly, daily, weekly, monthly) over
//! the job's range, the target's rows are counted by the range column: a
//! period with no rows is missing, one with fewer than `min_ratio` times the
//! median of its neighbours is thin. The state store adds chunks that never
//! committed, and committed chunks that wrote nothing although the source
//! now has rows in their range (they ran before the data arrived). `--fix`
//! marks the chunks behind every gap to run again; a chunk is the unit a
//! re-run replaces atomically, so the fix re-runs whole chunks, and only
//! those.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, UInt32Type};
use backfill_core::ChunkSize;
use backfill_core::interval::{Calendar, MICROS_PER_DAY, RangeValue};
use backfill_core::plan::Chunk;
use backfill_core::state::{ChunkRecord, ChunkStatus};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{SessionContext, lit};
use serde::Serialize;

use crate::error::Error;
use crate::placement::ChunkOfUdf;
use crate::predicate::RangeColumn;
use crate::runner::{Backfill, OpenJob};
use datafusion::common::Column;
use datafusion::logical_expr::ScalarUDF;

/// Periods on each side whose median a period is compared with.
const NEIGHBOURS: usize = 3;
/// More periods than this is a mistake (a minutely cadence over years).
const MAX_PERIODS: usize = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Cadence {
    pub fn parse(s: &str) -> Option<Cadence> {
        Some(match s.to_ascii_lowercase().as_str() {
            "hourly" | "hour" | "1h" => Cadence::Hourly,
            "daily" | "day" | "1d" => Cadence::Daily,
            "weekly" | "week" | "7d" | "1w" => Cadence::Weekly,
            "monthly" | "month" => Cadence::Monthly,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Cadence::Hourly => "hourly",
            Cadence::Daily => "daily",
            Cadence::Weekly => "weekly",
            Cadence::Monthly => "monthly",
        }
    }

    /// The cadence a job's chunks suggest: hourly under a day, else daily.
    fn for_chunk(chunk: ChunkSize) -> Cadence {
        match chunk {
            ChunkSize::Fixed(w) if w < MICROS_PER_DAY => Cadence::Hourly,
            _ => Cadence::Daily,
        }
    }

    /// The cadence as a chunk width, so periods follow the job's calendar
    /// as its chunks do (local days in `[range] timezone`).
    fn size(&self) -> ChunkSize {
        match self {
            Cadence::Hourly => ChunkSize::Fixed(3_600_000_000),
            Cadence::Daily => ChunkSize::Fixed(MICROS_PER_DAY),
            Cadence::Weekly => ChunkSize::Fixed(7 * MICROS_PER_DAY),
            Cadence::Monthly => ChunkSize::Months(1),
        }
    }

    /// The end of period `k` (from 1) of periods from `start`: months from
    /// the start, so days of the month never drift.
    fn step(&self, calendar: &Calendar, start: i64, k: u32) -> Option<i64> {
        let calendar = Calendar {
            week_start: None,
            ..*calendar
        };
        calendar
            .step(self.size(), RangeValue::Time(start), u64::from(k))
            .map(|v| v.raw())
    }
}

#[derive(Debug, Clone)]
pub struct GapOptions {
    /// Default: hourly for chunks under a day, else daily.
    pub expect: Option<Cadence>,
    pub min_ratio: f64,
    pub fix: bool,
}

impl Default for GapOptions {
    fn default() -> Self {
        GapOptions {
            expect: None,
            min_ratio: 0.5,
            fix: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PeriodGap {
    pub start: String,
    pub end: String,
    pub rows: u64,
    /// Thin periods: the median of the neighbours' rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neighbours_median: Option<u64>,
    /// The chunks covering the period.
    pub chunks: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkGap {
    pub chunk: String,
    pub bounds: String,
    pub status: ChunkStatus,
    /// Committed-empty chunks: the source's rows in the range now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_rows: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    pub job: String,
    pub target: String,
    pub cadence: &'static str,
    pub from: String,
    pub to: String,
    pub periods: usize,
    pub rows: u64,
    pub min_ratio: f64,
    pub missing: Vec<PeriodGap>,
    pub thin: Vec<PeriodGap>,
    pub never_committed: Vec<ChunkGap>,
    pub empty_committed: Vec<ChunkGap>,
    /// Every chunk behind a gap, in plan order.
    pub chunks_to_rerun: Vec<String>,
    /// With `--fix`: how many committed chunks were marked to run again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marked: Option<usize>,
}

impl GapReport {
    pub fn has_gaps(&self) -> bool {
        !(self.missing.is_empty()
            && self.thin.is_empty()
            && self.never_committed.is_empty()
            && self.empty_committed.is_empty())
    }
}

impl Backfill {
    /// Scans the target for missing and thin periods and reads the state
    /// for chunks behind them; with `fix`, marks those chunks to run again.
    pub async fn gaps(&self, opts: &GapOptions) -> Result<GapReport, Error> {
        let job = self.open().await?;
        let spec = &job.spec;
        let (Some(r), Some(range)) = (&spec.range, &job.range) else {
            return Err(Error::Usage(
                "gaps needs a [range] over a time column: periods are counted along it".into(),
            ));
        };
        // The planned chunks' span: `[range] end`, or now for incremental jobs.
        let first = job.chunks.first().and_then(|c| c.lo);
        let last = job.chunks.last().and_then(|c| c.hi);
        let (Some(RangeValue::Time(start)), Some(RangeValue::Time(end))) = (first, last) else {
            return Err(Error::Usage(
                "gaps needs a time [range] with a start and an end".into(),
            ));
        };
        if !(opts.min_ratio > 0.0 && opts.min_ratio <= 1.0) {
            return Err(Error::Usage(format!(
                "--min-ratio {} must be above 0 and at most 1",
                opts.min_ratio
            )));
        }
        let cadence = opts.expect.unwrap_or(Cadence::for_chunk(r.chunk));
        // Periods follow the calendar the chunks were cut on.
        let calendar = r.plan_calendar();
        let show = |us: i64| calendar.format(us);
        if cadence == Cadence::Monthly
            && calendar
                .local(start)
                .is_none_or(|t| t.format("%d %H:%M:%S%.f").to_string() != "01 00:00:00")
        {
            return Err(Error::Usage(format!(
                "monthly periods follow calendar months: the range must start on the 1st of a month, not {}",
                show(start)
            )));
        }
        let periods = periods(cadence, &calendar, start, end)?;
        let counts = target_counts(&job, range, &periods).await?;
        let rows: Vec<u64> = (0..periods.len())
            .map(|i| counts.get(&(i as u32)).copied().unwrap_or(0))
            .collect();
        let now = r.instant_as_value(chrono::Utc::now().timestamp_micros());
        let full = |i: usize| {
            let (lo, hi) = periods[i];
            cadence.step(&calendar, lo, 1) == Some(hi) && hi <= now
        };

        let mut missing = Vec::new();
        let mut thin = Vec::new();
        let mut behind: BTreeSet<usize> = BTreeSet::new();
        for (i, &(lo, hi)) in periods.iter().enumerate() {
            let n = rows[i];
            let chunks = covering(&job.chunks, lo, hi);
            let gap = |median| PeriodGap {
                start: show(lo),
                end: show(hi),
                rows: n,
                neighbours_median: median,
                chunks: chunks.iter().map(|c| job.chunks[*c].id.clone()).collect(),
            };
            if n == 0 {
                missing.push(gap(None));
                behind.extend(&chunks);
                continue;
            }
            let median = neighbours_median(&rows, i);
            if full(i) && median > 0 && (n as f64) < opts.min_ratio * median as f64 {
                thin.push(gap(Some(median)));
                behind.extend(&chunks);
            }
        }

        let state = self.open_state_existing()?;
        let records: BTreeMap<String, ChunkRecord> = match &state {
            Some(s) => s.chunks()?.into_iter().map(|c| (c.id.clone(), c)).collect(),
            None => BTreeMap::new(),
        };
        let mut never_committed = Vec::new();
        let mut empty_committed = Vec::new();
        for c in &job.chunks {
            let record = records.get(&c.id);
            let status = record.map_or(ChunkStatus::Pending, |r| r.status);
            if status != ChunkStatus::Committed {
                never_committed.push(ChunkGap {
                    chunk: c.id.clone(),
                    bounds: c.bounds(),
                    status,
                    source_rows: None,
                });
                behind.insert(c.index);
                continue;
            }
            let Some(m) = record.and_then(|r| r.metrics.as_ref()) else {
                continue;
            };
            if m.rows_written == 0 {
                let now = source_rows(&job, range, c).await?;
                if now > m.rows_read {
                    empty_committed.push(ChunkGap {
                        chunk: c.id.clone(),
                        bounds: c.bounds(),
                        status,
                        source_rows: Some(now),
                    });
                    behind.insert(c.index);
                }
            }
        }

        let chunks_to_rerun: Vec<String> =
            behind.iter().map(|&i| job.chunks[i].id.clone()).collect();
        let mut marked = None;
        if opts.fix {
            let committed: Vec<String> = chunks_to_rerun
                .iter()
                .filter(|id| records.get(*id).map(|r| r.status) == Some(ChunkStatus::Committed))
                .cloned()
                .collect();
            marked = Some(match &state {
                Some(s) if !committed.is_empty() => {
                    crate::runner::with_lock(s.as_ref(), || Ok(s.reset(&committed)?))?
                }
                _ => 0,
            });
        }
        Ok(GapReport {
            job: spec.name.clone(),
            target: spec.target.path_shown.clone(),
            cadence: cadence.name(),
            from: show(start),
            to: show(end),
            periods: periods.len(),
            rows: rows.iter().sum(),
            min_ratio: opts.min_ratio,
            missing,
            thin,
            never_committed,
            empty_committed,
            chunks_to_rerun,
            marked,
        })
    }
}

fn periods(
    cadence: Cadence,
    calendar: &Calendar,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, i64)>, Error> {
    let mut out = Vec::new();
    let mut lo = start;
    let mut k = 0u32;
    while lo < end {
        if out.len() >= MAX_PERIODS {
            return Err(Error::Usage(format!(
                "{} periods over the range are too many to list; use a coarser --expect",
                cadence.name()
            )));
        }
        k += 1;
        let hi = cadence
            .step(calendar, start, k)
            .ok_or_else(|| Error::Usage("the range overflows the calendar".into()))?
            .min(end);
        out.push((lo, hi));
        lo = hi;
    }
    Ok(out)
}

/// Indexes of the chunks overlapping `[lo, hi)` (chunks are sorted).
fn covering(chunks: &[Chunk], lo: i64, hi: i64) -> Vec<usize> {
    let raw = |v: Option<RangeValue>| v.map(|v| v.raw());
    let first = chunks.partition_point(|c| raw(c.hi).is_some_and(|h| h <= lo));
    chunks[first..]
        .iter()
        .take_while(|c| raw(c.lo).is_none_or(|l| l < hi))
        .map(|c| c.index)
        .collect()
}

/// The median of the non-empty periods among the `NEIGHBOURS` on each side
/// (missing ones are reported as missing, and must not make others look
/// normal).
fn neighbours_median(rows: &[u64], i: usize) -> u64 {
    let lo = i.saturating_sub(NEIGHBOURS);
    let hi = (i + NEIGHBOURS + 1).min(rows.len());
    let mut around: Vec<u64> = (lo..hi)
        .filter(|&j| j != i && rows[j] > 0)
        .map(|j| rows[j])
        .collect();
    if around.is_empty() {
        return 0;
    }
    around.sort_unstable();
    let n = around.len();
    if n % 2 == 1 {
        around[n / 2]
    } else {
        (around[n / 2 - 1] + around[n / 2]) / 2
    }
}

/// Rows per period (by its number), counted by the range column in the target. Only
/// that column is read (Parquet projection, or the PostgreSQL COPY's column
/// list), with the range predicate pruning files and row groups.
async fn target_counts(
    job: &OpenJob,
    range: &RangeColumn,
    periods: &[(i64, i64)],
) -> Result<BTreeMap<u32, u64>, Error> {
    let (Some(&(start, _)), Some(&(_, end))) = (periods.first(), periods.last()) else {
        return Ok(BTreeMap::new());
    };
    let ctx = SessionContext::new_with_config_rt(job.config.clone(), job.runtime.clone());
    let Some(table) = job.sinks.target.table(&ctx).await? else {
        return Ok(BTreeMap::new());
    };
    let target = job.spec.target.path_shown.as_str();
    let fail = |e: datafusion::error::DataFusionError| {
        Error::Usage(format!("counting rows per period in {target}: {e}"))
    };
    let df = ctx.read_table(table).map_err(fail)?;
    let Ok(field) = df.schema().field_with_unqualified_name(&range.name) else {
        return Err(Error::Usage(format!(
            "the target {target} has no column \"{}\" (the range column), which gaps counts periods by",
            range.name
        )));
    };
    let column = RangeColumn {
        name: range.name.clone(),
        data_type: field.data_type().clone(),
        bucket: None,
        position: None,
    };
    let whole = Chunk {
        index: 0,
        id: String::new(),
        lo: Some(RangeValue::Time(start)),
        hi: Some(RangeValue::Time(end)),
        value: None,
        bucket: None,
    };
    let df = match crate::predicate::datafusion(&column, &whole) {
        Ok(Some(p)) => df.filter(p).map_err(fail)?,
        Ok(None) => df,
        Err(e) => return Err(fail(e.into())),
    };
    // Each row's period by the same rule that places rows in chunks
    // (bounds rounded to the column's type), so a period is exactly the
    // rows a chunk with its bounds would hold, on any calendar.
    let as_chunks: Vec<Chunk> = periods
        .iter()
        .enumerate()
        .map(|(index, &(lo, hi))| Chunk {
            index,
            id: String::new(),
            lo: Some(RangeValue::Time(lo)),
            hi: Some(RangeValue::Time(hi)),
            value: None,
            bucket: None,
        })
        .collect();
    let period_of = ScalarUDF::new_from_impl(ChunkOfUdf::new(&column, &as_chunks).map_err(fail)?);
    let period = period_of.call(vec![datafusion::prelude::col(Column::new_unqualified(
        range.name.clone(),
    ))]);
    let batches = df
        .aggregate(vec![period.alias("p")], vec![count(lit(1)).alias("n")])
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let mut out = BTreeMap::new();
    for b in batches {
        let arrow_err = |e: arrow::error::ArrowError| Error::Usage(format!("counting rows: {e}"));
        let p = b.column(0).as_primitive::<UInt32Type>();
        let n = arrow::compute::cast(b.column(1), &DataType::Int64).map_err(arrow_err)?;
        let n = n.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if p.is_valid(i) {
                *out.entry(p.value(i)).or_insert(0) += n.value(i).max(0) as u64;
            }
        }
    }
    Ok(out)
}

/// The source's rows in a chunk's range now.
async fn source_rows(job: &OpenJob, range: &RangeColumn, chunk: &Chunk) -> Result<u64, Error> {
    let ctx = SessionContext::new_with_config_rt(job.config.clone(), job.runtime.clone());
    let fail = |e: datafusion::error::DataFusionError| {
        Error::Usage(format!("counting source rows of chunk {}: {e}", chunk.id))
    };
    let mut df = ctx.read_table(job.source.table()).map_err(fail)?;
    if let Some(p) = crate::predicate::datafusion(range, chunk).map_err(|e| fail(e.into()))? {
        df = df.filter(p).map_err(fail)?;
    }
    Ok(df.count().await.map_err(fail)? as u64)
}

pub fn gaps_text(r: &GapReport) -> String {
    use crate::progress::human_count;
    let mut out = format!(
        "{}: {} periods over [{}, {}) in {}: {} periods, {} rows\n",
        r.job,
        r.cadence,
        r.from,
        r.to,
        r.target,
        human_count(r.periods as u64),
        human_count(r.rows)
    );
    if !r.has_gaps() {
        out.push_str("no gaps: every period has rows, none is thin, every chunk is committed\n");
        return out;
    }
    let mut rows = Vec::new();
    for (kind, list) in [("missing", &r.missing), ("thin", &r.thin)] {
        for p in list {
            rows.push(vec![
                kind.to_string(),
                p.start.clone(),
                human_count(p.rows),
                p.neighbours_median.map(human_count).unwrap_or_default(),
                p.chunks.join(","),
            ]);
        }
    }
    if !rows.is_empty() {
        out.push_str(&crate::report::table(
            &["gap", "period", "rows", "neighbours", "chunks"],
            &rows,
            &[false, false, true, true, false],
        ));
    }
    for (title, list) in [
        ("chunks never committed", &r.never_committed),
        (
            "chunks committed empty while the source now has rows",
            &r.empty_committed,
        ),
    ] {
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}: {}\n", list.len()));
        for c in list.iter().take(20) {
            let extra = c
                .source_rows
                .map(|n| format!(", {} source rows", human_count(n)))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} {} ({}{extra})\n",
                c.chunk, c.bounds, c.status
            ));
        }
        if list.len() > 20 {
            out.push_str(&format!("  ... and {} more\n", list.len() - 20));
        }
    }
    let gaps = r.missing.len() + r.thin.len() + r.never_committed.len() + r.empty_committed.len();
    match r.marked {
        Some(n) => out.push_str(&format!(
            "{gaps} gap(s); {} chunk(s) will run on the next `backfill run` ({n} committed chunk(s) marked to run again)\n",
            r.chunks_to_rerun.len()
        )),
        None => out.push_str(&format!(
            "{gaps} gap(s) behind {} chunk(s); `--fix` marks them to run again, `--fix --run` refills them now\n",
            r.chunks_to_rerun.len()
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_core::interval::format_time;

    #[test]
    fn median_ignores_the_period_and_missing_neighbours() {
        let rows = [10, 12, 0, 3, 11, 9, 10];
        assert_eq!(neighbours_median(&rows, 3), 10);
        assert_eq!(neighbours_median(&[0, 5, 0], 1), 0);
    }

    #[test]
    fn periods_step_from_the_start_on_the_calendar() {
        let start = backfill_core::interval::parse_time("2023-01-01").unwrap();
        let utc = Calendar::default();
        let p = periods(Cadence::Monthly, &utc, start, start + 70 * MICROS_PER_DAY).unwrap();
        assert_eq!(format_time(p[1].0), "2023-02-01");
        assert_eq!(format_time(p[2].0), "2023-03-01");
        assert_eq!(format_time(p[2].1), "2023-03-12");
        assert_eq!(p.len(), 3);
        let d = periods(Cadence::Daily, &utc, start, start + 3 * MICROS_PER_DAY).unwrap();
        assert_eq!(d.len(), 3);
        // Local days: 2023-03-12 in New York is 23 hours long.
        let ny = Calendar {
            zone: Some(backfill_core::interval::parse_zone("America/New_York").unwrap()),
            week_start: None,
        };
        let from = ny.parse_time("2023-03-11").unwrap();
        let to = ny.parse_time("2023-03-14").unwrap();
        let d = periods(Cadence::Daily, &ny, from, to).unwrap();
        let hours: Vec<i64> = d.iter().map(|(lo, hi)| (hi - lo) / 3_600_000_000).collect();
        assert_eq!(hours, [24, 23, 24]);
    }
}
