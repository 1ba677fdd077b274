//! The dedup index on disk, one section per chunk.
//!
//! A chunk only asks the index about its own rows' keys, so the chunks do
//! not need the whole index in memory: after [`DedupIndex::build`], the
//! index is written beside the state with, for each chunk, the keys that
//! have a version in it (with the chunk holding each key's winner and the
//! chunk's own best ordering values), and a table of where each section
//! starts. A chunk reads its section when it starts and drops it when it
//! ends. Memory then follows the repeated keys of one chunk, not of the
//! whole range: at 50M demo rows, holding all 491k keys kept the run's
//! peak 72 MiB higher (311 against 239 MiB), and a weekly chunk's section
//! is about 0.5 MB on disk.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "BFDXv7\n\0" | fingerprint (u32 length, bytes) | keys u64 | versions u64 | chunks u64
//! section of chunk 0 | section of chunk 1 | ...
//! table: per chunk, offset u64, length u64, keys u64, digest u64
//! table offset u64 | "BFDXend\0"
//! ```
//!
//! A section is a run of records: key (u32 length, bytes), winner's chunk
//! u32 (its high bit set when several versions tie for this chunk's best),
//! best ordering values in this chunk (u32 length, bytes). The file
//! is written to a temporary name and renamed, so a crash leaves the old
//! index or none; anything that does not parse is rebuilt.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::error::DataFusionError;

use arrow::array::RecordBatch;
use backfill_core::spec::DedupSpec;

use super::hash::key_hash;
use super::index::{ChunkKey, DedupIndex, IndexRows, TIED};

const MAGIC: &[u8; 8] = b"BFDXv7\n\0";
const END: &[u8; 8] = b"BFDXend\0";
/// Bytes of one table row.
const ROW: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Section {
    at: u64,
    len: u64,
    keys: u64,
    /// [`DedupIndex::section_digests`] of this chunk.
    digest: u64,
}

/// The dedup index as the chunks use it.
#[derive(Debug)]
pub enum ChunkIndexes {
    /// A one-chunk job: the chunk resolves repeated keys itself
    /// ([`DedupIndex::within_one_chunk`]).
    Within(Arc<DedupIndex>),
    /// The whole index in memory, when it could not be saved, with each
    /// chunk's section digest.
    Memory(Arc<DedupIndex>, Vec<u64>),
    /// The saved index, read a chunk's section at a time.
    Saved(SavedIndex),
}

/// The whole index in memory with its sections' digests.
pub fn in_memory(index: DedupIndex, chunks: usize) -> ChunkIndexes {
    let digests = index.section_digests(chunks);
    ChunkIndexes::Memory(Arc::new(index), digests)
}

impl ChunkIndexes {
    /// What chunk `chunk` needs of the index.
    pub fn for_chunk(&self, chunk: usize) -> Result<Arc<DedupIndex>, DataFusionError> {
        match self {
            ChunkIndexes::Within(i) | ChunkIndexes::Memory(i, _) => Ok(i.clone()),
            ChunkIndexes::Saved(s) => s.chunk(chunk).map(Arc::new),
        }
    }

    /// The digest of chunk `chunk`'s section, as 16 hex digits; `None` for
    /// a one-chunk job, whose chunk sees every version itself.
    pub fn digest(&self, chunk: usize) -> Option<String> {
        let d = match self {
            ChunkIndexes::Within(_) => return None,
            ChunkIndexes::Memory(_, d) => d.get(chunk).copied(),
            ChunkIndexes::Saved(s) => s.sections.get(chunk).map(|s| s.digest),
        };
        d.map(|d| format!("{d:016x}"))
    }
}

/// An open saved index.
#[derive(Debug)]
pub struct SavedIndex {
    path: PathBuf,
    /// Kept open, so that a later run replacing the file (under the job
    /// lock, after this run) cannot change what this run reads.
    file: Mutex<File>,
    sections: Vec<Section>,
    pub keys: u64,
    pub versions: u64,
}

fn put_bytes(w: &mut impl Write, b: &[u8]) -> std::io::Result<u64> {
    let len = u32::try_from(b.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a dedup key or ordering value over 4 GiB",
        )
    })?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(b)?;
    Ok(4 + b.len() as u64)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Writes `index`, built over `chunks` chunks, to `path` in sections, and
/// opens what it wrote.
///
/// Processes sharing a PostgreSQL state may build the same index at once:
/// each writes its own temporary file and opens it before renaming it into
/// place, so each reads its own complete file whichever rename lands last
/// (the contents are the same).
pub fn save(
    index: &DedupIndex,
    path: &Path,
    fingerprint: &str,
    chunks: usize,
) -> std::io::Result<SavedIndex> {
    let tmp = temporary(path)?;
    let written = (|| {
        let mut w = BufWriter::new(private_file(&tmp)?);
        let at = write_head(
            &mut w,
            fingerprint,
            [index.len() as u64, index.versions, chunks as u64],
        )?;
        let sections = write_sections(index, &mut w, chunks, at)?;
        write_table(w, &sections)
    })();
    publish(written, tmp, path, fingerprint, chunks)
}

/// `path`'s temporary name, its folder created.
fn temporary(path: &Path) -> std::io::Result<PathBuf> {
    if let Some(dir) = path.parent() {
        backfill_core::state::create_private_dir(dir)?;
    }
    Ok(path.with_extension(format!("tmp-{}", std::process::id())))
}

/// A new file only its owner reads: the index holds raw key values, often
/// personal data.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// The head: magic, fingerprint, and keys, versions and chunks. Returns
/// its length.
fn write_head(w: &mut impl Write, fingerprint: &str, counts: [u64; 3]) -> std::io::Result<u64> {
    w.write_all(MAGIC)?;
    let mut at = MAGIC.len() as u64 + put_bytes(w, fingerprint.as_bytes())?;
    for n in counts {
        w.write_all(&n.to_le_bytes())?;
        at += 8;
    }
    Ok(at)
}

/// Writes `index`'s section of each of `chunks` chunks, the first at
/// offset `at`.
fn write_sections(
    index: &DedupIndex,
    w: &mut impl Write,
    chunks: usize,
    mut at: u64,
) -> std::io::Result<Vec<Section>> {
    // Every (chunk, key) pair, grouped by chunk: 8 bytes a pair, where
    // copying the keys into per-chunk lists would double the index.
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for (i, _, v) in index.multi_version() {
        pairs.extend(v.chunks().map(|c| (c, i)));
    }
    pairs.sort_unstable();
    if let Some(&(c, _)) = pairs.last()
        && c as usize >= chunks
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("dedup index names chunk {c} of {chunks}"),
        ));
    }
    let digests = index.section_digests(chunks);
    let mut sections = Vec::with_capacity(chunks);
    let mut rest = pairs.as_slice();
    for c in 0..chunks {
        let n = rest.partition_point(|&(pc, _)| pc as usize == c);
        let (here, after) = rest.split_at(n);
        rest = after;
        let mut section = Section {
            at,
            len: 0,
            keys: here.len() as u64,
            digest: digests.get(c).copied().unwrap_or_default(),
        };
        for &(chunk, i) in here {
            let Some((_, key, v)) = index.view(i) else {
                continue;
            };
            let best = v.best_in(chunk).unwrap_or_default();
            let tied = if v.tied_in(chunk) { TIED } else { 0 };
            at += put_bytes(w, key)?;
            w.write_all(&(v.chunk | tied).to_le_bytes())?;
            at += 4 + put_bytes(w, best)?;
        }
        section.len = at - section.at;
        sections.push(section);
    }
    Ok(sections)
}

/// Ends the file: the table of sections, its offset and the end mark;
/// then makes it durable.
fn write_table(mut w: BufWriter<File>, sections: &[Section]) -> std::io::Result<()> {
    for s in sections {
        for n in [s.at, s.len, s.keys, s.digest] {
            w.write_all(&n.to_le_bytes())?;
        }
    }
    let end = sections.last().map_or(0, |s| s.at + s.len);
    w.write_all(&end.to_le_bytes())?;
    w.write_all(END)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Opens the index just written to `tmp` and renames it to `path`.
fn publish(
    written: std::io::Result<()>,
    tmp: PathBuf,
    path: &Path,
    fingerprint: &str,
    chunks: usize,
) -> std::io::Result<SavedIndex> {
    let opened = written.and_then(|()| {
        SavedIndex::open(&tmp, fingerprint, chunks).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the index written does not read back",
            )
        })
    });
    let mut saved = match opened {
        Ok(saved) => saved,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    saved.path = path.to_path_buf();
    Ok(saved)
}

/// Bytes the index holds per version of a key beyond the key's and the
/// ordering values' own bytes (its entry, hash slot, filter bits and, for
/// a key in several chunks, the chunk's best): an upper bound, so that a
/// part built in memory stays within its budget.
const INDEX_BYTES_PER_VERSION: u64 = 96;

/// Parts an index build needs within a budget, the most it uses: each
/// part keeps a spill file open while the rows are read.
const MAX_PARTS: usize = 128;

/// Builds the index from the index pass's rows and writes it to `path`
/// ([`save`]), within about `budget` bytes: when `versions` versions (the
/// rows with a repeated key hash) would not fit, the rows are spilled to
/// part files by key hash in `spill`, and each part is built in memory in
/// turn, written in sections, and merged section by section into the
/// file. Falls back to the whole index in memory only when it fits and the
/// file cannot be written.
#[allow(clippy::too_many_arguments)]
pub async fn build(
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    dedup: &DedupSpec,
    path: &Path,
    fingerprint: &str,
    chunks: usize,
    versions: u64,
    budget: usize,
    spill: &Path,
) -> Result<ChunkIndexes, DataFusionError> {
    use futures::StreamExt;
    let mut rows = IndexRows::new(dedup);
    let mut first = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            first = Some(batch);
            break;
        }
    }
    // The first batch's row sizes stand for the rest.
    let mut sample = (0u64, 0u64);
    if let Some(batch) = &first {
        rows.each(batch, |key, _, order| {
            sample.0 += 1;
            sample.1 += (key.len() + order.len()) as u64;
            Ok(())
        })?;
    }
    let per_version = sample.1 / sample.0.max(1) + INDEX_BYTES_PER_VERSION;
    let needed = versions.saturating_mul(per_version);
    let parts = needed
        .div_ceil(budget.max(1) as u64)
        .clamp(1, MAX_PARTS as u64)
        .next_power_of_two() as usize;
    if parts == 1 {
        let rest = futures::stream::iter(first.map(Ok)).chain(stream);
        let index = DedupIndex::build(rest, dedup).await?;
        tracing::info!(
            "dedup index: {} keys have {} versions across the range",
            index.len(),
            index.versions
        );
        return match save(&index, path, fingerprint, chunks) {
            Ok(saved) => Ok(ChunkIndexes::Saved(saved)),
            Err(e) => {
                tracing::warn!(
                    "could not save the dedup index to {}: {e}; keeping it all in memory",
                    path.display()
                );
                Ok(in_memory(index, chunks))
            }
        };
    }
    tracing::info!(
        "dedup index: {versions} versions of repeated keys need about {} MiB, over the \
         index's {} MiB share of memory_limit: building it in {parts} parts",
        needed >> 20,
        budget >> 20
    );
    let dir = tempfile::Builder::new()
        .prefix(".dedup-parts-")
        .tempdir_in(spill)?;
    let io = |e: std::io::Error| DataFusionError::External(Box::new(e));
    let buffer = (budget / parts / 2).clamp(4 << 10, 64 << 10);
    let mut writers = Vec::with_capacity(parts);
    for p in 0..parts {
        writers.push(BufWriter::with_capacity(
            buffer,
            private_file(&dir.path().join(format!("rows-{p}"))).map_err(io)?,
        ));
    }
    let mut spill_rows = |batch: &RecordBatch| {
        rows.each(batch, |key, chunk, order| {
            let w = &mut writers[part_of(key_hash(key), parts)];
            w.write_all(&chunk.to_le_bytes()).map_err(io)?;
            put_bytes(w, key).map_err(io)?;
            put_bytes(w, order).map_err(io)?;
            Ok(())
        })
    };
    if let Some(batch) = &first {
        spill_rows(batch)?;
    }
    while let Some(batch) = stream.next().await {
        spill_rows(&batch?)?;
    }
    for w in writers {
        w.into_inner().map_err(|e| io(e.into_error()))?;
    }
    let (path, fingerprint) = (path.to_path_buf(), fingerprint.to_string());
    tokio::task::spawn_blocking(move || -> Result<ChunkIndexes, DataFusionError> {
        let saved = build_parts(dir.path(), parts, &path, &fingerprint, chunks)?;
        tracing::info!(
            "dedup index: {} keys have {} versions across the range",
            saved.keys,
            saved.versions
        );
        Ok(ChunkIndexes::Saved(saved))
    })
    .await
    .map_err(|e| DataFusionError::External(Box::new(e)))?
}

/// A key hash's part among `parts` (a power of two): bits that neither the
/// hash tables (low bits, top 7) nor the repeated keys' buckets (top 8)
/// use, so each part's keys still spread over its table.
fn part_of(hash: u64, parts: usize) -> usize {
    ((hash >> 40) as usize) & (parts - 1)
}

/// A part written in sections, its table after them.
struct Part {
    file: File,
    body: BufReader<File>,
    table_at: u64,
    /// Table rows read ahead, and where the next row is.
    rows: Vec<u8>,
    next: usize,
    read: u64,
}

/// Bytes of a part's table row: section length, keys, digest.
const PART_ROW: usize = 24;

impl Part {
    /// The next section's length, keys and digest.
    fn next_row(&mut self, chunks: usize) -> std::io::Result<[u64; 3]> {
        use std::os::unix::fs::FileExt;
        if self.next == self.rows.len() {
            let left = (chunks as u64 - self.read) as usize;
            self.rows.resize(left.min(4096) * PART_ROW, 0);
            self.file
                .read_exact_at(&mut self.rows, self.table_at + self.read * PART_ROW as u64)?;
            self.next = 0;
        }
        let at = self.next;
        self.next += PART_ROW;
        self.read += 1;
        let n = |i: usize| u64_at(&self.rows, at + 8 * i).unwrap_or_default();
        Ok([n(0), n(1), n(2)])
    }
}

/// Builds each part's index from its spilled rows and writes it in
/// sections; then merges the parts into the index file, chunk by chunk.
fn build_parts(
    dir: &Path,
    parts: usize,
    path: &Path,
    fingerprint: &str,
    chunks: usize,
) -> Result<SavedIndex, DataFusionError> {
    let io = |e: std::io::Error| DataFusionError::External(Box::new(e));
    let (mut keys, mut versions) = (0u64, 0u64);
    let mut built = Vec::with_capacity(parts);
    for p in 0..parts {
        let rows_path = dir.join(format!("rows-{p}"));
        let bytes = std::fs::read(&rows_path).map_err(io)?;
        let _ = std::fs::remove_file(&rows_path);
        let cut = || DataFusionError::Internal(format!("spilled index rows of part {p} are cut"));
        let mut at = 0usize;
        let take = |at: &mut usize| -> Option<&[u8]> {
            let n = u32_at(&bytes, *at)? as usize;
            let b = bytes.get(*at + 4..(*at + 4).checked_add(n)?)?;
            *at += 4 + n;
            Some(b)
        };
        let rows = std::iter::from_fn(|| {
            (at < bytes.len()).then(|| {
                let chunk = u32_at(&bytes, at).ok_or_else(cut)?;
                at += 4;
                let key = take(&mut at).ok_or_else(cut)?;
                let order = take(&mut at).ok_or_else(cut)?;
                Ok((key, chunk, order))
            })
        });
        let index = DedupIndex::from_versions(rows)?;
        drop(bytes);
        keys += index.len() as u64;
        versions += index.versions;
        let part_path = dir.join(format!("part-{p}"));
        let mut w = BufWriter::new(private_file(&part_path).map_err(io)?);
        let sections = write_sections(&index, &mut w, chunks, 0).map_err(io)?;
        drop(index);
        for s in &sections {
            for n in [s.len, s.keys, s.digest] {
                w.write_all(&n.to_le_bytes()).map_err(io)?;
            }
        }
        w.flush().map_err(io)?;
        let table_at = sections.last().map_or(0, |s| s.at + s.len);
        let file = File::open(&part_path).map_err(io)?;
        built.push(Part {
            body: BufReader::new(file.try_clone().map_err(io)?),
            file,
            table_at,
            rows: Vec::new(),
            next: 0,
            read: 0,
        });
    }
    let tmp = temporary(path).map_err(io)?;
    let written = (|| {
        let mut w = BufWriter::new(private_file(&tmp)?);
        let mut at = write_head(&mut w, fingerprint, [keys, versions, chunks as u64])?;
        let mut sections = Vec::with_capacity(chunks);
        for _ in 0..chunks {
            let mut section = Section {
                at,
                len: 0,
                keys: 0,
                digest: 0,
            };
            for part in &mut built {
                let [len, keys, digest] = part.next_row(chunks)?;
                let copied = std::io::copy(&mut (&mut part.body).take(len), &mut w)?;
                if copied != len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a part of the dedup index is cut",
                    ));
                }
                section.len += len;
                section.keys += keys;
                // Section digests are sums over their records.
                section.digest = section.digest.wrapping_add(digest);
            }
            at += section.len;
            sections.push(section);
        }
        write_table(w, &sections)
    })();
    publish(written, tmp, path, fingerprint, chunks).map_err(io)
}

impl SavedIndex {
    /// The saved index if it was built for `fingerprint` over `chunks`
    /// chunks; anything else (missing, stale, truncated, another format)
    /// means "rebuild".
    pub fn open(path: &Path, fingerprint: &str, chunks: usize) -> Option<SavedIndex> {
        let mut file = File::open(path).ok()?;
        let size = file.metadata().ok()?.len();
        let mut head = vec![0u8; (12 + fingerprint.len() + 24).min(size as usize)];
        file.read_exact(&mut head).ok()?;
        if head.get(..8)? != MAGIC
            || u32_at(&head, 8)? as usize != fingerprint.len()
            || head.get(12..12 + fingerprint.len())? != fingerprint.as_bytes()
        {
            return None;
        }
        let counts = 12 + fingerprint.len();
        let keys = u64_at(&head, counts)?;
        let versions = u64_at(&head, counts + 8)?;
        if u64_at(&head, counts + 16)? != chunks as u64 {
            return None;
        }
        let body = head.len() as u64;
        let table_len = (chunks as u64).checked_mul(ROW)?;
        let table_at = size.checked_sub(table_len + 16)?;
        if table_at < body {
            return None;
        }
        let mut table = vec![0u8; (table_len + 16) as usize];
        file.seek(SeekFrom::Start(table_at)).ok()?;
        file.read_exact(&mut table).ok()?;
        let tail = table_len as usize;
        if u64_at(&table, tail)? != table_at || table.get(tail + 8..)? != END {
            return None;
        }
        let mut sections = Vec::with_capacity(chunks);
        let mut next = body;
        for c in 0..chunks {
            let s = Section {
                at: u64_at(&table, c * ROW as usize)?,
                len: u64_at(&table, c * ROW as usize + 8)?,
                keys: u64_at(&table, c * ROW as usize + 16)?,
                digest: u64_at(&table, c * ROW as usize + 24)?,
            };
            // Sections follow each other, in chunk order, up to the table.
            if s.at != next {
                return None;
            }
            next = s.at.checked_add(s.len)?;
            sections.push(s);
        }
        if next != table_at {
            return None;
        }
        Some(SavedIndex {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            sections,
            keys,
            versions,
        })
    }

    fn damaged(&self, chunk: usize, what: &str) -> DataFusionError {
        DataFusionError::Execution(format!(
            "the dedup index {} is damaged ({what} in chunk {chunk}'s section); \
             delete it and run again to rebuild it",
            self.path.display()
        ))
    }

    /// Chunk `chunk`'s view of the index.
    pub fn chunk(&self, chunk: usize) -> Result<DedupIndex, DataFusionError> {
        let Some(section) = self.sections.get(chunk).copied() else {
            return Err(self.damaged(chunk, "no section"));
        };
        if section.keys == 0 {
            return Ok(DedupIndex::default());
        }
        let len = usize::try_from(section.len).map_err(|_| self.damaged(chunk, "a length"))?;
        let mut buf = vec![0u8; len];
        {
            let mut file = self
                .file
                .lock()
                .map_err(|_| DataFusionError::Internal("dedup index file lock poisoned".into()))?;
            file.seek(SeekFrom::Start(section.at))?;
            file.read_exact(&mut buf)?;
        }
        let mut records = Vec::with_capacity(section.keys.min(1 << 20) as usize);
        let mut at = 0usize;
        let bytes = |at: &mut usize| -> Option<&[u8]> {
            let n = u32_at(&buf, *at)? as usize;
            let b = buf.get(*at + 4..(*at + 4).checked_add(n)?)?;
            *at += 4 + n;
            Some(b)
        };
        while at < buf.len() {
            let record = (|| {
                let key = bytes(&mut at)?;
                let winner = u32_at(&buf, at)?;
                at += 4;
                let best = bytes(&mut at)?;
                Some(ChunkKey {
                    key,
                    winner: winner & !TIED,
                    best,
                    tied: winner & TIED != 0,
                })
            })();
            records.push(record.ok_or_else(|| self.damaged(chunk, "a cut record"))?);
        }
        if records.len() as u64 != section.keys {
            return Err(self.damaged(chunk, "a wrong key count"));
        }
        DedupIndex::for_one_chunk(chunk as u32, records.into_iter())
    }
}

#[cfg(test)]
mod tests;
