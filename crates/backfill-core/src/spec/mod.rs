//! The job file: TOML with `${ENV}` interpolation, checked purely (no
//! filesystem, no network) and with every problem reported at once, each
//! naming the file, line, column and key.

mod engine;
mod kafka;
mod pgurl;
mod postgres;
mod quality;
mod range;
mod reader;
mod run;
mod source;
mod target;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::interval::{
    Calendar, ChunkSize, RangeValue, ValueKind, parse_duration, parse_weekday, parse_zone,
};
pub use engine::{ConnectUrl, EngineKind, EngineSpec, SparkSpec, parse_connect_url};
pub use kafka::{
    KAFKA_DECODE_ERROR, KAFKA_KEY, KAFKA_OFFSET, KAFKA_PARTITION, KAFKA_TIMESTAMP, KafkaSasl,
    KafkaSourceSpec, KafkaTls, KafkaValue,
};
pub use pgurl::{PgTls, SslMode, mask_url, split_tls, url_passwords};
pub use postgres::{
    PgRelation, PgSourceSpec, PgTargetSpec, PgWriteMode, QualifiedName, quote_ident,
};
pub use quality::{
    DedupScope, DedupSpec, OrderKey, QuarantineSpec, RuleAction, RuleSpec, ValidateSpec,
};
use reader::{Diags, Env, TableReader};
pub use reader::{Located, line_col};

use range::*;
pub use range::{Buckets, Partitions, RangeSpec};
use run::*;
pub use run::{DEFAULT_MAX_FILE_SIZE, MIN_MEMORY_LIMIT};
pub use source::SourceCompression;
use source::*;
use target::*;

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
    /// `[[tables]]`: lookup tables the transform can join.
    pub tables: Vec<LookupSpec>,
    /// Values substituted from `${VAR}`: never to be printed or stored.
    pub secrets: Vec<String>,
}

/// `[[tables]]`: a table the transform can join by `name`, read like a
/// file source.
#[derive(Debug, Clone, PartialEq)]
pub struct LookupSpec {
    pub name: String,
    pub source: SourceSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Parquet,
    Csv,
    Json,
    Postgres,
    Kafka,
}

impl SourceFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SourceFormat::Parquet => "parquet",
            SourceFormat::Csv => "csv",
            SourceFormat::Json => "json",
            SourceFormat::Postgres => "postgres",
            SourceFormat::Kafka => "kafka",
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
    /// CSV and JSON files only.
    pub compression: SourceCompression,
    pub columns: Vec<(String, ColumnType)>,
    /// Set exactly when `format = "postgres"` (then `path` is empty).
    pub postgres: Option<PgSourceSpec>,
    /// Set exactly when `format = "kafka"`.
    pub kafka: Option<KafkaSourceSpec>,
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
    /// `max_file_rows`: a file holds at most this many rows; the
    /// partition's next rows start another. `None`: no row cap.
    pub max_file_rows: Option<u64>,
    /// `sort_by`: the order of rows within each file written (file targets).
    pub sort_by: Vec<OrderKey>,
    pub sort_loc: Loc,
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
    /// Kafka offset chunks: the partition column that, with the range
    /// column `_offset`, makes a chunk bound's position
    /// ([`crate::plan::POSITION_BASE`]).
    pub fn position_column(&self) -> Option<&'static str> {
        let r = self.range.as_ref()?;
        (self.source.format == SourceFormat::Kafka && r.column == KAFKA_OFFSET)
            .then_some(KAFKA_PARTITION)
    }
    /// The shared state lives in the PostgreSQL database the job writes
    /// to, so a chunk can commit and publish in one transaction.
    pub fn state_in_target_database(&self) -> bool {
        match (&self.state.postgres, &self.target.postgres) {
            (Some(s), Some(t)) => s.url == t.url,
            _ => false,
        }
    }

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
    let mut rules = match top.raw("rules") {
        Some(raw) => quality::read_rules(d, env, raw, text),
        None => Vec::new(),
    };
    if let Some(s) = source.as_ref().filter(|s| s.format == SourceFormat::Kafka) {
        // Events whose value does not decode fail the built-in rule
        // `decode` first, and go to the quarantine with their reason.
        if let Some(r) = rules.iter().find(|r| r.name == "decode") {
            let at = r.check_loc;
            d.list.push(Diagnostic {
                line: at.line,
                column: at.column,
                key: "rules".into(),
                message: "the rule name \"decode\" is taken by a Kafka source's built-in rule (events that do not decode); rename this rule".into(),
            });
        }
        rules.insert(
            0,
            RuleSpec {
                name: "decode".into(),
                check: format!("{} IS NULL", quote_ident(KAFKA_DECODE_ERROR)),
                action: RuleAction::Quarantine,
                check_loc: s.path_loc,
            },
        );
    }
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
    let tables = match top.raw("tables") {
        Some(raw) => read_tables(d, env, raw, base, text),
        None => Vec::new(),
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
        tables,
        secrets: Vec::new(),
    })
}

fn t_key(section: &str, key: &str) -> String {
    format!("{section}.{key}")
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

/// The commented example job that `backfill init` and `backfill demo` write.
pub const EXAMPLE_JOB: &str = include_str!("example.toml");

#[cfg(test)]
mod tests;
