//! The bad-input corpus: each case asserts the exit code, that nothing
//! panicked, a snapshot of what the user sees, and (where a backfill had
//! already committed) that the target was not touched.

use std::path::Path;

use crate::harness::*;

/// A CSV job over `in/`, monthly chunks over 2023, no retries.
const CSV_JOB: &str = r#"[source]
format = "csv"
path = "in/"
[source.columns]
t = "timestamp"
[range]
column = "t"
start = "2023-01-01"
end = "2024-01-01"
chunk = "1 month"
[target]
path = "out"
[run]
retries = 0
"#;

/// `a,b,t` and one row, gzip-compressed (Python's gzip, mtime 0).
const GZIPPED_CSV: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03\x4b\xd4\x49\xd2\x29\xe1\x32\xd4\xa9\xd0\x31\x32\x30\x32\xd6\x35\x30\x04\x22\x05\x03\x03\x2b\x30\xe2\x02\x00\x34\xb1\x4c\x17\x1e\x00\x00\x00";

enum Job {
    /// The demo job (300 rows of demo data), edited.
    Demo(fn(String) -> String),
    /// A job file of its own, with the files it reads.
    Text(&'static str, &'static [(&'static str, &'static [u8])]),
}

struct Case {
    name: &'static str,
    job: Job,
    /// Arguments after the command; `JOB` is replaced by the job path.
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    exit: i32,
    /// Run the good demo job first, so the case can prove nothing committed changes.
    committed_first: bool,
    /// Breaks something after the job is written (and after the first run).
    prepare: Option<fn(&Path)>,
}

const RUN: &[&str] = &["run", "JOB"];

fn case(name: &'static str, job: Job, exit: i32) -> Case {
    Case {
        name,
        job,
        args: RUN,
        env: &[],
        exit,
        committed_first: false,
        prepare: None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("malformed_toml", Job::Text("[source\nformat = \"csv\"\n", &[]), 2),
        case("unknown_key", Job::Demo(|s| s.replace("[job]\n", "[job]\ncolour = \"red\"\n")), 2),
        case("wrong_type", Job::Demo(|s| s.replace("parallelism = 2", "parallelism = \"two\"")), 2),
        case("end_before_start", Job::Demo(|s| s.replace("end = \"2024-01-01\"", "end = \"2022-01-01\"")), 2),
        case("zero_chunk", Job::Demo(|s| s.replace("chunk = \"7d\"", "chunk = \"0d\"")), 2),
        case("range_column_missing", Job::Demo(|s| s.replace("column = \"created_at\"", "column = \"created\"")), 2),
        case("range_column_wrong_type", Job::Demo(|s| s.replace("column = \"created_at\"", "column = \"status\"")), 2),
        case("source_path_missing", Job::Demo(|s| s.replace("path = \"source/\"", "path = \"nowhere/\"")), 2),
        case("target_path_unsupported_scheme", Job::Demo(|s| s.replace("path = \"warehouse/transactions\"", "path = \"hdfs://namenode/warehouse/transactions\"")), 2),
        case("source_url_without_bucket", Job::Demo(|s| s.replace("path = \"source/\"", "path = \"s3:///raw/\"")), 2),
        Case {
            prepare: Some(|d| std::fs::create_dir_all(d.join("empty")).unwrap()),
            ..case("empty_source", Job::Demo(|s| s.replace("path = \"source/\"", "path = \"empty/\"")), 2)
        },
        Case {
            prepare: Some(|d| std::fs::write(d.join("source/transactions-2023-03.parquet"), b"PAR1 this is not parquet at all PAR1").unwrap()),
            ..case("corrupt_parquet", Job::Demo(|s| s), 1)
        },
        Case {
            prepare: Some(|d| {
                let p = d.join("source/transactions-2023-05.parquet");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
            }),
            ..case("truncated_parquet", Job::Demo(|s| s), 1)
        },
        // Compressed sources (issue 22): a codec the job names wrongly, or
        // files a scan cannot read as one, exit 2 naming what is there.
        case("unknown_compression", Job::Text("[source]\nformat = \"csv\"\npath = \"in/\"\ncompression = \"lz5\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("compression_on_parquet", Job::Text("[source]\nformat = \"parquet\"\npath = \"in/\"\ncompression = \"gzip\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("mixed_compressions", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,x,2023-01-01 00:00:00\n"), ("in/b.csv.gz", b"not gzip at all")]), 2),
        case("compressed_files_read_as_plain", Job::Text("[source]\nformat = \"csv\"\npath = \"in/\"\ncompression = \"none\"\n[target]\npath = \"out\"\n", &[("in/a.csv.gz", b"not read"), ("in/b.csv.gz", b"not read")]), 2),
        case("compression_named_on_spark", Job::Text("[source]\nformat = \"csv\"\npath = \"in/\"\ncompression = \"gzip\"\n[source.columns]\nt = \"timestamp\"\n[engine]\nkind = \"spark\"\nremote = \"sc://127.0.0.1:1\"\nstaging = \"stage\"\n[target]\npath = \"out\"\n", &[("in/a.csv.gz", GZIPPED_CSV)]), 2),
        // Lookup tables (issue 22): one that is not there, one named like the source.
        case("lookup_table_missing", Job::Demo(|s| format!("{s}\n[[tables]]\nname = \"customers\"\nformat = \"parquet\"\npath = \"nope/\"\n")), 2),
        case("lookup_table_named_source", Job::Demo(|s| format!("{s}\n[[tables]]\nname = \"source\"\nformat = \"parquet\"\npath = \"source/\"\n")), 2),
        case("no_file_of_the_format", Job::Text(CSV_JOB, &[("in/notes.txt", b"hello"), ("in/data.parquet", b"PAR1")]), 2),
        case("csv_ragged_rows", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,2,2023-01-01 00:00:00\n3\n4,5,2023-02-01 00:00:00\n")]), 1),
        case("csv_bad_quote", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,\"x,2023-01-01 00:00:00\n2,y,2023-01-02 00:00:00\n")]), 1),
        case("csv_non_utf8", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,caf\xe9,2023-01-01 00:00:00\n")]), 1),
        case("csv_bad_timestamp", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,x,2023-01-01 00:00:00\n2,y,yesterday\n")]), 1),
        case("csv_null_range_values", Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,x,2023-01-01 00:00:00\n2,y,\n3,z,2023-03-01 00:00:00\n")]), 0),
        case(
            "timestamps_outside_range",
            Job::Text(CSV_JOB, &[("in/a.csv", b"a,b,t\n1,x,2020-01-01 00:00:00\n2,y,2023-06-01 00:00:00\n3,z,2031-01-01 00:00:00\n")]),
            0,
        ),
        Case {
            prepare: Some(|d| {
                let big = "x".repeat(4 << 20);
                std::fs::create_dir_all(d.join("in")).unwrap();
                std::fs::write(d.join("in/a.csv"), format!("a,b,t\n1,{big},2023-01-01 00:00:00\n2,y,2023-02-01 00:00:00\n")).unwrap();
            }),
            ..case("huge_string", Job::Text(CSV_JOB, &[]), 0)
        },
        Case {
            prepare: Some(hostile_partitions),
            ..case(
                "hostile_partition_values",
                Job::Text(
                    "[source]\nformat = \"csv\"\npath = \"in/\"\n[target]\npath = \"out\"\npartition_by = [\"p\"]\n",
                    &[],
                ),
                0,
            )
        },
        case(
            "hostile_column_names",
            Job::Text(
                "[source]\nformat = \"csv\"\npath = \"in/\"\n[range]\ncolumn = 'v\"y'\nstart = 1\nend = 10\nchunk = 2\n\
                 [dedup]\nkeys = ['id\"x']\norder_by = ['v\"y DESC']\n[target]\npath = \"out\"\npartition_by = [\"p;--\"]\n",
                &[("in/a.csv", b"\"id\"\"x\",\"p;--\",\"v\"\"y\"\n1,a,1\n1,a,2\n2,b,3\n3,c,8\n")],
            ),
            0,
        ),
        case("kafka_broker_not_host_port", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"localhost\"]\ntopic = \"t\"\n[range]\ncolumn = \"_offset\"\nstart = \"earliest\"\nend = \"latest\"\nchunk = 1000\n[target]\npath = \"out\"\n", &[]), 2),
        case("kafka_unknown_value_format", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nvalue = \"avro\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("kafka_sasl_without_password", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"me\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("kafka_unknown_sasl_mechanism", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\nsasl_mechanism = \"GSSAPI\"\nsasl_username = \"me\"\nsasl_password = \"hunter2-not-shown\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("kafka_tls_cert_without_key", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\ntls_cert = \"client.pem\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("kafka_path_key", Job::Text("[source]\nformat = \"kafka\"\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\npath = \"in/\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("earliest_on_a_file_source", Job::Demo(|s| s.replace("start = \"2023-01-01\"", "start = \"earliest\"")), 2),
        case("rule_not_sql", Job::Demo(|s| s.replace("check = \"amount > 0\"", "check = \"amount >>> 0\"")), 2),
        case("rule_not_boolean", Job::Demo(|s| s.replace("check = \"amount > 0\"", "check = \"amount + 1\"")), 2),
        case(
            "version_column_without_merge",
            Job::Demo(|s| {
                s.replace(
                    "path = \"warehouse/transactions\"",
                    "path = \"warehouse/transactions\"\nversion_column = \"created_at\"",
                )
            }),
            2,
        ),
        case(
            "version_column_not_in_rows",
            Job::Demo(|s| {
                s.replace(
                    "format = \"parquet\"\npath = \"warehouse/transactions\"",
                    "format = \"delta\"\nmode = \"merge\"\nkeys = [\"transaction_id\"]\nversion_column = \"updated_at\"\npath = \"warehouse/transactions\"",
                )
            }),
            2,
        ),
        case(
            "quarantine_inside_target",
            Job::Demo(|s| {
                s.replace(
                    "path = \"warehouse/transactions_quarantine\"",
                    "path = \"warehouse/transactions/rejected\"",
                )
            }),
            2,
        ),
        case(
            "target_inside_source",
            Job::Demo(|s| s.replace("path = \"warehouse/transactions\"", "path = \"source/copy\"")),
            2,
        ),
        case(
            "state_inside_target",
            Job::Demo(|s| {
                s.replace(
                    "[state]\n",
                    "[state]\npath = \"warehouse/transactions/.state/job.db\"\n",
                )
            }),
            2,
        ),
        case("env_var_unset", Job::Demo(|s| s.replace("path = \"source/\"", "path = \"${BACKFILL_NOT_SET_XYZ}/\"")), 2),
        case(
            "target_not_writable",
            Job::Demo(|s| s.replace("path = \"warehouse/transactions\"", "path = \"backfill.toml/transactions\"")),
            2,
        ),
        Case {
            env: &[("BACKFILL_FAILPOINTS", "write:permanent@3")],
            ..case("disk_full_on_write", Job::Demo(|s| s), 1)
        },
        Case {
            committed_first: true,
            prepare: Some(|d| {
                let state = d.join(".backfill/transactions.db");
                let _ = std::fs::remove_file(d.join(".backfill/transactions.db-wal"));
                let _ = std::fs::remove_file(d.join(".backfill/transactions.db-shm"));
                std::fs::write(state, vec![b'x'; 8192]).unwrap();
            }),
            ..case("state_corrupt", Job::Demo(|s| s), 1)
        },
        Case {
            committed_first: true,
            prepare: Some(|d| {
                let p = d.join(".backfill/transactions.db");
                crate::harness::pyarrow(
                    "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\nc.execute(\"UPDATE meta SET value = '99' WHERE key = 'schema_version'\")\nc.commit()\nprint(1)",
                    p.to_str().unwrap(),
                );
            }),
            ..case("state_from_a_newer_version", Job::Demo(|s| s), 1)
        },
        case("pg_source_without_url", Job::Text("[source]\nformat = \"postgres\"\ntable = \"public.t\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("pg_source_table_and_query", Job::Text("[source]\nformat = \"postgres\"\nurl = \"postgres://u:Hunter2pw@127.0.0.1:1/db\"\ntable = \"t\"\nquery = \"SELECT 1\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("pg_table_three_parts", Job::Text("[source]\npath = \"in/\"\nformat = \"csv\"\n[target]\nformat = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\ntable = \"a.b.c\"\n", &[]), 2),
        case("pg_merge_without_keys", Job::Text("[source]\npath = \"in/\"\nformat = \"csv\"\n[target]\nformat = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\ntable = \"t\"\nmode = \"merge\"\n", &[]), 2),
        case("delta_merge_without_keys", Job::Demo(|s| s.replace("format = \"parquet\"\npath = \"warehouse/transactions\"", "format = \"delta\"\nmode = \"merge\"\npath = \"warehouse/transactions\"")), 2),
        // Nothing listens on port 1: a clear connection error naming the masked URL.
        case("pg_bad_sslmode", Job::Text("[source]\nformat = \"postgres\"\nurl = \"postgres://u:Hunter2pw@127.0.0.1:1/db?sslmode=allow\"\ntable = \"t\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("pg_missing_root_cert", Job::Text("[source]\nformat = \"postgres\"\nurl = \"postgres://u:Hunter2pw@127.0.0.1:1/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem\"\ntable = \"t\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("pg_unreachable", Job::Text("[source]\nformat = \"postgres\"\nurl = \"postgres://u:Hunter2pw@127.0.0.1:1/db\"\ntable = \"t\"\n[target]\npath = \"out\"\n", &[]), 1),
        case(
            "json_broken_line",
            Job::Text(
                "[source]\nformat = \"json\"\npath = \"in/\"\n[target]\npath = \"out\"\n",
                &[("in/a.json", b"{\"a\": 1}\n{\"a\": 2\n{\"a\": 3}\n")],
            ),
            1,
        ),
        case("bad_delimiter", Job::Text("[source]\nformat = \"csv\"\npath = \"in/\"\ndelimiter = \"ab\"\n[target]\npath = \"out\"\n", &[]), 2),
        case("bad_compression", Job::Demo(|s| s.replace("compression = \"zstd\"", "compression = \"brotli\"")), 2),
        case("bad_timezone", Job::Demo(|s| s.replace("[range]\n", "[range]\ntimezone = \"Mars/Olympus\"\n")), 2),
        case("week_start_on_months", Job::Demo(|s| s.replace("[range]\n", "[range]\ntimezone = \"Europe/Berlin\"\nweek_start = \"monday\"\n").replace("chunk = \"7d\"", "chunk = \"1 month\"")), 2),
        case("naive_local_without_zone", Job::Demo(|s| s.replace("[range]\n", "[range]\nnaive_timestamps = \"local\"\n")), 2),
        case("timezone_on_naive_column_undeclared", Job::Demo(|s| s.replace("[range]\n", "[range]\ntimezone = \"Europe/Berlin\"\n")), 2),
        case("timezone_on_hourly_chunks", Job::Demo(|s| s.replace("[range]\n", "[range]\ntimezone = \"Europe/Berlin\"\n").replace("chunk = \"7d\"", "chunk = \"12h\"")), 2),
        case("bucket_count_zero", Job::Demo(|s| s.replace("[range]\n", "[range]\nbuckets = 0\nbucket_column = \"customer_id\"\n")), 2),
        case("buckets_without_bucket_column", Job::Demo(|s| s.replace("[range]\n", "[range]\nbuckets = 4\n")), 2),
        case("bucket_column_is_a_float", Job::Demo(|s| s.replace("[range]\n", "[range]\nbuckets = 4\nbucket_column = \"amount\"\n")), 2),
        case("bucket_column_missing_from_source", Job::Demo(|s| s.replace("[range]\n", "[range]\nbuckets = 4\nbucket_column = \"shop_id\"\n")), 2),
        case("sort_by_unknown_column", Job::Demo(|s| s.replace("compression = \"zstd\"", "sort_by = [\"shop_id\"]\ncompression = \"zstd\"")), 2),
        case("sort_by_bad_direction", Job::Demo(|s| s.replace("compression = \"zstd\"", "sort_by = [\"amount sideways\"]\ncompression = \"zstd\"")), 2),
        case("max_file_rows_zero", Job::Demo(|s| s.replace("compression = \"zstd\"", "max_file_rows = 0\ncompression = \"zstd\"")), 2),
        case(
            "duplicate_partition_column",
            Job::Demo(|s| s.replace("partition_by = [\"year\", \"month\"]", "partition_by = [\"year\", \"year\"]")),
            2,
        ),
        case("dedup_key_missing", Job::Demo(|s| s.replace("keys = [\"transaction_id\"]", "keys = [\"txn\"]")), 2),
        case(
            "column_override_unknown",
            Job::Text(
                "[source]\nformat = \"csv\"\npath = \"in/\"\n[source.columns]\nnope = \"int\"\n[target]\npath = \"out\"\n",
                &[("in/a.csv", b"a,b\n1,2\n")],
            ),
            2,
        ),
        case(
            "rules_not_an_array",
            Job::Text(
                "[source]\nformat = \"parquet\"\npath = \"s/\"\n[target]\npath = \"t\"\n[rules]\nname = \"x\"\ncheck = \"a > 0\"\n",
                &[],
            ),
            2,
        ),
        Case {
            args: &["run", "JOB", "--from", "yesterday"],
            ..case("bad_from_flag", Job::Demo(|s| s), 2)
        },
        Case {
            args: &["run", "JOB", "--from", "2023-05-01", "--to", "2023-04-01"],
            ..case("to_before_from", Job::Demo(|s| s), 2)
        },
        Case {
            committed_first: true,
            prepare: Some(|d| {
                let p = d.join("backfill.toml");
                let s = std::fs::read_to_string(&p).unwrap().replace("chunk = \"7d\"", "chunk = \"1 month\"");
                std::fs::write(p, s).unwrap();
            }),
            ..case("changed_range_without_replan", Job::Demo(|s| s), 2)
        },
        // Another job's file names this job's state: refused, naming both.
        Case {
            committed_first: true,
            prepare: Some(|d| {
                let p = d.join("backfill.toml");
                let s = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("name = \"transactions\"", "name = \"refunds\"")
                    .replace("path = \"warehouse/transactions\"", "path = \"warehouse/refunds\"")
                    .replace("[state]\n", "[state]\npath = \".backfill/transactions.db\"\n");
                std::fs::write(p, s).unwrap();
            }),
            ..case("state_of_another_job", Job::Demo(|s| s), 2)
        },
        Case {
            args: &["status", "JOB"],
            committed_first: true,
            prepare: Some(|d| {
                let p = d.join("backfill.toml");
                let s = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("path = \"warehouse/transactions\"", "path = \"warehouse/elsewhere\"");
                std::fs::write(p, s).unwrap();
            }),
            ..case("status_of_a_state_writing_elsewhere", Job::Demo(|s| s), 2)
        },
        Case {
            args: &["validate", "JOB", "--group-by", "no_such_column"],
            committed_first: true,
            ..case("validate_unknown_group_column", Job::Demo(|s| s), 2)
        },
    ]
}

fn hostile_partitions(dir: &Path) {
    let values = [
        "../../escape",
        "a/b",
        "x=y",
        "50%",
        "",
        ".hidden",
        "_tmp",
        "..",
        "nul\0byte",
        "ok",
    ];
    let mut csv = String::from("id,p\n");
    for (i, v) in values.iter().enumerate() {
        csv.push_str(&format!("{i},\"{v}\"\n"));
    }
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/a.csv"), csv).unwrap();
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((p.strip_prefix(root).unwrap().display().to_string(), len));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn every_bad_input_gets_a_clear_error_and_loses_nothing() {
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        match &c.job {
            Job::Demo(edit) => {
                backfill::demo::generate(&d.join("source"), 300, 7).unwrap();
                let good = backfill::core::spec::EXAMPLE_JOB
                    .replace("retry_backoff = \"1s\"", "retry_backoff = \"10ms\"");
                std::fs::write(d.join("backfill.toml"), &good).unwrap();
                if c.committed_first {
                    let out = std::process::Command::new(BIN)
                        .args(["-q", "run", d.join("backfill.toml").to_str().unwrap()])
                        .output()
                        .unwrap();
                    assert_eq!(code(&out), 0, "{}: first run\n{}", c.name, text(&out));
                }
                std::fs::write(d.join("backfill.toml"), edit(good)).unwrap();
            }
            Job::Text(job, files) => {
                std::fs::write(d.join("backfill.toml"), job).unwrap();
                for (path, bytes) in *files {
                    let p = d.join(path);
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, bytes).unwrap();
                }
            }
        }
        let before = listing(&d.join("warehouse"));
        if let Some(prepare) = c.prepare {
            prepare(d);
        }
        let job = d.join("backfill.toml").display().to_string();
        let args: Vec<&str> = c
            .args
            .iter()
            .map(|a| if *a == "JOB" { job.as_str() } else { a })
            .collect();
        let mut cmd = std::process::Command::new(BIN);
        // -q: per-chunk log lines of parallel runs come in any order.
        cmd.arg("-q")
            .args(&args)
            .env_remove("BACKFILL_FAILPOINTS")
            .env("NO_COLOR", "1");
        for (k, v) in c.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if code(&out) != c.exit || stderr.contains("panicked") {
            failures.push(format!(
                "{}: expected exit {}\n{}",
                c.name,
                c.exit,
                text(&out)
            ));
            continue;
        }
        if c.committed_first {
            assert_eq!(
                listing(&d.join("warehouse")),
                before,
                "{}: committed files changed",
                c.name
            );
        }
        if c.name == "hostile_partition_values" {
            let files = listing(&d.join("out"));
            assert_eq!(
                files
                    .iter()
                    .filter(|(f, _)| f.ends_with(".parquet"))
                    .count(),
                10,
                "{files:?}"
            );
            for (f, _) in &files {
                assert_eq!(
                    f.matches('/').count(),
                    1,
                    "one directory level per file: {f}"
                );
                assert!(f.starts_with("p="), "{f}");
            }
            let escaped = listing(d)
                .into_iter()
                .filter(|(f, _)| {
                    !f.starts_with("out/")
                        && !f.starts_with("in/")
                        && !f.starts_with(".backfill/")
                        && f != "backfill.toml"
                })
                .count();
            assert_eq!(escaped, 0, "nothing written outside the target");
        }
        let shown = format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            code(&out),
            String::from_utf8_lossy(&out.stdout),
            stderr
        )
        .replace(&d.display().to_string(), "[TMP]")
        // Object-store locations drop the leading slash.
        .replace(d.display().to_string().trim_start_matches('/'), "[TMP]");
        let shown = scrub_volatile(&shown);
        insta::assert_snapshot!(c.name, shown);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Timings, rates and log timestamps change from run to run.
fn scrub_volatile(s: &str) -> String {
    // "(734 rows/s)" -> "([N] rows/s)"
    let mut scrubbed = String::new();
    let mut rest = s;
    while let Some(end) = rest.find(" rows/s)") {
        let start = rest[..end].rfind('(').unwrap_or(end);
        scrubbed.push_str(&rest[..start]);
        scrubbed.push_str("([N] rows/s)");
        rest = &rest[end + " rows/s)".len()..];
    }
    scrubbed.push_str(rest);
    scrubbed
        .lines()
        .map(|l| {
            let l = match l
                .find(" INFO ")
                .or_else(|| l.find(" WARN "))
                .or_else(|| l.find(" ERROR "))
            {
                Some(i) if l.starts_with("20") => &l[i + 1..],
                _ => l,
            };
            l.split(' ')
                .map(|word| {
                    let core = word.trim_matches(|c: char| "(),;".contains(c));
                    if core.starts_with(|c: char| c.is_ascii_digit()) && core.contains('.') {
                        "[N]"
                    } else {
                        word
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
