//! A small reader over toml's spanned document that records every problem it
//! meets instead of stopping at the first, so a user fixes a job file in one
//! pass. Each diagnostic carries the dotted key and the byte span it refers to.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Diagnostic;

/// A value read from the job file, with where it was written and how it should
/// be shown in messages (the raw text when `${VAR}` was interpolated, so that
/// secrets never reach a log line).
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
    pub shown: String,
}

pub(crate) struct Diags<'s> {
    src: &'s str,
    pub(crate) list: Vec<Diagnostic>,
    /// Values read from the environment, so outputs can redact them.
    pub(crate) secrets: Vec<String>,
}

impl<'s> Diags<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Diags {
            src,
            list: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// 1-based line and column of a byte offset of the job file.
    pub(crate) fn line_col_of(&self, offset: usize) -> (usize, usize) {
        line_col(self.src, offset)
    }

    pub(crate) fn push(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let (line, column) = line_col(self.src, span.start);
        self.list.push(Diagnostic {
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..floor_char_boundary(src, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// Reads one table; keys that are never asked for are reported as unknown by
/// [`TableReader::finish`].
pub(crate) struct TableReader<'a, 'i> {
    prefix: String,
    span: Range<usize>,
    entries: Vec<(&'a str, Range<usize>, &'a Spanned<DeValue<'i>>, bool)>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    pub(crate) fn new(prefix: &str, table: &'a DeTable<'i>, span: Range<usize>) -> Self {
        let entries = table
            .iter()
            .map(|(k, v)| (k.get_ref().as_ref(), k.span(), v, false))
            .collect();
        TableReader {
            prefix: prefix.to_string(),
            span,
            entries,
        }
    }

    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub(crate) fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.0 == name)
    }

    pub(crate) fn raw(&mut self, name: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        let entry = self.entries.iter_mut().find(|e| e.0 == name)?;
        entry.3 = true;
        Some(entry.2)
    }

    pub(crate) fn string(
        &mut self,
        d: &mut Diags,
        env: Env,
        name: &str,
    ) -> Option<Located<String>> {
        let key = self.key(name);
        let v = self.raw(name)?;
        string_of(d, env, &key, v)
    }

    pub(crate) fn entry_names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.0.to_string()).collect()
    }

    /// Where a key's value was written, without marking it as read.
    pub(crate) fn raw_span(&self, name: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|e| e.0 == name)
            .map(|e| e.2.span())
    }

    pub(crate) fn bool(&mut self, d: &mut Diags, name: &str) -> Option<bool> {
        let key = self.key(name);
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                d.push(
                    v.span(),
                    &key,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn int(&mut self, d: &mut Diags, name: &str) -> Option<Located<i64>> {
        let key = self.key(name);
        let v = self.raw(name)?;
        match int_value(v.get_ref()) {
            Some(Ok(i)) => Some(Located {
                value: i,
                span: v.span(),
                shown: i.to_string(),
            }),
            Some(Err(text)) => {
                d.push(
                    v.span(),
                    &key,
                    format!("{text} does not fit in a 64-bit integer"),
                );
                None
            }
            None => {
                d.push(
                    v.span(),
                    &key,
                    format!("expected an integer, found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    /// An array of strings; a lone string is accepted as a one-element array.
    pub(crate) fn strings(
        &mut self,
        d: &mut Diags,
        env: Env,
        name: &str,
    ) -> Option<Vec<Located<String>>> {
        let key = self.key(name);
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::String(s) => {
                Some(interpolate(d, env, &key, s, v.span()).into_iter().collect())
            }
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    match item.get_ref() {
                        DeValue::String(s) => {
                            out.extend(interpolate(d, env, &item_key, s, item.span()))
                        }
                        other => d.push(
                            item.span(),
                            &item_key,
                            format!("expected a string, found {}", other.type_str()),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                d.push(
                    v.span(),
                    &key,
                    format!("expected an array of strings, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn table(&mut self, d: &mut Diags, name: &str) -> Option<TableReader<'a, 'i>> {
        let key = self.key(name);
        let v = self.raw(name)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(TableReader::new(&key, t, v.span())),
            other => {
                d.push(
                    v.span(),
                    &key,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Reports every key nobody asked for, suggesting the closest known one.
    pub(crate) fn finish(&mut self, d: &mut Diags, known: &[&str]) {
        for (name, span, _, used) in &self.entries {
            if *used {
                continue;
            }
            let key = self.key(name);
            let hint = closest(name, known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            let expected = if known.is_empty() {
                String::new()
            } else {
                format!("; expected one of: {}", known.join(", "))
            };
            d.push(span.clone(), &key, format!("unknown key{hint}{expected}"));
        }
    }
}

/// A string value with `${VAR}` interpolated, or a type error.
pub(crate) fn string_of(
    d: &mut Diags,
    env: Env,
    key: &str,
    v: &Spanned<DeValue>,
) -> Option<Located<String>> {
    match v.get_ref() {
        DeValue::String(s) => interpolate(d, env, key, s, v.span()),
        other => {
            d.push(
                v.span(),
                key,
                format!("expected a string, found {}", other.type_str()),
            );
            None
        }
    }
}

pub(crate) fn int_value(v: &DeValue) -> Option<Result<i64, String>> {
    match v {
        DeValue::Integer(i) => {
            let text = i.as_str().replace('_', "");
            let parsed = match i.radix() {
                10 => text.parse::<i64>().ok(),
                r => {
                    let digits = text
                        .trim_start_matches(['+'])
                        .trim_start_matches("0x")
                        .trim_start_matches("0o")
                        .trim_start_matches("0b");
                    i64::from_str_radix(digits, r).ok()
                }
            };
            Some(parsed.ok_or(text))
        }
        _ => None,
    }
}

/// Replaces `${NAME}` with the environment variable's value; `$$` is a literal `$`.
fn interpolate(
    d: &mut Diags,
    env: Env,
    key: &str,
    raw: &str,
    span: Range<usize>,
) -> Option<Located<String>> {
    if !raw.contains('$') {
        return Some(Located {
            value: raw.to_string(),
            span,
            shown: raw.to_string(),
        });
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut ok = true;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => {
                    let name = &body[..end];
                    let valid = !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        d.push(
                            span.clone(),
                            key,
                            format!("`${{{name}}}` is not a valid environment variable reference"),
                        );
                        ok = false;
                    } else if let Some(value) = env(name) {
                        out.push_str(&value);
                        d.secrets.push(value);
                    } else {
                        d.push(
                            span.clone(),
                            key,
                            format!("environment variable {name} is not set"),
                        );
                        ok = false;
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    d.push(
                        span.clone(),
                        key,
                        "unterminated `${` (write `$$` for a literal dollar sign)",
                    );
                    return None;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    ok.then(|| Located {
        value: out,
        span,
        shown: raw.to_string(),
    })
}

/// The known key within edit distance 2 of `name`, if any.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (levenshtein(name, k), *k))
        .filter(|(dist, _)| *dist <= 2)
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('=').unwrap()), (1, 3));
        let second_eq = src.rfind('=').unwrap();
        assert_eq!(line_col(src, second_eq), (2, 4));
    }

    #[test]
    fn closest_suggests_typos() {
        assert_eq!(closest("chunck", &["chunk", "column"]), Some("chunk"));
        assert_eq!(closest("zzzzzz", &["chunk", "column"]), None);
    }
}
