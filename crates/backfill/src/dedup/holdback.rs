//! The rows of repeated keys that a chunk holds back until it has seen
//! every version of them, in bounded memory.
//!
//! A job of one chunk (and a chunk whose best versions tie) cannot tell a
//! key's winner while rows still arrive, so it holds the key's passing rows
//! and keeps the best when the chunk ends. On a change-log-like source most
//! rows belong to such keys. [`HoldBack`] keeps only what can still win:
//! when its rows outgrow their share of `[run] memory_limit` it drops every
//! row that is no longer its key's best. When even the best rows fill half
//! the share, it spills: from then on held rows go to bucket files on disk
//! by their key's hash, and the chunk's end reduces one bucket at a time (a
//! bucket that is still too large is split again, by other bits of the
//! hash). A key's rows all land in one bucket, so each bucket's best rows
//! are the winners.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take_record_batch};
use arrow::datatypes::DataType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, Rows};
use datafusion::error::DataFusionError;
use std::sync::Arc;

use super::hash::{key_hash, row_hashes};

/// Bucket files one spill writes; a key's bucket is 6 bits of its hash.
const BUCKET_BITS: u32 = 6;
const BUCKETS: usize = 1 << BUCKET_BITS;

/// How the held rows' keys and ordering values are encoded (the chunk's
/// splitter owns the converters).
pub(crate) struct Codec<'a> {
    pub keys: &'a RowConverter,
    pub orders: &'a RowConverter,
    pub key_cols: &'a [String],
    pub order_cols: &'a [String],
}

impl Codec<'_> {
    fn keys_of(&self, batch: &RecordBatch) -> Result<Rows, DataFusionError> {
        Ok(self.keys.convert_columns(&columns(batch, self.key_cols)?)?)
    }

    fn orders_of(&self, batch: &RecordBatch) -> Result<Rows, DataFusionError> {
        Ok(self
            .orders
            .convert_columns(&columns(batch, self.order_cols)?)?)
    }
}

fn columns(batch: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, DataFusionError> {
    names
        .iter()
        .map(|n| Ok(batch.column(batch.schema().index_of(n)?).clone()))
        .collect()
}

/// Ordering values, the whole row's hash (the tie-break) and where the row
/// is: (batch, row) in [`InMemory::batches`].
type Best = (Box<[u8]>, u64, u32, u32);

/// Bytes a key's entry in the best map takes beside its key and ordering
/// values.
const ENTRY_BYTES: usize = 64;

#[derive(Default)]
struct InMemory {
    batches: Vec<RecordBatch>,
    best: HashMap<Box<[u8]>, Best>,
    bytes: usize,
}

impl InMemory {
    /// Adds the rows of `held`, whose keys are `keys.row(rows[j])` and
    /// ordering values `orders.row(j)`.
    fn add(
        &mut self,
        held: RecordBatch,
        keys: &Rows,
        rows: &[u32],
        orders: &Rows,
    ) -> Result<(), DataFusionError> {
        let hashes = row_hashes(&held)?;
        let b = u32::try_from(self.batches.len())
            .map_err(|_| DataFusionError::Execution("too many held batches".into()))?;
        for (j, &i) in rows.iter().enumerate() {
            let key = keys.row(i as usize);
            let order = orders.row(j);
            let hash = hashes[j];
            // A total order: ordering values first, then the whole row's
            // hash, so a tie goes to the same row in every run.
            match self.best.get_mut(key.as_ref()) {
                Some(best) if (order.as_ref(), hash) < (best.0.as_ref(), best.1) => {
                    *best = (order.as_ref().into(), hash, b, j as u32);
                }
                Some(_) => {}
                None => {
                    self.bytes += key.as_ref().len() + order.as_ref().len() + ENTRY_BYTES;
                    self.best.insert(
                        key.as_ref().into(),
                        (order.as_ref().into(), hash, b, j as u32),
                    );
                }
            }
        }
        self.bytes += held.get_array_memory_size();
        self.batches.push(held);
        Ok(())
    }

    /// Every key's best row, in the order they were met.
    fn winners(&self) -> Result<Option<RecordBatch>, DataFusionError> {
        if self.best.is_empty() {
            return Ok(None);
        }
        let mut at: Vec<(usize, usize)> = self
            .best
            .values()
            .map(|&(_, _, b, r)| (b as usize, r as usize))
            .collect();
        at.sort_unstable();
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        Ok(Some(interleave_record_batch(&batches, &at)?))
    }

    /// Keeps only the best rows, as one batch in the order they were met.
    fn compact(&mut self) -> Result<(), DataFusionError> {
        let mut entries: Vec<(Box<[u8]>, Best)> = self.best.drain().collect();
        entries.sort_unstable_by_key(|(_, best)| (best.2, best.3));
        let at: Vec<(usize, usize)> = entries
            .iter()
            .map(|(_, best)| (best.2 as usize, best.3 as usize))
            .collect();
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        let winners = interleave_record_batch(&batches, &at)?;
        let mut bytes = winners.get_array_memory_size();
        for (row, (key, (order, hash, _, _))) in entries.into_iter().enumerate() {
            bytes += key.len() + order.len() + ENTRY_BYTES;
            self.best.insert(key, (order, hash, 0, row as u32));
        }
        self.batches = vec![winners];
        self.bytes = bytes;
        Ok(())
    }

    fn take(&mut self) -> InMemory {
        std::mem::take(self)
    }
}

/// A bucket file waiting to be reduced, and the hash bits it splits by if
/// it has to spill again.
pub(crate) struct Pending {
    pub path: PathBuf,
    pub level: u32,
}

/// A key's bucket at `level`: each level reads other bits of the hash.
fn bucket(key: &[u8], level: u32) -> usize {
    (key_hash(key).rotate_left(level * BUCKET_BITS) >> (64 - BUCKET_BITS)) as usize
}

/// After this many levels the hash has no unread bits left; a bucket that
/// still does not fit is reduced in memory (it cannot be a single key's,
/// whose rows compact to one).
pub(crate) const MAX_LEVEL: u32 = 64 / BUCKET_BITS - 1;

/// Rows on disk, one Arrow IPC stream per bucket of their keys' hashes.
pub(crate) struct Spill {
    dir: PathBuf,
    name: u32,
    level: u32,
    files: Vec<Option<(PathBuf, StreamWriter<BufWriter<File>>)>>,
}

impl Spill {
    pub fn new(dir: &Path, name: u32, level: u32) -> Spill {
        Spill {
            dir: dir.to_path_buf(),
            name,
            level,
            files: (0..BUCKETS).map(|_| None).collect(),
        }
    }

    /// Appends the rows of `held` to their keys' buckets (the key of its
    /// row `j` is `keys.row(rows[j])`).
    pub fn write(
        &mut self,
        held: &RecordBatch,
        keys: &Rows,
        rows: &[u32],
    ) -> Result<(), DataFusionError> {
        let mut by_bucket: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
        for (j, &i) in rows.iter().enumerate() {
            by_bucket[bucket(keys.row(i as usize).as_ref(), self.level)].push(j as u32);
        }
        for (b, idx) in by_bucket.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            // A view column's rows point into buffers shared with the
            // whole batch, and IPC writes those buffers whole: uncompacted,
            // every bucket's file got all of the batch's strings (a
            // 4.6M-row change log wrote 250 GB).
            let part = compact_views(&if idx.len() == held.num_rows() {
                held.clone()
            } else {
                take_record_batch(held, &UInt32Array::from(idx))?
            })?;
            if self.files[b].is_none() {
                let path = self
                    .dir
                    .join(format!("rows-{}-{}-{b}.arrows", self.name, self.level));
                let file = File::create_new(&path)?;
                let writer = StreamWriter::try_new(BufWriter::new(file), &held.schema())?;
                self.files[b] = Some((path, writer));
            }
            if let Some((_, w)) = &mut self.files[b] {
                w.write(&part)?;
            }
        }
        Ok(())
    }

    /// Closes the bucket files; returns them to be read back, and the
    /// bytes they take on disk.
    pub fn close(self) -> Result<(Vec<Pending>, u64), DataFusionError> {
        let mut pending = Vec::new();
        let mut bytes = 0;
        for (path, mut w) in self.files.into_iter().flatten() {
            w.finish()?;
            let file = w.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            bytes += file.metadata()?.len();
            pending.push(Pending {
                path,
                level: self.level + 1,
            });
        }
        Ok((pending, bytes))
    }
}

/// The held rows of one chunk: in memory up to `budget` bytes, then on disk.
pub(crate) struct HoldBack {
    budget: usize,
    /// Where a spill directory is made when needed; `None` never spills.
    spill_root: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
    spills: u32,
    level: u32,
    mem: InMemory,
    spill: Option<Spill>,
    pending: Vec<Pending>,
    rows_in: u64,
    won: u64,
    /// Bytes written to spill files, at every level.
    pub spilled: u64,
}

impl HoldBack {
    pub fn new(budget: usize, spill_root: Option<PathBuf>) -> HoldBack {
        HoldBack {
            budget,
            spill_root,
            dir: None,
            spills: 0,
            level: 0,
            mem: InMemory::default(),
            spill: None,
            pending: Vec::new(),
            rows_in: 0,
            won: 0,
            spilled: 0,
        }
    }

    /// Rows held so far.
    pub fn rows(&self) -> u64 {
        self.rows_in
    }

    /// Rows held that did not win, once [`HoldBack::next_winners`] has
    /// returned `None`.
    pub fn duplicates(&self) -> u64 {
        self.rows_in - self.won
    }

    /// Holds the rows of `held`; the key of its row `j` is
    /// `keys.row(rows[j])`.
    pub fn hold(
        &mut self,
        held: RecordBatch,
        keys: &Rows,
        rows: &[u32],
        codec: &Codec,
    ) -> Result<(), DataFusionError> {
        self.rows_in += rows.len() as u64;
        self.add(held, keys, rows, codec)
    }

    fn add(
        &mut self,
        held: RecordBatch,
        keys: &Rows,
        rows: &[u32],
        codec: &Codec,
    ) -> Result<(), DataFusionError> {
        if let Some(spill) = &mut self.spill {
            spill.write(&held, keys, rows)?;
            return Ok(());
        }
        let orders = codec.orders_of(&held)?;
        self.mem.add(held, keys, rows, &orders)?;
        if self.mem.bytes > self.budget {
            self.mem.compact()?;
            if self.mem.bytes > self.budget / 2 && self.level < MAX_LEVEL {
                self.start_spill(codec)?;
            }
        }
        Ok(())
    }

    /// Moves what is in memory to a new spill, where the rest will go too.
    fn start_spill(&mut self, codec: &Codec) -> Result<(), DataFusionError> {
        let Some(root) = &self.spill_root else {
            return Ok(());
        };
        if self.dir.is_none() {
            self.dir = Some(super::repeats::spill_dir(root)?);
            tracing::info!(
                "held-back rows of repeated keys passed {} KiB; spilling them to {}",
                self.budget >> 10,
                root.display()
            );
        }
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut spill = Spill::new(dir.path(), self.spills, self.level);
        self.spills += 1;
        for batch in self.mem.take().batches {
            let keys = codec.keys_of(&batch)?;
            let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
            spill.write(&batch, &keys, &rows)?;
        }
        self.spill = Some(spill);
        Ok(())
    }

    /// The next batch of winners once the chunk's last row is held: all of
    /// them when nothing spilled, else one bucket's. `None` when done.
    pub fn next_winners(&mut self, codec: &Codec) -> Result<Option<RecordBatch>, DataFusionError> {
        loop {
            if let Some(spill) = self.spill.take() {
                let (pending, bytes) = spill.close()?;
                self.pending.extend(pending);
                self.spilled += bytes;
            }
            if let Some(winners) = self.mem.take().winners()? {
                self.won += winners.num_rows() as u64;
                return Ok(Some(winners));
            }
            let Some(next) = self.pending.pop() else {
                return Ok(None);
            };
            self.level = next.level;
            let file = File::open(&next.path)?;
            for batch in StreamReader::try_new(BufReader::new(file), None)? {
                let batch = batch?;
                let keys = codec.keys_of(&batch)?;
                let rows: Vec<u32> = (0..batch.num_rows() as u32).collect();
                self.add(batch, &keys, &rows, codec)?;
            }
            std::fs::remove_file(&next.path)?;
        }
    }
}

/// `batch` with its string and binary view columns copied into buffers of
/// their own.
pub(crate) fn compact_views(batch: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as ArrayRef,
            _ => c.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Int64Array, StringViewArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use arrow::row::SortField;
    use datafusion::arrow::compute::SortOptions;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    /// Rows (key, version, payload) in batches of 100; each key has up to
    /// five versions, some tied.
    fn batches(seed: u64, rows: usize) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
            Field::new("p", DataType::Utf8View, false),
        ]));
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let all: Vec<(i64, Option<i64>, String)> = (0..rows)
            .map(|_| {
                let r = next();
                let v = (r % 7 != 0).then_some(((r >> 8) % 5) as i64);
                (
                    (r >> 20) as i64 % (rows as i64 / 3),
                    v,
                    // Longer than 12 bytes: kept in the view's buffers.
                    format!("payload number {}", r % 1000),
                )
            })
            .collect();
        all.chunks(100)
            .map(|c| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                        Arc::new(Int64Array::from_iter(c.iter().map(|r| r.1))),
                        Arc::new(StringViewArray::from_iter_values(
                            c.iter().map(|r| r.2.as_str()),
                        )),
                    ],
                )
                .expect("batch")
            })
            .collect()
    }

    type Row = (i64, Option<i64>, String);

    fn winners(budget: usize, input: &[RecordBatch]) -> (BTreeSet<Row>, u64, u64) {
        let spill = tempfile::tempdir().expect("temp dir");
        let keys = RowConverter::new(vec![SortField::new(DataType::Int64)]).expect("keys");
        let orders = RowConverter::new(vec![SortField::new_with_options(
            DataType::Int64,
            SortOptions {
                descending: true,
                nulls_first: false,
            },
        )])
        .expect("orders");
        let key_cols = ["k".to_string()];
        let order_cols = ["v".to_string()];
        let codec = Codec {
            keys: &keys,
            orders: &orders,
            key_cols: &key_cols,
            order_cols: &order_cols,
        };
        let mut held = HoldBack::new(budget, Some(spill.path().to_path_buf()));
        for b in input {
            let k = codec.keys_of(b).expect("keys");
            let rows: Vec<u32> = (0..b.num_rows() as u32).collect();
            held.hold(b.clone(), &k, &rows, &codec).expect("hold");
        }
        let mut out = BTreeSet::new();
        let mut seen = BTreeSet::new();
        while let Some(w) = held.next_winners(&codec).expect("winners") {
            let k = w.column(0).as_primitive::<Int64Type>();
            let v = w.column(1).as_primitive::<Int64Type>();
            let p = w.column(2).as_string_view();
            for i in 0..w.num_rows() {
                let row = (
                    k.value(i),
                    (!v.is_null(i)).then(|| v.value(i)),
                    p.value(i).to_string(),
                );
                assert!(out.insert(row), "a winner came out twice");
                assert!(
                    seen.insert(k.value(i)),
                    "two winners for key {}",
                    k.value(i)
                );
            }
        }
        (out, held.duplicates(), held.spilled)
    }

    #[test]
    fn spilling_keeps_the_same_winners() {
        for seed in [1, 2, 3, 99] {
            let input = batches(seed, 6_000);
            let (all, dups, spilled) = winners(usize::MAX, &input);
            assert_eq!(spilled, 0);
            assert_eq!(dups + all.len() as u64, 6_000);
            // Small enough to spill, and to spill again while reducing a
            // bucket (the winners alone are ~100 KiB).
            for budget in [64 << 10, 2 << 10] {
                let (got, d, spilled) = winners(budget, &input);
                assert!(spilled > 0, "seed {seed}, budget {budget}: nothing spilled");
                // Each level writes each held row once (with a message
                // header per bucket and batch): about 1.5 times the input
                // per level here. When a bucket's part kept the whole
                // batch's string buffers it was 40 to 100 times.
                let input_bytes: usize = input.iter().map(|b| b.get_array_memory_size()).sum();
                assert!(
                    spilled < 8 * input_bytes as u64,
                    "seed {seed}, budget {budget}: {spilled} bytes spilled for {input_bytes}"
                );
                assert_eq!(got, all, "seed {seed}, budget {budget}");
                assert_eq!(d, dups, "seed {seed}, budget {budget}");
            }
        }
    }
}
