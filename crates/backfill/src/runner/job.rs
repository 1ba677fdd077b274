//! Opening a job: binding it to its source's schema, its sinks and its
//! state store (which must be this job's), and planning its chunks.

use super::*;

/// A job opened against its source: the schema is checked, the plan made.
pub(crate) struct OpenJob {
    pub spec: JobSpec,
    pub source: Arc<dyn Source>,
    /// `[[tables]]`, which the transform may join, and its `local_time()`.
    pub lookups: source::Lookups,
    pub sinks: Sinks,
    /// The transform's output schema.
    pub transformed: arrow::datatypes::SchemaRef,
    pub range: Option<RangeColumn>,
    pub chunks: Vec<Chunk>,
    /// A Kafka job's offsets per partition, which its state records.
    pub kafka_spans: Option<Vec<plan::PartitionSpan>>,
    pub config: SessionConfig,
    pub runtime: Arc<RuntimeEnv>,
    /// `[run] memory_limit`, resolved.
    pub memory: crate::memory::Memory,
    /// What runs the chunks ([`crate::engine`]).
    pub engine: Arc<dyn Engine>,
}

impl Backfill {
    /// Compares the transformed rows' columns with the target's under
    /// `[target] schema` and evolves the target (and a database quarantine)
    /// when the mode accepts the difference. Nothing is written otherwise.
    pub(crate) async fn check_schema(&self, job: &OpenJob) -> Result<(), Error> {
        let target = &job.sinks.target;
        let ctx = SessionContext::new_with_config_rt(job.config.clone(), job.runtime.clone());
        let Some(current) = target.current_schema(&ctx).await? else {
            return Ok(());
        };
        let mut diff = crate::evolve::diff(&current, &job.transformed, &target.derived_columns());
        if target.casts_on_insert() {
            diff.changed
                .retain(|(_, _, _, c)| *c == crate::evolve::Change::Widen);
        }
        let mode = job.spec.target.schema;
        if let Some(message) = crate::evolve::refused(mode, &diff) {
            return Err(self.job_error(job.spec.target.schema_loc, "target.schema", message));
        }
        if diff.is_empty() {
            return Ok(());
        }
        tracing::info!(
            "evolving the target's schema (schema = \"{}\"):\n{}",
            mode.name(),
            diff.render().trim_end()
        );
        target.evolve(&job.transformed, &diff).await?;
        job.sinks.quarantine.evolve(&job.transformed, &diff).await?;
        Ok(())
    }

    /// A path that is missing or holds nothing readable is the job
    /// file's fault, at the key (`key`, `loc`) that names it.
    fn source_error(
        &self,
        loc: backfill_core::spec::Loc,
        key: &str,
        e: source::SourceError,
    ) -> Error {
        if e.is_configuration() {
            self.job_error(loc, key, e.to_string())
        } else {
            e.into()
        }
    }

    pub(crate) fn job_error(
        &self,
        loc: backfill_core::spec::Loc,
        key: &str,
        message: String,
    ) -> Error {
        Error::Job {
            file: self.spec.file.clone(),
            loc,
            key: key.to_string(),
            message,
        }
    }

    /// Opens the source and checks the job against its schema: the range
    /// column exists and has the right type, the transform plans, the
    /// partition columns exist. Errors point at the job file's lines.
    pub(crate) async fn open(&self) -> Result<OpenJob, Error> {
        let mut config = engine::local::session_config();
        let memory = crate::memory::Memory::resolve(self.spec.run.memory_limit);
        // A sort that spills (`[target] sort_by`) first reserves this much
        // for its merge; DataFusion's 10 MiB could exceed a small
        // memory_limit's whole engine share, and no chunk could sort.
        config.options_mut().execution.sort_spill_reservation_bytes =
            (memory.engine() / 8).min(10 << 20);
        let runtime = engine::local::runtime_env(&memory)?;
        let ctx = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
        let hive_column = self
            .spec
            .range
            .as_ref()
            .filter(|r| r.partitions == Some(backfill_core::spec::Partitions::Source))
            .map(|r| r.column.as_str());
        let source = source::open(&self.spec.source, &ctx, hive_column)
            .await
            .map_err(|e| {
                let key = match (&self.spec.source.postgres, &self.spec.source.kafka) {
                    (Some(_), _) => "source.url",
                    (_, Some(_)) => "source.brokers",
                    _ => "source.path",
                };
                self.source_error(self.spec.source.path_loc, key, e)
            })?;
        let mut lookups = source::Lookups {
            tables: Vec::new(),
            zone: self.spec.range.as_ref().and_then(|r| {
                r.calendar
                    .zone
                    .map(|zone| (zone, r.naive_local == Some(true)))
            }),
        };
        for (i, table) in self.spec.tables.iter().enumerate() {
            let opened = source::open(&table.source, &ctx, None).await.map_err(|e| {
                let key = match table.source.postgres {
                    Some(_) => "url",
                    None => "path",
                };
                self.source_error(table.source.path_loc, &format!("tables[{i}].{key}"), e)
            })?;
            lookups.tables.push((table.name.clone(), opened));
        }
        let schema = source.schema();
        self.check_kafka(source.as_kafka().is_some())?;
        let range = match &self.spec.range {
            None => None,
            Some(r) => {
                let names = || {
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let field = schema.field_with_name(&r.column).map_err(|_| {
                    self.job_error(
                        r.column_loc,
                        "range.column",
                        format!(
                            "column \"{}\" is not in source {} (columns: {})",
                            r.column,
                            source.describe(),
                            names()
                        ),
                    )
                })?;
                if let Some(kind) = r.kind()
                    && !engine::local::check_range_type(field.data_type(), kind)
                {
                    let want = match kind {
                        backfill_core::ValueKind::Time => "a timestamp or date column",
                        backfill_core::ValueKind::Int => "an integer column",
                    };
                    let text_source =
                        self.spec.source.format != backfill_core::spec::SourceFormat::Parquet;
                    let stringly = matches!(
                        field.data_type(),
                        arrow::datatypes::DataType::Utf8
                            | arrow::datatypes::DataType::LargeUtf8
                            | arrow::datatypes::DataType::Utf8View
                    );
                    let hint = if text_source && stringly {
                        format!(
                            "; for text sources declare its type, e.g. [source.columns] {} = \"timestamp\"",
                            r.column
                        )
                    } else {
                        String::new()
                    };
                    return Err(self.job_error(
                            r.column_loc,
                            "range.column",
                            format!(
                                "column \"{}\" has type {}, but the range is {kind}, which needs {want}{hint}",
                                r.column,
                                field.data_type()
                            ),
                        ));
                }
                if let Err(message) = zone_fits(r, field.data_type()) {
                    return Err(self.job_error(r.column_loc, "range.column", message));
                }
                let bucket = match &r.buckets {
                    None => None,
                    Some(b) => {
                        let fail =
                            |message: String| self.job_error(b.loc, "range.bucket_column", message);
                        let field = schema.field_with_name(&b.column).map_err(|_| {
                            fail(format!(
                                "column \"{}\" is not in source {} (columns: {})",
                                b.column,
                                source.describe(),
                                names()
                            ))
                        })?;
                        if !crate::bucket::supported(field.data_type()) {
                            return Err(fail(format!(
                                "column \"{}\" has type {}; buckets hash integers and strings",
                                b.column,
                                field.data_type()
                            )));
                        }
                        if self.spec.target.format == backfill_core::spec::TargetFormat::Delta {
                            return Err(fail(
                                "a Delta target replaces a chunk by its range alone; hash buckets \
                                 need a Parquet or PostgreSQL target for now"
                                    .into(),
                            ));
                        }
                        Some(crate::bucket::BucketColumn {
                            name: b.column.clone(),
                        })
                    }
                };
                Some(RangeColumn {
                    name: r.column.clone(),
                    data_type: field.data_type().clone(),
                    bucket,
                    position: self.spec.position_column().map(str::to_string),
                })
            }
        };
        let opened = engine::open(
            &self.spec,
            schema.clone(),
            range.as_ref(),
            &lookups,
            &config,
            &runtime,
        )
        .await
        .map_err(|e| match e {
            engine::OpenError::Job { loc, key, message } => self.job_error(loc, &key, message),
            engine::OpenError::Other(e) => e,
        })?;
        let out = opened.transformed;
        for p in &self.spec.target.partition_by {
            if out.field_with_name(p).is_err() {
                let cols: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(self.job_error(
                    self.spec.target.partition_loc,
                    "target.partition_by",
                    format!(
                        "column \"{p}\" is not produced by the transform (columns: {})",
                        cols.join(", ")
                    ),
                ));
            }
        }
        let mut chunks = plan::plan(&self.spec.name, self.spec.range.as_ref())?;
        let mut kafka_spans = None;
        if let (Some(kafka), Some(r)) = (
            source.as_kafka(),
            self.spec
                .range
                .as_ref()
                .filter(|_| self.spec.position_column().is_some()),
        ) {
            let spans = self.kafka_spans(kafka, r)?;
            let width = match r.chunk {
                backfill_core::interval::ChunkSize::Count(n) => n,
                _ => plan::POSITION_BASE,
            };
            chunks = plan::plan_offsets(&self.spec.name, &r.column, width, &spans)?;
            kafka_spans = Some(spans);
        }
        if let Some(column) = hive_column {
            let values = source.partition_values();
            if values.is_empty() {
                let r = self
                    .spec
                    .range
                    .as_ref()
                    .map(|r| r.column_loc)
                    .unwrap_or_default();
                return Err(self.job_error(
                    r,
                    "range.partitions",
                    format!(
                        "no {column}=<value>/ directories under source {}",
                        source.describe()
                    ),
                ));
            }
            chunks = plan::plan_values(&self.spec.name, column, &values)?;
        }
        if let Some(dedup) = &self.spec.dedup {
            let cols: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
            for (key, col) in dedup
                .keys
                .iter()
                .map(|k| ("dedup.keys", k))
                .chain(dedup.order_by.iter().map(|o| ("dedup.order_by", &o.column)))
            {
                if out.field_with_name(col).is_err() {
                    return Err(self.job_error(
                        dedup.loc,
                        key,
                        format!(
                            "column \"{col}\" is not produced by the transform (columns: {})",
                            cols.join(", ")
                        ),
                    ));
                }
            }
        }
        for k in &self.spec.target.sort_by {
            if out.field_with_name(&k.column).is_err() {
                let cols: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(self.job_error(
                    self.spec.target.sort_loc,
                    "target.sort_by",
                    format!(
                        "column \"{}\" is not produced by the transform (columns: {})",
                        k.column,
                        cols.join(", ")
                    ),
                ));
            }
        }
        if let Some(v) = &self.spec.target.version_column
            && out.field_with_name(v).is_err()
        {
            let cols: Vec<_> = out.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(self.job_error(
                self.spec.target.version_loc,
                "target.version_column",
                format!(
                    "column \"{v}\" is not produced by the transform (columns: {})",
                    cols.join(", ")
                ),
            ));
        }
        let sinks = Sinks::open(&self.spec).map_err(|e| match e {
            SinkError::Store(StoreError::Invalid { .. }) => {
                self.job_error(self.spec.target.path_loc, "target.path", e.to_string())
            }
            e => e.into(),
        })?;
        if let Err(message) = sinks.target.check_rows(&out, &chunks) {
            let loc = self
                .spec
                .range
                .as_ref()
                .map(|r| r.column_loc)
                .unwrap_or_default();
            return Err(self.job_error(loc, "range.column", message));
        }
        Ok(OpenJob {
            spec: self.spec.clone(),
            source,
            lookups,
            sinks,
            transformed: out,
            range,
            chunks,
            kafka_spans,
            config,
            runtime,
            memory,
            engine: opened.engine,
        })
    }

    /// What a Kafka source can do today, and `earliest`/`latest` bounds,
    /// which only a Kafka source has.
    fn check_kafka(&self, kafka: bool) -> Result<(), Error> {
        use backfill_core::spec::{KAFKA_OFFSET, TargetFormat};
        let Some(r) = &self.spec.range else {
            return Ok(());
        };
        let fail =
            |key: &str, message: &str| Err(self.job_error(r.column_loc, key, message.into()));
        if !kafka {
            if r.start_earliest || r.end_latest {
                return fail(
                    if r.start_earliest {
                        "range.start"
                    } else {
                        "range.end"
                    },
                    "\"earliest\" and \"latest\" are a Kafka topic's offsets; give a value",
                );
            }
            return Ok(());
        }
        if self.spec.engine.kind != backfill_core::spec::EngineKind::Local {
            return fail(
                "engine.kind",
                "a Kafka source runs on the local engine only",
            );
        }
        if r.column == backfill_core::spec::KAFKA_TIMESTAMP {
            // Time chunks: a plan like any time range's, each chunk's
            // offsets found from the events' timestamps.
            if r.start_earliest || r.end_latest {
                return fail(
                    "range.start",
                    "a range over _timestamp takes times (end may be \"now\"); \"earliest\" and \"latest\" are offsets",
                );
            }
            if r.buckets.is_some() || r.partitions.is_some() {
                return fail(
                    "range.column",
                    "time chunks of a Kafka topic take no buckets or partitions",
                );
            }
            return Ok(());
        }
        if r.column != KAFKA_OFFSET {
            return fail(
                "range.column",
                "a Kafka topic is chunked by \"_offset\" (offset windows of each partition) or \
                 \"_timestamp\" (time chunks)",
            );
        }
        if r.buckets.is_some() {
            return fail(
                "range.buckets",
                "Kafka chunks are already one partition each: leave buckets out",
            );
        }
        if r.partitions.is_some() {
            return fail(
                "range.partitions",
                "a Kafka topic is chunked by offsets: leave partitions out",
            );
        }
        if matches!(r.start, Some(RangeValue::Time(_)))
            || matches!(r.end, Some(RangeValue::Time(_)))
        {
            return fail(
                "range.start",
                "bounds of Kafka offsets are offsets, \"earliest\" or \"latest\" (or end = \"now\")",
            );
        }
        if r.start.is_none() && !r.start_earliest {
            return fail("range.start", "missing: an offset, or \"earliest\"");
        }
        if self.spec.target.format == TargetFormat::Delta {
            return Err(self.job_error(
                self.spec.target.path_loc,
                "target.format",
                "a Delta target replaces a chunk by its range alone, and Kafka offsets repeat \
                 across partitions: use a Parquet or PostgreSQL target for now"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The offsets a Kafka job's plan covers, per partition: as frozen by
    /// its first run (recorded in the state), extended to each partition's
    /// end now for `end = "now"`; the log's own ends for a plan not made
    /// yet.
    fn kafka_spans(
        &self,
        kafka: &source::kafka::KafkaSource,
        r: &backfill_core::spec::RangeSpec,
    ) -> Result<Vec<plan::PartitionSpan>, Error> {
        let int = |v: Option<RangeValue>| match v {
            Some(RangeValue::Int(i)) => Some(i),
            _ => None,
        };
        let live = kafka.spans(int(r.start), int(r.end));
        let fp = fingerprint(Some(r));
        let frozen: Option<FrozenSpans> = match self.open_state_existing()? {
            Some(state) => state
                .note(NOTE_KAFKA_SPANS)?
                .and_then(|v| serde_json::from_str::<FrozenSpans>(&v).ok())
                .filter(|f| f.fingerprint == fp),
            None => None,
        };
        let Some(frozen) = frozen else {
            return Ok(live);
        };
        Ok(live
            .into_iter()
            .map(
                |now| match frozen.spans.iter().find(|f| f.partition == now.partition) {
                    Some(f) => {
                        let mut span = f.clone();
                        let last = span.ends.last().copied().unwrap_or(span.start);
                        if r.end_now && now.ends[0] > last {
                            span.ends.push(now.ends[0]);
                        }
                        span
                    }
                    // A partition added to the topic since.
                    None => now,
                },
            )
            .collect())
    }

    pub(crate) fn open_state(&self) -> Result<Arc<dyn StateStore>, Error> {
        open_state(&self.spec)
    }

    pub(crate) fn open_state_existing(&self) -> Result<Option<Arc<dyn StateStore>>, Error> {
        open_state_existing(&self.spec)
    }
}

/// The job's state store: SQLite beside the job, or shared PostgreSQL.
/// Refuses a state that belongs to another job; a run records this job as
/// its owner.
pub(crate) fn open_state(spec: &JobSpec) -> Result<Arc<dyn StateStore>, Error> {
    let state: Arc<dyn StateStore> = match &spec.state.postgres {
        Some(pg) => {
            let name = crate::redact::redact(&spec.name);
            let ordered = spec.range.as_ref().is_some_and(|r| r.ordered);
            Arc::new(
                backfill_core::state::postgres::PgStateStore::open(pg, &name)?.ordered(ordered),
            )
        }
        None => Arc::new(SqliteStateStore::open(&spec.state.path)?),
    };
    bind_to_job(spec, state.as_ref(), true)?;
    Ok(state)
}

/// The state store if the job ever ran (a shared PostgreSQL one always
/// counts as existing).
pub(crate) fn open_state_existing(spec: &JobSpec) -> Result<Option<Arc<dyn StateStore>>, Error> {
    if spec.state.postgres.is_some() {
        return open_state(spec).map(Some);
    }
    let Some(state) = SqliteStateStore::open_existing(&spec.state.path)? else {
        return Ok(None);
    };
    let state: Arc<dyn StateStore> = Arc::new(state);
    bind_to_job(spec, state.as_ref(), false)?;
    Ok(Some(state))
}

/// Who this job is, as its state records it.
pub(crate) fn job_owner(spec: &JobSpec) -> JobOwner {
    JobOwner {
        name: crate::redact::redact(&spec.name),
        target: spec.target.identity(),
        target_key: spec.target_key(),
    }
}

/// Checks that `state` is this job's (recording it as the owner when
/// `adopt`), and moves a state written before chunk ids carried the job's
/// name to the current ids.
pub(crate) fn bind_to_job(
    spec: &JobSpec,
    state: &dyn StateStore,
    adopt: bool,
) -> Result<(), Error> {
    state.check_owner(&job_owner(spec), adopt)?;
    let range = spec.range.as_ref();
    let renamed = state.upgrade_chunk_ids(&|c: &Chunk| {
        (plan::legacy_id(range, c) == c.id).then(|| plan::id_for(&spec.name, range, c))
    })?;
    if renamed > 0 {
        tracing::info!(
            "state {}: {renamed} chunk(s) renamed to this version's chunk ids (64 bits, with the job's name)",
            state.describe()
        );
    }
    Ok(())
}

/// Where a job's SQLite state is: `[state] path`, else `.backfill/<job
/// name>.db`, unless only the state file that every job in the folder once
/// shared (`.backfill/state.db`) exists and records this job: a job that
/// ran before each job had its own state keeps it.
pub(crate) fn resolve_state_path(spec: &mut JobSpec) {
    if spec.state.explicit || spec.state.path.exists() {
        return;
    }
    let Some(dir) = spec.state.path.parent().and_then(Path::parent) else {
        return;
    };
    let legacy = dir.join(backfill_core::spec::LEGACY_STATE_PATH);
    if SqliteStateStore::recorded_job(&legacy).as_deref()
        == Some(crate::redact::redact(&spec.name).as_str())
    {
        tracing::debug!(
            "using {}, the state this job wrote before each job had its own",
            legacy.display()
        );
        spec.state.path = legacy;
    }
}

/// Whether `[range] timezone` can mean one thing for a column of this type:
/// chunk bounds are instants, which a column with a zone (or naive times
/// declared UTC) compares exactly, and naive times declared local are cut
/// on their own wall clock. A date is already a local day, and naive times
/// must say which they are.
fn zone_fits(
    r: &backfill_core::spec::RangeSpec,
    data_type: &arrow::datatypes::DataType,
) -> Result<(), String> {
    use arrow::datatypes::DataType;
    let Some(zone) = r.calendar.zone else {
        return Ok(());
    };
    match (data_type, r.naive_local) {
        (DataType::Date32 | DataType::Date64, _) => Err(format!(
            "column \"{}\" is a date, which is already a local day: leave range.timezone out",
            r.column
        )),
        (DataType::Timestamp(_, None), None) => Err(format!(
            "column \"{}\" is a timestamp without a time zone: say whether its values are UTC \
             ([range] naive_timestamps = \"utc\") or wall-clock times in {} \
             (naive_timestamps = \"local\")",
            r.column,
            zone.name()
        )),
        (DataType::Timestamp(_, Some(tz)), Some(true)) => Err(format!(
            "column \"{}\" has a time zone ({tz}): naive_timestamps = \"local\" is for columns \
             without one",
            r.column
        )),
        _ => Ok(()),
    }
}

/// The state note that freezes a Kafka plan's offsets.
pub(crate) const NOTE_KAFKA_SPANS: &str = "kafka.spans";

/// What [`NOTE_KAFKA_SPANS`] holds: the spans, and the range they were
/// planned for (a changed range plans afresh).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct FrozenSpans {
    pub fingerprint: String,
    pub spans: Vec<plan::PartitionSpan>,
}
