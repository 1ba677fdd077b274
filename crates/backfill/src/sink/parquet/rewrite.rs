//! Rewriting a published file without the rows of a range, for chunks
//! replanned over files that other chunks also wrote.

use super::*;

/// What [`ParquetSink::rewrite_without`] did with a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewritten {
    /// No row was in the range: the file stays as it is.
    Untouched,
    /// Every row was: the file goes, and nothing replaces it.
    Emptied,
    /// The other rows were written to the new file (its size).
    Kept { rows: u64, size: u64 },
}

impl ParquetSink {
    /// A published file's footer.
    pub async fn metadata(
        &self,
        rel: &str,
    ) -> Result<Arc<parquet::file::metadata::ParquetMetaData>, SinkError> {
        let mut file = self.open_file(rel).await?;
        file.get_metadata(None)
            .await
            .map_err(|source| SinkError::Parquet {
                path: PathBuf::from(rel),
                source,
            })
    }

    /// Reads the table file `from` and writes its rows that `in_range`
    /// does not select to the file `to`, in the same directory (so with the
    /// same partition values) and with the same schema, streaming one
    /// batch at a time. The new file is fsynced (or uploaded) before this
    /// returns; `from` is left in place, for the caller's commit to remove.
    pub async fn rewrite_without(
        &self,
        from: &str,
        to: &str,
        in_range: impl Fn(&RecordBatch) -> Result<Option<arrow::array::BooleanArray>, String>,
    ) -> Result<Rewritten, SinkError> {
        use futures::TryStreamExt;
        let pq = |path: &str| {
            let path = PathBuf::from(path);
            move |source| SinkError::Parquet { path, source }
        };
        let reader = self.open_file(from).await?;
        let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(pq(from))?;
        let schema = builder.schema().clone();
        let mut stream = builder.build().map_err(pq(from))?;
        // Local: a hidden name beside the final one, renamed once complete.
        // Remote: a spool file, uploaded once complete.
        let local = match &self.remote {
            Some(_) => {
                std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
                self.root
                    .join(format!(".rewrite-{}", to.replace('/', "%2F")))
            }
            None => self.abs(&staged_name(to)),
        };
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let file = File::create(&local).map_err(io("creating", &local))?;
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, schema, Some(self.props.clone()))
                .map_err(pq(to))?;
        let (mut matched, mut kept) = (0u64, 0u64);
        let result: Result<(), SinkError> = async {
            while let Some(batch) = stream.try_next().await.map_err(pq(from))? {
                let mask =
                    in_range(&batch).map_err(SinkError::read(format!("{}: {from}", self.shown)))?;
                let rest = match mask {
                    None => {
                        matched += batch.num_rows() as u64;
                        continue;
                    }
                    Some(m) => {
                        matched += m.true_count() as u64;
                        let keep = arrow::compute::not(&m)?;
                        arrow::compute::filter_record_batch(&batch, &keep)?
                    }
                };
                kept += rest.num_rows() as u64;
                if rest.num_rows() > 0 {
                    writer.write(&rest).map_err(pq(to))?;
                }
            }
            Ok(())
        }
        .await;
        let discard = |local: &Path| {
            let _ = std::fs::remove_file(local);
        };
        if let Err(e) = result {
            discard(&local);
            return Err(e);
        }
        if matched == 0 || kept == 0 {
            drop(writer);
            discard(&local);
            return Ok(if matched == 0 {
                Rewritten::Untouched
            } else {
                Rewritten::Emptied
            });
        }
        let file = writer.into_inner().map_err(pq(to))?;
        file.sync_all().map_err(io("syncing", &local))?;
        let size = file
            .metadata()
            .map_err(io("reading size of", &local))?
            .len();
        drop(file);
        match &self.remote {
            Some(r) => {
                let uploaded = upload(r, &local, to).await;
                discard(&local);
                uploaded?;
            }
            None => {
                let dest = self.abs(to);
                std::fs::rename(&local, &dest).map_err(io("publishing", &dest))?;
            }
        }
        Ok(Rewritten::Kept { rows: kept, size })
    }

    /// A published file's Arrow schema, from its footer.
    pub(super) async fn file_schema(&self, rel: &str) -> Result<Schema, SinkError> {
        let mut file = self.open_file(rel).await?;
        let pq = |source| SinkError::Parquet {
            path: PathBuf::from(rel),
            source,
        };
        let md = file.get_metadata(None).await.map_err(pq)?;
        let fm = md.file_metadata();
        parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map_err(pq)
    }
}
