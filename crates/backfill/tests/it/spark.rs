//! The Spark engine against a real Spark Connect server: the one PySpark
//! ships (`pip install pyspark`), started by the test on a random loopback
//! port with `spark-submit --master local[2]` and killed when the test ends,
//! even on failure. Results are compared with the local engine's for the
//! same data, chunk by chunk, and with DuckDB reading both targets.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A JVM tied to this test process: `sh` starts it and waits on a pipe
/// from us; when the pipe closes (we drop it, or the test process dies) the
/// shell's exit trap SIGKILLs the JVM.
struct Guarded {
    child: Child,
}

impl Guarded {
    fn spawn(args: &[String], env: &[(&str, String)], log: &Path, cwd: &Path) -> Guarded {
        let log = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("\"$@\" </dev/null & p=$!; trap 'kill -9 $p 2>/dev/null' EXIT; cat >/dev/null")
            .arg("sh")
            .args(args)
            .current_dir(cwd)
            .env("SPARK_HOME", spark_home())
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env_remove("PYSPARK_PYTHON")
            .env_remove("SPARK_CONNECT_AUTHENTICATE_TOKEN")
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Guarded {
            child: cmd.spawn().expect("start a Spark process"),
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Spark Connect server from the test virtualenv's PySpark: `local[2]`, or
/// the driver of a standalone cluster (a Master and Workers, each a JVM of
/// its own, whose executors are further JVMs).
pub struct SparkServer {
    server: Option<Guarded>,
    cluster: Vec<Guarded>,
    master: Option<String>,
    pub port: u16,
    work: tempfile::TempDir,
    /// The pre-shared bearer token the server demands, if any.
    token: Option<String>,
}

fn spark_home() -> String {
    static HOME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let out = Command::new(python())
            .args([
                "-c",
                "import os, pyspark; print(os.path.dirname(pyspark.__file__))",
            ])
            .output()
            .expect("start python");
        assert!(
            out.status.success(),
            "pyspark is missing from the test virtualenv (scripts/test.sh installs it):\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn wait_for_port(port: u16, what: &str, process: &mut Guarded, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(40).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        if let Some(status) = process.exited() {
            panic!("{what} exited ({status}) before listening:\n{}", tail());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen within 180 s:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl SparkServer {
    fn new(token: Option<&str>) -> SparkServer {
        SparkServer {
            server: None,
            cluster: Vec::new(),
            master: None,
            port: free_port(),
            work: tempfile::tempdir().expect("temp dir"),
            token: token.map(str::to_string),
        }
    }

    /// A Connect server running Spark in-process (`local[2]`).
    pub fn start(token: Option<&str>) -> SparkServer {
        let mut s = SparkServer::new(token);
        s.launch();
        s
    }

    /// A standalone cluster on loopback: a Master, `workers` Workers (one
    /// core, 1 GiB each) and a Connect server whose executors run in the
    /// Workers' own processes.
    pub fn standalone(workers: usize) -> SparkServer {
        let mut s = SparkServer::new(None);
        let home = spark_home();
        let class = format!("{home}/bin/spark-class");
        let port = free_port();
        let log = s.work.path().join("master.log");
        let mut master = Guarded::spawn(
            &[
                class.clone(),
                "org.apache.spark.deploy.master.Master".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--webui-port".into(),
                free_port().to_string(),
            ],
            &[],
            &log,
            s.work.path(),
        );
        wait_for_port(port, "the Spark Master", &mut master, &log);
        s.cluster.push(master);
        let url = format!("spark://127.0.0.1:{port}");
        for w in 0..workers {
            let dir = s.work.path().join(format!("worker{w}"));
            std::fs::create_dir_all(&dir).expect("worker dir");
            let worker = Guarded::spawn(
                &[
                    class.clone(),
                    "org.apache.spark.deploy.worker.Worker".into(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--cores".into(),
                    "1".into(),
                    "--memory".into(),
                    "1g".into(),
                    "--webui-port".into(),
                    free_port().to_string(),
                    "--work-dir".into(),
                    dir.display().to_string(),
                    url.clone(),
                ],
                &[],
                &s.work.path().join(format!("worker{w}.log")),
                s.work.path(),
            );
            s.cluster.push(worker);
        }
        s.master = Some(url);
        s.launch();
        s
    }

    /// Starts the Connect server on `self.port` and waits until it accepts
    /// connections.
    fn launch(&mut self) {
        let home = spark_home();
        let local = self.work.path().join("local");
        let warehouse = self.work.path().join("warehouse");
        let mut args: Vec<String> = vec![
            format!("{home}/bin/spark-submit"),
            "--class".into(),
            "org.apache.spark.sql.connect.service.SparkConnectServer".into(),
            "--master".into(),
            self.master.clone().unwrap_or_else(|| "local[2]".into()),
            "--driver-memory".into(),
            "1g".into(),
        ];
        let mut conf = vec![
            "spark.connect.grpc.binding.address=127.0.0.1".to_string(),
            format!("spark.connect.grpc.binding.port={}", self.port),
            "spark.driver.host=127.0.0.1".into(),
            "spark.driver.bindAddress=127.0.0.1".into(),
            "spark.ui.enabled=false".into(),
            format!("spark.local.dir={}", local.display()),
            format!("spark.sql.warehouse.dir={}", warehouse.display()),
        ];
        if self.master.is_some() {
            conf.extend([
                "spark.executor.memory=512m".to_string(),
                "spark.executor.cores=1".into(),
            ]);
        }
        for c in conf {
            args.push("--conf".into());
            args.push(c);
        }
        args.push("spark-internal".into());
        let mut env = Vec::new();
        if let Some(t) = &self.token {
            env.push(("SPARK_CONNECT_AUTHENTICATE_TOKEN", t.clone()));
        }
        let log = self.work.path().join("server.log");
        let mut server = Guarded::spawn(&args, &env, &log, self.work.path());
        wait_for_port(self.port, "the Spark Connect server", &mut server, &log);
        self.server = Some(server);
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.work.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The URL a job uses; with a token, plain HTTP on loopback is asked
    /// for explicitly (a token otherwise implies TLS).
    pub fn url(&self) -> String {
        match &self.token {
            Some(t) => format!("sc://127.0.0.1:{}/;use_ssl=false;token={t}", self.port),
            None => format!("sc://127.0.0.1:{}", self.port),
        }
    }

    /// SIGKILLs the Connect server (not the cluster) and waits until its
    /// port is free.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the Connect server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Executor directories the Workers created (`app-*/N`), one per
    /// executor process they launched.
    pub fn executor_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for w in 0..self.cluster.len().saturating_sub(1) {
            let dir = self.work.path().join(format!("worker{w}"));
            for app in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                for exec in std::fs::read_dir(app.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    out.push(exec.path());
                }
            }
        }
        out
    }
}

impl Drop for SparkServer {
    fn drop(&mut self) {
        self.kill();
        for p in self.cluster.drain(..).rev() {
            p.stop();
        }
    }
}

/// Appends `[engine]` for `server` to the demo job.
fn use_spark(demo: &Demo, server: &SparkServer) {
    demo.edit_job(|s| {
        format!(
            "{s}\n[engine]\nkind = \"spark\"\nremote = \"{}\"\nconf = {{ \"spark.sql.shuffle.partitions\" = \"4\" }}\n",
            server.url()
        )
    });
}

/// Per chunk: the counts and checksum the state store recorded.
fn chunk_metrics(demo: &Demo) -> Vec<(String, serde_json::Value)> {
    let status = demo.status_json();
    let mut out: Vec<(String, serde_json::Value)> = status["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| {
            let m = &c["metrics"];
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                serde_json::json!({
                    "rows_read": m["rows_read"],
                    "rows_written": m["rows_written"],
                    "rows_quarantined": m["rows_quarantined"],
                    "duplicates": m["duplicates"],
                    "checksum": m["checksum"],
                    "rules": m["rules"],
                }),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn per_month(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true)
         GROUP BY month ORDER BY month",
        demo.target_glob()
    ))
}

fn quarantine_by_rule(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT _rule, count(*) FROM read_parquet('{}') GROUP BY _rule ORDER BY _rule",
        demo.quarantine_glob()
    ))
}

/// Runs March again with the transform's `day` expression `from` replaced
/// by `to`; returns the output after checking the exit code.
fn run_march_with_day(demo: &Demo, from: &str, to: &str, exit: i32) -> String {
    demo.edit_job(|s| s.replace(&format!("{from} AS day"), &format!("{to} AS day")));
    let job = demo.job_str();
    let out = demo.run(&["run", &job, "--from", "2023-03-01", "--to", "2023-04-01"]);
    assert_eq!(code(&out), exit, "{}", text(&out));
    text(&out)
}

/// The demo job run by the local engine and, on the same data, by `server`;
/// the Spark run must succeed. Returns both demos and the Spark run's output.
fn local_and_spark(server: &SparkServer) -> (Demo, Demo, std::process::Output) {
    let local = Demo::new(ROWS, CHUNK);
    local.run_ok(&[]);
    let spark = Demo::new(ROWS, CHUNK);
    use_spark(&spark, server);
    let out = spark.run(&["run", &spark.job_str()]);
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), server.log());
    (local, spark, out)
}

const ROWS: u64 = 20_000;
/// Checked against every output of the token test.
const TOKEN: &str = "bf-spark-token-7319";
const CHUNK: &str = "\"1 month\"";

#[test]
fn the_demo_job_on_spark_equals_the_local_engine_and_spark_errors_are_reported() {
    let mut server = SparkServer::start(Some(TOKEN));
    let (local, spark, out) = local_and_spark(&server);
    let job = spark.job_str();
    assert!(
        !text(&out).contains(TOKEN),
        "the token was printed:\n{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("12 of 12 selected chunks committed"),
        "{}",
        text(&out)
    );

    // The same rows read, written, quarantined and removed, and the same
    // checksum over the files, chunk by chunk.
    let (l, s) = (chunk_metrics(&local), chunk_metrics(&spark));
    assert_eq!(l.len(), 12);
    assert_eq!(l, s, "per-chunk metrics differ between the engines");
    // Global dedup reached across chunks: some duplicates were removed.
    let dups: u64 = s
        .iter()
        .map(|(_, m)| m["duplicates"].as_u64().unwrap_or(0))
        .sum();
    assert!(dups > 0, "no duplicate removed");

    // DuckDB reads both targets and quarantines alike.
    assert_eq!(per_month(&local), per_month(&spark));
    assert_eq!(per_month(&spark).len(), 12);
    assert_eq!(quarantine_by_rule(&local), quarantine_by_rule(&spark));
    assert_eq!(target_fingerprint(&local), target_fingerprint(&spark));
    assert_eq!(duplicate_rows(&spark), 0);

    // validate reconciles the Spark-written target against the source.
    let v = spark.run(&["validate", &job]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    // An error Spark finds when analysing the transform stops the run
    // before any chunk, naming the key and quoting Spark.
    let day = "date_part('day', created_at)";
    let err = run_march_with_day(&spark, day, "no_such_function(created_at)", 2);
    assert!(err.contains("transform.sql"), "{err}");
    assert!(err.contains("UNRESOLVED_ROUTINE"), "{err}");
    assert!(!err.contains(TOKEN), "the token was printed:\n{err}");

    // An error only the data reveals fails its chunk once: permanent, not
    // retried (retries = 3 in the job).
    let err = run_march_with_day(
        &spark,
        "no_such_function(created_at)",
        "CAST(status AS INT)",
        1,
    );
    assert!(err.contains("CAST_INVALID_INPUT"), "{err}");
    assert!(err.contains("not retried: permanent error"), "{err}");
    let status = spark.status_json();
    let march = status["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .find(|c| c["index"] == 2)
        .cloned()
        .expect("the March chunk");
    assert_eq!(march["attempts"], 2, "{march}");
    assert!(!err.contains(TOKEN), "the token was printed:\n{err}");
    // The earlier, committed output of March is untouched.
    assert_eq!(per_month(&local), per_month(&spark));

    // A wrong token is refused by the server, and neither token is shown.
    spark.edit_job(|s| s.replace(TOKEN, "wrong-token-0000"));
    let out = spark.run(&["run", &job, "--from", "2023-03-01", "--to", "2023-04-01"]);
    assert_ne!(code(&out), 0, "{}", text(&out));
    let err = text(&out);
    assert!(
        err.to_lowercase().contains("unauthenticated") || err.contains("token"),
        "{err}"
    );
    assert!(
        !err.contains(TOKEN) && !err.contains("wrong-token-0000"),
        "a token was printed:\n{err}"
    );
    server.kill();
}

#[test]
fn a_spark_server_killed_mid_chunk_fails_the_chunk_as_transient_and_the_retry_is_exact() {
    let mut server = SparkServer::start(None);
    let local = Demo::new(ROWS, CHUNK);
    local.run_ok(&[]);
    let spark = Demo::new(ROWS, CHUNK);
    spark.write_job(CHUNK, "");
    spark.edit_job(|s| {
        s.replace("retries = 3", "retries = 8")
            .replace("retry_backoff = \"10ms\"", "retry_backoff = \"1s\"")
            .replace("parallelism = 2", "parallelism = 1")
    });
    use_spark(&spark, &server);
    let job = spark.job_str();
    let run = Command::new(BIN)
        .args(["-q", "run", &job])
        .env_remove("BACKFILL_FAILPOINTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backfill");
    // Kill the server once a few chunks are in, while the next one runs.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let committed = spark.status_json()["totals"]["committed"]
            .as_u64()
            .unwrap_or(0);
        if committed >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress on Spark:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    let out = run.wait_with_output().expect("backfill ends");
    assert_eq!(code(&out), 0, "{}\n{}", text(&out), server.log());
    assert!(
        text(&out).contains("retrying"),
        "no attempt was retried:\n{}",
        text(&out)
    );
    let status = spark.status_json();
    assert!(
        status["totals"]["attempts"].as_u64().unwrap_or(0) > 12,
        "{}",
        status["totals"]
    );
    assert_eq!(chunk_metrics(&local), chunk_metrics(&spark));
    assert_eq!(target_fingerprint(&local), target_fingerprint(&spark));
    // No staging left behind.
    let staging = spark.path().join(".backfill/spark-staging/transactions");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left: {left:?}");
}

#[test]
fn the_demo_job_runs_on_a_standalone_cluster_with_executors_in_their_own_processes() {
    let server = SparkServer::standalone(2);
    let (local, spark, _) = local_and_spark(&server);
    assert_eq!(chunk_metrics(&local), chunk_metrics(&spark));
    assert_eq!(target_fingerprint(&local), target_fingerprint(&spark));
    // The work ran in executor processes the Workers launched.
    let executors = server.executor_dirs();
    assert!(
        executors.len() >= 2,
        "expected an executor per Worker, found {executors:?}\n{}",
        server.log()
    );
}
