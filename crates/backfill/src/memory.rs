//! How `[run] memory_limit` is shared out among the parts of a run that
//! grow with the data: DataFusion's sorts and aggregations, the dedup
//! index's repeated keys and its build, the rows a one-chunk dedup holds
//! back, and the chunk writers' open files. Each part spills to disk,
//! builds in parts, narrows to a filter or closes files when it reaches
//! its share. What does not
//! grow with the data (the binary, a source row group being decoded, the
//! batches in flight between stages) comes on top.

/// The limit of a run and where it came from (for `run`'s log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub from: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    JobFile,
    Environment,
    Machine,
}

/// What one chunk writer (target, quarantine) may keep: bytes of open row
/// groups over all its files, and files open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterMemory {
    pub bytes: usize,
    pub max_open: usize,
}

impl WriterMemory {
    /// No limit beyond the writer's own row group cap (tests, tools).
    pub const UNBOUNDED: WriterMemory = WriterMemory {
        bytes: usize::MAX,
        max_open: usize::MAX,
    };
}

/// The default when neither the job nor `BACKFILL_MEMORY_LIMIT_MB` sets one:
/// a quarter of the machine's memory (or of the cgroup's limit, in a
/// container), between 256 MiB and 8 GiB.
const DEFAULT_SHARE: u64 = 4;
const DEFAULT_FLOOR: u64 = 256 << 20;
const DEFAULT_CEILING: u64 = 8 << 30;
/// When the machine's memory cannot be read.
const DEFAULT_UNKNOWN: u64 = 1 << 30;

/// A row group smaller than this is not worth writing: more files are
/// closed and reopened in rounds rather than row groups made smaller.
const MIN_GROUP_BYTES: usize = 256 << 10;
/// Files one writer keeps open at most, whatever the memory.
const MAX_OPEN_FILES: usize = 512;

impl Memory {
    /// The job's `memory_limit`, else `BACKFILL_MEMORY_LIMIT_MB`, else a
    /// share of the machine.
    pub fn resolve(job: Option<u64>) -> Memory {
        if let Some(total) = job {
            return Memory {
                total,
                from: Origin::JobFile,
            };
        }
        let env = std::env::var("BACKFILL_MEMORY_LIMIT_MB")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .and_then(|mb| mb.checked_mul(1 << 20));
        if let Some(total) = env {
            return Memory {
                total: total.max(backfill_core::spec::MIN_MEMORY_LIMIT),
                from: Origin::Environment,
            };
        }
        let total = machine_memory().map_or(DEFAULT_UNKNOWN, |m| {
            (m / DEFAULT_SHARE).clamp(DEFAULT_FLOOR, DEFAULT_CEILING)
        });
        Memory {
            total,
            from: Origin::Machine,
        }
    }

    fn total(&self) -> usize {
        usize::try_from(self.total).unwrap_or(usize::MAX)
    }

    /// DataFusion's memory pool: half, shared by every query of the run.
    pub fn engine(&self) -> usize {
        self.total() / 2
    }

    /// The repeated keys' hashes, which a one-chunk job keeps for the whole
    /// run: an eighth.
    pub fn repeated_keys(&self) -> usize {
        self.total() / 8
    }

    /// Building the dedup index, before any chunk runs: a quarter (beside
    /// the engine's half reading the rows and the repeated keys' eighth).
    pub fn index_build(&self) -> usize {
        self.total() / 4
    }

    /// The rows one chunk may hold back for dedup: an eighth, shared by
    /// the chunks in flight.
    pub fn hold_back(&self, in_flight: usize) -> usize {
        self.total() / 8 / in_flight.max(1)
    }

    /// One chunk writer's share: an eighth for each of the target and the
    /// quarantine writers, shared by the chunks in flight; its open files
    /// are also held to a part of the process's file descriptor limit.
    pub fn writer(&self, in_flight: usize) -> WriterMemory {
        let in_flight = in_flight.max(1);
        let bytes = self.total() / 8 / in_flight;
        // Each chunk may have a target and a quarantine writer; keep half
        // the descriptors for sources, spills and the state.
        let fds = open_file_limit().map_or(MAX_OPEN_FILES, |n| n / 4 / in_flight);
        WriterMemory {
            bytes,
            max_open: (bytes / MIN_GROUP_BYTES).min(fds).clamp(2, MAX_OPEN_FILES),
        }
    }

    pub fn describe(&self) -> String {
        let from = match self.from {
            Origin::JobFile => "[run] memory_limit",
            Origin::Environment => "BACKFILL_MEMORY_LIMIT_MB",
            Origin::Machine => "a quarter of this machine's memory",
        };
        format!("{} MiB ({from})", self.total >> 20)
    }
}

/// The memory this process may use: the cgroup's limit when there is one
/// (containers), else the machine's.
fn machine_memory() -> Option<u64> {
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|v| v.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// The soft limit on open file descriptors.
fn open_file_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (r == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit() {
        let m = Memory {
            total: 64 << 20,
            from: Origin::JobFile,
        };
        for in_flight in [1, 2, 3, 8] {
            let per_chunk = m.hold_back(in_flight) + 2 * m.writer(in_flight).bytes;
            assert!(m.engine() + m.repeated_keys() + per_chunk * in_flight <= 64 << 20);
        }
        // The index is built before any chunk runs.
        assert!(m.engine() + m.repeated_keys() + m.index_build() <= 64 << 20);
        assert_eq!(m.writer(1).bytes, 8 << 20);
        assert!(m.writer(1).max_open <= 32, "{:?}", m.writer(1));
        assert!(m.writer(64).max_open >= 2);
    }

    #[test]
    fn the_default_is_bounded() {
        let m = Memory::resolve(None);
        if m.from == Origin::Machine {
            assert!(
                (DEFAULT_FLOOR..=DEFAULT_CEILING).contains(&m.total),
                "{m:?}"
            );
        }
        assert_eq!(Memory::resolve(Some(5 << 20)).total, 5 << 20);
    }
}
