//! Values substituted from `${VAR}` in a job file must never reach a log
//! line, a message, a report or the state store. Every job registers its
//! secrets here when it is loaded; every output path runs through [`redact`].
//! Values shorter than 4 characters are not treated as secrets (they would
//! blank out ordinary text).

use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

pub fn register(secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    if let Ok(mut all) = SECRETS.write() {
        for s in secrets {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    match SECRETS.read() {
        Ok(all) if !all.is_empty() => backfill_core::spec::redact_with(&all, text),
        _ => text.to_string(),
    }
}
