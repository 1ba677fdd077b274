//! `Job`: a job opened from a file or from TOML text, and its commands.
//! Results are JSON text (the CLI's `--json` shapes), which the Python
//! package turns into typed results.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use backfill::core::spec::JobSpec;
use backfill::gaps::{Cadence, GapOptions};
use backfill::progress::{ChunkEvent, OnChunk};
use backfill::{Backfill, Cancel, ProgressMode, RunOptions, ValidateOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::to_py;
use crate::tables::{self, ArrowStream};
use crate::{UsageError, interrupted, wait};

#[pyclass(frozen, module = "backfill._engine")]
pub(crate) struct Job {
    bf: Arc<Backfill>,
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v)
        .map(|s| backfill::redact::redact(&s))
        .map_err(|e| crate::BackfillError::new_err(format!("cannot encode the result: {e}")))
}

/// A future's result when it needs no callback and no stop.
fn run_plain<T: Send + 'static>(
    py: Python<'_>,
    work: impl Future<Output = Result<T, backfill::Error>> + Send + 'static,
) -> PyResult<T> {
    wait::<_, ()>(py, work, None, None, &mut |_, ()| Ok(()))?.map_err(to_py)
}

#[pymethods]
impl Job {
    /// Reads a job file; relative paths in it are relative to its folder.
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Job> {
        Ok(Job {
            bf: Arc::new(Backfill::from_file(path).map_err(to_py)?),
        })
    }

    /// A job from TOML text, as if read from `path` (its folder anchors
    /// relative paths; errors name it). `${VAR}` come from the
    /// environment, as for a file.
    #[staticmethod]
    fn from_text(text: &str, path: PathBuf) -> PyResult<Job> {
        let spec = JobSpec::parse(&path, text, &|name| std::env::var(name).ok())
            .map_err(|e| to_py(e.into()))?;
        Ok(Job {
            bf: Arc::new(Backfill::from_spec(spec)),
        })
    }

    #[getter]
    fn name(&self) -> String {
        self.bf.spec().name.clone()
    }

    /// The state store: the SQLite file, or the PostgreSQL URL as shown
    /// (without its password).
    #[getter]
    fn state(&self) -> String {
        match &self.bf.spec().state.postgres {
            Some(pg) => pg.shown.clone(),
            None => self.bf.spec().state.path.display().to_string(),
        }
    }

    fn plan_json(&self, py: Python<'_>) -> PyResult<String> {
        let bf = self.bf.clone();
        let plan = run_plain(py, async move { bf.plan_in_full().await })?;
        json(&plan)
    }

    fn plan_stream(&self, py: Python<'_>) -> PyResult<ArrowStream> {
        let bf = self.bf.clone();
        let plan = run_plain(py, async move { bf.plan_in_full().await })?;
        tables::plan(&plan.chunks, self.bf.spec().position_column().is_some())
    }

    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        let bf = self.bf.clone();
        let records = py.detach(move || bf.status());
        let _ = crate::log::flush(py);
        json(&records.map_err(to_py)?)
    }

    fn status_stream(&self, py: Python<'_>) -> PyResult<ArrowStream> {
        let bf = self.bf.clone();
        let records = py.detach(move || bf.status());
        let _ = crate::log::flush(py);
        let records = records.map_err(to_py)?;
        tables::status(&records, self.bf.spec().position_column().is_some())
    }

    /// Runs the chunks not yet committed (or those overlapping
    /// `[from_, to)`, committed or not). `on_chunk(event: dict)` is called
    /// on this thread as each chunk ends; if it raises, the run stops as on
    /// Ctrl-C and the exception propagates. Returns the run's summary.
    #[pyo3(signature = (from_=None, to=None, parallel=None, replan=false, only_failed=false, incremental=false, dry_run=false, on_chunk=None, quiet=true))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        from_: Option<String>,
        to: Option<String>,
        parallel: Option<usize>,
        replan: bool,
        only_failed: bool,
        incremental: bool,
        dry_run: bool,
        on_chunk: Option<Py<PyAny>>,
        quiet: bool,
    ) -> PyResult<String> {
        let bf = if incremental {
            Arc::new(self.bf.incremental().map_err(to_py)?)
        } else {
            self.bf.clone()
        };
        let (from, to) = bf
            .window(from_.as_deref(), to.as_deref(), ["from_", "to"])
            .map_err(to_py)?;
        if parallel == Some(0) {
            return Err(UsageError::new_err("parallel: must be at least 1"));
        }
        let cancel = Cancel::new();
        let (tx, rx) = mpsc::channel::<ChunkEvent>();
        let opts = RunOptions {
            from,
            to,
            parallelism: parallel,
            replan,
            dry_run,
            only_failed,
            progress: if quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::Log
            },
            cancel: Some(cancel.clone()),
            on_chunk: on_chunk.is_some().then(|| {
                OnChunk(Arc::new(move |e| {
                    // The receiver is gone only once the run has ended.
                    let _ = tx.send(e);
                }))
            }),
        };
        let stop = move || cancel.cancel();
        let mut deliver = |py: Python<'_>, e: ChunkEvent| -> PyResult<()> {
            let Some(cb) = &on_chunk else { return Ok(()) };
            let d = PyDict::new(py);
            d.set_item("done", e.done)?;
            d.set_item("total", e.total)?;
            d.set_item("id", e.id)?;
            d.set_item("bounds", e.bounds)?;
            d.set_item("state", e.state)?;
            d.set_item("rows_read", e.rows_read)?;
            d.set_item("rows_written", e.rows_written)?;
            d.set_item("error", e.error.map(|m| backfill::redact::redact(&m)))?;
            cb.call1(py, (d,))?;
            Ok(())
        };
        let summary = wait(
            py,
            async move { bf.run_with(opts).await },
            Some(&stop),
            Some(&rx),
            &mut deliver,
        )?
        .map_err(to_py)?;
        let text = json(&summary)?;
        if summary.interrupted {
            return Err(interrupted(text));
        }
        Ok(text)
    }

    /// Reconciles the target with the source, per chunk and per group.
    #[pyo3(signature = (group_by=None, from_=None, to=None, chunks=None))]
    fn validate(
        &self,
        py: Python<'_>,
        group_by: Option<Vec<String>>,
        from_: Option<String>,
        to: Option<String>,
        chunks: Option<Vec<String>>,
    ) -> PyResult<String> {
        let (from, to) = self
            .bf
            .window(from_.as_deref(), to.as_deref(), ["from_", "to"])
            .map_err(to_py)?;
        let opts = ValidateOptions {
            group_by: group_by.unwrap_or_else(|| self.bf.spec().validate.group_by.clone()),
            chunks: chunks.unwrap_or_default(),
            from,
            to,
        };
        let bf = self.bf.clone();
        let report = run_plain(py, async move { bf.validate(opts).await })?;
        json(&report)
    }

    /// Missing or thin periods in the target (`expect`: hourly, daily,
    /// weekly or monthly; default by chunk size). `fix` resets the chunks
    /// that cover them, for the next run.
    #[pyo3(signature = (expect=None, min_ratio=0.5, fix=false))]
    fn gaps(
        &self,
        py: Python<'_>,
        expect: Option<String>,
        min_ratio: f64,
        fix: bool,
    ) -> PyResult<String> {
        let expect = match expect {
            None => None,
            Some(e) => Some(Cadence::parse(&e).ok_or_else(|| {
                UsageError::new_err(format!(
                    "expect={e:?}: expected hourly, daily, weekly or monthly"
                ))
            })?),
        };
        let opts = GapOptions {
            expect,
            min_ratio,
            fix,
        };
        let bf = self.bf.clone();
        let report = run_plain(py, async move { bf.gaps(&opts).await })?;
        json(&report)
    }

    /// Forgets the chunks overlapping `[from_, to)` (all without bounds),
    /// so the next run runs them again. Returns how many.
    #[pyo3(signature = (from_=None, to=None))]
    fn reset(&self, py: Python<'_>, from_: Option<String>, to: Option<String>) -> PyResult<usize> {
        let (from, to) = self
            .bf
            .window(from_.as_deref(), to.as_deref(), ["from_", "to"])
            .map_err(to_py)?;
        let bf = self.bf.clone();
        let n = py.detach(move || bf.reset(from, to));
        let _ = crate::log::flush(py);
        n.map_err(to_py)
    }

    fn __repr__(&self) -> String {
        format!("<backfill Job {:?}>", self.bf.spec().name)
    }
}
