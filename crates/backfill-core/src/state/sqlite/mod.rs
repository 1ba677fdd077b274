//! The default state store: one SQLite file beside the job, in WAL mode with
//! `synchronous = FULL` so a commit survives a power cut.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    ChunkMetrics, ChunkRecord, ChunkStatus, JobOwner, LockHolder, OwnedFile, PlanSync, Renames,
    StateError, StateStore, now,
};
use super::{decode_bound as decode, encode_bound as encode};
use crate::plan::Chunk;

mod store;

/// 3: the state records its job's target (`meta.target`) and whether its
/// chunk ids are of the current version (`meta.chunk_ids`).
pub const SCHEMA_VERSION: i64 = 3;

/// The job lock's holder, with the token kept in `meta`.
const LOCK_HOLDER: &str = "SELECT pid, host, since, \
     coalesce((SELECT value FROM meta WHERE key = 'lock_token'), '') FROM lock WHERE id = 1";

fn holder_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockHolder> {
    Ok(LockHolder {
        pid: r.get(0)?,
        host: r.get(1)?,
        since: r.get(2)?,
        token: r.get(3)?,
    })
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    status TEXT NOT NULL,
    args TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    lo TEXT,
    hi TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    rows_read INTEGER,
    rows_written INTEGER,
    bytes_read INTEGER,
    bytes_written INTEGER,
    files INTEGER,
    duration_ms INTEGER,
    last_error TEXT,
    updated_at TEXT,
    run_id INTEGER,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS chunks_idx ON chunks (idx);
CREATE TABLE IF NOT EXISTS chunk_files (
    chunk_id TEXT NOT NULL,
    path TEXT NOT NULL,
    staged TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chunk_id, path)
);
CREATE TABLE IF NOT EXISTS garbage (path TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    run_id INTEGER NOT NULL,
    chunk_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    outcome TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (chunk_id, attempt)
);
CREATE TABLE IF NOT EXISTS lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    since TEXT NOT NULL
);
"#;

pub struct SqliteStateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStateStore {
    /// Opens (creating if needed) the state file and its directory.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStateStore, StateError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::create_private_dir(dir).map_err(|source| StateError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // The state (and the dedup index beside it) holds key values, often
        // personal data: only the owner reads it. SQLite gives its -wal and
        // -shm files the database file's mode.
        super::create_private_file(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        let conn = Connection::open(&path).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = SqliteStateStore {
            path,
            conn: Mutex::new(conn),
        };
        store.init()?;
        Ok(store)
    }

    /// Opens an existing state file without creating anything; `None` when
    /// there is none yet (a job that never ran).
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Option<SqliteStateStore>, StateError> {
        if !path.as_ref().exists() {
            return Ok(None);
        }
        SqliteStateStore::open(path).map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back on drop), so the poison flag carries no risk.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn init(&self) -> Result<(), StateError> {
        let conn = self.conn();
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(self.err())?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(self.err())?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(self.err())?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .or_else(|e| match e {
                // A brand-new file has no meta table yet.
                rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                    Ok(None)
                }
                e => Err(e),
            })
            .map_err(self.err())?;
        if let Some(v) = version.as_deref() {
            let found: i64 = v
                .parse()
                .map_err(|_| StateError::Corrupt(format!("schema_version = {v:?}")))?;
            if found > SCHEMA_VERSION {
                return Err(StateError::NewerSchema {
                    path: self.path.clone(),
                    found,
                    known: SCHEMA_VERSION,
                });
            }
        }
        let found = version.as_deref().and_then(|v| v.parse::<i64>().ok());
        conn.execute_batch(SCHEMA).map_err(self.err())?;
        if found == Some(1) {
            // Version 2 keeps data-quality counts and the checksum as JSON.
            conn.execute_batch("ALTER TABLE chunks ADD COLUMN quality TEXT")
                .map_err(self.err())?;
        }
        if found.is_none() {
            // A new state: its ids are planned by this version.
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('chunk_ids', ?1)",
                params![CHUNK_ID_VERSION],
            )
            .map_err(self.err())?;
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(self.err())?;
        Ok(())
    }

    /// The job a state file records, without changing the file (`None`
    /// when there is no such file or it records none).
    pub fn recorded_job(path: impl AsRef<Path>) -> Option<String> {
        let conn = Connection::open_with_flags(
            path.as_ref(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.query_row("SELECT value FROM meta WHERE key = 'job'", [], |r| r.get(0))
            .ok()
    }

    /// `PRAGMA integrity_check`, for tests and `status --check`.
    pub fn integrity_check(&self) -> Result<String, StateError> {
        self.conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.err())
    }

    /// How many times each chunk was committed (one row per commit), for tests
    /// that prove exactly-once.
    pub fn commit_counts(&self) -> Result<BTreeMap<String, u64>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT chunk_id, count(*) FROM attempts WHERE outcome = 'committed' GROUP BY chunk_id")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// `meta.chunk_ids` of a state whose ids are `plan`'s current ones.
const CHUNK_ID_VERSION: &str = "2";

/// Data-quality figures, kept as one JSON column so new ones need no migration.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Quality {
    #[serde(default)]
    rows_quarantined: u64,
    #[serde(default)]
    rows_dropped: u64,
    #[serde(default)]
    duplicates: u64,
    /// Hex: SQLite integers are signed.
    #[serde(default)]
    checksum: String,
    #[serde(default = "super::first_checksum_version")]
    checksum_version: u32,
    #[serde(default)]
    rules: BTreeMap<String, super::RuleCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dedup_section: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_digest: Option<String>,
}

fn quality_json(m: &ChunkMetrics) -> String {
    let q = Quality {
        rows_quarantined: m.rows_quarantined,
        rows_dropped: m.rows_dropped,
        duplicates: m.duplicates,
        checksum: format!("{:016x}", m.checksum),
        checksum_version: m.checksum_version,
        rules: m.rules.clone(),
        dedup_section: m.dedup_section.clone(),
        source_digest: m.source_digest.clone(),
    };
    serde_json::to_string(&q).unwrap_or_default()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
