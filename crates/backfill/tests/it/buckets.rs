//! `[range] buckets`: one chunk per hash bucket of a column (with or
//! without time windows), on Parquet and PostgreSQL. DuckDB computes the
//! same split from the hash the README states, so each chunk's rows are
//! checked against it, and the target must equal the one an unbucketed run
//! of the same job writes.

use serde_json::Value;

use crate::harness::*;

/// The README's bucket of `column`, in DuckDB.
fn bucket_sql(column: &str, of: u32) -> String {
    format!("coalesce(('0x' || left(md5(CAST({column} AS VARCHAR)), 15))::BIGINT % {of}, 0)")
}

/// Replaces the demo job's `[range]` body (up to `[transform]`).
fn set_range(demo: &Demo, body: &str) {
    demo.edit_job(|s| {
        let start = s.find("[range]\n").expect("range") + "[range]\n".len();
        let end = s.find("[transform]").expect("transform");
        format!("{}{body}\n\n{}", &s[..start], &s[end..])
    });
}

fn rows_read_per_chunk(status: &Value) -> Vec<i64> {
    status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| int(&c["metrics"]["rows_read"]))
        .collect()
}

#[test]
fn bucket_chunks_hold_duckdbs_buckets_and_the_target_equals_an_unbucketed_run() {
    let plain = Demo::new(8_000, "\"all\"");
    set_range(&plain, "column = \"created_at\"\nchunk = \"all\"");
    plain.run_ok(&[]);
    let want = target_fingerprint(&plain);

    // Buckets alone: the range column is the hashed one.
    let demo = Demo::new(8_000, "\"all\"");
    set_range(&demo, "column = \"customer_id\"\nbuckets = 8");
    let plan = demo.run(&["plan", &demo.job_str(), "--json"]);
    assert_eq!(code(&plan), 0, "{}", text(&plan));
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["total"], 8);
    demo.run_ok(&[]);
    let per_bucket = duckdb(&format!(
        "SELECT {} AS b, count(*) FROM read_parquet('{}') GROUP BY b ORDER BY b",
        bucket_sql("customer_id", 8),
        demo.source_glob()
    ));
    let status = demo.status_json();
    let expected: Vec<i64> = per_bucket.iter().map(|r| int(&r[1])).collect();
    assert_eq!(rows_read_per_chunk(&status), expected);
    // Global dedup across buckets and the rules give the same rows.
    assert_eq!(target_fingerprint(&demo), want);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // Running every bucket again changes nothing.
    let out = demo.run(&["reset", &demo.job_str(), "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    demo.run_ok(&[]);
    assert_eq!(target_fingerprint(&demo), want);

    // Time windows times buckets: chunk `w * 4 + b`.
    let demo = Demo::new(8_000, "\"all\"");
    set_range(
        &demo,
        "column = \"created_at\"\nstart = \"2023-01-01\"\nend = \"2024-01-01\"\nchunk = \"3 months\"\nbuckets = 4\nbucket_column = \"customer_id\"",
    );
    demo.run_ok(&[]);
    let per_cell = duckdb(&format!(
        "SELECT quarter(created_at) AS q, {} AS b, count(*) FROM read_parquet('{}') \
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01' \
         GROUP BY q, b ORDER BY q, b",
        bucket_sql("customer_id", 4),
        demo.source_glob()
    ));
    assert_eq!(per_cell.len(), 16);
    let status = demo.status_json();
    let expected: Vec<i64> = per_cell.iter().map(|r| int(&r[2])).collect();
    assert_eq!(rows_read_per_chunk(&status), expected);
    let windowed = Demo::new(8_000, "\"3 months\"");
    windowed.run_ok(&[]);
    assert_eq!(target_fingerprint(&demo), target_fingerprint(&windowed));
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn postgres_bucket_chunks_are_pushed_down_and_replace_only_their_bucket() {
    let pg = Pg::new("buckets");
    let demo = Demo::new(6_000, "\"all\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "");
    target_to_pg(&demo, &pg, "tx", "replace");
    set_range(&demo, "column = \"customer_id\"\nbuckets = 5");
    run_pg_ok(&demo, &pg, &["run"]);
    let per_bucket = duckdb(&format!(
        "SELECT {} AS b, count(*) FROM read_parquet('{}') GROUP BY b ORDER BY b",
        bucket_sql("customer_id", 5),
        demo.source_glob()
    ));
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    // Each chunk read only its bucket's rows from the server.
    let expected: Vec<i64> = per_bucket.iter().map(|r| int(&r[1])).collect();
    assert_eq!(rows_read_per_chunk(&status), expected);
    // PostgreSQL's own hash agrees with DuckDB's on the written rows.
    let in_pg = pg.rows(&format!(
        "SELECT {} AS b, count(*) FROM {}.tx GROUP BY b ORDER BY b",
        "coalesce(('x' || left(md5((customer_id)::text), 15))::bit(60)::bigint % 5, 0)", pg.schema
    ));
    assert_eq!(in_pg.len(), 5);
    let before = pg.fingerprint("tx");
    // Re-running each bucket replaces its own rows only.
    run_pg_ok(&demo, &pg, &["reset", "--all"]);
    run_pg_ok(&demo, &pg, &["run"]);
    assert_eq!(pg.fingerprint("tx"), before);
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // A row changed in one bucket is found by that bucket's chunk alone.
    pg.exec(&format!(
        "UPDATE {0}.tx SET amount = amount + 1 WHERE transaction_id = (SELECT min(transaction_id) FROM {0}.tx)",
        pg.schema
    ));
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 3, "{}", text(&v));
    assert!(stdout(&v).contains("MISMATCH in 1 of 5"), "{}", text(&v));
}
