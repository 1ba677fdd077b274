//! `[target]`: the format, mode, layout and limits of what the job writes.

use super::*;

pub(super) fn read_target(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    text: &str,
) -> Option<TargetSpec> {
    let format = t.string(d, env, "format");
    let schema_raw = t.string(d, env, "schema");
    let version = t.string(d, env, "version_column");
    let version_loc = loc(
        text,
        &t.raw_span("version_column").unwrap_or_else(|| t.span()),
    );
    let schema_loc = loc(text, &t.raw_span("schema").unwrap_or_else(|| t.span()));
    let schema = match schema_raw {
        None => SchemaMode::Strict,
        Some(s) => match s.value.to_ascii_lowercase().as_str() {
            "strict" => SchemaMode::Strict,
            "add_columns" | "add-columns" => SchemaMode::AddColumns,
            "merge" => SchemaMode::Merge,
            _ => {
                d.push(
                    s.span,
                    "target.schema",
                    format!(
                        "\"{}\" is not a schema mode (expected strict, add_columns or merge)",
                        s.shown
                    ),
                );
                SchemaMode::Strict
            }
        },
    };
    if format
        .as_ref()
        .is_some_and(|f| f.value.eq_ignore_ascii_case("postgres"))
    {
        let span = t.span();
        let (pg, shown) = postgres::read_target(d, env, t)?;
        let merge = pg.mode == postgres::PgWriteMode::Merge;
        return Some(TargetSpec {
            version_column: version_column(d, version, merge),
            version_loc,
            format: TargetFormat::Postgres,
            schema,
            schema_loc,
            path: PathBuf::new(),
            path_shown: shown,
            path_loc: loc(text, &span),
            url: None,
            partition_by: Vec::new(),
            partition_loc: loc(text, &span),
            compression: Compression::None,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_file_rows: None,
            sort_by: Vec::new(),
            sort_loc: Loc::default(),
            merge_keys: Vec::new(),
            postgres: Some(pg),
        });
    }
    let path = t.string(d, env, "path");
    let partition_by = t.strings(d, env, "partition_by");
    let compression = t.string(d, env, "compression");
    let max_file_size = t.string(d, env, "max_file_size");
    let max_file_rows = t.int(d, "max_file_rows");
    let sort_by = t.strings(d, env, "sort_by");
    let sort_span = t.raw_span("sort_by");
    let mode = t.string(d, env, "mode");
    let keys = t.strings(d, env, "keys");
    let keys_span = t.raw_span("keys");
    let partition_span = t.raw_span("partition_by");
    t.finish(
        d,
        &[
            "format",
            "path",
            "partition_by",
            "compression",
            "max_file_size",
            "max_file_rows",
            "sort_by",
            "mode",
            "keys",
            "schema",
            "version_column",
        ],
    );
    let max_file_size = match max_file_size {
        None => Some(DEFAULT_MAX_FILE_SIZE),
        Some(m) => match crate::interval::parse_size(&m.value) {
            Ok(v) if (MIN_MAX_FILE_SIZE..=MAX_MAX_FILE_SIZE).contains(&v) => Some(v),
            Ok(_) => {
                d.push(
                    m.span,
                    "target.max_file_size",
                    format!("must be between 1MiB and 4GiB, got \"{}\"", m.shown),
                );
                None
            }
            Err(e) => {
                d.push(
                    m.span,
                    "target.max_file_size",
                    format!("\"{}\" {e}", m.shown),
                );
                None
            }
        },
    };
    let max_file_rows = match max_file_rows {
        None => Some(None),
        Some(m) if m.value >= 1 => Some(Some(m.value as u64)),
        Some(m) => {
            d.push(
                m.span,
                "target.max_file_rows",
                format!("must be at least 1, got {}", m.value),
            );
            None
        }
    };
    let mut sort_keys = Vec::new();
    for k in sort_by.unwrap_or_default() {
        match OrderKey::parse(&k.value) {
            Ok(key) => sort_keys.push(key),
            Err(e) => d.push(k.span, "target.sort_by", e),
        }
    }
    let format = match format {
        Some(f) if f.value.eq_ignore_ascii_case("parquet") => Some(TargetFormat::Parquet),
        Some(f) if f.value.eq_ignore_ascii_case("delta") => Some(TargetFormat::Delta),
        Some(f) => {
            d.push(
                f.span,
                "target.format",
                format!(
                    "\"{}\" is not a target format this version writes (expected parquet, delta or postgres)",
                    f.shown
                ),
            );
            None
        }
        None => Some(TargetFormat::Parquet),
    };
    let keys: Vec<String> = keys
        .unwrap_or_default()
        .into_iter()
        .map(|k| k.value)
        .collect();
    let mut merge_keys = Vec::new();
    if let Some(m) = mode {
        let delta = format == Some(TargetFormat::Delta);
        if !delta {
            d.push(
                m.span,
                "target.mode",
                "mode only applies to delta and postgres targets",
            );
        } else if m.value.eq_ignore_ascii_case("merge") {
            if keys.is_empty() || keys.iter().any(|k| k.trim().is_empty()) {
                d.push(
                    keys_span.clone().unwrap_or(m.span.clone()),
                    "target.keys",
                    "mode = \"merge\" needs keys (the columns to merge on)",
                );
            }
            merge_keys = keys.clone();
        } else if !m.value.eq_ignore_ascii_case("replace") {
            d.push(
                m.span,
                "target.mode",
                format!("\"{}\" is not a mode (expected replace or merge)", m.shown),
            );
        }
    }
    if merge_keys.is_empty()
        && !keys.is_empty()
        && let Some(span) = keys_span
    {
        d.push(span, "target.keys", "keys only apply with mode = \"merge\"");
    }
    let compression = match compression {
        Some(c) => {
            match Compression::parse(&c.value) {
                Some(c) => Some(c),
                None => {
                    d.push(
                    c.span,
                    "target.compression",
                    format!("\"{}\" is not a codec (expected zstd, zstd(N), snappy, lz4, gzip or none)", c.shown),
                );
                    None
                }
            }
        }
        None => Some(Compression::Zstd(3)),
    };
    let mut parts = Vec::new();
    for p in partition_by.unwrap_or_default() {
        if p.value.trim().is_empty() {
            d.push(
                p.span,
                "target.partition_by",
                "a partition column name must not be empty",
            );
        } else if parts.contains(&p.value) {
            d.push(
                p.span,
                "target.partition_by",
                format!("\"{}\" is listed twice", p.value),
            );
        } else {
            parts.push(p.value);
        }
    }
    let path = match path {
        Some(p) if p.value.trim().is_empty() => {
            d.push(p.span, "target.path", "must not be empty");
            None
        }
        Some(p) => Some(p),
        None => {
            if !t.has("path") {
                d.push(
                    t.span(),
                    "target.path",
                    "missing (the directory to write into)",
                );
            }
            None
        }
    }?;
    let (local, url) = match resolve_location(base, &path.value) {
        Ok(l) => l,
        Err(e) => {
            d.push(path.span, "target.path", e);
            return None;
        }
    };
    Some(TargetSpec {
        format: format?,
        schema,
        schema_loc,
        path_loc: loc(text, &path.span),
        path: local,
        url,
        path_shown: path.shown,
        partition_by: parts,
        partition_loc: loc(text, &partition_span.unwrap_or(0..0)),
        compression: compression?,
        max_file_size: max_file_size?,
        max_file_rows: max_file_rows?,
        sort_by: sort_keys,
        sort_loc: loc(text, &sort_span.unwrap_or(0..0)),
        version_column: version_column(d, version, !merge_keys.is_empty()),
        version_loc,
        merge_keys,
        postgres: None,
    })
}

/// `[target] version_column`, which only a merge reads.
pub(super) fn version_column(
    d: &mut Diags,
    version: Option<Located<String>>,
    merge: bool,
) -> Option<String> {
    let v = version?;
    if v.value.trim().is_empty() {
        d.push(
            v.span,
            "target.version_column",
            "empty: name the column whose larger value is the newer version",
        );
        return None;
    }
    if !merge {
        d.push(
            v.span,
            "target.version_column",
            "version_column only applies with mode = \"merge\" (replace owns the chunk's range and keeps no older rows)",
        );
        return None;
    }
    Some(v.value)
}

/// Folders that must not nest: a target inside a source that is read
/// recursively (each run would read its own output), and the state inside
/// the target (readers would find it among the data, and a replace could
/// delete it).
pub(super) fn check_overlaps(
    d: &mut Diags,
    source: &SourceSpec,
    target: &TargetSpec,
    state: &StateSpec,
) {
    let shown_path = |p: &Path| p.display().to_string();
    let at = |loc: Loc| (loc.line, loc.column);
    let source_is_dir = source.postgres.is_none()
        && source.url.is_none()
        && !source.path_shown.contains(['*', '?', '['])
        && (source.path.is_dir() || source.path_shown.ends_with('/'));
    if source_is_dir && target.url.is_none() && within(&target.path, &source.path) {
        let (line, column) = at(target.path_loc);
        d.list.push(Diagnostic {
            line,
            column,
            key: "target.path".into(),
            message: format!(
                "{} is inside the source {}, which is read recursively: every run would read the rows it wrote; write the target outside the source folder",
                target.path_shown,
                source.path_shown
            ),
        });
    }
    if target.url.is_none() && target.postgres.is_none() && within(&state.path, &target.path) {
        let (line, column) = if state.explicit {
            at(state.path_loc)
        } else {
            at(target.path_loc)
        };
        d.list.push(Diagnostic {
            line,
            column,
            key: "state.path".into(),
            message: format!(
                "the state {} is inside the target {}: readers would find it among the data and a replace could delete it; keep it outside the target{}",
                shown_path(&state.path),
                target.path_shown,
                if state.explicit {
                    ""
                } else {
                    " (the default is .backfill/ beside the job file: move the target or set [state] path)"
                }
            ),
        });
    }
}
