//! The Spark engine behind [`Engine`]: opening it for a job (the transform
//! and rules checked in Spark's dialect, their errors put on the job file's
//! keys) and its errors classified where they arise.

use backfill_core::spec::SourceCompression;

use super::*;

impl From<SparkError> for EngineError {
    fn from(e: SparkError) -> Self {
        let class = e.class();
        EngineError::new(e, class)
    }
}

impl From<SparkError> for ChunkError {
    fn from(e: SparkError) -> Self {
        ChunkError::Engine(e.into())
    }
}

impl From<SparkError> for Error {
    fn from(e: SparkError) -> Self {
        Error::Engine(e.into())
    }
}

/// Connects to Spark and checks the transform and the rules there, in
/// Spark's dialect.
pub(crate) async fn open(
    spec: &JobSpec,
    s: &SparkSpec,
    schema: SchemaRef,
    range: Option<&RangeColumn>,
) -> Result<Opened, OpenError> {
    let job = |loc, key: &str, message| OpenError::Job {
        loc,
        key: key.into(),
        message,
    };
    // Spark picks a codec by each file's extension and has no setting for
    // files whose names say nothing.
    let c = spec.source.compression;
    if !matches!(c, SourceCompression::Auto | SourceCompression::None) {
        return Err(job(
            spec.source.path_loc,
            "source.compression",
            format!(
                "the Spark engine reads compressed files by their extension only; leave out compression = \"{}\" and name the files *{}",
                c.name(),
                c.extension()
            ),
        ));
    }
    match SparkJob::open(spec, schema, range.cloned()).await {
        Ok(j) => Ok(Opened {
            transformed: j.transformed.clone(),
            engine: Arc::new(j),
        }),
        Err(CheckError::Unsupported(m)) => Err(job(s.loc, "engine.kind", m)),
        Err(CheckError::Transform(e)) => {
            // A server that is down is not the job file's fault.
            if e.class() == backfill_core::ErrorClass::Transient {
                return Err(OpenError::Other(e.into()));
            }
            let loc = spec.transform.as_ref().map(|t| t.loc).unwrap_or(s.loc);
            Err(job(loc, "transform.sql", e.to_string()))
        }
        Err(CheckError::Rule(i, m)) => Err(job(
            spec.rules[i].check_loc,
            &format!("rules[{i}].check"),
            m,
        )),
        Err(CheckError::Source(e)) => Err(job(
            spec.source.path_loc,
            "source.path",
            format!("Spark cannot read the source: {e}"),
        )),
        Err(CheckError::Settings(e)) => Err(job(s.loc, "engine.conf", e.to_string())),
        Err(CheckError::Spark(e)) => Err(OpenError::Other(e.into())),
    }
}

#[async_trait::async_trait]
impl Engine for SparkJob {
    /// Spark keeps its winners' index on the cluster side.
    async fn prepare_dedup(
        &self,
        whole: &Chunk,
        fingerprint: &str,
        several_chunks: bool,
    ) -> Result<bool, Error> {
        self.prepare(whole, fingerprint, several_chunks).await?;
        Ok(true)
    }

    async fn execute_chunk(
        &self,
        query: &ChunkQuery<'_>,
        chunk: &Chunk,
        attempt: u32,
        target: &mut dyn ChunkWriter,
        quarantine: &mut dyn ChunkWriter,
    ) -> Result<ExecStats, ChunkError> {
        SparkJob::execute_chunk(self, chunk, attempt, query.run_id, target, quarantine).await
    }
}
