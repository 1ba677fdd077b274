use super::*;

#[test]
fn a_spool_is_new_private_and_unguessable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let a = new_spool(tmp.path()).expect("spool");
    let b = new_spool(tmp.path()).expect("spool");
    assert_ne!(a, b);
    for p in [&a, &b] {
        let mode = std::fs::metadata(p).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", p.display());
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let random = name.rsplit('-').next().unwrap_or_default();
        assert_eq!(random.len(), 16, "{name}");
    }
}
use arrow::array::ArrayRef;

#[test]
fn dictionary_only_for_repeating_columns() {
    use arrow::array::{Int64Array, StringArray};
    use parquet::schema::types::ColumnPath;
    let n = 4096;
    let ids = Int64Array::from_iter_values(0..n as i64);
    let status = StringArray::from_iter_values((0..n).map(|i| ["a", "b", "c"][i % 3]));
    // Half the values NULL, the rest distinct: judged on the values.
    let sparse = Int64Array::from_iter((0..n as i64).map(|i| (i % 2 == 0).then_some(i)));
    let few = Int64Array::from_iter((0..n as i64).map(|i| (i < 100).then_some(i)));
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("status", Arc::new(status) as ArrayRef),
        ("sparse", Arc::new(sparse) as ArrayRef),
        ("few", Arc::new(few) as ArrayRef),
    ])
    .unwrap();
    let props = tune_dictionary(WriterProperties::default(), &batch).unwrap();
    let dict = |c: &str| props.dictionary_enabled(&ColumnPath::new(vec![c.to_string()]));
    assert!(!dict("id"));
    assert!(dict("status"));
    assert!(!dict("sparse"));
    // Too few values to judge: Parquet's default stays.
    assert!(dict("few"));
    // A small first batch changes nothing.
    let props = tune_dictionary(WriterProperties::default(), &batch.slice(0, 100)).unwrap();
    assert!(props.dictionary_enabled(&ColumnPath::new(vec!["id".to_string()])));
}

#[test]
fn recognises_its_own_file_names() {
    let name = file_name("0123456789abcdef", 2, 1_733_520_000_123_456, "0badc0de", 7);
    assert_eq!(
        name,
        "part-0123456789abcdef-a2-t1733520000123456-j0badc0de-0007.parquet"
    );
    assert_eq!(tag_of(&format!("y=1/{name}")), Some("0badc0de"));
    assert_eq!(tag_of("part-0123456789ab-a2-0007.parquet"), None);
    assert_eq!(chunk_of(&name), Some("0123456789abcdef"));
    assert_eq!(
        stamp_of(&format!("y=1/{name}")),
        Some(1_733_520_000_123_456)
    );
    // Files written before ids had 64 bits and names a stamp.
    assert_eq!(
        chunk_of("part-0123456789ab-a2-0007.parquet"),
        Some("0123456789ab")
    );
    assert_eq!(stamp_of("part-0123456789ab-a2-0007.parquet"), None);
    assert_eq!(chunk_of("part-0.parquet"), None);
    assert_eq!(chunk_of("data.parquet"), None);
    assert_eq!(
        staged_name("y=1/part-x.parquet"),
        "y=1/.part-x.parquet.inprogress"
    );
}
