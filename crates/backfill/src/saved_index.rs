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
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::error::DataFusionError;

use crate::quality::{ChunkKey, DedupIndex, TIED};

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
    if let Some(dir) = path.parent() {
        backfill_core::state::create_private_dir(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    {
        // Raw key values, often personal data: only the owner reads them.
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = BufWriter::new(file);
        w.write_all(MAGIC)?;
        let mut at = MAGIC.len() as u64 + put_bytes(&mut w, fingerprint.as_bytes())?;
        for n in [index.len() as u64, index.versions, chunks as u64] {
            w.write_all(&n.to_le_bytes())?;
            at += 8;
        }
        let digests = index.section_digests(chunks);
        let mut sections = vec![
            Section {
                at: 0,
                len: 0,
                keys: 0,
                digest: 0,
            };
            chunks
        ];
        let mut rest = pairs.as_slice();
        for (c, section) in sections.iter_mut().enumerate() {
            let n = rest.partition_point(|&(pc, _)| pc as usize == c);
            let (here, after) = rest.split_at(n);
            rest = after;
            section.at = at;
            section.keys = here.len() as u64;
            section.digest = digests.get(c).copied().unwrap_or_default();
            for &(chunk, i) in here {
                let Some((_, key, v)) = index.view(i) else {
                    continue;
                };
                let best = v.best_in(chunk).unwrap_or_default();
                let tied = if v.tied_in(chunk) { TIED } else { 0 };
                at += put_bytes(&mut w, key)?;
                w.write_all(&(v.chunk | tied).to_le_bytes())?;
                at += 4 + put_bytes(&mut w, best)?;
            }
            section.len = at - section.at;
        }
        for s in &sections {
            for n in [s.at, s.len, s.keys, s.digest] {
                w.write_all(&n.to_le_bytes())?;
            }
        }
        w.write_all(&at.to_le_bytes())?;
        w.write_all(END)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let Some(mut saved) = SavedIndex::open(&tmp, fingerprint, chunks) else {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the index written does not read back",
        ));
    };
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    saved.path = path.to_path_buf();
    Ok(saved)
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
mod tests {
    use super::*;
    use crate::quality::{best_in_chunk, random_index};

    #[test]
    fn each_chunks_section_answers_as_the_whole_index_does() {
        let (built, all) = random_index(11);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("index");
        let written = save(&built, &file, "fp", 4).expect("save");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["index"], "no temporary file stays");
        assert!(
            SavedIndex::open(&file, "other", 4).is_none(),
            "stale fingerprint"
        );
        assert!(SavedIndex::open(&file, "fp", 5).is_none(), "another plan");
        let saved = SavedIndex::open(&file, "fp", 4).expect("open");
        assert_eq!(saved.sections, written.sections);
        let digests: Vec<u64> = saved.sections.iter().map(|s| s.digest).collect();
        assert_eq!(digests, built.section_digests(4), "digests as in memory");
        assert!(
            digests.iter().all(|&d| d != 0),
            "every chunk holds some key"
        );
        assert_eq!(saved.keys, built.len() as u64);
        assert_eq!(saved.versions, built.versions);
        let mut pairs = 0;
        for chunk in 0..4u32 {
            let view = saved.chunk(chunk as usize).expect("section");
            let own = written.chunk(chunk as usize).expect("section");
            assert_eq!(view.len(), own.len(), "chunk {chunk}");
            for (key, versions) in &all {
                let best = best_in_chunk(versions, chunk);
                let got = view.get(key);
                if versions.len() < 2 || best.is_none() {
                    assert!(got.is_none(), "{key:?} in chunk {chunk}: {versions:?}");
                    continue;
                }
                pairs += 1;
                let Some(v) = got else {
                    panic!("{key:?} missing from chunk {chunk}: {versions:?}");
                };
                let whole = built.get(key).expect("in the whole index");
                assert_eq!(v.chunk, whole.chunk, "winner's chunk of {versions:?}");
                assert_eq!(v.best_in(chunk), best, "chunk {chunk} of {versions:?}");
                if whole.chunk == chunk {
                    assert_eq!(v.order, whole.order, "winner of {versions:?}");
                }
            }
        }
        assert!(pairs > built.len(), "some keys span chunks: {pairs}");

        // A cut file, or a section whose record runs past its end, is not
        // read as an index.
        let bytes = std::fs::read(&file).expect("read");
        std::fs::write(&file, &bytes[..bytes.len() - 1]).expect("write");
        assert!(SavedIndex::open(&file, "fp", 4).is_none(), "cut file");
        let mut bad = bytes.clone();
        let first = saved.sections[0].at as usize;
        bad[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&file, &bad).expect("write");
        let reopened = SavedIndex::open(&file, "fp", 4).expect("table intact");
        let err = reopened.chunk(0).expect_err("damaged section");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
