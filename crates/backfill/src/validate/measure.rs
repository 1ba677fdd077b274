//! Measuring rows without writing them: counts, the row checksum and
//! per-group tallies, for the expected (source) and actual (target) views.

use super::*;

/// Accumulates rows, a checksum and per-group tallies of what would be (or
/// was) written, without writing anything.
pub struct Measure {
    pub(super) partition_by: Vec<String>,
    pub(super) group_by: Vec<String>,
    pub(super) sums: Vec<String>,
    /// Which checksum to compute, if any.
    pub(super) checksum_version: Option<ChecksumVersion>,
    pub rows: u64,
    pub checksum: u64,
    pub groups: HashMap<Vec<String>, Tally>,
    pub(super) row_checksum: Option<RowChecksum>,
    /// The first observed batch's schema: what rows read back from a
    /// database are cast to before they are compared.
    pub(super) schema: Option<arrow::datatypes::SchemaRef>,
}

impl Measure {
    pub(super) fn new(
        partition_by: &[String],
        group_by: &[String],
        sums: &[String],
        checksum_version: Option<ChecksumVersion>,
    ) -> Measure {
        Measure {
            partition_by: partition_by.to_vec(),
            group_by: group_by.to_vec(),
            sums: sums.to_vec(),
            checksum_version,
            rows: 0,
            checksum: 0,
            groups: HashMap::new(),
            row_checksum: None,
            schema: None,
        }
    }

    /// A group value as both sides spell it: partition columns in their
    /// escaped directory form, others as Arrow displays them.
    pub(super) fn value(
        &self,
        col: &str,
        array: &dyn Array,
        row: usize,
    ) -> Result<String, SinkError> {
        if self.partition_by.iter().any(|p| p == col) {
            Ok(partition_value(array, row)?)
        } else if array.is_null(row) {
            Ok("NULL".to_string())
        } else {
            Ok(array_value_to_string(array, row)?)
        }
    }

    /// Tallies a batch of transformed rows (all columns present).
    pub(super) fn observe(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if self.schema.is_none() {
            self.schema = Some(batch.schema());
        }
        self.tally(batch, &HashMap::new())?;
        if self.checksum_version.is_some() {
            self.checksum = self
                .checksum
                .wrapping_add(self.checksum_by_partition(batch)?);
        }
        Ok(())
    }

    /// Counts rows and sums per group. Group columns found in `dir_values`
    /// (partition values of a published file's directory) take that value.
    pub(super) fn tally(
        &mut self,
        batch: &RecordBatch,
        dir_values: &HashMap<String, String>,
    ) -> Result<(), SinkError> {
        let n = batch.num_rows();
        self.rows += n as u64;
        let schema = batch.schema();
        let sums = sum_arrays(batch, &self.sums)?;
        let mut keys: Vec<Vec<String>> = vec![Vec::with_capacity(self.group_by.len()); n];
        for g in &self.group_by {
            if let Some(v) = dir_values.get(&escape_partition_value(g)) {
                keys.iter_mut().for_each(|k| k.push(v.clone()));
                continue;
            }
            let col = batch.column(schema.index_of(g)?);
            for (i, key) in keys.iter_mut().enumerate() {
                key.push(self.value(g, col.as_ref(), i)?);
            }
        }
        for (i, key) in keys.into_iter().enumerate() {
            let t = self.groups.entry(key).or_default();
            t.rows += 1;
            t.sums.resize(sums.len(), 0.0);
            for (s, arr) in t.sums.iter_mut().zip(&sums) {
                if let Some(a) = arr
                    && !a.is_null(i)
                {
                    *s += a.value(i);
                }
            }
        }
        Ok(())
    }

    /// The checksum, made for the first batch's columns.
    pub(super) fn row_checksum(&mut self, schema: &Schema) -> Result<&RowChecksum, SinkError> {
        if self.row_checksum.is_none() {
            let version = self.checksum_version.unwrap_or(ChecksumVersion::CURRENT);
            self.row_checksum = Some(RowChecksum::new(version, schema)?);
        }
        self.row_checksum.as_ref().ok_or(SinkError::WriterGone)
    }

    /// The sink's checksum of these rows, as if written.
    pub(super) fn checksum_by_partition(&mut self, batch: &RecordBatch) -> Result<u64, SinkError> {
        let schema = batch.schema();
        let part_idx: Vec<usize> = self
            .partition_by
            .iter()
            .map(|p| schema.index_of(p))
            .collect::<Result<_, _>>()?;
        let data_idx: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !part_idx.contains(i))
            .collect();
        let data = batch.project(&data_idx)?;
        let mut by_dir: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let mut dir = String::new();
            for (&p, name) in part_idx.iter().zip(&self.partition_by) {
                dir.push_str(&escape_partition_value(name));
                dir.push('=');
                dir.push_str(&partition_value(batch.column(p).as_ref(), i)?);
                dir.push('/');
            }
            by_dir.entry(dir).or_default().push(i as u32);
        }
        let checksum = self.row_checksum(&data.schema())?;
        let mut sum = 0u64;
        for (dir, idx) in by_dir {
            let part = take_record_batch(&data, &UInt32Array::from(idx))?;
            sum = sum.wrapping_add(checksum.rows(&part, partition_seed(&dir))?);
        }
        Ok(sum)
    }

    /// Tallies rows read back from a database table, cast column by column
    /// to `like` (the rows as the transform produced them), so the checksum
    /// compares values, not how the database spells their types.
    pub(super) async fn observe_stream(
        &mut self,
        mut stream: datafusion::physical_plan::SendableRecordBatchStream,
        like: Option<arrow::datatypes::SchemaRef>,
    ) -> Result<(), SinkError> {
        use futures::StreamExt;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(SinkError::read("reading the target"))?;
            let batch = match &like {
                Some(schema) => {
                    let mut columns = Vec::with_capacity(schema.fields().len());
                    for f in schema.fields() {
                        let col = batch.column_by_name(f.name()).ok_or_else(|| {
                            SinkError::Invalid(format!("the table has no column \"{}\"", f.name()))
                        })?;
                        columns.push(arrow::compute::cast(col, f.data_type())?);
                    }
                    RecordBatch::try_new(schema.clone(), columns)?
                }
                None => batch,
            };
            self.observe(&batch)?;
        }
        Ok(())
    }

    /// Tallies a published file; partition values come from its directory.
    pub(super) async fn observe_file(
        &mut self,
        sink: &dyn Sink,
        rel: &str,
    ) -> Result<(), SinkError> {
        let file = sink.open_file(rel).await?;
        let pq = |source| SinkError::Parquet {
            path: rel.into(),
            source,
        };
        let mut reader = ParquetRecordBatchStreamBuilder::new(file)
            .await
            .map_err(pq)?
            .build()
            .map_err(pq)?;
        let dir = rel
            .rsplit_once('/')
            .map_or(String::new(), |(d, _)| format!("{d}/"));
        let dir_values: HashMap<String, String> = dir
            .split('/')
            .filter_map(|seg| seg.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let seed = partition_seed(&dir);
        while let Some(batch) = reader.try_next().await.map_err(pq)? {
            if self.checksum_version.is_some() {
                let sum = self.row_checksum(&batch.schema())?.rows(&batch, seed)?;
                self.checksum = self.checksum.wrapping_add(sum);
            }
            self.tally(&batch, &dir_values)?;
        }
        Ok(())
    }
}

/// The `[validate] sum` columns of a batch as f64 (None where absent).
pub(super) fn sum_arrays(
    batch: &RecordBatch,
    cols: &[String],
) -> Result<Vec<Option<Float64Array>>, SinkError> {
    let schema = batch.schema();
    cols.iter()
        .map(|c| match schema.index_of(c) {
            Ok(i) => {
                let a: ArrayRef = cast(batch.column(i), &DataType::Float64)?;
                Ok(a.as_any().downcast_ref::<Float64Array>().cloned())
            }
            Err(_) => Ok(None),
        })
        .collect()
}

#[async_trait]
impl ChunkWriter for Measure {
    async fn write(&mut self, batch: arrow::array::RecordBatch) -> Result<(), SinkError> {
        self.observe(&batch)
    }

    async fn finish(self: Box<Self>) -> Result<Staged, SinkError> {
        Ok(Staged::default())
    }

    async fn abort(self: Box<Self>) {}
}
