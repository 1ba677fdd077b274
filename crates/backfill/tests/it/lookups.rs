//! Lookup tables (`[[tables]]`) the transform joins, against DuckDB's join
//! of the same files.

use crate::harness::*;

fn tiers(sql_from: &str) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT tier, count(*), round(sum(amount), 2) FROM {sql_from} GROUP BY tier ORDER BY tier"
    ))
}

/// Writes `lookups/customers.parquet` from `rows` (SQL in which `src` is
/// the demo's source) and makes the demo's transform select `select`
/// from `from`, with the customers table (and `more` job text) declared.
fn join_customers(demo: &Demo, rows: &str, select: &str, from: &str, more: &str) {
    let lookups = demo.path().join("lookups");
    std::fs::create_dir_all(&lookups).expect("lookups dir");
    let src = format!("read_parquet('{}')", demo.source_glob());
    duckdb(&format!(
        "COPY ({}) TO '{}' (FORMAT parquet)",
        rows.replace("src", &src),
        lookups.join("customers.parquet").display()
    ));
    demo.edit_job(|s| {
        let s = s
            .replace("SELECT *, date_part", &format!("SELECT {select}, date_part"))
            .replace("AS day FROM source\"", &format!("AS day FROM {from}\""));
        format!(
            "{s}\n[[tables]]\nname = \"customers\"\nformat = \"parquet\"\npath = \"lookups/customers.parquet\"\n{more}"
        )
    });
}

#[test]
fn a_transform_joins_lookup_tables_like_duckdb() {
    let demo = Demo::new(2_000, "\"1 month\"");
    demo.without_quality();
    // Tiers for most customers (some have none: a LEFT JOIN keeps them),
    // as Parquet; a CSV of tier names.
    std::fs::create_dir_all(demo.path().join("lookups")).expect("lookups dir");
    std::fs::write(
        demo.path().join("lookups/tiers.csv"),
        "tier,label\ntier0,bronze\ntier1,silver\ntier2,gold\n",
    )
    .expect("tiers csv");
    join_customers(
        &demo,
        "SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier FROM src WHERE customer_id % 7 <> 0",
        "source.*, c.tier, t.label",
        "source LEFT JOIN customers c USING (customer_id) LEFT JOIN tiers t ON t.tier = c.tier",
        "\n[[tables]]\nname = \"tiers\"\nformat = \"csv\"\npath = \"lookups/tiers.csv\"\n",
    );
    let lookups = demo.path().join("lookups");
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
    join_customers(
        &demo,
        "SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier FROM src",
        "source.*, c.tier",
        "source JOIN customers c USING (customer_id)",
        "",
    );
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
    join_customers(
        &demo,
        "SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier FROM src \
         UNION ALL SELECT min(customer_id), 'again' FROM src",
        "source.*, c.tier",
        "source LEFT JOIN customers c USING (customer_id)",
        "",
    );
    demo.run_ok(&[]);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));
    assert!(
        text(&v).contains("matches some rows more than once"),
        "{}",
        text(&v)
    );
}

#[test]
fn a_lookup_table_in_postgresql_joins_like_duckdb() {
    // The dimension lives in PostgreSQL (over TLS when the server offers
    // it); the expected join is DuckDB's, of the same rule on the source.
    let pg = Pg::new("lookup");
    let demo = Demo::new(2_000, "\"1 month\"");
    demo.without_quality();
    pg.load_demo(&demo);
    pg.exec(&format!(
        "CREATE TABLE {0}.customers AS SELECT DISTINCT customer_id, 'tier' || (customer_id % 3) AS tier \
         FROM {0}.raw WHERE customer_id % 7 <> 0",
        pg.schema
    ));
    let schema = pg.schema.clone();
    demo.edit_job(|s| {
        let s = s
            .replace("SELECT *, date_part", "SELECT source.*, c.tier, date_part")
            .replace(
                "AS day FROM source\"",
                "AS day FROM source LEFT JOIN customers c USING (customer_id)\"",
            );
        format!(
            "{s}\n[[tables]]\nname = \"customers\"\nformat = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.customers\"\n"
        )
    });
    let out = run_pg(&demo, &pg, &["run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let expected = tiers(&format!(
        "(SELECT s.*, CASE WHEN s.customer_id % 7 <> 0 THEN 'tier' || (s.customer_id % 3) END AS tier \
          FROM read_parquet('{}') s \
          WHERE s.created_at >= TIMESTAMP '2023-01-01' AND s.created_at < TIMESTAMP '2024-01-01')",
        demo.source_glob()
    ));
    let actual = tiers(&format!(
        "read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(expected.len(), 4, "{expected:?}");
    assert_eq!(expected, actual);
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // A table that is not there: exit 2 at the lookup's URL line.
    pg.exec(&format!("DROP TABLE {}.customers", pg.schema));
    let out = run_pg(&demo, &pg, &["run"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("tables[0].url"), "{}", text(&out));
}
