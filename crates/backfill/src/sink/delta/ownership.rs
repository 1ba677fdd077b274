//! The range a job owns in a Delta table (a table property, so it survives
//! a lost state) and the commits of other writers since the job's last look.

use super::*;

#[async_trait]
impl Ownership for Arc<DeltaSink> {
    async fn footprint(&self) -> Result<Option<crate::sink::Footprint>, SinkError> {
        if !self.owns_ranges() {
            return Ok(None);
        }
        let Some(table) = self.open().await? else {
            return Ok(None);
        };
        let snapshot = table.snapshot().map_err(self.err())?;
        Ok(snapshot
            .metadata()
            .configuration()
            .get(&footprint_key(&self.job_tag))
            .and_then(|v| crate::sink::decode_footprint(v)))
    }

    /// A table property, in a metadata commit carrying the job's tag (so
    /// the next run does not take it for another writer's).
    async fn set_footprint(&self, range: crate::sink::Footprint) -> Result<(), SinkError> {
        if !self.owns_ranges() {
            return Ok(());
        }
        *self
            .pending_footprint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(range);
        let _guard = self.commits.lock().await;
        let Some(table) = self.open().await? else {
            // Recorded as the table is created.
            return Ok(());
        };
        let key = footprint_key(&self.job_tag);
        let value = crate::sink::encode_footprint(range);
        let current = table
            .snapshot()
            .map_err(self.err())?
            .metadata()
            .configuration()
            .get(&key)
            .cloned();
        if current.as_deref() == Some(value.as_str()) {
            return Ok(());
        }
        table
            .set_tbl_properties()
            .with_properties(HashMap::from([(key, value)]))
            .with_raise_if_not_exists(false)
            .with_commit_properties(self.tagged())
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// Reads the log's commits after version `since` (all of them after
    /// `-1`, the mark of a table that did not exist yet): a commit that does
    /// not carry this job's tag and adds or removes data files
    /// (`dataChange`: a compaction does not) touches every committed chunk
    /// whose range those files overlap, unless this job committed the
    /// chunk again later in the log (which replaced the range).
    async fn foreign_writes(
        &self,
        since: Option<&str>,
        committed: &[Chunk],
    ) -> Result<Option<ForeignWrites>, SinkError> {
        if !self.owns_ranges() {
            return Ok(None);
        }
        // Before the table exists, every version it will have is to read:
        // the mark says so with -1.
        let Some(table) = self.open().await? else {
            return Ok(Some(ForeignWrites {
                mark: "-1".into(),
                touched: Vec::new(),
            }));
        };
        let Some(current) = table.version() else {
            return Ok(None);
        };
        let mark = current.to_string();
        // The first version to read.
        let first = match since.map(str::parse::<i64>) {
            Some(Ok(v)) if v < 0 => 0,
            Some(Ok(v)) if v as u64 <= current => v as u64 + 1,
            Some(Ok(v)) => {
                tracing::warn!(
                    "{}: the table is at version {current}, before version {v} this job last read: it was recreated; other writers' changes before now are not looked for",
                    self.shown
                );
                return Ok(Some(ForeignWrites {
                    mark,
                    touched: Vec::new(),
                }));
            }
            // The first look: the job's own commits before it carry no tag
            // to tell them from others'.
            _ => {
                return Ok(Some(ForeignWrites {
                    mark,
                    touched: Vec::new(),
                }));
            }
        };
        let log_store = table.log_store();
        // Files another writer changed (path, partition values, stats;
        // removes carry no stats and are looked up) at each version, and
        // the last version at which this job committed each chunk.
        let mut foreign: Vec<(u64, FileRange)> = Vec::new();
        let mut unresolved: Vec<(u64, String, HashMap<String, Option<String>>)> = Vec::new();
        let mut added: HashMap<String, FileRange> = HashMap::new();
        let mut ours: HashMap<String, u64> = HashMap::new();
        for version in first..=current {
            let Some(bytes) = log_store
                .read_commit_entry(version)
                .await
                .map_err(self.err())?
            else {
                tracing::warn!(
                    "{}: the log no longer holds version {version} (log retention): other writers' changes up to it are not looked for",
                    self.shown
                );
                continue;
            };
            let actions = deltalake::logstore::get_actions(version, &bytes).map_err(self.err())?;
            let mine = actions.iter().any(|a| {
                matches!(a, Action::CommitInfo(ci)
                    if ci.info.get(JOB_KEY).and_then(|v| v.as_str()) == Some(self.job_tag.as_str()))
            });
            for action in actions {
                match action {
                    Action::Txn(t) if mine => {
                        if let Some(id) = t.app_id.strip_prefix("backfill-") {
                            ours.insert(id.to_string(), version);
                        }
                    }
                    Action::Add(a) => {
                        let file = FileRange {
                            partition_values: a.partition_values,
                            stats: a.stats,
                        };
                        if !mine && a.data_change {
                            foreign.push((version, file.clone()));
                        }
                        added.insert(a.path, file);
                    }
                    Action::Remove(r) if !mine && r.data_change => match added.get(&r.path) {
                        Some(file) => foreign.push((version, file.clone())),
                        None => unresolved.push((
                            version,
                            r.path,
                            r.partition_values.unwrap_or_default(),
                        )),
                    },
                    _ => {}
                }
            }
        }
        let mut known: HashMap<String, FileRange> = HashMap::new();
        if let (false, Some(before)) = (unresolved.is_empty(), first.checked_sub(1)) {
            // Files removed that were added before the versions read:
            // their ranges are in the table as it was then.
            let mut old = deltalake::open_table(self.url()?)
                .await
                .map_err(self.err())?;
            known = match old.load_version(before).await {
                Ok(()) => old
                    .snapshot()
                    .map_err(self.err())?
                    .snapshot()
                    .file_views(old.log_store().as_ref(), None)
                    .map_ok(|f| {
                        (
                            f.path().to_string(),
                            FileRange {
                                partition_values: f.partition_values_map(),
                                stats: f.stats(),
                            },
                        )
                    })
                    .try_collect()
                    .await
                    .map_err(self.err())?,
                Err(e) => {
                    tracing::debug!("{}: version {before} unreadable ({e})", self.shown);
                    HashMap::new()
                }
            };
        }
        // A file not found there counts as touching every chunk its
        // partition values allow.
        for (version, path, partition_values) in unresolved {
            let file = known.get(&path).cloned().unwrap_or(FileRange {
                partition_values,
                stats: None,
            });
            foreign.push((version, file));
        }
        let touched = committed
            .iter()
            .filter(|chunk| {
                let range = ChunkRange {
                    column: self.range_column.as_deref(),
                    chunk,
                };
                let replaced = ours.get(&chunk.id).copied();
                foreign.iter().any(|(version, f)| {
                    replaced.is_none_or(|r| *version > r)
                        && range.overlap(&f.partition_values, f.stats.as_deref())
                            != Overlap::Outside
                })
            })
            .map(|c| c.index)
            .collect();
        Ok(Some(ForeignWrites { mark, touched }))
    }
}
