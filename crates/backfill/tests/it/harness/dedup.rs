//! Dedup oracles: the latest version per key by DuckDB, and checks of
//! what each chunk kept.

use super::*;

pub fn run_json(demo: &Demo, extra: &[&str]) -> serde_json::Value {
    let job = demo.job_str();
    let mut args = vec!["run", job.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = demo.run(&args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("run summary")
}

/// DuckDB: rows, sum of ids and of amounts (in cents) of the latest
/// passing version of each key over the current source.
pub fn latest_per_key(demo: &Demo) -> Vec<String> {
    let r = duckdb(&format!(
        "SELECT count(*)::VARCHAR, sum(transaction_id)::VARCHAR, round(sum(amount) * 100)::BIGINT::VARCHAR FROM (
           SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn
           FROM ({}) WHERE rule IS NULL) WHERE rn = 1",
        ruled_source_sql(demo)
    ));
    r[0].iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Makes the demo job a merge-friendly one: dedup within each chunk, so
/// an older window's chunk still holds its own (older) version of a key a
/// later chunk updated; then newer versions, a month later, of some of
/// March's keys.
pub fn newer_versions_in_april(demo: &Demo) {
    let source = demo.source_glob();
    add_source_file(
        demo,
        "april-versions.parquet",
        &format!(
            "SELECT * REPLACE (created_at + INTERVAL 35 DAY AS created_at, amount + 1 AS amount) FROM read_parquet('{source}') \
             WHERE created_at >= TIMESTAMP '2023-03-01' AND created_at < TIMESTAMP '2023-03-20' AND transaction_id % 7 = 0"
        ),
    );
}

pub fn dedup_per_chunk(demo: &Demo) {
    demo.edit_job(|s| s.replace("scope = \"global\"", "scope = \"chunk\""));
}

pub const ORDER: &str = "created_at DESC NULLS LAST, amount DESC NULLS LAST";

/// Writes `select` over the demo source as one more source file.
pub fn add_source_file(demo: &Demo, name: &str, select: &str) {
    duckdb(&format!(
        "COPY ({select}) TO '{}' (FORMAT PARQUET)",
        demo.path().join("source").join(name).display()
    ));
}
