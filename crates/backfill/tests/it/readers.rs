//! `validate` reads the target as its readers see it: rows in a chunk's
//! range that no commit of the job accounts for make it fail, naming the
//! chunk.

use crate::harness::*;

fn validate_json(demo: &Demo) -> (i32, serde_json::Value, String) {
    let out = demo.run(&["validate", &demo.job_str(), "--json"]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code(&out), json, text(&out))
}

#[test]
fn validate_sees_files_no_commit_recorded() {
    let demo = Demo::new(4_000, "\"1 month\"");
    demo.run_ok(&[]);
    let (c, _, out) = validate_json(&demo);
    assert_eq!(c, 0, "{out}");

    // A stray copy of a committed March file, as a careless `cp` or a
    // second writer leaves it: DuckDB and pyarrow read it too.
    let march = demo
        .warehouse_files()
        .into_iter()
        .find(|f| f.starts_with("year=2023/month=3/"))
        .expect("a March file");
    let copy = "year=2023/month=3/copy-of-march.parquet";
    std::fs::copy(demo.warehouse().join(&march), demo.warehouse().join(copy)).expect("copy");
    let stray_rows = int(&duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}')",
        demo.warehouse().join(copy).display()
    ))[0][0]);
    let (c, json, out) = validate_json(&demo);
    assert_eq!(c, 3, "{out}");
    let bad: Vec<&serde_json::Value> = json["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .filter(|c| c["unaccounted_rows"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(bad.len(), 1, "{out}");
    assert_eq!(bad[0]["bounds"], "[2023-03-01, 2023-04-01)", "{out}");
    assert_eq!(
        bad[0]["unaccounted_rows"].as_i64(),
        Some(stray_rows),
        "{out}"
    );
    let plain = demo.run(&["validate", &demo.job_str()]);
    assert!(
        stdout(&plain).contains("no commit of this job recorded") && stdout(&plain).contains(copy),
        "{}",
        text(&plain)
    );

    // Rows outside the job's range are not the job's: readers of a
    // folder that other data shares see them, and validate lets them be.
    std::fs::remove_file(demo.warehouse().join(copy)).expect("remove copy");
    let later = demo.warehouse().join("year=2024/month=6");
    std::fs::create_dir_all(&later).expect("mkdir");
    duckdb(&format!(
        "COPY (SELECT * EXCLUDE (created_at), created_at + INTERVAL 500 DAY AS created_at
               FROM read_parquet('{}') LIMIT 5) TO '{}' (FORMAT parquet)",
        demo.warehouse().join(&march).display(),
        later.join("other.parquet").display()
    ));
    let (c, _, out) = validate_json(&demo);
    assert_eq!(c, 0, "{out}");
}
