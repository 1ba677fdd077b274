//! Errors of the engine. Each says what failed and where; `is_usage` tells
//! the job file's faults from the rest (the CLI turns that into its exit
//! code).

use std::path::PathBuf;

use backfill_core::spec::Loc;
use backfill_core::{ErrorClass, PlanError, SpecError, StateError};
use datafusion::error::DataFusionError;

use crate::failpoint::Injected;
use crate::sink::SinkError;
use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A job file that parses but does not fit the data (a range column that
    /// is missing or of the wrong type).
    #[error("{}:{loc}: {key}: {message}", file.display())]
    Job {
        file: PathBuf,
        loc: Loc,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("{0}")]
    Query(#[from] DataFusionError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Error {
    /// The job file or the command line is at fault, so nothing ran and
    /// running again unchanged cannot help (the CLI exits with 2).
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Spec(_) | Error::Job { .. } | Error::Usage(_) | Error::Plan(_) => true,
            Error::State(StateError::RangeChanged { .. } | StateError::OtherJob { .. }) => true,
            Error::Source(e) => e.is_configuration(),
            _ => false,
        }
    }
}

/// A failure of an execution engine other than DataFusion itself (Spark
/// Connect), classified by the engine where it arose. Boxed so that this
/// module names no engine: the engines build on these errors, not the
/// other way round.
#[derive(Debug)]
pub struct EngineError {
    error: Box<dyn std::error::Error + Send + Sync>,
    pub class: ErrorClass,
}

impl EngineError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static, class: ErrorClass) -> Self {
        EngineError {
            error: Box::new(error),
            class,
        }
    }

    /// The engine's own error, for a caller that knows the engine.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

// Transparent: the engine's error speaks for itself, causes included.
impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// Why one chunk attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{0}")]
    Query(#[source] DataFusionError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Injected(#[from] Injected),
    #[error("interrupted")]
    Interrupted,
    /// A bug: the chunk's attempt panicked. Not retried.
    #[error("internal error, please report it: the chunk's attempt panicked: {0}")]
    Panicked(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("rule \"{rule}\" (action = \"fail\") failed for {count} row(s), e.g. {examples}")]
    RuleFailed {
        rule: String,
        count: u64,
        examples: String,
    },
    #[error(
        "{rejected} of {rows} rows were rejected, more than quarantine.max_ratio = {max} ({detail})"
    )]
    TooManyRejected {
        rejected: u64,
        rows: u64,
        max: f64,
        detail: String,
    },
}

impl From<DataFusionError> for ChunkError {
    fn from(e: DataFusionError) -> Self {
        ChunkError::Query(e)
    }
}

impl ChunkError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ChunkError::Query(e) => classify_datafusion(e),
            ChunkError::Sink(e) => e.class(),
            ChunkError::State(e) => e.class(),
            ChunkError::Injected(i) => i.class,
            ChunkError::Engine(e) => e.class,
            ChunkError::Interrupted
            | ChunkError::Panicked(_)
            | ChunkError::RuleFailed { .. }
            | ChunkError::TooManyRejected { .. } => ErrorClass::Permanent,
        }
    }
}

/// I/O and object-store failures may pass; planning, SQL and schema errors won't.
pub fn classify_datafusion(e: &DataFusionError) -> ErrorClass {
    match e.find_root() {
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => ErrorClass::Transient,
        DataFusionError::ArrowError(a, _)
            if matches!(**a, arrow::error::ArrowError::IoError(..)) =>
        {
            ErrorClass::Transient
        }
        DataFusionError::External(inner) => {
            if inner.downcast_ref::<std::io::Error>().is_some() {
                ErrorClass::Transient
            } else if let Some(i) = inner.downcast_ref::<Injected>() {
                i.class
            } else if let Some(s) = inner.downcast_ref::<SinkError>() {
                s.class()
            } else if let Some(p) = inner.downcast_ref::<crate::pg::PgError>() {
                p.class()
            } else if let Some(k) = inner.downcast_ref::<crate::source::kafka::KafkaError>() {
                k.class()
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_failing_in_its_state_store_is_retried_only_when_the_store_says_so() {
        // Issue 21: every state error was retried, "the state store is
        // local", untrue since PostgreSQL state.
        let corrupt = ChunkError::State(StateError::Corrupt("bad record".into()));
        assert_eq!(corrupt.class(), ErrorClass::Permanent);
        let lost = ChunkError::State(StateError::Remote {
            store: "postgres://h/db".into(),
            message: "connection closed".into(),
            class: ErrorClass::Transient,
        });
        assert_eq!(lost.class(), ErrorClass::Transient);
    }
}
