//! Progress: a bar (chunks, rows/s, ETA) when stderr is a terminal, plain log
//! lines otherwise. Log lines written while a bar is shown go above it.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backfill_core::ChunkMetrics;
use backfill_core::plan::Chunk;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    #[default]
    Auto,
    Bar,
    Log,
    /// Nothing but warnings and errors.
    Quiet,
}

static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A writer for `tracing_subscriber` that prints above an active bar.
pub struct BarAwareStderr;

impl Write for BarAwareStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = crate::redact::redact(&String::from_utf8_lossy(buf));
        let bar = ACTIVE.lock().ok().and_then(|g| g.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(text.as_bytes()))?,
            None => std::io::stderr().write_all(text.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// What a run reports as each chunk ends, for a caller's own display (the
/// Python package's callback and notebook bar).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChunkEvent {
    /// Chunks ended so far in this run, this one included, of `total`.
    pub done: usize,
    pub total: usize,
    pub id: String,
    pub bounds: String,
    /// `committed`, `failed`, or `taken` (another process runs it).
    pub state: &'static str,
    pub rows_read: u64,
    pub rows_written: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A caller's callback for [`ChunkEvent`]s. It is called on the run's own
/// tasks, so it must return at once (hand the event on, do not block).
#[derive(Clone)]
pub struct OnChunk(pub Arc<dyn Fn(ChunkEvent) + Send + Sync>);

impl std::fmt::Debug for OnChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnChunk(..)")
    }
}

pub struct Progress {
    on_chunk: Option<OnChunk>,
    bar: Option<ProgressBar>,
    log: bool,
    total: usize,
    done: AtomicUsize,
    rows: AtomicU64,
    start: Instant,
}

impl Progress {
    pub fn new(mode: ProgressMode, total: usize) -> Progress {
        let bar_wanted = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Log | ProgressMode::Quiet => false,
        };
        let bar = bar_wanted.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} chunks  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            if let Ok(mut g) = ACTIVE.lock() {
                *g = Some(bar.clone());
            }
            bar
        });
        Progress {
            on_chunk: None,
            bar,
            log: mode != ProgressMode::Quiet,
            total,
            done: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    pub fn with_callback(mut self, on_chunk: Option<OnChunk>) -> Progress {
        self.on_chunk = on_chunk;
        self
    }

    fn tell(
        &self,
        done: usize,
        chunk: &Chunk,
        state: &'static str,
        m: Option<&ChunkMetrics>,
        error: Option<&str>,
    ) {
        if let Some(OnChunk(f)) = &self.on_chunk {
            f(ChunkEvent {
                done,
                total: self.total,
                id: chunk.id.clone(),
                bounds: chunk.bounds(),
                state,
                rows_read: m.map_or(0, |m| m.rows_read),
                rows_written: m.map_or(0, |m| m.rows_written),
                error: error.map(str::to_string),
            });
        }
    }

    fn rate(&self) -> f64 {
        self.rows.load(Ordering::Relaxed) as f64 / self.start.elapsed().as_secs_f64().max(1e-3)
    }

    pub fn committed(&self, chunk: &Chunk, m: &ChunkMetrics) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.rows.fetch_add(m.rows_read, Ordering::Relaxed);
        self.tell(done, chunk, "committed", Some(m), None);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(format!("{} rows/s", human_count(self.rate() as u64)));
        } else if self.log {
            tracing::info!(
                "[{done}/{}] chunk {} {} committed: {} rows read, {} written, {} files, {:.2}s",
                self.total,
                chunk.id,
                chunk.bounds(),
                m.rows_read,
                m.rows_written,
                m.files,
                m.duration_ms as f64 / 1000.0
            );
        }
    }

    pub fn failed(&self, chunk: &Chunk, error: &str) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.tell(done, chunk, "failed", None, Some(error));
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        tracing::error!("chunk {} {} failed: {error}", chunk.id, chunk.bounds());
    }

    pub fn taken(&self, chunk: &Chunk) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.tell(done, chunk, "taken", None, None);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        tracing::info!(
            "chunk {} {}: another process runs it",
            chunk.id,
            chunk.bounds()
        );
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            if let Ok(mut g) = ACTIVE.lock() {
                *g = None;
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
