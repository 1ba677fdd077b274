//! The light core of `backfill`: the job file, the planner, the state stores
//! (SQLite, and PostgreSQL with the `postgres` feature the engine crate
//! turns on) and the retry policy. No Arrow, no DataFusion: its tests link
//! in seconds.

pub mod failpoint;
pub mod interval;
#[cfg(feature = "postgres")]
pub mod pgtls;
pub mod plan;
pub mod retry;
pub mod spec;
pub mod state;

pub use interval::{ChunkSize, RangeValue, ValueKind};
pub use plan::{Chunk, PlanError, fingerprint, plan};
pub use retry::{ErrorClass, RetryPolicy, error_chain};
pub use spec::{JobSpec, SpecError};
pub use state::{
    ChunkMetrics, ChunkRecord, ChunkStatus, RuleCount, SqliteStateStore, StateError, StateStore,
};
