//! `format = "postgres"` targets.
//!
//! A chunk attempt streams its rows with binary COPY into a staging table of
//! its own (`UNLOGGED`, named `_bf_<table hash>_<chunk>_a<attempt>`, in the
//! target's schema). Publishing is then one transaction that replaces the
//! chunk's slice (or merges on the keys), records the staging table in
//! `_backfill_published` and drops it. A staging table is a real table rather
//! than a session's temporary one so that the commit protocol can put the
//! state store's commit between staging and publishing, exactly as for files:
//! a crash after the state commit is repaired by publishing the staged rows
//! again, and a crash before it by dropping them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use backfill_core::plan::Chunk;
use backfill_core::spec::{PgWriteMode, QualifiedName};
use backfill_core::state::OwnedFile;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use twox_hash::XxHash3_64;

use crate::failpoint;
use crate::pg::types::{Cell, Column, ddl_type};
use crate::pg::{PgError, connect, quote_ident, quote_literal};
use crate::sink::checksum::{ChecksumVersion, RowChecksum};
use crate::sink::{
    ChunkWriter, Evolve, Ownership, ReadBack, Sink, SinkError, Staged, Target, TargetFiles,
    partition_seed,
};

mod evolve;
mod ownership;
mod read;
mod writer;

use writer::*;

/// Which rows of the table a chunk owns.
#[derive(Debug, Clone)]
pub enum Slice {
    /// Rows whose range column lies in the chunk's bounds (`None`: the job
    /// has no range, so its one chunk owns the whole table).
    Range(Option<String>),
    /// Rows whose `_chunk` column names the chunk (the quarantine table).
    ChunkColumn,
    /// No slice: rows are merged on these keys and never deleted.
    Merge(Vec<String>),
}

#[derive(Debug)]
struct Inner {
    url: String,
    shown: String,
    table: QualifiedName,
    slice: Slice,
    /// The job's range column, to find a merged chunk's rows for `validate`.
    range_column: Option<String>,
    /// `[range] buckets`: the hashed column, part of a bucket chunk's slice.
    bucket_column: Option<String>,
    /// Kafka offsets: chunk bounds are positions over this partition
    /// column and the range column.
    position_column: Option<String>,
    create: bool,
    checksum: bool,
    /// Staging tables of this target start with it.
    prefix: String,
    /// Serialises `CREATE TABLE` between this process's chunks.
    ensured: Mutex<bool>,
    /// Merge: the order that tells newer versions of a key from older.
    versions: Vec<backfill_core::spec::OrderKey>,
    /// The job's tag ([`crate::sink::job_tag`]), naming its footprint.
    job: String,
    /// The footprint to record when this process creates the table.
    pending_footprint: std::sync::Mutex<Option<crate::sink::Footprint>>,
}

#[derive(Debug, Clone)]
pub struct PgSink {
    inner: Arc<Inner>,
}

const PUBLISHED: &str = "_backfill_published";
/// Per target table and job, the range the job's rows may lie in.
const FOOTPRINT: &str = "_backfill_footprint";

impl PgSink {
    pub fn new(
        url: &str,
        shown: &str,
        table: &QualifiedName,
        slice: Slice,
        range_column: Option<&str>,
        create: bool,
    ) -> Self {
        let checksum = !matches!(slice, Slice::ChunkColumn);
        let hash = XxHash3_64::oneshot(table.quoted().as_bytes());
        PgSink {
            inner: Arc::new(Inner {
                url: url.to_string(),
                shown: shown.to_string(),
                table: table.clone(),
                slice,
                range_column: range_column.map(str::to_string),
                bucket_column: None,
                position_column: None,
                create,
                checksum,
                prefix: format!("_bf_{:08x}_", hash as u32),
                ensured: Mutex::new(false),
                versions: Vec::new(),
                job: String::new(),
                pending_footprint: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Merge replaces a row only with a newer-or-equal version by `order`
    /// ([`crate::sink::newer_or_equal`]).
    pub fn with_versions(mut self, order: Vec<backfill_core::spec::OrderKey>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.versions = order;
        }
        self
    }

    /// Chunk bounds are Kafka positions over `column` (the partition) and
    /// the range column (the offset).
    pub fn with_positions(mut self, column: Option<&str>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.position_column = column.map(str::to_string);
        }
        self
    }

    /// A bucketed job's chunks are a range and a bucket of `column`.
    pub fn with_buckets(mut self, column: Option<&str>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.bucket_column = column.map(str::to_string);
        }
        self
    }

    /// The job whose footprint this sink records.
    pub fn for_job(mut self, job: &str) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.job = crate::sink::job_tag(job);
        }
        self
    }

    pub fn mode_slice(mode: PgWriteMode, keys: &[String], range_column: Option<&str>) -> Slice {
        match mode {
            PgWriteMode::Replace => Slice::Range(range_column.map(str::to_string)),
            PgWriteMode::Merge => Slice::Merge(keys.to_vec()),
        }
    }
}

impl Inner {
    fn qualified(&self, name: &str) -> String {
        self.table.sibling(name.to_string()).quoted()
    }

    fn schema_literal(&self) -> String {
        match &self.table.schema {
            Some(s) => quote_literal(s),
            None => "current_schema()".to_string(),
        }
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        Ok(connect(&self.url, &self.shown).await?)
    }

    /// A connection, when the target table exists.
    async fn connect_to_table(&self) -> Result<Option<Client>, SinkError> {
        let client = self.connect().await?;
        Ok(self
            .table_exists(&client, &self.table.name)
            .await?
            .then_some(client))
    }

    async fn table_exists(
        &self,
        client: &impl tokio_postgres::GenericClient,
        name: &str,
    ) -> Result<bool, SinkError> {
        let sql = format!(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = {} AND tablename = $1",
            self.schema_literal()
        );
        let rows = client
            .query(&sql, &[&name])
            .await
            .map_err(PgError::sql(format!("looking up {name}")))?;
        Ok(!rows.is_empty())
    }

    /// Creates what the table needs (its schema, the table itself from the
    /// rows' schema when `create`, the bookkeeping table), once per process.
    async fn ensure(&self, client: &Client, schema: Option<&Schema>) -> Result<(), SinkError> {
        let mut done = self.ensured.lock().await;
        if *done {
            return Ok(());
        }
        let what = format!("preparing {}", self.shown);
        let exists = self.table_exists(client, &self.table.name).await?;
        if !exists {
            let Some(schema) = schema else {
                // Nothing to write and nowhere to write it: nothing to do yet.
                return Ok(());
            };
            if !self.create {
                return Err(PgError::Invalid(format!(
                    "target table {} does not exist (set target.create = true to create it)",
                    self.table
                ))
                .into());
            }
            let mut cols = Vec::new();
            for f in schema.fields() {
                let ty = ddl_type(f.data_type()).ok_or_else(|| PgError::Column {
                    what: format!("creating {}", self.table),
                    column: f.name().clone(),
                    reason: format!("{} has no PostgreSQL column type", f.data_type()),
                })?;
                cols.push(format!("{} {ty}", quote_ident(f.name())));
            }
            if let Slice::Merge(keys) = &self.slice {
                let keys: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
                cols.push(format!("UNIQUE ({})", keys.join(", ")));
            }
            let mut sql = String::new();
            if let Some(s) = &self.table.schema {
                sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)));
            }
            sql.push_str(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({})",
                self.table.quoted(),
                cols.join(", ")
            ));
            client
                .batch_execute(&sql)
                .await
                .map_err(PgError::sql(format!("creating table {}", self.table)))?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (stage text PRIMARY KEY, target text NOT NULL, \
                 chunk text NOT NULL, published_at timestamptz NOT NULL DEFAULT now())",
                self.qualified(PUBLISHED)
            ))
            .await
            .map_err(PgError::sql(what))?;
        let pending = *self
            .pending_footprint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(range) = pending {
            self.write_footprint(client, range).await?;
        }
        *done = true;
        Ok(())
    }

    /// Whether this sink owns ranges (replace by the range column), and so
    /// keeps a footprint.
    fn keeps_footprint(&self) -> bool {
        matches!(self.slice, Slice::Range(Some(_))) && !self.job.is_empty()
    }

    async fn write_footprint(
        &self,
        client: &impl tokio_postgres::GenericClient,
        range: crate::sink::Footprint,
    ) -> Result<(), SinkError> {
        let fp = self.qualified(FOOTPRINT);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {fp} (target text NOT NULL, job text NOT NULL, \
                 range text NOT NULL, PRIMARY KEY (target, job)); \
                 INSERT INTO {fp} (target, job, range) VALUES ({t}, {j}, {r}) \
                 ON CONFLICT (target, job) DO UPDATE SET range = EXCLUDED.range",
                t = quote_literal(&self.table.to_string()),
                j = quote_literal(&self.job),
                r = quote_literal(&crate::sink::encode_footprint(range)),
            ))
            .await
            .map_err(PgError::sql(format!(
                "recording the footprint of {}",
                self.table
            )))?;
        Ok(())
    }

    /// (Re)creates a staging table with `columns` of the target, typed as
    /// the target's.
    async fn create_stage(
        &self,
        client: &Client,
        stage: &str,
        columns: &str,
        what: &str,
    ) -> Result<(), SinkError> {
        let staged = self.qualified(stage);
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {staged}; \
                 CREATE UNLOGGED TABLE {staged} AS SELECT {columns} FROM {} WITH NO DATA",
                self.table.quoted()
            ))
            .await
            .map_err(PgError::sql(what))?;
        Ok(())
    }

    fn stage_name(&self, chunk: &str, attempt: u32) -> String {
        format!("{}{chunk}_a{attempt}", self.prefix)
    }

    /// `WHERE` text selecting the rows the chunk owns; `None`: it owns none
    /// (merge).
    /// The target's rows through the PostgreSQL source (binary COPY, one
    /// connection), for `validate` and `gaps`.
    async fn read_back(
        &self,
        relation: backfill_core::spec::PgRelation,
    ) -> Result<crate::source::postgres::PgSource, SinkError> {
        let spec = backfill_core::spec::PgSourceSpec {
            url: self.url.clone(),
            relation,
            max_rows_per_second: None,
            max_connections: 1,
        };
        crate::source::postgres::PgSource::open(&spec, &self.shown)
            .await
            .map_err(SinkError::read(format!("reading back {}", self.shown)))
    }

    fn columns(&self) -> ChunkColumns {
        ChunkColumns {
            bucket: self.bucket_column.clone(),
            position: self.position_column.clone(),
        }
    }

    fn slice_predicate(&self, chunk: &Chunk) -> Result<Option<String>, SinkError> {
        match &self.slice {
            Slice::Merge(_) => Ok(None),
            Slice::ChunkColumn => Ok(Some(format!(
                "{} = {}",
                quote_ident("_chunk"),
                quote_literal(&chunk.id)
            ))),
            Slice::Range(None) => Ok(Some("true".into())),
            Slice::Range(Some(col)) => range_predicate(col, chunk, &self.columns()).map(Some),
        }
    }

    /// The statements that publish a staged table (replace or merge the
    /// chunk's slice, record the stage as published, drop it), to run in
    /// one transaction; `None` when the stage is gone, `Lost` unless it was
    /// published before, and `Lost` too when the stage does not hold the
    /// `rows` its commit recorded: staging tables are unlogged, so a
    /// database crash or failover empties them, and publishing one then
    /// would delete the chunk's slice and insert nothing. The statements
    /// check the count again inside the transaction that publishes.
    async fn publish_sql(
        &self,
        client: &impl tokio_postgres::GenericClient,
        chunk: &Chunk,
        stage: &str,
        rows: Option<u64>,
    ) -> Result<Option<String>, SinkError> {
        let what = format!("publishing chunk {} into {}", chunk.id, self.table);
        if !self.table_exists(client, stage).await? {
            let sql = format!(
                "SELECT 1 FROM {} WHERE stage = $1",
                self.qualified(PUBLISHED)
            );
            let done = client
                .query(&sql, &[&stage])
                .await
                .map(|r| !r.is_empty())
                .unwrap_or(false);
            return if done {
                Ok(None)
            } else {
                Err(SinkError::Lost {
                    path: format!("{} (chunk {})", self.table, chunk.id),
                    staged: stage.to_string(),
                })
            };
        }
        let staged = self.qualified(stage);
        if let Some(rows) = rows {
            let found: i64 = client
                .query_one(&format!("SELECT count(*) FROM {staged}"), &[])
                .await
                .map_err(PgError::sql(&what))?
                .get(0);
            if found != rows as i64 {
                return Err(SinkError::Lost {
                    path: format!(
                        "{} (chunk {}: its staging table holds {found} of the {rows} rows its commit recorded; \
                         unlogged tables are emptied by a database crash or failover)",
                        self.table, chunk.id
                    ),
                    staged: stage.to_string(),
                });
            }
        }
        let stmt = client
            .prepare(&format!("SELECT * FROM {staged} LIMIT 0"))
            .await
            .map_err(PgError::sql(&what))?;
        let cols: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| quote_ident(c.name()))
            .collect();
        let list = cols.join(", ");
        let target = self.table.quoted();
        let mut sql = String::new();
        if let Some(rows) = rows {
            sql.push_str(&format!(
                "DO $backfill$ BEGIN IF (SELECT count(*) FROM {staged}) <> {rows} THEN \
                 RAISE EXCEPTION 'staging table % lost rows (a database crash?); the chunk must run again', {s}; \
                 END IF; END $backfill$;",
                s = quote_literal(stage),
            ));
        }
        if let Some(pred) = self.slice_predicate(chunk)? {
            sql.push_str(&format!("DELETE FROM {target} WHERE {pred};"));
        }
        sql.push_str(&format!(
            "INSERT INTO {target} AS t ({list}) SELECT {list} FROM {staged}"
        ));
        if let Slice::Merge(keys) = &self.slice {
            let keys: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !keys.contains(c))
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    keys.join(", "),
                    updates.join(", ")
                ));
                // Never an older version over a newer one: a re-run of an
                // earlier window, or chunks finishing out of order.
                if let Some(newer) =
                    crate::sink::newer_or_equal(&self.versions, "EXCLUDED", "t", quote_ident)
                {
                    sql.push_str(&format!(" WHERE {newer}"));
                }
            }
        }
        sql.push(';');
        sql.push_str(&format!(
            "DELETE FROM {p} WHERE target = {t} AND chunk = {c};\
             INSERT INTO {p} (stage, target, chunk) VALUES ({s}, {t}, {c});\
             DROP TABLE {staged};",
            p = self.qualified(PUBLISHED),
            t = quote_literal(&self.table.to_string()),
            c = quote_literal(&chunk.id),
            s = quote_literal(stage),
        ));
        Ok(Some(sql))
    }

    async fn publish_one(
        &self,
        client: &mut Client,
        chunk: &Chunk,
        file: &OwnedFile,
    ) -> Result<(), SinkError> {
        let what = format!("publishing chunk {} into {}", chunk.id, self.table);
        let tx = client.transaction().await.map_err(PgError::sql(&what))?;
        let rows = staged_rows(&file.path);
        if let Some(sql) = self.publish_sql(&tx, chunk, &file.staged, rows).await? {
            tx.batch_execute(&sql).await.map_err(PgError::sql(&what))?;
            tx.commit().await.map_err(PgError::sql(&what))?;
        }
        Ok(())
    }
}

/// How a staging table is recorded in the state store: the target, the
/// stage, and the rows it holds, which publishing checks.
fn stage_path(table: &str, stage: &str, rows: u64) -> String {
    format!("{table}#{stage}#rows={rows}")
}

/// The rows a recorded stage holds; `None` for stages recorded before
/// the count was.
fn staged_rows(path: &str) -> Option<u64> {
    path.rsplit_once("#rows=")?.1.parse().ok()
}

/// `col >= lo AND col < hi` for the chunk's bounds
/// ([`crate::predicate::postgres`]).
fn range_predicate(col: &str, chunk: &Chunk, more: &ChunkColumns) -> Result<String, SinkError> {
    if chunk.index == usize::MAX {
        // Recovery of a chunk the current plan does not know: its bounds are
        // lost, and guessing could delete rows.
        return Err(SinkError::Lost {
            path: chunk.id.clone(),
            staged: "(bounds unknown)".into(),
        });
    }
    let column = match &more.position {
        // Kafka: the position of (partition, offset), as the plan counts.
        Some(p) => format!(
            "({}::bigint * {} + {})",
            quote_ident(p),
            backfill_core::plan::POSITION_BASE,
            quote_ident(col)
        ),
        None => quote_ident(col),
    };
    Ok(crate::predicate::postgres(
        &column,
        chunk,
        more.bucket.as_deref().map(quote_ident).as_deref(),
    ))
}

/// The columns besides the range column that say which rows a chunk holds.
pub(crate) struct ChunkColumns {
    pub bucket: Option<String>,
    pub position: Option<String>,
}

#[async_trait]
impl Sink for PgSink {
    async fn begin(&self, chunk: &Chunk, attempt: u32) -> Result<Box<dyn ChunkWriter>, SinkError> {
        Ok(Box::new(PgChunkWriter {
            inner: self.inner.clone(),
            chunk: chunk.clone(),
            stage: self.inner.stage_name(&chunk.id, attempt),
            client: self.inner.connect().await?,
            copying: None,
            staged: false,
            rows: 0,
            bytes: 0,
            checksum: 0,
        }))
    }

    async fn publish(&self, chunk: &Chunk, files: &[OwnedFile]) -> Result<(), SinkError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut client = self.inner.connect().await?;
        for (i, f) in files.iter().enumerate() {
            self.inner.publish_one(&mut client, chunk, f).await?;
            if i == 0 && files.len() > 1 {
                failpoint::hit("mid_publish", chunk.index)?;
            }
        }
        Ok(())
    }

    /// Deletes the parts' rows from a range-sliced table, or the retired
    /// chunk's rows from a table sliced by `_chunk` (the quarantine); merge
    /// mode never removed rows, and keeps them.
    async fn clear_retired(&self, retired: &Chunk, parts: &[Chunk]) -> Result<(), SinkError> {
        let predicates: Vec<String> = match &self.inner.slice {
            Slice::Range(Some(_)) => parts
                .iter()
                .map(|p| self.inner.slice_predicate(p))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            Slice::ChunkColumn => self.inner.slice_predicate(retired)?.into_iter().collect(),
            Slice::Merge(_) | Slice::Range(None) => Vec::new(),
        };
        if predicates.is_empty() {
            return Ok(());
        }
        let Some(client) = self.inner.connect_to_table().await? else {
            return Ok(());
        };
        let what = format!(
            "removing retired chunk {} from {}",
            retired.id, self.inner.table
        );
        let sql = predicates
            .iter()
            .map(|p| format!("DELETE FROM {} WHERE {p};", self.inner.table.quoted()))
            .collect::<String>();
        client
            .batch_execute(&sql)
            .await
            .map_err(PgError::sql(&what))?;
        Ok(())
    }

    /// Drops staging tables; the published "files" of a PostgreSQL target are
    /// rows that the next publish of their chunk replaces, so removing them
    /// is a no-op.
    async fn remove(&self, paths: &[String]) -> Result<(), SinkError> {
        let stages: Vec<&String> = paths
            .iter()
            .filter(|p| p.starts_with(&self.inner.prefix))
            .collect();
        if stages.is_empty() {
            return Ok(());
        }
        let client = self.inner.connect().await?;
        let sql: String = stages
            .iter()
            .map(|s| format!("DROP TABLE IF EXISTS {};", self.inner.qualified(s)))
            .collect();
        client
            .batch_execute(&sql)
            .await
            .map_err(PgError::sql(format!(
                "dropping staging tables of {}",
                self.inner.table
            )))?;
        Ok(())
    }

    async fn scan(&self) -> Result<TargetFiles, SinkError> {
        let client = self.inner.connect().await?;
        let sql = format!(
            "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = {} AND starts_with(tablename, $1)",
            self.inner.schema_literal()
        );
        let rows = client
            .query(&sql, &[&self.inner.prefix])
            .await
            .map_err(PgError::sql(format!(
                "listing staging tables of {}",
                self.inner.table
            )))?;
        Ok(TargetFiles {
            published: Default::default(),
            staged: rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        })
    }

    async fn publish_statements(
        &self,
        chunk: &Chunk,
        files: &[OwnedFile],
    ) -> Result<Option<(String, String)>, SinkError> {
        let client = self.inner.connect().await?;
        let mut sql = String::new();
        for f in files {
            let rows = staged_rows(&f.path);
            if let Some(s) = self
                .inner
                .publish_sql(&client, chunk, &f.staged, rows)
                .await?
            {
                sql.push_str(&s);
            }
        }
        Ok(Some((self.inner.url.clone(), sql)))
    }

    /// Replace deletes the rows already in the chunk's range in the same
    /// transaction that inserts its new ones.
    fn empty_chunks_change_it(&self) -> bool {
        true
    }
}

impl Target for PgSink {
    fn describe(&self) -> String {
        self.inner.shown.clone()
    }
}
