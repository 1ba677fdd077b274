//! `backfill`: checkpointed, parallel, exactly-once historical data backfills.
//!
//! A job file describes a source, a range split into chunks, a transform and
//! a target. Each chunk is read with its range predicate pushed into the
//! scan, transformed with DataFusion SQL, written under names readers skip,
//! committed in the state store, then published; a crash at any point is
//! repaired by the next run.
//!
//! ```no_run
//! use backfill::{Backfill, RunOptions};
//!
//! # async fn demo() -> Result<(), backfill::Error> {
//! let job = Backfill::from_file("backfill.toml")?;
//! for c in job.plan().await? {
//!     println!("{} {} {}", c.chunk.id, c.chunk.bounds(), c.status);
//! }
//! let summary = job.run_with(RunOptions { parallelism: Some(4), ..Default::default() }).await?;
//! assert!(summary.failed.is_empty());
//! # Ok(()) }
//! ```

// The public API is what is re-exported below, plus the modules the CLI
// and tests build on (the demo generator, `gaps`, progress output, redaction,
// reports). Everything else is the engine's own and may change.
mod bucket;
mod cancel;
mod dedup;
pub mod demo;
mod engine;
mod error;
mod evolve;
pub mod gaps;
mod hive;
mod local_time;
mod memory;
mod pg;
mod placement;
mod predicate;
pub mod progress;
mod quality;
pub mod redact;
pub mod report;
mod runner;
mod sink;
mod source;
mod store;
mod validate;

pub use backfill_core as core;
pub use backfill_core::failpoint;
pub use cancel::Cancel;
pub use error::{ChunkError, EngineError, Error};
pub use progress::ProgressMode;
pub use runner::{
    Backfill, FailedChunk, Plan, PlannedChunk, PlannedPartition, Recovery, RunOptions, RunSummary,
};
/// The row checksum `validate` compares, for tools that check a target
/// independently.
pub use sink::checksum;
pub use sink::{QUARANTINE_PREFIX, partition_seed};
pub use validate::{ChunkCheck, GroupCheck, Tally, ValidateOptions, ValidateReport};
