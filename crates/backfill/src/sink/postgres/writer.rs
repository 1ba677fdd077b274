//! A chunk's writer for a PostgreSQL target: binary COPY into the chunk's
//! staging table, with the row checksum computed on the way.

use super::*;

pub(super) struct Copying {
    pub(super) writer: std::pin::Pin<Box<BinaryCopyInWriter>>,
    /// Per batch column: its target type and modifier.
    pub(super) types: Vec<(Type, i32)>,
    pub(super) names: Vec<String>,
    pub(super) checksum: RowChecksum,
}

pub(super) struct PgChunkWriter {
    pub(super) inner: Arc<Inner>,
    pub(super) chunk: Chunk,
    pub(super) stage: String,
    pub(super) client: Client,
    pub(super) copying: Option<Copying>,
    pub(super) staged: bool,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) checksum: u64,
}

impl PgChunkWriter {
    /// Creates the staging table with the batch's columns, typed as the
    /// target's, and opens the COPY into it.
    pub(super) async fn start(&mut self, schema: &SchemaRef) -> Result<(), SinkError> {
        let inner = self.inner.clone();
        let stage = self.stage.clone();
        let client = &self.client;
        inner.ensure(client, Some(schema)).await?;
        let what = format!("writing chunk {} into {}", self.chunk.id, inner.table);
        let target = client
            .prepare(&format!("SELECT * FROM {} LIMIT 0", inner.table.quoted()))
            .await
            .map_err(PgError::sql(&what))?;
        let mut types = Vec::new();
        let mut missing = Vec::new();
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for name in &names {
            match target.columns().iter().find(|c| c.name() == name) {
                Some(c) => types.push((c.type_().clone(), c.type_modifier())),
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(PgError::Invalid(format!(
                "target table {} has no column(s) {} that the transformed rows have (table columns: {})",
                inner.table,
                missing.join(", "),
                target
                    .columns()
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
        if let Slice::Range(Some(col)) = &inner.slice
            && !names.contains(col)
        {
            return Err(PgError::Invalid(format!(
                "target.mode = \"replace\" deletes each chunk's range before inserting it, so the \
                 transformed rows need the range column \"{col}\""
            ))
            .into());
        }
        let list = names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ");
        inner.create_stage(client, &stage, &list, &what).await?;
        let staged = inner.qualified(&stage);
        self.staged = true;
        let sink = client
            .copy_in(&format!(
                "COPY {staged} ({list}) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(PgError::sql(&what))?;
        let pg_types: Vec<Type> = types.iter().map(|(t, _)| t.clone()).collect();
        let checksum = RowChecksum::new(ChecksumVersion::CURRENT, schema)?;
        self.copying = Some(Copying {
            writer: Box::pin(BinaryCopyInWriter::new(sink, &pg_types)),
            types,
            names,
            checksum,
        });
        Ok(())
    }

    pub(super) async fn drop_stage(&mut self) {
        if self.staged {
            let _ = self
                .client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}",
                    self.inner.qualified(&self.stage)
                ))
                .await;
        }
    }
}

#[async_trait]
impl ChunkWriter for PgChunkWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        failpoint::hit("write", self.chunk.index)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.copying.is_none() {
            self.start(&batch.schema()).await?;
        }
        let Some(c) = self.copying.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        // NULL never conflicts, so a re-run would insert such rows again.
        if let Slice::Merge(keys) = &self.inner.slice {
            for key in keys {
                let nulls = batch.column_by_name(key).map_or(0, |col| col.null_count());
                if nulls > 0 {
                    return Err(PgError::Invalid(format!(
                        "merge key \"{key}\" is NULL in {nulls} row(s), which would be inserted again by every re-run; \
                         quarantine them with a rule such as check = \"{key} IS NOT NULL\""
                    ))
                    .into());
                }
            }
        }
        if self.inner.checksum {
            self.checksum = self
                .checksum
                .wrapping_add(c.checksum.rows(&batch, partition_seed(""))?);
        }
        let mut columns = Vec::with_capacity(c.types.len());
        for (i, (ty, typmod)) in c.types.iter().enumerate() {
            let col =
                Column::new(batch.column(i), ty, *typmod).map_err(|reason| PgError::Column {
                    what: format!("writing {}", self.inner.table),
                    column: c.names[i].clone(),
                    reason,
                })?;
            columns.push(col);
        }
        let what = format!("writing chunk {} into {}", self.chunk.id, self.inner.table);
        // One set of cells per batch, pointed at each row in turn: no
        // allocation per row.
        let current = AtomicUsize::new(0);
        let cells: Vec<Cell> = columns
            .iter()
            .map(|column| Cell {
                column,
                row: &current,
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        for row in 0..batch.num_rows() {
            current.store(row, Ordering::Relaxed);
            c.writer
                .as_mut()
                .write(&refs)
                .await
                .map_err(PgError::sql(&what))?;
        }
        self.rows += batch.num_rows() as u64;
        self.bytes += batch.get_array_memory_size() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged, SinkError> {
        let what = format!("writing chunk {} into {}", self.chunk.id, self.inner.table);
        if let Some(mut c) = self.copying.take() {
            if let Err(e) = c.writer.as_mut().finish().await {
                self.drop_stage().await;
                return Err(PgError::sql(&what)(e).into());
            }
        } else {
            // No rows: an empty staging table still replaces the chunk's
            // slice, so rows an earlier run wrote there go away.
            let inner = self.inner.clone();
            let client = &self.client;
            inner.ensure(client, None).await?;
            if !inner.table_exists(client, &inner.table.name).await? {
                return Ok(Staged::default());
            }
            inner.create_stage(client, &self.stage, "*", &what).await?;
        }
        Ok(Staged {
            files: vec![OwnedFile {
                path: stage_path(&self.inner.table.to_string(), &self.stage, self.rows),
                staged: self.stage.clone(),
            }],
            rows: self.rows,
            bytes: self.bytes,
            checksum: self.checksum,
        })
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(c) = self.copying.take() {
            // Dropping the writer mid-COPY aborts the COPY.
            drop(c);
        }
        self.drop_stage().await;
    }
}
