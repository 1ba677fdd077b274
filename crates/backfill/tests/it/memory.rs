//! `[run] memory_limit` and the open-file limit: what grows with the data
//! (rows a dedup holds back, files of a high-cardinality `partition_by`)
//! goes to disk or waits for a later round instead, and the target is still
//! exactly DuckDB's answer. Peak memory itself is measured in `bench/`.

use crate::harness::*;

const ORDER: &str = "created_at DESC NULLS LAST, amount DESC NULLS LAST";

/// Rewrites the demo source as a change log: nine keys in ten get five
/// versions (later and larger), the tenth keeps one.
fn change_log(demo: &Demo) {
    let source = demo.path().join("source");
    let log = demo.path().join("log.parquet");
    duckdb(&format!(
        "COPY (SELECT * REPLACE (created_at + to_hours(v) AS created_at, amount + v AS amount) \
           FROM read_parquet('{}'), range(5) t(v) \
           WHERE v = 0 OR transaction_id % 10 <> 0 ORDER BY created_at) TO '{}' (FORMAT PARQUET)",
        demo.source_glob(),
        log.display()
    ));
    std::fs::remove_dir_all(&source).unwrap();
    std::fs::create_dir_all(&source).unwrap();
    std::fs::rename(&log, source.join("log.parquet")).unwrap();
}

fn fingerprint_sql(from: &str) -> String {
    format!(
        "SELECT count(*), sum(hash(transaction_id, created_at, amount, email))::VARCHAR FROM {from}"
    )
}

/// DuckDB's answer: each key's latest passing version.
fn latest_per_key(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&fingerprint_sql(&format!(
        "(SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn \
           FROM ({}) WHERE rule IS NULL) WHERE rn = 1",
        ruled_source_sql(demo)
    )))
}

/// The target's rows, as DuckDB reads them.
fn target_rows(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&fingerprint_sql(&format!(
        "read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    )))
}

#[test]
fn a_change_log_dedups_in_one_chunk_by_spilling_held_rows() {
    let demo = Demo::new(8_000, "\"all\"");
    change_log(&demo);
    // Held rows get an eighth of the limit, 512 KiB; the 36,800 source
    // rows, most of them of repeated keys, take several MiB, and even
    // their 7,800 winners more than that.
    demo.edit_job(|s| {
        s.replace(
            "parallelism = 2",
            "parallelism = 2\nmemory_limit = \"4MiB\"",
        )
    });
    let out = demo.run_ok(&[]);
    assert!(
        text(&out).contains("spilling them to"),
        "the held rows never spilled:\n{}",
        text(&out)
    );
    let expected = latest_per_key(&demo);
    assert_eq!(target_rows(&demo), expected);
    assert_eq!(duplicate_rows(&demo), 0);
    let status = demo.status_json();
    assert!(
        int(&status["totals"]["duplicates"]) > 25_000,
        "duplicates counted: {status}"
    );
    // `validate` re-derives the same rows under the same limit.
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // Nothing is left in the state directory.
    let left: Vec<_> = std::fs::read_dir(demo.path().join(".backfill"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dedup-spill-"))
        .collect();
    assert!(left.is_empty(), "spill directories left: {left:?}");
}

#[test]
fn a_change_log_in_weekly_chunks_builds_its_dedup_index_in_parts() {
    let demo = Demo::new(16_000, "\"7d\"");
    change_log(&demo);
    // 73,600 source rows: their repeated keys' hashes would take more
    // than their eighth of 4 MiB exactly, and the index's 72,000 versions
    // (each some 120 bytes in memory) much more than its quarter.
    demo.edit_job(|s| {
        s.replace(
            "parallelism = 2",
            "parallelism = 2\nmemory_limit = \"4MiB\"",
        )
    });
    let out = demo.run_ok(&[]);
    for said in ["a filter of", "building it in"] {
        assert!(text(&out).contains(said), "no '{said}':\n{}", text(&out));
    }
    let expected = latest_per_key(&demo);
    assert_eq!(target_rows(&demo), expected);
    assert_eq!(duplicate_rows(&demo), 0);
    // `validate` and a narrowed re-run read the saved index; the re-run
    // changes nothing.
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    let again = demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    assert!(!text(&again).contains("building it in"), "{}", text(&again));
    assert_eq!(target_rows(&demo), expected);
    let left: Vec<_> = std::fs::read_dir(demo.path().join(".backfill"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dedup-"))
        .collect();
    assert!(left.is_empty(), "spill directories left: {left:?}");
}

/// Runs `backfill ARGS` with the soft and hard open-file limit at `files`.
fn run_with_file_limit(files: u32, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .env_remove("BACKFILL_FAILPOINTS")
        .env("NO_COLOR", "1");
    cmd.output().expect("run backfill")
}

#[test]
fn thousands_of_partition_values_get_one_file_each_under_a_file_limit() {
    for format in ["parquet", "delta"] {
        let demo = Demo::new(9_000, "\"all\"");
        demo.without_quality();
        // 2,000 values, met in an order unrelated to them.
        demo.edit_job(|s| {
            s.replace(
                "AS day FROM source",
                "AS day, coalesce((transaction_id * 7919) % 2000, 0) AS p FROM source",
            )
            .replace(
                "partition_by = [\"year\", \"month\"]",
                "partition_by = [\"p\"]",
            )
        });
        let table = if format == "delta" {
            target_to_delta(&demo);
            std::path::PathBuf::from(delta_path(&demo))
        } else {
            demo.warehouse()
        };
        let job = demo.job_str();
        let out = run_with_file_limit(256, &["run", &job]);
        assert_eq!(code(&out), 0, "{format}: {}", text(&out));
        assert!(
            text(&out).contains("wait in"),
            "{format}: never ran out of open files:\n{}",
            text(&out)
        );
        let per_value = |from: &str| {
            format!(
                "SELECT count(DISTINCT p), count(*), sum(hash(transaction_id, created_at, amount, p::BIGINT))::VARCHAR FROM {from}"
            )
        };
        let expected = duckdb(&per_value(&format!(
            "(SELECT *, coalesce((transaction_id * 7919) % 2000, 0) AS p FROM read_parquet('{}') \
               WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01')",
            demo.source_glob()
        )));
        assert_eq!(int(&expected[0][0]), 2_000);
        let target = if format == "delta" {
            // As the `deltalake` package reads the table.
            let snippet = format!(
                "import deltalake, duckdb, json, sys\n\
                 t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
                 con = duckdb.connect()\n\
                 con.register('t', t)\n\
                 print(json.dumps([list(r) for r in con.execute(\"{}\").fetchall()]))\n",
                per_value("t")
            );
            let v = pyarrow(&snippet, &table.display().to_string());
            v.as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_array().unwrap().clone())
                .collect()
        } else {
            duckdb(&per_value(&format!(
                "read_parquet('{}', hive_partitioning = true)",
                demo.target_glob()
            )))
        };
        assert_eq!(target, expected, "{format}");
        // One file per value: the rows of a value were not scattered over
        // files as files were closed and reopened.
        let mut dirs = 0;
        for entry in std::fs::read_dir(&table).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("p=") {
                continue;
            }
            dirs += 1;
            let files = std::fs::read_dir(entry.path())
                .unwrap()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().ends_with(".parquet"))
                .count();
            assert_eq!(files, 1, "{format}: {name} has {files} files");
        }
        assert_eq!(dirs, 2_000, "{format}");
        let v = run_with_file_limit(256, &["validate", &job]);
        assert_eq!(code(&v), 0, "{format}: {}", text(&v));
    }
}
