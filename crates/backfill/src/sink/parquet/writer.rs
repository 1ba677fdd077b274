//! A chunk's writer: rows into partitioned Parquet files (local, or spooled
//! and uploaded for an object store), each file capped in size, encodings
//! chosen from a sample.

use super::*;

/// A new spool directory in `tmp`, `backfill-spool-<pid>-<random>`: a name
/// nobody can guess in advance, created (never reused: an existing folder
/// or symlink of that name is refused) with mode 0700, so another local
/// user can neither plant it nor read what is spooled.
pub(super) fn new_spool(tmp: &Path) -> Result<PathBuf, SinkError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut tries = 0;
    loop {
        let path = tmp.join(format!(
            "backfill-spool-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(io("creating the spool directory", &path)(e)),
        }
    }
}

/// Removes spool directories (`backfill-spool-<pid>-<n>`) of processes that
/// are gone, e.g. killed while uploading.
pub(super) fn sweep_dead_spools() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("backfill-spool-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !backfill_core::state::process_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Copies a spooled file to its key; multipart for large files.
pub(super) async fn upload(remote: &Remote, local: &Path, rel: &str) -> Result<(), SinkError> {
    let key = remote.key(rel)?;
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(io("reading spooled file", local))?;
    let mut w = object_store::buffered::BufWriter::with_capacity(
        remote.store.clone(),
        key.clone(),
        UPLOAD_BUFFER,
    );
    let copied = match tokio::io::copy(&mut file, &mut w).await {
        Ok(_) => w.shutdown().await,
        Err(e) => Err(e),
    };
    if let Err(e) = copied {
        let _ = w.abort().await;
        return Err(SinkError::Io {
            op: "uploading",
            path: PathBuf::from(format!("{}/{rel}", remote.shown.trim_end_matches('/'))),
            source: e,
        });
    }
    Ok(())
}

pub(super) fn partitionable(dt: &DataType) -> bool {
    dt.is_integer()
        || dt.is_floating()
        || matches!(
            dt,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Boolean
                | DataType::Date32
                | DataType::Date64
                | DataType::Decimal128(..)
        )
        || matches!(dt, DataType::Dictionary(_, v) if partitionable(v))
}

/// Rows of the first batch a chunk writer samples to choose encodings.
pub(super) const DICTIONARY_SAMPLE: usize = 8192;
/// Below this many non-null values the sample says too little; the column
/// keeps Parquet's default (dictionary).
pub(super) const DICTIONARY_MIN_SAMPLE: usize = 512;

/// Turns dictionary encoding off for columns whose sampled values are mostly
/// distinct (ids, timestamps, amounts, e-mails). For those the writer would
/// intern every value, give up only when the dictionary page passes 1 MiB
/// (more than a row group of such values fills), and store a dictionary as
/// large as the data: a third of the encoding time for no gain in size.
/// Decided once per chunk writer from its first batch, as DuckDB decides
/// from a sample; readers see the same values either way.
pub(super) fn tune_dictionary(
    props: WriterProperties,
    batch: &RecordBatch,
) -> Result<WriterProperties, SinkError> {
    let mut builder = props.into_builder();
    let sample = batch.slice(0, batch.num_rows().min(DICTIONARY_SAMPLE));
    for (field, array) in sample.schema().fields().iter().zip(sample.columns()) {
        let dt = field.data_type();
        if dt.is_nested() || matches!(dt, DataType::Dictionary(..) | DataType::Boolean) {
            continue;
        }
        let values = array.len() - array.null_count();
        if values < DICTIONARY_MIN_SAMPLE {
            continue;
        }
        // Counted by the checksum's value hashes, which are uniform already:
        // a weekly job samples every column of every chunk, and encoding
        // rows to SipHash and compare them was 10% of such a job's
        // instructions at 1M rows. A collision only nudges a heuristic.
        let hashes = value_hashes(array)?;
        let mut distinct: HashSet<u64, BuildHasherDefault<HashIsKey>> =
            HashSet::with_capacity_and_hasher(values, Default::default());
        distinct.extend(
            hashes
                .iter()
                .enumerate()
                .filter(|&(i, _)| array.is_valid(i))
                .map(|(_, h)| *h),
        );
        if distinct.len() * 2 > values {
            let path = parquet::schema::types::ColumnPath::new(vec![field.name().clone()]);
            builder = builder.set_column_dictionary_enabled(path, false);
        }
    }
    Ok(builder.build())
}

/// Splits batches by partition values into one open file per partition.
///
/// At most `memory.max_open` files are open at once, and their row groups
/// share `memory.bytes`. Once that many partitions are open, the rows of
/// any other partition go to spill files on disk, by a hash of their
/// partition values; when the chunk's rows are all in, the open files are
/// closed and each spill file is written out in turn the same way (split
/// again if it still holds too many partitions). A partition thus still
/// gets one file per chunk (more only when row groups fill it), whatever
/// the order of the rows.
pub(super) struct PartitionedWriter {
    pub(super) root: PathBuf,
    pub(super) chunk_id: String,
    pub(super) attempt: u32,
    pub(super) stamp: u64,
    pub(super) job_tag: String,
    pub(super) props: WriterProperties,
    pub(super) partition_by: Vec<String>,
    pub(super) layout: Option<Layout>,
    /// Index `i` names the file `RowGroupWriter` knows as `i` (this round's).
    pub(super) files: Vec<OwnedFile>,
    pub(super) by_key: HashMap<Box<[u8]>, usize>,
    /// Files opened in all rounds, which numbers their names.
    pub(super) opened: usize,
    pub(super) max_file_size: u64,
    pub(super) max_file_rows: Option<u64>,
    pub(super) memory: WriterMemory,
    /// Rows of partitions that found no open file, and the rounds to come.
    pub(super) spill: Option<Spill>,
    pub(super) pending: Vec<Pending>,
    pub(super) spill_dir: Option<tempfile::TempDir>,
    pub(super) spills: u32,
    pub(super) level: u32,
    /// The closed rounds.
    pub(super) done: Staged,
    pub(super) rows: u64,
    /// Every path created, so an abort can remove them all.
    pub(super) created: Vec<PathBuf>,
    pub(super) checksum: bool,
    pub(super) runtime: tokio::runtime::Handle,
}

pub(super) struct Layout {
    pub(super) part_cols: Vec<usize>,
    pub(super) data_cols: Vec<usize>,
    pub(super) converter: Option<RowConverter>,
    pub(super) groups: RowGroupWriter,
}

impl PartitionedWriter {
    pub(super) fn layout(&mut self, batch: &RecordBatch) -> Result<&Layout, SinkError> {
        if self.layout.is_none() {
            let schema = batch.schema();
            let mut part_cols = Vec::new();
            for name in &self.partition_by {
                let idx = schema
                    .index_of(name)
                    .map_err(|_| SinkError::MissingPartitionColumn {
                        column: name.clone(),
                        available: schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let dt = schema.field(idx).data_type();
                if !partitionable(dt) {
                    return Err(SinkError::BadPartitionType {
                        column: name.clone(),
                        data_type: dt.to_string(),
                    });
                }
                part_cols.push(idx);
            }
            let data_cols: Vec<usize> = (0..schema.fields().len())
                .filter(|i| !part_cols.contains(i))
                .collect();
            let data_schema = Arc::new(schema.project(&data_cols)?);
            self.props = tune_dictionary(self.props.clone(), &batch.project(&data_cols)?)?;
            let converter = if part_cols.is_empty() {
                None
            } else {
                Some(RowConverter::new(
                    part_cols
                        .iter()
                        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                        .collect(),
                )?)
            };
            let row_checksum = if self.checksum {
                Some(Arc::new(RowChecksum::new(
                    ChecksumVersion::CURRENT,
                    &data_schema,
                )?))
            } else {
                None
            };
            let mut groups =
                RowGroupWriter::new(self.runtime.clone(), data_schema.clone(), row_checksum);
            groups.set_file_bytes(self.max_file_size);
            if let Some(rows) = self.max_file_rows {
                groups.set_file_rows(rows);
            }
            self.layout = Some(Layout {
                part_cols,
                data_cols,
                converter,
                groups,
            });
        }
        self.layout.as_ref().ok_or(SinkError::WriterGone)
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.layout(batch)?;
        let Some(layout) = self.layout.as_ref() else {
            return Err(SinkError::WriterGone);
        };
        let data = batch.project(&layout.data_cols)?;
        let Some(converter) = layout.converter.as_ref() else {
            return self.write_capped(&[], batch, 0, data);
        };
        let part_arrays: Vec<_> = layout
            .part_cols
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let started = std::time::Instant::now();
        let rows = converter.convert_columns(&part_arrays)?;
        // Input is usually sorted by time, so most batches hold one or two
        // partitions: group contiguous runs, then merge runs per key.
        let mut groups: Vec<(Box<[u8]>, Vec<u32>)> = Vec::new();
        let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        for i in 0..batch.num_rows() {
            let key = rows.row(i);
            let same = current.is_some_and(|g| groups[g].0.as_ref() == key.as_ref());
            if !same {
                let g = match index.get(key.as_ref()) {
                    Some(&g) => g,
                    None => {
                        let boxed: Box<[u8]> = key.as_ref().into();
                        groups.push((boxed.clone(), Vec::new()));
                        index.insert(boxed, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                current = Some(g);
            }
            if let Some(g) = current {
                groups[g].1.push(i as u32);
            }
        }
        let mut writing = std::time::Duration::ZERO;
        for (key, idx) in groups {
            if !self.by_key.contains_key(&key) && self.by_key.len() >= self.memory.max_open {
                self.spill_rows(batch, &rows, idx)?;
                continue;
            }
            let first = idx[0] as usize;
            let part = if idx.len() == batch.num_rows() {
                data.clone()
            } else {
                take_record_batch(&data, &UInt32Array::from(idx))?
            };
            let start = std::time::Instant::now();
            self.write_capped(&key, batch, first, part)?;
            writing += start.elapsed();
        }
        if let Some(layout) = self.layout.as_mut() {
            let splitting = started.elapsed().saturating_sub(writing);
            let nanos = u64::try_from(splitting.as_nanos()).unwrap_or(u64::MAX);
            layout.groups.note_overhead(nanos, batch.num_rows());
        }
        Ok(())
    }

    /// Writes `part` (rows of partition `key`, whose first row is row
    /// `first` of `batch`) into the partition's open file, splitting it
    /// where a file reaches `max_file_rows` so that no file holds more.
    pub(super) fn write_capped(
        &mut self,
        key: &[u8],
        batch: &RecordBatch,
        first: usize,
        mut part: RecordBatch,
    ) -> Result<(), SinkError> {
        loop {
            let f = self.file_for(key, batch, first)?;
            let room = match self.layout.as_ref() {
                Some(layout) => layout.groups.room(f),
                None => return Err(SinkError::WriterGone),
            };
            if part.num_rows() <= room {
                self.write_to(f, part)?;
                return self.close_if_full(key, f);
            }
            let rest = part.slice(room, part.num_rows() - room);
            self.write_to(f, part.slice(0, room))?;
            self.close_if_full(key, f)?;
            part = rest;
        }
    }

    /// Closes file `f` of partition `key` once it reached `max_file_size`:
    /// the partition's next rows open another file.
    pub(super) fn close_if_full(&mut self, key: &[u8], f: usize) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        if layout.groups.is_full(f) {
            layout.groups.close_file(f)?;
            self.by_key.remove(key);
        }
        Ok(())
    }

    /// Sends rows `idx` of `batch` (partition values `keys`) to the spill,
    /// for a later round.
    pub(super) fn spill_rows(
        &mut self,
        batch: &RecordBatch,
        keys: &arrow::row::Rows,
        idx: Vec<u32>,
    ) -> Result<(), SinkError> {
        if self.spill.is_none() {
            if self.spill_dir.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("backfill-partitions-")
                    .tempdir()
                    .map_err(io("creating a spill directory in", &std::env::temp_dir()))?;
                tracing::info!(
                    "chunk {}: more than {} partitions; the rows of the others wait in {}",
                    self.chunk_id,
                    self.memory.max_open,
                    dir.path().display()
                );
                self.spill_dir = Some(dir);
            }
            if let Some(dir) = &self.spill_dir {
                self.spill = Some(Spill::new(dir.path(), self.spills, self.level));
                self.spills += 1;
            }
        }
        let Some(spill) = self.spill.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        let rows = take_record_batch(batch, &UInt32Array::from(idx.clone()))?;
        spill.write(&rows, keys, &idx).map_err(spill_err)?;
        Ok(())
    }

    pub(super) fn write_to(&mut self, f: usize, batch: RecordBatch) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        self.rows += batch.num_rows() as u64;
        layout.groups.write(f, batch)
    }

    pub(super) fn file_for(
        &mut self,
        key: &[u8],
        batch: &RecordBatch,
        row: usize,
    ) -> Result<usize, SinkError> {
        if let Some(&f) = self.by_key.get(key) {
            return Ok(f);
        }
        let Some(layout) = self.layout.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        let mut dir = String::new();
        for (&col, name) in layout.part_cols.iter().zip(&self.partition_by) {
            let value = partition_value(batch.column(col).as_ref(), row)?;
            dir.push_str(&escape_partition_value(name));
            dir.push('=');
            dir.push_str(&value);
            dir.push('/');
        }
        let published = format!(
            "{dir}{}",
            file_name(
                &self.chunk_id,
                self.attempt,
                self.stamp,
                &self.job_tag,
                self.opened,
            )
        );
        let staged = staged_name(&published);
        let abs_dir = self.root.join(&dir);
        std::fs::create_dir_all(&abs_dir).map_err(io("creating directory", &abs_dir))?;
        let abs = self.root.join(&staged);
        let file = File::create(&abs).map_err(io("creating", &abs))?;
        self.created.push(abs.clone());
        let f = layout
            .groups
            .open(file, abs, self.props.clone(), partition_seed(&dir))?;
        self.files.push(OwnedFile {
            path: published,
            staged,
        });
        self.opened += 1;
        // The open files share the writer's memory.
        let open = layout.groups.open_files().max(1);
        layout
            .groups
            .set_group_bytes((self.memory.bytes / open).max(MIN_GROUP_BYTES));
        self.by_key.insert(key.into(), f);
        Ok(f)
    }

    /// Closes this round's files into `done`; they are durable before the
    /// commit point.
    pub(super) fn close_round(&mut self) -> Result<(), SinkError> {
        let Some(layout) = self.layout.as_mut() else {
            return Ok(());
        };
        let (sizes, checksum) = layout.groups.close_all()?;
        self.done.checksum = self.done.checksum.wrapping_add(checksum);
        for (bytes, owned) in sizes.into_iter().zip(std::mem::take(&mut self.files)) {
            self.done.bytes += bytes;
            self.done.files.push(owned);
        }
        self.by_key.clear();
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<Staged, SinkError> {
        loop {
            self.close_round()?;
            if let Some(spill) = self.spill.take() {
                self.pending.extend(spill.close().map_err(spill_err)?.0);
            }
            let Some(next) = self.pending.pop() else {
                break;
            };
            // A round whose spill cannot be split further keeps all its
            // partitions open.
            self.level = next.level;
            if self.level >= MAX_LEVEL {
                self.memory.max_open = usize::MAX;
            }
            let file = File::open(&next.path).map_err(io("reading", &next.path))?;
            let reader =
                arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(file), None)?;
            for batch in reader {
                self.write(&batch?)?;
            }
            let _ = std::fs::remove_file(&next.path);
        }
        let mut staged = std::mem::take(&mut self.done);
        staged.rows = self.rows;
        if let Some(layout) = self.layout.take() {
            layout.groups.finish()?;
        }
        Ok(staged)
    }

    pub(super) fn cleanup(&self) {
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

pub(super) struct ParquetChunkWriter {
    pub(super) tx: Option<mpsc::Sender<RecordBatch>>,
    pub(super) worker: Option<JoinHandle<Result<Staged, SinkError>>>,
    pub(super) aborted: Arc<AtomicBool>,
    pub(super) chunk_index: usize,
    /// A remote table: the spool directory and where its files go.
    pub(super) upload: Option<(PathBuf, Remote)>,
}

impl ParquetChunkWriter {
    pub(super) async fn join(&mut self) -> Result<Staged, SinkError> {
        drop(self.tx.take());
        match self.worker.take() {
            Some(handle) => handle.await.map_err(|_| SinkError::WriterGone)?,
            None => Err(SinkError::WriterGone),
        }
    }
}

#[async_trait]
impl ChunkWriter for ParquetChunkWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<(), SinkError> {
        failpoint::hit("write", self.chunk_index)?;
        let Some(tx) = self.tx.as_ref() else {
            return Err(SinkError::WriterGone);
        };
        if tx.send(batch).await.is_err() {
            // The worker stopped early: its error says why.
            return match self.join().await {
                Err(e) => Err(e),
                Ok(_) => Err(SinkError::WriterGone),
            };
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged, SinkError> {
        let staged = self.join().await?;
        let Some((spool, remote)) = &self.upload else {
            return Ok(staged);
        };
        let mut result = Ok(());
        for (i, f) in staged.files.iter().enumerate() {
            let local = spool.join(&f.staged);
            if result.is_ok() {
                result = upload(remote, &local, &f.staged).await;
                if result.is_err() {
                    // What was uploaded is staged garbage for recovery,
                    // but need not wait for it.
                    for done in &staged.files[..i] {
                        if let Ok(key) = remote.key(&done.staged) {
                            let _ = remote.store.delete(&key).await;
                        }
                    }
                }
            }
            let _ = std::fs::remove_file(&local);
        }
        result.map(|()| staged)
    }

    async fn abort(mut self: Box<Self>) {
        self.aborted.store(true, Ordering::SeqCst);
        let _ = self.join().await;
    }
}
