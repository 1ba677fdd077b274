//! Text and JSON renderings of `plan`, `status` and `run` results.

use std::fmt::Write as _;

use backfill_core::interval::{Calendar, RangeValue};
use std::collections::BTreeMap;

use backfill_core::state::{ChunkRecord, ChunkStatus, RuleCount};
use serde::Serialize;

use crate::progress::{human_bytes, human_count};
use crate::runner::{Plan, PlannedChunk, PlannedPartition, RunSummary};

/// How bounds are written for people.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// Instants in the job's zone (`[range] timezone`).
    pub cal: Calendar,
    /// Kafka offset chunks: a bound is a position, written
    /// `p<partition>@<offset>`.
    pub positions: bool,
}

/// A bound for people: in the job's zone with its offset, a Kafka position
/// as partition and offset, else as the range writes it.
fn bound(v: Option<RangeValue>, shown: &Shown) -> String {
    match v {
        Some(RangeValue::Time(us)) if shown.cal.zone.is_some() => shown.cal.format(us),
        Some(RangeValue::Int(i)) if shown.positions => {
            let (p, offset) = backfill_core::plan::position_parts(i);
            format!("p{p}@{offset}")
        }
        Some(v) => v.to_string(),
        None => "-".to_string(),
    }
}

/// A chunk's upper bound, with its bucket when the plan has buckets.
fn upper(
    v: Option<RangeValue>,
    bucket: Option<backfill_core::plan::Bucket>,
    shown: &Shown,
) -> String {
    match bucket {
        Some(b) => format!("{} (bucket {}/{})", bound(v, shown), b.index, b.of),
        None => bound(v, shown),
    }
}

/// Lays out rows under a header with columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i > 0 {
                l.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                l.push_str(&" ".repeat(pad));
                l.push_str(c);
            } else {
                l.push_str(c);
                if i + 1 < cells.len() {
                    l.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

pub fn plan_text(job: &str, plan: &Plan, shown: &Shown) -> String {
    let chunks = &plan.chunks;
    let estimated = chunks.iter().any(|c| c.estimate.is_some());
    let rows: Vec<Vec<String>> = chunks
        .iter()
        .map(|c| {
            let mut row = vec![
                c.chunk.index.to_string(),
                c.chunk.id.clone(),
                bound(c.chunk.lo, shown),
                upper(c.chunk.hi, c.chunk.bucket, shown),
                c.status.to_string(),
            ];
            if estimated {
                let (rows, bytes) = match c.estimate {
                    Some(e) if e.empty => ("0".to_string(), "-".to_string()),
                    Some(e) => (human_count(e.rows), human_bytes(e.bytes)),
                    None => ("?".into(), "?".into()),
                };
                row.push(rows);
                row.push(bytes);
            }
            let mut notes = Vec::new();
            if c.estimate.is_some_and(|e| e.empty) {
                notes.push("empty: committed without a scan".to_string());
            }
            if let Some(n) = c.overwrites {
                notes.push(format!("a run replaces its {} rows", human_count(n)));
            }
            row.push(notes.join("; "));
            row
        })
        .collect();
    let mut header = vec!["#", "chunk", "from (incl.)", "to (excl.)", "status"];
    if estimated {
        header.extend(["~rows", "~bytes"]);
    }
    header.push("");
    let mut out = table(
        &header,
        &rows,
        &[true, false, false, false, false, true, true],
    );
    let count = |s| chunks.iter().filter(|c| c.status == s).count();
    let _ = writeln!(
        out,
        "{job}: {} chunks ({} committed, {} pending, {} failed)",
        chunks.len(),
        count(ChunkStatus::Committed),
        count(ChunkStatus::Pending) + count(ChunkStatus::Running),
        count(ChunkStatus::Failed)
    );
    if estimated {
        let (rows, bytes, empty) = chunks
            .iter()
            .filter_map(|c| c.estimate)
            .fold((0, 0, 0), |(r, b, e), x| {
                (r + x.rows, b + x.bytes, e + usize::from(x.empty))
            });
        let _ = writeln!(
            out,
            "estimated from the source's metadata: {} rows, {} to read; {empty} chunk(s) empty",
            human_count(rows),
            human_bytes(bytes)
        );
    }
    if !plan.partitions.is_empty() {
        let rows: Vec<Vec<String>> = plan
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    p.earliest.to_string(),
                    p.latest.to_string(),
                    format!("{}..{}", p.planned_start, p.planned_end),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["partition", "earliest", "latest", "planned"],
            &rows,
            &[true, true, true, false],
        ));
    }
    out
}

#[derive(Debug, Serialize)]
pub struct PlanJson<'a> {
    pub job: &'a str,
    pub chunks: &'a [PlannedChunk],
    #[serde(skip_serializing_if = "<[PlannedPartition]>::is_empty")]
    pub partitions: &'a [PlannedPartition],
    pub total: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub chunks: usize,
    pub committed: usize,
    pub pending: usize,
    pub running: usize,
    pub failed: usize,
    pub attempts: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_quarantined: u64,
    pub rows_dropped: u64,
    pub duplicates: u64,
    pub rules: BTreeMap<String, RuleCount>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

pub fn totals(records: &[ChunkRecord]) -> Totals {
    let mut t = Totals {
        chunks: records.len(),
        ..Default::default()
    };
    for r in records {
        match r.status {
            ChunkStatus::Committed => t.committed += 1,
            ChunkStatus::Pending => t.pending += 1,
            ChunkStatus::Running => t.running += 1,
            ChunkStatus::Failed => t.failed += 1,
        }
        t.attempts += u64::from(r.attempts);
        if let (Some(m), ChunkStatus::Committed) = (&r.metrics, r.status) {
            t.rows_read += m.rows_read;
            t.rows_written += m.rows_written;
            t.rows_quarantined += m.rows_quarantined;
            t.rows_dropped += m.rows_dropped;
            t.duplicates += m.duplicates;
            backfill_core::state::add_rule_counts(&mut t.rules, &m.rules);
            t.bytes_read += m.bytes_read;
            t.bytes_written += m.bytes_written;
        }
    }
    t
}

/// The upper bound of the longest run of committed chunks from the start:
/// every row below it is in the target.
pub fn watermark(records: &[ChunkRecord]) -> Option<RangeValue> {
    let mut sorted: Vec<&ChunkRecord> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let mut mark = None;
    for r in sorted {
        if r.status != ChunkStatus::Committed {
            break;
        }
        mark = r.hi;
    }
    mark
}

#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pub job: &'a str,
    pub state: String,
    pub chunks: &'a [ChunkRecord],
    pub totals: Totals,
    pub watermark: Option<RangeValue>,
}

pub fn status_text(job: &str, records: &[ChunkRecord], ordered: bool, shown: &Shown) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let m = r.metrics.clone().unwrap_or_default();
            let has = r.metrics.is_some();
            let mut err = r.last_error.clone().unwrap_or_default().replace('\n', " ");
            if err.chars().count() > 60 {
                err = format!("{}…", err.chars().take(59).collect::<String>());
            }
            let num = |v: u64| if has { v.to_string() } else { "-".into() };
            vec![
                r.index.to_string(),
                r.id.clone(),
                bound(r.lo, shown),
                upper(r.hi, r.bucket, shown),
                r.status.to_string(),
                r.attempts.to_string(),
                num(m.rows_read),
                num(m.rows_written),
                num(m.rows_quarantined),
                num(m.rows_dropped),
                num(m.duplicates),
                if has {
                    human_bytes(m.bytes_read)
                } else {
                    "-".into()
                },
                if has {
                    format!("{:.2}s", m.duration_ms as f64 / 1000.0)
                } else {
                    "-".into()
                },
                err,
            ]
        })
        .collect();
    let header = [
        "#",
        "chunk",
        "from (incl.)",
        "to (excl.)",
        "status",
        "attempts",
        "rows read",
        "written",
        "quarantined",
        "dropped",
        "dups",
        "bytes read",
        "time",
        "last error",
    ];
    let right = [
        true, false, false, false, false, true, true, true, true, true, true, true, true, false,
    ];
    let mut out = table(&header, &rows, &right);
    let t = totals(records);
    let _ = writeln!(
        out,
        "{job}: {} chunks: {} committed, {} pending, {} running, {} failed; {} rows read, {} written ({} read, {} written)",
        t.chunks,
        t.committed,
        t.pending,
        t.running,
        t.failed,
        t.rows_read,
        t.rows_written,
        human_bytes(t.bytes_read),
        human_bytes(t.bytes_written)
    );
    if t.rows_quarantined + t.rows_dropped + t.duplicates > 0 {
        let _ = writeln!(
            out,
            "quality: {} quarantined, {} dropped, {} duplicates removed{}",
            t.rows_quarantined,
            t.rows_dropped,
            t.duplicates,
            rules_text(&t.rules)
        );
    }
    if ordered || t.committed > 0 {
        match watermark(records) {
            Some(w) => {
                let _ = writeln!(
                    out,
                    "watermark: {} (every chunk below it is committed)",
                    bound(Some(w), shown)
                );
            }
            None if ordered => {
                let _ = writeln!(out, "watermark: none yet");
            }
            None => {}
        }
    }
    out
}

pub fn run_text(s: &RunSummary) -> String {
    let mut out = String::new();
    let r = &s.recovered;
    if r.republished_chunks
        + r.garbage_removed
        + r.orphans_removed
        + r.lost_chunks
        + r.interrupted_chunks
        > 0
    {
        let _ = writeln!(
            out,
            "recovered from an interrupted run: {} chunk(s) published, {} superseded and {} orphaned file(s) removed, {} interrupted chunk(s) requeued{}",
            r.republished_chunks,
            r.garbage_removed,
            r.orphans_removed,
            r.interrupted_chunks,
            if r.lost_chunks > 0 {
                format!(", {} chunk(s) with lost files requeued", r.lost_chunks)
            } else {
                String::new()
            }
        );
    }
    if s.dry_run {
        let _ = writeln!(
            out,
            "dry run: {} of {} chunks would run",
            s.would_run.len(),
            s.planned
        );
        for c in &s.would_run {
            let _ = writeln!(out, "  {c}");
        }
        return out;
    }
    if s.nothing_to_do() {
        let _ = if s.narrowed {
            writeln!(
                out,
                "nothing to do: no chunk of {} matches the selection ({} chunks planned)",
                s.job, s.planned
            )
        } else {
            writeln!(
                out,
                "nothing to do: all {} chunks of {} are committed",
                s.planned, s.job
            )
        };
        return out;
    }
    let _ = writeln!(
        out,
        "{}: {} of {} selected chunks committed{}{} in {:.1}s",
        s.job,
        s.committed,
        s.selected,
        if s.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", s.failed.len())
        },
        if s.left > 0 {
            format!(", {} left for the next run", s.left)
        } else {
            String::new()
        },
        s.elapsed_secs
    );
    if s.taken > 0 {
        let _ = writeln!(
            out,
            "shared state: {} chunk(s) were run by other processes",
            s.taken
        );
    }
    if s.empty > 0 {
        let _ = writeln!(
            out,
            "{} chunk(s) committed empty without a scan: the source's statistics hold no row in their range",
            s.empty
        );
    }

    let _ = writeln!(
        out,
        "rows: {} read, {} written ({} rows/s); bytes: {} read, {} written",
        s.rows_read,
        s.rows_written,
        human_count(s.rows_per_second() as u64),
        human_bytes(s.bytes_read),
        human_bytes(s.bytes_written)
    );
    if s.rows_quarantined + s.rows_dropped + s.duplicates > 0 || !s.rules.is_empty() {
        let _ = writeln!(
            out,
            "quality: {} quarantined, {} dropped, {} duplicates removed{}",
            s.rows_quarantined,
            s.rows_dropped,
            s.duplicates,
            rules_text(&s.rules)
        );
    }
    for (n, what) in [
        (
            s.null_range_rows,
            "source row(s) have a NULL range column and belong to no chunk",
        ),
        (
            s.source_reruns as u64,
            "committed chunk(s) ran again: source files under them were added, changed or removed",
        ),
        (
            s.dedup_reruns as u64,
            "committed chunk(s) ran again: the source moved the dedup winners of their keys",
        ),
        (
            s.foreign_reruns as u64,
            "committed chunk(s) ran again: another writer changed rows in their range of the table",
        ),
    ] {
        if n > 0 {
            let _ = writeln!(out, "note: {n} {what}");
        }
    }
    if s.interrupted {
        let _ = writeln!(out, "interrupted: run the same command again to resume");
    }
    for f in &s.failed {
        let _ = writeln!(
            out,
            "failed: chunk #{} {} {}: {}",
            f.index, f.id, f.bounds, f.error
        );
    }
    if !s.failed.is_empty() {
        let _ = writeln!(
            out,
            "run again to retry the failed chunks (committed ones are kept)"
        );
    }
    out
}

fn rules_text(rules: &BTreeMap<String, RuleCount>) -> String {
    if rules.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = rules
        .iter()
        .map(|(r, c)| match (c.quarantined, c.dropped) {
            (q, 0) => format!("{r}: {q}"),
            (0, d) => format!("{r}: {d} dropped"),
            (q, d) => format!("{r}: {q} + {d} dropped"),
        })
        .collect();
    format!(" ({})", parts.join(", "))
}

pub fn validate_text(r: &crate::validate::ValidateReport) -> String {
    let rows: Vec<Vec<String>> = r
        .chunks
        .iter()
        .map(|c| {
            vec![
                c.index.to_string(),
                c.id.clone(),
                c.bounds.clone(),
                c.status.to_string(),
                c.expected_rows_in.to_string(),
                c.target_rows.to_string(),
                c.quarantined_rows.to_string(),
                (c.recorded_dropped.unwrap_or(0) + c.recorded_duplicates.unwrap_or(0)).to_string(),
                if c.problems.is_empty() {
                    "ok".into()
                } else if c.source_forgotten.is_some() {
                    "SOURCE GONE".into()
                } else {
                    "MISMATCH".into()
                },
            ]
        })
        .collect();
    let mut out = table(
        &[
            "#",
            "chunk",
            "range",
            "status",
            "source",
            "target",
            "quarantined",
            "dropped+dups",
            "check",
        ],
        &rows,
        &[true, false, false, false, true, true, true, true, false],
    );
    for c in r.chunks.iter().filter(|c| !c.problems.is_empty()) {
        for p in &c.problems {
            let _ = writeln!(out, "chunk #{} {} {}: {p}", c.index, c.id, c.bounds);
        }
    }
    if !r.group_by.is_empty() {
        let shown: Vec<&crate::validate::GroupCheck> = if r.groups.len() <= 50 {
            r.groups.iter().collect()
        } else {
            r.groups.iter().filter(|g| !g.ok).collect()
        };
        let mut header: Vec<String> = r.group_by.clone();
        header.extend(["source", "target", "quarantined", "removed"].map(String::from));
        for s in &r.sum_columns {
            header.push(format!("sum({s})"));
        }
        header.push("check".into());
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|g| {
                let mut row = g.group.clone();
                row.extend([g.source, g.target, g.quarantined, g.removed].map(|v| v.to_string()));
                for s in &r.sum_columns {
                    row.push(
                        g.sums
                            .get(s)
                            .map(|(_, a)| format!("{a:.2}"))
                            .unwrap_or_default(),
                    );
                }
                row.push(if g.ok {
                    "ok".into()
                } else {
                    format!("MISMATCH in {}", g.chunks.join(", "))
                });
                row
            })
            .collect();
        let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let right: Vec<bool> = header
            .iter()
            .enumerate()
            .map(|(i, _)| i >= r.group_by.len())
            .collect();
        out.push('\n');
        out.push_str(&table(&header_refs, &rows, &right));
        if shown.len() < r.groups.len() {
            let _ = writeln!(
                out,
                "({} groups reconcile and are not shown)",
                r.groups.len() - shown.len()
            );
        }
    }
    if r.null_range_rows > 0 {
        let _ = writeln!(
            out,
            "note: {} source row(s) have a NULL range column and belong to no chunk (not in the target)",
            r.null_range_rows
        );
    }
    let bad = r.mismatched_chunks().len();
    let bad_groups = r.groups.iter().filter(|g| !g.ok).count();
    if r.ok {
        let _ = writeln!(
            out,
            "{}: all {} chunks reconcile: source = target + quarantined + dropped + duplicates{}",
            r.job,
            r.chunks.len(),
            if r.group_by.is_empty() {
                String::new()
            } else {
                format!(", in all {} groups", r.groups.len())
            }
        );
    } else {
        let gone = r
            .chunks
            .iter()
            .filter(|c| c.source_forgotten.is_some())
            .count();
        let mismatched = bad - gone;
        let mut parts = Vec::new();
        if mismatched > 0 || bad_groups > 0 {
            parts.push(format!(
                "MISMATCH in {mismatched} of {} chunks{}",
                r.chunks.len(),
                if bad_groups > 0 {
                    format!(" and {bad_groups} groups")
                } else {
                    String::new()
                }
            ));
        }
        if gone > 0 {
            parts.push(format!(
                "{gone} of {} chunks cannot be checked: the source no longer holds their offsets",
                r.chunks.len()
            ));
        }
        let _ = writeln!(out, "{}: {}", r.job, parts.join("; "));
    }
    out
}
