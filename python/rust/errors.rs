//! The engine's errors as Python exceptions: the class says whose fault it
//! is, attributes say where (`path`, `key`, `line`, `column`, and every
//! problem of a job file in `problems`). Messages go through the same
//! redaction as the CLI's output, so no secret of the job reaches Python.

use backfill::Error;
use backfill::core::SpecError as CoreSpecError;
use backfill::redact::redact;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{BackfillError, SourceError, SpecError, StateError, TargetError, UsageError};

/// Where in the job an error points.
#[derive(Default)]
struct Where {
    path: Option<String>,
    key: Option<String>,
    line: Option<usize>,
    column: Option<usize>,
}

pub(crate) fn to_py(e: Error) -> PyErr {
    let message = redact(&e.to_string());
    Python::attach(|py| {
        let (err, at) = classify(&e, message);
        let Some(at) = at else { return err };
        let value = err.value(py);
        // Setting an attribute on a fresh exception cannot fail in
        // practice; if it did, the message still says it all.
        let _ = value.setattr("path", at.path);
        let _ = value.setattr("key", at.key);
        let _ = value.setattr("line", at.line);
        let _ = value.setattr("column", at.column);
        let mut problems = Vec::new();
        if let Error::Spec(CoreSpecError::Invalid { diagnostics, .. }) = &e {
            for d in diagnostics {
                let p = PyDict::new(py);
                let _ = p.set_item("key", redact(&d.key));
                let _ = p.set_item("line", d.line);
                let _ = p.set_item("column", d.column);
                let _ = p.set_item("message", redact(&d.message));
                problems.push(p);
            }
        }
        let _ = value.setattr("problems", problems);
        err
    })
}

fn classify(e: &Error, message: String) -> (PyErr, Option<Where>) {
    match e {
        Error::Spec(CoreSpecError::Invalid { path, diagnostics }) => {
            let first = diagnostics.first();
            (
                SpecError::new_err(message),
                Some(Where {
                    path: Some(path.display().to_string()),
                    key: first.map(|d| redact(&d.key)).filter(|k| !k.is_empty()),
                    line: first.map(|d| d.line),
                    column: first.map(|d| d.column),
                }),
            )
        }
        Error::Spec(CoreSpecError::Read { path, .. }) => (
            SpecError::new_err(message),
            Some(Where {
                path: Some(path.display().to_string()),
                ..Where::default()
            }),
        ),
        Error::Job { file, loc, key, .. } => (
            SpecError::new_err(message),
            Some(Where {
                path: Some(file.display().to_string()),
                key: Some(key.clone()),
                line: Some(loc.line),
                column: Some(loc.column),
            }),
        ),
        e if e.is_usage() => (UsageError::new_err(message), None),
        Error::Source(_) => (SourceError::new_err(message), None),
        Error::Sink(_) => (TargetError::new_err(message), None),
        Error::State(_) => (StateError::new_err(message), None),
        _ => (BackfillError::new_err(message), None),
    }
}
