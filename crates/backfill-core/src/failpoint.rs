//! Named failure points for crash and fault tests, armed through the
//! `BACKFILL_FAILPOINTS` environment variable. Unset, every check is one
//! atomic load.
//!
//! Syntax: entries separated by `,`, each `NAME:ACTION[@CHUNK]`:
//! - `after_write:3` or `after_write:abort*3`: abort the process the 3rd time
//!   the point is reached (as a `kill -9` would: no cleanup, no unwinding);
//! - `read:error`: every hit fails with a transient error; `read:error*2` only
//!   the first two hits; `read:permanent` fails with a permanent error;
//! - `read:error%10` fails 10% of hits (a fault storm), `write:permanent%5`
//!   likewise with permanent errors; which hits fail is a pure function of
//!   the point, the hit number and `BACKFILL_FAILPOINTS_SEED`, so a run can
//!   be repeated;
//! - `read:panic` panics (a bug in a chunk task), `read:panic*1` only once;
//! - `read:sleep=2000` holds the chunk there for 2000 ms (a slow chunk, to
//!   test leases), every hit;
//! - `@5` restricts the entry to the chunk with index 5.
//!
//! Points, in the order a chunk reaches them: `read` (before the source scan),
//! `write` (each batch handed to the sink), `after_write` (files staged, state
//! not yet updated), `after_commit` (state committed, files not yet
//! published), `mid_publish` (after the first file of several is published),
//! `after_publish` (all published, superseded files not yet removed),
//! `after_cleanup` (chunk done).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::retry::ErrorClass;

pub const ENV: &str = "BACKFILL_FAILPOINTS";

pub const POINTS: &[&str] = &[
    "read",
    "write",
    "after_write",
    "in_commit_txn",
    "after_commit",
    "mid_publish",
    "after_publish",
    "after_cleanup",
];

#[derive(Debug)]
enum Action {
    Abort {
        nth: u32,
    },
    Fail {
        class: ErrorClass,
        times: Option<u32>,
    },
    /// Panics, like a bug would.
    Panic {
        times: Option<u32>,
    },
    /// Blocks the chunk's thread for `ms` milliseconds.
    Sleep {
        ms: u64,
    },
    /// Fails `percent` of hits, chosen pseudo-randomly.
    Storm {
        class: ErrorClass,
        percent: u32,
    },
}

#[derive(Debug)]
struct Entry {
    point: String,
    action: Action,
    chunk: Option<usize>,
    hits: AtomicU32,
}

static ARMED: OnceLock<Vec<Entry>> = OnceLock::new();

fn armed() -> &'static [Entry] {
    ARMED.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) if !spec.trim().is_empty() => match parse(&spec) {
            Ok(entries) => entries,
            Err(e) => {
                // A typo here would silently test nothing: refuse loudly.
                eprintln!("error: {ENV}: {e}");
                std::process::exit(2);
            }
        },
        _ => Vec::new(),
    })
}

fn parse(spec: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (point, rest) = item
            .split_once(':')
            .ok_or_else(|| format!("\"{item}\" should be NAME:ACTION"))?;
        if !POINTS.contains(&point) {
            return Err(format!(
                "unknown failpoint \"{point}\" (known: {})",
                POINTS.join(", ")
            ));
        }
        let (action, chunk) = match rest.split_once('@') {
            Some((a, c)) => (
                a,
                Some(
                    c.parse::<usize>()
                        .map_err(|_| format!("\"{c}\" is not a chunk index"))?,
                ),
            ),
            None => (rest, None),
        };
        if let Some(ms) = action.strip_prefix("sleep=") {
            out.push(Entry {
                point: point.to_string(),
                action: Action::Sleep {
                    ms: ms
                        .parse()
                        .map_err(|_| format!("\"{ms}\" is not a number of milliseconds"))?,
                },
                chunk,
                hits: AtomicU32::new(0),
            });
            continue;
        }
        if let Some((verb, pct)) = action.split_once('%') {
            let class = match verb {
                "error" => ErrorClass::Transient,
                "permanent" => ErrorClass::Permanent,
                v => return Err(format!("\"{v}%\" needs error or permanent")),
            };
            let percent = pct
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("\"{pct}\" is not a percentage from 0 to 100"))?;
            out.push(Entry {
                point: point.to_string(),
                action: Action::Storm { class, percent },
                chunk,
                hits: AtomicU32::new(0),
            });
            continue;
        }
        let (verb, count) = match action.split_once('*') {
            Some((v, n)) => (
                v,
                Some(
                    n.parse::<u32>()
                        .map_err(|_| format!("\"{n}\" is not a count"))?,
                ),
            ),
            None => (action, None),
        };
        let action = match verb {
            "abort" => Action::Abort {
                nth: count.unwrap_or(1),
            },
            "error" => Action::Fail {
                class: ErrorClass::Transient,
                times: count,
            },
            "permanent" => Action::Fail {
                class: ErrorClass::Permanent,
                times: count,
            },
            "panic" => Action::Panic { times: count },
            n => Action::Abort {
                nth: n.parse().map_err(|_| {
                    format!("\"{n}\" is not an action (abort, error, permanent, panic or a number)")
                })?,
            },
        };
        out.push(Entry {
            point: point.to_string(),
            action,
            chunk,
            hits: AtomicU32::new(0),
        });
    }
    Ok(out)
}

fn seed() -> &'static str {
    static SEED: OnceLock<String> = OnceLock::new();
    SEED.get_or_init(|| std::env::var("BACKFILL_FAILPOINTS_SEED").unwrap_or_default())
}

/// An injected failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("injected failure at failpoint {point}")]
pub struct Injected {
    pub point: &'static str,
    pub class: ErrorClass,
}

/// Checks a failpoint: aborts the process or returns an injected error when an
/// armed entry says so.
pub fn hit(point: &'static str, chunk_index: usize) -> Result<(), Injected> {
    let entries = armed();
    if entries.is_empty() {
        return Ok(());
    }
    for e in entries {
        if e.point != point || e.chunk.is_some_and(|c| c != chunk_index) {
            continue;
        }
        let n = e.hits.fetch_add(1, Ordering::SeqCst) + 1;
        match e.action {
            Action::Abort { nth } if n == nth => {
                eprintln!("failpoint {point}: aborting (hit {n})");
                std::process::abort();
            }
            Action::Abort { .. } => {}
            Action::Fail { class, times } => {
                if times.is_none_or(|t| n <= t) {
                    return Err(Injected { point, class });
                }
            }
            Action::Panic { times } => {
                if times.is_none_or(|t| n <= t) {
                    panic!("failpoint {point}: injected panic (hit {n})");
                }
            }
            Action::Sleep { ms } => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Action::Storm { class, percent } => {
                let key = format!("{}|{point}|{chunk_index}|{n}", seed());
                if twox_hash::XxHash3_64::oneshot(key.as_bytes()) % 100 < u64::from(percent) {
                    return Err(Injected { point, class });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let e = parse("after_write:3, read:error*2@4,write:permanent,after_commit:abort").unwrap();
        assert_eq!(e.len(), 4);
        assert!(matches!(e[0].action, Action::Abort { nth: 3 }));
        assert!(matches!(
            e[1].action,
            Action::Fail {
                class: ErrorClass::Transient,
                times: Some(2)
            }
        ));
        assert_eq!(e[1].chunk, Some(4));
        assert!(matches!(
            parse("read:error%10").unwrap()[0].action,
            Action::Storm { percent: 10, .. }
        ));
        assert!(matches!(
            parse("write:panic*1").unwrap()[0].action,
            Action::Panic { times: Some(1) }
        ));
        assert!(parse("read:error%101").is_err());
        assert!(parse("nowhere:1").is_err());
        assert!(parse("read").is_err());
    }
}
