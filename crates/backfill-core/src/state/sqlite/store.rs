//! The state store's calls on SQLite, each in one transaction: claims,
//! commits, the plan, notes and garbage.

use super::*;

impl StateStore for SqliteStateStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn check_owner(&self, owner: &JobOwner, adopt: bool) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let get = |key: &str| {
            tx.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
        };
        let name = get("job").map_err(self.err())?;
        let target = get("target").map_err(self.err())?;
        let target_key = get("target_key").map_err(self.err())?;
        if let Some(n) = &name {
            let found = crate::state::RecordedOwner {
                name: n.clone(),
                target,
                target_key: target_key.clone(),
            };
            owner.check(&self.describe(), &found)?;
        }
        if adopt && (name.is_none() || target_key.is_none()) {
            for (k, v) in [
                ("job", &owner.name),
                ("target", &owner.target),
                ("target_key", &owner.target_key),
            ] {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![k, v],
                )
                .map_err(self.err())?;
            }
            tx.commit().map_err(self.err())?;
        }
        Ok(())
    }

    fn upgrade_chunk_ids(&self, renames: Renames<'_>) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let version: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'chunk_ids'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        if version.as_deref() == Some(CHUNK_ID_VERSION) {
            return Ok(0);
        }
        let recorded: Vec<(String, i64, Option<String>, Option<String>)> = {
            let mut stmt = tx
                .prepare("SELECT chunk_id, idx, lo, hi FROM chunks")
                .map_err(self.err())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(self.err())?;
            rows.collect::<Result<_, _>>().map_err(self.err())?
        };
        let mut renamed = 0;
        for (id, idx, lo, hi) in recorded {
            let (lo, value) = crate::state::decode_lo(lo)?;
            let chunk = Chunk {
                index: idx.max(0) as usize,
                id: id.clone(),
                lo,
                hi: decode(hi)?,
                value,
                bucket: None,
            };
            let Some(new) = renames(&chunk).filter(|n| *n != id) else {
                continue;
            };
            let moved = tx
                .execute(
                    "UPDATE chunks SET chunk_id = ?2 WHERE chunk_id = ?1
                       AND NOT EXISTS (SELECT 1 FROM chunks WHERE chunk_id = ?2)",
                    params![id, new],
                )
                .map_err(self.err())?;
            if moved == 0 {
                continue;
            }
            for table in ["chunk_files", "attempts"] {
                tx.execute(
                    &format!("UPDATE {table} SET chunk_id = ?2 WHERE chunk_id = ?1"),
                    params![id, new],
                )
                .map_err(self.err())?;
            }
            renamed += 1;
        }
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('chunk_ids', ?1)",
            params![CHUNK_ID_VERSION],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(renamed)
    }

    fn lock(&self, holder: &LockHolder) -> Result<Option<LockHolder>, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let existing = tx
            .query_row(LOCK_HOLDER, [], holder_row)
            .optional()
            .map_err(self.err())?;
        let mut replaced = None;
        if let Some(old) = existing {
            let ours =
                old.pid == holder.pid && old.host == holder.host && old.token == holder.token;
            if !ours {
                if !old.is_stale() {
                    return Err(StateError::Locked {
                        pid: old.pid,
                        host: old.host,
                        since: old.since,
                    });
                }
                replaced = Some(old);
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO lock (id, pid, host, since) VALUES (1, ?1, ?2, ?3)",
            params![holder.pid, holder.host, holder.since],
        )
        .map_err(self.err())?;
        // The lock table predates tokens; the token lives beside it.
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('lock_token', ?1)",
            params![holder.token],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(replaced)
    }

    fn unlock(&self, holder: &LockHolder) -> Result<(), StateError> {
        self.conn()
            .execute(
                "DELETE FROM lock WHERE pid = ?1 AND host = ?2 \
                 AND coalesce((SELECT value FROM meta WHERE key = 'lock_token'), '') = ?3",
                params![holder.pid, holder.host, holder.token],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn holders(&self) -> Result<Vec<LockHolder>, StateError> {
        Ok(self
            .conn()
            .query_row(LOCK_HOLDER, [], holder_row)
            .optional()
            .map_err(self.err())?
            .into_iter()
            .collect())
    }

    fn force_unlock(&self) -> Result<Option<LockHolder>, StateError> {
        let conn = self.conn();
        let old = conn
            .query_row(LOCK_HOLDER, [], holder_row)
            .optional()
            .map_err(self.err())?;
        conn.execute("DELETE FROM lock", []).map_err(self.err())?;
        Ok(old)
    }

    fn sync_plan(
        &self,
        job: &str,
        fingerprint: &str,
        chunks: &[Chunk],
        replan: bool,
    ) -> Result<PlanSync, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let old: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'fingerprint'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        let mut sync = PlanSync::default();
        // Chunk ids hash the slice they cover, so a plan that keeps every
        // committed id (one extended past its old end) changes nothing
        // committed; one that drops committed chunks needs --replan.
        let wanted: std::collections::HashSet<&str> =
            chunks.iter().map(|c| c.id.as_str()).collect();
        let rows: Vec<(String, String)> = {
            let mut stmt = tx
                .prepare("SELECT chunk_id, status FROM chunks")
                .map_err(self.err())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.err())?;
            rows.collect::<Result<_, _>>().map_err(self.err())?
        };
        let dropped = rows
            .iter()
            .filter(|(id, status)| status == "committed" && !wanted.contains(id.as_str()))
            .count();
        if dropped > 0 && !replan {
            return Err(StateError::RangeChanged {
                old: old.unwrap_or_default(),
                new: fingerprint.to_string(),
                committed: dropped,
            });
        }
        let existing: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
        for id in existing.iter().filter(|id| !wanted.contains(id.as_str())) {
            let ts = now();
            tx.execute(
                "INSERT OR IGNORE INTO garbage (path, since) SELECT path, ?2 FROM chunk_files WHERE chunk_id = ?1",
                params![id, ts],
            )
            .map_err(self.err())?;
            tx.execute(
                "INSERT OR IGNORE INTO garbage (path, since) SELECT staged, ?2 FROM chunk_files WHERE chunk_id = ?1 AND published = 0",
                params![id, ts],
            )
            .map_err(self.err())?;
            tx.execute("DELETE FROM chunk_files WHERE chunk_id = ?1", params![id])
                .map_err(self.err())?;
            tx.execute("DELETE FROM chunks WHERE chunk_id = ?1", params![id])
                .map_err(self.err())?;
            sync.retired.push(id.clone());
        }
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO chunks (chunk_id, idx, lo, hi, status) VALUES (?1, ?2, ?3, ?4, 'pending')
                     ON CONFLICT (chunk_id) DO UPDATE SET idx = excluded.idx",
                )
                .map_err(self.err())?;
            let before = existing.len() - sync.retired.len();
            for c in chunks {
                insert
                    .execute(params![
                        c.id,
                        c.index as i64,
                        crate::state::encode_lo(c),
                        encode(c.hi)
                    ])
                    .map_err(self.err())?;
            }
            sync.inserted = chunks.len().saturating_sub(before);
        }
        for (k, v) in [("fingerprint", fingerprint), ("job", job)] {
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(sync)
    }

    fn begin_run(&self, args: &str) -> Result<i64, StateError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (started_at, pid, host, status, args) VALUES (?1, ?2, ?3, 'running', ?4)",
            params![now(), std::process::id(), crate::state::hostname(), args],
        )
        .map_err(self.err())?;
        Ok(conn.last_insert_rowid())
    }

    fn note(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn()
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![format!("note:{key}")],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    fn set_note(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![format!("note:{key}"), value],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn finish_run(&self, run_id: i64, status: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE runs SET finished_at = ?2, status = ?3 WHERE run_id = ?1",
                params![run_id, now(), status],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn chunks(&self) -> Result<Vec<ChunkRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT chunk_id, idx, lo, hi, status, attempts, rows_read, rows_written, bytes_read,
                        bytes_written, files, duration_ms, last_error, updated_at, quality
                 FROM chunks ORDER BY idx",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    [
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, Option<i64>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, Option<i64>>(9)?,
                        r.get::<_, Option<i64>>(10)?,
                        r.get::<_, Option<i64>>(11)?,
                    ],
                    r.get::<_, Option<String>>(12)?,
                    r.get::<_, Option<String>>(13)?,
                    r.get::<_, Option<String>>(14)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, idx, lo, hi, status, attempts, m, last_error, updated_at, quality) =
                row.map_err(self.err())?;
            let status = ChunkStatus::parse(&status)
                .ok_or_else(|| StateError::Corrupt(format!("chunk {id} has status {status:?}")))?;
            let quality: Quality = match quality {
                Some(q) => serde_json::from_str(&q)
                    .map_err(|e| StateError::Corrupt(format!("chunk {id} quality: {e}")))?,
                // Schema version 1 kept no quality figures.
                None => Quality {
                    checksum_version: crate::state::first_checksum_version(),
                    ..Quality::default()
                },
            };
            let metrics = m[0].map(|_| {
                let g = |i: usize| m[i].unwrap_or(0).max(0) as u64;
                ChunkMetrics {
                    rows_read: g(0),
                    rows_written: g(1),
                    bytes_read: g(2),
                    bytes_written: g(3),
                    files: g(4),
                    duration_ms: g(5),
                    rows_quarantined: quality.rows_quarantined,
                    rows_dropped: quality.rows_dropped,
                    duplicates: quality.duplicates,
                    checksum: u64::from_str_radix(&quality.checksum, 16).unwrap_or(0),
                    checksum_version: quality.checksum_version,
                    rules: quality.rules.clone(),
                    dedup_section: quality.dedup_section.clone(),
                    source_digest: quality.source_digest.clone(),
                }
            });
            let (lo, value) = crate::state::decode_lo(lo)?;
            out.push(ChunkRecord {
                id,
                index: idx.max(0) as usize,
                lo,
                value,
                hi: decode(hi)?,
                bucket: None,
                status,
                attempts: attempts.max(0) as u32,
                metrics,
                last_error,
                updated_at,
            });
        }
        Ok(out)
    }

    fn start_attempt(&self, run_id: i64, chunk_id: &str) -> Result<u32, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let attempts: Option<i64> = tx
            .query_row(
                "SELECT attempts FROM chunks WHERE chunk_id = ?1",
                params![chunk_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        let attempt = attempts.ok_or_else(|| StateError::UnknownChunk(chunk_id.to_string()))? + 1;
        let ts = now();
        // A committed chunk that runs again stays committed (its old files are
        // what readers see) until the new attempt commits.
        tx.execute(
            "UPDATE chunks SET attempts = ?2, updated_at = ?3, run_id = ?4,
                    status = CASE WHEN status = 'committed' THEN status ELSE 'running' END
             WHERE chunk_id = ?1",
            params![chunk_id, attempt, ts, run_id],
        )
        .map_err(self.err())?;
        tx.execute(
            "INSERT OR REPLACE INTO attempts (run_id, chunk_id, attempt, started_at, outcome) VALUES (?1, ?2, ?3, ?4, 'running')",
            params![run_id, chunk_id, attempt, ts],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(attempt as u32)
    }

    fn fail_attempt(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        error: &str,
        will_retry: bool,
    ) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let ts = now();
        tx.execute(
            "UPDATE attempts SET finished_at = ?3, outcome = ?4, error = ?5 WHERE chunk_id = ?1 AND attempt = ?2",
            params![chunk_id, attempt, ts, if will_retry { "retried" } else { "failed" }, error],
        )
        .map_err(self.err())?;
        // A chunk committed by an earlier run keeps serving its old files.
        tx.execute(
            "UPDATE chunks SET last_error = ?2, updated_at = ?3, run_id = ?4,
                    status = CASE WHEN status = 'committed' THEN status WHEN ?5 THEN 'running' ELSE 'failed' END
             WHERE chunk_id = ?1",
            params![chunk_id, error, ts, run_id, will_retry],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(())
    }

    fn commit_chunk(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        m: &ChunkMetrics,
        files: &[OwnedFile],
    ) -> Result<Vec<String>, StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err())?;
        let ts = now();
        let superseded: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT path FROM chunk_files WHERE chunk_id = ?1 ORDER BY path")
                .map_err(self.err())?;
            let rows = stmt
                .query_map(params![chunk_id], |r| r.get(0))
                .map_err(self.err())?;
            rows.collect::<Result<_, _>>().map_err(self.err())?
        };
        tx.execute(
            "INSERT OR IGNORE INTO garbage (path, since) SELECT path, ?2 FROM chunk_files WHERE chunk_id = ?1",
            params![chunk_id, ts],
        )
        .map_err(self.err())?;
        tx.execute(
            "DELETE FROM chunk_files WHERE chunk_id = ?1",
            params![chunk_id],
        )
        .map_err(self.err())?;
        // Crash tests abort here: SQLite must roll the half-done commit back.
        if let Err(e) = crate::failpoint::hit("in_commit_txn", usize::MAX) {
            tracing::debug!("ignoring {e} inside the commit transaction");
        }
        for f in files {
            // A path this commit writes again is not garbage.
            tx.execute("DELETE FROM garbage WHERE path = ?1", params![f.path])
                .map_err(self.err())?;
            tx.execute(
                "INSERT INTO chunk_files (chunk_id, path, staged, published) VALUES (?1, ?2, ?3, 0)",
                params![chunk_id, f.path, f.staged],
            )
            .map_err(self.err())?;
        }
        let updated = tx
            .execute(
                "UPDATE chunks SET status = 'committed', rows_read = ?2, rows_written = ?3, bytes_read = ?4,
                        bytes_written = ?5, files = ?6, duration_ms = ?7, last_error = NULL,
                        updated_at = ?8, run_id = ?9, quality = ?10
                 WHERE chunk_id = ?1",
                params![
                    chunk_id,
                    to_i64(m.rows_read),
                    to_i64(m.rows_written),
                    to_i64(m.bytes_read),
                    to_i64(m.bytes_written),
                    to_i64(m.files),
                    to_i64(m.duration_ms),
                    ts,
                    run_id,
                    quality_json(m)
                ],
            )
            .map_err(self.err())?;
        if updated == 0 {
            return Err(StateError::UnknownChunk(chunk_id.to_string()));
        }
        tx.execute(
            "UPDATE attempts SET finished_at = ?3, outcome = 'committed' WHERE chunk_id = ?1 AND attempt = ?2",
            params![chunk_id, attempt, ts],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        let new: std::collections::HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        Ok(superseded
            .into_iter()
            .filter(|p| !new.contains(p.as_str()))
            .collect())
    }

    fn mark_published(&self, chunk_id: &str) -> Result<(), StateError> {
        self.conn()
            .execute(
                "UPDATE chunk_files SET published = 1 WHERE chunk_id = ?1",
                params![chunk_id],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn unpublished(&self) -> Result<BTreeMap<String, Vec<OwnedFile>>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT chunk_id, path, staged FROM chunk_files WHERE published = 0 ORDER BY chunk_id, path")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    OwnedFile {
                        path: r.get(1)?,
                        staged: r.get(2)?,
                    },
                ))
            })
            .map_err(self.err())?;
        let mut out: BTreeMap<String, Vec<OwnedFile>> = BTreeMap::new();
        for row in rows {
            let (chunk, file) = row.map_err(self.err())?;
            out.entry(chunk).or_default().push(file);
        }
        Ok(out)
    }

    fn committed_files(&self) -> Result<BTreeMap<String, Vec<String>>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT chunk_id, path FROM chunk_files ORDER BY chunk_id, path")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err())?;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in rows {
            let (chunk, path) = row.map_err(self.err())?;
            out.entry(chunk).or_default().push(path);
        }
        Ok(out)
    }

    fn garbage(&self) -> Result<Vec<String>, StateError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT path FROM garbage ORDER BY path")
            .map_err(self.err())?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    fn add_garbage(&self, paths: &[String]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let ts = now();
        for p in paths {
            tx.execute(
                "INSERT OR IGNORE INTO garbage (path, since) VALUES (?1, ?2)",
                params![p, ts],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    fn forget_garbage(&self, paths: &[String]) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        for p in paths {
            tx.execute("DELETE FROM garbage WHERE path = ?1", params![p])
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    fn release_interrupted(&self) -> Result<usize, StateError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE attempts SET outcome = 'interrupted', finished_at = ?1 WHERE outcome = 'running'",
            params![now()],
        )
        .map_err(self.err())?;
        conn.execute(
            "UPDATE chunks SET status = 'pending' WHERE status = 'running'",
            [],
        )
        .map_err(self.err())
    }

    fn reset(&self, chunk_ids: &[String]) -> Result<usize, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        let mut n = 0;
        for id in chunk_ids {
            n += tx
                .execute(
                    "UPDATE chunks SET status = 'pending', last_error = NULL, updated_at = ?2 WHERE chunk_id = ?1",
                    params![id, now()],
                )
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(n)
    }
}
