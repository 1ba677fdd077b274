//! Rules, quarantine and dedup.
//!
//! Per chunk, the transformed rows get one extra column from SQL,
//! `__bf_rule` (index of the first rule the row fails, NULL when it passes).
//! [`Splitter`] then routes each row to the target, the quarantine table, a
//! per-rule drop count or the duplicate count, batch by batch.
//!
//! Dedup never sorts a chunk. Before the chunks run, two passes over the
//! whole job range find the keys that occur more than once (about 2% of rows
//! on the demo data): the first reads only the key columns and finds the
//! hashes of the repeated keys exactly, spilling to disk rather than growing
//! ([`crate::repeats`]); the second reads the key, ordering, range and rule
//! columns of the rows with those hashes, and [`DedupIndex::build`] keeps
//! each key's best ordering values per chunk and overall. A passing row
//! whose key is not in the index is the only
//! version of its key and is kept; otherwise it is kept only if it carries
//! the winning values (and, for global scope, lives in the winning chunk;
//! ties go to the lowest chunk, then to the first row seen). Chunks stay
//! independent and parallel, and memory does not grow with the chunk. The
//! index is saved in the state directory and rebuilt when the source,
//! transform, rules, dedup or range change.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use backfill_core::plan::Chunk;
use backfill_core::spec::{DedupScope, DedupSpec, JobSpec, RuleAction, RuleSpec};
use backfill_core::state::RuleCount;
use datafusion::arrow::compute::SortOptions;
use datafusion::error::DataFusionError;
use futures::StreamExt;

use crate::repeats::{KeyHashes, RepeatedKeys};

pub const RULE_COL: &str = "__bf_rule";

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CASE WHEN NOT coalesce((check0), false) THEN 0 ... END`: the index of
/// the first rule a row fails, NULL when it passes them all (always NULL
/// without rules). Valid in DataFusion's and Spark's SQL alike.
pub fn rule_case(rules: &[RuleSpec]) -> String {
    if rules.is_empty() {
        return "CAST(NULL AS INT)".to_string();
    }
    let mut sql = String::from("CASE");
    for (i, r) in rules.iter().enumerate() {
        sql.push_str(&format!(
            " WHEN NOT coalesce(({}), false) THEN {i}",
            r.check
        ));
    }
    sql.push_str(" ELSE CAST(NULL AS INT) END");
    sql
}

/// The condition "passes every rule".
pub fn all_rules_pass(rules: &[RuleSpec]) -> String {
    if rules.is_empty() {
        return "TRUE".to_string();
    }
    rules
        .iter()
        .map(|r| format!("coalesce(({}), false)", r.check))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Rows the chunk rejected or removed, by kind.
#[derive(Debug, Clone, Default)]
pub struct QualityCounts {
    /// Rows entering the rules (after the transform).
    pub rows_in: u64,
    pub quarantined: u64,
    pub dropped: u64,
    pub duplicates: u64,
    pub per_rule: BTreeMap<String, RuleCount>,
    /// Rows failing a `fail` rule, per rule, with a few example keys.
    pub failed: BTreeMap<String, (u64, Vec<String>)>,
}

/// Splits the rows of a batch that carries `__bf_rule` / `__bf_rn`.
pub struct Splitter {
    rules: Vec<RuleSpec>,
    dedup: Option<DedupSpec>,
    /// Keys with several versions and their winners.
    index: Option<Arc<DedupIndex>>,
    chunk_index: u32,
    chunk_id: String,
    run_id: i64,
    key_cols: Vec<String>,
    key_converter: Option<RowConverter>,
    order_converter: Option<RowConverter>,
    /// Multi-version keys whose winner this chunk already kept (ties).
    emitted: HashSet<Box<[u8]>>,
    pub counts: QualityCounts,
}

/// What one batch turned into.
pub struct Split {
    /// Every row of the batch, without the helper columns.
    pub data: RecordBatch,
    pub target: Option<RecordBatch>,
    pub quarantine: Option<RecordBatch>,
}

impl Splitter {
    pub fn new(
        spec: &JobSpec,
        index: Option<Arc<DedupIndex>>,
        chunk: &Chunk,
        run_id: i64,
    ) -> Splitter {
        Splitter {
            rules: spec.rules.clone(),
            dedup: spec.dedup.clone(),
            index,
            chunk_index: chunk.index as u32,
            chunk_id: chunk.id.clone(),
            run_id,
            key_cols: spec
                .dedup
                .as_ref()
                .map(|d| d.keys.clone())
                .unwrap_or_default(),
            key_converter: None,
            order_converter: None,
            emitted: HashSet::new(),
            counts: QualityCounts::default(),
        }
    }

    /// Whether batches need splitting at all (rules or dedup configured).
    pub fn active(&self) -> bool {
        !self.rules.is_empty() || self.dedup.is_some()
    }

    fn example_key(&self, batch: &RecordBatch, row: usize) -> String {
        let cols: Vec<String> = if self.key_cols.is_empty() {
            batch
                .schema()
                .fields()
                .iter()
                .take(2)
                .map(|f| f.name().clone())
                .collect()
        } else {
            self.key_cols.clone()
        };
        cols.iter()
            .filter_map(|c| {
                let idx = batch.schema().index_of(c).ok()?;
                let v = arrow::util::display::array_value_to_string(batch.column(idx), row).ok()?;
                Some(format!("{c}={v}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn split(&mut self, batch: &RecordBatch) -> Result<Split, DataFusionError> {
        let schema = batch.schema();
        let data_cols: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| {
                let n = schema.field(i).name();
                n != RULE_COL
            })
            .collect();
        let data = batch.project(&data_cols)?;
        let n = batch.num_rows();
        self.counts.rows_in += n as u64;
        let rule = match schema.index_of(RULE_COL) {
            Ok(i) => Some(cast(batch.column(i), &DataType::Int32)?),
            Err(_) => None,
        };
        let rule = rule
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<Int32Array>().cloned());
        // Keys and ordering values are only encoded when some key has
        // several versions.
        let (key_rows, order_rows) = match (&self.index, &self.dedup) {
            (Some(index), Some(dedup)) if !index.is_empty() => {
                let column = |name: &String| {
                    data.schema()
                        .index_of(name)
                        .map(|i| data.column(i).clone())
                        .map_err(DataFusionError::from)
                };
                let keys: Vec<ArrayRef> =
                    dedup.keys.iter().map(column).collect::<Result<_, _>>()?;
                let orders: Vec<ArrayRef> = dedup
                    .order_by
                    .iter()
                    .map(|o| column(&o.column))
                    .collect::<Result<_, _>>()?;
                if self.key_converter.is_none() {
                    self.key_converter = Some(key_converter(&keys)?);
                    self.order_converter = Some(order_converter(&orders, dedup)?);
                }
                match (&self.key_converter, &self.order_converter) {
                    (Some(kc), Some(oc)) => (
                        Some(kc.convert_columns(&keys)?),
                        Some(oc.convert_columns(&orders)?),
                    ),
                    _ => (None, None),
                }
            }
            _ => (None, None),
        };
        let global = self
            .dedup
            .as_ref()
            .is_some_and(|d| d.scope == DedupScope::Global);

        let mut keep = Vec::with_capacity(n);
        let mut quarantine = Vec::with_capacity(n);
        let mut q_rule: Vec<Option<String>> = Vec::new();
        let mut any_q = false;
        for i in 0..n {
            let failed_rule = rule
                .as_ref()
                .and_then(|r| (!r.is_null(i)).then(|| r.value(i)));
            match failed_rule {
                None => {
                    let mut winner = true;
                    if let (Some(keys), Some(orders), Some(index)) =
                        (&key_rows, &order_rows, &self.index)
                    {
                        let key = keys.row(i);
                        if let Some(versions) = index.get(key.as_ref()) {
                            let best: Option<&[u8]> = if global {
                                (versions.chunk == self.chunk_index)
                                    .then_some(versions.order.as_ref())
                            } else {
                                versions.best_in(self.chunk_index)
                            };
                            winner = best.is_some_and(|b| b == orders.row(i).as_ref())
                                && self.emitted.insert(key.as_ref().into());
                        }
                    }
                    if !winner {
                        self.counts.duplicates += 1;
                    }
                    keep.push(winner);
                    quarantine.push(false);
                    q_rule.push(None);
                }
                Some(r) => {
                    keep.push(false);
                    let spec = usize::try_from(r).ok().and_then(|r| self.rules.get(r));
                    let Some(spec) = spec else {
                        return Err(DataFusionError::Internal(format!(
                            "rule index {r} out of range"
                        )));
                    };
                    let name = spec.name.clone();
                    match spec.action {
                        RuleAction::Quarantine => {
                            self.counts.quarantined += 1;
                            self.counts
                                .per_rule
                                .entry(name.clone())
                                .or_default()
                                .quarantined += 1;
                            quarantine.push(true);
                            q_rule.push(Some(name));
                            any_q = true;
                        }
                        RuleAction::Drop => {
                            self.counts.dropped += 1;
                            self.counts.per_rule.entry(name).or_default().dropped += 1;
                            quarantine.push(false);
                            q_rule.push(None);
                        }
                        RuleAction::Fail => {
                            let example = self.example_key(&data, i);
                            let entry = self.counts.failed.entry(name).or_default();
                            entry.0 += 1;
                            if entry.1.len() < 5 {
                                entry.1.push(example);
                            }
                            quarantine.push(false);
                            q_rule.push(None);
                        }
                    }
                }
            }
        }
        let target = if keep.iter().all(|&k| k) {
            Some(data.clone())
        } else if keep.iter().any(|&k| k) {
            Some(filter_record_batch(&data, &BooleanArray::from(keep))?)
        } else {
            None
        };
        let quarantine = if any_q {
            let rules = StringArray::from(q_rule);
            let with_meta =
                add_quarantine_columns(&data, Arc::new(rules), &self.chunk_id, self.run_id)?;
            Some(filter_record_batch(
                &with_meta,
                &BooleanArray::from(quarantine),
            )?)
        } else {
            None
        };
        Ok(Split {
            data,
            target,
            quarantine,
        })
    }
}

/// The quarantine table's columns: the transformed row's, then `_rule`,
/// `_chunk` and `_run`.
pub fn quarantine_schema(data: &Schema) -> Schema {
    let mut fields: Vec<Field> = data.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("_rule", DataType::Utf8, true));
    fields.push(Field::new("_chunk", DataType::Utf8, false));
    fields.push(Field::new("_run", DataType::Int64, false));
    Schema::new(fields)
}

/// The quarantine table's rows: the transformed row plus `_rule`, `_chunk`, `_run`.
fn add_quarantine_columns(
    data: &RecordBatch,
    rules: ArrayRef,
    chunk_id: &str,
    run_id: i64,
) -> Result<RecordBatch, DataFusionError> {
    let n = data.num_rows();
    let schema = quarantine_schema(&data.schema());
    let mut cols = data.columns().to_vec();
    cols.push(rules);
    cols.push(Arc::new(StringArray::from(vec![chunk_id; n])));
    cols.push(Arc::new(Int64Array::from(vec![run_id; n])));
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}

fn key_converter(keys: &[ArrayRef]) -> Result<RowConverter, DataFusionError> {
    Ok(RowConverter::new(
        keys.iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?)
}

/// Encodes ordering values so that byte order is `order_by` order: the
/// smallest encoding wins.
fn order_converter(
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
/// (with the chunk holding them) and the best within each chunk.
#[derive(Debug, Clone)]
pub struct KeyVersions {
    /// Winner over the whole range: its chunk and encoded ordering values.
    pub chunk: u32,
    pub order: Box<[u8]>,
    /// Best encoded ordering values in each other chunk that holds a
    /// version (chunk scope). The winner's chunk is left out: its best is
    /// `order`. Most keys the index pass meets have one version, and this
    /// stays an empty `Vec` that allocates nothing.
    pub per_chunk: Vec<(u32, Box<[u8]>)>,
}

impl KeyVersions {
    fn new(chunk: u32, order: &[u8]) -> KeyVersions {
        KeyVersions {
            chunk,
            order: order.into(),
            per_chunk: Vec::new(),
        }
    }

    pub fn best_in(&self, chunk: u32) -> Option<&[u8]> {
        if chunk == self.chunk {
            return Some(&self.order);
        }
        self.per_chunk
            .iter()
            .find(|(c, _)| *c == chunk)
            .map(|(_, o)| o.as_ref())
    }

    /// Takes in one more version.
    fn add(&mut self, chunk: u32, order: &[u8]) {
        if (order, chunk) < (self.order.as_ref(), self.chunk) {
            // The new overall winner is also its own chunk's best.
            self.per_chunk.retain(|(c, _)| *c != chunk);
            if chunk != self.chunk {
                let old = std::mem::replace(&mut self.order, order.into());
                self.per_chunk.push((self.chunk, old));
                self.chunk = chunk;
            } else {
                self.order = order.into();
            }
        } else if chunk != self.chunk {
            match self.per_chunk.iter_mut().find(|(c, _)| *c == chunk) {
                Some((_, best)) if order < best.as_ref() => *best = order.into(),
                Some(_) => {}
                None => self.per_chunk.push((chunk, order.into())),
            }
        }
    }
}

/// The hash of a key's row encoding.
pub fn key_hash(row: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(row)
}

/// Bits a key sets in its word of a blocked Bloom filter.
const BLOOM_PROBES: u32 = 3;

/// A key's word among `words` (a power of two) and the bits it sets there:
/// the low half of the hash picks the word, 6-bit slices of the high half
/// the bits, so a probe costs one cache miss.
fn bloom_probe(hash: u64, words: usize) -> (usize, u64) {
    let word = (hash as usize) & (words - 1);
    let high = hash >> 32;
    let bits = (0..BLOOM_PROBES).fold(0u64, |m, i| m | 1 << ((high >> (6 * i)) & 63));
    (word, bits)
}

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
    keys: HashMap<Box<[u8]>, KeyVersions>,
    /// A Bloom filter of `keys` small enough to stay in cache: most rows'
    /// keys are not in the index, and a miss in the map itself costs a
    /// cache miss or two per row.
    filter: Vec<u64>,
    /// Versions of multi-version keys seen while building.
    pub versions: u64,
}

/// v3: `per_chunk` leaves out the winner's chunk.
const INDEX_MAGIC: &[u8; 8] = b"BFDXv3\n\0";

impl DedupIndex {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyVersions> {
        if self.filter.is_empty() {
            return None;
        }
        let (word, bits) = bloom_probe(key_hash(key), self.filter.len());
        if self.filter[word] & bits != bits {
            return None;
        }
        self.keys.get(key)
    }

    fn new(keys: HashMap<Box<[u8]>, KeyVersions>, versions: u64) -> DedupIndex {
        // About 16 bits per key, at least one word.
        let words = (keys.len() / 4).max(1).next_power_of_two();
        let mut filter = vec![0u64; words];
        for k in keys.keys() {
            let (word, bits) = bloom_probe(key_hash(k), words);
            filter[word] |= bits;
        }
        DedupIndex {
            keys,
            filter,
            versions,
        }
    }

    /// Builds the index from a stream of passing rows carrying the key
    /// columns (first), the order columns, and, when the job has several
    /// chunks, the range value `__bf_r` last: all versions of the repeated
    /// keys, and maybe some keys met once, which are dropped.
    pub async fn build(
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
        dedup: &DedupSpec,
        chunks: &[Chunk],
    ) -> Result<DedupIndex, DataFusionError> {
        let nk = dedup.keys.len();
        let no = dedup.order_by.len();
        let bounds: Vec<i64> = chunks
            .iter()
            .filter_map(|c| c.lo.map(|v| v.raw()))
            .collect();
        let mut key_conv: Option<RowConverter> = None;
        let mut order_conv: Option<RowConverter> = None;
        let mut keys: HashMap<Box<[u8]>, (u64, KeyVersions)> = HashMap::new();
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let key_cols: Vec<ArrayRef> = batch.columns()[..nk].to_vec();
            let order_cols: Vec<ArrayRef> = batch.columns()[nk..nk + no].to_vec();
            if key_conv.is_none() {
                key_conv = Some(key_converter(&key_cols)?);
                order_conv = Some(order_converter(&order_cols, dedup)?);
            }
            let (Some(kc), Some(oc)) = (&key_conv, &order_conv) else {
                continue;
            };
            let key_rows = kc.convert_columns(&key_cols)?;
            let order_rows = oc.convert_columns(&order_cols)?;
            let positions = match batch.columns().get(nk + no) {
                Some(range) => range_positions(range)?,
                None => vec![Some(i64::MIN); batch.num_rows()],
            };
            for i in 0..batch.num_rows() {
                let Some(pos) = positions.get(i).copied().flatten() else {
                    continue;
                };
                let key_row = key_rows.row(i);
                // The chunk whose [lo, hi) holds the row: the last lo <= pos.
                let chunk = bounds.partition_point(|&lo| lo <= pos).saturating_sub(1) as u32;
                let order_row = order_rows.row(i);
                let order: &[u8] = order_row.as_ref();
                match keys.get_mut(key_row.as_ref()) {
                    Some((count, v)) => {
                        *count += 1;
                        v.add(chunk, order);
                    }
                    None => {
                        keys.insert(key_row.as_ref().into(), (1, KeyVersions::new(chunk, order)));
                    }
                }
            }
        }
        let mut versions = 0;
        let candidates = keys.len();
        let keys: HashMap<Box<[u8]>, KeyVersions> = keys
            .into_iter()
            .filter(|(_, (count, _))| *count > 1)
            .map(|(k, (count, v))| {
                versions += count;
                (k, v)
            })
            .collect();
        tracing::debug!(
            "dedup index: {} of {candidates} candidate keys have several versions",
            keys.len()
        );
        Ok(DedupIndex::new(keys, versions))
    }

    pub fn save(&self, path: &Path, fingerprint: &str) -> std::io::Result<()> {
        fn bytes(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        {
            let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
            w.write_all(INDEX_MAGIC)?;
            bytes(&mut w, fingerprint.as_bytes())?;
            w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
            for (k, v) in &self.keys {
                bytes(&mut w, k)?;
                w.write_all(&v.chunk.to_le_bytes())?;
                bytes(&mut w, &v.order)?;
                w.write_all(&(v.per_chunk.len() as u32).to_le_bytes())?;
                for (c, o) in &v.per_chunk {
                    w.write_all(&c.to_le_bytes())?;
                    bytes(&mut w, o)?;
                }
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// The saved index if it was built for `fingerprint`; anything else
    /// (missing, stale, truncated) means "rebuild".
    pub fn load(path: &Path, fingerprint: &str) -> Option<DedupIndex> {
        fn u32_(r: &mut impl Read) -> Option<u32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).ok()?;
            Some(u32::from_le_bytes(b))
        }
        fn bytes(r: &mut impl Read) -> Option<Box<[u8]>> {
            let mut v = vec![0u8; u32_(r)? as usize];
            r.read_exact(&mut v).ok()?;
            Some(v.into_boxed_slice())
        }
        let mut r = BufReader::new(std::fs::File::open(path).ok()?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).ok()?;
        if &magic != INDEX_MAGIC || bytes(&mut r)?.as_ref() != fingerprint.as_bytes() {
            return None;
        }
        let mut len8 = [0u8; 8];
        r.read_exact(&mut len8).ok()?;
        let n = u64::from_le_bytes(len8);
        let mut keys = HashMap::with_capacity(n.min(1 << 24) as usize);
        for _ in 0..n {
            let k = bytes(&mut r)?;
            let chunk = u32_(&mut r)?;
            let order = bytes(&mut r)?;
            let m = u32_(&mut r)?;
            let mut per_chunk = Vec::with_capacity(m.min(1 << 16) as usize);
            for _ in 0..m {
                let c = u32_(&mut r)?;
                per_chunk.push((c, bytes(&mut r)?));
            }
            keys.insert(
                k,
                KeyVersions {
                    chunk,
                    order,
                    per_chunk,
                },
            );
        }
        Some(DedupIndex::new(keys, 0))
    }
}

/// Range values as the planner's raw integers (µs for times), per row.
fn range_positions(a: &ArrayRef) -> Result<Vec<Option<i64>>, DataFusionError> {
    let as_i64 = match a.data_type() {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let micros = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            cast(&micros, &DataType::Int64)?
        }
        _ => cast(a, &DataType::Int64)?,
    };
    let ints = as_i64
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| DataFusionError::Internal("range column did not cast to Int64".into()))?;
    Ok(ints.iter().collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_versions_track_the_winner_and_each_chunks_best() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..2000 {
            let versions: Vec<(u32, [u8; 1])> = (0..rng.random_range(1..8))
                .map(|_| (rng.random_range(0..4), [rng.random_range(0..5)]))
                .collect();
            let (c0, o0) = versions[0];
            let mut v = KeyVersions::new(c0, &o0);
            for (c, o) in &versions[1..] {
                v.add(*c, o);
            }
            let winner = versions.iter().map(|(c, o)| (*o, *c)).min();
            assert_eq!(
                Some((v.order.as_ref(), v.chunk)),
                winner.as_ref().map(|(o, c)| (&o[..], *c)),
                "{versions:?}"
            );
            for chunk in 0..4 {
                let best = versions
                    .iter()
                    .filter(|(c, _)| *c == chunk)
                    .map(|(_, o)| o)
                    .min();
                assert_eq!(
                    v.best_in(chunk),
                    best.map(|o| &o[..]),
                    "chunk {chunk} of {versions:?}"
                );
            }
            assert!(
                v.per_chunk.iter().all(|(c, _)| *c != v.chunk),
                "{versions:?}"
            );
        }
    }
}
