//! `format = "postgres"` sources and targets.

use super::pgurl::{mask_url, split_tls, url_passwords};
use super::reader::{Diags, Env, Located, TableReader};

/// `[source] format = "postgres"`.
#[derive(Debug, Clone, PartialEq)]
pub struct PgSourceSpec {
    /// The connection URL (or `key=value` string), password included: never
    /// print it; use [`mask_url`].
    pub url: String,
    pub relation: PgRelation,
    pub max_rows_per_second: Option<u64>,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PgRelation {
    /// `schema.table` or `table`, split into its parts (unquoted).
    Table(QualifiedName),
    /// A query whose rows are the source; the chunk predicate wraps it.
    Query(String),
}

/// A table name as written, split on the first unquoted `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    /// Accepts `table`, `schema.table` and double-quoted parts (`"My
    /// Table"`, `"a.b"."c"`). Anything else (three parts, an empty part, an
    /// unterminated quote) is an error, so no text reaches SQL unquoted.
    pub fn parse(s: &str) -> Result<QualifiedName, String> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = s.trim().chars().peekable();
        let mut quoted_part = false;
        while let Some(c) = chars.next() {
            match c {
                '"' if cur.is_empty() && !quoted_part => {
                    quoted_part = true;
                    loop {
                        match chars.next() {
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                cur.push('"');
                            }
                            Some('"') => break,
                            Some(c) => cur.push(c),
                            None => return Err(format!("unterminated quote in \"{s}\"")),
                        }
                    }
                }
                '.' => {
                    parts.push(std::mem::take(&mut cur));
                    quoted_part = false;
                }
                c if quoted_part => {
                    return Err(format!("unexpected '{c}' after a quoted name in \"{s}\""));
                }
                c => cur.push(c),
            }
        }
        parts.push(cur);
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!(
                "\"{s}\" is not a table name (expected table or schema.table)"
            ));
        }
        match parts.len() {
            1 => Ok(QualifiedName {
                schema: None,
                name: parts.remove(0),
            }),
            2 => Ok(QualifiedName {
                name: parts.remove(1),
                schema: Some(parts.remove(0)),
            }),
            _ => Err(format!(
                "\"{s}\" has {} parts (expected table or schema.table)",
                parts.len()
            )),
        }
    }

    /// The name with each part quoted as a SQL identifier.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// The same schema, another table name (`orders` → `orders_quarantine`).
    pub fn sibling(&self, name: String) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name,
        }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Quotes a SQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `[target] format = "postgres"`.
#[derive(Debug, Clone, PartialEq)]
pub struct PgTargetSpec {
    pub url: String,
    pub table: QualifiedName,
    pub mode: PgWriteMode,
    /// For `merge`: the conflict keys.
    pub keys: Vec<String>,
    /// Create the table from the rows' schema when it is missing.
    pub create: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgWriteMode {
    /// Delete the chunk's range, insert its rows: one transaction.
    Replace,
    /// `INSERT ... ON CONFLICT (keys) DO UPDATE`: one transaction.
    Merge,
}

fn url(d: &mut Diags, env: Env, t: &mut TableReader, section: &str) -> Option<Located<String>> {
    match t.string(d, env, "url") {
        Some(u) if u.value.trim().is_empty() => {
            d.push(u.span, &format!("{section}.url"), "must not be empty");
            None
        }
        Some(u) => {
            d.secrets.extend(url_passwords(&u.value));
            if let Err(e) = split_tls(&u.value) {
                d.push(u.span, &format!("{section}.url"), e);
                return None;
            }
            Some(u)
        }
        None => {
            if !t.has("url") {
                d.push(
                    t.span(),
                    &format!("{section}.url"),
                    "missing (e.g. url = \"${PG_URL}\" holding postgres://user:password@host:5432/db)",
                );
            }
            None
        }
    }
}

fn table_name(d: &mut Diags, key: &str, l: Located<String>) -> Option<QualifiedName> {
    match QualifiedName::parse(&l.value) {
        Ok(q) => Some(q),
        Err(e) => {
            d.push(l.span, key, e.replace(&l.value, &l.shown));
            None
        }
    }
}

/// A PostgreSQL source under `section` (`source`, or `tables[i]`, which
/// also has the keys `extra`).
pub(super) fn read_source(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    section: &str,
    extra: &[&str],
) -> Option<(PgSourceSpec, String)> {
    let url = url(d, env, t, section);
    let table = t.string(d, env, "table");
    let query = t.string(d, env, "query");
    let rate = t.int(d, "max_rows_per_second");
    let conns = t.int(d, "max_connections");
    let mut known = vec![
        "format",
        "url",
        "table",
        "query",
        "max_rows_per_second",
        "max_connections",
    ];
    known.extend_from_slice(extra);
    t.finish(d, &known);
    let key = |k: &str| format!("{section}.{k}");
    let relation = match (table, query) {
        (Some(_), Some(q)) => {
            d.push(
                q.span,
                &key("query"),
                "give either table or query, not both",
            );
            None
        }
        (Some(t), None) => table_name(d, &key("table"), t).map(PgRelation::Table),
        (None, Some(q)) if q.value.trim().is_empty() => {
            d.push(q.span, &key("query"), "must not be empty");
            None
        }
        (None, Some(q)) => Some(PgRelation::Query(
            q.value.trim().trim_end_matches(';').to_string(),
        )),
        (None, None) => {
            d.push(
                t.span(),
                &key("table"),
                "missing (a table such as \"public.orders\", or a query = \"SELECT ...\")",
            );
            None
        }
    };
    let rate = match rate {
        Some(r) if r.value <= 0 => {
            d.push(r.span, &key("max_rows_per_second"), "must be positive");
            None
        }
        Some(r) => Some(Some(r.value as u64)),
        None => Some(None),
    };
    let conns = match conns {
        Some(c) if !(1..=64).contains(&c.value) => {
            d.push(c.span, &key("max_connections"), "must be from 1 to 64");
            None
        }
        Some(c) => Some(c.value as usize),
        None => Some(2),
    };
    let url = url?;
    let shown = match relation.as_ref()? {
        PgRelation::Table(q) => format!("postgres {} table {q}", mask_url(&url.shown)),
        PgRelation::Query(_) => format!("postgres {} query", mask_url(&url.shown)),
    };
    Some((
        PgSourceSpec {
            url: url.value,
            relation: relation?,
            max_rows_per_second: rate?,
            max_connections: conns?,
        },
        shown,
    ))
}

pub(super) fn read_target(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
) -> Option<(PgTargetSpec, String)> {
    let url = url(d, env, t, "target");
    let table = t.string(d, env, "table");
    let mode = t.string(d, env, "mode");
    let keys = t.strings(d, env, "keys");
    let keys_span = t.raw_span("keys");
    let create = t.bool(d, "create");
    t.finish(
        d,
        &[
            "format",
            "url",
            "table",
            "mode",
            "keys",
            "create",
            "schema",
            "version_column",
        ],
    );
    let table = match table {
        Some(l) => table_name(d, "target.table", l),
        None => {
            d.push(
                t.span(),
                "target.table",
                "missing (the table to write, such as \"analytics.orders\")",
            );
            None
        }
    };
    let mode = match mode {
        None => Some(PgWriteMode::Replace),
        Some(m) => match m.value.to_ascii_lowercase().as_str() {
            "replace" => Some(PgWriteMode::Replace),
            "merge" => Some(PgWriteMode::Merge),
            _ => {
                d.push(
                    m.span,
                    "target.mode",
                    format!("\"{}\" is not a mode (expected replace or merge)", m.shown),
                );
                None
            }
        },
    };
    let keys: Vec<String> = keys
        .unwrap_or_default()
        .into_iter()
        .map(|k| k.value)
        .collect();
    if mode == Some(PgWriteMode::Merge) && keys.is_empty() {
        d.push(
            keys_span.clone().unwrap_or_else(|| t.span()),
            "target.keys",
            "mode = \"merge\" needs keys (the columns of the unique key to merge on)",
        );
    }
    if keys.iter().any(|k| k.trim().is_empty()) {
        d.push(
            keys_span.clone().unwrap_or_else(|| t.span()),
            "target.keys",
            "a key column name must not be empty",
        );
    }
    let url = url?;
    let table = table?;
    let shown = format!("postgres {} table {table}", mask_url(&url.shown));
    Some((
        PgTargetSpec {
            url: url.value,
            table,
            mode: mode?,
            keys,
            create: create.unwrap_or(true),
        },
        shown,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_split_and_quoted() {
        let q = QualifiedName::parse("analytics.orders").unwrap();
        assert_eq!(q.quoted(), "\"analytics\".\"orders\"");
        let q = QualifiedName::parse("\"My \"\"Odd\"\" Schema\".\"t.1\"").unwrap();
        assert_eq!(q.schema.as_deref(), Some("My \"Odd\" Schema"));
        assert_eq!(q.name, "t.1");
        let evil = QualifiedName::parse("x\"; DROP TABLE y; --").unwrap();
        assert_eq!(evil.quoted(), "\"x\"\"; DROP TABLE y; --\"");
        assert!(QualifiedName::parse("a.b.c").is_err());
        assert!(QualifiedName::parse("a.").is_err());
        assert!(QualifiedName::parse("\"a").is_err());
    }
}
