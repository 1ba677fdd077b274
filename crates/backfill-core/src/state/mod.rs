//! Where a backfill remembers what it did: runs, chunks, attempts, metrics,
//! the files each chunk owns, and who holds the job.
//!
//! The commit protocol the runner follows (see `backfill::runner`):
//! 1. the sink writes a chunk's files under names readers skip;
//! 2. [`StateStore::commit_chunk`] records, in one transaction, the chunk as
//!    committed with its new files (unpublished) and moves the files of its
//!    previous commit to the garbage list: this is the commit point;
//! 3. the sink publishes the files (renames), then
//!    [`StateStore::mark_published`];
//! 4. superseded files are deleted and [`StateStore::forget_garbage`].
//!
//! After a crash, unpublished files of committed chunks are published again
//! (redo) and garbage is deleted, so every step after 2 can be repeated.

#[cfg(feature = "postgres")]
pub mod postgres;
mod sqlite;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::interval::RangeValue;
use crate::plan::Chunk;
use crate::retry::ErrorClass;
pub use sqlite::SqliteStateStore;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the state directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "state store {} was written by a newer backfill (schema version {found}, this binary knows {known}); upgrade backfill",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "the range definition changed: {committed} committed chunk(s) are not in the new plan\n  was: {old}\n  now: {new}\nchunk ids depend on the range, so the committed slices no longer line up with the new plan; \
         run with --replan to retire the old chunks (their files are removed) and plan anew, or restore the old [range]"
    )]
    RangeChanged {
        old: String,
        new: String,
        committed: usize,
    },
    #[error(
        "job is being run by another process (pid {pid} on {host}, since {since}); wait for it to finish or stop it. \
         If that process is gone, remove the lock with `backfill unlock`"
    )]
    Locked {
        pid: u32,
        host: String,
        since: String,
    },
    #[error(
        "the job's lock is held by pid {pid} on this host ({host}), which is running: stop it \
         (it releases the lock as it ends) instead of unlocking"
    )]
    HolderAlive { pid: u32, host: String },
    #[error(
        "state store {store} belongs to another job: it records job \"{found_name}\" writing to {found_target}, \
         and this is job \"{name}\" writing to {target}. A state serves one job: give this job a state of its own \
         (leave out [state] path for the default .backfill/<job name>.db, or set another path or [job] name); \
         if this job replaces the other one, delete that state first"
    )]
    OtherJob {
        store: String,
        found_name: String,
        found_target: String,
        name: String,
        target: String,
    },
    #[error("unknown chunk {0}")]
    UnknownChunk(String),
    /// A database-backed store's failure, already described and classified
    /// by the store.
    #[error("state store {store}: {message}")]
    Remote {
        store: String,
        message: String,
        class: ErrorClass,
    },
    #[error(
        "chunk {chunk}: this process's lease expired and another process took the chunk over; its work here is discarded"
    )]
    LeaseLost { chunk: String },
    #[error("corrupt state record: {0}")]
    Corrupt(String),
}

impl StateError {
    /// Whether the same call may succeed later: a busy or locked database,
    /// an I/O hiccup, a lost connection. A state that disagrees with the job
    /// (another job's, a changed range, a newer schema, a corrupt record)
    /// stays as it is however often one asks.
    pub fn class(&self) -> ErrorClass {
        use rusqlite::ErrorCode;
        match self {
            StateError::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(
                    ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DiskFull
                    | ErrorCode::CannotOpen
                    | ErrorCode::OutOfMemory,
                ) => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            StateError::Io { .. } => ErrorClass::Transient,
            StateError::Remote { class, .. } => *class,
            StateError::NewerSchema { .. }
            | StateError::RangeChanged { .. }
            | StateError::Locked { .. }
            | StateError::HolderAlive { .. }
            | StateError::OtherJob { .. }
            | StateError::UnknownChunk(_)
            | StateError::LeaseLost { .. }
            | StateError::Corrupt(_) => ErrorClass::Permanent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkStatus {
    Pending,
    Running,
    Committed,
    Failed,
}

impl ChunkStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ChunkStatus::Pending => "pending",
            ChunkStatus::Running => "running",
            ChunkStatus::Committed => "committed",
            ChunkStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ChunkStatus> {
        Some(match s {
            "pending" => ChunkStatus::Pending,
            "running" => ChunkStatus::Running,
            "committed" => ChunkStatus::Committed,
            "failed" => ChunkStatus::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for ChunkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one committed chunk did. Every source row in the chunk's range is
/// accounted for: after the transform, it is written, quarantined, dropped or
/// removed as a duplicate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMetrics {
    pub rows_read: u64,
    pub rows_written: u64,
    #[serde(default)]
    pub rows_quarantined: u64,
    #[serde(default)]
    pub rows_dropped: u64,
    #[serde(default)]
    pub duplicates: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub files: u64,
    pub duration_ms: u64,
    /// Order-independent checksum of the written rows: the wrapping sum of a
    /// 64-bit hash of each row (see the sink's `checksum` module).
    #[serde(default)]
    pub checksum: u64,
    /// Which definition `checksum` follows. Commits recorded before there
    /// were versions used the first.
    #[serde(default = "first_checksum_version")]
    pub checksum_version: u32,
    /// Rejected rows per rule.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleCount>,
    /// The digest of the chunk's section of the dedup index it ran with
    /// (several chunks only): when a later index gives another, the source
    /// moved some of its keys' winners and the chunk must run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_section: Option<String>,
    /// The digest of the part of the source the chunk may read (its files'
    /// names, sizes and times), where the source can tell: when a later run
    /// sees another, a file under the chunk was added, changed or removed,
    /// and the chunk must run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,
}

pub(crate) fn first_checksum_version() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCount {
    pub quarantined: u64,
    pub dropped: u64,
}

/// Adds per-rule counts into running totals.
pub fn add_rule_counts(into: &mut BTreeMap<String, RuleCount>, from: &BTreeMap<String, RuleCount>) {
    for (rule, c) in from {
        let e = into.entry(rule.clone()).or_default();
        e.quarantined += c.quarantined;
        e.dropped += c.dropped;
    }
}

/// A file a chunk owns, relative to the target root: where it was staged and
/// where it is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnedFile {
    pub path: String,
    pub staged: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkRecord {
    pub id: String,
    pub index: usize,
    pub lo: Option<RangeValue>,
    pub hi: Option<RangeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A bucket chunk's bucket: not stored, filled in from the plan (its id
    /// already says it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<crate::plan::Bucket>,
    pub status: ChunkStatus,
    pub attempts: u32,
    pub metrics: Option<ChunkMetrics>,
    pub last_error: Option<String>,
    pub updated_at: Option<String>,
}

impl ChunkRecord {
    pub fn chunk(&self) -> Chunk {
        Chunk {
            index: self.index,
            id: self.id.clone(),
            lo: self.lo,
            hi: self.hi,
            value: self.value.clone(),
            bucket: self.bucket,
        }
    }
}

/// Which job a state belongs to: its name and what it writes to (see
/// `TargetSpec::identity`). A state refuses every other job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOwner {
    pub name: String,
    /// The target as written in the job file, for messages.
    pub target: String,
    /// A hash of the target as it is after `${VAR}` expansion, compared.
    pub target_key: String,
}

impl JobOwner {
    /// Refuses a state recording `found` unless it is this job. A state
    /// written before states recorded their target (no key) is judged by
    /// the name.
    pub fn check(&self, store: &str, found: &RecordedOwner) -> Result<(), StateError> {
        let target_differs = found
            .target_key
            .as_deref()
            .is_some_and(|k| !k.is_empty() && k != self.target_key);
        if found.name != self.name || target_differs {
            return Err(StateError::OtherJob {
                store: store.to_string(),
                found_name: found.name.clone(),
                found_target: found
                    .target
                    .clone()
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "(not recorded)".into()),
                name: self.name.clone(),
                target: self.target.clone(),
            });
        }
        Ok(())
    }
}

/// The owner a state records (each part absent in states of older versions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedOwner {
    pub name: String,
    pub target: Option<String>,
    pub target_key: Option<String>,
}

/// For a chunk recorded under a first-version id, its current id (`None`:
/// the recorded id is not this job's first-version id for those bounds, so
/// it stays, and a changed plan retires it as usual).
pub type Renames<'a> = &'a dyn Fn(&Chunk) -> Option<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    pub since: String,
    /// Random per process ([`process_token`]): pid and host name are not
    /// unique across containers (PID 1 and one host name in each).
    pub token: String,
}

/// A random token of this process, the same for its whole life: with pid
/// and host, it tells apart two processes that share both (containers).
pub fn process_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        // std's hasher keys come from the OS's randomness once per process:
        // random enough for a name, with no extra dependency (the core crate
        // builds alone for the fuzzer, without `rand`'s thread RNG).
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        format!("{:016x}", h.finish())
    })
}

/// This process's id as a holder shows it; `BACKFILL_HOLDER_PID`
/// overrides it (tests that play two containers with one PID).
pub fn holder_pid() -> u32 {
    std::env::var("BACKFILL_HOLDER_PID")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// This host's name as a holder shows it; `BACKFILL_HOLDER_HOST`
/// overrides it (tests that play two containers with one host name).
pub fn holder_host() -> String {
    std::env::var("BACKFILL_HOLDER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(hostname)
}

impl LockHolder {
    pub fn current() -> LockHolder {
        LockHolder {
            pid: holder_pid(),
            host: holder_host(),
            since: now(),
            token: process_token().to_string(),
        }
    }

    /// The same process: pid, host and token.
    pub fn is_me(&self) -> bool {
        self.pid == holder_pid() && self.host == holder_host() && self.token == process_token()
    }

    /// As a lease holder is recorded: `pid@host#token`.
    pub fn lease_name(&self) -> String {
        format!("{}@{}#{}", self.pid, self.host, self.token)
    }

    /// Reads [`LockHolder::lease_name`] (and the `pid@host` of states
    /// written before holders carried a token).
    pub fn from_lease_name(name: &str) -> Option<LockHolder> {
        let (who, token) = name.split_once('#').unwrap_or((name, ""));
        let (pid, host) = who.split_once('@')?;
        Some(LockHolder {
            pid: pid.parse().ok()?,
            host: host.to_string(),
            since: String::new(),
            token: token.to_string(),
        })
    }

    /// Whether the holder is surely gone: a process on this host that no
    /// longer exists. Holders on other hosts cannot be checked from here,
    /// nor one that shows this process's own pid and host with another
    /// token (another container, or an earlier life of this pid).
    /// Whether the holder surely runs: a live process of this host other
    /// than this one (this pid with another token may be another
    /// container, or an earlier life of this pid: that cannot be told).
    pub fn is_alive_here(&self) -> bool {
        self.host == holder_host() && self.pid != holder_pid() && process_alive(self.pid)
    }

    pub fn is_stale(&self) -> bool {
        self.host == holder_host() && self.pid != holder_pid() && !process_alive(self.pid)
    }
}

/// Whether a process of this host is running (always true where that
/// cannot be told).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // A zombie has exited; it only waits for its parent to reap it.
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    } else {
        true
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A range bound as stored: `t:<micros>` or `i:<int>`.
pub fn encode_bound(v: Option<RangeValue>) -> Option<String> {
    v.map(|v| match v {
        RangeValue::Time(t) => format!("t:{t}"),
        RangeValue::Int(i) => format!("i:{i}"),
    })
}

/// A chunk's lower bound as stored, or `=<value>` for a partition chunk.
pub fn encode_lo(c: &Chunk) -> Option<String> {
    match &c.value {
        Some(v) => Some(format!("={v}")),
        None => encode_bound(c.lo),
    }
}

/// The stored lower bound back: `(lo, partition value)`.
pub fn decode_lo(s: Option<String>) -> Result<(Option<RangeValue>, Option<String>), StateError> {
    match s {
        Some(text) if text.starts_with('=') => Ok((None, Some(text[1..].to_string()))),
        other => Ok((decode_bound(other)?, None)),
    }
}

pub fn decode_bound(s: Option<String>) -> Result<Option<RangeValue>, StateError> {
    let Some(s) = s else { return Ok(None) };
    let bad = || StateError::Corrupt(format!("range bound {s:?}"));
    let (kind, num) = s.split_once(':').ok_or_else(bad)?;
    let n: i64 = num.parse().map_err(|_| bad())?;
    match kind {
        "t" => Ok(Some(RangeValue::Time(n))),
        "i" => Ok(Some(RangeValue::Int(n))),
        _ => Err(bad()),
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What [`StateStore::sync_plan`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSync {
    pub inserted: usize,
    /// Chunks of an earlier plan that a `--replan` retired.
    pub retired: Vec<String>,
}

/// How far this job has read the target's own change log (a Delta table
/// version): changes after it are looked at for other writers' rows in
/// committed ranges.
pub const NOTE_TARGET_MARK: &str = "target_mark";
/// The count of source rows with a NULL range column, with the source
/// fingerprint it was counted at: a CSV or JSON source is scanned for it
/// once per change, not on every run.
pub const NOTE_NULL_RANGE: &str = "null_range_rows";

/// The state behind a backfill. Implementations must make each method atomic:
/// a crash in the middle leaves either the old or the new state.
pub trait StateStore: Send + Sync {
    /// Where the state lives, for messages (never with a password).
    fn describe(&self) -> String;

    /// Binds the state to one job: refuses with [`StateError::OtherJob`] a
    /// state that records another job's name or target. With `adopt` (a run),
    /// a state that records no owner yet records `owner`.
    fn check_owner(&self, owner: &JobOwner, adopt: bool) -> Result<(), StateError>;

    /// Moves a state whose chunks still carry first-version ids (48 bits,
    /// without the job's name) to the current ids, once: every chunk,
    /// file and attempt recorded under an old id that `renames` maps is
    /// recorded under the new one. Returns how many chunks were renamed.
    fn upgrade_chunk_ids(&self, renames: Renames<'_>) -> Result<usize, StateError>;

    /// Takes the job for this process; fails with [`StateError::Locked`] while a
    /// live process holds it. Returns a stale holder it replaced, if any.
    fn lock(&self, holder: &LockHolder) -> Result<Option<LockHolder>, StateError>;
    fn unlock(&self, holder: &LockHolder) -> Result<(), StateError>;
    /// Removes any lock, whoever holds it (`backfill unlock`).
    fn force_unlock(&self) -> Result<Option<LockHolder>, StateError>;
    /// Who holds the job now: the lock's holder, or the holders of live
    /// chunk leases in a shared store.
    fn holders(&self) -> Result<Vec<LockHolder>, StateError>;

    /// Makes the stored chunks match `chunks`. Refuses with
    /// [`StateError::RangeChanged`] when committed chunks are not in
    /// `chunks`, unless `replan`; then retired chunks' files become garbage.
    /// A plan that only adds chunks (a range extended past its end) is
    /// accepted as it is.
    fn sync_plan(
        &self,
        job: &str,
        fingerprint: &str,
        chunks: &[Chunk],
        replan: bool,
    ) -> Result<PlanSync, StateError>;

    fn begin_run(&self, args: &str) -> Result<i64, StateError>;
    /// A small fact the job keeps between runs under `key` (see [`NOTE_TARGET_MARK`],
    /// [`NOTE_NULL_RANGE`]); `None` before it is first set.
    fn note(&self, key: &str) -> Result<Option<String>, StateError>;
    fn set_note(&self, key: &str, value: &str) -> Result<(), StateError>;
    fn finish_run(&self, run_id: i64, status: &str) -> Result<(), StateError>;

    fn chunks(&self) -> Result<Vec<ChunkRecord>, StateError>;

    /// Marks the chunk running and returns the attempt number (1-based, over
    /// the chunk's whole life).
    fn start_attempt(&self, run_id: i64, chunk_id: &str) -> Result<u32, StateError>;

    /// Like [`StateStore::start_attempt`], but in a store shared by several
    /// processes only if no other live process holds the chunk and (unless
    /// `rerun_committed`) it is not committed: `None` when it is taken.
    fn claim(
        &self,
        run_id: i64,
        chunk_id: &str,
        rerun_committed: bool,
    ) -> Result<Option<u32>, StateError> {
        let _ = rerun_committed;
        self.start_attempt(run_id, chunk_id).map(Some)
    }

    /// Chunks other live processes hold right now (their staged files must
    /// not be cleaned up); always empty for a store only one process uses.
    fn busy_chunks(&self) -> Result<std::collections::HashSet<String>, StateError> {
        Ok(Default::default())
    }
    /// Records a failed attempt; the chunk becomes `failed` unless `will_retry`.
    fn fail_attempt(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        error: &str,
        will_retry: bool,
    ) -> Result<(), StateError>;
    /// The commit point: the chunk is committed with `files` (unpublished) and
    /// the files of its previous commit move to the garbage list; returns them.
    fn commit_chunk(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        metrics: &ChunkMetrics,
        files: &[OwnedFile],
    ) -> Result<Vec<String>, StateError>;
    /// Commits like [`StateStore::commit_chunk`] and, in the same transaction,
    /// runs `statements` that publish the chunk into a target living in the
    /// same database as this store (`url`), then marks it published:
    /// exactly-once with no separate publish step. `Ok(None)` when this store
    /// is not in that database; the caller then commits and publishes apart.
    #[allow(clippy::too_many_arguments)]
    fn commit_and_publish(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        metrics: &ChunkMetrics,
        files: &[OwnedFile],
        url: &str,
        statements: &str,
    ) -> Result<Option<Vec<String>>, StateError> {
        let _ = (run_id, chunk_id, attempt, metrics, files, url, statements);
        Ok(None)
    }
    fn mark_published(&self, chunk_id: &str) -> Result<(), StateError>;
    /// Committed chunks whose files are not all published yet.
    fn unpublished(&self) -> Result<BTreeMap<String, Vec<OwnedFile>>, StateError>;
    /// Published files of committed chunks, per chunk.
    fn committed_files(&self) -> Result<BTreeMap<String, Vec<String>>, StateError>;
    fn garbage(&self) -> Result<Vec<String>, StateError>;
    fn add_garbage(&self, paths: &[String]) -> Result<(), StateError>;
    fn forget_garbage(&self, paths: &[String]) -> Result<(), StateError>;
    /// Chunks left `running` by a process that died go back to `pending`.
    fn release_interrupted(&self) -> Result<usize, StateError>;
    /// Forgets chunks so they run again (their files stay until they do).
    fn reset(&self, chunk_ids: &[String]) -> Result<usize, StateError>;
}

/// Creates `dir` and its missing parents; a folder this call creates gets
/// mode 0700 (an existing one keeps its mode: it may be shared on purpose).
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty file with mode 0600 unless one exists.
pub fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_errors_say_whether_asking_again_can_help() {
        let sqlite = |code| StateError::Sqlite {
            path: PathBuf::from("s.db"),
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        };
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_BUSY).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_IOERR).class(),
            ErrorClass::Transient
        );
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_CORRUPT).class(),
            ErrorClass::Permanent
        );
        let remote = |class| StateError::Remote {
            store: "postgres://h/db".into(),
            message: "m".into(),
            class,
        };
        assert_eq!(remote(ErrorClass::Transient).class(), ErrorClass::Transient);
        assert_eq!(remote(ErrorClass::Permanent).class(), ErrorClass::Permanent);
        assert_eq!(
            StateError::Corrupt("x".into()).class(),
            ErrorClass::Permanent
        );
        let other = StateError::OtherJob {
            store: "s".into(),
            found_name: "a".into(),
            found_target: "t".into(),
            name: "b".into(),
            target: "t".into(),
        };
        assert_eq!(other.class(), ErrorClass::Permanent);
    }
}
