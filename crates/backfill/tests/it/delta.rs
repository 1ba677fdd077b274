//! Delta Lake targets, read back with the Python `deltalake` package (as
//! users' tools would) and compared with DuckDB's figures for the same job.

use crate::harness::*;
use crate::quality::{assert_months_equal, expected_global};

/// Where [`target_to_delta`] puts the table.
pub fn delta_path(demo: &Demo) -> String {
    demo.path()
        .join("warehouse/transactions_delta")
        .display()
        .to_string()
}

/// Points the demo job's target at a Delta table.
pub fn target_to_delta(demo: &Demo) {
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"\npath = \"warehouse/transactions\"",
            "format = \"delta\"\nmode = \"replace\"\npath = \"warehouse/transactions_delta\"",
        )
    });
}

/// Per month rows and sums, a row fingerprint and the table version, as the
/// `deltalake` package reads the table.
fn read_delta(demo: &Demo) -> serde_json::Value {
    let snippet = r#"
import deltalake, duckdb, json, sys
dt = deltalake.DeltaTable(sys.argv[1])
t = dt.to_pyarrow_table()
con = duckdb.connect()
con.register("t", t)
months = con.execute("SELECT month::INT, count(*), round(sum(amount), 2) FROM t GROUP BY 1 ORDER BY 1").fetchall()
fp = con.execute("SELECT count(*), sum(hash(transaction_id, customer_id, created_at, amount, status, region, category, email, year::INT, month::INT, day))::VARCHAR, count(*) - count(DISTINCT transaction_id) FROM t").fetchall()[0]
print(json.dumps({"months": [list(m) for m in months], "fp": [fp[0], fp[1]], "dup_keys": fp[2], "version": dt.version(), "files": len(dt.file_uris())}))
"#;
    pyarrow(snippet, &delta_path(demo))
}

/// A JSON array of rows as the row lists `assert_months_equal` takes.
fn rows(v: &serde_json::Value) -> Vec<Vec<serde_json::Value>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_array().unwrap().clone())
        .collect()
}

#[test]
fn parquet_to_delta_matches_duckdb_and_reruns_replace_each_chunk() {
    let demo = Demo::new(10_000, "\"1 month\"");
    target_to_delta(&demo);
    demo.run_ok(&[]);
    let (months, _) = expected_global(&demo);
    let first = read_delta(&demo);
    assert_months_equal(&months, &rows(&first["months"]));
    assert_eq!(first["dup_keys"], 0);
    // 12 chunk commits after the table's creation.
    assert_eq!(first["version"], 12, "{first}");
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    // Every chunk again: one commit each swaps its files, same rows.
    demo.run_ok(&["--from", "2023-01-01", "--to", "2024-01-01"]);
    let again = read_delta(&demo);
    assert_eq!(again["fp"], first["fp"]);
    assert_eq!(
        again["files"], first["files"],
        "old files must leave the table"
    );
    assert_eq!(again["version"], 24, "{again}");
}

#[test]
fn a_crash_at_any_step_of_a_delta_commit_is_repaired() {
    let reference = {
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_delta(&demo);
        demo.run_ok(&[]);
        read_delta(&demo)["fp"].clone()
    };
    for point in [
        "after_write:3",
        "in_commit_txn:2",
        "after_commit:2",
        "after_publish:4",
    ] {
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_delta(&demo);
        let out = demo.run_env(&["run", &demo.job_str()], &[("BACKFILL_FAILPOINTS", point)]);
        assert_ne!(code(&out), 0, "{point}: {}", text(&out));
        demo.run_ok(&[]);
        let got = read_delta(&demo);
        assert_eq!(got["fp"], reference, "after a crash at {point}");
        assert_eq!(got["dup_keys"], 0);
    }
    for delay_ms in [200u64, 500, 900] {
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_delta(&demo);
        demo.run_killed_after(&[], delay_ms);
        demo.run_ok(&[]);
        assert_eq!(
            read_delta(&demo)["fp"],
            reference,
            "after kill -9 at {delay_ms} ms"
        );
    }
}

#[test]
fn delta_merge_upserts_each_chunk_once_and_validates() {
    let demo = Demo::new(10_000, "\"1 month\"");
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"\npath = \"warehouse/transactions\"",
            "format = \"delta\"\nmode = \"merge\"\nkeys = [\"transaction_id\"]\npath = \"warehouse/transactions_delta\"",
        )
    });
    demo.run_ok(&[]);
    let (months, _) = expected_global(&demo);
    let first = read_delta(&demo);
    assert_months_equal(&months, &rows(&first["months"]));
    assert_eq!(first["dup_keys"], 0);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // Merging every chunk again changes no row, and the staging is cleared.
    demo.run_ok(&["--from", "2023-01-01", "--to", "2024-01-01"]);
    let again = read_delta(&demo);
    assert_eq!(again["fp"], first["fp"]);
    assert_eq!(again["dup_keys"], 0);
    let staging = demo
        .path()
        .join("warehouse/transactions_delta/_backfill_staging");
    let left = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "staged files left in {}", staging.display());
    // A crash after the state commit: recovery merges the chunk, once.
    let out = demo.run_env(
        &[
            "run",
            &demo.job_str(),
            "--from",
            "2023-03-01",
            "--to",
            "2023-04-01",
        ],
        &[("BACKFILL_FAILPOINTS", "after_commit:1")],
    );
    assert_ne!(code(&out), 0, "{}", text(&out));
    demo.run_ok(&[]);
    assert_eq!(read_delta(&demo)["fp"], first["fp"]);
}
