//! `[state]` and `[run]`: where the state lives and how a run behaves.

use super::*;

pub(super) fn read_state(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    job: &str,
) -> Option<StateSpec> {
    let path = t.string(d, env, "path");
    let url = t.string(d, env, "url");
    let schema = t.string(d, env, "schema");
    let lease = t.string(d, env, "lease");
    t.finish(d, &["path", "url", "schema", "lease"]);
    let mut ok = true;
    let lease = match lease {
        Some(l) => match parse_duration(&l.value) {
            Ok(v) if v >= Duration::from_secs(1) => v,
            Ok(_) => {
                d.push(l.span, "state.lease", "must be at least 1s");
                ok = false;
                Duration::ZERO
            }
            Err(e) => {
                d.push(l.span, "state.lease", e.replace(&l.value, &l.shown));
                ok = false;
                Duration::ZERO
            }
        },
        None => Duration::from_secs(30),
    };
    let postgres = match url {
        Some(u) if !u.value.starts_with("postgres://") && !u.value.starts_with("postgresql://") => {
            d.push(
                u.span,
                "state.url",
                format!(
                    "\"{}\" is not a PostgreSQL URL (expected postgres://user:password@host/db)",
                    mask_url(&u.shown)
                ),
            );
            ok = false;
            None
        }
        Some(u) => {
            d.secrets.extend(url_passwords(&u.value));
            if let Err(e) = split_tls(&u.value) {
                d.push(u.span, "state.url", e);
                ok = false;
            }
            let schema = schema.map(|s| s.value).unwrap_or_else(|| "backfill".into());
            Some(PgStateSpec {
                shown: format!("postgres {} schema {schema}", mask_url(&u.shown)),
                url: u.value,
                schema,
                lease,
            })
        }
        None => {
            if let Some(s) = schema {
                d.push(s.span, "state.schema", "only applies with state.url");
                ok = false;
            }
            None
        }
    };
    let path_loc = path.as_ref().map_or(Loc::default(), |p| {
        let (line, column) = d.line_col_of(p.span.start);
        Loc { line, column }
    });
    ok.then(|| StateSpec {
        explicit: path.is_some(),
        path_loc,
        path: base.join(
            path.map(|p| PathBuf::from(p.value))
                .unwrap_or_else(|| default_state_path(job)),
        ),
        postgres,
    })
}

/// `[target] max_file_size` unless the job says otherwise.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;
pub(super) const MIN_MAX_FILE_SIZE: u64 = 1 << 20;
/// S3 copies at most 5 GiB into place in one request, and a file may end
/// a few row groups (each at most 64 MiB before encoding) past its cap.
pub(super) const MAX_MAX_FILE_SIZE: u64 = 4 << 30;

/// Below this the shares of the limit are too small to hold a batch.
pub const MIN_MEMORY_LIMIT: u64 = 4 << 20;

pub(super) fn read_run(d: &mut Diags, env: Env, t: &mut TableReader) -> Option<RunSpec> {
    let mut run = RunSpec::default();
    let mut ok = true;
    if let Some(p) = t.int(d, "parallelism") {
        if (1..=1024).contains(&p.value) {
            run.parallelism = p.value as usize;
        } else {
            d.push(
                p.span,
                "run.parallelism",
                format!("must be between 1 and 1024, got {}", p.value),
            );
            ok = false;
        }
    }
    if let Some(r) = t.int(d, "retries") {
        match u32::try_from(r.value) {
            Ok(v) if v <= 100 => run.retries = v,
            _ => {
                d.push(
                    r.span,
                    "run.retries",
                    format!("must be between 0 and 100, got {}", r.value),
                );
                ok = false;
            }
        }
    }
    if let Some(b) = t.string(d, env, "retry_backoff") {
        match parse_duration(&b.value) {
            Ok(v) => run.retry_backoff = v,
            Err(e) => {
                d.push(b.span, "run.retry_backoff", e);
                ok = false;
            }
        }
    }
    if let Some(m) = t.string(d, env, "memory_limit") {
        match crate::interval::parse_size(&m.value) {
            Ok(v) if v >= MIN_MEMORY_LIMIT => run.memory_limit = Some(v),
            Ok(_) => {
                d.push(
                    m.span,
                    "run.memory_limit",
                    format!("must be at least 4MiB, got \"{}\"", m.shown),
                );
                ok = false;
            }
            Err(e) => {
                d.push(m.span, "run.memory_limit", format!("\"{}\" {e}", m.shown));
                ok = false;
            }
        }
    }
    t.finish(
        d,
        &["parallelism", "retries", "retry_backoff", "memory_limit"],
    );
    ok.then_some(run)
}
