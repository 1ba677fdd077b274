//! Reading a Parquet folder back: its visible files, as one table.

use super::*;

#[async_trait]
impl ReadBack for ParquetSink {
    async fn visible_files(&self) -> Result<Option<Vec<String>>, SinkError> {
        let mut files: Vec<String> = self
            .list()
            .await?
            .into_iter()
            .filter(|(name, rel)| {
                name.ends_with(".parquet")
                    && !rel
                        .split('/')
                        .any(|part| part.starts_with('.') || part.starts_with('_'))
            })
            .map(|(_, rel)| rel)
            .collect();
        files.sort();
        Ok(Some(files))
    }

    /// Published files only: staged ones end in `.inprogress`. Partition
    /// directories become text columns.
    async fn table(
        &self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, SinkError> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::{
            ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
        };
        match &self.remote {
            Some(r) => r.register(ctx),
            None if !self.root.exists() => return Ok(None),
            None => {}
        }
        let read = |e: datafusion::error::DataFusionError| {
            SinkError::read(format!("scanning {}", self.shown))(e)
        };
        let url = ListingTableUrl::parse(self.url()?.as_str()).map_err(read)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(
                self.partition_by
                    .iter()
                    .map(|c| (c.clone(), DataType::Utf8))
                    .collect(),
            );
        let schema = match options.infer_schema(&ctx.state(), &url).await {
            Ok(s) => s,
            Err(e) if e.to_string().contains("No files found") => return Ok(None),
            Err(e) => return Err(read(e)),
        };
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(schema);
        Ok(Some(Arc::new(ListingTable::try_new(config).map_err(read)?)))
    }

    /// The union of the published files' schemas, the widest type winning,
    /// from one footer per chunk (a chunk's files share one schema).
    async fn current_schema(
        &self,
        _ctx: &datafusion::prelude::SessionContext,
    ) -> Result<Option<SchemaRef>, SinkError> {
        use futures::{StreamExt, TryStreamExt};
        let found = self.scan().await?;
        let firsts: Vec<String> = found
            .published
            .values()
            .filter_map(|files| files.first().cloned())
            .collect();
        let schemas: Vec<Schema> = futures::stream::iter(firsts)
            .map(|rel| async move { self.file_schema(&rel).await })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut fields: Vec<arrow::datatypes::Field> = Vec::new();
        for s in schemas {
            for f in s.fields() {
                match fields.iter_mut().find(|x| x.name() == f.name()) {
                    None => fields.push(f.as_ref().clone()),
                    Some(x) => {
                        if crate::evolve::change(x.data_type(), f.data_type())
                            == Some(crate::evolve::Change::Widen)
                        {
                            *x = f.as_ref().clone();
                        }
                    }
                }
            }
        }
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    async fn open_file(&self, rel: &str) -> Result<Box<dyn AsyncFileReader>, SinkError> {
        match &self.remote {
            Some(r) => {
                let key = r.key(rel)?;
                let meta = r.store.head(&key).await.map_err(r.err("reading", &key))?;
                Ok(Box::new(crate::store::ObjectFile {
                    store: r.store.clone(),
                    key,
                    size: meta.size,
                }))
            }
            None => {
                let abs = self.abs(rel);
                let file = tokio::fs::File::open(&abs)
                    .await
                    .map_err(io("reading", &abs))?;
                Ok(Box::new(file))
            }
        }
    }
}
