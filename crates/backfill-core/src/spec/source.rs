//! `[source]`: files, object stores or PostgreSQL, read purely.

use super::*;

/// `[source] compression`: how CSV and JSON files are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceCompression {
    /// By the files' extension (`.gz`, `.zst`, `.bz2`, `.xz`, or none).
    #[default]
    Auto,
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl SourceCompression {
    /// The codecs, each with the extension its files carry.
    pub const CODECS: [(SourceCompression, &'static str); 4] = [
        (SourceCompression::Gzip, ".gz"),
        (SourceCompression::Zstd, ".zst"),
        (SourceCompression::Bzip2, ".bz2"),
        (SourceCompression::Xz, ".xz"),
    ];

    pub fn parse(s: &str) -> Option<SourceCompression> {
        Some(match s.to_ascii_lowercase().as_str() {
            "auto" => SourceCompression::Auto,
            "none" | "uncompressed" => SourceCompression::None,
            "gzip" | "gz" => SourceCompression::Gzip,
            "zstd" | "zst" => SourceCompression::Zstd,
            "bzip2" | "bz2" => SourceCompression::Bzip2,
            "xz" | "lzma" => SourceCompression::Xz,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SourceCompression::Auto => "auto",
            SourceCompression::None => "none",
            SourceCompression::Gzip => "gzip",
            SourceCompression::Zstd => "zstd",
            SourceCompression::Bzip2 => "bzip2",
            SourceCompression::Xz => "xz",
        }
    }

    /// The extension after the format's (`.csv.gz`): empty for none.
    pub fn extension(self) -> &'static str {
        Self::CODECS
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("", |(_, e)| e)
    }

    /// What a file's name says: `data.csv.gz` is gzip, `data.csv` none.
    pub fn of_file(name: &str) -> SourceCompression {
        Self::CODECS
            .iter()
            .find(|(_, e)| name.ends_with(e))
            .map_or(SourceCompression::None, |(c, _)| *c)
    }
}

pub(super) fn read_source(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    text: &str,
) -> Option<SourceSpec> {
    read_files(d, env, t, base, text, "source", &[])
}

/// `[[tables]]`: lookup tables the transform can join, each read like a
/// file source and named by `name`.
pub(super) fn read_tables(
    d: &mut Diags,
    env: Env,
    raw: &toml::Spanned<DeValue>,
    base: &Path,
    text: &str,
) -> Vec<LookupSpec> {
    let mut out: Vec<LookupSpec> = Vec::new();
    let DeValue::Array(items) = raw.get_ref() else {
        d.push(
            raw.span(),
            "tables",
            "write each lookup table as a [[tables]] table",
        );
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("tables[{i}]");
        let DeValue::Table(table) = item.get_ref() else {
            d.push(
                item.span(),
                &prefix,
                "expected a table with name, format and path",
            );
            continue;
        };
        let mut r = TableReader::new(&prefix, table, item.span());
        let name = r.string(d, env, "name");
        let source = read_files(d, env, &mut r, base, text, &prefix, &["name"]);
        let name = match name {
            Some(n) if !is_identifier(&n.value) => {
                d.push(
                    n.span,
                    &format!("{prefix}.name"),
                    format!(
                        "\"{}\" is not a table name the transform can use (letters, digits and _, not starting with a digit)",
                        n.shown
                    ),
                );
                None
            }
            Some(n)
                if n.value.eq_ignore_ascii_case("source")
                    || out.iter().any(|l| l.name.eq_ignore_ascii_case(&n.value)) =>
            {
                d.push(
                    n.span,
                    &format!("{prefix}.name"),
                    format!("\"{}\" is already a table of the transform", n.value),
                );
                None
            }
            Some(n) => Some(n.value),
            None => {
                if !r.has("name") {
                    d.push(item.span(), &format!("{prefix}.name"), "missing");
                }
                None
            }
        };
        if let (Some(name), Some(source)) = (name, source) {
            out.push(LookupSpec { name, source });
        }
    }
    out
}

/// `[source.columns]`: declared types of text fields.
fn column_types(
    d: &mut Diags,
    env: Env,
    columns: Option<TableReader>,
    p: &str,
) -> Vec<(String, ColumnType)> {
    let mut column_types = Vec::new();
    if let Some(mut cols) = columns {
        let keys = cols.entry_names();
        for key in &keys {
            if let Some(ty) = cols.string(d, env, key) {
                match ColumnType::parse(&ty.value) {
                    Some(c) => column_types.push((key.clone(), c)),
                    None => d.push(
                        ty.span,
                        &format!("{p}.columns.{key}"),
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
    column_types
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A file source's keys under `p` (`source`, or `tables[i]` with the extra
/// keys `extra`).
fn read_files(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    base: &Path,
    text: &str,
    p: &str,
    extra: &[&str],
) -> Option<SourceSpec> {
    let format = t.string(d, env, "format");
    if format
        .as_ref()
        .is_some_and(|f| f.value.eq_ignore_ascii_case("postgres"))
    {
        // Errors about the server point at its URL.
        let span = t.raw_span("url").unwrap_or_else(|| t.span());
        let (pg, shown) = postgres::read_source(d, env, t, p, extra)?;
        return Some(SourceSpec {
            format: SourceFormat::Postgres,
            path: PathBuf::new(),
            path_shown: shown,
            path_loc: loc(text, &span),
            url: None,
            has_header: false,
            delimiter: b',',
            compression: SourceCompression::None,
            columns: Vec::new(),
            postgres: Some(pg),
            kafka: None,
        });
    }
    if format
        .as_ref()
        .is_some_and(|f| f.value.eq_ignore_ascii_case("kafka"))
    {
        let span = t.raw_span("brokers").unwrap_or_else(|| t.span());
        let columns = t.table(d, "columns");
        let column_types = column_types(d, env, columns, p);
        let kafka = kafka::read_source(d, env, t, p);
        let known: Vec<&str> = ["format", "columns"]
            .iter()
            .chain(kafka::KEYS.iter())
            .chain(extra)
            .copied()
            .collect();
        t.finish(d, &known);
        let kafka = kafka?;
        return Some(SourceSpec {
            format: SourceFormat::Kafka,
            path: PathBuf::new(),
            path_shown: format!("kafka topic {}", kafka.topic),
            path_loc: loc(text, &span),
            url: None,
            has_header: false,
            delimiter: b',',
            compression: SourceCompression::None,
            columns: column_types,
            postgres: None,
            kafka: Some(kafka),
        });
    }
    let path = t.string(d, env, "path");
    let has_header = t.bool(d, "has_header");
    let delimiter = t.string(d, env, "delimiter");
    let compression = t.string(d, env, "compression");
    let columns = t.table(d, "columns");
    let known = [
        "format",
        "path",
        "has_header",
        "delimiter",
        "compression",
        "columns",
    ];
    let format = match format {
        Some(f) => match f.value.to_ascii_lowercase().as_str() {
            "parquet" => Some(SourceFormat::Parquet),
            "csv" => Some(SourceFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(SourceFormat::Json),
            _ => {
                d.push(
                    f.span,
                    &format!("{p}.format"),
                    format!(
                        "\"{}\" is not a source format (expected parquet, csv, json, postgres or kafka)",
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
                    &format!("{p}.format"),
                    "missing (expected parquet, csv, json, postgres or kafka)",
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
            p,
            "has_header and delimiter only apply to format = \"csv\"",
        );
    }
    let compression = match compression {
        None => Some(SourceCompression::Auto),
        Some(c) => match SourceCompression::parse(&c.value) {
            Some(_) if format == Some(SourceFormat::Parquet) => {
                d.push(
                    c.span,
                    &format!("{p}.compression"),
                    "only applies to format = \"csv\" or \"json\" (Parquet compresses inside its files)",
                );
                None
            }
            Some(parsed) => Some(parsed),
            None => {
                d.push(
                    c.span,
                    &format!("{p}.compression"),
                    format!(
                        "\"{}\" is not a compression (expected auto, none, gzip, zstd, bzip2 or xz)",
                        c.shown
                    ),
                );
                None
            }
        },
    };
    let delimiter = match delimiter {
        Some(dl) if dl.value.len() == 1 => Some(dl.value.as_bytes()[0]),
        Some(dl) if dl.value == "\\t" => Some(b'\t'),
        Some(dl) => {
            d.push(
                dl.span,
                &format!("{p}.delimiter"),
                format!("must be a single ASCII character, got \"{}\"", dl.shown),
            );
            None
        }
        None => Some(b','),
    };
    let column_types = column_types(d, env, columns, p);
    let known: Vec<&str> = known.iter().chain(extra).copied().collect();
    t.finish(d, &known);
    let path = match path {
        Some(v) if v.value.trim().is_empty() => {
            d.push(v.span, &format!("{p}.path"), "must not be empty");
            None
        }
        Some(v) => Some(v),
        None => {
            if !t.has("path") {
                d.push(
                    t.span(),
                    &format!("{p}.path"),
                    "missing (a file, directory or glob)",
                );
            }
            None
        }
    }?;
    let (local, url) = match resolve_location(base, &path.value) {
        Ok(l) => l,
        Err(e) => {
            d.push(path.span, &format!("{p}.path"), e);
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
        compression: compression?,
        columns: column_types,
        postgres: None,
        kafka: None,
    })
}
