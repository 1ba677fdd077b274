//! Delta Lake targets, read back with the Python `deltalake` package (as
//! users' tools would) and compared with DuckDB's figures for the same job.

use crate::harness::*;

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

const ROW_HASH: &str =
    "hash(transaction_id, customer_id, created_at, amount, status, region, category, email)";

/// Rows, a row fingerprint and repeated rows of the Delta table, as the
/// `deltalake` package reads it.
fn table_rows(demo: &Demo) -> (i64, String, i64) {
    let snippet = format!(
        r#"
import deltalake, duckdb, json, sys
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
con = duckdb.connect()
con.register("t", t)
r = con.execute("SELECT count(*), sum({ROW_HASH})::VARCHAR, count(*) - (SELECT count(*) FROM (SELECT DISTINCT * FROM t)) FROM t").fetchall()[0]
print(json.dumps([r[0], r[1], r[2]]))
"#
    );
    let v = pyarrow(&snippet, &delta_path(demo));
    (int(&v[0]), v[1].to_string(), int(&v[2]))
}

/// The same figures for the source rows in the job's range (DuckDB).
fn source_rows(demo: &Demo) -> (i64, String) {
    let r = duckdb(&format!(
        "SELECT count(*), sum({ROW_HASH})::VARCHAR FROM read_parquet('{}/source/*.parquet')
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'",
        demo.path().display()
    ));
    (int(&r[0][0]), r[0][1].to_string())
}

fn python_on_table(demo: &Demo, code_text: &str) {
    let snippet = format!(
        "import deltalake, pyarrow as pa, pyarrow.compute as pc, json, sys\npath = sys.argv[1]\n{code_text}\nprint(1)"
    );
    pyarrow(&snippet, &delta_path(demo));
}

#[test]
fn delta_replace_owns_its_whole_range_whoever_wrote_it() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.without_quality();
    target_to_delta(&demo);
    let check = |step: &str| {
        let (rows, hash, repeated) = table_rows(&demo);
        assert_eq!(repeated, 0, "after {step}: rows in the table twice");
        assert_eq!(
            (rows, hash),
            source_rows(&demo),
            "after {step}: the table is not the source's rows, once each"
        );
        let v = demo.run(&["validate", &demo.job_str()]);
        assert_eq!(code(&v), 0, "validate after {step}:\n{}", text(&v));
    };
    demo.run_ok(&[]);
    check("the first run");

    // A replan to weekly chunks: the monthly chunks' files are no longer
    // any chunk's, and every week replaces its range across them.
    demo.edit_job(|s| s.replace("chunk = \"1 month\"", "chunk = \"7d\""));
    demo.run_ok(&["--replan"]);
    check("a replan from monthly to weekly chunks");

    // Another tool compacts the table: no file carries a chunk's name now.
    python_on_table(&demo, "deltalake.DeltaTable(path).optimize.compact()");
    demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    check("a compaction, then a re-run of March");

    // A live pipeline appends rows in March (and one outside the range);
    // a repair backfill of March replaces the pipeline's March rows too.
    python_on_table(
        &demo,
        r#"dt = deltalake.DeltaTable(path)
t = dt.to_pyarrow_table()
march = t.filter(pc.equal(t["month"], 3)).slice(0, 20)
march = march.set_column(march.schema.get_field_index("transaction_id"), "transaction_id", pc.add(march["transaction_id"], 10**9))
deltalake.write_deltalake(path, march, mode="append")"#,
    );
    // Readers see the pipeline's rows in March: validate says so.
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));
    assert!(
        stdout(&v).contains("[2023-02-26, 2023-03-05)") || stdout(&v).contains("2023-03"),
        "{}",
        text(&v)
    );
    demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    check("foreign rows in March, then a re-run of March");

    // The state is lost: attempts count from 1 again, and the new files
    // must not take the names of the files the log references.
    std::fs::remove_dir_all(demo.path().join(".backfill")).expect("remove state");
    demo.run_ok(&[]);
    check("a lost state and a run");
    demo.run_ok(&["--from", "2023-06-01", "--to", "2023-07-01"]);
    check("a re-run after the lost state");
}

#[test]
fn a_delta_chunk_must_keep_its_range_column() {
    let demo = Demo::new(1_000, "\"1 month\"");
    demo.without_quality();
    target_to_delta(&demo);
    // The transform moves every row a day later: rows would land in the
    // next chunk's range, whose publish would remove them.
    demo.edit_job(|s| {
        s.replace(
            "SELECT *, date_part",
            "SELECT * REPLACE (created_at + INTERVAL '40 days' AS created_at), date_part",
        )
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("outside its range"), "{}", text(&out));
    // Dropping the range column is refused before anything runs.
    demo.edit_job(|s| {
        s.replace(
            "SELECT * REPLACE (created_at + INTERVAL '40 days' AS created_at), date_part",
            "SELECT * EXCLUDE (created_at), date_part",
        )
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("range.column"), "{}", text(&out));
}

#[test]
fn a_replan_that_shrinks_the_range_leaves_no_rows_outside_it() {
    // Rows of months the new plan no longer covers must go, as a Parquet
    // target's retired files do; validate reads only the plan's ranges, so
    // it could not tell.
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.without_quality();
    target_to_delta(&demo);
    demo.run_ok(&[]);
    demo.edit_job(|s| {
        s.replace("end = \"2024-01-01\"", "end = \"2023-07-15\"")
            .replace("chunk = \"1 month\"", "chunk = \"7d\"")
    });
    demo.run_ok(&["--replan"]);
    let (rows, hash, repeated) = table_rows(&demo);
    assert_eq!(repeated, 0);
    let expected = duckdb(&format!(
        "SELECT count(*), sum({ROW_HASH})::VARCHAR FROM read_parquet('{}/source/*.parquet')
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2023-07-15'",
        demo.path().display()
    ));
    assert_eq!(
        (rows, hash),
        (int(&expected[0][0]), expected[0][1].to_string()),
        "the table holds the new range's rows only"
    );
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // Back to the whole year (the short last week becomes a whole one).
    demo.edit_job(|s| s.replace("end = \"2023-07-15\"", "end = \"2024-01-01\""));
    demo.run_ok(&["--replan"]);
    let (rows, hash, _) = table_rows(&demo);
    assert_eq!((rows, hash), source_rows(&demo), "the whole year again");
}

#[test]
fn a_plain_run_replaces_what_another_writer_changed_in_a_committed_range() {
    // Issue 19: a live pipeline's rows in a committed range, or its
    // deletes there, made the table differ from the job's answer, and
    // only `validate` (and a run narrowed to the range) knew.
    let demo = Demo::new(6_000, "\"7d\"");
    demo.without_quality();
    target_to_delta(&demo);
    let run_json = |extra: &[&str]| crate::harness::run_json(&demo, extra);
    let same_as_source = |step: &str| {
        let (rows, hash, repeated) = table_rows(&demo);
        assert_eq!(repeated, 0, "after {step}: rows in the table twice");
        assert_eq!((rows, hash), source_rows(&demo), "after {step}");
        let v = demo.run(&["validate", &demo.job_str()]);
        assert_eq!(code(&v), 0, "validate after {step}:\n{}", text(&v));
    };
    run_json(&[]);

    // A compaction changes no rows: nothing runs again.
    python_on_table(&demo, "deltalake.DeltaTable(path).optimize.compact()");
    let summary = run_json(&[]);
    assert_eq!(summary["selected"], 0, "after a compaction: {summary}");

    // A pipeline appends rows in early March; another tool deletes a
    // third of May's rows (removing files the compaction wrote, which
    // the log's `remove` names without their statistics).
    python_on_table(
        &demo,
        r#"dt = deltalake.DeltaTable(path)
t = dt.to_pyarrow_table()
march = t.filter(pc.and_(pc.equal(t["month"], 3), pc.less(t["day"], 6))).slice(0, 20)
march = march.set_column(march.schema.get_field_index("transaction_id"), "transaction_id", pc.add(march["transaction_id"], 10**9))
deltalake.write_deltalake(path, march, mode="append")
deltalake.DeltaTable(path).delete("month = 5 AND transaction_id % 3 = 0")"#,
    );
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "validate sees the writes:\n{}", text(&v));
    let summary = run_json(&[]);
    let reruns = summary["foreign_reruns"].as_u64().unwrap_or(0);
    // The week of 2023-03-01..06 (one or two weekly chunks) and the five
    // weeks touching May.
    assert!(
        (5..=8).contains(&reruns),
        "the weeks of early March and of May, no others: {summary}"
    );
    same_as_source("a foreign append and delete, then a plain run");

    // Replaced once, they stay replaced.
    let summary = run_json(&[]);
    assert_eq!(summary["selected"], 0, "{summary}");
}

#[test]
fn merge_never_replaces_a_newer_version_with_an_older_one() {
    // Issue 20: re-running an older window in merge mode put its older
    // versions back over keys a later chunk had updated.
    let demo = Demo::new(6_000, "\"7d\"");
    crate::harness::dedup_per_chunk(&demo);
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"\npath = \"warehouse/transactions\"",
            "format = \"delta\"\nmode = \"merge\"\nkeys = [\"transaction_id\"]\npath = \"warehouse/transactions_delta\"",
        )
    });
    demo.run_ok(&[]);
    crate::harness::newer_versions_in_april(&demo);
    // April's weeks run again (a source file under them is new).
    demo.run_ok(&[]);
    demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    let v = pyarrow(
        "import deltalake, duckdb, json, sys\nt = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\ncon = duckdb.connect()\ncon.register('t', t)\nprint(json.dumps([str(x) for x in con.execute('SELECT count(*), sum(transaction_id), round(sum(amount) * 100)::BIGINT FROM t').fetchall()[0]]))",
        &delta_path(&demo),
    );
    let table: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        table,
        crate::harness::latest_per_key(&demo),
        "rows, sum(id), sum(amount): the latest version of each key"
    );
}

#[test]
fn a_delta_replace_whose_transform_drops_the_range_column_is_a_job_file_error() {
    // A Delta replace finds a chunk's rows in the table by the range column;
    // without it in the transformed rows nothing could be replaced.
    let demo = Demo::new(300, "\"1 month\"");
    demo.without_quality();
    target_to_delta(&demo);
    demo.edit_job(|s| {
        s.replace(
            "SELECT *, date_part('year', created_at)",
            "SELECT * EXCLUDE (created_at), date_part('year', created_at)",
        )
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).contains(
            "range.column: a Delta target replaces each chunk's range by the column \"created_at\""
        ),
        "{}",
        text(&out)
    );
    assert!(
        !std::path::Path::new(&delta_path(&demo)).exists(),
        "nothing written"
    );
}
