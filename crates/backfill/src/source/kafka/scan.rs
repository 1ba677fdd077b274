//! Reading a Kafka source as a DataFusion table: the chunk predicate
//! becomes fetches of one partition's offset window.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use backfill_core::spec::{KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use tokio::task::JoinHandle;

use super::decode::decode;
use super::{FETCH_BYTES, KafkaError, Shared, fetch, partition_client, read_error};

/// Bytes asked for when only one event's timestamp is wanted.
const PROBE_BYTES: i32 = 64 << 10;

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
pub(super) struct KafkaTable {
    pub(super) shared: Arc<Shared>,
}

/// A partition's client, made once per source.
async fn client(shared: &Shared, partition: i32) -> DfResult<Arc<PartitionClient>> {
    let mut clients = shared.clients.lock().await;
    if let Some(c) = clients.get(&partition) {
        return Ok(c.clone());
    }
    let c = Arc::new(
        partition_client(&shared.client, &shared.spec, partition)
            .await
            .map_err(ext)?,
    );
    clients.insert(partition, c.clone());
    Ok(c)
}

/// What the pushed-down filters say about the rows wanted.
#[derive(Default)]
struct Wanted {
    partition: Option<i32>,
    lo: Option<i64>,
    hi: Option<i64>,
    /// `_timestamp` bounds, in milliseconds: `[from, until)`.
    from: Option<i64>,
    until: Option<i64>,
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
        if c.name == KAFKA_TIMESTAMP {
            let Some(ms) = millis_of(v) else { return false };
            match op {
                Operator::GtEq => self.from = Some(self.from.map_or(ms, |f| f.max(ms))),
                Operator::Gt => self.from = Some(self.from.map_or(ms + 1, |f| f.max(ms + 1))),
                Operator::Lt => self.until = Some(self.until.map_or(ms, |u| u.min(ms))),
                Operator::LtEq => self.until = Some(self.until.map_or(ms + 1, |u| u.min(ms + 1))),
                _ => return false,
            }
            return true;
        }
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

/// A timestamp literal in whole milliseconds, rounded so that `>=` and
/// `<` keep every row the literal's own precision would.
fn millis_of(v: &ScalarValue) -> Option<i64> {
    Some(match v {
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1000)?,
        ScalarValue::TimestampMillisecond(Some(t), _) => *t,
        ScalarValue::TimestampMicrosecond(Some(t), _) => t.div_euclid(1000),
        ScalarValue::TimestampNanosecond(Some(t), _) => t.div_euclid(1_000_000),
        _ => return None,
    })
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
        let mut windows: Vec<Window> = self
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
        if !exact && (wanted.from.is_some() || wanted.until.is_some()) {
            for w in &mut windows {
                let (lo, hi) = time_window(&self.shared, w, wanted.from, wanted.until).await?;
                (w.lo, w.hi) = (lo, hi);
            }
            windows.retain(|w| w.lo < w.hi);
        }
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
            pending: VecDeque::new(),
            ahead: None,
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
    pending: VecDeque<RecordAndOffset>,
    /// The next fetch, already under way while this one is decoded.
    ahead: Option<Ahead>,
    indices: Vec<usize>,
    batch_size: usize,
    done: bool,
}

/// The offsets within `w` that hold every event of `[from, until)` (ms),
/// found by bisecting on the events' own timestamps rather than asking
/// the broker (tansu 0.6 looks up by append time, not CreateTime). With
/// the source's allowance `A` (`out_of_order`), an event is never more
/// than `A` older than one before it in the partition, so: if the event
/// before offset `s` is older than `from - A`, every event before `s` is
/// older than `from`; if the first event at or after `e` is at least
/// `until + A`, every event from `e` on is at least `until`. DataFusion
/// filters the window's rows by time on top.
///
/// A chunk (both bounds) is refused when the log has forgotten events
/// that could be in it: the partition's log starts after offset 0, and
/// its first kept event is less than `A` older than `from` or newer.
async fn time_window(
    shared: &Shared,
    w: &Window,
    from: Option<i64>,
    until: Option<i64>,
) -> DfResult<(i64, i64)> {
    let pc = client(shared, w.partition).await?;
    let allowance = shared.spec.out_of_order_ms;
    let earliest = pc
        .get_offset(OffsetAt::Earliest)
        .await
        .map_err(|e| ext(read_error(&shared.spec, e)))?;
    let lo = w.lo.max(earliest);
    if let (Some(from), Some(_)) = (from, until)
        && earliest > 0
        && let Some((_, first)) = event_at(shared, &pc, earliest, w.hi).await?
        && from <= first.saturating_add(allowance)
    {
        return Err(ext(KafkaError::Gone {
            topic: shared.spec.topic.clone(),
            partition: w.partition,
            lo: 0,
            earliest,
        }));
    }
    let start = match from {
        Some(t) => first_at_least(shared, &pc, lo, w.hi, t.saturating_sub(allowance)).await?,
        None => lo,
    };
    let end = match until {
        Some(t) => first_at_least(shared, &pc, start, w.hi, t.saturating_add(allowance)).await?,
        None => w.hi,
    };
    Ok((start, end))
}

/// The first event at or after `offset` and before `hi`: its offset and
/// timestamp (ms).
async fn event_at(
    shared: &Shared,
    pc: &PartitionClient,
    offset: i64,
    hi: i64,
) -> DfResult<Option<(i64, i64)>> {
    let (records, _) = fetch(pc, &shared.spec, offset, PROBE_BYTES, 100)
        .await
        .map_err(ext)?;
    Ok(records
        .iter()
        .find(|r| r.offset >= offset)
        .filter(|r| r.offset < hi)
        .map(|r| (r.offset, r.record.timestamp.timestamp_millis())))
}

/// Bisects `[lo, hi)` for an offset `s` such that the event before `s`
/// (if any in the range) is older than `target` and the first event at
/// or after `s` (if any) is not: `hi` when no event reaches `target`.
async fn first_at_least(
    shared: &Shared,
    pc: &PartitionClient,
    lo: i64,
    hi: i64,
    target: i64,
) -> DfResult<i64> {
    let (mut l, mut h) = (lo, hi);
    while l < h {
        let mid = l + (h - l) / 2;
        match event_at(shared, pc, mid, h).await? {
            // Offsets [mid, at) are holes: starting at mid is starting at
            // the event.
            Some((at, ts)) if ts < target => l = at + 1,
            _ => h = mid,
        }
    }
    Ok(l)
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

/// A fetch started before it is needed, so that the broker's and the
/// network's time overlaps decoding: the reader asks for the events after
/// the ones it has just received.
struct Ahead {
    partition: i32,
    offset: i64,
    task: JoinHandle<Result<(Vec<RecordAndOffset>, i64), KafkaError>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(a) = self.ahead.take() {
            a.task.abort();
        }
    }
}

impl Reader {
    /// The events at `offset` of `partition` (and the partition's high
    /// watermark): the fetch started ahead if it is for them, else a new one.
    async fn fetch(
        &mut self,
        pc: &PartitionClient,
        partition: i32,
        offset: i64,
    ) -> DfResult<(Vec<RecordAndOffset>, i64)> {
        if let Some(a) = self.ahead.take() {
            if (a.partition, a.offset) == (partition, offset) {
                return a
                    .task
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(ext);
            }
            a.task.abort();
        }
        fetch(pc, &self.shared.spec, offset, FETCH_BYTES, 500)
            .await
            .map_err(ext)
    }

    fn fetch_ahead(&mut self, pc: Arc<PartitionClient>, partition: i32, offset: i64) {
        let shared = self.shared.clone();
        let task =
            tokio::spawn(async move { fetch(&pc, &shared.spec, offset, FETCH_BYTES, 500).await });
        self.ahead = Some(Ahead {
            partition,
            offset,
            task,
        });
    }

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
            let pc = client(&self.shared, w.partition).await?;
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
            let (records, high_watermark) = self.fetch(&pc, w.partition, next).await?;
            match records.last().map(|r| r.offset) {
                Some(last) => {
                    self.next = Some(last + 1);
                    if last + 1 < w.hi {
                        self.fetch_ahead(pc.clone(), w.partition, last + 1);
                    }
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
        assert_eq!(gone.class(), backfill_core::ErrorClass::Permanent);
    }
}
