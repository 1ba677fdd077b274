//! How a chunk's rows are computed. Two engines are peers behind
//! [`Engine`]: the local one ([`local`], DataFusion in this process) and
//! Spark ([`spark`], a cluster over Spark Connect, built with the `spark`
//! feature). The runner plans, commits, retries and publishes the same way
//! whichever runs the chunk; it holds an `Arc<dyn Engine>` chosen here by
//! [`open`], and this module is the only place the `spark` feature decides
//! anything.
//!
//! `validate` and the dedup index passes always use the local engine: they
//! measure the source as this process reads it, whichever engine wrote.

pub mod local;
mod sorted;
#[cfg(feature = "spark")]
pub mod spark;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use backfill_core::plan::Chunk;
use backfill_core::spec::{JobSpec, Loc};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;

use crate::error::{ChunkError, Error};
use crate::predicate::RangeColumn;
use crate::quality::QualityCounts;
use crate::sink::ChunkWriter;
use local::ChunkQuery;

/// What executing a chunk measured, beside what its writers staged.
#[derive(Debug, Clone, Default)]
pub struct ExecStats {
    pub rows_read: u64,
    pub bytes_read: u64,
    pub quality: QualityCounts,
}

/// Runs chunks: reads a chunk's rows, transforms them, applies the rules and
/// dedup, and streams the kept and the quarantined rows into the writers.
#[async_trait]
pub(crate) trait Engine: Send + Sync {
    /// Called once per run before any chunk when the job dedups globally.
    /// `true` when the engine keeps the winners' index itself, so the
    /// runner builds none.
    async fn prepare_dedup(
        &self,
        whole: &Chunk,
        fingerprint: &str,
        several_chunks: bool,
    ) -> Result<bool, Error>;

    /// One attempt at one chunk. Nothing is committed here: on error the
    /// runner aborts the writers.
    async fn execute_chunk(
        &self,
        query: &ChunkQuery<'_>,
        chunk: &Chunk,
        attempt: u32,
        target: &mut dyn ChunkWriter,
        quarantine: &mut dyn ChunkWriter,
    ) -> Result<ExecStats, ChunkError>;
}

/// The local engine, DataFusion in this process.
pub(crate) struct Local;

#[async_trait]
impl Engine for Local {
    async fn prepare_dedup(&self, _: &Chunk, _: &str, _: bool) -> Result<bool, Error> {
        Ok(false)
    }

    async fn execute_chunk(
        &self,
        query: &ChunkQuery<'_>,
        chunk: &Chunk,
        _attempt: u32,
        target: &mut dyn ChunkWriter,
        quarantine: &mut dyn ChunkWriter,
    ) -> Result<ExecStats, ChunkError> {
        local::execute_chunk(query, chunk, target, quarantine).await
    }
}

/// Why a job cannot run on its engine.
pub(crate) enum OpenError {
    /// The job file's fault, at `key`.
    Job {
        loc: Loc,
        key: String,
        message: String,
    },
    /// Anything else: a server that is down, an I/O error.
    Other(Error),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Other(e)
    }
}

/// A job's engine, and the transform's output schema as that engine
/// computes it (the transform and the rules are checked on the way).
pub(crate) struct Opened {
    pub engine: Arc<dyn Engine>,
    pub transformed: SchemaRef,
}

/// Opens the engine `[engine]` names for a job whose source has `schema`.
pub(crate) async fn open(
    spec: &JobSpec,
    schema: SchemaRef,
    range: Option<&RangeColumn>,
    lookups: &crate::source::Lookups,
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
) -> Result<Opened, OpenError> {
    if let Some(s) = &spec.engine.spark {
        if !spec.tables.is_empty() {
            return Err(OpenError::Job {
                loc: s.loc,
                key: "engine.kind".into(),
                message:
                    "[[tables]] (lookup tables) are read by the local engine only, not yet on Spark"
                        .into(),
            });
        }
        #[cfg(feature = "spark")]
        return spark::open(spec, s, schema, range).await;
        #[cfg(not(feature = "spark"))]
        return Err(OpenError::Job {
            loc: s.loc,
            key: "engine.kind".into(),
            message: "this backfill was built without the Spark engine; build it with `cargo build --release --features spark` (needs protoc, Debian's protobuf-compiler)".into(),
        });
    }
    let _ = range;
    let sql = spec.transform.as_ref().map(|t| t.sql.as_str());
    let transformed = local::check_transform(schema, sql, lookups, config, runtime)
        .await
        .map_err(|e| OpenError::Job {
            loc: spec.transform.as_ref().map(|t| t.loc).unwrap_or_default(),
            key: "transform.sql".into(),
            message: e.to_string(),
        })?;
    for (i, rule) in spec.rules.iter().enumerate() {
        local::check_rule(transformed.clone(), &rule.check, config, runtime)
            .await
            .map_err(|e| OpenError::Job {
                loc: rule.check_loc,
                key: format!("rules[{i}].check"),
                message: e.to_string(),
            })?;
    }
    Ok(Opened {
        engine: Arc::new(Local),
        transformed,
    })
}

/// A chunk fails when a `fail` rule caught rows, or when more rows were
/// rejected than `quarantine.max_ratio` allows; both engines ask this after
/// counting and before publishing.
pub(crate) fn quality_verdict(spec: &JobSpec, counts: &QualityCounts) -> Result<(), ChunkError> {
    if let Some((rule, (count, examples))) = counts.failed.iter().next() {
        return Err(ChunkError::RuleFailed {
            rule: rule.clone(),
            count: *count,
            examples: examples.join("; "),
        });
    }
    if let Some(max) = spec.quarantine.max_ratio {
        let rejected = counts.quarantined + counts.dropped;
        if counts.rows_in > 0 && rejected as f64 > max * counts.rows_in as f64 {
            let detail = counts
                .per_rule
                .iter()
                .map(|(r, c)| format!("{r}: {}", c.quarantined + c.dropped))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ChunkError::TooManyRejected {
                rejected,
                rows: counts.rows_in,
                max,
                detail,
            });
        }
    }
    Ok(())
}
