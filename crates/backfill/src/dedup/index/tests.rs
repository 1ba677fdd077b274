use super::*;
use arrow::array::Int64Array;
use arrow::datatypes::{Field, Schema};
use backfill_core::plan::Chunk;

#[test]
fn key_versions_track_the_winner_and_each_chunks_best() {
    let (built, all) = random_index(7);
    for (key, versions) in &all {
        let Some(v) = built.get(key) else {
            assert_eq!(versions.len(), 1, "{key:?} {versions:?} missing");
            continue;
        };
        assert!(versions.len() > 1, "{key:?} has one version");
        let winner = versions.iter().map(|(c, o)| (o.clone(), *c)).min();
        assert_eq!(Some((v.order.to_vec(), v.chunk)), winner, "{versions:?}");
        for chunk in 0..4 {
            assert_eq!(
                v.best_in(chunk),
                best_in_chunk(versions, chunk),
                "chunk {chunk} of {versions:?}"
            );
        }
        assert!(
            v.per_chunk.iter().all(|(c, _)| *c != v.chunk),
            "{versions:?}"
        );
    }
    let multi = all.iter().filter(|(_, v)| v.len() > 1).count();
    assert_eq!(built.len(), multi);
    let total: usize = all
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(_, v)| v.len())
        .sum();
    assert_eq!(built.versions, total as u64);
}

#[tokio::test]
async fn rows_outside_the_job_range_never_enter_the_index() {
    use backfill_core::interval::RangeValue;
    let chunk = |index: usize, lo: i64, hi: i64| Chunk {
        index,
        id: format!("c{index}"),
        lo: Some(RangeValue::Int(lo)),
        hi: Some(RangeValue::Int(hi)),
        value: None,
        bucket: None,
    };
    let chunks = [chunk(0, 0, 10), chunk(1, 10, 20)];
    let dedup = test_dedup();
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("o", DataType::Int64, false),
        Field::new("__bf_c", DataType::UInt32, true),
    ]));
    let range = crate::predicate::RangeColumn {
        name: "r".into(),
        data_type: DataType::Int64,
        bucket: None,
        position: None,
    };
    let place = crate::placement::ChunkOfUdf::new(&range, &chunks).expect("placement");
    // Key 1: versions at 5 and 15, and a better one at 25, past the
    // range. Key 2: one version in range, one before it. Key 3: one in
    // range, one with no range value.
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 1, 1, 2, 2, 3, 3])),
            Arc::new(Int64Array::from(vec![1, 2, 9, 1, 9, 1, 9])),
            Arc::new(
                place
                    .chunks_of(
                        &(Arc::new(Int64Array::from(vec![
                            Some(5),
                            Some(15),
                            Some(25),
                            Some(3),
                            Some(-1),
                            Some(4),
                            None,
                        ])) as ArrayRef),
                    )
                    .expect("chunks"),
            ),
        ],
    )
    .expect("batch");
    let stream = Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter([Ok(batch)]),
        ),
    );
    let index = DedupIndex::build(stream, &dedup).await.expect("build");
    let key = |k: i64| {
        let col: ArrayRef = Arc::new(Int64Array::from(vec![k]));
        let rows = key_converter(std::slice::from_ref(&col))
            .expect("converter")
            .convert_columns(&[col])
            .expect("rows");
        rows.row(0).as_ref().to_vec()
    };
    assert_eq!(index.len(), 1, "only key 1 has two versions in range");
    let v = index.get(&key(1)).expect("key 1");
    assert_eq!(v.chunk, 1, "the version at 15 wins, not the one at 25");
    assert!(index.get(&key(2)).is_none());
    assert!(index.get(&key(3)).is_none());
    assert_eq!(index.versions, 2);
}
