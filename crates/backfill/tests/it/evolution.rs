//! `[target] schema`: the transform gains, drops or widens a column.

use crate::harness::*;

const CENTS: &str = "date_part('day', created_at) AS day FROM source";
const WITH_CENTS: &str =
    "date_part('day', created_at) AS day, CAST(amount * 100 AS BIGINT) AS cents FROM source";

fn set_mode(demo: &Demo, mode: &str) {
    demo.edit_job(|s| {
        let s = s
            .replace("\nschema = \"add_columns\"", "")
            .replace("\nschema = \"merge\"", "");
        s.replace("[target]\n", &format!("[target]\nschema = \"{mode}\"\n"))
    });
}

/// `run --from FROM --to TO` must be refused (exit 2) saying `why`.
fn refused(demo: &Demo, from: &str, to: &str, why: &str) {
    let out = demo.run(&["run", &demo.job_str(), "--from", from, "--to", to]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains(why), "{}", text(&out));
}

fn parquet_count(demo: &Demo, filter: &str) -> i64 {
    let rows = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', union_by_name = true) WHERE {filter}",
        demo.target_glob()
    ));
    int(&rows[0][0])
}

#[test]
fn a_parquet_target_refuses_then_adds_a_column_and_a_rerun_brings_old_chunks_along() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.run_ok(&[]);
    let total = parquet_count(&demo, "true");
    demo.edit_job(|s| s.replace(CENTS, WITH_CENTS));

    // strict (the default): nothing runs, the difference is shown.
    refused(&demo, "2023-03-01", "2023-04-01", "target.schema");
    refused(&demo, "2023-03-01", "2023-04-01", "+ cents: Int64");
    assert_eq!(parquet_count(&demo, "true"), total);

    set_mode(&demo, "add_columns");
    demo.run_ok(&["--from", "2023-03-01", "--to", "2023-04-01"]);
    let march = parquet_count(&demo, "month = 3");
    assert_eq!(parquet_count(&demo, "cents IS NOT NULL"), march);
    assert_eq!(parquet_count(&demo, "true"), total);
    // The other chunks still hold the old rule's rows, and validate says so.
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));
    // Re-running them brings them to the new schema.
    demo.run_ok(&["--from", "2023-01-01", "--to", "2024-01-01"]);
    assert_eq!(parquet_count(&demo, "cents IS NOT NULL"), total);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    // A column that disappears is an error naming it, in every mode.
    demo.edit_job(|s| s.replace("SELECT *,", "SELECT * EXCLUDE (category),"));
    set_mode(&demo, "merge");
    refused(&demo, "2023-03-01", "2023-04-01", "\"category\" is missing");
}

#[test]
fn merge_widens_an_integer_column_and_refuses_to_narrow_it() {
    let demo = Demo::new(4_000, "\"1 month\"");
    let int32 =
        "date_part('day', created_at) AS day, CAST(customer_id % 1000 AS INT) AS cid FROM source";
    let int64 = "date_part('day', created_at) AS day, CAST(customer_id % 1000 AS BIGINT) AS cid FROM source";
    let int16 = "date_part('day', created_at) AS day, CAST(customer_id % 1000 AS SMALLINT) AS cid FROM source";
    demo.edit_job(|s| s.replace(CENTS, int32));
    demo.run_ok(&[]);
    demo.edit_job(|s| s.replace(int32, int64));
    set_mode(&demo, "add_columns");
    refused(
        &demo,
        "2023-01-01",
        "2024-01-01",
        "widens from Int32 to Int64",
    );
    set_mode(&demo, "merge");
    demo.run_ok(&["--from", "2023-01-01", "--to", "2024-01-01"]);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    let types = duckdb(&format!(
        "SELECT DISTINCT typeof(cid) FROM read_parquet('{}')",
        demo.target_glob()
    ));
    assert_eq!(types, vec![vec![serde_json::json!("BIGINT")]]);
    // Narrowing back is refused even by merge.
    demo.edit_job(|s| s.replace(int64, int16));
    refused(
        &demo,
        "2023-01-01",
        "2023-02-01",
        "narrows from Int64 to Int16",
    );
}

#[test]
fn a_delta_table_gains_a_column_in_its_schema() {
    let demo = Demo::new(4_000, "\"1 month\"");
    target_to_delta(&demo);
    demo.run_ok(&[]);
    demo.edit_job(|s| s.replace(CENTS, WITH_CENTS));
    refused(&demo, "2023-01-01", "2024-01-01", "+ cents: Int64");
    set_mode(&demo, "add_columns");
    demo.run_ok(&["--from", "2023-01-01", "--to", "2024-01-01"]);
    let snippet = r#"
import deltalake, json, sys
dt = deltalake.DeltaTable(sys.argv[1])
t = dt.to_pyarrow_table()
print(json.dumps({"rows": t.num_rows, "cents": t.column("cents").null_count, "fields": [f.name for f in dt.schema().fields]}), flush=True)
import os; os._exit(0)
"#;
    let got = pyarrow(snippet, &delta_path(&demo));
    assert!(
        got["fields"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("cents")),
        "{got}"
    );
    assert_eq!(
        got["cents"], 0,
        "every chunk was re-run with the new column: {got}"
    );
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}
