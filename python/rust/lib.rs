//! `backfill._engine`: the engine for Python, in the Python process.
//!
//! The Python package (`python/src/backfill/`) builds everything users see
//! on the small surface here: a job opened from a file or from TOML text,
//! and its commands returning JSON (which the package turns into typed
//! results) or Arrow streams (the Arrow C stream interface, which pyarrow,
//! pandas and Polars read without a copy). Every command releases the GIL
//! while the engine works; a run stops cleanly on Ctrl-C.

use std::sync::OnceLock;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;

mod errors;
mod job;
mod log;
mod tables;

create_exception!(
    _engine,
    BackfillError,
    PyException,
    "Any failure of the engine."
);
create_exception!(
    _engine,
    SpecError,
    BackfillError,
    "The job is at fault: a key the job file (or dict) gets wrong, with `key` and `line`."
);
create_exception!(
    _engine,
    UsageError,
    BackfillError,
    "An argument or a state the command cannot work with (a bad `from_`, a changed range)."
);
create_exception!(
    _engine,
    SourceError,
    BackfillError,
    "Reading the source failed."
);
create_exception!(
    _engine,
    TargetError,
    BackfillError,
    "Writing the target failed."
);
create_exception!(
    _engine,
    StateError,
    BackfillError,
    "The state store failed or belongs to another job."
);

/// The runtime every job's commands run on, started on first use.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("backfill")
        .build()
        .map_err(|e| BackfillError::new_err(format!("cannot start the async runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `work` on the runtime with the GIL released, waking every 100 ms
/// to hand `events` to `deliver` (on this thread, holding the GIL, so a
/// Python callback runs where Python expects it) and to let Python's
/// signal handlers run. On Ctrl-C, `stop` is called and the work is
/// awaited to its end (a run rolls back its chunks in flight), then
/// `KeyboardInterrupt` is raised.
fn wait<T, E>(
    py: Python<'_>,
    work: impl Future<Output = T> + Send + 'static,
    stop: Option<&dyn Fn()>,
    events: Option<&std::sync::mpsc::Receiver<E>>,
    deliver: &mut dyn FnMut(Python<'_>, E) -> PyResult<()>,
) -> PyResult<T>
where
    T: Send + 'static,
    E: Send,
{
    let rt = runtime()?;
    let mut handle = rt.spawn(work);
    let mut failure: Option<PyErr> = None;
    loop {
        let done = py.detach(|| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut handle).await
            })
        });
        // logging's handlers report their own failures; nothing to stop for.
        let _ = log::flush(py);
        if let Some(rx) = events {
            while let Ok(e) = rx.try_recv() {
                // A callback that raises stops the run like Ctrl-C does.
                if failure.is_none()
                    && let Err(err) = deliver(py, e)
                {
                    failure = Some(err);
                    if let Some(stop) = stop {
                        stop();
                    }
                }
            }
        }
        match done {
            Ok(Ok(value)) => {
                return match failure {
                    Some(err) => Err(err),
                    None => Ok(value),
                };
            }
            Ok(Err(join)) => {
                return Err(BackfillError::new_err(format!(
                    "the engine's task failed: {join}"
                )));
            }
            Err(_elapsed) => {}
        }
        if failure.is_none()
            && let Err(err) = py.check_signals()
        {
            match stop {
                Some(stop) => {
                    stop();
                    failure = Some(err);
                }
                None => {
                    handle.abort();
                    return Err(err);
                }
            }
        }
    }
}

/// A stopped run: `KeyboardInterrupt` with the run's summary (JSON) as
/// its second argument, for a caller that wants to report it.
fn interrupted(summary: String) -> PyErr {
    PyKeyboardInterrupt::new_err((
        "the run was stopped; chunks in flight were rolled back",
        summary,
    ))
}

/// The demo: `rows` generated transactions in 12 monthly Parquet files
/// under `dir/source`, and the demo's job file `dir/backfill.toml` (the
/// `backfill demo` command's). Returns the job file's path.
#[pyfunction]
#[pyo3(signature = (dir, rows = backfill::demo::DEFAULT_ROWS, seed = backfill::demo::DEFAULT_SEED))]
fn demo(py: Python<'_>, dir: std::path::PathBuf, rows: u64, seed: u64) -> PyResult<String> {
    py.detach(move || {
        let source = dir.join("source");
        if source.exists() {
            std::fs::remove_dir_all(&source)?;
        }
        backfill::demo::generate(&source, rows, seed).map_err(std::io::Error::other)?;
        let job = dir.join("backfill.toml");
        std::fs::write(&job, backfill::core::spec::EXAMPLE_JOB)?;
        Ok::<_, std::io::Error>(job.display().to_string())
    })
    .map_err(|e| BackfillError::new_err(format!("cannot write the demo: {e}")))
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    log::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("BackfillError", py.get_type::<BackfillError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("SourceError", py.get_type::<SourceError>())?;
    m.add("TargetError", py.get_type::<TargetError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    m.add_class::<job::Job>()?;
    m.add_function(wrap_pyfunction!(demo, m)?)?;
    m.add_class::<tables::ArrowStream>()?;
    Ok(())
}
