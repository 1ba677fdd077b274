//! Rules and quarantine, and where dedup meets the rows.
//!
//! Per chunk, the transformed rows get one extra column from SQL,
//! `__bf_rule` (index of the first rule the row fails, NULL when it passes).
//! [`Splitter`] then routes each row to the target, the quarantine table, a
//! per-rule drop count or the duplicate count, batch by batch, asking the
//! chunk's view of the dedup index ([`crate::dedup`]) which passing rows
//! are their key's winner.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::row::{RowConverter, Rows};
use backfill_core::plan::Chunk;
use backfill_core::spec::{DedupScope, DedupSpec, JobSpec, RuleAction, RuleSpec};
use backfill_core::state::RuleCount;
use datafusion::error::DataFusionError;

use crate::dedup::holdback::{Codec, HoldBack, compact_views};
use crate::dedup::index::{DedupIndex, key_converter, order_converter};

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
    order_cols: Vec<String>,
    /// Rows of repeated keys held back until the chunk ends, when the index
    /// only knows the keys' hashes ([`DedupIndex::within_one_chunk`]), or
    /// when the best versions tie.
    held: HoldBack,
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
    /// `hold_back` bytes of held rows stay in memory; more spill to a
    /// directory made in `spill_root` (`None`: they stay in memory).
    pub fn new(
        spec: &JobSpec,
        index: Option<Arc<DedupIndex>>,
        chunk: &Chunk,
        run_id: i64,
        hold_back: usize,
        spill_root: Option<std::path::PathBuf>,
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
            order_cols: spec
                .dedup
                .as_ref()
                .map(|d| d.order_by.iter().map(|o| o.column.clone()).collect())
                .unwrap_or_default(),
            key_converter: None,
            order_converter: None,
            emitted: HashSet::new(),
            held: HoldBack::new(hold_back, spill_root),
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

    /// Keeps rows `rows` of `data` (whose keys are repeated) until
    /// [`Splitter::next_held_winners`].
    fn hold(
        &mut self,
        data: &RecordBatch,
        keys: &Rows,
        rows: &[u32],
    ) -> Result<(), DataFusionError> {
        let (Some(kc), Some(oc)) = (&self.key_converter, &self.order_converter) else {
            return Err(DataFusionError::Internal(
                "rows held back without dedup ordering".into(),
            ));
        };
        let taken = take_record_batch(data, &UInt32Array::from(rows.to_vec()))?;
        // `take` of a view column still points into the whole batch's
        // buffers; copying the held strings out lets those go.
        let held = compact_views(&taken)?;
        let codec = Codec {
            keys: kc,
            orders: oc,
            key_cols: &self.key_cols,
            order_cols: &self.order_cols,
        };
        self.held.hold(held, keys, rows, &codec)
    }

    /// Once the chunk's last batch has been split: the next batch of held
    /// rows that won (all of them, or one spilled bucket's), until `None`,
    /// when the others are counted as duplicates.
    pub fn next_held_winners(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        if self.held.rows() == 0 {
            return Ok(None);
        }
        let (Some(kc), Some(oc)) = (&self.key_converter, &self.order_converter) else {
            return Ok(None);
        };
        let codec = Codec {
            keys: kc,
            orders: oc,
            key_cols: &self.key_cols,
            order_cols: &self.order_cols,
        };
        let next = self.held.next_winners(&codec)?;
        if next.is_none() {
            self.counts.duplicates += self.held.duplicates();
            if self.held.spilled > 0 {
                tracing::info!(
                    "held-back rows of repeated keys: {} of them, {} MiB written to disk \
                     in all, {} winners",
                    self.held.rows(),
                    self.held.spilled >> 20,
                    self.held.rows() - self.held.duplicates()
                );
            }
            self.held = HoldBack::new(0, None);
        }
        Ok(next)
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
                let keys = named_columns(&data, dedup.keys.iter())?;
                let orders = named_columns(&data, dedup.order_by.iter().map(|o| &o.column))?;
                if self.key_converter.is_none() {
                    self.key_converter = Some(key_converter(&keys)?);
                    self.order_converter = Some(order_converter(&orders, dedup)?);
                }
                match (&self.key_converter, &self.order_converter) {
                    // Held rows' ordering values are encoded once held.
                    (Some(kc), Some(_)) if index.holds_back() => {
                        (Some(kc.convert_columns(&keys)?), None)
                    }
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
        // Each quarantined row and the rule it failed, in row order.
        let mut quarantined: Vec<(u32, usize)> = Vec::new();
        let mut held: Vec<u32> = Vec::new();
        for i in 0..n {
            let failed_rule = rule
                .as_ref()
                .and_then(|r| (!r.is_null(i)).then(|| r.value(i)));
            match failed_rule {
                None => {
                    let mut winner = true;
                    let mut hold = false;
                    if let (Some(keys), Some(index)) = (&key_rows, &self.index)
                        && index.holds_back()
                    {
                        hold = index.is_repeated(keys.row(i).as_ref());
                        winner = !hold;
                    } else if let (Some(keys), Some(orders), Some(index)) =
                        (&key_rows, &order_rows, &self.index)
                    {
                        let key = keys.row(i);
                        if let Some(versions) = index.get(key.as_ref()) {
                            let best: Option<&[u8]> = if global {
                                (versions.chunk == self.chunk_index).then_some(versions.order)
                            } else {
                                versions.best_in(self.chunk_index)
                            };
                            let best_row = best.is_some_and(|b| b == orders.row(i).as_ref());
                            if best_row && versions.tied_in(self.chunk_index) {
                                // Which of the tied rows comes first depends
                                // on the read order: hold them, keep the one
                                // whose row hashes lowest when the chunk ends.
                                hold = true;
                                winner = false;
                            } else {
                                winner = best_row && self.emitted.insert(key.as_ref().into());
                            }
                        }
                    }
                    if hold {
                        held.push(i as u32);
                    } else if !winner {
                        self.counts.duplicates += 1;
                    }
                    keep.push(winner);
                }
                Some(r) => {
                    keep.push(false);
                    let index = usize::try_from(r).ok();
                    let spec = index.and_then(|r| self.rules.get(r).map(|s| (r, s)));
                    let Some((index, spec)) = spec else {
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
                            quarantined.push((i as u32, index));
                        }
                        RuleAction::Drop => {
                            self.counts.dropped += 1;
                            self.counts.per_rule.entry(name).or_default().dropped += 1;
                        }
                        RuleAction::Fail => {
                            let example = self.example_key(&data, i);
                            let entry = self.counts.failed.entry(name).or_default();
                            entry.0 += 1;
                            if entry.1.len() < 5 {
                                entry.1.push(example);
                            }
                        }
                    }
                }
            }
        }
        if let (false, Some(keys)) = (held.is_empty(), &key_rows) {
            self.hold(&data, keys, &held)?;
        }
        let target = if keep.iter().all(|&k| k) {
            Some(data.clone())
        } else if keep.iter().any(|&k| k) {
            Some(filter_record_batch(&data, &BooleanArray::from(keep))?)
        } else {
            None
        };
        // The quarantine's own columns are built for its rows only: a batch
        // usually sends a handful of its thousands of rows there.
        let quarantine = if quarantined.is_empty() {
            None
        } else {
            let rows = UInt32Array::from_iter_values(quarantined.iter().map(|&(row, _)| row));
            let rows = take_record_batch(&data, &rows)?;
            let rules = StringArray::from_iter_values(
                quarantined
                    .iter()
                    .map(|&(_, r)| self.rules[r].name.as_str()),
            );
            Some(add_quarantine_columns(
                &rows,
                Arc::new(rules),
                &self.chunk_id,
                self.run_id,
            )?)
        };
        Ok(Split {
            data,
            target,
            quarantine,
        })
    }
}

/// The columns of `batch` named `names`, in that order.
fn named_columns<'a>(
    batch: &RecordBatch,
    names: impl Iterator<Item = &'a String>,
) -> Result<Vec<ArrayRef>, DataFusionError> {
    names
        .map(|name| Ok(batch.column(batch.schema().index_of(name)?).clone()))
        .collect()
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
