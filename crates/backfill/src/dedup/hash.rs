//! The hashes dedup is built on: a key's (for the index, the repeated-key
//! pass and the Bloom filter) and a whole row's (the last tie-break between
//! versions). A leaf, so that the passes and the index share them without
//! importing each other.

use arrow::array::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::error::DataFusionError;

/// The hash of a key's row encoding.
pub fn key_hash(row: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(row)
}

/// Bits a key sets in its word of a blocked Bloom filter.
const BLOOM_PROBES: u32 = 3;

/// A key's word among `words` (a power of two) and the bits it sets there:
/// the low half of the hash picks the word, 6-bit slices of the high half
/// the bits, so a probe costs one cache miss.
pub(crate) fn bloom_probe(hash: u64, words: usize) -> (usize, u64) {
    let word = (hash as usize) & (words - 1);
    let high = hash >> 32;
    let bits = (0..BLOOM_PROBES).fold(0u64, |m, i| m | 1 << ((high >> (6 * i)) & 63));
    (word, bits)
}

/// A hash of each row of `batch`, all its columns (xxh3 of Arrow's row
/// format): the tie-break between versions that `order_by` ranks equal.
pub fn row_hashes(batch: &RecordBatch) -> Result<Vec<u64>, DataFusionError> {
    let fields: Vec<SortField> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let rows = RowConverter::new(fields)?.convert_columns(batch.columns())?;
    Ok(rows
        .iter()
        .map(|r| twox_hash::XxHash3_64::oneshot(r.as_ref()))
        .collect())
}
