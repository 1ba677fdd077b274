//! Lookup tables (`[[tables]]`) the transform joins, against DuckDB's join
//! of the same files.

use crate::harness::*;

fn tiers(sql_from: &str) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT tier, count(*), round(sum(amount), 2) FROM {sql_from} GROUP BY tier ORDER BY tier"
    ))
}

#[test]
fn a_transform_joins_lookup_tables_like_duckdb() {
    let demo = Demo::new(2_000, "\"1 month\"");
    demo.without_quality();
    let lookups = demo.path().join("lookups");
    std::fs::create_dir_all(&lookups).expect("lookups dir");
    // Tiers for most customers (some have none: a LEFT JOIN keeps them),
    // as Parquet; a CSV of tier names.
    duckdb(&format!(
        "COPY (SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier \
         FROM read_parquet('{}') WHERE customer_id % 7 <> 0) TO '{}' (FORMAT parquet)",
        demo.source_glob(),
        lookups.join("customers.parquet").display()
    ));
    std::fs::write(
        lookups.join("tiers.csv"),
        "tier,label\ntier0,bronze\ntier1,silver\ntier2,gold\n",
    )
    .expect("tiers csv");
    demo.edit_job(|s| {
        let s = s.replace(
            "AS day FROM source\"",
            "AS day, t.label FROM source LEFT JOIN customers c USING (customer_id) LEFT JOIN tiers t ON t.tier = c.tier\"",
        );
        let s = s.replace("SELECT *, date_part", "SELECT source.*, c.tier, date_part");
        format!(
            "{s}\n[[tables]]\nname = \"customers\"\nformat = \"parquet\"\npath = \"lookups/customers.parquet\"\n\n\
             [[tables]]\nname = \"tiers\"\nformat = \"csv\"\npath = \"lookups/tiers.csv\"\n"
        )
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let expected = tiers(&format!(
        "(SELECT s.*, c.tier FROM read_parquet('{}') s LEFT JOIN read_parquet('{}') c USING (customer_id) \
          WHERE s.created_at >= TIMESTAMP '2023-01-01' AND s.created_at < TIMESTAMP '2024-01-01')",
        demo.source_glob(),
        lookups.join("customers.parquet").display()
    ));
    let actual = tiers(&format!(
        "read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(
        expected.len(),
        4,
        "three tiers and customers without one: {expected:?}"
    );
    assert_eq!(expected, actual);
    let labels = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', hive_partitioning = true) \
         WHERE (tier = 'tier2') <> (label IS NOT DISTINCT FROM 'gold')",
        demo.target_glob()
    ));
    assert_eq!(
        int(&labels[0][0]),
        0,
        "every tier2 row, and only those, is gold"
    );
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_joined_transform_keeps_dedup_and_validate_exact() {
    // With global dedup over several chunks, the index places each row by
    // running the transform per chunk (a join is not row by row): the
    // lookup must be there too.
    let demo = Demo::new(2_000, "\"1 month\"");
    let lookups = demo.path().join("lookups");
    std::fs::create_dir_all(&lookups).expect("lookups dir");
    duckdb(&format!(
        "COPY (SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier \
         FROM read_parquet('{}')) TO '{}' (FORMAT parquet)",
        demo.source_glob(),
        lookups.join("customers.parquet").display()
    ));
    demo.edit_job(|s| {
        let s = s.replace(
            "AS day FROM source\"",
            "AS day FROM source JOIN customers c USING (customer_id)\"",
        );
        let s = s.replace("SELECT *, date_part", "SELECT source.*, c.tier, date_part");
        format!(
            "{s}\n[[tables]]\nname = \"customers\"\nformat = \"parquet\"\npath = \"lookups/customers.parquet\"\n"
        )
    });
    demo.run_ok(&[]);
    // Every customer has a tier, so the join keeps every row: the target
    // is the demo's (rules, global dedup) with one more column.
    let (months, _) = expected_global(&demo);
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) \
         GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_months_equal(&months, &actual);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_lookup_that_repeats_a_key_is_reported_by_validate() {
    // A join with a lookup table that has one key twice writes that
    // customer's rows twice; every count agrees with itself, so only the
    // reconciliation with the source can say so.
    let demo = Demo::new(1_000, "\"1 month\"");
    demo.without_quality();
    let lookups = demo.path().join("lookups");
    std::fs::create_dir_all(&lookups).expect("lookups dir");
    duckdb(&format!(
        "COPY (SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier FROM read_parquet('{0}') \
         UNION ALL SELECT min(customer_id), 'again' FROM read_parquet('{0}')) TO '{1}' (FORMAT parquet)",
        demo.source_glob(),
        lookups.join("customers.parquet").display()
    ));
    demo.edit_job(|s| {
        let s = s.replace(
            "AS day FROM source\"",
            "AS day FROM source LEFT JOIN customers c USING (customer_id)\"",
        );
        let s = s.replace("SELECT *, date_part", "SELECT source.*, c.tier, date_part");
        format!(
            "{s}\n[[tables]]\nname = \"customers\"\nformat = \"parquet\"\npath = \"lookups/customers.parquet\"\n"
        )
    });
    demo.run_ok(&[]);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));
    assert!(
        text(&v).contains("matches some rows more than once"),
        "{}",
        text(&v)
    );
}
