//! Object-store sources and targets against a real S3-compatible server:
//! moto in server mode (from the test virtualenv) on a random loopback port,
//! one per test, stopped when the test ends. The bucket is then read back
//! with boto3 (a mirror to local files for DuckDB) or the Python `deltalake`
//! package (straight from S3).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const BUCKET: &str = "lake";
/// moto does not check signatures; the value is there to be grepped for.
const SECRET: &str = "s3cr3t-Never-Printed-42";

/// boto3 operations the tests need: make a bucket, upload a directory,
/// download a prefix, list keys.
const BOTO: &str = r#"
import boto3, json, os, sys
endpoint, op, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                  aws_secret_access_key="testing", region_name="us-east-1")
keys = []
if op == "mkbucket":
    s3.create_bucket(Bucket=bucket)
elif op == "put":
    src, prefix = sys.argv[4], sys.argv[5]
    for root, _, files in os.walk(src):
        for f in files:
            path = os.path.join(root, f)
            key = prefix + os.path.relpath(path, src)
            s3.upload_file(path, bucket, key)
            keys.append(key)
else:
    prefix = sys.argv[4]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            keys.append(o["Key"])
            if op == "get":
                dest = os.path.join(sys.argv[5], o["Key"][len(prefix):])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                s3.download_file(bucket, o["Key"], dest)
print(json.dumps(sorted(keys)))
"#;

/// A moto S3 server on loopback, killed on drop.
pub struct S3 {
    child: Child,
    pub endpoint: String,
}

impl S3 {
    pub fn start() -> S3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (pip install moto[server] in the test virtualenv)");
        let mut s3 = S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s3.child.try_wait() {
                panic!("moto exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "moto did not start in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        s3.boto(&["mkbucket", BUCKET]);
        s3
    }

    fn boto(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new(python())
            .args(["-c", BOTO, &self.endpoint])
            .args(args)
            .output()
            .expect("start python");
        assert!(out.status.success(), "boto3 failed:\n{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("boto3 json")
    }

    /// What `backfill` reads its credentials and endpoint from.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub fn download(&self, prefix: &str, dest: &Path) -> Vec<String> {
        self.boto(&["get", BUCKET, prefix, &dest.display().to_string()])
    }

    pub fn upload(&self, src: &Path, prefix: &str) -> Vec<String> {
        self.boto(&["put", BUCKET, &src.display().to_string(), prefix])
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_s3(demo: &Demo, s3: &S3, args: &[&str]) -> std::process::Output {
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = demo.run_env(args, &env);
    assert!(
        !text(&out).contains(SECRET),
        "secret printed:\n{}",
        text(&out)
    );
    out
}

fn run_s3_ok(demo: &Demo, s3: &S3, extra: &[&str]) {
    let job = demo.job_str();
    let mut args = vec!["run", job.as_str()];
    args.extend_from_slice(extra);
    let out = run_s3(demo, s3, &args);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

/// Target and quarantine into the bucket.
fn target_to_s3(demo: &Demo) {
    demo.edit_job(|s| {
        s.replace(
            "path = \"warehouse/transactions\"",
            &format!("path = \"s3://{BUCKET}/warehouse/transactions\""),
        )
        .replace(
            "path = \"warehouse/transactions_quarantine\"",
            &format!("path = \"s3://{BUCKET}/warehouse/transactions_quarantine\""),
        )
    });
}

/// Downloads the bucket's warehouse into `<demo>/mirror` (fresh each time)
/// and returns the keys.
fn mirror(demo: &Demo, s3: &S3) -> Vec<String> {
    let dest = demo.path().join("mirror");
    let _ = std::fs::remove_dir_all(&dest);
    s3.download("warehouse/", &dest)
}

fn mirror_months(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}/mirror/transactions/**/*.parquet', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.path().display()
    ))
}

fn mirror_fingerprint(demo: &Demo) -> String {
    let rows = duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, customer_id, created_at, amount, status, region, category, email, year, month, day))::VARCHAR
         FROM read_parquet('{}/mirror/transactions/**/*.parquet', hive_partitioning = true)",
        demo.path().display()
    ));
    format!("{} {}", rows[0][0], rows[0][1])
}

fn staged(keys: &[String]) -> Vec<&String> {
    keys.iter().filter(|k| k.ends_with(".inprogress")).collect()
}

#[test]
fn a_parquet_target_on_s3_holds_the_oracles_rows_and_validates() {
    let s3 = S3::start();
    let demo = Demo::new(10_000, "\"1 month\"");
    target_to_s3(&demo);
    run_s3_ok(&demo, &s3, &[]);

    let keys = mirror(&demo, &s3);
    assert!(staged(&keys).is_empty(), "staged objects left: {keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("warehouse/transactions/year=2023/month=1/part-")),
        "{keys:?}"
    );
    let (months, _) = expected_global(&demo);
    assert_months_equal(&months, &mirror_months(&demo));
    let quarantined: i64 = expected_per_rule(&demo).iter().map(|r| int(&r[1])).sum();
    let q = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}/mirror/transactions_quarantine/**/*.parquet')",
        demo.path().display()
    ));
    assert_eq!(int(&q[0][0]), quarantined);

    let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    // Two months again: their objects are replaced, nothing else changes.
    let before = mirror_fingerprint(&demo);
    run_s3_ok(&demo, &s3, &["--from", "2023-03-01", "--to", "2023-05-01"]);
    let again = mirror(&demo, &s3);
    assert_eq!(mirror_fingerprint(&demo), before);
    assert_eq!(again.len(), keys.len(), "old objects must go:\n{again:?}");
    assert_ne!(again, keys, "the re-run chunks must have new objects");

    // An object deleted behind the tool's back fails validation.
    let victim = again
        .iter()
        .find(|k| k.contains("transactions/year=2023/month=7/"))
        .expect("a July object");
    let out = Command::new(python())
        .args([
            "-c",
            "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='t', aws_secret_access_key='t', region_name='us-east-1').delete_object(Bucket=sys.argv[2], Key=sys.argv[3])",
            &s3.endpoint,
            BUCKET,
            victim,
        ])
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));
}

#[test]
fn a_source_on_s3_reads_like_the_local_files() {
    let s3 = S3::start();
    let demo = Demo::new(10_000, "\"1 month\"");
    let uploaded = s3.upload(&demo.path().join("source"), "raw/transactions/");
    assert!(!uploaded.is_empty());
    demo.edit_job(|s| {
        s.replace(
            "path = \"source/\"",
            &format!("path = \"s3://{BUCKET}/raw/transactions/\""),
        )
    });
    assert!(
        std::fs::read_to_string(demo.job())
            .unwrap()
            .contains("s3://lake/raw"),
        "the example job's source path changed; update this test"
    );
    run_s3_ok(&demo, &s3, &[]);
    let (months, _) = expected_global(&demo);
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_months_equal(&months, &actual);

    // A missing prefix is a job-file error naming the key, not a crash.
    demo.edit_job(|s| s.replace("raw/transactions/", "raw/nothing-here/"));
    let out = run_s3(&demo, &s3, &["run", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("source.path"), "{}", text(&out));
}

#[test]
fn a_delta_table_on_s3_reads_back_with_deltalake() {
    let s3 = S3::start();
    let demo = Demo::new(10_000, "\"1 month\"");
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"\npath = \"warehouse/transactions\"",
            &format!(
                "format = \"delta\"\nmode = \"replace\"\npath = \"s3://{BUCKET}/warehouse/tx_delta\""
            ),
        )
    });
    run_s3_ok(&demo, &s3, &[]);
    let read = || {
        let snippet = r#"
import deltalake, duckdb, json, sys
endpoint = sys.argv[1]
opts = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
dt = deltalake.DeltaTable("s3://lake/warehouse/tx_delta", storage_options=opts)
con = duckdb.connect()
t = dt.to_pyarrow_table()
con.register("t", t)
months = con.execute("SELECT month::INT, count(*), round(sum(amount), 2) FROM t GROUP BY 1 ORDER BY 1").fetchall()
dups = con.execute("SELECT count(*) - count(DISTINCT transaction_id) FROM t").fetchall()[0][0]
print(json.dumps({"months": [list(m) for m in months], "dups": dups, "version": dt.version(), "files": len(dt.file_uris())}))
"#;
        pyarrow(snippet, &s3.endpoint)
    };
    let first = read();
    let (months, _) = expected_global(&demo);
    let got: Vec<Vec<serde_json::Value>> = first["months"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_array().unwrap().clone())
        .collect();
    assert_months_equal(&months, &got);
    assert_eq!(first["dups"], 0);
    assert_eq!(first["version"], 12, "{first}");
    let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    run_s3_ok(&demo, &s3, &["--from", "2023-03-01", "--to", "2023-05-01"]);
    let again = read();
    assert_eq!(again["months"], first["months"]);
    assert_eq!(again["version"], 14, "{again}");
    assert_eq!(again["files"], first["files"]);

    // Merge mode stages rows under the table and MERGEs them on the keys.
    demo.edit_job(|s| {
        s.replace(
            "mode = \"replace\"",
            "mode = \"merge\"\nkeys = [\"transaction_id\"]",
        )
        .replace("tx_delta", "tx_merged")
        .replace("[state]\n", "[state]\npath = \".backfill/merged.db\"\n")
    });
    run_s3_ok(&demo, &s3, &[]);
    run_s3_ok(&demo, &s3, &["--from", "2023-03-01", "--to", "2023-05-01"]);
    let merged = pyarrow(
        r#"
import deltalake, json, sys
opts = {"AWS_ENDPOINT_URL": sys.argv[1], "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
t = deltalake.DeltaTable("s3://lake/warehouse/tx_merged", storage_options=opts).to_pyarrow_table()
print(json.dumps({"rows": t.num_rows, "keys": len(set(t.column("transaction_id").to_pylist()))}), flush=True)
# deltalake's runtime can abort at interpreter exit ("terminate called
# without an active exception") once the answer is out.
import os; os._exit(0)
"#,
        &s3.endpoint,
    );
    let rows: i64 = months.iter().map(|m| int(&m[1])).sum();
    assert_eq!(int(&merged["rows"]), rows, "{merged}");
    assert_eq!(int(&merged["keys"]), rows, "{merged}");
    let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_crash_while_writing_to_s3_is_repaired_exactly() {
    let s3 = S3::start();
    let reference = {
        let demo = Demo::new(8_000, "\"1 month\"");
        demo.run_ok(&[]);
        let (n, fp) = target_fingerprint(&demo);
        format!("{n} {fp}")
    };
    for (i, point) in ["after_write:3", "after_commit:2", "after_publish:2"]
        .into_iter()
        .enumerate()
    {
        let demo = Demo::new(8_000, "\"1 month\"");
        demo.edit_job(|s| {
            s.replace(
                "path = \"warehouse/transactions\"",
                &format!("path = \"s3://{BUCKET}/crash{i}/transactions\""),
            )
        });
        let env = s3.env();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("BACKFILL_FAILPOINTS", point));
        let out = demo.run_env(&["run", &demo.job_str()], &env);
        assert_ne!(code(&out), 0, "{point}: {}", text(&out));
        run_s3_ok(&demo, &s3, &[]);
        let dest = demo.path().join("mirror");
        let keys = s3.download(&format!("crash{i}/"), &dest);
        assert!(staged(&keys).is_empty(), "{point}: staged left {keys:?}");
        assert_eq!(
            mirror_fingerprint(&demo),
            reference,
            "after a crash at {point}"
        );
        let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
        assert_eq!(code(&v), 0, "{point}: {}", text(&v));
        if point.starts_with("after_publish") {
            // A re-run that dies after publishing, before the superseded
            // objects go: the next run removes them.
            let out = demo.run_env(
                &[
                    "run",
                    &demo.job_str(),
                    "--from",
                    "2023-02-01",
                    "--to",
                    "2023-04-01",
                ],
                &env,
            );
            assert_ne!(code(&out), 0, "{}", text(&out));
            run_s3_ok(&demo, &s3, &[]);
            let _ = std::fs::remove_dir_all(&dest);
            let again = s3.download(&format!("crash{i}/"), &dest);
            assert_eq!(
                again.len(),
                keys.len(),
                "superseded objects left:\n{again:?}"
            );
            assert_eq!(mirror_fingerprint(&demo), reference);
        }
    }
    // A spool left by a process that is gone is swept by the next one.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let gone_pid = gone.id();
    let _ = gone.wait();
    let stale = std::env::temp_dir().join(format!("backfill-spool-{gone_pid}-7"));
    std::fs::create_dir_all(stale.join("year=2023")).expect("stale spool");
    // kill -9 while chunks upload and publish.
    for delay_ms in [150u64, 400] {
        let demo = Demo::new(8_000, "\"1 month\"");
        let prefix = format!("kill{delay_ms}");
        demo.edit_job(|s| {
            s.replace(
                "path = \"warehouse/transactions\"",
                &format!("path = \"s3://{BUCKET}/{prefix}/transactions\""),
            )
        });
        let env = s3.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let pid = demo.run_killed_after(&env, delay_ms);
        run_s3_ok(&demo, &s3, &[]);
        // The next process sweeps the killed one's local spool.
        let spool = format!("backfill-spool-{pid}-");
        let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .expect("temp dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&spool))
            .collect();
        assert!(left.is_empty(), "spool of pid {pid} left: {left:?}");
        assert!(!stale.exists(), "{} was not swept", stale.display());
        let dest = demo.path().join("mirror");
        let keys = s3.download(&format!("{prefix}/"), &dest);
        assert!(
            staged(&keys).is_empty(),
            "kill at {delay_ms} ms: staged left {keys:?}"
        );
        assert_eq!(
            mirror_fingerprint(&demo),
            reference,
            "after kill -9 at {delay_ms} ms"
        );
    }
}

#[test]
fn a_partition_over_max_file_size_is_split_into_files_each_published() {
    // S3 copies at most 5 GiB into place in one request; files are capped
    // below that. Here the cap is 1 MiB and row groups are small (the
    // writer's share of a 4 MiB limit), so one chunk of one partition
    // makes several files.
    let s3 = S3::start();
    let demo = Demo::new(120_000, "\"all\"");
    target_to_s3(&demo);
    demo.edit_job(|s| {
        s.replace(
            "partition_by = [\"year\", \"month\"]",
            "partition_by = []\nmax_file_size = \"1MiB\"",
        )
        .replace(
            "parallelism = 2",
            "parallelism = 2\nmemory_limit = \"4MiB\"",
        )
    });
    run_s3_ok(&demo, &s3, &[]);
    let keys = mirror(&demo, &s3);
    assert!(staged(&keys).is_empty(), "staged objects left: {keys:?}");
    let files: Vec<std::path::PathBuf> = keys
        .iter()
        .filter(|k| k.starts_with("warehouse/transactions/part-"))
        .map(|k| demo.path().join("mirror").join(&k["warehouse/".len()..]))
        .collect();
    assert!(files.len() >= 2, "one file: {keys:?}");
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        // Row groups are appended as they finish, so a file may end a
        // little past the cap, never far.
        assert!(size < 2 << 20, "{} is {size} bytes", f.display());
    }
    let (months, _) = expected_global(&demo);
    assert_months_equal(&months, &mirror_months(&demo));
    let v = run_s3(&demo, &s3, &["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}
