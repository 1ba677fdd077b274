//! What the quality tests expect, from DuckDB over the source: rows per
//! rule, the globally deduplicated rows, and comparing months.

use super::*;

pub fn expected_per_rule(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT rule, count(*) FROM ({}) WHERE rule IS NOT NULL GROUP BY rule ORDER BY rule",
        ruled_source_sql(demo)
    ))
}

/// Per month: rows, sum(amount) of the global winners; plus duplicates removed.
pub fn expected_global(demo: &Demo) -> (Vec<Vec<serde_json::Value>>, i64) {
    let ranked = format!(
        "SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn FROM ({}) WHERE rule IS NULL",
        ruled_source_sql(demo)
    );
    let months = duckdb(&format!(
        "SELECT month(created_at) AS m, count(*), round(sum(amount), 2) FROM ({ranked}) WHERE rn = 1 GROUP BY m ORDER BY m"
    ));
    let dups = duckdb(&format!("SELECT count(*) FROM ({ranked}) WHERE rn > 1"));
    (months, int(&dups[0][0]))
}

pub fn assert_months_equal(expected: &[Vec<serde_json::Value>], actual: &[Vec<serde_json::Value>]) {
    assert_eq!(expected.len(), actual.len(), "{expected:?}\n{actual:?}");
    for (e, a) in expected.iter().zip(actual) {
        assert_eq!(int(&e[0]), int(&a[0]));
        assert_eq!(int(&e[1]), int(&a[1]), "rows in month {}", e[0]);
        assert!(
            (float(&e[2]) - float(&a[2])).abs() < 0.01,
            "sum(amount) in month {}: {} vs {}",
            e[0],
            e[2],
            a[2]
        );
    }
}
