use super::*;

#[test]
fn reads_names_and_partition_directories() {
    assert_eq!(
        attempt_of("year=2023/month=1/part-0123456789ab-a12-0000.parquet"),
        Some(12)
    );
    assert_eq!(
        attempt_of("year=2023/part-0123456789abcdef-a1-t1733520000123456-0000.parquet"),
        Some(1_733_520_000_123_456)
    );
    assert_eq!(attempt_of("x.parquet"), None);
    let pv = partition_values(
        "year=2023/region=a%2Fb/k=__HIVE_DEFAULT_PARTITION__/part-x-a1-0000.parquet",
    );
    assert_eq!(pv["year"].as_deref(), Some("2023"));
    assert_eq!(pv["region"].as_deref(), Some("a/b"));
    assert_eq!(pv["k"], None);
}
