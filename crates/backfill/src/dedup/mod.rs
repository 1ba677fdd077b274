//! Global dedup: the keys met more than once over the whole job range, and
//! for each the winning version, so that every chunk keeps exactly the
//! winners among its rows without sorting and without seeing the others.
//!
//! Dedup never sorts a chunk. Before the chunks run, two passes over the
//! whole job range find the keys that occur more than once (about 2% of rows
//! on the demo data): the first reads only the key columns and finds the
//! hashes of the repeated keys exactly, spilling to disk rather than growing
//! ([`repeats`]); the second reads the key, ordering, range and rule
//! columns of the rows with those hashes, and [`DedupIndex::build`] keeps
//! each key's best ordering values per chunk and overall. A passing row
//! whose key is not in the index is the only
//! version of its key and is kept; otherwise it is kept only if it carries
//! the winning values (and, for global scope, lives in the winning chunk;
//! ties go to the lowest chunk, then to the first row seen). Chunks stay
//! independent and parallel, and memory does not grow with the chunk. The
//! index is saved in the state directory, one section per chunk, and each
//! chunk loads only its own ([`saved`]); it is rebuilt when
//! the source, transform, rules, dedup or range change. A job of one chunk
//! skips the index: the chunk holds back the rows of repeated keys
//! ([`holdback`]) and keeps each key's best at its end.
//!
//! - [`hash`]: the key and row hashes the others share;
//! - [`repeats`]: the first pass's repeated key hashes;
//! - [`index`]: the index, its build from the second pass, its fingerprint;
//! - [`saved`]: the index on disk in per-chunk sections, and its build in
//!   parts within a memory budget;
//! - [`holdback`]: a one-chunk job's held rows, spilled by key hash;
//! - the passes are put together for a run or `validate` by
//!   `runner::dedup_index`, until the runner is split by job.

pub mod hash;
pub(crate) mod holdback;
pub mod index;
pub mod repeats;
pub mod saved;

pub use index::{DedupIndex, index_fingerprint};
pub use saved::{ChunkIndexes, SavedIndex};
