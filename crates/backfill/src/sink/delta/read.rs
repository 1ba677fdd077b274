//! Reading a Delta table back, at its current version, as readers see it.

use super::*;

#[async_trait]
impl ReadBack for Arc<DeltaSink> {
    async fn open_file(
        &self,
        rel: &str,
    ) -> Result<Box<dyn parquet::arrow::async_reader::AsyncFileReader>, SinkError> {
        self.files.open_file(rel).await
    }

    /// The table's current version, as the log describes it.
    async fn table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        let Some(table) = self.open().await? else {
            return Ok(None);
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(self.err())?;
        let provider = table
            .table_provider()
            .await
            .map_err(SinkError::read(format!("scanning {}", self.shown)))?;
        Ok(Some(provider))
    }

    /// `validate` reads the chunk's range from the table's current version,
    /// as readers see it: rows another writer added to the range, or a
    /// copy a publish failed to remove, count against the chunk.
    async fn read_chunk(
        &self,
        chunk: &Chunk,
    ) -> Result<Option<datafusion::physical_plan::SendableRecordBatchStream>, SinkError> {
        let what = format!("reading {}", self.shown);
        let read = |e| SinkError::read(what.clone())(e);
        let ctx = datafusion::prelude::SessionContext::new();
        let Some(table) = self.open().await? else {
            return Ok(Some(
                ctx.read_empty()
                    .map_err(read)?
                    .execute_stream()
                    .await
                    .map_err(read)?,
            ));
        };
        table
            .update_datafusion_session(&ctx.state())
            .map_err(self.err())?;
        let provider = table.table_provider().await.map_err(read)?;
        let mut df = ctx.read_table(provider).map_err(read)?;
        if let Some(col) = &self.range_column {
            let c = format!("\"{}\"", col.replace('"', "\"\""));
            let lit = |v: backfill_core::interval::RangeValue| match v {
                backfill_core::interval::RangeValue::Int(i) => i.to_string(),
                backfill_core::interval::RangeValue::Time(us) => {
                    chrono::DateTime::from_timestamp_micros(us).map_or("NULL".into(), |t| {
                        format!(
                            "TIMESTAMP '{}'",
                            t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f")
                        )
                    })
                }
            };
            let mut parts = Vec::new();
            if let Some(v) = &chunk.value {
                parts.push(format!("{c} = '{}'", v.replace('\'', "''")));
            }
            if let Some(lo) = chunk.lo {
                parts.push(format!("{c} >= {}", lit(lo)));
            }
            if let Some(hi) = chunk.hi {
                parts.push(format!("{c} < {}", lit(hi)));
            }
            if !parts.is_empty() {
                let expr = df.parse_sql_expr(&parts.join(" AND ")).map_err(read)?;
                df = df.filter(expr).map_err(read)?;
            }
        }
        Ok(Some(df.execute_stream().await.map_err(read)?))
    }
}
