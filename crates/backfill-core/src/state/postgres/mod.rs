//! `[state] url = "postgres://..."`: a state store several `backfill run`
//! processes share, on one machine or many.
//!
//! Nobody locks the job. Instead each chunk is leased: a process claims it
//! with one conditional `UPDATE` (it must be pending or failed, or held by a
//! process whose lease ran out), renews its leases from a heartbeat thread,
//! and can commit only while it still holds the lease. A process that dies
//! stops renewing; after `[state] lease` its chunks can be claimed again.
//!
//! The `StateStore` trait is synchronous (SQLite is), so the blocking
//! `postgres` client runs on a thread of its own and calls are sent to it:
//! the async runner never blocks on a runtime inside a runtime.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::plan::Chunk;
use crate::spec::{PgStateSpec, quote_ident};
use crate::state::{
    ChunkMetrics, ChunkRecord, ChunkStatus, JobOwner, LockHolder, OwnedFile, PlanSync,
    RecordedOwner, Renames, StateError, StateStore, decode_bound, encode_bound, hostname,
};
use postgres::{Client, Transaction};

use crate::retry::ErrorClass;
use postgres::error::SqlState;

mod store;

/// tokio-postgres's `Display` says only "db error"; the server's message,
/// detail and hint are what a user needs. (The blocking `postgres` client's
/// error is the same type.)
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            if let Some(hint) = crate::pgtls::tls_hint(e) {
                s.push_str(&format!(" ({hint})"));
            }
            s
        }
    }
}

/// Connection trouble, serialization failures, deadlocks and resource
/// shortages are worth a retry; everything else is the job's fault.
pub fn is_transient(e: &postgres::Error) -> bool {
    if crate::pgtls::is_tls_refusal(e) {
        return false;
    }
    match e.code() {
        None => e.is_closed() || e.as_db_error().is_none(),
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("40")
                || c.starts_with("53")
                || c.starts_with("57P")
                || *code == SqlState::LOCK_NOT_AVAILABLE
        }
    }
}

/// PostgreSQL's errors as the state store classifies them: connection
/// trouble, serialization failures and deadlocks pass.
fn pg_class(e: &postgres::Error) -> ErrorClass {
    if is_transient(e) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

type Task = Box<dyn FnOnce(&mut Client) + Send>;

pub struct PgStateStore {
    tx: Mutex<mpsc::Sender<Task>>,
    shown: String,
    job: String,
    /// This process, as lease holder: `pid@host`.
    me: String,
    lease_secs: f64,
    /// To recognise a target in the same database.
    url: String,
    /// The lease heartbeat's connection settings, TLS included.
    connect: Connect,
    /// `[range] ordered`: a chunk is claimed only once every chunk before
    /// it is committed, so processes sharing the state keep the order.
    ordered: bool,
    stop: Arc<AtomicBool>,
    /// SQL fragments with the schema quoted in.
    t: Tables,
}

#[derive(Clone)]
struct Tables {
    schema: String,
    jobs: String,
    runs: String,
    chunks: String,
    files: String,
    garbage: String,
    attempts: String,
    notes: String,
}

impl Tables {
    fn new(schema: &str) -> Tables {
        let q = quote_ident(schema);
        let t = |name: &str| format!("{q}.{}", quote_ident(name));
        Tables {
            schema: q.clone(),
            jobs: t("jobs"),
            runs: t("runs"),
            chunks: t("chunks"),
            files: t("chunk_files"),
            garbage: t("garbage"),
            attempts: t("attempts"),
            notes: t("notes"),
        }
    }

    /// The holders of the job's live leases (`$1`: the job).
    fn live_holders(&self) -> String {
        format!(
            "SELECT DISTINCT leased_by FROM {} WHERE job = $1 AND lease_until >= now() \
             AND leased_by IS NOT NULL",
            self.chunks
        )
    }

    fn ddl(&self) -> String {
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {jobs} (job text PRIMARY KEY, fingerprint text NOT NULL);
             CREATE TABLE IF NOT EXISTS {runs} (
                run_id bigserial PRIMARY KEY, job text NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz,
                pid integer NOT NULL, host text NOT NULL, status text NOT NULL, args text NOT NULL);
             CREATE TABLE IF NOT EXISTS {chunks} (
                job text NOT NULL, chunk_id text NOT NULL, idx bigint NOT NULL, lo text, hi text,
                status text NOT NULL, attempts integer NOT NULL DEFAULT 0, metrics text,
                last_error text, updated_at timestamptz, run_id bigint,
                leased_by text, lease_until timestamptz,
                PRIMARY KEY (job, chunk_id));
             CREATE TABLE IF NOT EXISTS {files} (
                job text NOT NULL, chunk_id text NOT NULL, path text NOT NULL, staged text NOT NULL,
                published boolean NOT NULL DEFAULT false, PRIMARY KEY (job, chunk_id, path));
             CREATE TABLE IF NOT EXISTS {garbage} (
                job text NOT NULL, path text NOT NULL, since timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (job, path));
             CREATE TABLE IF NOT EXISTS {attempts} (
                job text NOT NULL, chunk_id text NOT NULL, attempt integer NOT NULL,
                run_id bigint, worker text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
                finished_at timestamptz, outcome text NOT NULL, error text,
                PRIMARY KEY (job, chunk_id, attempt));
             ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS target text;
             ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS target_key text;
             ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS chunk_ids integer;
             CREATE TABLE IF NOT EXISTS {notes} (
                job text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (job, key));",
            schema = self.schema,
            jobs = self.jobs,
            runs = self.runs,
            chunks = self.chunks,
            files = self.files,
            garbage = self.garbage,
            attempts = self.attempts,
            notes = self.notes,
        )
    }
}

/// A connection string read once: the settings and TLS connector every
/// connection of the store (its own, the lease heartbeat's) is opened with.
#[derive(Clone)]
struct Connect {
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Connect {
    fn new(url: &str) -> Result<Connect, String> {
        let p = crate::pgtls::prepare(url).map_err(|e| match e {
            crate::pgtls::SetupError::Config(e) => describe(&e),
            e => e.to_string(),
        })?;
        Ok(Connect {
            config: p.config.into(),
            tls: p.tls,
        })
    }

    fn client(&self) -> Result<Client, postgres::Error> {
        self.config.connect(self.tls.clone())
    }
}

impl PgStateStore {
    /// Connects, creates the state tables if needed and starts the lease
    /// heartbeat.
    pub fn open(spec: &PgStateSpec, job: &str) -> Result<PgStateStore, StateError> {
        let shown = spec.shown.clone();
        let err_shown = shown.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StateError>>();
        let (tx, rx) = mpsc::channel::<Task>();
        let connect = Connect::new(&spec.url).map_err(|message| StateError::Remote {
            store: shown.clone(),
            message,
            class: ErrorClass::Permanent,
        })?;
        let connect_state = connect.clone();
        let tables = Tables::new(&spec.schema);
        let ddl = tables.ddl();
        std::thread::Builder::new()
            .name("backfill-pg-state".into())
            .spawn(move || {
                let connected = connect_state.client().and_then(|mut c| {
                    c.batch_execute(
                        "SET TIME ZONE 'UTC'; SET application_name = 'backfill state'; \
                         SET standard_conforming_strings = on",
                    )?;
                    // Two processes creating the tables at once would collide.
                    let mut t = c.transaction()?;
                    t.execute("SELECT pg_advisory_xact_lock(4242424242)", &[])?;
                    t.batch_execute(&ddl)?;
                    t.commit()?;
                    Ok(c)
                });
                let mut client = match connected {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(StateError::Remote {
                            store: err_shown,
                            message: describe(&e),
                            class: pg_class(&e),
                        }));
                        return;
                    }
                };
                while let Ok(task) = rx.recv() {
                    task(&mut client);
                }
            })
            .map_err(|e| StateError::Remote {
                store: shown.clone(),
                message: format!("cannot start the state thread: {e}"),
                class: ErrorClass::Transient,
            })?;
        ready_rx.recv().map_err(|_| StateError::Remote {
            store: shown.clone(),
            message: "the state thread stopped".into(),
            class: ErrorClass::Permanent,
        })??;
        let store = PgStateStore {
            tx: Mutex::new(tx),
            shown,
            job: job.to_string(),
            me: LockHolder::current().lease_name(),
            lease_secs: spec.lease.as_secs_f64(),
            url: spec.url.clone(),
            connect,
            ordered: false,
            stop: Arc::new(AtomicBool::new(false)),
            t: tables,
        };
        store.start_heartbeat();
        Ok(store)
    }

    /// Claims keep the chunks' order across processes (`[range] ordered`).
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Renews this process's leases every third of the lease time, on a
    /// connection of its own: behind a long state call (a chunk's publish
    /// in the same database runs its whole DELETE and INSERT there) the
    /// leases of the other chunks would lapse while the process is well.
    /// Every chunk it holds is renewed until done: running ones, and
    /// committed ones it runs again or is publishing (a lease ends, set to
    /// NULL, when the chunk's work does).
    fn start_heartbeat(&self) {
        let stop = self.stop.clone();
        let every = Duration::from_secs_f64((self.lease_secs / 3.0).max(0.2));
        let sql = format!(
            "UPDATE {} SET lease_until = now() + make_interval(secs => $3) \
             WHERE job = $1 AND leased_by = $2 AND lease_until IS NOT NULL \
             AND status IN ('running', 'committed')",
            self.t.chunks
        );
        let (job, me, secs, connect) = (
            self.job.clone(),
            self.me.clone(),
            self.lease_secs,
            self.connect.clone(),
        );
        let _ = std::thread::Builder::new()
            .name("backfill-lease".into())
            .spawn(move || {
                let step = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = match connect.client().and_then(|mut c| {
                            c.batch_execute("SET application_name = 'backfill lease'")?;
                            Ok(c)
                        }) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                tracing::warn!(
                                    "renewing chunk leases: cannot connect: {}",
                                    describe(&e)
                                );
                                None
                            }
                        };
                    }
                    if let Some(c) = client.as_mut()
                        && let Err(e) = c.execute(&sql, &[&job, &me, &secs])
                    {
                        tracing::warn!("renewing chunk leases failed: {}", describe(&e));
                        client = None;
                    }
                }
            });
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &Ctx) -> Result<T, CallError> + Send + 'static,
    ) -> Result<T, StateError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let ctx = Ctx {
            job: self.job.clone(),
            me: self.me.clone(),
            lease_secs: self.lease_secs,
            t: self.t.clone(),
        };
        let task: Task = Box::new(move |c: &mut Client| {
            let _ = reply_tx.send(f(c, &ctx));
        });
        // The thread ends only with its connection, which is not
        // reopened: asking again cannot help.
        let gone = || StateError::Remote {
            store: self.shown.clone(),
            message: "the state connection is gone".into(),
            class: ErrorClass::Permanent,
        };
        {
            let tx = self.tx.lock().map_err(|_| gone())?;
            tx.send(task).map_err(|_| gone())?;
        }
        match reply_rx.recv().map_err(|_| gone())? {
            Ok(v) => Ok(v),
            Err(CallError::State(e)) => Err(e),
            Err(CallError::Pg(e)) => Err(StateError::Remote {
                store: self.shown.clone(),
                message: describe(&e),
                class: pg_class(&e),
            }),
        }
    }

    /// Per chunk: how many attempts committed and which processes made them,
    /// for tests that prove exactly-once.
    pub fn commit_counts(&self) -> Result<BTreeMap<String, (u64, Vec<String>)>, StateError> {
        self.call(|c, x| {
            let rows = c.query(
                &format!(
                    "SELECT chunk_id, count(*), array_agg(worker ORDER BY worker) FROM {} \
                     WHERE job = $1 AND outcome = 'committed' GROUP BY chunk_id",
                    x.t.attempts
                ),
                &[&x.job],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        (r.get::<_, i64>(1) as u64, r.get::<_, Vec<String>>(2)),
                    )
                })
                .collect())
        })
    }
}

impl Drop for PgStateStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Ctx {
    job: String,
    me: String,
    lease_secs: f64,
    t: Tables,
}

enum CallError {
    Pg(postgres::Error),
    State(StateError),
}

impl From<postgres::Error> for CallError {
    fn from(e: postgres::Error) -> Self {
        CallError::Pg(e)
    }
}

fn move_to_garbage(t: &mut Transaction, x: &Ctx, chunk: &str) -> Result<(), postgres::Error> {
    t.execute(
        &format!(
            "INSERT INTO {g} (job, path) SELECT job, path FROM {f} WHERE job = $1 AND chunk_id = $2 \
             ON CONFLICT DO NOTHING",
            g = x.t.garbage,
            f = x.t.files
        ),
        &[&x.job, &chunk],
    )?;
    Ok(())
}

/// The commit point, only while this process holds the chunk's lease: the
/// chunk becomes committed with `files`, its previous files become garbage
/// (returned).
fn commit_in(
    t: &mut Transaction,
    x: &Ctx,
    run_id: i64,
    chunk: &str,
    attempt: u32,
    metrics: &str,
    files: &[OwnedFile],
) -> Result<Vec<String>, CallError> {
    let held = t.execute(
        &format!(
            "UPDATE {} SET status = 'committed', metrics = $4, last_error = NULL, updated_at = now(),
                run_id = $5, lease_until = now() + make_interval(secs => $6)
             WHERE job = $1 AND chunk_id = $2 AND leased_by = $3",
            x.t.chunks
        ),
        &[&x.job, &chunk, &x.me, &metrics, &run_id, &x.lease_secs],
    )?;
    if held == 0 {
        return Err(CallError::State(StateError::LeaseLost {
            chunk: chunk.to_string(),
        }));
    }
    let superseded: Vec<String> = t
        .query(
            &format!(
                "SELECT path FROM {} WHERE job = $1 AND chunk_id = $2 ORDER BY path",
                x.t.files
            ),
            &[&x.job, &chunk],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    move_to_garbage(t, x, chunk)?;
    t.execute(
        &format!("DELETE FROM {} WHERE job = $1 AND chunk_id = $2", x.t.files),
        &[&x.job, &chunk],
    )?;
    for f in files {
        t.execute(
            &format!("DELETE FROM {} WHERE job = $1 AND path = $2", x.t.garbage),
            &[&x.job, &f.path],
        )?;
        t.execute(
            &format!(
                "INSERT INTO {} (job, chunk_id, path, staged) VALUES ($1, $2, $3, $4)",
                x.t.files
            ),
            &[&x.job, &chunk, &f.path, &f.staged],
        )?;
    }
    t.execute(
        &format!(
            "UPDATE {} SET finished_at = now(), outcome = 'committed' \
             WHERE job = $1 AND chunk_id = $2 AND attempt = $3",
            x.t.attempts
        ),
        &[&x.job, &chunk, &(attempt as i32)],
    )?;
    let new: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    Ok(superseded
        .into_iter()
        .filter(|p| !new.contains(p.as_str()))
        .collect())
}

/// The chunk's files are published: its lease is no longer needed to keep
/// other processes from publishing them.
fn published_in(t: &mut Transaction, x: &Ctx, chunk: &str) -> Result<(), postgres::Error> {
    t.execute(
        &format!(
            "UPDATE {} SET published = true WHERE job = $1 AND chunk_id = $2",
            x.t.files
        ),
        &[&x.job, &chunk],
    )?;
    t.execute(
        &format!(
            "UPDATE {} SET lease_until = NULL WHERE job = $1 AND chunk_id = $2 AND status = 'committed'",
            x.t.chunks
        ),
        &[&x.job, &chunk],
    )?;
    Ok(())
}
