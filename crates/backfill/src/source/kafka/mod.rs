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

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use backfill_core::ErrorClass;
use backfill_core::plan::{Chunk, PartitionSpan};
use backfill_core::spec::{
    KAFKA_DECODE_ERROR, KAFKA_KEY, KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP, KafkaSasl,
    KafkaSourceSpec, KafkaValue, SourceSpec,
};
use datafusion::catalog::TableProvider;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use tokio::sync::Mutex;

use crate::source::{Estimate, Source, SourceError};

mod decode;
mod scan;

use decode::json_schema;
use scan::KafkaTable;

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
        // A refused login or certificate is the job's to fix: retrying
        // cannot help.
        E::Connection(c) => {
            let c = format!("{c:?}");
            !["Sasl", "certificate", "Certificate", "AlertReceived"]
                .iter()
                .any(|m| c.contains(m))
        }
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
                        let (records, _) = fetch(pc, k, next, FETCH_BYTES, 100).await?;
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

    /// Each partition's offsets as seen when the source was opened.
    pub fn offsets(&self) -> &[PartitionOffsets] {
        &self.shared.offsets
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
        let (records, _) = fetch(pc, k, at, FETCH_BYTES, 100).await?;
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

/// The events at and after `offset` (up to about `max_bytes`) and the
/// partition's high watermark. tansu 0.6 answers a fetch at the end of a
/// partition with no topic at all, which rskafka reports as an invalid
/// response: read as no events, the watermark at `offset` (Kafka answers
/// with the topic and no records).
async fn fetch(
    pc: &PartitionClient,
    k: &KafkaSourceSpec,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
) -> Result<(Vec<rskafka::record::RecordAndOffset>, i64), KafkaError> {
    match pc.fetch_records(offset, 1..max_bytes, max_wait_ms).await {
        Ok(answer) => Ok(answer),
        Err(rskafka::client::error::Error::InvalidResponse(m))
            if m.contains("single topic in response, got 0") =>
        {
            Ok((Vec::new(), offset))
        }
        Err(e) => Err(read_error(k, e)),
    }
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

impl From<KafkaError> for SourceError {
    fn from(e: KafkaError) -> Self {
        SourceError::Kafka(e)
    }
}
