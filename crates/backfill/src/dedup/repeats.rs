//! The keys met more than once over a job range, found exactly and in
//! bounded memory.
//!
//! Each scan partition hashes its rows' keys into [`KeyHashes`], which
//! buckets the 64-bit hashes by their top bits and, whenever its budget is
//! full, appends every bucket to the partition's spill file, noting where
//! each bucket's run went. [`RepeatedKeys::find`] then takes one bucket at a
//! time from every partition, sorts it and keeps the hashes that occur
//! twice. Memory is the write buffers, one bucket and 4 KiB of run
//! positions per spill, whatever the row count; the disk holds 8 bytes per
//! row until the index is built.
//!
//! A key met twice always has a repeated hash. Two different keys with the
//! same hash make both candidates, which costs the exact pass a little work
//! and never a wrong answer.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets by the hash's top `BUCKET_BITS` bits: at a billion rows a
/// bucket is still only 32 MiB to sort.
const BUCKET_BITS: u32 = 8;
const BUCKETS: usize = 1 << BUCKET_BITS;

/// Hashes a partition holds in memory before writing them out: 4 MiB.
pub const DEFAULT_BUDGET: usize = 512 * 1024;

/// Spill directories are named `.dedup-spill-<pid>-<random>`, so that a
/// later run can tell the ones whose process is gone.
const SPILL_PREFIX: &str = ".dedup-spill-";

/// A new spill directory in `dir`, after removing those a killed run left
/// there (they hold 8 bytes per source row). A directory is only removed
/// when no process has its pid: another run or `validate` of the same job
/// may be using its own right now.
pub fn spill_dir(dir: &Path) -> io::Result<tempfile::TempDir> {
    backfill_core::state::create_private_dir(dir)?;
    remove_stale_spills(dir);
    tempfile::Builder::new()
        .prefix(&format!("{SPILL_PREFIX}{}-", std::process::id()))
        .tempdir_in(dir)
}

fn remove_stale_spills(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPILL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(
                "removed {}, left by an earlier run (pid {pid}) that did not finish",
                path.display()
            ),
            Err(e) => tracing::warn!("could not remove {}: {e}", path.display()),
        }
    }
}

/// Whether a process with this pid exists (it may belong to another user).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks the pid.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn bucket_of(hash: u64) -> usize {
    (hash >> (64 - BUCKET_BITS)) as usize
}

/// The key hashes of one scan partition, bucketed, in memory up to a budget
/// and in one spill file beyond it.
#[derive(Debug)]
pub struct KeyHashes {
    dir: Arc<Path>,
    partition: usize,
    buckets: Vec<Vec<u64>>,
    buffered: usize,
    budget: usize,
    rows: u64,
    spill: Option<Spill>,
}

/// A partition's spill file. Each spill appends every bucket's hashes in
/// bucket order. One file per partition rather than one per bucket: a file
/// per bucket meant 256 opens (and creates) per spill, which at 10M rows
/// took a tenth of the dedup pass's CPU time in the kernel.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    writer: BufWriter<File>,
    /// Bytes written so far.
    end: u64,
    /// Per bucket, the runs of its hashes in the file: (offset, hashes).
    runs: Vec<Vec<(u64, u32)>>,
}

impl KeyHashes {
    /// The spill file goes to `dir` (which must exist), named after
    /// `partition`, so partitions sharing a directory never share a file.
    pub fn new(dir: Arc<Path>, partition: usize, budget: usize) -> KeyHashes {
        KeyHashes {
            dir,
            partition,
            buckets: vec![Vec::new(); BUCKETS],
            buffered: 0,
            budget: budget.max(1),
            rows: 0,
            spill: None,
        }
    }

    pub fn push(&mut self, hash: u64) -> io::Result<()> {
        self.buckets[bucket_of(hash)].push(hash);
        self.buffered += 1;
        self.rows += 1;
        if self.buffered >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        let spill = match &mut self.spill {
            Some(s) => s,
            None => {
                let path = self.dir.join(format!("p{}", self.partition));
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                self.spill.insert(Spill {
                    path,
                    writer: BufWriter::with_capacity(256 * 1024, file),
                    end: 0,
                    runs: vec![Vec::new(); BUCKETS],
                })
            }
        };
        for (bucket, runs) in self.buckets.iter_mut().zip(spill.runs.iter_mut()) {
            if bucket.is_empty() {
                continue;
            }
            let n = bucket.len();
            for h in bucket.drain(..) {
                spill.writer.write_all(&h.to_le_bytes())?;
            }
            let n32 = u32::try_from(n).map_err(io::Error::other)?;
            runs.push((spill.end, n32));
            spill.end += 8 * n as u64;
        }
        // Readers open the file afresh; they must find every run in it.
        spill.writer.flush()?;
        self.buffered = 0;
        Ok(())
    }
}

/// Where one bucket's hashes are: runs in partitions' spill files (by
/// index into the spill paths) and each partition's in-memory rest.
#[derive(Default)]
struct Bucket {
    runs: Vec<(usize, u64, u32)>,
    memory: Vec<Vec<u64>>,
}

impl Bucket {
    /// `files[i]` is opened on first use from `paths[i]`.
    fn read_into(
        self,
        paths: &[PathBuf],
        files: &mut [Option<File>],
        bytes: &mut Vec<u8>,
        into: &mut Vec<u64>,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        for (i, offset, n) in self.runs {
            let file = match &mut files[i] {
                Some(f) => f,
                slot => slot.insert(File::open(&paths[i])?),
            };
            bytes.resize(8 * n as usize, 0);
            file.read_exact_at(bytes, offset)?;
            into.extend(
                bytes
                    .chunks_exact(8)
                    .filter_map(|b| b.try_into().ok().map(u64::from_le_bytes)),
            );
        }
        for m in self.memory {
            into.extend(m);
        }
        Ok(())
    }
}

/// Key hashes are already uniform; hashing them again buys nothing.
#[derive(Default)]
pub struct HashIsKey(u64);

impl Hasher for HashIsKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The hashes of the keys met more than once: the exact set while it fits
/// its memory budget, else a Bloom filter of the budget's size. A filter
/// also answers "repeated" for a few keys met once; its users only do more
/// work for those (the index pass drops them, a one-chunk job holds back
/// rows it need not), never give a wrong answer.
#[derive(Debug, Default)]
pub struct RepeatedKeys {
    set: Repeats,
    /// Distinct repeated hashes.
    keys: u64,
    /// Rows with a repeated hash.
    versions: u64,
    rows: u64,
}

#[derive(Debug)]
enum Repeats {
    Exact(HashSet<u64, BuildHasherDefault<HashIsKey>>),
    /// Words of a blocked Bloom filter ([`super::hash::bloom_probe`]).
    Filter(Vec<u64>),
}

impl Default for Repeats {
    fn default() -> Repeats {
        Repeats::Exact(HashSet::default())
    }
}

/// Bytes the exact set takes per hash, with the hash table's spare room.
const EXACT_BYTES_PER_KEY: u64 = 18;

impl RepeatedKeys {
    /// Merges the partitions' hashes bucket by bucket, on up to `threads`
    /// threads, into at most about `budget` bytes. Blocking: file reads and
    /// sorts.
    pub fn find(
        partitions: Vec<KeyHashes>,
        threads: usize,
        budget: usize,
    ) -> io::Result<RepeatedKeys> {
        let rows: u64 = partitions.iter().map(|p| p.rows).sum();
        // At most every other row is a repeat; the exact set is chosen only
        // when even that would fit, so it never outgrows the budget.
        let filter_words = if (rows / 2).saturating_mul(EXACT_BYTES_PER_KEY) <= budget as u64 {
            None
        } else {
            // The largest power of two of words within the budget.
            let words = (budget / 8).max(1);
            Some(1usize << (usize::BITS - 1 - words.leading_zeros()))
        };
        let filter: Vec<AtomicU64> = (0..filter_words.unwrap_or(0))
            .map(|_| AtomicU64::new(0))
            .collect();
        let threads = threads.clamp(1, BUCKETS);
        let mut buckets: Vec<Bucket> = (0..BUCKETS).map(|_| Bucket::default()).collect();
        let mut paths = Vec::new();
        for p in partitions {
            if let Some(spill) = p.spill {
                drop(spill.writer);
                for (bucket, runs) in buckets.iter_mut().zip(spill.runs) {
                    bucket
                        .runs
                        .extend(runs.into_iter().map(|(at, n)| (paths.len(), at, n)));
                }
                paths.push(spill.path);
            }
            for (bucket, memory) in buckets.iter_mut().zip(p.buckets) {
                bucket.memory.push(memory);
            }
        }
        let paths = &paths;
        let filter = &filter;
        let mut shares: Vec<Vec<Bucket>> = (0..threads).map(|_| Vec::new()).collect();
        for (b, bucket) in buckets.into_iter().enumerate() {
            shares[b % threads].push(bucket);
        }
        type Found = io::Result<(Vec<u64>, u64, u64)>;
        let found: Vec<Found> = std::thread::scope(|s| {
            let handles: Vec<_> = shares
                .into_iter()
                .map(|share| {
                    s.spawn(move || -> Found {
                        let mut repeated = Vec::new();
                        let (mut keys, mut versions) = (0u64, 0u64);
                        let mut all = Vec::new();
                        let mut bytes = Vec::new();
                        let mut files: Vec<Option<File>> = paths.iter().map(|_| None).collect();
                        for bucket in share {
                            all.clear();
                            bucket.read_into(paths, &mut files, &mut bytes, &mut all)?;
                            all.sort_unstable();
                            for run in all.chunk_by(|a, b| a == b) {
                                if run.len() < 2 {
                                    continue;
                                }
                                keys += 1;
                                versions += run.len() as u64;
                                if filter.is_empty() {
                                    repeated.push(run[0]);
                                } else {
                                    let (word, bits) =
                                        super::hash::bloom_probe(run[0], filter.len());
                                    filter[word].fetch_or(bits, Ordering::Relaxed);
                                }
                            }
                        }
                        Ok((repeated, keys, versions))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a key merge thread panicked")))
                })
                .collect()
        });
        let (mut keys, mut versions) = (0, 0);
        let mut hashes = HashSet::default();
        for f in found {
            let (repeated, k, v) = f?;
            hashes.extend(repeated);
            keys += k;
            versions += v;
        }
        let set = if filter_words.is_some() {
            Repeats::Filter(filter.iter().map(|w| w.load(Ordering::Relaxed)).collect())
        } else {
            Repeats::Exact(hashes)
        };
        Ok(RepeatedKeys {
            set,
            keys,
            versions,
            rows,
        })
    }

    /// Whether `hash` is a repeated key's; with a filter, also for a few
    /// that are not.
    pub fn contains(&self, hash: u64) -> bool {
        match &self.set {
            Repeats::Exact(set) => set.contains(&hash),
            Repeats::Filter(words) => {
                let (word, bits) = super::hash::bloom_probe(hash, words.len());
                words[word] & bits == bits
            }
        }
    }

    /// Whether it holds a filter rather than the exact set.
    pub fn is_filter(&self) -> bool {
        matches!(self.set, Repeats::Filter(_))
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        match &self.set {
            Repeats::Exact(set) => set.capacity() * 9,
            Repeats::Filter(words) => words.len() * 8,
        }
    }

    /// Distinct repeated hashes.
    pub fn len(&self) -> usize {
        self.keys as usize
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Rows whose hash is repeated: at least the versions of the repeated
    /// keys (before the rules), which sizes the index.
    pub fn versions(&self) -> u64 {
        self.versions
    }

    /// Rows whose keys were counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::hash::key_hash;

    fn find(
        keys_per_partition: &[Vec<u64>],
        budget: usize,
        memory: usize,
    ) -> (RepeatedKeys, usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path: Arc<Path> = dir.path().into();
        let parts: Vec<KeyHashes> = keys_per_partition
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let mut p = KeyHashes::new(path.clone(), i, budget);
                for k in keys {
                    p.push(key_hash(&k.to_le_bytes())).expect("push");
                }
                p
            })
            .collect();
        let files = std::fs::read_dir(dir.path()).expect("read dir").count();
        if budget < keys_per_partition.iter().map(Vec::len).min().unwrap_or(0) {
            for p in &parts {
                let spills = p
                    .spill
                    .as_ref()
                    .map_or(0, |s| s.runs.iter().map(Vec::len).max().unwrap_or(0));
                assert!(
                    spills > 1,
                    "partition {} spilled {spills} times",
                    p.partition
                );
            }
        }
        (RepeatedKeys::find(parts, 2, memory).expect("find"), files)
    }

    #[test]
    fn spill_dirs_of_finished_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let gone = child.id();
        child.wait().expect("wait");
        let make = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::write(p.join("bucket-0"), b"12345678").expect("write");
            p
        };
        let dead = make(&format!("{SPILL_PREFIX}{gone}-abc"));
        let live = make(&format!("{SPILL_PREFIX}{}-def", std::process::id()));
        let old_style = make(&format!("{SPILL_PREFIX}xyz"));
        let other = make("transactions");
        let fresh = spill_dir(dir.path()).expect("spill dir");
        assert!(!dead.exists(), "a finished process's spill stays");
        for kept in [&live, &old_style, &other] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        let name = fresh.path().file_name().and_then(|n| n.to_str());
        let own = format!("{SPILL_PREFIX}{}-", std::process::id());
        assert!(name.is_some_and(|n| n.starts_with(&own)), "{name:?}");
    }

    #[test]
    fn every_repeat_across_partitions_and_spills_and_no_single() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        // Keys 0..40k once each, shared between two partitions at random;
        // every 9th key a second time and every 27th a third, also at random.
        let mut parts = vec![Vec::new(), Vec::new()];
        let mut expected = std::collections::BTreeSet::new();
        for k in 0..40_000u64 {
            let copies = 1 + usize::from(k % 9 == 0) + usize::from(k % 27 == 0);
            for _ in 0..copies {
                parts[rng.random_range(0..2)].push(k);
            }
            if copies > 1 {
                expected.insert(k);
            }
        }
        for budget in [1_000, DEFAULT_BUDGET] {
            let (found, files) = find(&parts, budget, usize::MAX);
            assert!(!found.is_filter());
            if budget == 1_000 {
                assert_eq!(files, 2, "the small budget spilled, one file per partition");
            } else {
                assert_eq!(files, 0, "everything stayed in memory");
            }
            assert_eq!(
                found.rows(),
                parts.iter().map(|p| p.len() as u64).sum::<u64>()
            );
            let named: std::collections::BTreeSet<u64> = (0..40_000u64)
                .filter(|k| found.contains(key_hash(&k.to_le_bytes())))
                .collect();
            assert_eq!(named, expected, "budget {budget}");
            assert_eq!(found.len(), expected.len());
        }
    }

    #[test]
    fn over_its_budget_a_filter_names_every_repeat_and_few_others() {
        // Keys 0..200k, every 3rd twice and every 7th three times: the
        // exact set would need more than the 64 KiB it is given.
        let mut keys = Vec::new();
        let mut expected = std::collections::BTreeSet::new();
        let mut versions = 0u64;
        for k in 0..200_000u64 {
            let copies = 1 + usize::from(k % 3 == 0) + 2 * usize::from(k % 7 == 0);
            keys.extend(std::iter::repeat_n(k, copies));
            if copies > 1 {
                expected.insert(k);
                versions += copies as u64;
            }
        }
        let (a, b) = keys.split_at(keys.len() / 2);
        let (found, _) = find(&[a.to_vec(), b.to_vec()], 50_000, 64 << 10);
        assert!(found.is_filter());
        assert!(found.bytes() <= 64 << 10, "{} bytes", found.bytes());
        assert_eq!(found.len(), expected.len());
        assert_eq!(found.versions(), versions);
        let named: std::collections::BTreeSet<u64> = (0..200_000u64)
            .filter(|k| found.contains(key_hash(&k.to_le_bytes())))
            .collect();
        assert!(named.is_superset(&expected), "a repeated key was missed");
        let others = named.len() - expected.len();
        // 64 KiB of filter for 86k keys is 6 bits a key: some keys met
        // once pass, never a repeated one is missed.
        assert!(others < 114_000 / 5, "{others} of 114k keys met once pass");
    }
}
