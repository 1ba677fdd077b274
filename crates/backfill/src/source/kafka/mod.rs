//! `[source] format = "kafka"`: a topic replayed by offset windows.
//!
//! A chunk is a fixed window of one partition's offsets (its bounds are
//! positions, see [`backfill_core::plan::POSITION_BASE`]), so re-reading it
//! yields the same events for as long as the log keeps them. The scan turns
//! the chunk predicate (`_partition = p AND _offset >= lo AND _offset < hi`)
//! into fetches of exactly that window; any other filter reads every
//! partition up to the end offsets seen when the source was opened, and
//! DataFusion filters on top.
//!
//! The log forgets: a window that starts before the partition's first
//! offset still kept is refused ([`KafkaError::Gone`]) rather than read
//! short, so a re-run never replaces good target rows with fewer. Holes
//! inside a window (compaction) are normal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use backfill_core::ErrorClass;
use backfill_core::plan::{Chunk, PartitionSpan};
use backfill_core::spec::{
    KAFKA_DECODE_ERROR, KAFKA_KEY, KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP, KafkaSasl,
    KafkaSourceSpec, KafkaValue, SourceSpec,
};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::RecordAndOffset;
use tokio::sync::Mutex;

use crate::source::{Estimate, Source, SourceError};

mod decode;

use decode::{decode, json_schema};

/// Bytes asked for per fetch: large enough to amortise a round trip,
/// small enough that a chunk's reader holds little.
const FETCH_BYTES: i32 = 4 << 20;
/// Events read at open to infer the JSON fields' types, per partition.
const SAMPLE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot reach the Kafka brokers {brokers}: {reason}")]
    Connect {
        brokers: String,
        reason: String,
        transient: bool,
    },
    #[error("topic \"{topic}\" is not on the brokers (topics: {available})")]
    UnknownTopic { topic: String, available: String },
    #[error("topic \"{topic}\" has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        count: usize,
    },
    #[error(
        "offsets {lo}..{earliest} of partition {partition} of topic \"{topic}\" are no longer in the log \
         (retention or deletion moved its start to {earliest}); the chunk is not re-read, so the \
         target keeps the rows it had"
    )]
    Gone {
        topic: String,
        partition: i32,
        lo: i64,
        earliest: i64,
    },
    #[error(
        "partition {partition} of topic \"{topic}\" now ends at offset {end}, before the chunk's end {hi}: \
         the topic was recreated or truncated"
    )]
    Truncated {
        topic: String,
        partition: i32,
        end: i64,
        hi: i64,
    },
    #[error("reading topic \"{topic}\": {reason}")]
    Read {
        topic: String,
        reason: String,
        transient: bool,
    },
    #[error("{0}")]
    Invalid(String),
}

impl KafkaError {
    pub fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Connect { transient, .. } | KafkaError::Read { transient, .. }
                if *transient =>
            {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        }
    }

    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            KafkaError::UnknownTopic { .. }
                | KafkaError::UnknownPartition { .. }
                | KafkaError::Invalid(_)
        ) || matches!(
            self,
            KafkaError::Connect {
                transient: false,
                ..
            }
        )
    }
}

/// Whether asking again may help: the network and the broker's own
/// "not now" answers, not a refused login or a malformed answer.
fn transient(e: &rskafka::client::error::Error) -> bool {
    use rskafka::client::error::Error as E;
    match e {
        E::Connection(c) => !format!("{c:?}").contains("Sasl"),
        E::Request(_) | E::RetryFailed(_) | E::Timeout => true,
        E::ServerError { protocol_error, .. } => !matches!(
            protocol_error,
            rskafka::client::error::ProtocolError::SaslAuthenticationFailed
                | rskafka::client::error::ProtocolError::TopicAuthorizationFailed
                | rskafka::client::error::ProtocolError::ClusterAuthorizationFailed
        ),
        _ => false,
    }
}

/// One partition as the source saw it when opened.
#[derive(Debug, Clone, Copy)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The first offset still in the log.
    pub earliest: i64,
    /// The offset the next event will get.
    pub latest: i64,
}

#[derive(Debug)]
struct Shared {
    spec: KafkaSourceSpec,
    client: Client,
    offsets: Vec<PartitionOffsets>,
    clients: Mutex<HashMap<i32, Arc<PartitionClient>>>,
    /// The value's columns (JSON fields, or `value`).
    value_schema: SchemaRef,
    schema: SchemaRef,
}

#[derive(Debug)]
pub struct KafkaSource {
    shared: Arc<Shared>,
}

impl KafkaSource {
    pub async fn open(spec: &SourceSpec) -> Result<KafkaSource, SourceError> {
        let Some(k) = &spec.kafka else {
            return Err(KafkaError::Invalid(
                "internal: format = \"kafka\" without its settings".into(),
            )
            .into());
        };
        let client = connect(k).await?;
        let topics = client
            .list_topics()
            .await
            .map_err(|e| KafkaError::Connect {
                brokers: k.brokers.join(","),
                reason: e.to_string(),
                transient: transient(&e),
            })?;
        let Some(topic) = topics.iter().find(|t| t.name == k.topic) else {
            let mut names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            return Err(KafkaError::UnknownTopic {
                topic: k.topic.clone(),
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            }
            .into());
        };
        let mut all: Vec<i32> = topic.partitions.iter().copied().collect();
        all.sort_unstable();
        let chosen = if k.partitions.is_empty() {
            all.clone()
        } else {
            for p in &k.partitions {
                if !all.contains(p) {
                    return Err(KafkaError::UnknownPartition {
                        topic: k.topic.clone(),
                        partition: *p,
                        count: all.len(),
                    }
                    .into());
                }
            }
            k.partitions.clone()
        };
        let mut clients = HashMap::new();
        let mut offsets = Vec::new();
        for &p in &chosen {
            let pc = Arc::new(partition_client(&client, k, p).await?);
            let earliest = pc
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(|e| read_error(k, e))?;
            let latest = pc
                .get_offset(OffsetAt::Latest)
                .await
                .map_err(|e| read_error(k, e))?;
            let latest = confirm_end(&pc, k, earliest, latest.max(earliest)).await?;
            offsets.push(PartitionOffsets {
                partition: p,
                earliest,
                latest,
            });
            clients.insert(p, pc);
        }
        let value_schema = match k.value {
            KafkaValue::String => {
                Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]))
            }
            KafkaValue::Bytes => Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Binary,
                true,
            )])),
            KafkaValue::Json => {
                let mut sample = Vec::new();
                for o in &offsets {
                    let pc = &clients[&o.partition];
                    let end = o.latest.min(o.earliest.saturating_add(SAMPLE as i64));
                    let mut next = o.earliest;
                    while next < end && sample.len() < SAMPLE * offsets.len() {
                        let (records, _) = pc
                            .fetch_records(next, 1..FETCH_BYTES, 100)
                            .await
                            .map_err(|e| read_error(k, e))?;
                        let Some(last) = records.last() else { break };
                        next = last.offset + 1;
                        for r in records.iter().filter(|r| r.offset < end) {
                            if let Some(v) = r
                                .record
                                .value
                                .as_deref()
                                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                                .filter(|v| v.is_object())
                            {
                                sample.push(v);
                            }
                        }
                    }
                }
                json_schema(&sample, &spec.columns, &spec.path_shown)?
            }
        };
        let mut fields = vec![
            Field::new(KAFKA_PARTITION, DataType::Int32, false),
            Field::new(KAFKA_OFFSET, DataType::Int64, false),
            Field::new(
                KAFKA_TIMESTAMP,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new(KAFKA_KEY, DataType::Utf8, true),
        ];
        fields.extend(value_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.push(Field::new(KAFKA_DECODE_ERROR, DataType::Utf8, true));
        Ok(KafkaSource {
            shared: Arc::new(Shared {
                spec: k.clone(),
                client,
                offsets,
                clients: Mutex::new(clients),
                value_schema,
                schema: Arc::new(Schema::new(fields)),
            }),
        })
    }

    /// The spans a new plan covers: from each partition's first kept
    /// offset (or `start`) to its end now (or `end`).
    pub fn spans(&self, start: Option<i64>, end: Option<i64>) -> Vec<PartitionSpan> {
        self.shared
            .offsets
            .iter()
            .map(|o| PartitionSpan {
                partition: o.partition,
                start: start.unwrap_or(o.earliest),
                ends: vec![end.unwrap_or(o.latest)],
            })
            .collect()
    }
}

/// The partition's end offset, checked by reading there: some brokers
/// (tansu 0.6) answer ListOffsets with the last record batch's base offset
/// plus one, short of the batch's other records. On Kafka the fetch finds
/// nothing and the answer stands.
async fn confirm_end(
    pc: &PartitionClient,
    k: &KafkaSourceSpec,
    earliest: i64,
    listed: i64,
) -> Result<i64, KafkaError> {
    if listed <= earliest {
        return Ok(listed);
    }
    let mut end = listed;
    // From the last offset it names: tansu finds batches by their base
    // offset, so a fetch past one's base offset finds nothing.
    let mut at = listed - 1;
    // Bounded: a topic written faster than it is read keeps moving.
    for _ in 0..1000 {
        let records = match pc.fetch_records(at, 1..FETCH_BYTES, 100).await {
            Ok((records, _)) => records,
            Err(e) if answered_nothing(&e) => break,
            Err(e) => return Err(read_error(k, e)),
        };
        match records.last() {
            Some(r) if r.offset >= end => {
                end = r.offset + 1;
                at = end;
            }
            _ => break,
        }
    }
    Ok(end)
}

/// tansu 0.6 answers a fetch at the end of a partition with no topic at
/// all, which rskafka reports as an invalid response; Kafka answers with
/// the topic and no records.
fn answered_nothing(e: &rskafka::client::error::Error) -> bool {
    matches!(e, rskafka::client::error::Error::InvalidResponse(m) if m.contains("single topic in response, got 0"))
}

async fn connect(k: &KafkaSourceSpec) -> Result<Client, KafkaError> {
    let mut builder = ClientBuilder::new(k.brokers.clone())
        .client_id("backfill")
        // Without a deadline the client retries an unreachable broker
        // forever; the chunk's own retries take over after it.
        .backoff_config(rskafka::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 3.0,
            deadline: Some(Duration::from_secs(30)),
        });
    if let Some(tls) = &k.tls {
        let cert_key = match (&tls.cert, &tls.key) {
            (Some(c), Some(key)) => Some((c.as_path(), key.as_path())),
            _ => None,
        };
        let config = backfill_core::pgtls::verified_client_config(tls.ca.as_deref(), cert_key)
            .map_err(KafkaError::Invalid)?;
        builder = builder.tls_config(Arc::new(config));
    }
    if let Some(sasl) = &k.sasl {
        let creds = |u: &str, p: &str| Credentials::new(u.to_string(), p.to_string());
        builder = builder.sasl_config(match sasl {
            KafkaSasl::Plain { username, password } => SaslConfig::Plain(creds(username, password)),
            KafkaSasl::ScramSha256 { username, password } => {
                SaslConfig::ScramSha256(creds(username, password))
            }
            KafkaSasl::ScramSha512 { username, password } => {
                SaslConfig::ScramSha512(creds(username, password))
            }
        });
    }
    builder.build().await.map_err(|e| KafkaError::Connect {
        brokers: k.brokers.join(","),
        reason: e.to_string(),
        transient: transient(&e),
    })
}

async fn partition_client(
    client: &Client,
    k: &KafkaSourceSpec,
    p: i32,
) -> Result<PartitionClient, KafkaError> {
    client
        .partition_client(k.topic.clone(), p, UnknownTopicHandling::Error)
        .await
        .map_err(|e| read_error(k, e))
}

fn read_error(k: &KafkaSourceSpec, e: rskafka::client::error::Error) -> KafkaError {
    KafkaError::Read {
        topic: k.topic.clone(),
        transient: transient(&e),
        reason: e.to_string(),
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn schema(&self) -> SchemaRef {
        self.shared.schema.clone()
    }

    fn table(&self) -> Arc<dyn TableProvider> {
        Arc::new(KafkaTable {
            shared: self.shared.clone(),
        })
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.shared.spec.topic)
    }

    /// Events at an offset never change; what can is where the log starts
    /// and ends.
    fn fingerprint(&self) -> String {
        let mut text = format!("kafka|{}", self.shared.spec.topic);
        for o in &self.shared.offsets {
            text.push_str(&format!("|{}:{}-{}", o.partition, o.earliest, o.latest));
        }
        text
    }

    /// Offsets in each chunk's window: the events it reads, less the holes
    /// compaction left.
    async fn estimate(
        &self,
        _range: &crate::predicate::RangeColumn,
        chunks: &[Chunk],
    ) -> Result<Option<Vec<Estimate>>, SourceError> {
        Ok(Some(
            chunks
                .iter()
                .map(|c| {
                    let n = match (c.lo, c.hi) {
                        (Some(lo), Some(hi)) => (hi.raw() - lo.raw()).max(0) as u64,
                        _ => 0,
                    };
                    Estimate {
                        rows: n,
                        bytes: 0,
                        empty: n == 0,
                        covers_all: false,
                    }
                })
                .collect(),
        ))
    }

    fn as_kafka(&self) -> Option<&KafkaSource> {
        Some(self)
    }
}

/// A window of one partition's offsets to read: `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    partition: i32,
    lo: i64,
    hi: i64,
    /// Set when the filters named this window: it must be read whole.
    exact: bool,
}

#[derive(Debug)]
struct KafkaTable {
    shared: Arc<Shared>,
}

/// What the pushed-down filters say about the rows wanted.
#[derive(Default)]
struct Wanted {
    partition: Option<i32>,
    lo: Option<i64>,
    hi: Option<i64>,
}

impl Wanted {
    fn add(&mut self, e: &Expr) -> bool {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
            return false;
        };
        if *op == Operator::And {
            let a = self.add(left);
            let b = self.add(right);
            return a && b;
        }
        let (Expr::Column(c), Expr::Literal(v, _)) = (left.as_ref(), right.as_ref()) else {
            return false;
        };
        let Some(v) = int_of(v) else { return false };
        match (c.name.as_str(), op) {
            (KAFKA_PARTITION, Operator::Eq) => match i32::try_from(v) {
                Ok(p) => {
                    self.partition = Some(p);
                    true
                }
                Err(_) => false,
            },
            (KAFKA_OFFSET, Operator::GtEq) => {
                self.lo = Some(self.lo.map_or(v, |l| l.max(v)));
                true
            }
            (KAFKA_OFFSET, Operator::Gt) => {
                self.lo = Some(self.lo.map_or(v + 1, |l| l.max(v + 1)));
                true
            }
            (KAFKA_OFFSET, Operator::Lt) => {
                self.hi = Some(self.hi.map_or(v, |h| h.min(v)));
                true
            }
            (KAFKA_OFFSET, Operator::LtEq) => {
                self.hi = Some(self.hi.map_or(v + 1, |h| h.min(v + 1)));
                true
            }
            _ => false,
        }
    }
}

fn int_of(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int16(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int32(Some(i)) => Some(i64::from(*i)),
        ScalarValue::Int64(Some(i)) => Some(*i),
        ScalarValue::UInt8(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt16(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt32(Some(i)) => Some(i64::from(*i)),
        ScalarValue::UInt64(Some(i)) => i64::try_from(*i).ok(),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for KafkaTable {
    fn schema(&self) -> SchemaRef {
        self.shared.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// The partition and offset bounds choose what is fetched; DataFusion
    /// applies every filter again on the rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|_| TableProviderFilterPushDown::Inexact)
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut wanted = Wanted::default();
        for f in filters {
            wanted.add(f);
        }
        let exact = wanted.partition.is_some() && wanted.lo.is_some() && wanted.hi.is_some();
        let windows: Vec<Window> = self
            .shared
            .offsets
            .iter()
            .filter(|o| wanted.partition.is_none_or(|p| p == o.partition))
            .map(|o| Window {
                partition: o.partition,
                lo: if exact {
                    wanted.lo.unwrap_or(0)
                } else {
                    wanted.lo.unwrap_or(o.earliest).max(o.earliest)
                },
                hi: if exact {
                    wanted.hi.unwrap_or(0)
                } else {
                    wanted.hi.unwrap_or(o.latest).min(o.latest)
                },
                exact,
            })
            .filter(|w| w.lo < w.hi)
            .collect();
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.shared.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.shared.schema.project(&indices)?);
        let partitions: Vec<Arc<dyn PartitionStream>> = vec![Arc::new(KafkaPartition {
            shared: self.shared.clone(),
            windows,
            indices,
            schema: schema.clone(),
        })];
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            partitions,
            None,
            Vec::new(),
            false,
            None,
        )?))
    }
}

#[derive(Debug)]
struct KafkaPartition {
    shared: Arc<Shared>,
    windows: Vec<Window>,
    indices: Vec<usize>,
    schema: SchemaRef,
}

impl PartitionStream for KafkaPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let reader = Reader {
            shared: self.shared.clone(),
            windows: self.windows.clone(),
            at: 0,
            next: None,
            pending: Vec::new(),
            indices: self.indices.clone(),
            batch_size: ctx.session_config().batch_size().max(1),
            done: false,
        };
        let batches = futures::stream::unfold(reader, Reader::next_batch);
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

struct Reader {
    shared: Arc<Shared>,
    windows: Vec<Window>,
    /// The window being read, and the next offset in it.
    at: usize,
    next: Option<i64>,
    /// Fetched events not yet handed on, in offset order.
    pending: Vec<RecordAndOffset>,
    indices: Vec<usize>,
    batch_size: usize,
    done: bool,
}

/// Where reading a window starts, given the partition's first offset
/// still in the log: a chunk's window must be whole (else `Err` with that
/// offset), a scan of everything starts where the log does.
fn start_of(w: &Window, earliest: i64) -> Result<i64, i64> {
    if w.exact && w.lo < earliest {
        Err(earliest)
    } else {
        Ok(w.lo.max(earliest))
    }
}

fn ext(e: KafkaError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Reader {
    async fn next_batch(mut self) -> Option<(DfResult<RecordBatch>, Reader)> {
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

    async fn client(&self, partition: i32) -> DfResult<Arc<PartitionClient>> {
        let mut clients = self.shared.clients.lock().await;
        if let Some(c) = clients.get(&partition) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            partition_client(&self.shared.client, &self.shared.spec, partition)
                .await
                .map_err(ext)?,
        );
        clients.insert(partition, c.clone());
        Ok(c)
    }

    /// Up to a batch of the windows' events, window after window.
    async fn fill(&mut self) -> DfResult<Option<RecordBatch>> {
        let mut rows: Vec<(i32, RecordAndOffset)> = Vec::with_capacity(self.batch_size);
        while rows.len() < self.batch_size {
            let Some(w) = self.windows.get(self.at).copied() else {
                break;
            };
            if !self.pending.is_empty() {
                let take = (self.batch_size - rows.len()).min(self.pending.len());
                rows.extend(self.pending.drain(..take).map(|r| (w.partition, r)));
                continue;
            }
            let pc = self.client(w.partition).await?;
            let next = match self.next {
                Some(n) => n,
                None => {
                    // Starting a window: is all of it still in the log?
                    let earliest = pc
                        .get_offset(OffsetAt::Earliest)
                        .await
                        .map_err(|e| ext(read_error(&self.shared.spec, e)))?;
                    start_of(&w, earliest).map_err(|earliest| {
                        ext(KafkaError::Gone {
                            topic: self.shared.spec.topic.clone(),
                            partition: w.partition,
                            lo: w.lo,
                            earliest,
                        })
                    })?
                }
            };
            if next >= w.hi {
                self.at += 1;
                self.next = None;
                continue;
            }
            let (records, high_watermark) = match pc.fetch_records(next, 1..FETCH_BYTES, 500).await
            {
                Ok(answer) => answer,
                // Nothing at or past `next` (see `answered_nothing`).
                Err(e) if answered_nothing(&e) => (Vec::new(), next),
                Err(e) => return Err(ext(read_error(&self.shared.spec, e))),
            };
            match records.last().map(|r| r.offset) {
                Some(last) => {
                    self.next = Some(last + 1);
                    self.pending
                        .extend(records.into_iter().filter(|r| r.offset < w.hi));
                }
                None if high_watermark <= next => {
                    // Nothing at or past `next`: the window's tail was
                    // compacted away, or the log is shorter than planned.
                    if w.exact && high_watermark < w.hi {
                        return Err(ext(KafkaError::Truncated {
                            topic: self.shared.spec.topic.clone(),
                            partition: w.partition,
                            end: high_watermark,
                            hi: w.hi,
                        }));
                    }
                    self.next = Some(w.hi);
                }
                // Only control records (transaction markers) at `next`.
                None => self.next = Some(next + 1),
            }
        }
        if rows.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let batch = decode(&self.shared, &rows)?;
        Ok(Some(batch.project(&self.indices)?))
    }
}

impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        SourceError::Kafka(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_window_the_log_has_partly_forgotten_is_refused_a_whole_scan_is_not() {
        // tansu cannot move a log's start (no DeleteRecords), so the
        // integration tests reach only the recreated-topic case.
        let chunk = Window {
            partition: 0,
            lo: 100,
            hi: 200,
            exact: true,
        };
        assert_eq!(start_of(&chunk, 0), Ok(100));
        assert_eq!(start_of(&chunk, 100), Ok(100));
        assert_eq!(start_of(&chunk, 101), Err(101));
        assert_eq!(start_of(&chunk, 500), Err(500));
        let everything = Window {
            exact: false,
            ..chunk
        };
        assert_eq!(start_of(&everything, 150), Ok(150));
        let gone = KafkaError::Gone {
            topic: "t".into(),
            partition: 0,
            lo: 100,
            earliest: 150,
        };
        assert!(gone.to_string().contains("no longer in the log"));
        assert_eq!(gone.class(), ErrorClass::Permanent);
    }
}
