//! `[[rules]]`, `[dedup]`, `[quarantine]` and `[validate]`.

use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::reader::{Diags, Env, TableReader};
use super::{Loc, loc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Keep the row aside in the quarantine table, with the rule's name.
    Quarantine,
    /// Count it per rule and let it go.
    Drop,
    /// Fail the chunk.
    Fail,
}

impl RuleAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleAction::Quarantine => "quarantine",
            RuleAction::Drop => "drop",
            RuleAction::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    /// SQL boolean over the transformed row; NULL counts as failed.
    pub check: String,
    pub action: RuleAction,
    pub check_loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub column: String,
    pub descending: bool,
    /// NULLs sort last unless `NULLS FIRST` is written: a missing value
    /// should not win a "latest row" contest.
    pub nulls_first: bool,
}

impl OrderKey {
    pub(super) fn parse(text: &str) -> Result<OrderKey, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((&column, rest)) = words.split_first() else {
            return Err("is empty".to_string());
        };
        let upper: Vec<String> = rest.iter().map(|w| w.to_ascii_uppercase()).collect();
        let mut key = OrderKey {
            column: column.to_string(),
            descending: false,
            nulls_first: false,
        };
        let mut i = 0;
        if let Some(dir) = upper.first() {
            match dir.as_str() {
                "ASC" => i = 1,
                "DESC" => {
                    key.descending = true;
                    i = 1;
                }
                _ => {}
            }
        }
        match upper[i..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => {}
            ["NULLS", "FIRST"] => key.nulls_first = true,
            ["NULLS", "LAST"] => key.nulls_first = false,
            _ => {
                return Err(format!(
                    "\"{text}\" is not `column [ASC|DESC] [NULLS FIRST|LAST]`"
                ));
            }
        }
        Ok(key)
    }
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} NULLS {}",
            self.column,
            if self.descending { "DESC" } else { "ASC" },
            if self.nulls_first { "FIRST" } else { "LAST" }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupScope {
    /// One row per key over the whole job range, across chunks.
    Global,
    /// One row per key within each chunk only.
    Chunk,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DedupSpec {
    pub keys: Vec<String>,
    pub order_by: Vec<OrderKey>,
    pub scope: DedupScope,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineSpec {
    pub path: PathBuf,
    pub path_shown: String,
    pub max_ratio: Option<f64>,
    /// An object-store location; then `path` is empty.
    pub url: Option<String>,
    /// With a PostgreSQL target the quarantine is a table in the same
    /// database (default: the target's name + `_quarantine`); `path` is empty.
    pub table: Option<super::QualifiedName>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidateSpec {
    /// Numeric columns whose sums `validate` compares.
    pub sum: Vec<String>,
    pub group_by: Vec<String>,
}

pub(super) fn read_rules(
    d: &mut Diags,
    env: Env,
    raw: &toml::Spanned<DeValue>,
    text: &str,
) -> Vec<RuleSpec> {
    let mut out = Vec::new();
    let DeValue::Array(items) = raw.get_ref() else {
        d.push(raw.span(), "rules", "write each rule as a [[rules]] table");
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("rules[{i}]");
        let DeValue::Table(t) = item.get_ref() else {
            d.push(
                item.span(),
                &prefix,
                "expected a table with name, check and action",
            );
            continue;
        };
        let mut r = TableReader::new(&prefix, t, item.span());
        let name = r.string(d, env, "name");
        let check = r.string(d, env, "check");
        let action = r.string(d, env, "action");
        r.finish(d, &["name", "check", "action"]);
        let name = match name {
            Some(n) if n.value.trim().is_empty() => {
                d.push(n.span, &format!("{prefix}.name"), "must not be empty");
                None
            }
            Some(n) if out.iter().any(|x: &RuleSpec| x.name == n.value) => {
                d.push(
                    n.span,
                    &format!("{prefix}.name"),
                    format!("\"{}\" names two rules", n.value),
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
        let check = match check {
            Some(c) if c.value.trim().is_empty() => {
                d.push(c.span, &format!("{prefix}.check"), "must not be empty");
                None
            }
            Some(c) => Some(c),
            None => {
                if !r.has("check") {
                    d.push(
                        item.span(),
                        &format!("{prefix}.check"),
                        "missing (an SQL condition such as \"amount > 0\")",
                    );
                }
                None
            }
        };
        let action = match action {
            None => Some(RuleAction::Quarantine),
            Some(a) => match a.value.to_ascii_lowercase().as_str() {
                "quarantine" => Some(RuleAction::Quarantine),
                "drop" => Some(RuleAction::Drop),
                "fail" => Some(RuleAction::Fail),
                _ => {
                    d.push(
                        a.span,
                        &format!("{prefix}.action"),
                        format!(
                            "\"{}\" is not an action (expected quarantine, drop or fail)",
                            a.shown
                        ),
                    );
                    None
                }
            },
        };
        if let (Some(name), Some(check), Some(action)) = (name, check, action) {
            out.push(RuleSpec {
                name,
                check_loc: loc(text, &check.span),
                check: check.value,
                action,
            });
        }
    }
    out
}

pub(super) fn read_dedup(
    d: &mut Diags,
    env: Env,
    t: &mut TableReader,
    text: &str,
) -> Option<DedupSpec> {
    let keys = t.strings(d, env, "keys");
    let order_by = t.strings(d, env, "order_by");
    let scope = t.string(d, env, "scope");
    t.finish(d, &["keys", "order_by", "scope"]);
    let keys = match keys {
        Some(k) if k.is_empty() => {
            d.push(t.span(), "dedup.keys", "must name at least one column");
            None
        }
        Some(k) => Some(k.into_iter().map(|k| k.value).collect::<Vec<_>>()),
        None => {
            if !t.has("keys") {
                d.push(
                    t.span(),
                    "dedup.keys",
                    "missing (the columns that identify a row)",
                );
            }
            None
        }
    };
    let mut order = Vec::new();
    let mut ok = true;
    for o in order_by.unwrap_or_default() {
        match OrderKey::parse(&o.value) {
            Ok(k) => order.push(k),
            Err(e) => {
                d.push(o.span, "dedup.order_by", e);
                ok = false;
            }
        }
    }
    let scope = match scope {
        None => Some(DedupScope::Global),
        Some(s) => match s.value.to_ascii_lowercase().as_str() {
            "global" => Some(DedupScope::Global),
            "chunk" => Some(DedupScope::Chunk),
            _ => {
                d.push(
                    s.span,
                    "dedup.scope",
                    format!("\"{}\" is not a scope (expected global or chunk)", s.shown),
                );
                None
            }
        },
    };
    if !ok {
        return None;
    }
    Some(DedupSpec {
        keys: keys?,
        order_by: order,
        scope: scope?,
        loc: loc(text, &t.span()),
    })
}

pub(super) fn read_quarantine(
    d: &mut Diags,
    env: Env,
    t: Option<&mut TableReader>,
    base: &Path,
    target: Option<&super::TargetSpec>,
) -> Option<QuarantineSpec> {
    let pg_table = target.and_then(|t| t.postgres.as_ref()).map(|pg| &pg.table);
    let mut table = None;
    let (path, max_ratio) = match t {
        Some(t) => {
            let path = if pg_table.is_some() {
                if let Some(l) = t.string(d, env, "table") {
                    match super::QualifiedName::parse(&l.value) {
                        Ok(q) => table = Some(q),
                        Err(e) => d.push(l.span, "quarantine.table", e),
                    }
                }
                None
            } else {
                t.string(d, env, "path")
            };
            let ratio = t.raw("max_ratio");
            let known: &[&str] = if pg_table.is_some() {
                &["table", "max_ratio"]
            } else {
                &["path", "max_ratio"]
            };
            t.finish(d, known);
            let ratio = match ratio {
                None => Some(None),
                Some(v) => {
                    let value = match v.get_ref() {
                        DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
                        DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
                        _ => None,
                    };
                    match value {
                        Some(r) if (0.0..=1.0).contains(&r) => Some(Some(r)),
                        _ => {
                            d.push(
                                v.span(),
                                "quarantine.max_ratio",
                                "must be a number from 0 to 1 (0.05 = 5%)",
                            );
                            None
                        }
                    }
                }
            };
            (path, ratio?)
        }
        None => (None, None),
    };
    if let Some(target) = pg_table {
        let table = table.unwrap_or_else(|| target.sibling(format!("{}_quarantine", target.name)));
        return Some(QuarantineSpec {
            path: PathBuf::new(),
            path_shown: format!("postgres table {table}"),
            url: None,
            max_ratio,
            table: Some(table),
        });
    }
    let (path, url, shown) = match path {
        Some(p) => match super::resolve_location(base, &p.value) {
            Ok((path, url)) => {
                // Readers of the target would take rejected rows for data,
                // and each table's recovery would remove the other's files.
                if let Some(t) = target
                    && (super::within(&path, &t.path) || super::within(&t.path, &path))
                {
                    d.push(
                        p.span.clone(),
                        "quarantine.path",
                        format!(
                            "{} and the target {} must not be one folder or inside each other; the default is {}_quarantine, beside the target",
                            p.shown,
                            t.path_shown,
                            t.path_shown.trim_end_matches('/')
                        ),
                    );
                    return None;
                }
                (path, url, p.shown)
            }
            Err(e) => {
                d.push(p.span, "quarantine.path", e);
                return None;
            }
        },
        None => {
            let target = target?;
            let shown = format!("{}_quarantine", target.path_shown.trim_end_matches('/'));
            match &target.url {
                Some(u) => (
                    PathBuf::new(),
                    Some(format!("{}_quarantine", u.trim_end_matches('/'))),
                    shown,
                ),
                None => {
                    let trimmed = target
                        .path
                        .to_string_lossy()
                        .trim_end_matches('/')
                        .to_string();
                    (PathBuf::from(format!("{trimmed}_quarantine")), None, shown)
                }
            }
        }
    };
    Some(QuarantineSpec {
        path,
        url,
        path_shown: shown,
        max_ratio,
        table: None,
    })
}

pub(super) fn read_validate(d: &mut Diags, env: Env, t: &mut TableReader) -> ValidateSpec {
    let sum = t.strings(d, env, "sum").unwrap_or_default();
    let group_by = t.strings(d, env, "group_by").unwrap_or_default();
    t.finish(d, &["sum", "group_by"]);
    ValidateSpec {
        sum: sum.into_iter().map(|s| s.value).collect(),
        group_by: group_by.into_iter().map(|s| s.value).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys() {
        let k = OrderKey::parse("created_at DESC").unwrap();
        assert!(k.descending && !k.nulls_first);
        let k = OrderKey::parse("amount asc nulls first").unwrap();
        assert!(!k.descending && k.nulls_first);
        assert_eq!(
            OrderKey::parse("a").unwrap().to_string(),
            "a ASC NULLS LAST"
        );
        assert!(OrderKey::parse("a sideways").is_err());
        assert!(OrderKey::parse("  ").is_err());
    }
}
