//! File names: a chunk's, an attempt's, a job's, and when it was written.

use super::*;

/// `part-<chunk>-a<attempt>-t<stamp>-j<job>-<n>.parquet`. The stamp (when
/// the attempt began, in microseconds since the epoch) keeps names unique
/// when attempt numbers start again at 1 after a state is lost, so a new
/// file never takes the name of one a reader or a Delta log still
/// references. The job tag ([`job_tag`]) lets a job recognise its own files
/// of an earlier plan after its state was lost, when their chunk ids are
/// no longer any chunk's.
pub(super) fn file_name(chunk_id: &str, attempt: u32, stamp: u64, job: &str, n: usize) -> String {
    format!("part-{chunk_id}-a{attempt}-t{stamp}-j{job}-{n:04}.parquet")
}

/// A short tag of a job's name in its file names (32 bits of its hash).
pub fn job_tag(job: &str) -> String {
    format!("{:08x}", XxHash3_64::oneshot(job.as_bytes()) as u32)
}

/// The job tag in a file name of ours, if it has one (files written
/// before names carried it do not).
pub fn tag_of(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    rest.split('-').find_map(|part| part.strip_prefix('j'))
}

/// The stamp of a file name of ours, if it has one (files written before
/// names carried it do not).
pub fn stamp_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    let rest = name.strip_prefix("part-")?;
    rest.split('-')
        .find_map(|part| part.strip_prefix('t'))
        .and_then(|t| t.parse().ok())
}

/// Microseconds since the epoch: a new attempt's stamp.
pub(super) fn stamp_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The chunk id in a published file name, if it is one of ours.
pub(super) fn chunk_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("part-")?;
    let (id, tail) = rest.split_once('-')?;
    let ours =
        backfill_core::plan::is_chunk_id(id) && tail.starts_with('a') && name.ends_with(".parquet");
    ours.then_some(id)
}

pub(super) fn staged_name(published: &str) -> String {
    match published.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/.{file}{STAGED_SUFFIX}"),
        None => format!(".{published}{STAGED_SUFFIX}"),
    }
}

/// The seed for rows of a partition directory (`year=2023/month=1/`, or "").
pub fn partition_seed(dir: &str) -> u64 {
    XxHash3_64::oneshot(dir.as_bytes())
}
