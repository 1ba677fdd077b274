//! The engine's log events in Python's `logging`, under the logger
//! `backfill`. A tracing layer queues each event (redacted, as the CLI
//! prints them); the thread waiting on a command hands the queue to Python
//! each time it wakes, so Python's handlers run on that thread, holding the
//! GIL, and no engine thread ever waits for the GIL. `BACKFILL_LOG` takes a
//! tracing filter as for the CLI (default: warnings and errors).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Events not handed on yet; the oldest are dropped past this many (a
/// command that logs faster than anyone reads loses the oldest, never
/// memory).
const KEPT: usize = 10_000;

static QUEUE: Mutex<VecDeque<(Level, String, String)>> = Mutex::new(VecDeque::new());

struct ToPython;

/// An event's message and its other fields as `key=value`.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ToPython {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let meta = event.metadata();
        let entry = (
            *meta.level(),
            meta.target().to_string(),
            backfill::redact::redact(&text.0),
        );
        if let Ok(mut q) = QUEUE.lock() {
            if q.len() >= KEPT {
                q.pop_front();
            }
            q.push_back(entry);
        }
    }
}

/// Installs the layer once per process; another subscriber already set
/// (by a host application) wins.
pub(crate) fn install() {
    let filter = EnvFilter::try_from_env("BACKFILL_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(ToPython.with_filter(filter))
        .try_init();
}

/// Hands the queued events to `logging.getLogger("backfill")`.
pub(crate) fn flush(py: Python<'_>) -> PyResult<()> {
    let events: Vec<_> = match QUEUE.lock() {
        Ok(mut q) if !q.is_empty() => q.drain(..).collect(),
        _ => return Ok(()),
    };
    let logger = py
        .import("logging")?
        .call_method1("getLogger", ("backfill",))?;
    for (level, target, message) in events {
        let n = match level {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            Level::DEBUG => 10,
            Level::TRACE => 5,
        };
        logger.call_method1("log", (n, "%s (%s)", message, target))?;
    }
    Ok(())
}
