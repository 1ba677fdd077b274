//! Reading a PostgreSQL target back, through the PostgreSQL source.

use super::*;

#[async_trait]
impl ReadBack for PgSink {
    async fn read_chunk(
        &self,
        chunk: &Chunk,
    ) -> Result<Option<datafusion::physical_plan::SendableRecordBatchStream>, SinkError> {
        let inner = &self.inner;
        let client = inner.connect().await?;
        if !inner.table_exists(&client, &inner.table.name).await? {
            return Ok(Some(Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    Arc::new(Schema::empty()),
                    futures::stream::empty(),
                ),
            )));
        }
        // A merged chunk owns no slice, but its rows lie in its range.
        let predicate = match (&inner.slice, &inner.range_column) {
            (Slice::Merge(_), Some(col)) => range_predicate(col, chunk, &inner.columns())?,
            (Slice::Merge(_), None) => "true".to_string(),
            _ => inner
                .slice_predicate(chunk)?
                .unwrap_or_else(|| "true".into()),
        };
        let source = inner
            .read_back(backfill_core::spec::PgRelation::Query(format!(
                "SELECT * FROM {} WHERE {predicate}",
                inner.table.quoted()
            )))
            .await?;
        let ctx = datafusion::prelude::SessionContext::new();
        let df = ctx
            .read_table(crate::source::Source::table(&source))
            .map_err(SinkError::read(format!("reading back chunk {}", chunk.id)))?;
        let stream = df
            .execute_stream()
            .await
            .map_err(SinkError::read(format!("reading back chunk {}", chunk.id)))?;
        Ok(Some(stream))
    }

    /// The table through the PostgreSQL source: filters and the projection
    /// go to the server, so `gaps` streams only the range column.
    async fn table(
        &self,
        _ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        let inner = &self.inner;
        let client = inner.connect().await?;
        if !inner.table_exists(&client, &inner.table.name).await? {
            return Ok(None);
        }
        let source = inner
            .read_back(backfill_core::spec::PgRelation::Table(inner.table.clone()))
            .await?;
        Ok(Some(crate::source::Source::table(&source)))
    }
}
