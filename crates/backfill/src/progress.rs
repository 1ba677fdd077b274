//! Progress: a bar (chunks, rows/s, ETA) when stderr is a terminal, plain log
//! lines otherwise. Log lines written while a bar is shown go above it.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

pub struct Progress {
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
            bar,
            log: mode != ProgressMode::Quiet,
            total,
            done: AtomicUsize::new(0),
            rows: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn rate(&self) -> f64 {
        self.rows.load(Ordering::Relaxed) as f64 / self.start.elapsed().as_secs_f64().max(1e-3)
    }

    pub fn committed(&self, chunk: &Chunk, m: &ChunkMetrics) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.rows.fetch_add(m.rows_read, Ordering::Relaxed);
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
        self.done.fetch_add(1, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        tracing::error!("chunk {} {} failed: {error}", chunk.id, chunk.bounds());
    }

    pub fn taken(&self, chunk: &Chunk) {
        self.done.fetch_add(1, Ordering::Relaxed);
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
