//! The state store's calls, each one transaction on the store's connection
//! thread: claims and leases, commits, the plan, notes and garbage.

use super::*;

/// `jobs.chunk_ids` of a job whose chunk ids are `plan`'s current ones.
pub(super) const CHUNK_ID_VERSION: i32 = 2;

impl StateStore for PgStateStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    /// Jobs are rows keyed by name here, so only the target can differ.
    fn check_owner(&self, owner: &JobOwner, adopt: bool) -> Result<(), StateError> {
        let owner = owner.clone();
        let store = self.shown.clone();
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            t.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&x.job])?;
            let found = t
                .query_opt(
                    &format!("SELECT target, target_key FROM {} WHERE job = $1", x.t.jobs),
                    &[&x.job],
                )?
                .map(|r| RecordedOwner {
                    name: x.job.clone(),
                    target: r.get(0),
                    target_key: r.get(1),
                });
            if let Some(found) = &found {
                owner.check(&store, found).map_err(CallError::State)?;
            }
            if adopt && found.as_ref().is_none_or(|f| f.target_key.is_none()) {
                // A job first seen here plans with this version's ids.
                t.execute(
                    &format!(
                        "INSERT INTO {} (job, fingerprint, target, target_key, chunk_ids) VALUES ($1, '', $2, $3, $4) \
                         ON CONFLICT (job) DO UPDATE SET target = EXCLUDED.target, target_key = EXCLUDED.target_key",
                        x.t.jobs
                    ),
                    &[&x.job, &owner.target, &owner.target_key, &CHUNK_ID_VERSION],
                )?;
            }
            t.commit()?;
            Ok(())
        })
    }

    fn upgrade_chunk_ids(&self, renames: Renames<'_>) -> Result<usize, StateError> {
        let current = self.call(|c, x| {
            Ok(c.query_opt(
                &format!("SELECT chunk_ids FROM {} WHERE job = $1", x.t.jobs),
                &[&x.job],
            )?
            .and_then(|r| r.get::<_, Option<i32>>(0)))
        })?;
        if current == Some(CHUNK_ID_VERSION) {
            return Ok(0);
        }
        let moves: Vec<(String, String)> = self
            .chunks()?
            .iter()
            .filter_map(|r| {
                let new = renames(&r.chunk())?;
                (new != r.id).then(|| (r.id.clone(), new))
            })
            .collect();
        if current.is_none() && moves.is_empty() {
            // No job row yet, or nothing recorded: the run that adopts it
            // marks the version.
            return Ok(0);
        }
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            t.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&x.job])?;
            let version: Option<i32> = t
                .query_opt(
                    &format!("SELECT chunk_ids FROM {} WHERE job = $1", x.t.jobs),
                    &[&x.job],
                )?
                .and_then(|r| r.get(0));
            if version == Some(CHUNK_ID_VERSION) {
                return Ok(0);
            }
            let mut renamed = 0;
            for (old, new) in &moves {
                let moved = t.execute(
                    &format!(
                        "UPDATE {c} SET chunk_id = $3 WHERE job = $1 AND chunk_id = $2 \
                         AND NOT EXISTS (SELECT 1 FROM {c} WHERE job = $1 AND chunk_id = $3)",
                        c = x.t.chunks
                    ),
                    &[&x.job, old, new],
                )?;
                if moved == 0 {
                    continue;
                }
                for table in [&x.t.files, &x.t.attempts] {
                    t.execute(
                        &format!(
                            "UPDATE {table} SET chunk_id = $3 WHERE job = $1 AND chunk_id = $2"
                        ),
                        &[&x.job, old, new],
                    )?;
                }
                renamed += 1;
            }
            t.execute(
                &format!(
                    "INSERT INTO {} (job, fingerprint, chunk_ids) VALUES ($1, '', $2) \
                     ON CONFLICT (job) DO UPDATE SET chunk_ids = EXCLUDED.chunk_ids",
                    x.t.jobs
                ),
                &[&x.job, &CHUNK_ID_VERSION],
            )?;
            t.commit()?;
            Ok(renamed)
        })
    }

    /// Shared state has no job lock: chunks are leased one by one.
    fn lock(&self, _holder: &LockHolder) -> Result<Option<LockHolder>, StateError> {
        Ok(None)
    }

    /// Gives this process's unfinished chunks back at once, rather than after
    /// their leases run out.
    fn unlock(&self, _holder: &LockHolder) -> Result<(), StateError> {
        self.call(|c, x| {
            c.execute(
                &format!(
                    "UPDATE {} SET status = 'pending', lease_until = NULL \
                     WHERE job = $1 AND leased_by = $2 AND status = 'running'",
                    x.t.chunks
                ),
                &[&x.job, &x.me],
            )?;
            Ok(())
        })
    }

    fn holders(&self) -> Result<Vec<LockHolder>, StateError> {
        self.call(|c, x| {
            Ok(c.query(&x.t.live_holders(), &[&x.job])?
                .iter()
                .filter_map(|r| LockHolder::from_lease_name(r.get(0)))
                .collect())
        })
    }

    /// Ends every lease of the job, so another run can take the chunks now.
    fn force_unlock(&self) -> Result<Option<LockHolder>, StateError> {
        self.call(|c, x| {
            c.execute(
                &format!(
                    "UPDATE {} SET lease_until = NULL, \
                     status = CASE WHEN status = 'running' THEN 'pending' ELSE status END \
                     WHERE job = $1",
                    x.t.chunks
                ),
                &[&x.job],
            )?;
            Ok(None)
        })
    }

    fn sync_plan(
        &self,
        job: &str,
        fingerprint: &str,
        chunks: &[Chunk],
        replan: bool,
    ) -> Result<PlanSync, StateError> {
        let _ = job;
        let fingerprint = fingerprint.to_string();
        let chunks: Vec<Chunk> = chunks.to_vec();
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            // One process at a time syncs a job's plan.
            t.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&x.job])?;
            let old: Option<String> = t
                .query_opt(
                    &format!("SELECT fingerprint FROM {} WHERE job = $1", x.t.jobs),
                    &[&x.job],
                )?
                .map(|r| r.get(0));
            let mut sync = PlanSync::default();
            // As in the SQLite store: only dropping committed chunks needs --replan.
            let wanted: HashSet<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
            let rows: Vec<(String, String)> = t
                .query(
                    &format!("SELECT chunk_id, status FROM {} WHERE job = $1", x.t.chunks),
                    &[&x.job],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let dropped = rows
                .iter()
                .filter(|(id, status)| status == "committed" && !wanted.contains(id.as_str()))
                .count();
            if dropped > 0 && !replan {
                return Err(CallError::State(StateError::RangeChanged {
                    old: old.unwrap_or_default(),
                    new: fingerprint.clone(),
                    committed: dropped,
                }));
            }
            let existing: Vec<String> = rows.into_iter().map(|(id, _)| id).collect();
            for id in existing.iter().filter(|id| !wanted.contains(id.as_str())) {
                move_to_garbage(&mut t, x, id)?;
                t.execute(
                    &format!(
                        "INSERT INTO {g} (job, path) SELECT job, staged FROM {f} \
                         WHERE job = $1 AND chunk_id = $2 AND NOT published ON CONFLICT DO NOTHING",
                        g = x.t.garbage,
                        f = x.t.files
                    ),
                    &[&x.job, id],
                )?;
                for table in [&x.t.files, &x.t.chunks] {
                    t.execute(
                        &format!("DELETE FROM {table} WHERE job = $1 AND chunk_id = $2"),
                        &[&x.job, id],
                    )?;
                }
                sync.retired.push(id.clone());
            }
            let insert = t.prepare(&format!(
                "INSERT INTO {} (job, chunk_id, idx, lo, hi, status) VALUES ($1, $2, $3, $4, $5, 'pending') \
                 ON CONFLICT (job, chunk_id) DO UPDATE SET idx = EXCLUDED.idx",
                x.t.chunks
            ))?;
            for ch in &chunks {
                t.execute(
                    &insert,
                    &[
                        &x.job,
                        &ch.id,
                        &(ch.index as i64),
                        &crate::state::encode_lo(ch),
                        &encode_bound(ch.hi),
                    ],
                )?;
            }
            sync.inserted = chunks.len().saturating_sub(existing.len() - sync.retired.len());
            t.execute(
                &format!(
                    "INSERT INTO {} (job, fingerprint) VALUES ($1, $2) \
                     ON CONFLICT (job) DO UPDATE SET fingerprint = EXCLUDED.fingerprint",
                    x.t.jobs
                ),
                &[&x.job, &fingerprint],
            )?;
            t.commit()?;
            Ok(sync)
        })
    }

    fn begin_run(&self, args: &str) -> Result<i64, StateError> {
        let args = args.to_string();
        self.call(move |c, x| {
            let row = c.query_one(
                &format!(
                    "INSERT INTO {} (job, pid, host, status, args) VALUES ($1, $2, $3, 'running', $4) RETURNING run_id",
                    x.t.runs
                ),
                &[&x.job, &(std::process::id() as i32), &hostname(), &args],
            )?;
            Ok(row.get(0))
        })
    }

    fn note(&self, key: &str) -> Result<Option<String>, StateError> {
        let key = key.to_string();
        self.call(move |c, x| {
            Ok(c.query_opt(
                &format!(
                    "SELECT value FROM {} WHERE job = $1 AND key = $2",
                    x.t.notes
                ),
                &[&x.job, &key],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn set_note(&self, key: &str, value: &str) -> Result<(), StateError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call(move |c, x| {
            c.execute(
                &format!(
                    "INSERT INTO {} (job, key, value) VALUES ($1, $2, $3) \
                     ON CONFLICT (job, key) DO UPDATE SET value = EXCLUDED.value",
                    x.t.notes
                ),
                &[&x.job, &key, &value],
            )?;
            Ok(())
        })
    }

    fn finish_run(&self, run_id: i64, status: &str) -> Result<(), StateError> {
        let status = status.to_string();
        self.call(move |c, x| {
            c.execute(
                &format!(
                    "UPDATE {} SET finished_at = now(), status = $2 WHERE run_id = $1",
                    x.t.runs
                ),
                &[&run_id, &status],
            )?;
            Ok(())
        })
    }

    fn chunks(&self) -> Result<Vec<ChunkRecord>, StateError> {
        let rows = self.call(|c, x| {
            Ok(c.query(
                &format!(
                    "SELECT chunk_id, idx, lo, hi, status, attempts, metrics, last_error, \
                     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                     FROM {} WHERE job = $1 ORDER BY idx",
                    x.t.chunks
                ),
                &[&x.job],
            )?)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let status: String = r.get(4);
            let status = ChunkStatus::parse(&status)
                .ok_or_else(|| StateError::Corrupt(format!("chunk {id} has status {status:?}")))?;
            let metrics = match r.get::<_, Option<String>>(6) {
                Some(m) => Some(
                    serde_json::from_str::<ChunkMetrics>(&m)
                        .map_err(|e| StateError::Corrupt(format!("chunk {id} metrics: {e}")))?,
                ),
                None => None,
            };
            let (lo, value) = crate::state::decode_lo(r.get(2))?;
            out.push(ChunkRecord {
                index: r.get::<_, i64>(1).max(0) as usize,
                lo,
                value,
                hi: decode_bound(r.get(3))?,
                bucket: None,
                status,
                attempts: r.get::<_, i32>(5).max(0) as u32,
                metrics,
                last_error: r.get(7),
                updated_at: r.get(8),
                id,
            });
        }
        Ok(out)
    }

    fn start_attempt(&self, run_id: i64, chunk_id: &str) -> Result<u32, StateError> {
        match self.claim(run_id, chunk_id, true)? {
            Some(a) => Ok(a),
            None => Err(StateError::LeaseLost {
                chunk: chunk_id.to_string(),
            }),
        }
    }

    fn claim(
        &self,
        run_id: i64,
        chunk_id: &str,
        rerun_committed: bool,
    ) -> Result<Option<u32>, StateError> {
        let chunk = chunk_id.to_string();
        let ordered = self.ordered;
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            // Free: pending or failed; ours already (a retry); held by a
            // process whose lease ran out; or committed, when asked to run
            // it again and nobody is publishing it. Ordered: and every
            // chunk before it committed (whoever runs them).
            let row = t.query_opt(
                &format!(
                    "UPDATE {c} SET attempts = attempts + 1, leased_by = $3, run_id = $4, updated_at = now(),
                            lease_until = now() + make_interval(secs => $5),
                            status = CASE WHEN status = 'committed' THEN status ELSE 'running' END
                     WHERE job = $1 AND chunk_id = $2 AND (
                        status IN ('pending', 'failed')
                        OR leased_by = $3
                        OR ((status = 'running' OR $6) AND (lease_until IS NULL OR lease_until < now()))
                     ) AND (status <> 'committed' OR $6)
                     AND (NOT $7 OR NOT EXISTS (
                        SELECT 1 FROM {c} b WHERE b.job = $1 AND b.idx < {c}.idx AND b.status <> 'committed'))
                     RETURNING attempts",
                    c = x.t.chunks
                ),
                &[&x.job, &chunk, &x.me, &run_id, &x.lease_secs, &rerun_committed, &ordered],
            )?;
            let Some(row) = row else {
                return Ok(None);
            };
            let attempt: i32 = row.get(0);
            t.execute(
                &format!(
                    "INSERT INTO {} (job, chunk_id, attempt, run_id, worker, outcome) \
                     VALUES ($1, $2, $3, $4, $5, 'running') ON CONFLICT DO NOTHING",
                    x.t.attempts
                ),
                &[&x.job, &chunk, &attempt, &run_id, &x.me],
            )?;
            t.commit()?;
            Ok(Some(attempt.max(0) as u32))
        })
    }

    fn busy_chunks(&self) -> Result<HashSet<String>, StateError> {
        self.call(|c, x| {
            Ok(c.query(
                &format!(
                    "SELECT chunk_id FROM {} WHERE job = $1 AND leased_by <> $2 AND lease_until >= now()",
                    x.t.chunks
                ),
                &[&x.job, &x.me],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn fail_attempt(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        error: &str,
        will_retry: bool,
    ) -> Result<(), StateError> {
        let (chunk, error) = (chunk_id.to_string(), error.to_string());
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            t.execute(
                &format!(
                    "UPDATE {} SET finished_at = now(), outcome = $4, error = $5 \
                     WHERE job = $1 AND chunk_id = $2 AND attempt = $3",
                    x.t.attempts
                ),
                &[
                    &x.job,
                    &chunk,
                    &(attempt as i32),
                    &if will_retry { "retried" } else { "failed" },
                    &error,
                ],
            )?;
            t.execute(
                &format!(
                    "UPDATE {} SET last_error = $3, updated_at = now(), run_id = $4,
                        status = CASE WHEN status = 'committed' THEN status WHEN $5 THEN 'running' ELSE 'failed' END,
                        lease_until = CASE WHEN $5 THEN lease_until ELSE NULL END
                     WHERE job = $1 AND chunk_id = $2 AND leased_by = $6",
                    x.t.chunks
                ),
                &[&x.job, &chunk, &error, &run_id, &will_retry, &x.me],
            )?;
            t.commit()?;
            Ok(())
        })
    }

    fn commit_chunk(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        m: &ChunkMetrics,
        files: &[OwnedFile],
    ) -> Result<Vec<String>, StateError> {
        let chunk = chunk_id.to_string();
        let files = files.to_vec();
        let metrics = serde_json::to_string(m).unwrap_or_default();
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            let superseded = commit_in(&mut t, x, run_id, &chunk, attempt, &metrics, &files)?;
            t.commit()?;
            Ok(superseded)
        })
    }

    fn commit_and_publish(
        &self,
        run_id: i64,
        chunk_id: &str,
        attempt: u32,
        m: &ChunkMetrics,
        files: &[OwnedFile],
        url: &str,
        statements: &str,
    ) -> Result<Option<Vec<String>>, StateError> {
        if url != self.url {
            return Ok(None);
        }
        let chunk = chunk_id.to_string();
        let files = files.to_vec();
        let metrics = serde_json::to_string(m).unwrap_or_default();
        let statements = statements.to_string();
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            let superseded = commit_in(&mut t, x, run_id, &chunk, attempt, &metrics, &files)?;
            t.batch_execute(&statements)?;
            // Crash tests abort here: the server must roll all of it back.
            if let Err(e) = crate::failpoint::hit("in_commit_txn", usize::MAX) {
                tracing::debug!("ignoring {e} inside the commit transaction");
            }
            published_in(&mut t, x, &chunk)?;
            t.commit()?;
            Ok(Some(superseded))
        })
    }

    fn mark_published(&self, chunk_id: &str) -> Result<(), StateError> {
        let chunk = chunk_id.to_string();
        self.call(move |c, x| {
            let mut t = c.transaction()?;
            published_in(&mut t, x, &chunk)?;
            t.commit()?;
            Ok(())
        })
    }

    /// Only chunks nobody alive is publishing: their committer's lease ended.
    fn unpublished(&self) -> Result<BTreeMap<String, Vec<OwnedFile>>, StateError> {
        self.call(|c, x| {
            let rows = c.query(
                &format!(
                    "SELECT f.chunk_id, f.path, f.staged FROM {f} f JOIN {c} c USING (job, chunk_id) \
                     WHERE f.job = $1 AND NOT f.published \
                       AND (c.leased_by = $2 OR c.lease_until IS NULL OR c.lease_until < now()) \
                     ORDER BY f.chunk_id, f.path",
                    f = x.t.files,
                    c = x.t.chunks
                ),
                &[&x.job, &x.me],
            )?;
            let mut out: BTreeMap<String, Vec<OwnedFile>> = BTreeMap::new();
            for r in rows {
                out.entry(r.get(0)).or_default().push(OwnedFile {
                    path: r.get(1),
                    staged: r.get(2),
                });
            }
            Ok(out)
        })
    }

    fn committed_files(&self) -> Result<BTreeMap<String, Vec<String>>, StateError> {
        self.call(|c, x| {
            let rows = c.query(
                &format!(
                    "SELECT chunk_id, path FROM {} WHERE job = $1 ORDER BY chunk_id, path",
                    x.t.files
                ),
                &[&x.job],
            )?;
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for r in rows {
                out.entry(r.get(0)).or_default().push(r.get(1));
            }
            Ok(out)
        })
    }

    fn garbage(&self) -> Result<Vec<String>, StateError> {
        self.call(|c, x| {
            Ok(c.query(
                &format!(
                    "SELECT path FROM {} WHERE job = $1 ORDER BY path",
                    x.t.garbage
                ),
                &[&x.job],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn add_garbage(&self, paths: &[String]) -> Result<(), StateError> {
        let paths = paths.to_vec();
        self.call(move |c, x| {
            c.execute(
                &format!(
                    "INSERT INTO {} (job, path) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                    x.t.garbage
                ),
                &[&x.job, &paths],
            )?;
            Ok(())
        })
    }

    fn forget_garbage(&self, paths: &[String]) -> Result<(), StateError> {
        let paths = paths.to_vec();
        self.call(move |c, x| {
            c.execute(
                &format!(
                    "DELETE FROM {} WHERE job = $1 AND path = ANY($2)",
                    x.t.garbage
                ),
                &[&x.job, &paths],
            )?;
            Ok(())
        })
    }

    /// Chunks whose holder stopped renewing its lease go back to pending, and
    /// so do those of a holder on this host that is no longer running,
    /// without waiting for its lease to run out.
    fn release_interrupted(&self) -> Result<usize, StateError> {
        self.call(|c, x| {
            let mut t = c.transaction()?;
            let holders: Vec<String> = t
                .query(&x.t.live_holders(), &[&x.job])?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut dead: Vec<String> = holders
                .into_iter()
                .filter(|h| LockHolder::from_lease_name(h).is_some_and(|h| h.is_stale()))
                .collect();
            dead.push(x.me.clone());
            let n = t.execute(
                &format!(
                    "UPDATE {} SET status = 'pending', lease_until = NULL WHERE job = $1 AND status = 'running' \
                     AND (leased_by = ANY($2) OR lease_until IS NULL OR lease_until < now())",
                    x.t.chunks
                ),
                &[&x.job, &dead],
            )?;
            // Their committed-but-unpublished chunks can be published now.
            t.execute(
                &format!(
                    "UPDATE {} SET lease_until = NULL WHERE job = $1 AND status = 'committed' AND leased_by = ANY($2)",
                    x.t.chunks
                ),
                &[&x.job, &dead],
            )?;
            t.execute(
                &format!(
                    "UPDATE {a} SET outcome = 'interrupted', finished_at = now() \
                     WHERE job = $1 AND outcome = 'running' AND NOT EXISTS ( \
                       SELECT 1 FROM {c} WHERE {c}.job = $1 AND {c}.chunk_id = {a}.chunk_id \
                       AND {c}.status = 'running')",
                    a = x.t.attempts,
                    c = x.t.chunks
                ),
                &[&x.job],
            )?;
            t.commit()?;
            Ok(n as usize)
        })
    }

    fn reset(&self, chunk_ids: &[String]) -> Result<usize, StateError> {
        let ids = chunk_ids.to_vec();
        self.call(move |c, x| {
            let n = c.execute(
                &format!(
                    "UPDATE {} SET status = 'pending', last_error = NULL, updated_at = now(), lease_until = NULL \
                     WHERE job = $1 AND chunk_id = ANY($2)",
                    x.t.chunks
                ),
                &[&x.job, &ids],
            )?;
            Ok(n as usize)
        })
    }
}
