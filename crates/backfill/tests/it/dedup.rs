//! A target that follows the source: a plain run re-runs the committed
//! chunks whose source files changed; chunk-scope dedup over partition
//! chunks; versions placed in the chunk whose predicate selects them
//! (whatever the transform does to the range column); committed chunks
//! re-run when the source moves a key's winner. Each target is compared with
//! DuckDB's answer over the current source.

use crate::harness::*;

/// Rows and an order-independent fingerprint of the rows DuckDB ranks first
/// in `ranked` (which has `rn`), over the columns every test here compares.
fn winners(ranked: &str) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, created_at, amount))::VARCHAR FROM ({ranked}) WHERE rn = 1"
    ))
}

fn target_rows(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, created_at, amount))::VARCHAR \
         FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ))
}

fn validate_ok(demo: &Demo) {
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

/// Replaces the `[range]` section.
fn range_section(demo: &Demo, body: &str) {
    demo.edit_job(|s| {
        let start = s.find("[range]").expect("range section");
        let end = s.find("[transform]").expect("transform section");
        format!("{}[range]\n{body}\n\n{}", &s[..start], &s[end..])
    });
}

#[test]
fn dedup_is_right_for_text_and_numeric_partitions() {
    for (column, values, scope) in [
        ("region", "\"eu-west\", \"us-east\", \"ap-south\"", "chunk"),
        ("m", "\"1\", \"2\", \"3\", \"7\"", "chunk"),
        ("region", "\"eu-west\", \"us-east\", \"ap-south\"", "global"),
    ] {
        let demo = Demo::new(8_000, "\"7d\"");
        // A copy of the source with an integer column to partition by.
        let numbered = demo.path().join("numbered");
        std::fs::create_dir_all(&numbered).unwrap();
        duckdb(&format!(
            "COPY (SELECT *, month(created_at)::INTEGER AS m FROM read_parquet('{}')) TO '{}' (FORMAT PARQUET)",
            demo.source_glob(),
            numbered.join("all.parquet").display()
        ));
        demo.edit_job(|s| {
            s.replace("path = \"source/\"", "path = \"numbered/\"")
                .replace("scope = \"global\"", &format!("scope = \"{scope}\""))
        });
        range_section(
            &demo,
            &format!("column = \"{column}\"\npartitions = [{values}]"),
        );
        demo.run_ok(&[]);
        let listed = values.replace('"', "'");
        let per = if scope == "chunk" {
            format!("transaction_id, {column}")
        } else {
            "transaction_id".into()
        };
        let expected = winners(&format!(
            "SELECT *, row_number() OVER (PARTITION BY {per} ORDER BY {ORDER}) AS rn \
             FROM (SELECT *, {RULES_CASE} AS rule FROM read_parquet('{}') WHERE {column} IN ({listed})) \
             WHERE rule IS NULL",
            numbered.join("all.parquet").display()
        ));
        assert_eq!(
            target_rows(&demo),
            expected,
            "{scope} scope, partitions by {column}"
        );
        validate_ok(&demo);
    }
}

#[test]
fn versions_land_in_the_chunk_whose_predicate_selects_them() {
    // The transform moves the range column by four days: a version read by
    // one week's chunk carries a value of the next week. The second
    // transform does the same under a DISTINCT, which is not row by row.
    let shifted = "transaction_id, customer_id, created_at + INTERVAL '4 days' AS created_at, amount, status, region, category, email, \
                   date_part('year', created_at + INTERVAL '4 days') AS year, date_part('month', created_at + INTERVAL '4 days') AS month, \
                   date_part('day', created_at + INTERVAL '4 days') AS day";
    for select in [
        format!("SELECT {shifted} FROM source"),
        format!("SELECT DISTINCT {shifted} FROM source"),
    ] {
        let demo = Demo::new(20_000, "\"7d\"");
        demo.edit_job(|s| {
            let start = s.find("sql = ").expect("transform sql");
            let end = start + s[start..].find('\n').expect("end of line");
            format!("{}sql = \"{select}\"{}", &s[..start], &s[end..])
        });
        demo.run_ok(&[]);
        let expected = winners(&format!(
            "SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn FROM (\
               SELECT DISTINCT * EXCLUDE (rule) FROM (\
                 SELECT * REPLACE (created_at + INTERVAL 4 DAY AS created_at) FROM ({})) \
               WHERE rule IS NULL)",
            ruled_source_sql(&demo)
        ));
        assert_eq!(target_rows(&demo), expected, "{select}");
        validate_ok(&demo);
    }
}

fn assert_global_answer(demo: &Demo, step: &str) {
    let expected = winners(&format!(
        "SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn FROM ({}) WHERE rule IS NULL",
        ruled_source_sql(demo)
    ));
    assert_eq!(target_rows(demo), expected, "after {step}");
    validate_ok(demo);
}

#[test]
fn a_source_change_reruns_the_committed_chunks_whose_winners_moved() {
    let demo = Demo::new(20_000, "\"7d\"");
    demo.run_ok(&[]);
    let source = demo.source_glob();
    let columns =
        "transaction_id, customer_id, created_at, amount, status, region, category, email";

    // Newer versions of existing keys, ten days later: the winners of
    // those keys move to later weeks, all of them committed.
    add_source_file(
        &demo,
        "late.parquet",
        &format!(
            "SELECT {} FROM read_parquet('{source}') WHERE transaction_id % 53 = 0 AND created_at < TIMESTAMP '2023-12-01'",
            columns
                .replace("created_at,", "created_at + INTERVAL 10 DAY AS created_at,")
                .replace("amount,", "amount + 1 AS amount,")
        ),
    );
    let summary = run_json(&demo, &[]);
    assert!(
        summary["dedup_reruns"].as_u64().unwrap_or(0) > 0,
        "a plain run re-runs the committed chunks whose winners moved: {summary}"
    );
    assert_global_answer(&demo, "a late file with newer versions");

    // Older versions of other keys, then a run narrowed to one week.
    add_source_file(
        &demo,
        "older.parquet",
        &format!(
            "SELECT {} FROM read_parquet('{source}') WHERE transaction_id % 59 = 0 AND created_at >= TIMESTAMP '2023-01-10'",
            columns
                .replace("created_at,", "created_at - INTERVAL 3 DAY AS created_at,")
                .replace("amount,", "amount + 2 AS amount,")
        ),
    );
    run_json(&demo, &["--from", "2023-06-01", "--to", "2023-06-08"]);
    assert_global_answer(&demo, "a late file with older versions and a narrowed run");

    // The late file goes away again: the old winners are back.
    std::fs::remove_file(demo.path().join("source/late.parquet")).unwrap();
    run_json(&demo, &[]);
    assert_global_answer(&demo, "the late file deleted");

    // Nothing changed: nothing runs.
    let summary = run_json(&demo, &[]);
    assert_eq!(summary["selected"], 0, "{summary}");
}

#[test]
fn a_plain_run_follows_files_added_changed_and_removed_under_committed_chunks() {
    let demo = Demo::new(8_000, "\"7d\"");
    demo.without_quality();
    demo.run_ok(&[]);
    let source = demo.source_glob();
    let same_as_source = |step: &str| {
        let expected = duckdb(&format!(
            "SELECT count(*), sum(hash(transaction_id, created_at, amount))::VARCHAR FROM read_parquet('{source}') \
             WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'"
        ));
        assert_eq!(target_rows(&demo), expected, "after {step}");
        validate_ok(&demo);
    };
    same_as_source("the first run");

    // New keys in March only: only the weeks of March run again.
    add_source_file(
        &demo,
        "late.parquet",
        &format!(
            "SELECT * REPLACE (transaction_id + 1000000000 AS transaction_id) FROM read_parquet('{source}') \
             WHERE created_at >= TIMESTAMP '2023-03-01' AND created_at < TIMESTAMP '2023-04-01' AND transaction_id % 7 = 0"
        ),
    );
    let summary = run_json(&demo, &[]);
    let reruns = summary["source_reruns"].as_u64().unwrap_or(0);
    assert!(
        (4..=6).contains(&reruns),
        "the weeks overlapping March, no others: {summary}"
    );
    same_as_source("a late file in March");

    // A file rewritten in place with fewer rows, then one removed.
    let may = std::fs::read_dir(demo.path().join("source"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-05.parquet"))
        .expect("a source file for May");
    let copy = demo.path().join("may.parquet");
    duckdb(&format!(
        "COPY (SELECT * FROM read_parquet('{}') WHERE transaction_id % 5 <> 0) TO '{}' (FORMAT PARQUET)",
        may.display(),
        copy.display()
    ));
    std::fs::rename(&copy, &may).unwrap();
    let summary = run_json(&demo, &[]);
    assert!(
        summary["source_reruns"].as_u64().unwrap_or(0) > 0,
        "{summary}"
    );
    same_as_source("a file rewritten in place");
    std::fs::remove_file(demo.path().join("source/late.parquet")).unwrap();
    run_json(&demo, &[]);
    same_as_source("the late file removed");

    // Nothing changed: nothing runs.
    let summary = run_json(&demo, &[]);
    assert_eq!(summary["selected"], 0, "{summary}");
}

#[test]
fn ties_in_order_by_go_to_the_same_row_whatever_the_read_order() {
    // Issue 20: versions that order_by ranks equal went to the first row
    // read, which changes with file names, parallelism and timing: a re-run
    // or `validate` could pick another row than the run did.
    for (chunk, scope) in [
        ("\"7d\"", "global"),
        ("\"7d\"", "chunk"),
        ("\"all\"", "global"),
    ] {
        let demo = Demo::new(3_000, chunk);
        demo.edit_job(|s| s.replace("scope = \"global\"", &format!("scope = \"{scope}\"")));
        let source = demo.source_glob();
        // Two versions of a few hundred new keys, with the same created_at
        // and amount and another status: a tie order_by does not break.
        let tie = |name: &str, status: &str| {
            add_source_file(
                &demo,
                name,
                &format!(
                    "SELECT * REPLACE (transaction_id + 2000000000 AS transaction_id, '{status}' AS status) \
                     FROM read_parquet('{source}') WHERE transaction_id % 15 = 0 AND transaction_id < 2000000000"
                ),
            )
        };
        tie("tie_a.parquet", "completed");
        tie("tie_b.parquet", "failed");
        let rows = || {
            duckdb(&format!(
                "SELECT count(*), sum(hash(transaction_id, created_at, amount, status))::VARCHAR \
                 FROM read_parquet('{}', hive_partitioning = true)",
                demo.target_glob()
            ))
        };
        demo.run_ok(&[]);
        let first = rows();
        validate_ok(&demo);
        // The same rows with the files' names swapped: what is read first
        // changes, the winners must not.
        let dir = demo.path().join("source");
        std::fs::rename(dir.join("tie_a.parquet"), dir.join("tie_tmp.parquet")).unwrap();
        std::fs::rename(dir.join("tie_b.parquet"), dir.join("tie_a.parquet")).unwrap();
        std::fs::rename(dir.join("tie_tmp.parquet"), dir.join("tie_b.parquet")).unwrap();
        demo.run_ok(&[]);
        assert_eq!(
            rows(),
            first,
            "{chunk} {scope}: after swapping the files' names"
        );
        // A fresh state, one chunk at a time.
        std::fs::remove_dir_all(demo.path().join(".backfill")).unwrap();
        demo.run_ok(&["--parallel", "1"]);
        assert_eq!(rows(), first, "{chunk} {scope}: after a fresh run");
        validate_ok(&demo);
    }
}
