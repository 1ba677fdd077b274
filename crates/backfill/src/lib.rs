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

pub mod cancel;
pub mod dedup;
pub mod demo;
pub mod engine;
pub mod error;
pub mod evolve;
pub mod gaps;
pub mod hive;
pub mod memory;
pub mod pg;
pub mod placement;
pub mod predicate;
pub mod progress;
pub mod quality;
pub mod redact;
pub mod report;
pub mod runner;
pub mod sink;
pub mod source;
pub mod store;
pub mod validate;

pub use backfill_core as core;
pub use backfill_core::failpoint;
pub use cancel::Cancel;
pub use error::{ChunkError, Error};
pub use progress::ProgressMode;
pub use runner::{Backfill, FailedChunk, PlannedChunk, Recovery, RunOptions, RunSummary};
pub use validate::{ValidateOptions, ValidateReport};
