//! The demo job against DuckDB's figures for the same range and transform.

use crate::harness::*;

#[test]
fn weekly_backfill_matches_duckdb() {
    let demo = Demo::new(20_000, "\"7d\"");
    demo.without_quality();
    let out = demo.run_ok(&[]);
    assert!(
        stdout(&out).contains("53 of 53 selected chunks committed"),
        "{}",
        text(&out)
    );

    let expected = duckdb(&format!(
        "SELECT month(created_at) AS m, count(*), round(sum(amount), 4)
         FROM read_parquet('{}')
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'
         GROUP BY m ORDER BY m",
        demo.source_glob()
    ));
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 4)
         FROM read_parquet('{}', hive_partitioning = true)
         GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_eq!(expected.len(), 12);
    assert_eq!(actual.len(), 12, "{actual:?}");
    for (e, a) in expected.iter().zip(&actual) {
        assert_eq!(int(&e[0]), int(&a[0]), "month");
        assert_eq!(int(&e[1]), int(&a[1]), "count of month {}", e[0]);
        assert!(
            (float(&e[2]) - float(&a[2])).abs() < 1e-3,
            "sum of month {}: {} vs {}",
            e[0],
            e[2],
            a[2]
        );
    }
    let total: i64 = expected.iter().map(|r| int(&r[1])).sum();
    assert_eq!(total, 20_000);

    // The transform's day column and the Hive layout agree with the data.
    let mismatched = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', hive_partitioning = true)
         WHERE year <> year(created_at) OR month <> month(created_at) OR day <> day(created_at)",
        demo.target_glob()
    ));
    assert_eq!(int(&mismatched[0][0]), 0);

    // pyarrow's dataset reader sees the same rows (it skips `.`/`_` files).
    let n = pyarrow(
        "import pyarrow.dataset as ds, json, sys\nprint(json.dumps(ds.dataset(sys.argv[1], format='parquet', partitioning='hive').count_rows()))",
        demo.warehouse().to_str().unwrap_or_default(),
    );
    assert_eq!(n.as_i64(), Some(20_000));

    // status --json: every chunk committed, rows add up, and the range
    // predicate reached the scan: a week reads a fraction of the source.
    let status = demo.run(&["status", demo.job().to_str().unwrap_or_default(), "--json"]);
    assert_eq!(code(&status), 0, "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(json["totals"]["committed"], 53);
    assert_eq!(json["totals"]["rows_read"], 20_000);
    assert_eq!(json["totals"]["rows_written"], 20_000);
    let source_bytes: u64 = std::fs::read_dir(demo.path().join("source"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    for c in json["chunks"].as_array().unwrap() {
        let read = c["metrics"]["bytes_read"].as_u64().unwrap();
        assert!(read > 0, "chunk {} read nothing", c["id"]);
        assert!(
            read * 3 < source_bytes,
            "chunk {} read {read} of {source_bytes} source bytes: the range was not pushed into the scan",
            c["id"]
        );
    }
}

#[test]
fn rerun_is_idempotent_and_narrowed_rerun_changes_nothing() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.run_ok(&[]);
    let first = target_fingerprint(&demo);
    let files = demo.warehouse_files();
    assert!(
        files
            .iter()
            .all(|f| f.ends_with(".parquet") && f.contains("/part-")),
        "{files:?}"
    );

    let again = demo.run_ok(&[]);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    assert_eq!(target_fingerprint(&demo), first);
    assert_eq!(demo.warehouse_files(), files);

    // Re-run March only: its files are replaced, nothing else changes.
    let out = demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    assert!(
        stdout(&out).contains("1 of 1 selected chunks committed"),
        "{}",
        text(&out)
    );
    assert_eq!(target_fingerprint(&demo), first);
    assert_eq!(duplicate_rows(&demo), 0);
    let after = demo.warehouse_files();
    assert_eq!(after.len(), files.len(), "{after:?}");
    let changed: Vec<_> = after.iter().filter(|f| !files.contains(f)).collect();
    assert!(
        !changed.is_empty() && changed.iter().all(|f| f.starts_with("year=2023/month=3/")),
        "{changed:?}"
    );
}
