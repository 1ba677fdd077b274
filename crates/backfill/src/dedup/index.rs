//! The dedup index: every repeated key's winning version, and its best
//! version in each chunk that has one, in one byte arena.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use backfill_core::spec::{DedupSpec, JobSpec};
use datafusion::arrow::compute::SortOptions;
use datafusion::error::DataFusionError;
use futures::StreamExt;

use super::hash::{bloom_probe, key_hash};
use super::repeats::{HashIsKey, KeyHashes, RepeatedKeys};

pub(crate) fn key_converter(keys: &[ArrayRef]) -> Result<RowConverter, DataFusionError> {
    Ok(RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?)
}

/// Encodes ordering values so that byte order is `order_by` order: the
/// smallest encoding wins.
pub(crate) fn order_converter(
    orders: &[ArrayRef],
    dedup: &DedupSpec,
) -> Result<RowConverter, DataFusionError> {
    Ok(RowConverter::new(
        orders
            .iter()
            .zip(&dedup.order_by)
            .map(|(c, k)| {
                SortField::new_with_options(
                    c.data_type().clone(),
                    SortOptions {
                        descending: k.descending,
                        nulls_first: k.nulls_first,
                    },
                )
            })
            .collect(),
    )?)
}

/// The versions of one key that matter: the best ordering values overall
/// (with the chunk holding them) and the best within each other chunk.
#[derive(Debug, Clone, Copy)]
pub struct KeyVersions<'a> {
    /// Winner over the whole range: its chunk and encoded ordering values.
    pub chunk: u32,
    pub order: &'a [u8],
    /// Best encoded ordering values in each other chunk that holds a
    /// version (chunk scope); empty when all versions share one chunk.
    per_chunk: &'a [(u32, Box<[u8]>)],
    /// The chunks in which two or more versions share the best ordering
    /// values (a tie `order_by` does not break).
    tied: &'a HashSet<(u32, u32)>,
    entry: u32,
}

/// A key as one chunk sees it: its bytes, the chunk holding its winner, and
/// its best encoded ordering values within the chunk.
pub(crate) struct ChunkKey<'a> {
    pub key: &'a [u8],
    pub winner: u32,
    pub best: &'a [u8],
    /// Several versions share the best in this chunk.
    pub tied: bool,
}

/// A key's best encoded ordering values in each chunk but the winner's.
type ChunkBests = Vec<(u32, Box<[u8]>)>;

impl KeyVersions<'_> {
    /// The chunks holding a version, the winner's first.
    pub fn chunks(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.chunk).chain(self.per_chunk.iter().map(|(c, _)| *c))
    }

    /// Whether, in `chunk`, several versions share its best ordering
    /// values: the chunk then keeps the one whose whole row hashes lowest
    /// ([`row_hashes`](super::hash::row_hashes)), whatever order it reads them in.
    pub fn tied_in(&self, chunk: u32) -> bool {
        self.tied.contains(&(self.entry, chunk))
    }

    pub fn best_in(&self, chunk: u32) -> Option<&[u8]> {
        if chunk == self.chunk {
            return Some(self.order);
        }
        self.per_chunk
            .iter()
            .find(|(c, _)| *c == chunk)
            .map(|(_, o)| o.as_ref())
    }
}

/// One key of the index. Its bytes and its winner's ordering values live
/// in the index's byte arena: a key costs its bytes plus 36, not two heap
/// allocations and a map entry three times that.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key_at: u64,
    order_at: u64,
    key_len: u32,
    order_len: u32,
    chunk: u32,
    /// Versions met (saturating).
    versions: u32,
    /// The next entry whose key has the same 64-bit hash, or `NO_ENTRY`.
    next: u32,
}

const NO_ENTRY: u32 = u32::MAX;

/// Adds the key hash of every row of a stream of key columns.
pub async fn hash_keys(
    mut keys: datafusion::physical_plan::SendableRecordBatchStream,
    mut into: KeyHashes,
) -> Result<KeyHashes, DataFusionError> {
    let mut conv: Option<RowConverter> = None;
    while let Some(batch) = keys.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let conv = match &mut conv {
            Some(c) => c,
            None => conv.insert(key_converter(batch.columns())?),
        };
        for row in conv.convert_columns(batch.columns())?.iter() {
            into.push(key_hash(row.as_ref()))?;
        }
    }
    Ok(into)
}

/// `__bf_candidate(key columns...)`: true for the rows whose key was met
/// more than once. The index pass filters on it before the
/// rules, so the rules and the ordering values are evaluated for the few
/// candidate rows only (DataFusion evaluates the right side of an AND on
/// the rows the left side kept when those are few).
#[derive(Debug)]
pub struct CandidateUdf {
    repeated: Arc<RepeatedKeys>,
    signature: datafusion::logical_expr::Signature,
}

pub const CANDIDATE_UDF: &str = "__bf_candidate";

impl CandidateUdf {
    pub fn new(repeated: Arc<RepeatedKeys>) -> CandidateUdf {
        CandidateUdf {
            repeated,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl PartialEq for CandidateUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.repeated, &other.repeated)
    }
}

impl Eq for CandidateUdf {}

impl std::hash::Hash for CandidateUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.repeated).hash(state);
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for CandidateUdf {
    fn name(&self) -> &str {
        CANDIDATE_UDF
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue, DataFusionError> {
        let keys = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let rows = key_converter(&keys)?.convert_columns(&keys)?;
        let hit: BooleanArray = rows
            .iter()
            .map(|r| Some(self.repeated.contains(key_hash(r.as_ref()))))
            .collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            hit,
        )))
    }
}

/// Keys with several passing versions over the whole job range.
#[derive(Debug, Default)]
pub struct DedupIndex {
    /// Key hash to its first entry; the rare keys sharing a hash chain
    /// through [`Entry::next`].
    slots: HashMap<u64, u32, BuildHasherDefault<HashIsKey>>,
    entries: Vec<Entry>,
    /// Key bytes and ordering values of every entry.
    bytes: Vec<u8>,
    /// Per entry with versions in several chunks: the best of each chunk
    /// other than the winner's.
    per_chunk: HashMap<u32, ChunkBests>,
    /// (entry, chunk) where several versions share the chunk's best
    /// ordering values.
    tied: HashSet<(u32, u32)>,
    /// Entries with at least two versions: the index proper. Entries met
    /// once (their other versions failed a rule) stay in the arena but are
    /// never returned.
    keys: usize,
    /// A Bloom filter of the keys small enough to stay in cache: most rows'
    /// keys are not in the index, and a miss in the map itself costs a
    /// cache miss or two per row.
    filter: Vec<u64>,
    /// Versions of multi-version keys seen while building.
    pub versions: u64,
    /// One-chunk jobs: only the repeated keys' hashes, the chunk resolving
    /// them itself.
    repeated: Option<Arc<RepeatedKeys>>,
}

impl DedupIndex {
    /// An index for a job of one chunk, which sees every version of every
    /// key: the chunk holds back the rows of `repeated` keys and keeps each
    /// key's best when it ends ([`Splitter::finish`]).
    pub fn within_one_chunk(repeated: RepeatedKeys) -> DedupIndex {
        DedupIndex {
            repeated: Some(Arc::new(repeated)),
            ..DedupIndex::default()
        }
    }

    /// Whether the chunk resolves repeated keys itself.
    pub fn holds_back(&self) -> bool {
        self.repeated.is_some()
    }

    /// In an index [`within_one_chunk`](Self::within_one_chunk): whether
    /// `key` may have several versions.
    pub fn is_repeated(&self, key: &[u8]) -> bool {
        self.repeated
            .as_ref()
            .is_some_and(|r| r.contains(key_hash(key)))
    }

    pub fn is_empty(&self) -> bool {
        match &self.repeated {
            Some(r) => r.is_empty(),
            None => self.keys == 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys
    }

    fn slice(&self, at: u64, len: u32) -> &[u8] {
        &self.bytes[at as usize..at as usize + len as usize]
    }

    fn key_of(&self, e: &Entry) -> &[u8] {
        self.slice(e.key_at, e.key_len)
    }

    fn order_of(&self, e: &Entry) -> &[u8] {
        self.slice(e.order_at, e.order_len)
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let mut i = *self.slots.get(&hash)?;
        while i != NO_ENTRY {
            let e = &self.entries[i as usize];
            if self.key_of(e) == key {
                return Some(i);
            }
            i = e.next;
        }
        None
    }

    pub fn get(&self, key: &[u8]) -> Option<KeyVersions<'_>> {
        if self.filter.is_empty() {
            return None;
        }
        let hash = key_hash(key);
        let (word, bits) = bloom_probe(hash, self.filter.len());
        if self.filter[word] & bits != bits {
            return None;
        }
        let i = self.find(hash, key)?;
        self.view(i).map(|(_, _, versions)| versions)
    }

    fn push_bytes(&mut self, b: &[u8]) -> u64 {
        let at = self.bytes.len() as u64;
        self.bytes.extend_from_slice(b);
        at
    }

    /// A new entry for `key`, which is not in the index yet.
    fn push_entry(
        &mut self,
        hash: u64,
        key: &[u8],
        chunk: u32,
        order: &[u8],
        versions: u32,
    ) -> Result<u32, DataFusionError> {
        let too_long =
            || DataFusionError::Execution("a dedup key or ordering value over 4 GiB".into());
        let next = self.slots.get(&hash).copied().unwrap_or(NO_ENTRY);
        let i = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NO_ENTRY)
            .ok_or_else(|| DataFusionError::Execution("over 4G keys in the dedup index".into()))?;
        let entry = Entry {
            key_at: self.push_bytes(key),
            key_len: u32::try_from(key.len()).map_err(|_| too_long())?,
            order_at: self.push_bytes(order),
            order_len: u32::try_from(order.len()).map_err(|_| too_long())?,
            chunk,
            versions,
            next,
        };
        self.entries.push(entry);
        self.slots.insert(hash, i);
        Ok(i)
    }

    /// The keys with several versions, by entry number: each key's bytes
    /// and versions.
    pub(crate) fn multi_version(&self) -> impl Iterator<Item = (u32, &[u8], KeyVersions<'_>)> {
        (0..self.entries.len() as u32).filter_map(|i| self.view(i))
    }

    /// Per chunk, an order-independent digest of its section: what the
    /// chunk is told about its keys (each key with a version in it, the
    /// chunk of the key's winner, and the chunk's own best ordering
    /// values). A chunk's output depends on the index only through this,
    /// so a committed chunk whose digest changed must run again.
    pub fn section_digests(&self, chunks: usize) -> Vec<u64> {
        let mut digests = vec![0u64; chunks];
        for (_, key, v) in self.multi_version() {
            for c in v.chunks() {
                if let Some(d) = digests.get_mut(c as usize) {
                    *d = d.wrapping_add(section_record_hash(
                        key,
                        v.chunk | tie_bit(v.tied_in(c)),
                        v.best_in(c),
                    ));
                }
            }
        }
        digests
    }

    /// Entry `i`'s key and versions, if it has several versions.
    pub(crate) fn view(&self, i: u32) -> Option<(u32, &[u8], KeyVersions<'_>)> {
        let e = self.entries.get(i as usize)?;
        (e.versions > 1).then(|| {
            let versions = KeyVersions {
                chunk: e.chunk,
                order: self.order_of(e),
                per_chunk: self.per_chunk.get(&i).map_or(&[], |v| v.as_slice()),
                tied: &self.tied,
                entry: i,
            };
            (i, self.key_of(e), versions)
        })
    }

    /// One chunk's view of the index from its saved section: per key, the
    /// winner's chunk and the chunk's own best ordering values. Answers
    /// [`DedupIndex::get`] for the rows of that chunk as the whole index
    /// would.
    pub(crate) fn for_one_chunk<'a>(
        chunk: u32,
        keys: impl Iterator<Item = ChunkKey<'a>>,
    ) -> Result<DedupIndex, DataFusionError> {
        let mut index = DedupIndex::default();
        for k in keys {
            let hash = key_hash(k.key);
            if index.find(hash, k.key).is_some() {
                return Err(DataFusionError::Execution(
                    "a key appears twice in one chunk's section of the dedup index".into(),
                ));
            }
            let i = if k.winner == chunk {
                index.push_entry(hash, k.key, chunk, k.best, 2)?
            } else {
                let i = index.push_entry(hash, k.key, k.winner, &[], 2)?;
                index.per_chunk.insert(i, vec![(chunk, k.best.into())]);
                i
            };
            if k.tied {
                index.tied.insert((i, chunk));
            }
        }
        Ok(index.seal())
    }

    /// Takes in one more version of `key`.
    fn add(&mut self, key: &[u8], chunk: u32, order: &[u8]) -> Result<(), DataFusionError> {
        let too_long =
            || DataFusionError::Execution("a dedup key or ordering value over 4 GiB".into());
        let hash = key_hash(key);
        let Some(i) = self.find(hash, key) else {
            self.push_entry(hash, key, chunk, order, 1)?;
            return Ok(());
        };
        let e = self.entries[i as usize];
        self.entries[i as usize].versions = e.versions.saturating_add(1);
        let best = self.order_of(&e);
        if chunk == e.chunk && order == best {
            self.tied.insert((i, chunk));
            return Ok(());
        }
        if (order, chunk) < (best, e.chunk) {
            // Strictly better than anything this chunk had: a tie in it,
            // if any, is over (ties between chunks go to the lower one).
            self.tied.remove(&(i, chunk));
            // The new overall winner is also its own chunk's best; the
            // winner's chunk never has an entry of its own.
            if let Some(others) = self.per_chunk.get_mut(&i) {
                others.retain(|(c, _)| *c != chunk);
            }
            if chunk != e.chunk {
                let old: Box<[u8]> = self.order_of(&e).into();
                self.per_chunk.entry(i).or_default().push((e.chunk, old));
            }
            let order_len = u32::try_from(order.len()).map_err(|_| too_long())?;
            let order_at = if order_len == e.order_len {
                let at = e.order_at as usize;
                self.bytes[at..at + order.len()].copy_from_slice(order);
                e.order_at
            } else {
                self.push_bytes(order)
            };
            let entry = &mut self.entries[i as usize];
            entry.chunk = chunk;
            entry.order_at = order_at;
            entry.order_len = order_len;
        } else if chunk != e.chunk {
            let others = self.per_chunk.entry(i).or_default();
            match others.iter_mut().find(|(c, _)| *c == chunk) {
                Some((_, best)) if order < best.as_ref() => {
                    *best = order.into();
                    self.tied.remove(&(i, chunk));
                }
                Some((_, best)) if order == best.as_ref() => {
                    self.tied.insert((i, chunk));
                }
                Some(_) => {}
                None => others.push((chunk, order.into())),
            }
        }
        Ok(())
    }

    /// Done adding: counts the index's keys and versions, and builds the
    /// filter over the keys with several versions.
    fn seal(mut self) -> DedupIndex {
        self.entries.shrink_to_fit();
        self.bytes.shrink_to_fit();
        self.per_chunk
            .retain(|&i, _| self.entries.get(i as usize).is_some_and(|e| e.versions > 1));
        self.tied
            .retain(|&(i, _)| self.entries.get(i as usize).is_some_and(|e| e.versions > 1));
        self.keys = self.entries.iter().filter(|e| e.versions > 1).count();
        self.versions = self
            .entries
            .iter()
            .filter(|e| e.versions > 1)
            .map(|e| u64::from(e.versions))
            .sum();
        // About 16 bits per key, at least one word.
        let words = (self.keys / 4).max(1).next_power_of_two();
        let mut filter = vec![0u64; words];
        for (&hash, &first) in &self.slots {
            let mut i = first;
            while i != NO_ENTRY {
                let e = &self.entries[i as usize];
                if e.versions > 1 {
                    let (word, bits) = bloom_probe(hash, words);
                    filter[word] |= bits;
                }
                i = e.next;
            }
        }
        self.filter = filter;
        self
    }

    /// Builds the index from a stream of passing rows carrying the key
    /// columns (first), the order columns, and, when the job has several
    /// chunks, the row's chunk `__bf_c` last ([`crate::placement`]): all
    /// versions of the repeated keys, and maybe some keys met once, which
    /// are dropped.
    pub async fn build(
        mut stream: impl futures::Stream<Item = Result<RecordBatch, DataFusionError>> + Unpin,
        dedup: &DedupSpec,
    ) -> Result<DedupIndex, DataFusionError> {
        let mut rows = IndexRows::new(dedup);
        let mut index = DedupIndex::default();
        while let Some(batch) = stream.next().await {
            rows.each(&batch?, |key, chunk, order| index.add(key, chunk, order))?;
        }
        Ok(index.sealed())
    }

    /// Builds the index from (key, chunk, ordering values) versions.
    pub(crate) fn from_versions<'a>(
        versions: impl Iterator<Item = Result<(&'a [u8], u32, &'a [u8]), DataFusionError>>,
    ) -> Result<DedupIndex, DataFusionError> {
        let mut index = DedupIndex::default();
        for v in versions {
            let (key, chunk, order) = v?;
            index.add(key, chunk, order)?;
        }
        Ok(index.sealed())
    }

    fn sealed(self) -> DedupIndex {
        let candidates = self.entries.len();
        let index = self.seal();
        tracing::debug!(
            "dedup index: {} of {candidates} candidate keys have several versions \
             ({} MiB of keys and ordering values)",
            index.keys,
            index.bytes.len() >> 20
        );
        index
    }
}

/// The index pass's batches as (key, chunk, ordering values) rows, in the
/// row encodings the index compares.
pub struct IndexRows {
    keys: usize,
    orders: usize,
    dedup: DedupSpec,
    converters: Option<(RowConverter, RowConverter)>,
}

impl IndexRows {
    pub fn new(dedup: &DedupSpec) -> IndexRows {
        IndexRows {
            keys: dedup.keys.len(),
            orders: dedup.order_by.len(),
            dedup: dedup.clone(),
            converters: None,
        }
    }

    /// Calls `f` with each row of `batch` that a chunk selects.
    pub fn each(
        &mut self,
        batch: &RecordBatch,
        mut f: impl FnMut(&[u8], u32, &[u8]) -> Result<(), DataFusionError>,
    ) -> Result<(), DataFusionError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (nk, no) = (self.keys, self.orders);
        let key_cols: Vec<ArrayRef> = batch.columns()[..nk].to_vec();
        let order_cols: Vec<ArrayRef> = batch.columns()[nk..nk + no].to_vec();
        let (kc, oc) = match &self.converters {
            Some(c) => c,
            None => self.converters.insert((
                key_converter(&key_cols)?,
                order_converter(&order_cols, &self.dedup)?,
            )),
        };
        let key_rows = kc.convert_columns(&key_cols)?;
        let order_rows = oc.convert_columns(&order_cols)?;
        let chunks = match batch.columns().get(nk + no) {
            Some(c) => Some(c.as_any().downcast_ref::<UInt32Array>().ok_or_else(|| {
                DataFusionError::Internal("the chunk column is not UInt32".into())
            })?),
            None => None,
        };
        for i in 0..batch.num_rows() {
            // No chunk selects a row outside the job's range (NULL), so
            // it must not win: the pass drops the range predicate when
            // the statistics say no row is outside, and this keeps the
            // index right should they be wrong.
            let chunk = match chunks {
                Some(c) if c.is_null(i) => continue,
                Some(c) => c.value(i),
                None => 0,
            };
            f(key_rows.row(i).as_ref(), chunk, order_rows.row(i).as_ref())?;
        }
        Ok(())
    }
}

/// The high bit of a saved winner's chunk: a tie in the section's chunk.
/// Chunk numbers stay far below it (plans are capped at millions).
pub(crate) const TIED: u32 = 1 << 31;

fn tie_bit(tied: bool) -> u32 {
    if tied { TIED } else { 0 }
}

fn section_record_hash(key: &[u8], winner: u32, best: Option<&[u8]>) -> u64 {
    let best = best.unwrap_or_default();
    let mut h = twox_hash::XxHash3_64::new();
    use std::hash::Hasher;
    h.write(&(key.len() as u64).to_le_bytes());
    h.write(key);
    h.write(&winner.to_le_bytes());
    h.write(best);
    h.finish()
}

/// What the index depends on; a different value means rebuild.
pub fn index_fingerprint(
    spec: &JobSpec,
    source_fingerprint: &str,
    key_types: &SchemaRef,
) -> String {
    let dedup = spec.dedup.as_ref();
    let text = format!(
        "source={source_fingerprint}|range={}|transform={:?}|rules={:?}|keys={:?}|order={:?}|types={:?}",
        backfill_core::fingerprint(spec.range.as_ref()),
        spec.transform.as_ref().map(|t| &t.sql),
        spec.rules
            .iter()
            .map(|r| (&r.name, &r.check, r.action.as_str()))
            .collect::<Vec<_>>(),
        dedup.map(|d| &d.keys),
        dedup.map(|d| d.order_by.iter().map(|o| o.to_string()).collect::<Vec<_>>()),
        key_types
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect::<Vec<_>>(),
    );
    format!("{:016x}", twox_hash::XxHash3_64::oneshot(text.as_bytes()))
}

/// Versions of one key in a test: (chunk, encoded ordering values).
#[cfg(test)]
pub(crate) type TestVersions = Vec<(u32, Vec<u8>)>;

/// A sealed index of about 2,000 random keys of 1-4 bytes, each with 1-7
/// versions spread over 4 chunks and ordering values of 1-2 bytes (so that
/// a new winner sometimes needs more room than the old), with the versions
/// that went in.
#[cfg(test)]
pub(crate) fn random_index(seed: u64) -> (DedupIndex, Vec<(Vec<u8>, TestVersions)>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut index = DedupIndex::default();
    let mut all: Vec<(Vec<u8>, TestVersions)> = Vec::new();
    for k in 0..2000u32 {
        let key: Vec<u8> = k.to_le_bytes()[..1 + (k as usize % 4)].to_vec();
        if all.iter().any(|(other, _)| *other == key) {
            continue;
        }
        let versions: TestVersions = (0..rng.random_range(1..8))
            .map(|_| {
                let len = rng.random_range(1..3);
                (
                    rng.random_range(0..4),
                    (0..len).map(|_| rng.random_range(0..5)).collect(),
                )
            })
            .collect();
        for (c, o) in &versions {
            if let Err(e) = index.add(&key, *c, o) {
                panic!("add: {e}");
            }
        }
        all.push((key, versions));
    }
    (index.seal(), all)
}

/// Global dedup on key `k`, the largest `o` winning.
#[cfg(test)]
pub(crate) fn test_dedup() -> DedupSpec {
    use backfill_core::spec::{DedupScope, OrderKey};
    DedupSpec {
        keys: vec!["k".into()],
        order_by: vec![OrderKey {
            column: "o".into(),
            descending: true,
            nulls_first: false,
        }],
        scope: DedupScope::Global,
        loc: Default::default(),
    }
}

/// The best of `versions` in `chunk`, as brute force finds it.
#[cfg(test)]
pub(crate) fn best_in_chunk(versions: &TestVersions, chunk: u32) -> Option<&[u8]> {
    versions
        .iter()
        .filter(|(c, _)| *c == chunk)
        .map(|(_, o)| o.as_slice())
        .min()
}

#[cfg(test)]
mod tests;
