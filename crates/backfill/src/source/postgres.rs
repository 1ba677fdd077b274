//! `format = "postgres"` sources: a table or query, read with
//! `COPY (SELECT ... WHERE <chunk range>) TO STDOUT (FORMAT binary)` and
//! decoded into Arrow batches as the rows arrive.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use backfill_core::spec::{PgRelation, PgSourceSpec};
use chrono::DateTime;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::StreamExt;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::pg::types::{Decoder, Raw, arrow_type};
use crate::pg::{PgError, connect, quote_ident, quote_literal};
use crate::source::{Source, SourceError};

/// What every scan of one source shares.
#[derive(Debug)]
struct Shared {
    url: String,
    shown: String,
    /// `"schema"."table"` or `(query) AS "source"`.
    from: String,
    pg_types: Vec<Type>,
    connections: Arc<Semaphore>,
    limiter: Option<RateLimiter>,
    /// The snapshot every scan of this process reads at, taken by the
    /// first scan ([`Snapshot`]).
    snapshot: tokio::sync::OnceCell<Option<Snapshot>>,
}

/// One consistent view of a live source for the whole run: the dedup
/// index's passes and every chunk read the rows as of one moment, so a row
/// written in between is either in all of them or in none (a key the index
/// never saw would be kept twice; a winner deleted after the index would
/// be lost). A connection exports the snapshot (`pg_export_snapshot`, as
/// `pg_dump --jobs` does) and holds its transaction open while the process
/// runs; each scan imports it.
#[derive(Debug)]
struct Snapshot {
    id: String,
    // Holds the exporting transaction, and so the snapshot, open.
    _holder: Client,
}

impl Shared {
    /// The run's snapshot id; `None` when the server cannot export one (a
    /// standby before PostgreSQL 10, a pooler in transaction mode): scans
    /// then read the live table, each at its own moment, as said once.
    async fn snapshot(&self) -> Option<&str> {
        self.snapshot
            .get_or_init(|| async {
                let exported = async {
                    let client = connect(&self.url, &self.shown).await?;
                    client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .await
                        .map_err(PgError::sql("starting the source snapshot"))?;
                    let row = client
                        .query_one("SELECT pg_export_snapshot()", &[])
                        .await
                        .map_err(PgError::sql("exporting the source snapshot"))?;
                    Ok::<_, PgError>(Snapshot {
                        id: row.get(0),
                        _holder: client,
                    })
                }
                .await;
                match exported {
                    Ok(s) => {
                        tracing::debug!("{}: reading at snapshot {}", self.shown, s.id);
                        Some(s)
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{}: no consistent snapshot ({e}); each scan reads the table as it is then",
                            self.shown
                        );
                        None
                    }
                }
            })
            .await
            .as_ref()
            .map(|s| s.id.as_str())
    }
}

#[derive(Debug)]
pub struct PgSource {
    shared: Arc<Shared>,
    schema: SchemaRef,
    fingerprint: String,
}

impl PgSource {
    pub async fn open(spec: &PgSourceSpec, shown: &str) -> Result<PgSource, SourceError> {
        let from = match &spec.relation {
            PgRelation::Table(t) => t.quoted(),
            PgRelation::Query(q) => format!("({q}) AS {}", quote_ident("source")),
        };
        let client = connect(&spec.url, shown).await?;
        let stmt = client
            .prepare(&format!("SELECT * FROM {from}"))
            .await
            .map_err(PgError::sql(format!("reading the columns of {shown}")))?;
        let mut fields = Vec::new();
        let mut pg_types = Vec::new();
        for c in stmt.columns() {
            let dt =
                arrow_type(c.type_(), c.type_modifier()).map_err(|reason| PgError::Column {
                    what: format!("source {shown}"),
                    column: c.name().to_string(),
                    reason,
                })?;
            fields.push(Field::new(c.name(), dt, true));
            pg_types.push(c.type_().clone());
        }
        // Rows can change under a database source at any time, so anything
        // derived from them (the dedup index) is rebuilt by every process.
        let fingerprint = format!(
            "postgres {shown} {} {}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        Ok(PgSource {
            schema: Arc::new(Schema::new(fields)),
            fingerprint,
            shared: Arc::new(Shared {
                url: spec.url.clone(),
                shown: shown.to_string(),
                from,
                pg_types,
                connections: Arc::new(Semaphore::new(spec.max_connections)),
                limiter: spec.max_rows_per_second.map(RateLimiter::new),
                snapshot: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl Source for PgSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table(&self) -> Arc<dyn TableProvider> {
        Arc::new(PgTable {
            shared: self.shared.clone(),
            schema: self.schema.clone(),
        })
    }
    fn describe(&self) -> String {
        self.shared.shown.clone()
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The planner's row estimate and width for each chunk's scan
    /// (`EXPLAIN`, no data read). Never proves a chunk empty: the planner
    /// guesses. Skipped for plans of more than `MAX_EXPLAINS` chunks.
    async fn estimate(
        &self,
        range: &crate::predicate::RangeColumn,
        chunks: &[backfill_core::plan::Chunk],
    ) -> Result<Option<Vec<crate::source::Estimate>>, SourceError> {
        const MAX_EXPLAINS: usize = 2_000;
        if chunks.len() > MAX_EXPLAINS {
            return Ok(None);
        }
        let shared = &self.shared;
        let client = connect(&shared.url, &shared.shown).await?;
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let predicate = crate::predicate::datafusion(range, c)
                .ok()
                .flatten()
                .and_then(|p| to_sql(&p))
                .unwrap_or_else(|| "true".into());
            // Text format: the JSON one comes as a `json` value, which this
            // client does not decode. The first line is the top plan node:
            // `... (cost=0.00..250.00 rows=1000 width=80)`.
            let sql = format!("EXPLAIN SELECT * FROM {} WHERE {predicate}", shared.from);
            let first: String = client
                .query(&sql, &[])
                .await
                .map_err(PgError::sql(format!("estimating chunk {}", c.id)))?
                .first()
                .and_then(|r| r.try_get(0).ok())
                .unwrap_or_default();
            let number = |key: &str| -> f64 {
                first
                    .split(key)
                    .nth(1)
                    .and_then(|rest| rest.split(|ch: char| !ch.is_ascii_digit()).next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0)
            };
            let (rows, width) = (number("rows="), number("width="));
            out.push(crate::source::Estimate {
                rows: rows.round() as u64,
                bytes: (rows * width).round() as u64,
                empty: false,
                covers_all: false,
            });
        }
        Ok(Some(out))
    }
}

#[derive(Debug)]
struct PgTable {
    shared: Arc<Shared>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for PgTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters that translate to SQL go to the server (where an index on the
    /// range column serves them); DataFusion applies them again on top.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if to_sql(f).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indices)?);
        let columns = if indices.is_empty() {
            // count(*) needs rows, not columns.
            "1".to_string()
        } else {
            indices
                .iter()
                .map(|&i| quote_ident(self.schema.field(i).name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!("SELECT {columns} FROM {}", self.shared.from);
        let wheres: Vec<String> = filters.iter().filter_map(to_sql).collect();
        if !wheres.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&wheres.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        let types = indices
            .iter()
            .map(|&i| self.shared.pg_types[i].clone())
            .collect();
        let partition = PgPartition {
            shared: self.shared.clone(),
            sql,
            schema: schema.clone(),
            types,
            count_only: indices.is_empty(),
        };
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![Arc::new(partition)],
            None,
            Vec::new(),
            false,
            None,
        )?))
    }
}

/// SQL for the filters the engine sends (the chunk predicate and simple
/// comparisons); `None` for anything else.
fn to_sql(e: &Expr) -> Option<String> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let op = match op {
                Operator::And => "AND",
                Operator::Or => "OR",
                Operator::Eq => "=",
                Operator::NotEq => "<>",
                Operator::Lt => "<",
                Operator::LtEq => "<=",
                Operator::Gt => ">",
                Operator::GtEq => ">=",
                _ => return None,
            };
            Some(format!("({} {op} {})", to_sql(left)?, to_sql(right)?))
        }
        Expr::Column(c) => Some(quote_ident(&c.name)),
        Expr::Literal(v, _) => literal(v),
        Expr::IsNull(inner) => Some(format!("({} IS NULL)", to_sql(inner)?)),
        Expr::IsNotNull(inner) => Some(format!("({} IS NOT NULL)", to_sql(inner)?)),
        Expr::Not(inner) => Some(format!("(NOT {})", to_sql(inner)?)),
        // A bucket chunk's hash, so the server sends only the bucket's rows.
        Expr::ScalarFunction(f) if f.args.len() == 1 => {
            crate::bucket::postgres_of_call(&f.func, &to_sql(&f.args[0])?)
        }
        _ => None,
    }
}

fn literal(v: &ScalarValue) -> Option<String> {
    if v.is_null() {
        return None;
    }
    Some(match v {
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        ScalarValue::Int8(Some(i)) => i.to_string(),
        ScalarValue::Int16(Some(i)) => i.to_string(),
        ScalarValue::Int32(Some(i)) => i.to_string(),
        ScalarValue::Int64(Some(i)) => i.to_string(),
        ScalarValue::UInt8(Some(i)) => i.to_string(),
        ScalarValue::UInt16(Some(i)) => i.to_string(),
        ScalarValue::UInt32(Some(i)) => i.to_string(),
        ScalarValue::UInt64(Some(i)) => i.to_string(),
        ScalarValue::Float64(Some(f)) if f.is_finite() => format!("{f:?}::float8"),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => quote_literal(s),
        ScalarValue::Date32(Some(d)) => {
            let date = DateTime::from_timestamp(i64::from(*d) * 86_400, 0)?.date_naive();
            format!("'{date}'::date")
        }
        ScalarValue::TimestampMicrosecond(Some(us), tz) => {
            let t = DateTime::from_timestamp_micros(*us)?.naive_utc();
            let text = t.format("%Y-%m-%d %H:%M:%S%.6f");
            match tz {
                // The session runs in UTC, and Arrow keeps instants in UTC.
                Some(_) => format!("'{text}+00'::timestamptz"),
                None => format!("'{text}'::timestamp"),
            }
        }
        _ => return None,
    })
}

#[derive(Debug)]
struct PgPartition {
    shared: Arc<Shared>,
    sql: String,
    schema: SchemaRef,
    types: Vec<Type>,
    count_only: bool,
}

impl PartitionStream for PgPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch_size = ctx.session_config().batch_size();
        let shared = self.shared.clone();
        let sql = self.sql.clone();
        let schema = self.schema.clone();
        let types = self.types.clone();
        let count_only = self.count_only;
        let start = futures::stream::once(async move {
            let permit = shared
                .connections
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let snapshot = shared.snapshot().await.map(str::to_string);
            let client = connect(&shared.url, &shared.shown).await.map_err(ext)?;
            if let Some(id) = snapshot {
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                        quote_literal(&id)
                    ))
                    .await
                    .map_err(PgError::sql(format!("reading {} at the run's snapshot", shared.shown)))
                    .map_err(ext)?;
            }
            let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
            let copy_types = if count_only {
                vec![Type::INT4]
            } else {
                types.clone()
            };
            let stream = client
                .copy_out(copy.as_str())
                .await
                .map_err(PgError::sql(format!("reading {}", shared.shown)))
                .map_err(ext)?;
            let decoders = schema
                .fields()
                .iter()
                .zip(&types)
                .map(|(f, t)| Decoder::new(t, f.data_type()))
                .collect();
            Ok::<_, DataFusionError>(Scan {
                rows: Box::pin(BinaryCopyOutStream::new(stream, &copy_types)),
                decoders,
                schema,
                batch_size,
                shared,
                done: false,
                _client: client,
                _permit: permit,
            })
        });
        let schema = self.schema.clone();
        let batches = start
            .map(|scan| match scan {
                Ok(scan) => futures::stream::unfold(scan, Scan::next_batch).boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            })
            .flatten();
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

fn ext(e: PgError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

struct Scan {
    rows: Pin<Box<BinaryCopyOutStream>>,
    decoders: Vec<Decoder>,
    schema: SchemaRef,
    batch_size: usize,
    shared: Arc<Shared>,
    done: bool,
    // Held for the life of the scan: the connection and its slot.
    _client: Client,
    _permit: OwnedSemaphorePermit,
}

impl Scan {
    async fn next_batch(mut self) -> Option<(DfResult<RecordBatch>, Scan)> {
        if self.done {
            return None;
        }
        match self.fill().await {
            Ok(Some(batch)) => Some((Ok(batch), self)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some((Err(e), self))
            }
        }
    }

    async fn fill(&mut self) -> DfResult<Option<RecordBatch>> {
        let mut n = 0usize;
        while n < self.batch_size {
            let Some(row) = self.rows.next().await else {
                self.done = true;
                break;
            };
            let row = row
                .map_err(PgError::sql(format!("reading {}", self.shared.shown)))
                .map_err(ext)?;
            for (i, d) in self.decoders.iter_mut().enumerate() {
                let column_error = |reason: String| {
                    ext(PgError::Column {
                        what: format!("reading {}", self.shared.shown),
                        column: self.schema.field(i).name().clone(),
                        reason,
                    })
                };
                let raw: Option<Raw> = row.try_get(i).map_err(|e| column_error(e.to_string()))?;
                d.push(raw.map(|r| r.0))
                    .map_err(|e| column_error(e.to_string()))?;
            }
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        if let Some(limiter) = &self.shared.limiter {
            limiter.acquire(n as u64).await;
        }
        let columns = self
            .decoders
            .iter_mut()
            .map(|d| d.finish())
            .collect::<Result<Vec<_>, _>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?))
    }
}

/// Paces all scans of a source to at most `rate` rows per second: each batch
/// books the time its rows need and is handed on only once that time is over.
#[derive(Debug)]
struct RateLimiter {
    rate: u64,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate,
            next_free: Mutex::new(None),
        }
    }

    async fn acquire(&self, rows: u64) {
        let cost = Duration::from_secs_f64(rows as f64 / self.rate as f64);
        let until = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            let until = start + cost;
            *next = Some(until);
            until
        };
        tokio::time::sleep_until(until.into()).await;
    }
}
