//! PostgreSQL as source and target, against the real server that
//! `scripts/test.sh` starts (`BACKFILL_TEST_PG_URL`). Each test works in a
//! schema of its own. Expected figures come from DuckDB over the source
//! Parquet files; the raw rows reach PostgreSQL through DuckDB's CSV and
//! PostgreSQL's own `COPY ... (FORMAT csv)`, not through `backfill`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

mod secrets;
mod state;
mod target;
pub(crate) mod tls;

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
