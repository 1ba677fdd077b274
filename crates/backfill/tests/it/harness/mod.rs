//! Shared test helpers: a demo dataset in a temp dir, the CLI as a process,
//! and DuckDB (from the test virtualenv) as the independent oracle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod dedup;
mod delta;
mod kafka;
mod postgres;
mod quality;

pub use dedup::*;
pub use delta::*;
pub use kafka::*;
pub use postgres::*;
pub use quality::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_backfill");

/// A demo dataset and job in a fresh temp dir.
pub struct Demo {
    pub dir: tempfile::TempDir,
}

impl Demo {
    /// Generates `rows` demo rows and writes the example job with `chunk`.
    pub fn new(rows: u64, chunk: &str) -> Demo {
        let dir = tempfile::tempdir().expect("temp dir");
        backfill::demo::generate(&dir.path().join("source"), rows, 7).expect("generate demo data");
        let d = Demo { dir };
        d.write_job(chunk, "");
        d
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn job(&self) -> PathBuf {
        self.path().join("backfill.toml")
    }

    pub fn warehouse(&self) -> PathBuf {
        self.path().join("warehouse/transactions")
    }

    /// The example job with another chunk width and extra `[run]` keys.
    pub fn write_job(&self, chunk: &str, run_extra: &str) {
        let text = backfill::core::spec::EXAMPLE_JOB
            .replace("chunk = \"7d\"", &format!("chunk = {chunk}"))
            .replace(
                "retry_backoff = \"1s\"",
                &format!("retry_backoff = \"10ms\"\n{run_extra}"),
            );
        std::fs::write(self.job(), text).expect("write job");
    }

    /// Removes rules, dedup, quarantine and validate from the job.
    pub fn without_quality(&self) {
        self.edit_job(|s| {
            let start = s
                .find("# Checked in order")
                .expect("rules in the example job");
            let end = s.find("[target]").expect("target in the example job");
            format!("{}{}", &s[..start], &s[end..])
        });
    }

    /// Rewrites the job file through `f`.
    pub fn edit_job(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.job()).expect("read job");
        std::fs::write(self.job(), f(text)).expect("write job");
    }

    pub fn job_str(&self) -> String {
        self.job().display().to_string()
    }

    pub fn quarantine_glob(&self) -> String {
        format!(
            "{}/warehouse/transactions_quarantine/**/*.parquet",
            self.path().display()
        )
    }

    /// `status --json` as a value.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.run(&["status", &self.job_str(), "--json"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("BACKFILL_FAILPOINTS")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run backfill")
    }

    /// Starts `backfill -q run JOB` with `env`, SIGKILLs it after
    /// `delay_ms` and reaps it; returns its pid.
    pub fn run_killed_after(&self, env: &[(&str, &str)], delay_ms: u64) -> u32 {
        let mut cmd = Command::new(BIN);
        cmd.args(["-q", "run", &self.job_str()])
            .env_remove("BACKFILL_FAILPOINTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn backfill");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        child.id()
    }

    /// `backfill run JOB ARGS...`, asserting success.
    pub fn run_ok(&self, extra: &[&str]) -> Output {
        let job = self.job();
        let mut args = vec!["run", job.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        let out = self.run(&args);
        assert_eq!(code(&out), 0, "run failed:\n{}", text(&out));
        out
    }

    pub fn source_glob(&self) -> String {
        format!("{}/source/*.parquet", self.path().display())
    }

    pub fn target_glob(&self) -> String {
        format!("{}/**/*.parquet", self.warehouse().display())
    }

    /// Every file under the warehouse, relative, sorted.
    pub fn warehouse_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.warehouse(), &self.warehouse(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
        }
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn python() -> String {
    match std::env::var("BACKFILL_TEST_PYTHON") {
        Ok(p) => p,
        Err(_) => panic!(
            "BACKFILL_TEST_PYTHON is not set: run the suite through scripts/test.sh, which creates the \
             virtual environment with DuckDB and pyarrow that the tests use as their oracle"
        ),
    }
}

/// Runs SQL in DuckDB and returns the rows as JSON values.
pub fn duckdb(sql: &str) -> Vec<Vec<serde_json::Value>> {
    let script = r#"
import duckdb, json, sys
con = duckdb.connect()
rows = con.execute(sys.argv[1]).fetchall()
print(json.dumps([[v if isinstance(v, (int, float, str, type(None))) else str(v) for v in r] for r in rows]))
"#;
    let out = Command::new(python())
        .args(["-c", script, sql])
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "duckdb failed on\n{sql}\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("duckdb json")
}

/// Runs a pyarrow snippet that prints JSON; `ARG` holds the argument.
pub fn pyarrow(snippet: &str, arg: &str) -> serde_json::Value {
    let out = Command::new(python())
        .args(["-c", snippet, arg])
        .output()
        .expect("start python");
    assert!(out.status.success(), "pyarrow failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("pyarrow json")
}

pub fn int(v: &serde_json::Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an integer: {v}"))
}

pub fn float(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Count and an order-independent fingerprint of the target's rows, as DuckDB
/// reads them through Hive partitioning.
pub fn target_fingerprint(demo: &Demo) -> (i64, String) {
    let rows = duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, customer_id, created_at, amount, status, region, category, email, year, month, day))::VARCHAR
         FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    (int(&rows[0][0]), rows[0][1].to_string())
}

/// Rows of the target that appear more than once (all columns equal).
pub fn duplicate_rows(demo: &Demo) -> i64 {
    let rows = duckdb(&format!(
        "SELECT count(*) - (SELECT count(*) FROM (SELECT DISTINCT * FROM read_parquet('{0}', hive_partitioning = true)))
         FROM read_parquet('{0}', hive_partitioning = true)",
        demo.target_glob()
    ));
    int(&rows[0][0])
}

/// The demo job's rules as one SQL CASE naming the first failed rule.
pub const RULES_CASE: &str = "CASE WHEN NOT coalesce(transaction_id IS NOT NULL, false) THEN 'non_null_id' \
     WHEN NOT coalesce(amount > 0, false) THEN 'positive_amount' \
     WHEN NOT coalesce(status IN ('completed', 'pending', 'failed'), false) THEN 'known_status' \
     WHEN NOT coalesce(email LIKE '%@%', false) THEN 'valid_email' END";

/// DuckDB: the source rows in range with the rule each fails (NULL = passes).
pub fn ruled_source_sql(demo: &Demo) -> String {
    format!(
        "SELECT *, {RULES_CASE} AS rule FROM read_parquet('{}') \
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'",
        demo.source_glob()
    )
}
