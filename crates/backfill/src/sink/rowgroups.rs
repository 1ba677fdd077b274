//! The Parquet files of one chunk attempt, with each row group's columns
//! encoded on two threads.
//!
//! Sources are usually sorted by time, so a chunk feeds one partition file at
//! a time: a thread per file would leave the other cores idle, and encoding
//! plus zstd is the costliest step of a chunk. So the columns are shared out:
//! the thread that splits rows into files encodes some columns of each batch
//! itself and hands the batch to a helper thread for the rest, while the
//! batch is still in cache. Which columns go where is re-decided at every row
//! group from the time each column took, so the two threads finish together.
//! Column chunks are appended in row-group order, so the bytes of a file do
//! not depend on timing.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use tokio::runtime::Handle;

use super::SinkError;
use super::checksum::RowChecksum;

/// Rows per row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Caps the Arrow memory one row group takes in: wide rows end a row group
/// before [`ROW_GROUP_ROWS`] does. Many open files share a smaller cap
/// ([`RowGroupWriter::set_group_bytes`]).
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Batches queued for the helper: enough to ride out jitter, few enough
/// that they are still in cache when it gets to them.
const HELPER_QUEUE: usize = 4;

/// A unit of encoding work that one thread does for a row group: a column,
/// or the checksum over all of them.
type Task = usize;

enum ToHelper {
    Open {
        file: usize,
        writers: Vec<(Task, ArrowColumnWriter)>,
        checksum: bool,
        seed: u64,
        path: PathBuf,
    },
    Write {
        file: usize,
        batch: RecordBatch,
    },
    Close {
        file: usize,
    },
}

/// The helper's half of a row group.
struct Half {
    chunks: Vec<(Task, ArrowColumnChunk)>,
    /// The checksum of the rows, if the helper computed it.
    sum: u64,
    /// Nanoseconds each task took over the row group's rows.
    nanos: Vec<(Task, u64)>,
    rows: u64,
}

type Closed = Result<Half, SinkError>;

struct OpenFile {
    /// `None` once the file is closed ([`RowGroupWriter::close_file`]);
    /// then `closed` holds its size.
    writer: Option<SerializedFileWriter<File>>,
    closed: Option<u64>,
    /// It reached the writer's file size or row cap.
    full: bool,
    /// Rows written to it so far.
    rows: u64,
    factory: ArrowRowGroupWriterFactory,
    path: PathBuf,
    /// Seeds each row's hash with its partition, which is not in the file.
    seed: u64,
    /// This thread's writers for the open row group, by column.
    own: Vec<Option<ArrowColumnWriter>>,
    own_checksum: bool,
    /// Whether the helper has work in the open row group. Fixed at the
    /// group's start: a rebalance mid-group applies from the next one.
    helper_busy: bool,
    /// Rows and Arrow bytes in the open row group; `None` between groups.
    open: Option<(usize, usize)>,
    groups: usize,
}

/// A row group closed on this thread, waiting for the helper's half.
struct Awaiting {
    file: usize,
    own: Vec<(Task, ArrowColumnChunk)>,
}

struct Helper {
    tx: mpsc::SyncSender<ToHelper>,
    rx: mpsc::Receiver<Closed>,
}

/// The files of one chunk attempt. One thread calls it; encoding is shared
/// with a helper thread of the blocking pool.
pub struct RowGroupWriter {
    schema: SchemaRef,
    files: Vec<OpenFile>,
    runtime: Handle,
    helper: Option<Helper>,
    awaiting: VecDeque<Awaiting>,
    checksum: Option<Arc<RowChecksum>>,
    sum: u64,
    /// Nanoseconds per row of each task, as last measured; the checksum is
    /// the task after the last column.
    cost: Vec<f64>,
    /// Nanoseconds and rows each task took on this thread since costs were
    /// last updated.
    measured: Vec<(u64, u64)>,
    /// The same for this thread's work outside encoding (splitting rows by
    /// partition), which counts against its share.
    overhead: (u64, u64),
    overhead_cost: f64,
    /// Whether the helper does a task, decided at each row group start.
    on_helper: Vec<bool>,
    /// Arrow bytes that end a row group.
    group_bytes: usize,
    /// Bytes at which a file is full.
    file_bytes: u64,
    /// Rows at which a file is full.
    file_rows: u64,
}

impl RowGroupWriter {
    /// `checksum` sums the rows written; `None` skips it.
    pub fn new(
        runtime: Handle,
        schema: SchemaRef,
        checksum: Option<Arc<RowChecksum>>,
    ) -> RowGroupWriter {
        let tasks = schema.fields().len() + 1;
        RowGroupWriter {
            schema,
            files: Vec::new(),
            runtime,
            helper: None,
            awaiting: VecDeque::new(),
            checksum,
            sum: 0,
            cost: vec![0.0; tasks],
            measured: vec![(0, 0); tasks],
            overhead: (0, 0),
            overhead_cost: 0.0,
            on_helper: vec![false; tasks],
            group_bytes: ROW_GROUP_BYTES,
            file_bytes: u64::MAX,
            file_rows: u64::MAX,
        }
    }

    /// A file whose row groups reach `bytes` is full ([`RowGroupWriter::is_full`]).
    pub fn set_file_bytes(&mut self, bytes: u64) {
        self.file_bytes = bytes;
    }

    /// A file that holds `rows` rows is full ([`RowGroupWriter::is_full`]);
    /// [`RowGroupWriter::room`] says how many more it takes.
    pub fn set_file_rows(&mut self, rows: u64) {
        self.file_rows = rows.max(1);
    }

    /// How many more rows file `f` takes before its row cap.
    pub fn room(&self, f: usize) -> usize {
        let written = self.files.get(f).map_or(0, |file| file.rows);
        usize::try_from(self.file_rows.saturating_sub(written)).unwrap_or(usize::MAX)
    }

    /// Whether file `f` reached the file size cap: its writer should close
    /// it and go on in a new file. Row groups are appended as the helper
    /// finishes them, so a file may end a few row groups past the cap.
    pub fn is_full(&self, f: usize) -> bool {
        self.files.get(f).is_some_and(|file| file.full)
    }

    /// Encodes what is left of file `f`, writes its footer and makes it
    /// durable, then lets its descriptor go (a chunk may close many files
    /// by size under a limit on open files); its index stays taken until
    /// [`RowGroupWriter::close_all`].
    pub fn close_file(&mut self, f: usize) -> Result<(), SinkError> {
        if self.files[f].open.is_some() {
            self.end_group(f)?;
        }
        while self.awaiting.iter().any(|a| a.file == f) {
            let Some(helper) = &self.helper else {
                return Err(SinkError::WriterGone);
            };
            let closed = helper.rx.recv().map_err(|_| SinkError::WriterGone)?;
            self.append_oldest(closed)?;
        }
        let file = &mut self.files[f];
        if let Some(writer) = file.writer.take() {
            file.closed = Some(durable(writer, &file.path)?);
        }
        Ok(())
    }

    /// Ends row groups at `bytes` of Arrow memory (at most
    /// [`ROW_GROUP_BYTES`]): the writer's memory share divided among its
    /// open files. A group already larger ends at its next write.
    pub fn set_group_bytes(&mut self, bytes: usize) {
        self.group_bytes = bytes.min(ROW_GROUP_BYTES);
    }

    /// Files open now (not closed by [`RowGroupWriter::close_file`]).
    pub fn open_files(&self) -> usize {
        self.files.iter().filter(|f| f.writer.is_some()).count()
    }

    /// Starts a file; returns its index for [`RowGroupWriter::write`].
    pub fn open(
        &mut self,
        file: File,
        path: PathBuf,
        props: WriterProperties,
        seed: u64,
    ) -> Result<usize, SinkError> {
        let (writer, factory) = ArrowWriter::try_new(file, self.schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(|source| SinkError::Parquet {
                path: path.clone(),
                source,
            })?;
        if self.helper.is_none() && self.shares_work() {
            self.helper = Some(self.spawn_helper());
        }
        self.files.push(OpenFile {
            writer: Some(writer),
            closed: None,
            full: false,
            rows: 0,
            factory,
            path,
            seed,
            own: Vec::new(),
            own_checksum: false,
            helper_busy: false,
            open: None,
            groups: 0,
        });
        Ok(self.files.len() - 1)
    }

    /// Two threads need two cores, and the split is by top-level column, so
    /// each column must be a single Parquet leaf (no nested types).
    fn shares_work(&self) -> bool {
        std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
            && self
                .schema
                .fields()
                .iter()
                .all(|f| !f.data_type().is_nested())
    }

    fn spawn_helper(&self) -> Helper {
        let (tx, requests) = mpsc::sync_channel::<ToHelper>(HELPER_QUEUE);
        let (replies, rx) = mpsc::channel::<Closed>();
        let schema = self.schema.clone();
        let checksum = self.checksum.clone();
        self.runtime.spawn_blocking(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                help(&schema, checksum.as_deref(), &requests, &replies)
            }))
            .unwrap_or(Err(SinkError::WriterGone));
            if let Err(e) = result {
                let _ = replies.send(Err(e));
            }
        });
        Helper { tx, rx }
    }

    /// Adds rows to file `f`.
    pub fn write(&mut self, f: usize, mut batch: RecordBatch) -> Result<(), SinkError> {
        if let Some(file) = self.files.get_mut(f) {
            file.rows += batch.num_rows() as u64;
            if file.rows >= self.file_rows {
                file.full = true;
            }
        }
        while batch.num_rows() > 0 {
            if self.files[f].open.is_none() {
                self.start_group(f)?;
            }
            let rows = self.files[f].open.map_or(0, |(rows, _)| rows);
            let take = batch.num_rows().min(ROW_GROUP_ROWS - rows);
            let head = batch.slice(0, take);
            batch = batch.slice(take, batch.num_rows() - take);
            let bytes = slice_size(&head);
            self.encode_own(f, &head)?;
            let open = self.files[f].open.get_or_insert((0, 0));
            open.0 += take;
            open.1 += bytes;
            if open.0 >= ROW_GROUP_ROWS || open.1 >= self.group_bytes {
                self.end_group(f)?;
            }
        }
        // Append what the helper has finished, so its pages do not wait.
        while !self.awaiting.is_empty() {
            let Some(helper) = &self.helper else { break };
            match helper.rx.try_recv() {
                Ok(closed) => self.append_oldest(closed)?,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(SinkError::WriterGone),
            }
        }
        Ok(())
    }

    /// Charges this thread with time spent outside encoding (splitting
    /// `rows` rows by partition), so that it is given fewer columns.
    pub fn note_overhead(&mut self, nanos: u64, rows: usize) {
        self.overhead.0 += nanos;
        self.overhead.1 += rows as u64;
    }

    fn start_group(&mut self, f: usize) -> Result<(), SinkError> {
        let file = &mut self.files[f];
        let writers = file
            .factory
            .create_column_writers(file.groups)
            .map_err(|source| SinkError::Parquet {
                path: file.path.clone(),
                source,
            })?;
        file.groups += 1;
        let checksum = self.checksum.is_some();
        let checksum_task = self.schema.fields().len();
        match &self.helper {
            Some(helper) => {
                let mut theirs = Vec::new();
                file.own = Vec::with_capacity(writers.len());
                for (task, w) in writers.into_iter().enumerate() {
                    if self.on_helper[task] {
                        theirs.push((task, w));
                        file.own.push(None);
                    } else {
                        file.own.push(Some(w));
                    }
                }
                let helper_checksum = checksum && self.on_helper[checksum_task];
                file.own_checksum = checksum && !helper_checksum;
                file.helper_busy = helper_checksum || !theirs.is_empty();
                let open = ToHelper::Open {
                    file: f,
                    writers: theirs,
                    checksum: helper_checksum,
                    seed: file.seed,
                    path: file.path.clone(),
                };
                if helper.tx.send(open).is_err() {
                    return Err(self.helper_failure());
                }
            }
            None => {
                file.own = writers.into_iter().map(Some).collect();
                file.own_checksum = checksum;
                file.helper_busy = false;
            }
        }
        file.open = Some((0, 0));
        Ok(())
    }

    fn encode_own(&mut self, f: usize, batch: &RecordBatch) -> Result<(), SinkError> {
        if let Some(helper) = &self.helper
            && self.files[f].helper_busy
        {
            let write = ToHelper::Write {
                file: f,
                batch: batch.clone(),
            };
            if helper.tx.send(write).is_err() {
                return Err(self.helper_failure());
            }
        }
        let file = &mut self.files[f];
        let fields = self.schema.fields();
        let rows = batch.num_rows() as u64;
        for (task, writer) in file.own.iter_mut().enumerate() {
            let Some(writer) = writer else { continue };
            let start = Instant::now();
            write_column(writer, &fields[task], batch.column(task)).map_err(|source| {
                SinkError::Parquet {
                    path: file.path.clone(),
                    source,
                }
            })?;
            self.measured[task].0 += elapsed(start);
            self.measured[task].1 += rows;
        }
        if let (true, Some(checksum)) = (file.own_checksum, self.checksum.as_deref()) {
            let start = Instant::now();
            self.sum = self.sum.wrapping_add(checksum.rows(batch, file.seed)?);
            self.measured[fields.len()].0 += elapsed(start);
            self.measured[fields.len()].1 += rows;
        }
        Ok(())
    }

    fn end_group(&mut self, f: usize) -> Result<(), SinkError> {
        let file = &mut self.files[f];
        file.open = None;
        let mut own = Vec::new();
        for (task, writer) in std::mem::take(&mut file.own).into_iter().enumerate() {
            let Some(writer) = writer else { continue };
            let start = Instant::now();
            let chunk = writer.close().map_err(|source| SinkError::Parquet {
                path: file.path.clone(),
                source,
            })?;
            // Rows were counted as they were written.
            self.measured[task].0 += elapsed(start);
            own.push((task, chunk));
        }
        match &self.helper {
            Some(helper) => {
                if helper.tx.send(ToHelper::Close { file: f }).is_err() {
                    return Err(self.helper_failure());
                }
                self.awaiting.push_back(Awaiting { file: f, own });
                Ok(())
            }
            None => self.append(f, own),
        }
    }

    /// The error the helper stopped with.
    fn helper_failure(&mut self) -> SinkError {
        let Some(helper) = &self.helper else {
            return SinkError::WriterGone;
        };
        while let Ok(reply) = helper.rx.recv() {
            if let Err(e) = reply {
                return e;
            }
        }
        SinkError::WriterGone
    }

    fn append_oldest(&mut self, closed: Closed) -> Result<(), SinkError> {
        let half = closed?;
        let Some(Awaiting { file, mut own }) = self.awaiting.pop_front() else {
            return Err(SinkError::WriterGone);
        };
        self.sum = self.sum.wrapping_add(half.sum);
        if half.rows > 0 {
            for (task, n) in half.nanos {
                self.cost[task] = n as f64 / half.rows as f64;
            }
        }
        own.extend(half.chunks);
        own.sort_by_key(|(task, _)| *task);
        self.append(file, own)?;
        self.rebalance();
        Ok(())
    }

    fn append(&mut self, f: usize, chunks: Vec<(Task, ArrowColumnChunk)>) -> Result<(), SinkError> {
        let file = &mut self.files[f];
        let path = &file.path;
        let pq = |source| SinkError::Parquet {
            path: path.clone(),
            source,
        };
        let Some(writer) = file.writer.as_mut() else {
            return Err(SinkError::WriterGone);
        };
        let mut group = writer.next_row_group().map_err(pq)?;
        for (_, chunk) in chunks {
            chunk.append_to_row_group(&mut group).map_err(pq)?;
        }
        group.close().map_err(pq)?;
        start_writeback(writer.inner());
        file.full |= writer.bytes_written() as u64 >= self.file_bytes;
        Ok(())
    }

    /// Shares the tasks out by their cost per row, costliest first, each
    /// to the thread with less work so far; this thread starts with its
    /// overhead. Until a row group has been measured every task stays here.
    fn rebalance(&mut self) {
        for (task, (nanos, rows)) in self.measured.iter_mut().enumerate() {
            if *rows > 0 {
                self.cost[task] = *nanos as f64 / *rows as f64;
            }
            *nanos = 0;
            *rows = 0;
        }
        if self.overhead.1 > 0 {
            self.overhead_cost = self.overhead.0 as f64 / self.overhead.1 as f64;
        }
        self.overhead = (0, 0);
        let mut order: Vec<usize> = (0..self.cost.len()).collect();
        order.sort_by(|&a, &b| self.cost[b].total_cmp(&self.cost[a]));
        let mut load = [self.overhead_cost, 0.0];
        for t in order {
            let lane = usize::from(load[1] < load[0]);
            load[lane] += self.cost[t];
            self.on_helper[t] = lane == 1;
        }
    }

    /// Encodes what is left, writes each footer, makes each file durable
    /// (a power cut after the state says "committed" must not leave a torn
    /// file) and returns their sizes in the order they were opened, with
    /// the checksum of their rows. The writer then starts over with no file
    /// open (file indexes start at 0 again), keeping its helper thread and
    /// what it measured.
    pub fn close_all(&mut self) -> Result<(Vec<u64>, u64), SinkError> {
        for f in 0..self.files.len() {
            if self.files[f].open.is_some() {
                self.end_group(f)?;
            }
        }
        while !self.awaiting.is_empty() {
            let Some(helper) = &self.helper else {
                return Err(SinkError::WriterGone);
            };
            let closed = helper.rx.recv().map_err(|_| SinkError::WriterGone)?;
            self.append_oldest(closed)?;
        }
        let mut sizes = Vec::with_capacity(self.files.len());
        for file in std::mem::take(&mut self.files) {
            match (file.writer, file.closed) {
                (Some(writer), _) => sizes.push(durable(writer, &file.path)?),
                (None, Some(bytes)) => sizes.push(bytes),
                (None, None) => return Err(SinkError::WriterGone),
            }
        }
        Ok((sizes, std::mem::take(&mut self.sum)))
    }

    /// [`RowGroupWriter::close_all`], and the helper thread stops.
    pub fn finish(mut self) -> Result<(Vec<u64>, u64), SinkError> {
        let closed = self.close_all();
        drop(self.helper.take());
        closed
    }
}

/// Writes `writer`'s footer, fsyncs the file and returns its size.
fn durable(writer: SerializedFileWriter<File>, path: &std::path::Path) -> Result<u64, SinkError> {
    let file = writer.into_inner().map_err(|source| SinkError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |op| {
        move |source| SinkError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    file.sync_all().map_err(io("syncing"))?;
    Ok(file.metadata().map_err(io("reading size of"))?.len())
}

/// Asks the kernel to start writing the file's dirty pages to disk now.
/// The attempt fsyncs its files before it commits; with a lot of memory the
/// kernel would otherwise hold a whole chunk's output dirty until then (its
/// background writeback starts at 10% of memory), and the fsync would wait
/// for all of it at once: on a busy shared disk a one-chunk job at 10M rows
/// sat 10 s and more in that fsync. Started here, after each row group, the
/// writing overlaps the encoding. Advisory: errors are left to the fsync.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; offset 0 and length 0 mean the
        // whole file, and WRITE only starts writeback without waiting on it.
        let r =
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if r != 0 {
            tracing::debug!("sync_file_range: {}", std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

struct HelperFile {
    writers: Vec<(Task, ArrowColumnWriter)>,
    path: PathBuf,
    checksum: bool,
    seed: u64,
    sum: u64,
    /// Per writer, then the checksum.
    nanos: Vec<(Task, u64)>,
    rows: u64,
}

/// The helper thread: encodes the columns it was given for each open row
/// group until the writer hangs up.
fn help(
    schema: &SchemaRef,
    row_checksum: Option<&RowChecksum>,
    requests: &mpsc::Receiver<ToHelper>,
    replies: &mpsc::Sender<Closed>,
) -> Result<(), SinkError> {
    let fields = schema.fields();
    let mut files: HashMap<usize, HelperFile> = HashMap::new();
    let checksum_task = fields.len();
    while let Ok(request) = requests.recv() {
        match request {
            ToHelper::Open {
                file,
                writers,
                checksum,
                seed,
                path,
            } => {
                let mut nanos: Vec<(Task, u64)> = writers.iter().map(|(t, _)| (*t, 0)).collect();
                if checksum {
                    nanos.push((checksum_task, 0));
                }
                files.insert(
                    file,
                    HelperFile {
                        writers,
                        path,
                        checksum,
                        seed,
                        sum: 0,
                        nanos,
                        rows: 0,
                    },
                );
            }
            ToHelper::Write { file, batch } => {
                let Some(h) = files.get_mut(&file) else {
                    return Err(SinkError::WriterGone);
                };
                for ((task, writer), (_, nanos)) in h.writers.iter_mut().zip(h.nanos.iter_mut()) {
                    let start = Instant::now();
                    write_column(writer, &fields[*task], batch.column(*task)).map_err(
                        |source| SinkError::Parquet {
                            path: h.path.clone(),
                            source,
                        },
                    )?;
                    *nanos += elapsed(start);
                }
                if let (true, Some(checksum)) = (h.checksum, row_checksum) {
                    let start = Instant::now();
                    h.sum = h.sum.wrapping_add(checksum.rows(&batch, h.seed)?);
                    if let Some((_, nanos)) = h.nanos.last_mut() {
                        *nanos += elapsed(start);
                    }
                }
                h.rows += batch.num_rows() as u64;
            }
            ToHelper::Close { file } => {
                let Some(h) = files.remove(&file) else {
                    return Err(SinkError::WriterGone);
                };
                let mut chunks = Vec::with_capacity(h.writers.len());
                let mut nanos = h.nanos;
                for ((task, writer), (_, n)) in h.writers.into_iter().zip(nanos.iter_mut()) {
                    let start = Instant::now();
                    let chunk = writer.close().map_err(|source| SinkError::Parquet {
                        path: h.path.clone(),
                        source,
                    })?;
                    *n += elapsed(start);
                    chunks.push((task, chunk));
                }
                let half = Half {
                    chunks,
                    sum: h.sum,
                    nanos,
                    rows: h.rows,
                };
                if replies.send(Ok(half)).is_err() {
                    // The writer gave up.
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn write_column(
    writer: &mut ArrowColumnWriter,
    field: &arrow::datatypes::FieldRef,
    column: &arrow::array::ArrayRef,
) -> Result<(), ParquetError> {
    for leaf in compute_leaves(field, column)? {
        writer.write(&leaf)?;
    }
    Ok(())
}

fn elapsed(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The memory a batch's rows take, counting only the part of shared
/// buffers a slice covers.
fn slice_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

#[cfg(test)]
mod tests;
