//! `[target] sort_by`: the rows a chunk writes to its target, sorted before
//! they reach the writer. The sort sits after the splitter, so it sees every
//! row the target gets, also those global dedup holds back until the chunk
//! ends; DataFusion's sort spills to disk beyond the chunk's memory share.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use backfill_core::spec::OrderKey;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::Column;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionContext, col};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::ChunkError;
use crate::sink::ChunkWriter;

/// Where the target's rows go: straight to the writer, or into the sort.
pub enum TargetOut<'a> {
    Direct(&'a mut dyn ChunkWriter),
    Sorted(mpsc::Sender<RecordBatch>),
}

impl TargetOut<'_> {
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), ChunkError> {
        match self {
            TargetOut::Direct(w) => Ok(w.write(batch).await?),
            TargetOut::Sorted(tx) => tx.send(batch).await.map_err(|_| {
                ChunkError::from(DataFusionError::Execution(
                    "the sort of the chunk's rows stopped".into(),
                ))
            }),
        }
    }
}

/// The batches sent to a channel, as the one partition of a table.
#[derive(Debug)]
struct Received {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<RecordBatch>>>,
}

impl PartitionStream for Received {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let stream = futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let batch = rx.recv().await?;
            Some((Ok(batch), Some(rx)))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// A channel for the target's rows, and the future that sorts what arrives
/// on it by `keys` and writes it to `target` once the sender is dropped.
pub fn sorted_writer<'a>(
    ctx: &'a SessionContext,
    schema: SchemaRef,
    keys: &'a [OrderKey],
    target: &'a mut dyn ChunkWriter,
) -> (
    mpsc::Sender<RecordBatch>,
    impl std::future::Future<Output = Result<(), ChunkError>> + 'a,
) {
    // A few batches in flight: the sort takes them as they come.
    let (tx, rx) = mpsc::channel(4);
    let fut = async move {
        let part = Received {
            schema: schema.clone(),
            rx: Mutex::new(Some(rx)),
        };
        let table = StreamingTable::try_new(schema, vec![Arc::new(part)])?;
        let order = keys
            .iter()
            .map(|k| {
                col(Column::new_unqualified(k.column.clone())).sort(!k.descending, k.nulls_first)
            })
            .collect();
        let mut sorted = ctx
            .read_table(Arc::new(table))?
            .sort(order)?
            .execute_stream()
            .await?;
        while let Some(batch) = sorted.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                target.write(batch).await?;
            }
        }
        Ok(())
    };
    (tx, fut)
}
