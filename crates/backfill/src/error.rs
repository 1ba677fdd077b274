//! Errors of the engine. Each says what failed and where; `exit_code` maps
//! them onto the CLI's contract (2: bad usage or job file, 1: anything else).

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
    #[cfg(feature = "spark")]
    #[error(transparent)]
    Spark(#[from] crate::spark::SparkError),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Spec(_) | Error::Job { .. } | Error::Usage(_) | Error::Plan(_) => 2,
            Error::State(StateError::RangeChanged { .. } | StateError::OtherJob { .. }) => 2,
            Error::Source(e) if e.is_configuration() => 2,
            _ => 1,
        }
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
    #[cfg(feature = "spark")]
    #[error(transparent)]
    Spark(#[from] crate::spark::SparkError),
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
            // The state store is local; a failure there is worth one more try.
            ChunkError::State(_) => ErrorClass::Transient,
            ChunkError::Injected(i) => i.class,
            #[cfg(feature = "spark")]
            ChunkError::Spark(e) => e.class(),
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
            } else {
                ErrorClass::Permanent
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// An error and its causes, each cause once: DataFusion and SQLite errors
/// often repeat their sources in their own message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
