//! PostgreSQL as source and target, against the real server that
//! `scripts/test.sh` starts (`BACKFILL_TEST_PG_URL`). Each test works in a
//! schema of its own. Expected figures come from DuckDB over the source
//! Parquet files; the raw rows reach PostgreSQL through DuckDB's CSV and
//! PostgreSQL's own `COPY ... (FORMAT csv)`, not through `backfill`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::SinkExt;

use crate::harness::*;
use crate::quality::{assert_months_equal, expected_global, expected_per_rule};

fn pg_url() -> String {
    std::env::var("BACKFILL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "BACKFILL_TEST_PG_URL is not set: run the suite through scripts/test.sh, which starts \
             a throwaway PostgreSQL (scripts/pg.sh)"
        )
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A schema of this test's own, dropped at the end.
pub(crate) struct Pg {
    pub(crate) url: String,
    pub(crate) schema: String,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    pub(crate) fn new(name: &str) -> Pg {
        Pg::on(pg_url(), name)
    }

    /// A schema of its own on the server at `url`.
    fn on(url: String, name: &str) -> Pg {
        let rt = runtime();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
            tokio::spawn(conn);
            client
        });
        let schema = format!("t_{name}_{}", std::process::id());
        let pg = Pg {
            url,
            schema,
            rt,
            client,
        };
        pg.exec(&format!(
            "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}; SET TIME ZONE 'UTC'",
            pg.schema
        ));
        pg
    }

    /// A new connection, after the server restarted.
    fn reconnect(&mut self) {
        let url = self.url.clone();
        self.client = self.rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("reconnect to PostgreSQL");
            tokio::spawn(conn);
            client
        });
        self.exec("SET TIME ZONE 'UTC'");
    }

    pub(crate) fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Rows as text, NULL as "NULL".
    pub(crate) fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let msgs = self
            .rt
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The first value, or `None` when the query fails (a table not there yet).
    pub(crate) fn try_one(&self, sql: &str) -> Option<String> {
        let msgs = self.rt.block_on(self.client.simple_query(sql)).ok()?;
        msgs.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
    }

    fn one(&self, sql: &str) -> String {
        self.rows(sql)[0][0].clone()
    }

    /// The demo source as the table `raw` (with an index on the range column).
    fn load_demo(&self, demo: &Demo) {
        let csv = demo.path().join("raw.csv");
        duckdb(&format!(
            "COPY (SELECT * FROM read_parquet('{}')) TO '{}' (HEADER)",
            demo.source_glob(),
            csv.display()
        ));
        self.exec(&format!(
            "CREATE TABLE {}.raw (transaction_id bigint, customer_id bigint, created_at timestamp, \
             amount double precision, status text, region text, category text, email text); \
             CREATE INDEX ON {0}.raw (created_at)",
            self.schema
        ));
        let data = std::fs::read(&csv).expect("read csv");
        let sql = format!("COPY {}.raw FROM STDIN (FORMAT csv, HEADER)", self.schema);
        self.rt.block_on(async {
            let sink = self.client.copy_in(sql.as_str()).await.expect("copy in");
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(data)).await.expect("send csv");
            sink.finish().await.expect("finish copy");
        });
    }

    /// Per month: rows and sum(amount), like `expected_global`.
    fn months(&self, table: &str) -> Vec<Vec<serde_json::Value>> {
        self.rows(&format!(
            "SELECT extract(month FROM created_at)::int AS m, count(*), round(sum(amount)::numeric, 2) \
             FROM {}.{table} GROUP BY m ORDER BY m",
            self.schema
        ))
        .into_iter()
        .map(|r| {
            vec![
                serde_json::json!(r[0].parse::<i64>().unwrap()),
                serde_json::json!(r[1].parse::<i64>().unwrap()),
                serde_json::json!(r[2].parse::<f64>().unwrap()),
            ]
        })
        .collect()
    }

    /// Count and an order-independent digest of every row of a table
    /// (without the quarantine's `_run`, which numbers the run that wrote it).
    fn fingerprint(&self, table: &str) -> (String, String) {
        let r = self.rows(&format!(
            "SELECT count(*), coalesce(md5(string_agg(j, '|' ORDER BY j)), '') \
             FROM (SELECT (to_jsonb(t) - '_run')::text AS j FROM {}.{table} t) rows",
            self.schema
        ));
        (r[0][0].clone(), r[0][1].clone())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.rt.block_on(
            self.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)),
        );
    }
}

pub(crate) const PG_ENV: &str = "BF_PG_URL";

/// Points the demo job's source at `schema.raw` in PostgreSQL.
fn source_to_pg(demo: &Demo, pg: &Pg, extra: &str) {
    let schema = pg.schema.clone();
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"          # parquet | csv | json (newline-delimited)\npath = \"source/\"",
            &format!("format = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.raw\"\n{extra}\n#"),
        )
    });
}

/// Points the demo job's target (and quarantine) at PostgreSQL.
pub(crate) fn target_to_pg(demo: &Demo, pg: &Pg, table: &str, mode: &str) {
    let schema = pg.schema.clone();
    demo.edit_job(|s| {
        let start = s.find("[quarantine]").expect("quarantine section");
        let end = s[start..].find("[validate]").expect("validate section") + start;
        let s = format!("{}{}", &s[..start], &s[end..]);
        let start = s.find("[target]").expect("target section");
        let end = s[start..].find("[run]").expect("run section") + start;
        format!(
            "{}[target]\nformat = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.{table}\"\nmode = \"{mode}\"\nkeys = [\"transaction_id\"]\n\n{}",
            &s[..start],
            &s[end..]
        )
    });
}

fn run_pg(demo: &Demo, pg: &Pg, args: &[&str]) -> std::process::Output {
    let job = demo.job_str();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    demo.run_env(&all, &[(PG_ENV, &pg.url)])
}

fn run_pg_ok(demo: &Demo, pg: &Pg, args: &[&str]) -> std::process::Output {
    let out = run_pg(demo, pg, args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    out
}

fn quarantine_per_rule(pg: &Pg, table: &str) -> Vec<Vec<serde_json::Value>> {
    pg.rows(&format!(
        "SELECT _rule, count(*) FROM {}.{table} GROUP BY _rule ORDER BY _rule",
        pg.schema
    ))
    .into_iter()
    .map(|r| {
        vec![
            serde_json::json!(r[0]),
            serde_json::json!(r[1].parse::<i64>().unwrap()),
        ]
    })
    .collect()
}

#[test]
fn postgres_source_to_parquet_matches_duckdb() {
    let pg = Pg::new("src");
    let demo = Demo::new(12_000, "\"7d\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "max_connections = 2");
    let out = run_pg_ok(&demo, &pg, &["run"]);
    let (months, dups) = expected_global(&demo);
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_months_equal(&months, &actual);
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["totals"]["duplicates"], dups, "{}", text(&out));
    // Each chunk's predicate went to the server: every row read once.
    assert_eq!(status["totals"]["rows_read"], 12_000);
    // Idempotent, and `validate` re-reads the source from PostgreSQL.
    let again = run_pg_ok(&demo, &pg, &["run"]);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn parquet_to_postgres_replace_and_merge_match_duckdb() {
    for mode in ["replace", "merge"] {
        let pg = Pg::new(mode);
        let demo = Demo::new(10_000, "\"1 month\"");
        let (months, _) = expected_global(&demo);
        target_to_pg(&demo, &pg, "tx", mode);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_months_equal(&months, &pg.months("tx"));
        assert_eq!(
            quarantine_per_rule(&pg, "tx_quarantine"),
            expected_per_rule(&demo),
            "mode {mode}"
        );
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) - count(DISTINCT transaction_id) FROM {}.tx",
                pg.schema
            )),
            "0"
        );
        // Running every chunk again leaves exactly the same table.
        let before = pg.fingerprint("tx");
        let q_before = pg.fingerprint("tx_quarantine");
        run_pg_ok(&demo, &pg, &["reset", "--all"]);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            pg.fingerprint("tx"),
            before,
            "mode {mode}: re-run changed the table"
        );
        assert_eq!(pg.fingerprint("tx_quarantine"), q_before, "mode {mode}");
        // `validate` reads each chunk's rows back from the table.
        let v = run_pg(&demo, &pg, &["validate"]);
        assert_eq!(code(&v), 0, "mode {mode}: {}", text(&v));
        pg.exec(&format!(
            "UPDATE {0}.tx SET amount = amount + 1 WHERE transaction_id = (SELECT min(transaction_id) FROM {0}.tx)",
            pg.schema
        ));
        let v = run_pg(&demo, &pg, &["validate"]);
        assert_eq!(
            code(&v),
            3,
            "mode {mode}: an altered row must not validate: {}",
            text(&v)
        );
        assert!(stdout(&v).contains("MISMATCH in 1 of"), "{}", text(&v));
        pg.exec(&format!(
            "UPDATE {0}.tx SET amount = amount - 1 WHERE transaction_id = (SELECT min(transaction_id) FROM {0}.tx)",
            pg.schema
        ));
        // No staging tables are left behind.
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' AND tablename LIKE '\\_bf\\_%'",
                pg.schema
            )),
            "0"
        );
    }
}

#[test]
fn postgres_to_postgres_with_a_rate_limit() {
    let pg = Pg::new("p2p");
    let demo = Demo::new(6_000, "\"1 month\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "max_rows_per_second = 4000");
    target_to_pg(&demo, &pg, "out", "replace");
    let started = Instant::now();
    run_pg_ok(&demo, &pg, &["run"]);
    let took = started.elapsed();
    // 6,000 rows read for the dedup index and 6,000 for the chunks, at 4,000/s.
    assert!(
        took >= Duration::from_millis(2_900),
        "a source capped at 4000 rows/s read 12000 rows in {took:?}"
    );
    let (months, _) = expected_global(&demo);
    assert_months_equal(&months, &pg.months("out"));
}

#[test]
fn a_crash_at_any_step_of_a_postgres_commit_is_repaired() {
    let reference = {
        let pg = Pg::new("ref");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        run_pg_ok(&demo, &pg, &["run"]);
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"))
    };
    for point in [
        "after_write:3",
        "after_commit:2",
        "after_publish:4",
        "after_cleanup:5",
    ] {
        let pg = Pg::new("crash");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        let job = demo.job_str();
        let out = demo.run_env(
            &["run", &job],
            &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", point)],
        );
        assert_ne!(
            code(&out),
            0,
            "{point} should have aborted the run: {}",
            text(&out)
        );
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference,
            "after a crash at {point}"
        );
    }
    // kill -9 at moments spread over a run.
    for delay_ms in [150u64, 400, 700] {
        let pg = Pg::new("kill");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        demo.run_killed_after(&[(PG_ENV, &pg.url)], delay_ms);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference,
            "after kill -9 at {delay_ms} ms"
        );
    }
}

/// A PostgreSQL server of one test's own (`scripts/pg.sh`), for tests that
/// crash it: the suite's shared server must stay up for the others.
struct PrivateServer {
    url: String,
    dir: String,
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
        // The server inherits the script's stderr: a pipe there would
        // never close, so it goes to the test's own.
        let out = Command::new("bash")
            .args([script, "start"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/pg.sh");
        assert!(out.status.success(), "scripts/pg.sh start: {}", text(&out));
        let exports = String::from_utf8_lossy(&out.stdout);
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{name} not in {exports}"))
                .to_string()
        };
        PrivateServer {
            url: value("BACKFILL_TEST_PG_URL"),
            dir: value("BACKFILL_TEST_PG_DIR"),
        }
    }

    /// `pg_ctl restart -m immediate`: the server stops as in a crash (no
    /// checkpoint) and recovers on start, which empties unlogged tables.
    fn crash_and_restart(&self) {
        let bindir = std::fs::read_to_string(format!("{}/bindir", self.dir)).expect("bindir");
        let pg_ctl = format!("{}/pg_ctl", bindir.trim());
        let data = format!("{}/data", self.dir);
        let args = [
            pg_ctl.as_str(),
            "-D",
            &data,
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "restart",
        ];
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n");
        // pg_ctl's output goes to the server log: the restarted server
        // would hold a pipe open.
        let log = std::fs::File::options()
            .append(true)
            .open(format!("{}/restart.log", self.dir))
            .or_else(|_| std::fs::File::create(format!("{}/restart.log", self.dir)))
            .expect("restart log");
        let mut cmd = if root.unwrap_or(false) {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let status = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("run pg_ctl");
        let shown =
            std::fs::read_to_string(format!("{}/restart.log", self.dir)).unwrap_or_default();
        assert!(status.success(), "pg_ctl restart: {shown}");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
        let _ = Command::new("bash")
            .args([script, "stop", &self.dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_stage_emptied_by_a_database_crash_is_never_published() {
    let server = PrivateServer::start();
    let mut pg = Pg::on(server.url.clone(), "restart");
    let demo = Demo::new(6_000, "\"1 month\"");
    let (months, _) = expected_global(&demo);
    target_to_pg(&demo, &pg, "tx", "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    let reference = (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"));
    // March runs again and commits in the (SQLite) state; the process dies
    // before it publishes the staged rows.
    let job = demo.job_str();
    let out = demo.run_env(
        &["run", &job, "--from", "2023-03-01", "--to", "2023-04-01"],
        &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", "after_commit:1")],
    );
    assert_ne!(
        code(&out),
        0,
        "the failpoint must stop the run:\n{}",
        text(&out)
    );
    // The database crashes: its unlogged staging tables come back empty.
    server.crash_and_restart();
    pg.reconnect();
    let out = run_pg_ok(&demo, &pg, &["run"]);
    assert!(
        stdout(&out).contains("1 of 1 selected chunks committed"),
        "the chunk whose stage was lost must run again:\n{}",
        text(&out)
    );
    assert_months_equal(&months, &pg.months("tx"));
    assert_eq!(
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
        reference
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn postgres_types_map_to_arrow_and_back() {
    let pg = Pg::new("types");
    let s = &pg.schema;
    pg.exec(&format!(
        "CREATE TABLE {s}.typed (id bigint, i2 smallint, i4 integer, f4 real, f8 double precision, \
         n numeric(12,2), t text, v varchar(10), c char(3), b boolean, d date, ts timestamp, \
         tz timestamptz, u uuid, j json, jb jsonb, by bytea, ia integer[], ta text[], na numeric(6,2)[]);
         INSERT INTO {s}.typed VALUES
         (1, -2, 40000, 1.5, 2.25, 12345.67, 'héllo', 'v', 'abc', true, '2023-03-04', \
          '2023-03-04 05:06:07.123456', '2023-03-04 05:06:07+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
          '{{\"a\": 1}}', '{{\"b\": [1, 2]}}', '\\x00ff', '{{1,NULL,3}}', '{{\"x y\",z}}', '{{1.50}}'),
         (2, NULL, NULL, NULL, NULL, -0.01, NULL, NULL, NULL, NULL, NULL, '2023-06-01', NULL, NULL, NULL, NULL, NULL, NULL, '{{}}', NULL)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[source]\nformat = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{s}.typed\"\n\
             [range]\ncolumn = \"ts\"\nstart = \"2023-01-01\"\nend = \"2024-01-01\"\nchunk = \"1 month\"\n\
             [target]\npath = \"out\"\n"
        ),
    )
    .unwrap();
    let job_s = job.display().to_string();
    let out = Command::new(BIN)
        .args(["run", &job_s])
        .env(PG_ENV, &pg.url)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    let snippet = r#"
import pyarrow.dataset as ds, json, sys
t = ds.dataset(sys.argv[1], format="parquet").to_table().sort_by("id")
print(json.dumps({"types": {f.name: str(f.type) for f in t.schema},
                  "rows": [{k: (v.hex() if isinstance(v, bytes) else str(v)) for k, v in r.items()} for r in t.to_pylist()]}))
"#;
    let got = pyarrow(snippet, &dir.path().join("out").display().to_string());
    let types = &got["types"];
    for (col, ty) in [
        ("id", "int64"),
        ("i2", "int16"),
        ("i4", "int32"),
        ("f4", "float"),
        ("f8", "double"),
        ("n", "decimal128(12, 2)"),
        ("t", "string"),
        ("b", "bool"),
        ("d", "date32[day]"),
        ("ts", "timestamp[us]"),
        ("tz", "timestamp[us, tz=UTC]"),
        ("u", "string"),
        ("jb", "string"),
        ("by", "binary"),
        ("ia", "list<item: int32>"),
        ("ta", "list<item: string>"),
        ("na", "list<item: decimal128(6, 2)>"),
    ] {
        assert_eq!(types[col], ty, "column {col}: {types}");
    }
    let r = &got["rows"][0];
    assert_eq!(r["n"], "12345.67");
    assert_eq!(r["t"], "héllo");
    assert_eq!(r["c"], "abc");
    assert_eq!(r["d"], "2023-03-04");
    assert_eq!(r["ts"], "2023-03-04 05:06:07.123456");
    assert_eq!(r["tz"], "2023-03-04 03:06:07+00:00");
    assert_eq!(r["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(r["jb"], "{\"b\": [1, 2]}");
    assert_eq!(r["by"], "00ff");
    assert_eq!(r["ia"], "[1, None, 3]");
    assert_eq!(r["ta"], "['x y', 'z']");
    assert_eq!(r["na"], "[Decimal('1.50')]");
    assert_eq!(got["rows"][1]["ia"], "None");
    assert_eq!(got["rows"][1]["ta"], "[]");
    assert_eq!(got["rows"][1]["n"], "-0.01");
    assert_eq!(got["rows"][1]["i4"], "None");

    // An unsupported type is a clear error naming the column, exit 2.
    pg.exec(&format!("ALTER TABLE {s}.typed ADD COLUMN p point"));
    let out = Command::new(BIN)
        .args(["run", &job_s])
        .env(PG_ENV, &pg.url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        err.contains("column \"p\"") && err.contains("point"),
        "{}",
        text(&out)
    );
}

#[test]
fn hostile_table_names_are_quoted_never_executed() {
    let pg = Pg::new("evil");
    let s = &pg.schema;
    // Unqualified, as an injected statement would name it.
    let victim = format!("victim_{}", std::process::id());
    pg.exec(&format!(
        "DROP TABLE IF EXISTS public.{victim}; CREATE TABLE public.{victim} (x int); INSERT INTO public.{victim} VALUES (1)"
    ));
    let demo = Demo::new(2_000, "\"1 month\"");
    let evil = format!("x\\\"; DROP TABLE {victim}; --");
    target_to_pg(&demo, &pg, &evil, "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    assert_eq!(
        pg.one(&format!("SELECT count(*) FROM public.{victim}")),
        "1"
    );
    pg.exec(&format!("DROP TABLE public.{victim}"));
    // The rows went into a table with that odd name.
    let name = format!("x\"; DROP TABLE {victim}; --");
    assert_eq!(
        pg.one(&format!(
            "SELECT count(*) > 0 FROM {s}.\"{}\"",
            name.replace('"', "\"\"")
        )),
        "t"
    );
}

#[test]
fn the_password_never_appears_in_any_output() {
    let pg = Pg::new("secret");
    let password = pg
        .url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("the test URL has a password");
    let demo = Demo::new(2_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    let job = demo.job_str();
    let wrong = pg.url.replace(&password, "WrongPassw0rd");
    let mut outputs = vec![
        demo.run_env(&["-v", "run", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["status", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["plan", &job, "--json"], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["validate", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(
            &["-v", "run", &job, "--from", "2023-01-01"],
            &[(PG_ENV, &wrong)],
        ),
    ];
    // A literal URL in the job file (no ${VAR}) is masked too.
    demo.edit_job(|s| s.replace(&format!("${{{PG_ENV}}}"), &pg.url));
    demo.run_ok(&["--dry-run"]);
    outputs.push(demo.run(&["-v", "run", &job]));
    outputs.push(demo.run(&["reset", &job, "--all"]));
    outputs.push(demo.run(&["-v", "run", &job]));
    let bad_host = pg.url.replace("127.0.0.1", "127.0.0.1:1");
    demo.edit_job(|s| s.replace(&pg.url, &bad_host));
    outputs.push(demo.run(&["-v", "run", &job]));
    // The password as a query parameter of a literal URL, in a job of its
    // own (its state is new: the target's identity is recorded there).
    let in_query = format!(
        "{}?application_name=x&password={password}",
        pg.url.replace(&format!(":{password}@"), "@")
    );
    let other = Demo::new(2_000, "\"1 month\"");
    target_to_pg(&other, &pg, "tx_query", "replace");
    other.edit_job(|s| s.replace(&format!("${{{PG_ENV}}}"), &in_query));
    let other_job = other.job_str();
    for args in [
        vec!["-v", "run", other_job.as_str()],
        vec!["status", other_job.as_str(), "--json"],
        vec!["plan", other_job.as_str(), "--json"],
        vec!["validate", other_job.as_str()],
    ] {
        outputs.push(other.run(&args));
    }
    assert_eq!(
        code(&outputs[outputs.len() - 4]),
        0,
        "{}",
        text(&outputs[outputs.len() - 4])
    );
    assert_not_stored(other.path(), &password);
    for out in &outputs {
        let all = text(out);
        assert!(!all.contains(&password), "password printed:\n{all}");
        assert!(!all.contains("WrongPassw0rd"), "password printed:\n{all}");
    }
    // The wrong password fails clearly, naming the masked URL.
    let failed = text(&outputs[4]);
    assert!(
        failed.contains("password authentication failed"),
        "{failed}"
    );
    // Nor is it stored.
    assert_not_stored(demo.path(), &password);
}

/// No file under `dir` but the job file holds `password`.
fn assert_not_stored(dir: &std::path::Path, password: &str) {
    for entry in walk(dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(password)
                    || entry.ends_with("backfill.toml"),
                "password stored in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Adds a shared PostgreSQL state store (schema of its own) to the job.
fn state_to_pg(demo: &Demo, pg: &Pg, lease: &str) {
    let schema = format!("{}_state", pg.schema);
    demo.edit_job(|s| {
        s.replace(
            "[state]\n",
            &format!(
                "[state]\nurl = \"${{{PG_ENV}}}\"\nschema = \"{schema}\"\nlease = \"{lease}\"\n"
            ),
        )
    });
}

/// Per chunk: (commits, the processes that made them), from the shared state.
fn commits(pg: &Pg) -> Vec<(String, i64, i64)> {
    pg.rows(&format!(
        "SELECT chunk_id, count(*), count(DISTINCT worker) FROM {}_state.attempts \
         WHERE outcome = 'committed' GROUP BY chunk_id ORDER BY chunk_id",
        pg.schema
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap()))
    .collect()
}

fn spawn_run(demo: &Demo, pg: &Pg) -> std::process::Child {
    spawn_with(demo, pg, &["run"], &[])
}

#[test]
fn two_processes_share_one_backfill_through_postgres_state() {
    let pg = Pg::new("shared");
    let demo = Demo::new(30_000, "\"7d\"");
    state_to_pg(&demo, &pg, "30s");
    let (months, dups) = expected_global(&demo);
    let a = spawn_run(&demo, &pg);
    let b = spawn_run(&demo, &pg);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let commits = commits(&pg);
    assert_eq!(commits.len(), 53, "every weekly chunk committed");
    assert!(
        commits.iter().all(|(_, n, _)| *n == 1),
        "a chunk committed twice: {commits:?}"
    );
    let workers = pg.one(&format!(
        "SELECT count(DISTINCT worker) FROM {}_state.attempts WHERE outcome = 'committed'",
        pg.schema
    ));
    assert_eq!(workers, "2", "both processes should have committed chunks");
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_months_equal(&months, &actual);
    assert_eq!(duplicate_rows(&demo), 0);
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["totals"]["duplicates"], dups);
    let again = run_pg_ok(&demo, &pg, &["run"]);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_killed_process_leases_expire_and_another_takes_over() {
    let pg = Pg::new("lease");
    let demo = Demo::new(30_000, "\"7d\"");
    state_to_pg(&demo, &pg, "2s");
    let reference = {
        let d = Demo::new(30_000, "\"7d\"");
        d.run_ok(&[]);
        target_fingerprint(&d)
    };
    // The first process dies (kill -9) holding leases on its running chunks.
    let mut first = spawn_run(&demo, &pg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pg.try_one(&format!(
            "SELECT count(*) FROM {}_state.chunks WHERE status = 'running'",
            pg.schema
        ));
        if running.as_deref().is_some_and(|n| n != "0") || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = first.kill();
    let _ = first.wait();
    // As if that process ran on another machine: its death cannot be seen
    // from here, only its lease running out.
    let held = pg.one(&format!(
        "WITH moved AS (UPDATE {}_state.chunks SET leased_by = '1@elsewhere' \
         WHERE status = 'running' RETURNING 1) SELECT count(*) FROM moved",
        pg.schema
    ));
    // A second process finishes the job: chunks still leased to the dead one
    // are taken over once their leases run out.
    let started = Instant::now();
    let out = run_pg_ok(&demo, &pg, &["run"]);
    let mut rounds = 0;
    while !stdout(&run_pg_ok(&demo, &pg, &["run"])).contains("nothing to do") {
        rounds += 1;
        assert!(rounds < 5, "the job never finished: {}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        target_fingerprint(&demo),
        reference,
        "{held} chunk(s) were held by the killed process; took {:?}\n{}",
        started.elapsed(),
        text(&out)
    );
    assert!(commits(&pg).iter().all(|(_, n, _)| *n == 1));
    assert_eq!(duplicate_rows(&demo), 0);
    eprintln!(
        "lease takeover: {held} chunk(s) held by the killed process, finished {:?} later",
        started.elapsed()
    );
    assert_ne!(held, "0", "the kill should have left leased chunks behind");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "leased chunks were taken over before their lease could run out"
    );
}

#[test]
fn state_in_the_target_database_commits_and_publishes_in_one_transaction() {
    let reference = {
        let pg = Pg::new("oneref");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        run_pg_ok(&demo, &pg, &["run"]);
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"))
    };
    let setup = |name: &str| {
        let pg = Pg::new(name);
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        state_to_pg(&demo, &pg, "30s");
        (pg, demo)
    };
    // Aborts the run at `point`, checks that the table holds exactly the
    // rows of the chunks the state calls committed, then finishes the job.
    let crash = |name: &str, point: &str, committed: &str| {
        let (pg, demo) = setup(name);
        let out = demo.run_env(
            &["run", &demo.job_str(), "--parallel", "1"],
            &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", point)],
        );
        assert_ne!(code(&out), 0, "{}", text(&out));
        let s = format!("{}_state", pg.schema);
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM {s}.chunks WHERE status = 'committed'"
            )),
            committed
        );
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM {s}.chunk_files WHERE NOT published"
            )),
            "0"
        );
        let written = pg.one(&format!(
            "SELECT coalesce(sum((metrics::jsonb ->> 'rows_written')::bigint), 0) FROM {s}.chunks WHERE status = 'committed'"
        ));
        assert_eq!(pg.fingerprint("tx").0, written);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference
        );
        pg
    };
    // Aborted right after the transaction: the data and the state moved
    // together, with nothing left to publish.
    crash("onetx", "after_commit:3", "3");
    // Aborted inside the transaction: neither the rows nor the commit stay.
    let pg = crash("intx", "in_commit_txn:2", "1");
    assert!(commits(&pg).iter().all(|(_, n, _)| *n == 1));
}

#[test]
fn merge_refuses_null_keys_that_every_rerun_would_insert_again() {
    let pg = Pg::new("nullkey");
    let demo = Demo::new(4_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "merge");
    // Without the rule that quarantines NULL ids, they reach the merge.
    demo.edit_job(|s| s.replace("check = \"transaction_id IS NOT NULL\"", "check = \"true\""));
    let out = run_pg(&demo, &pg, &["run"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("merge key \"transaction_id\" is NULL in") && all.contains("IS NOT NULL"),
        "{all}"
    );
    // Chunks without NULL keys committed; the others failed, not retried.
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let failed = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .count();
    assert!(failed > 0, "{status}");
}

#[test]
fn processes_killed_at_random_never_commit_a_shared_chunk_twice() {
    let reference = {
        let d = Demo::new(40_000, "\"7d\"");
        d.run_ok(&[]);
        target_fingerprint(&d)
    };
    let pg = Pg::new("chaos");
    let demo = Demo::new(40_000, "\"7d\"");
    state_to_pg(&demo, &pg, "2s");
    // Rounds of three processes at once; one of each round is killed -9.
    let mut killed = 0;
    for (round, delay_ms) in [120u64, 250, 400].into_iter().enumerate() {
        let mut procs: Vec<_> = (0..3).map(|_| spawn_run(&demo, &pg)).collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = procs[round % 3].kill();
        for p in procs {
            let out = p.wait_with_output().unwrap();
            if out.status.code().is_none() {
                killed += 1;
                continue;
            }
            assert_eq!(
                code(&out),
                0,
                "round {round}: a surviving process failed: {}",
                text(&out)
            );
        }
    }
    assert!(
        killed >= 1,
        "no process was killed before it finished; make the job bigger"
    );
    // Whatever is left (chunks leased to killed processes), one more run
    // finishes after the leases run out.
    let mut rounds = 0;
    while !stdout(&run_pg_ok(&demo, &pg, &["run"])).contains("nothing to do") {
        rounds += 1;
        assert!(rounds < 6, "the job never finished");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(target_fingerprint(&demo), reference);
    assert_eq!(duplicate_rows(&demo), 0);
    let commits = commits(&pg);
    assert_eq!(commits.len(), 53);
    assert!(
        commits.iter().all(|(_, n, _)| *n == 1),
        "a chunk committed twice: {commits:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    eprintln!(
        "shared-state chaos: {killed} process(es) killed mid-run, every chunk committed once"
    );
}

#[test]
fn a_postgres_target_and_its_quarantine_gain_a_column() {
    let pg = Pg::new("evolve");
    let demo = Demo::new(3_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    demo.edit_job(|s| {
        s.replace(
            "date_part('day', created_at) AS day FROM source",
            "date_part('day', created_at) AS day, CAST(amount * 100 AS BIGINT) AS cents FROM source",
        )
    });
    let all = ["run", "--from", "2023-01-01", "--to", "2024-01-01"];
    let out = run_pg(&demo, &pg, &all);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("+ cents: Int64"), "{}", text(&out));
    demo.edit_job(|s| s.replace("[target]\n", "[target]\nschema = \"add_columns\"\n"));
    run_pg_ok(&demo, &pg, &all);
    let s = &pg.schema;
    assert_eq!(
        pg.one(&format!("SELECT count(*) FROM {s}.tx WHERE cents IS NULL")),
        "0"
    );
    assert_eq!(
        pg.one(&format!(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = 'tx_quarantine' AND column_name = 'cents'"
        )),
        "bigint"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn plan_estimates_postgres_chunks_with_explain() {
    let pg = Pg::new("estimate");
    let demo = Demo::new(12_000, "\"1 month\"");
    pg.load_demo(&demo);
    pg.exec(&format!("ANALYZE {}.raw", pg.schema));
    source_to_pg(&demo, &pg, "");
    let out = run_pg_ok(&demo, &pg, &["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    let chunks = plan["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 12);
    let mut total = 0i64;
    for c in chunks {
        let rows = int(&c["estimate"]["rows"]);
        // A month holds about 1,000 rows; the planner's histogram is coarse.
        assert!((500..=1_500).contains(&rows), "{c}");
        assert!(int(&c["estimate"]["bytes"]) > 0, "{c}");
        assert_eq!(c["estimate"]["empty"], false);
        total += rows;
    }
    assert!((10_800..=13_200).contains(&total), "{total}");
}

#[test]
fn a_replan_that_shrinks_the_range_leaves_no_rows_outside_it() {
    let pg = Pg::new("shrink");
    let demo = Demo::new(6_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    demo.without_quality();
    run_pg_ok(&demo, &pg, &["run"]);
    demo.edit_job(|s| {
        s.replace("end = \"2024-01-01\"", "end = \"2023-07-15\"")
            .replace("chunk = \"1 month\"", "chunk = \"7d\"")
    });
    run_pg_ok(&demo, &pg, &["run", "--replan"]);
    assert_eq!(
        pg.one(&format!(
            "SELECT count(*) FROM {}.tx WHERE created_at >= '2023-07-15'",
            pg.schema
        )),
        "0",
        "rows of the dropped range stay in the table"
    );
    let expected = duckdb(&format!(
        "SELECT count(*), sum(amount) FROM read_parquet('{}') \
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2023-07-15'",
        demo.source_glob()
    ));
    let actual = pg.rows(&format!(
        "SELECT count(*), sum(amount) FROM {}.tx",
        pg.schema
    ));
    assert_eq!(
        actual[0][0],
        int(&expected[0][0]).to_string(),
        "the table holds the new range's rows only"
    );
    let sum: f64 = actual[0][1].parse().expect("a sum");
    assert!(
        (sum - float(&expected[0][1])).abs() < 0.01,
        "{sum} against {}",
        expected[0][1]
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn literals_stay_literal_when_the_server_reads_backslashes_as_escapes() {
    // A database whose sessions default to standard_conforming_strings =
    // off: a partition value with a backslash, quoted the standard way,
    // would be read as an escape and match nothing, so a re-run would add
    // the partition's rows again instead of replacing them.
    let admin = Pg::new("scs_admin");
    let db = format!("bf_scs_{}", std::process::id());
    admin.exec(&format!("DROP DATABASE IF EXISTS {db}"));
    admin.exec(&format!("CREATE DATABASE {db}"));
    admin.exec(&format!(
        "ALTER DATABASE {db} SET standard_conforming_strings = off"
    ));
    let url = match admin.url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("a URL with a database: {}", admin.url),
    };
    {
        let pg = Pg::on(url, "scs");
        let demo = Demo::new(3_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        demo.without_quality();
        let source = demo.path().join("source");
        let file = demo.path().join("renamed.parquet");
        duckdb(&format!(
            "COPY (SELECT * REPLACE (CASE WHEN region = 'eu-west' THEN 'eu\\west' ELSE region END AS region) \
             FROM read_parquet('{}')) TO '{}' (FORMAT PARQUET)",
            demo.source_glob(),
            file.display()
        ));
        std::fs::remove_dir_all(&source).unwrap();
        std::fs::create_dir_all(&source).unwrap();
        std::fs::rename(&file, source.join("all.parquet")).unwrap();
        demo.edit_job(|s| {
            let start = s.find("[range]").expect("range section");
            let end = s.find("[transform]").expect("transform section");
            format!(
                "{}[range]\ncolumn = \"region\"\npartitions = [\"eu\\\\west\", \"us-east\"]\n\n{}",
                &s[..start],
                &s[end..]
            )
        });
        run_pg_ok(&demo, &pg, &["run"]);
        run_pg_ok(&demo, &pg, &["reset", "--all"]);
        run_pg_ok(&demo, &pg, &["run"]);
        let expected = duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}') WHERE region IN ('eu\\west', 'us-east')",
            demo.source_glob()
        ));
        assert_eq!(
            pg.one(&format!("SELECT count(*) FROM {}.tx", pg.schema)),
            int(&expected[0][0]).to_string(),
            "each partition's rows once"
        );
        let v = run_pg(&demo, &pg, &["validate"]);
        assert_eq!(code(&v), 0, "{}", text(&v));
    }
    admin.exec(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

#[test]
fn merge_never_replaces_a_newer_version_with_an_older_one() {
    // Issue 20: re-running an older window in merge mode put its older
    // versions back over keys a later chunk had updated.
    let pg = Pg::new("merge_versions");
    let demo = Demo::new(6_000, "\"7d\"");
    crate::dedup::dedup_per_chunk(&demo);
    target_to_pg(&demo, &pg, "tx", "merge");
    run_pg_ok(&demo, &pg, &["run"]);
    crate::dedup::newer_versions_in_april(&demo);
    // April's weeks run again (a source file under them is new).
    run_pg_ok(&demo, &pg, &["run"]);
    run_pg_ok(
        &demo,
        &pg,
        &["run", "--from", "2023-03-01", "--to", "2023-04-01"],
    );
    let table = pg.rows(&format!(
        "SELECT count(*)::text, sum(transaction_id)::text, round(sum(amount) * 100)::bigint::text FROM {}.tx",
        pg.schema
    ));
    assert_eq!(
        table[0],
        crate::dedup::latest_per_key(&demo),
        "rows, sum(id), sum(amount): the latest version of each key"
    );
}

/// Attempts per chunk, from the shared state.
fn attempts(pg: &Pg) -> Vec<(String, i64)> {
    pg.rows(&format!(
        "SELECT chunk_id, count(*) FROM {}_state.attempts GROUP BY chunk_id ORDER BY chunk_id",
        pg.schema
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap_or(-1)))
    .collect()
}

fn spawn_with(demo: &Demo, pg: &Pg, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let job = demo.job_str();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    let mut cmd = Command::new(BIN);
    cmd.args(&all)
        .env(PG_ENV, &pg.url)
        .env_remove("BACKFILL_FAILPOINTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn")
}

#[test]
fn two_containers_with_one_pid_and_host_never_hold_one_chunk_together() {
    // Issue 20: holders were `pid@host`, which two containers share (PID 1,
    // one host name): `claim` then let both hold one chunk.
    let pg = Pg::new("containers");
    let demo = Demo::new(20_000, "\"3d\"");
    state_to_pg(&demo, &pg, "30s");
    let container = [
        ("BACKFILL_HOLDER_PID", "1"),
        ("BACKFILL_HOLDER_HOST", "container"),
    ];
    let a = spawn_with(&demo, &pg, &["run"], &container);
    let b = spawn_with(&demo, &pg, &["run"], &container);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let twice: Vec<_> = attempts(&pg).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "chunks both processes ran: {twice:?}");
    let workers = pg.rows(&format!(
        "SELECT DISTINCT worker FROM {}_state.attempts ORDER BY 1",
        pg.schema
    ));
    assert_eq!(workers.len(), 2, "two holders, told apart: {workers:?}");
    assert!(
        workers.iter().all(|w| w[0].starts_with("1@container#")),
        "{workers:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_committed_chunk_run_again_stays_leased_until_done() {
    // Issue 20: a committed chunk re-run with --from/--to kept its status,
    // and the heartbeat renewed only running chunks: its lease lapsed
    // mid-run and another process took it too.
    let pg = Pg::new("rerun_lease");
    let demo = Demo::new(6_000, "\"1 month\"");
    state_to_pg(&demo, &pg, "1s");
    run_pg_ok(&demo, &pg, &["run"]);
    let before = attempts(&pg);
    let window = [
        "run",
        "--from",
        "2023-03-01",
        "--to",
        "2023-06-01",
        "--parallel",
        "3",
    ];
    // Each chunk is held 4 s (four leases) as it writes.
    let slow = spawn_with(
        &demo,
        &pg,
        &window,
        &[("BACKFILL_FAILPOINTS", "write:sleep=4000")],
    );
    // Once it holds all three, longer than a lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && pg
            .try_one(&format!(
                "SELECT count(*) FROM {}_state.attempts WHERE outcome = 'running'",
                pg.schema
            ))
            .as_deref()
            != Some("3")
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let other = spawn_with(&demo, &pg, &window, &[]);
    let (slow, other) = (
        slow.wait_with_output().unwrap(),
        other.wait_with_output().unwrap(),
    );
    assert_eq!(code(&slow), 0, "{}", text(&slow));
    assert_eq!(code(&other), 0, "{}", text(&other));
    let after = attempts(&pg);
    let more: Vec<(String, i64)> = after
        .iter()
        .zip(&before)
        .map(|((id, n), (_, m))| (id.clone(), n - m))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert_eq!(more.len(), 3, "March, April and May ran again: {more:?}");
    assert!(
        stdout(&slow).contains("3 of 3 selected chunks committed"),
        "{}",
        text(&slow)
    );
    // The second process found the chunks held: a lapsed lease would have
    // let it take them over mid-run (the first one's attempts then end
    // `interrupted`, and it leaves them).
    assert!(
        !text(&slow).contains("took it over"),
        "the second process took over chunks the first still ran:\n{}",
        text(&slow)
    );
    let interrupted = pg.one(&format!(
        "SELECT count(*) FROM {}_state.attempts WHERE outcome = 'interrupted'",
        pg.schema
    ));
    assert_eq!(interrupted, "0", "{more:?}");
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn unlock_refuses_a_holder_that_runs_on_this_host() {
    let demo = Demo::new(2_000, "\"1 month\"");
    let mut slow = Command::new(BIN)
        .args(["run", &demo.job_str()])
        .env("BACKFILL_FAILPOINTS", "read:sleep=20000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until it holds the lock (its chunks are running).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = None;
    while Instant::now() < deadline {
        let out = demo.run(&["unlock", &demo.job_str()]);
        if code(&out) != 0 {
            refused = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // reset and gaps --fix change the state: they wait for no one either.
    let reset = demo.run(&["reset", &demo.job_str(), "--all"]);
    let _ = slow.kill();
    let _ = slow.wait();
    assert_ne!(
        code(&reset),
        0,
        "reset while a run holds the job:\n{}",
        text(&reset)
    );
    assert!(
        text(&reset).contains("being run by another process"),
        "{}",
        text(&reset)
    );
    let out = refused.expect("unlock never refused while the run held the lock");
    assert!(text(&out).contains("which is running"), "{}", text(&out));
    // Once it is gone, unlock takes the lock away.
    let out = demo.run(&["unlock", &demo.job_str()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn ordered_holds_across_processes_sharing_a_state() {
    // Issue 20: `ordered = true` ran one chunk at a time per process, but
    // two processes sharing the state each ran their own, out of order.
    let pg = Pg::new("ordered");
    let demo = Demo::new(6_000, "\"7d\"");
    state_to_pg(&demo, &pg, "30s");
    demo.edit_job(|s| s.replace("# ordered = true", "ordered = true"));
    // One of them panics in chunk 5: nothing after it may commit first.
    let a = spawn_with(
        &demo,
        &pg,
        &["run"],
        &[("BACKFILL_FAILPOINTS", "read:panic*1@5")],
    );
    let b = spawn_with(&demo, &pg, &["run"], &[]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(matches!(code(out), 0 | 1), "{}", text(out));
    }
    // Whatever is left, one more run finishes.
    run_pg_ok(&demo, &pg, &["run"]);
    let order: Vec<i64> = pg
        .rows(&format!(
            "SELECT c.idx FROM {0}_state.attempts a JOIN {0}_state.chunks c USING (job, chunk_id) \
             WHERE a.outcome = 'committed' ORDER BY a.finished_at, c.idx",
            pg.schema
        ))
        .into_iter()
        .map(|r| r[0].parse().unwrap_or(-1))
        .collect();
    assert_eq!(order.len(), 53, "{order:?}");
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "chunks committed out of order: {order:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_live_source_is_read_at_one_snapshot_for_the_whole_run() {
    // Issue 20: the dedup index passes and each chunk read a live source
    // at different moments; a key written in between (two versions, in
    // January and December) was missed by the index and kept twice.
    let pg = Pg::new("snapshot");
    let demo = Demo::new(6_000, "\"7d\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "max_connections = 2");
    // A writer adds such keys, each in one transaction, while the run goes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, schema, stop) = (pg.url.clone(), pg.schema.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = 3_000_000_000 + n;
                c.batch_execute(&format!(
                    "INSERT INTO {schema}.raw (transaction_id, customer_id, created_at, amount, status, region, category, email) VALUES \
                     ({id}, 1, '2023-01-10 10:00', 10, 'completed', 'eu-west', 'books', 'a@b.c'), \
                     ({id}, 1, '2023-12-10 10:00', 11, 'completed', 'eu-west', 'books', 'a@b.c')"
                ))
                .expect("insert");
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    let out = run_pg(&demo, &pg, &["run"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.join().expect("writer");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(written > 0);
    let twice = duckdb(&format!(
        "SELECT count(*) - count(DISTINCT transaction_id) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(
        twice[0][0],
        serde_json::json!(0),
        "keys written during the run are in the target twice ({written} written):\n{}",
        text(&out)
    );
}

#[test]
fn a_secret_in_every_place_never_reaches_any_output_file_or_state_row() {
    // Issue 20: one password, with the characters that escaping changes
    // (`"`, `\`, `'`), in the source, target and state URLs at once; every
    // command, text and JSON, success and failure; every file the job
    // leaves; every row of the state.
    let pg = Pg::new("sweep");
    let secret = "Sw\"e\\ep'9x";
    pg.exec(&format!(
        "DO $$ BEGIN CREATE ROLE bf_sweep LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         ALTER ROLE bf_sweep PASSWORD '{}'",
        secret.replace('\'', "''")
    ));
    let encoded: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let host = pg
        .url
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("a URL with a host");
    let url = format!("postgres://bf_sweep:{encoded}@{host}");
    let demo = Demo::new(2_000, "\"1 month\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "");
    target_to_pg(&demo, &pg, "tx", "replace");
    state_to_pg(&demo, &pg, "30s");
    let job = demo.job_str();
    let env = [(PG_ENV, url.as_str())];
    let mut outputs = Vec::new();
    for args in [
        vec!["-v", "run", &job],
        vec!["run", &job, "--json"],
        vec!["run", &job, "--dry-run"],
        vec!["status", &job],
        vec!["status", &job, "--json"],
        vec!["plan", &job, "--json"],
        vec!["validate", &job],
        vec!["validate", &job, "--json"],
        vec!["gaps", &job, "--json"],
        vec!["gaps", &job, "--fix", "--run"],
        vec!["reset", &job, "--all"],
        vec!["-v", "run", &job],
        vec!["unlock", &job],
    ] {
        outputs.push((args.join(" "), demo.run_env(&args, &env)));
    }
    assert_eq!(code(&outputs[0].1), 0, "{}", text(&outputs[0].1));
    // Failures: a wrong password, an unreachable port.
    let wrong = url.replace(&encoded, &format!("{encoded}0"));
    outputs.push((
        "wrong password".into(),
        demo.run_env(&["-v", "run", &job], &[(PG_ENV, &wrong)]),
    ));
    let unreachable = url.replace("127.0.0.1:", "127.0.0.1:1");
    outputs.push((
        "unreachable".into(),
        demo.run_env(&["-v", "validate", &job], &[(PG_ENV, &unreachable)]),
    ));
    let forms = [
        secret.to_string(),
        encoded.clone(),
        // As JSON escapes it, and as Debug output does.
        secret.replace('\\', "\\\\").replace('"', "\\\""),
        "Sw\\\"e".to_string(),
    ];
    for (what, out) in &outputs {
        let all = text(out);
        for form in &forms {
            assert!(
                !all.contains(form.as_str()),
                "`{what}` printed the secret as {form:?}:\n{all}"
            );
        }
    }
    for form in &forms {
        assert_not_stored(demo.path(), form);
    }
    // No state row holds it either.
    let state_rows = pg.rows(&format!(
        "SELECT string_agg(t::text, '|') FROM (SELECT to_jsonb(r)::text AS t FROM {0}_state.runs r \
         UNION ALL SELECT to_jsonb(c)::text FROM {0}_state.chunks c \
         UNION ALL SELECT to_jsonb(a)::text FROM {0}_state.attempts a \
         UNION ALL SELECT to_jsonb(j)::text FROM {0}_state.jobs j \
         UNION ALL SELECT to_jsonb(n)::text FROM {0}_state.notes n) all_rows",
        pg.schema
    ));
    let dump = state_rows[0][0].clone();
    assert!(dump.len() > 100, "the state holds rows: {dump}");
    for form in &forms {
        assert!(
            !dump.contains(form.as_str()),
            "a state row holds the secret as {form:?}"
        );
    }
}

#[test]
fn a_version_column_decides_which_version_a_merge_keeps() {
    // `[target] version_column` orders versions for the merge, whatever
    // `[dedup] order_by` says within a chunk: here dedup keeps each chunk's
    // largest amount, and the merge the latest created_at.
    let pg = Pg::new("merge_version_column");
    let demo = Demo::new(6_000, "\"7d\"");
    crate::dedup::dedup_per_chunk(&demo);
    demo.edit_job(|s| {
        s.replace(
            "order_by = [\"created_at DESC\", \"amount DESC\"]",
            "order_by = [\"amount DESC\"]",
        )
    });
    target_to_pg(&demo, &pg, "tx", "merge");
    demo.edit_job(|s| {
        s.replace(
            "mode = \"merge\"\nkeys = [\"transaction_id\"]\n",
            "mode = \"merge\"\nkeys = [\"transaction_id\"]\nversion_column = \"created_at\"\n",
        )
    });
    run_pg_ok(&demo, &pg, &["run"]);
    // Later versions of some of March's keys, with a smaller amount: by
    // amount they would lose, by created_at they win.
    let source = demo.source_glob();
    duckdb(&format!(
        "COPY (SELECT * REPLACE (created_at + INTERVAL 35 DAY AS created_at, round(amount * 0.5, 2) AS amount) FROM read_parquet('{source}') \
         WHERE created_at >= TIMESTAMP '2023-03-01' AND created_at < TIMESTAMP '2023-03-20' AND transaction_id % 7 = 0) TO '{}' (FORMAT PARQUET)",
        demo.path().join("source/april-versions.parquet").display()
    ));
    run_pg_ok(&demo, &pg, &["run"]);
    run_pg_ok(
        &demo,
        &pg,
        &["run", "--from", "2023-03-01", "--to", "2023-04-01"],
    );
    let table = pg.rows(&format!(
        "SELECT count(*)::text, sum(transaction_id)::text, round(sum(amount) * 100)::bigint::text FROM {}.tx",
        pg.schema
    ));
    let expected = duckdb(&format!(
        "SELECT count(*)::VARCHAR, sum(transaction_id)::VARCHAR, round(sum(amount) * 100)::BIGINT::VARCHAR FROM (
           SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY created_at DESC) AS v FROM (
             SELECT *, row_number() OVER (
               PARTITION BY transaction_id, floor((epoch(created_at) - epoch(TIMESTAMP '2023-01-01')) / 604800)
               ORDER BY amount DESC NULLS LAST) AS rn
             FROM ({}) WHERE rule IS NULL) WHERE rn = 1) WHERE v = 1",
        ruled_source_sql(&demo)
    ));
    let expected: Vec<String> = expected[0]
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(table[0], expected, "rows, sum(id), sum(amount)");
}
