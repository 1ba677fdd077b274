//! The job file: TOML with `${ENV}` interpolation, checked purely (no
//! filesystem, no network) and with every problem reported at once, each
//! naming the file, line, column and key.

mod engine;
mod postgres;
mod quality;
mod reader;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::interval::{ChunkSize, RangeValue, ValueKind, parse_duration, parse_time};
pub use engine::{ConnectUrl, EngineKind, EngineSpec, SparkSpec, parse_connect_url};
pub use postgres::{
    PgRelation, PgSourceSpec, PgTargetSpec, PgWriteMode, QualifiedName, mask_url, quote_ident,
    url_passwords,
};
pub use quality::{
    DedupScope, DedupSpec, OrderKey, QuarantineSpec, RuleAction, RuleSpec, ValidateSpec,
};
use reader::{Diags, Env, TableReader};
pub use reader::{Located, line_col};

/// One problem in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    /// Dotted key, such as `range.chunk`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read job file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(path, diagnostics))]
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    let n = diagnostics.len();
    if n > 1 {
        out.push_str(&format!("{n} problems in {}:\n", path.display()));
    }
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{}:{}:{}: ", path.display(), d.line, d.column));
        if !d.key.is_empty() {
            out.push_str(&d.key);
            out.push_str(": ");
        }
        out.push_str(&d.message);
    }
    out
}

/// A position in the job file, kept for checks that happen later (against the
/// source schema) so their errors can still point at the right line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A checked job file.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job file itself (paths in it are relative to its directory).
    pub file: PathBuf,
    pub name: String,
    pub source: SourceSpec,
    pub range: Option<RangeSpec>,
    pub transform: Option<TransformSpec>,
    pub target: TargetSpec,
    pub run: RunSpec,
    pub state: StateSpec,
    /// In file order; a row is charged to the first rule it fails.
    pub rules: Vec<RuleSpec>,
    pub dedup: Option<DedupSpec>,
    pub quarantine: QuarantineSpec,
    pub validate: ValidateSpec,
    /// `[engine]`: DataFusion in-process (default) or Spark Connect.
    pub engine: EngineSpec,
    /// Values substituted from `${VAR}`: never to be printed or stored.
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Parquet,
    Csv,
    Json,
    Postgres,
}

impl SourceFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SourceFormat::Parquet => "parquet",
            SourceFormat::Csv => "csv",
            SourceFormat::Json => "json",
            SourceFormat::Postgres => "postgres",
        }
    }
}

/// Type overrides for text formats (`[source.columns] created_at = "timestamp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Timestamp,
    Date,
    Int64,
    Float64,
    Utf8,
    Boolean,
}

impl ColumnType {
    fn parse(s: &str) -> Option<ColumnType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "timestamp" | "datetime" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            "int" | "integer" | "int64" | "bigint" | "long" => ColumnType::Int64,
            "float" | "double" | "float64" | "real" => ColumnType::Float64,
            "string" | "text" | "utf8" | "varchar" => ColumnType::Utf8,
            "bool" | "boolean" => ColumnType::Boolean,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    pub format: SourceFormat,
    /// Absolute (resolved against the job file's directory).
    pub path: PathBuf,
    /// As written in the job file, for messages.
    pub path_shown: String,
    pub path_loc: Loc,
    /// An object-store location (`s3://bucket/prefix`); then `path` is empty.
    pub url: Option<String>,
    pub has_header: bool,
    pub delimiter: u8,
    pub columns: Vec<(String, ColumnType)>,
    /// Set exactly when `format = "postgres"` (then `path` is empty).
    pub postgres: Option<PgSourceSpec>,
}

/// `[range] partitions`: one chunk per value of the range column.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitions {
    /// The Hive partitions (`column=value/` directories) of a file source.
    Source,
    /// These values.
    List(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RangeSpec {
    pub column: String,
    pub column_loc: Loc,
    /// `None` only with `chunk = "all"` and no bounds: the whole source.
    pub start: Option<RangeValue>,
    pub end: Option<RangeValue>,
    pub chunk: ChunkSize,
    pub ordered: bool,
    /// `end = "now"`: an incremental job, planned up to the present.
    pub end_now: bool,
    /// Incremental runs also re-run this many of the last committed chunks,
    /// for rows that arrived late.
    pub lookback: u32,
    /// Plan on past `end` (or from `start`, without one) along the same
    /// chunk grid, up to the chunk holding this instant: set from the clock
    /// for `end = "now"` and by `run --incremental`.
    pub extend_to: Option<RangeValue>,
    /// One chunk per partition value instead of ranges.
    pub partitions: Option<Partitions>,
}

impl RangeSpec {
    pub fn kind(&self) -> Option<ValueKind> {
        self.start.map(|s| s.kind()).or(self.chunk.kind())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransformSpec {
    pub sql: String,
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFormat {
    Parquet,
    Postgres,
    /// A Delta Lake table: the Parquet layout plus a transaction log.
    Delta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd(i32),
    Snappy,
    Lz4,
    Gzip,
    None,
}

impl Compression {
    fn parse(s: &str) -> Option<Compression> {
        let lower = s.to_ascii_lowercase();
        if let Some(level) = lower
            .strip_prefix("zstd(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return level
                .parse()
                .ok()
                .filter(|l| (1..=22).contains(l))
                .map(Compression::Zstd);
        }
        Some(match lower.as_str() {
            "zstd" => Compression::Zstd(3),
            "snappy" => Compression::Snappy,
            "lz4" => Compression::Lz4,
            "gzip" => Compression::Gzip,
            "none" | "uncompressed" => Compression::None,
            _ => return None,
        })
    }
}

/// `[target] schema`: what a run does when the transformed rows' columns
/// differ from the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaMode {
    /// Any difference fails the run, showing it.
    #[default]
    Strict,
    /// New columns are added (older rows read them as NULL).
    AddColumns,
    /// New columns are added and compatible types widened (int32 to int64,
    /// float32 to float64, a wider decimal).
    Merge,
}

impl SchemaMode {
    pub fn name(&self) -> &'static str {
        match self {
            SchemaMode::Strict => "strict",
            SchemaMode::AddColumns => "add_columns",
            SchemaMode::Merge => "merge",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    pub format: TargetFormat,
    pub schema: SchemaMode,
    pub schema_loc: Loc,
    pub path: PathBuf,
    pub path_shown: String,
    pub path_loc: Loc,
    /// An object-store location (`s3://bucket/prefix`); then `path` is empty.
    pub url: Option<String>,
    pub partition_by: Vec<String>,
    pub partition_loc: Loc,
    pub compression: Compression,
    /// `max_file_size`: a file that reaches it is closed and the
    /// partition's next rows start another (S3 copies at most 5 GiB into
    /// place in one request).
    pub max_file_size: u64,
    /// Delta `mode = "merge"`: the keys; empty for `replace`.
    pub merge_keys: Vec<String>,
    /// Merge (Delta or PostgreSQL): the column whose larger value is the
    /// newer version of a key; a row is replaced only by one at least as
    /// new. Without it, `[dedup] order_by` says which version is newer.
    pub version_column: Option<String>,
    pub version_loc: Loc,
    /// Set exactly when `format = "postgres"` (then `path` is empty).
    pub postgres: Option<PgTargetSpec>,
}

impl JobSpec {
    /// A fingerprint of where the job writes, from the location as it is
    /// after `${VAR}` expansion (a PostgreSQL password left out), so that
    /// two spellings of one target (`${PG_URL}` or the URL itself) are one
    /// target, and a state keeps no secret, only this hash. A local path
    /// counts relative to the job file's folder: moving the folder with its
    /// job files keeps the key.
    pub fn target_key(&self) -> String {
        let t = &self.target;
        let format = t.identity();
        let format = format.split(' ').next().unwrap_or_default();
        let place = match (&t.postgres, &t.url) {
            (Some(pg), _) => format!("postgres|{}|{}", mask_url(&pg.url), pg.table),
            (None, Some(url)) => format!("{format}|{}", url.trim_end_matches('/')),
            (None, None) => {
                let base = self.file.parent().unwrap_or(Path::new(""));
                let rel = t.path.strip_prefix(base).unwrap_or(&t.path);
                let parts: Vec<String> = rel
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                format!("{format}|{}", parts.join("/"))
            }
        };
        format!("{:016x}", twox_hash::XxHash3_64::oneshot(place.as_bytes()))
    }
}

impl TargetSpec {
    /// What the job writes to, for messages and the state's record: the
    /// format and the location as written in the job file (`${VAR}`
    /// unexpanded, never a password). States compare [`JobSpec::target_key`].
    pub fn identity(&self) -> String {
        let format = match self.format {
            TargetFormat::Parquet => "parquet",
            TargetFormat::Delta => "delta",
            TargetFormat::Postgres => "postgres",
        };
        let mut shown = self.path_shown.trim();
        while let Some(rest) = shown.strip_prefix("./") {
            shown = rest;
        }
        let shown = shown.trim_end_matches('/');
        if self.format == TargetFormat::Postgres {
            // The text already starts with "postgres".
            return shown.to_string();
        }
        format!("{format} {shown}")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub parallelism: usize,
    pub retries: u32,
    pub retry_backoff: Duration,
    /// `memory_limit`: what the engine's sorts and aggregations, the rows
    /// a dedup holds back and the writers' open files may take before they
    /// spill to disk or close files. `None`: sized from the machine.
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    /// The SQLite file (also where the dedup index is kept, with a shared
    /// PostgreSQL state too). Default: `.backfill/<job name>.db` beside the
    /// job file, so several job files in one folder each have their own.
    pub path: PathBuf,
    /// `path` was written in the job file (not the default).
    pub explicit: bool,
    /// Where `path` was written (line 0 for the default).
    pub path_loc: Loc,
    /// `[state] url`: a PostgreSQL state store shared by several processes.
    pub postgres: Option<PgStateSpec>,
}

/// `[state] url = "postgres://..."`.
#[derive(Debug, Clone, PartialEq)]
pub struct PgStateSpec {
    pub url: String,
    pub shown: String,
    /// The schema holding the state tables (default `backfill`).
    pub schema: String,
    /// How long a chunk stays leased to a process that stopped renewing it.
    pub lease: Duration,
}

const TOP_KEYS: &[&str] = &[
    "job",
    "source",
    "range",
    "transform",
    "target",
    "run",
    "state",
    "engine",
];
impl JobSpec {
    /// Reads and checks a job file, interpolating `${VAR}` from the process
    /// environment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<JobSpec, SpecError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        JobSpec::parse(path, &text, &|name| std::env::var(name).ok())
    }

    /// Checks job file text. `path` names the file in messages and anchors
    /// relative paths; `env` resolves `${VAR}`.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<JobSpec, SpecError> {
        let mut d = Diags::new(text);
        let (doc, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            for e in syntax {
                let span = e.span().unwrap_or(0..0);
                d.push(span, "", e.message().trim().to_string());
            }
            return Err(SpecError::Invalid {
                path: path.to_path_buf(),
                diagnostics: d.list,
            });
        }
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut top = TableReader::new("", doc.get_ref(), doc.span());
        let spec = read_job(&mut d, env, &mut top, path, &base, text);
        top.finish(&mut d, TOP_KEYS);
        match spec {
            Some(mut spec) if d.list.is_empty() => {
                spec.secrets = std::mem::take(&mut d.secrets);
                // Shorter values would blank out ordinary words; see README.
                spec.secrets.retain(|s| s.len() >= 4);
                spec.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
                spec.secrets.dedup();
                Ok(spec)
            }
            _ => {
                d.list.sort_by_key(|x| (x.line, x.column));
                // A message may quote a value that came from the environment
                // (a duration that does not parse): the job never loaded, so
                // no redactor knows its secrets yet.
                let mut secrets = std::mem::take(&mut d.secrets);
                secrets.retain(|s| s.len() >= 4);
                secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
                for x in &mut d.list {
                    x.message = redact_with(&secrets, &x.message);
                }
                Err(SpecError::Invalid {
                    path: path.to_path_buf(),
                    diagnostics: d.list,
                })
            }
        }
    }

    /// `text` with every value that came from the environment replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        redact_with(&self.secrets, text)
    }

    /// Directory that relative paths in the job file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

/// `p` with `.` and `..` resolved lexically (the paths may not exist yet;
/// symbolic links are not followed).
pub(crate) fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// `inner` is `outer` or inside it, lexically; local paths only (an object
/// store location has an empty path).
pub(crate) fn within(inner: &Path, outer: &Path) -> bool {
    !inner.as_os_str().is_empty()
        && !outer.as_os_str().is_empty()
        && lexical(inner).starts_with(lexical(outer))
}

/// Folders that must not nest: a target inside a source that is read
/// recursively (each run would read its own output), and the state inside
/// the target (readers would find it among the data, and a replace could
/// delete it).
fn check_overlaps(d: &mut Diags, source: &SourceSpec, target: &TargetSpec, state: &StateSpec) {
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

/// Replaces each secret (longest first) in `text` with `***`: as written,
/// and as JSON writes it inside a string (a secret holding `"`, `\` or a
/// control character is escaped in `--json` output and the state's JSON).
pub fn redact_with(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.is_empty() {
            continue;
        }
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
        let json = serde_json::to_string(s).unwrap_or_default();
        let escaped = json
            .strip_prefix('"')
            .and_then(|j| j.strip_suffix('"'))
            .unwrap_or_default();
        if escaped != s && !escaped.is_empty() && out.contains(escaped) {
            out = out.replace(escaped, "***");
        }
    }
    out
}

fn loc(text: &str, span: &std::ops::Range<usize>) -> Loc {
    let (line, column) = line_col(text, span.start);
    Loc { line, column }
}

fn section<'a, 'i>(
    d: &mut Diags,
    top: &mut TableReader<'a, 'i>,
    name: &str,
    required: bool,
) -> Option<TableReader<'a, 'i>> {
    if !top.has(name) {
        if required {
            d.push(0..0, name, format!("missing section [{name}]"));
        }
        return None;
    }
    top.table(d, name)
}

fn read_job(
    d: &mut Diags,
    env: Env,
    top: &mut TableReader,
    file: &Path,
    base: &Path,
    text: &str,
) -> Option<JobSpec> {
    let name = match section(d, top, "job", false) {
        Some(mut job) => {
            let name = job.string(d, env, "name").map(|l| l.value);
            job.finish(d, &["name"]);
            name
        }
        None => None,
    }
    .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
    .unwrap_or_else(|| "backfill".to_string());

    let source =
        section(d, top, "source", true).and_then(|mut t| read_source(d, env, &mut t, base, text));
    let range = match section(d, top, "range", false) {
        Some(mut t) => read_range(d, env, &mut t, text).map(Some),
        None => Some(None),
    };
    let transform = match section(d, top, "transform", false) {
        Some(mut t) => {
            let sql = t.string(d, env, "sql");
            t.finish(d, &["sql"]);
            match sql {
                Some(sql) if sql.value.trim().is_empty() => {
                    d.push(sql.span, &t_key("transform", "sql"), "must not be empty");
                    None
                }
                Some(sql) => Some(Some(TransformSpec {
                    loc: loc(text, &sql.span),
                    sql: sql.value,
                })),
                None => Some(None),
            }
        }
        None => Some(None),
    };
    let target =
        section(d, top, "target", true).and_then(|mut t| read_target(d, env, &mut t, base, text));
    let run = match section(d, top, "run", false) {
        Some(mut t) => read_run(d, env, &mut t),
        None => Some(RunSpec::default()),
    };
    let state = match section(d, top, "state", false) {
        Some(mut t) => read_state(d, env, &mut t, base, &name),
        None => Some(StateSpec {
            path: base.join(default_state_path(&name)),
            explicit: false,
            path_loc: Loc::default(),
            postgres: None,
        }),
    };
    let rules = match top.raw("rules") {
        Some(raw) => quality::read_rules(d, env, raw, text),
        None => Vec::new(),
    };
    let dedup = match section(d, top, "dedup", false) {
        Some(mut t) => quality::read_dedup(d, env, &mut t, text).map(Some),
        None => Some(None),
    };
    let quarantine = match section(d, top, "quarantine", false) {
        Some(mut t) => quality::read_quarantine(d, env, Some(&mut t), base, target.as_ref()),
        None => quality::read_quarantine(d, env, None, base, target.as_ref()),
    };
    let validate = match section(d, top, "validate", false) {
        Some(mut t) => quality::read_validate(d, env, &mut t),
        None => ValidateSpec::default(),
    };
    let engine = match section(d, top, "engine", false) {
        Some(mut t) => engine::read_engine(d, env, &mut t, base, text),
        None => Some(EngineSpec::default()),
    };
    if let (Some(source), Some(target), Some(state)) = (&source, &target, &state) {
        check_overlaps(d, source, target, state);
    }
    Some(JobSpec {
        file: file.to_path_buf(),
        name,
        source: source?,
        range: range?,
        transform: transform?,
        target: target?,
        run: run?,
        state: state?,
        rules,
        dedup: dedup?,
        quarantine: quarantine?,
        validate,
        engine: engine?,
        secrets: Vec::new(),
    })
}

fn t_key(section: &str, key: &str) -> String {
    format!("{section}.{key}")
}

fn read_source(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    text: &str,
) -> Option<SourceSpec> {
    let format = t.string(d, env, "format");
    if format
        .as_ref()
        .is_some_and(|f| f.value.eq_ignore_ascii_case("postgres"))
    {
        let span = t.span();
        let (pg, shown) = postgres::read_source(d, env, t)?;
        return Some(SourceSpec {
            format: SourceFormat::Postgres,
            path: PathBuf::new(),
            path_shown: shown,
            path_loc: loc(text, &span),
            url: None,
            has_header: false,
            delimiter: b',',
            columns: Vec::new(),
            postgres: Some(pg),
        });
    }
    let path = t.string(d, env, "path");
    let has_header = t.bool(d, "has_header");
    let delimiter = t.string(d, env, "delimiter");
    let columns = t.table(d, "columns");
    let known = ["format", "path", "has_header", "delimiter", "columns"];
    let format = match format {
        Some(f) => match f.value.to_ascii_lowercase().as_str() {
            "parquet" => Some(SourceFormat::Parquet),
            "csv" => Some(SourceFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(SourceFormat::Json),
            _ => {
                d.push(
                    f.span,
                    "source.format",
                    format!(
                        "\"{}\" is not a source format (expected parquet, csv, json or postgres)",
                        f.shown
                    ),
                );
                None
            }
        },
        None => {
            if !t.has("format") {
                d.push(
                    t.span(),
                    "source.format",
                    "missing (expected parquet, csv, json or postgres)",
                );
            }
            None
        }
    };
    if format.is_some_and(|f| f != SourceFormat::Csv)
        && (has_header.is_some() || delimiter.is_some())
    {
        d.push(
            t.span(),
            "source",
            "has_header and delimiter only apply to format = \"csv\"",
        );
    }
    let delimiter = match delimiter {
        Some(dl) if dl.value.len() == 1 => Some(dl.value.as_bytes()[0]),
        Some(dl) if dl.value == "\\t" => Some(b'\t'),
        Some(dl) => {
            d.push(
                dl.span,
                "source.delimiter",
                format!("must be a single ASCII character, got \"{}\"", dl.shown),
            );
            None
        }
        None => Some(b','),
    };
    let mut column_types = Vec::new();
    if let Some(mut cols) = columns {
        let keys = cols.entry_names();
        for key in &keys {
            if let Some(ty) = cols.string(d, env, key) {
                match ColumnType::parse(&ty.value) {
                    Some(c) => column_types.push((key.clone(), c)),
                    None => d.push(
                        ty.span,
                        &format!("source.columns.{key}"),
                        format!(
                            "\"{}\" is not a column type (expected timestamp, date, int, float, string or bool)",
                            ty.shown
                        ),
                    ),
                }
            }
        }
        cols.finish(d, &[]);
    }
    t.finish(d, &known);
    let path = match path {
        Some(p) if p.value.trim().is_empty() => {
            d.push(p.span, "source.path", "must not be empty");
            None
        }
        Some(p) => Some(p),
        None => {
            if !t.has("path") {
                d.push(
                    t.span(),
                    "source.path",
                    "missing (a file, directory or glob)",
                );
            }
            None
        }
    }?;
    let (local, url) = match resolve_location(base, &path.value) {
        Ok(l) => l,
        Err(e) => {
            d.push(path.span, "source.path", e);
            return None;
        }
    };
    Some(SourceSpec {
        format: format?,
        path_loc: loc(text, &path.span),
        path: local,
        url,
        path_shown: path.shown,
        has_header: has_header.unwrap_or(true),
        delimiter: delimiter?,
        columns: column_types,
        postgres: None,
    })
}

/// A range bound: an integer, a TOML date/datetime, or a string holding either.
fn range_value(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    name: &str,
) -> Option<Located<RangeValue>> {
    let key = t.key(name);
    let raw = t.raw(name)?;
    let span = raw.span();
    let parsed = match raw.get_ref() {
        DeValue::Integer(_) => match reader::int_value(raw.get_ref()) {
            Some(Ok(i)) => Ok(RangeValue::Int(i)),
            _ => Err("does not fit in a 64-bit integer".to_string()),
        },
        DeValue::Datetime(dt) => parse_time(&dt.to_string()).map(RangeValue::Time),
        DeValue::String(_) => {
            let s = reader::string_of(d, env, &key, raw)?;
            RangeValue::parse(&s.value).map_err(|e| e.replace(&s.value, &s.shown))
        }
        other => Err(format!(
            "expected a date, timestamp or integer, found {}",
            other.type_str()
        )),
    };
    match parsed {
        Ok(v) => Some(Located {
            value: v,
            shown: v.to_string(),
            span,
        }),
        Err(e) => {
            d.push(span, &key, e);
            None
        }
    }
}

fn read_range(d: &mut Diags, env: Env, t: &mut TableReader, text: &str) -> Option<RangeSpec> {
    let column = t.string(d, env, "column");
    let start = range_value(d, env, t, "start");
    let end_now = t
        .raw("end")
        .and_then(|v| {
            v.get_ref()
                .as_str()
                .map(|s| s.trim().eq_ignore_ascii_case("now"))
        })
        .unwrap_or(false);
    let end = if end_now {
        None
    } else {
        range_value(d, env, t, "end")
    };
    let chunk_raw = t.raw("chunk");
    let ordered = t.bool(d, "ordered");
    let lookback_raw = t.raw("lookback");
    let partitions_raw = t.raw("partitions");
    t.finish(
        d,
        &[
            "column",
            "start",
            "end",
            "chunk",
            "ordered",
            "lookback",
            "partitions",
        ],
    );
    let partitions = match partitions_raw {
        None => None,
        Some(raw) => {
            let parsed = match raw.get_ref() {
                DeValue::String(s) if s.trim().eq_ignore_ascii_case("source") => {
                    Ok(Partitions::Source)
                }
                DeValue::Array(items) => {
                    let values: Vec<String> = items
                        .iter()
                        .filter_map(|v| v.get_ref().as_str().map(str::to_string))
                        .collect();
                    if values.len() != items.len() || values.is_empty() {
                        Err("must be \"source\" or a non-empty list of strings".to_string())
                    } else if values.iter().any(|v| v.is_empty()) {
                        Err("partition values must not be empty".to_string())
                    } else {
                        Ok(Partitions::List(values))
                    }
                }
                _ => Err(
                    "must be \"source\" or a list of strings, e.g. [\"eu\", \"us\"]".to_string(),
                ),
            };
            match parsed {
                Ok(p) => {
                    if start.is_some() || end.is_some() || end_now || chunk_raw.is_some() {
                        d.push(
                            raw.span(),
                            "range.partitions",
                            "plans one chunk per value: leave out start, end and chunk",
                        );
                    }
                    Some(p)
                }
                Err(e) => {
                    d.push(raw.span(), "range.partitions", e);
                    None
                }
            }
        }
    };
    let lookback = match lookback_raw {
        None => 1,
        Some(raw) => match reader::int_value(raw.get_ref()) {
            Some(Ok(n)) if (0..=10_000).contains(&n) => n as u32,
            _ => {
                d.push(
                    raw.span(),
                    "range.lookback",
                    "must be a number of chunks from 0 to 10000",
                );
                1
            }
        },
    };
    let now = if end_now {
        match env("BACKFILL_NOW") {
            Some(v) => match parse_time(&v) {
                Ok(us) => Some(us),
                Err(e) => {
                    d.push(
                        t.raw_span("end").unwrap_or_else(|| t.span()),
                        "range.end",
                        format!("\"now\" from BACKFILL_NOW: {e}"),
                    );
                    None
                }
            },
            None => Some(chrono::Utc::now().timestamp_micros()),
        }
    } else {
        None
    };

    let chunk = match chunk_raw {
        None if partitions.is_some() => Some((ChunkSize::All, 0..0)),
        None => {
            if !t.has("chunk") {
                d.push(
                    t.span(),
                    "range.chunk",
                    "missing (e.g. \"7d\", \"1 month\", 100000 or \"all\")",
                );
            }
            None
        }
        Some(raw) => {
            let parsed = match raw.get_ref() {
                DeValue::Integer(_) => match reader::int_value(raw.get_ref()) {
                    Some(Ok(n)) if n > 0 => Ok(ChunkSize::Count(n)),
                    Some(Ok(n)) => Err(format!("chunk size must be positive, got {n}")),
                    _ => Err("does not fit in a 64-bit integer".to_string()),
                },
                DeValue::String(_) => match reader::string_of(d, env, "range.chunk", raw) {
                    Some(s) => {
                        ChunkSize::parse(&s.value).map_err(|e| e.replace(&s.value, &s.shown))
                    }
                    None => return None,
                },
                other => Err(format!(
                    "expected a duration string or an integer, found {}",
                    other.type_str()
                )),
            };
            match parsed {
                Ok(c) => Some((c, raw.span())),
                Err(e) => {
                    d.push(raw.span(), "range.chunk", e);
                    None
                }
            }
        }
    };
    let column = match column {
        Some(c) if c.value.trim().is_empty() => {
            d.push(c.span, "range.column", "must not be empty");
            None
        }
        Some(c) => Some(c),
        None => {
            if !t.has("column") {
                d.push(
                    t.span(),
                    "range.column",
                    "missing (the timestamp, date or integer column to split on)",
                );
            }
            None
        }
    };
    if let (Some(s), Some(e)) = (&start, &end) {
        if s.value.kind() != e.value.kind() {
            d.push(
                e.span.clone(),
                "range.end",
                format!(
                    "is {} but range.start is {}",
                    e.value.kind(),
                    s.value.kind()
                ),
            );
        } else if e.value <= s.value {
            d.push(
                e.span.clone(),
                "range.end",
                format!(
                    "{} must be after range.start ({}); the range is [start, end)",
                    e.shown, s.shown
                ),
            );
        }
    }
    let (chunk, chunk_span) = chunk?;
    let all = chunk == ChunkSize::All;
    if !all && partitions.is_none() {
        if start.is_none() && !t.has("start") {
            d.push(t.span(), "range.start", "missing (inclusive lower bound)");
        }
        if end.is_none() && !end_now && !t.has("end") {
            d.push(t.span(), "range.end", "missing (exclusive upper bound)");
        }
    }
    if start.is_some() != end.is_some() && all {
        d.push(
            t.span(),
            "range",
            "give both start and end, or neither with chunk = \"all\"",
        );
    }
    if let (Some(s), Some(ck)) = (&start, chunk.kind())
        && ck != s.value.kind()
    {
        let msg = match ck {
            ValueKind::Int => {
                "an integer chunk needs integer bounds, but the range is in time; use a duration such as \"7d\""
            }
            ValueKind::Time => {
                "a duration chunk needs date or timestamp bounds, but the range is integers; use an integer chunk size"
            }
        };
        d.push(chunk_span.clone(), "range.chunk", msg);
    }
    if end_now {
        if all {
            d.push(
                chunk_span.clone(),
                "range.chunk",
                "end = \"now\" needs a chunk width: a single chunk would change every run",
            );
        } else if start
            .as_ref()
            .is_some_and(|s| s.value.kind() != ValueKind::Time)
        {
            d.push(
                t.span(),
                "range.end",
                "\"now\" is a time; the range is integers",
            );
        }
    }
    Some(RangeSpec {
        column_loc: loc(text, &column.as_ref()?.span),
        column: column?.value,
        start: start.map(|s| s.value),
        end: end.map(|e| e.value),
        chunk,
        ordered: ordered.unwrap_or(false),
        end_now,
        lookback,
        extend_to: now.map(RangeValue::Time),
        partitions,
    })
}

fn read_target(
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
            merge_keys: Vec::new(),
            postgres: Some(pg),
        });
    }
    let path = t.string(d, env, "path");
    let partition_by = t.strings(d, env, "partition_by");
    let compression = t.string(d, env, "compression");
    let max_file_size = t.string(d, env, "max_file_size");
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
        version_column: version_column(d, version, !merge_keys.is_empty()),
        version_loc,
        merge_keys,
        postgres: None,
    })
}

/// `[target] version_column`, which only a merge reads.
fn version_column(d: &mut Diags, version: Option<Located<String>>, merge: bool) -> Option<String> {
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

/// URL schemes served by object stores (credentials from the environment).
pub const OBJECT_STORE_SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// A `path` value as a local path (relative to the job file) or an
/// object-store URL. `file://` URLs are local paths.
pub fn resolve_location(base: &Path, value: &str) -> Result<(PathBuf, Option<String>), String> {
    let Some((scheme, rest)) = value.split_once("://") else {
        return Ok((base.join(value), None));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "file" {
        if !rest.starts_with('/') {
            return Err(format!(
                "\"{value}\": a file:// URL needs an absolute path (file:///data/x)"
            ));
        }
        return Ok((PathBuf::from(rest), None));
    }
    if !OBJECT_STORE_SCHEMES.contains(&scheme.as_str()) {
        return Err(format!(
            "\"{scheme}://\" is not a supported location (use a local path, file://, s3://, gs:// or az://)"
        ));
    }
    let bucket = rest.split('/').next().unwrap_or_default();
    if bucket.is_empty() {
        return Err(format!("\"{value}\" names no bucket or container"));
    }
    if rest.split('/').any(|seg| seg == "..") {
        return Err(format!("\"{value}\" must not contain \"..\""));
    }
    Ok((PathBuf::new(), Some(format!("{scheme}://{rest}"))))
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            parallelism: 1,
            retries: 3,
            retry_backoff: Duration::from_secs(1),
            memory_limit: None,
        }
    }
}

/// Where a job keeps its state unless `[state] path` says otherwise:
/// `.backfill/<job name>.db`. Characters that are not safe in a file name
/// become `_`, and then a hash of the real name keeps two names apart.
pub fn default_state_path(job: &str) -> PathBuf {
    let safe: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if safe == job && !job.is_empty() && !job.starts_with('.') {
        safe
    } else {
        let h = twox_hash::XxHash3_64::oneshot(job.as_bytes());
        format!("{}-{:08x}", safe.trim_start_matches('.'), h as u32)
    };
    Path::new(".backfill").join(format!("{name}.db"))
}

/// Where state files were by default before each job had its own; a
/// state there that belongs to the job is still used.
pub const LEGACY_STATE_PATH: &str = ".backfill/state.db";

fn read_state(
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
            d.secrets.extend(postgres::url_passwords(&u.value));
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
const MIN_MAX_FILE_SIZE: u64 = 1 << 20;
/// S3 copies at most 5 GiB into place in one request, and a file may end
/// a few row groups (each at most 64 MiB before encoding) past its cap.
const MAX_MAX_FILE_SIZE: u64 = 4 << 30;

/// Below this the shares of the limit are too small to hold a batch.
pub const MIN_MEMORY_LIMIT: u64 = 4 << 20;

fn read_run(d: &mut Diags, env: Env, t: &mut TableReader) -> Option<RunSpec> {
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

/// The commented example job that `backfill init` and `backfill demo` write.
pub const EXAMPLE_JOB: &str = include_str!("example.toml");

#[cfg(test)]
mod tests;
