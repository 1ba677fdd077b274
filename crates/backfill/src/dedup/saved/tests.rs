use super::*;
use crate::dedup::index::{best_in_chunk, random_index};

#[test]
fn each_chunks_section_answers_as_the_whole_index_does() {
    let (built, all) = random_index(11);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("index");
    let written = save(&built, &file, "fp", 4).expect("save");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["index"], "no temporary file stays");
    assert!(
        SavedIndex::open(&file, "other", 4).is_none(),
        "stale fingerprint"
    );
    assert!(SavedIndex::open(&file, "fp", 5).is_none(), "another plan");
    let saved = SavedIndex::open(&file, "fp", 4).expect("open");
    assert_eq!(saved.sections, written.sections);
    let digests: Vec<u64> = saved.sections.iter().map(|s| s.digest).collect();
    assert_eq!(digests, built.section_digests(4), "digests as in memory");
    assert!(
        digests.iter().all(|&d| d != 0),
        "every chunk holds some key"
    );
    assert_eq!(saved.keys, built.len() as u64);
    assert_eq!(saved.versions, built.versions);
    let mut pairs = 0;
    for chunk in 0..4u32 {
        let view = saved.chunk(chunk as usize).expect("section");
        let own = written.chunk(chunk as usize).expect("section");
        assert_eq!(view.len(), own.len(), "chunk {chunk}");
        for (key, versions) in &all {
            let best = best_in_chunk(versions, chunk);
            let got = view.get(key);
            if versions.len() < 2 || best.is_none() {
                assert!(got.is_none(), "{key:?} in chunk {chunk}: {versions:?}");
                continue;
            }
            pairs += 1;
            let Some(v) = got else {
                panic!("{key:?} missing from chunk {chunk}: {versions:?}");
            };
            let whole = built.get(key).expect("in the whole index");
            assert_eq!(v.chunk, whole.chunk, "winner's chunk of {versions:?}");
            assert_eq!(v.best_in(chunk), best, "chunk {chunk} of {versions:?}");
            if whole.chunk == chunk {
                assert_eq!(v.order, whole.order, "winner of {versions:?}");
            }
        }
    }
    assert!(pairs > built.len(), "some keys span chunks: {pairs}");

    // A cut file, or a section whose record runs past its end, is not
    // read as an index.
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 1]).expect("write");
    assert!(SavedIndex::open(&file, "fp", 4).is_none(), "cut file");
    let mut bad = bytes.clone();
    let first = saved.sections[0].at as usize;
    bad[first..first + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&file, &bad).expect("write");
    let reopened = SavedIndex::open(&file, "fp", 4).expect("table intact");
    let err = reopened.chunk(0).expect_err("damaged section");
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// Rows (key, ordering value, chunk) for the index pass: 30,000 keys,
/// a third with several versions over 16 chunks, some tied.
fn index_batches() -> (Vec<RecordBatch>, DedupSpec) {
    use arrow::array::{ArrayRef, Int64Array, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("o", DataType::Int64, false),
        Field::new("__bf_c", DataType::UInt32, true),
    ]));
    let (mut k, mut o, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for key in 0..30_000i64 {
        let versions = if key % 3 == 0 {
            rng.random_range(2..6)
        } else {
            1
        };
        for _ in 0..versions {
            k.push(key);
            o.push(rng.random_range(0..4));
            c.push(Some(rng.random_range(0..16u32)));
        }
    }
    let batches = k
        .chunks(4096)
        .zip(o.chunks(4096))
        .zip(c.chunks(4096))
        .map(|((k, o), c)| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(k.to_vec())) as ArrayRef,
                    Arc::new(Int64Array::from(o.to_vec())),
                    Arc::new(UInt32Array::from(c.to_vec())),
                ],
            )
            .expect("batch")
        })
        .collect();
    let dedup = crate::dedup::index::test_dedup();
    (batches, dedup)
}

#[tokio::test]
async fn an_index_built_in_parts_answers_every_chunk_as_one_built_whole() {
    let (batches, dedup) = index_batches();
    let versions: u64 = 10_000 * 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let build = |name: &'static str, budget: usize| {
        let stream = futures::stream::iter(batches.clone().into_iter().map(Ok));
        let schema = batches[0].schema();
        let (dedup, dir) = (dedup.clone(), dir.path().to_path_buf());
        async move {
            let stream = Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream),
            );
            let path = dir.join(name);
            build(stream, &dedup, &path, "fp", 16, versions, budget, &dir)
                .await
                .expect("build")
        }
    };
    let whole = build("whole", usize::MAX).await;
    // About 40k versions at over 100 bytes each: 64 KiB means the most
    // parts a build makes.
    let parted = build("parted", 64 << 10).await;
    let (ChunkIndexes::Saved(whole), ChunkIndexes::Saved(parted)) = (whole, parted) else {
        panic!("both indexes are saved");
    };
    assert_eq!((parted.keys, parted.versions), (whole.keys, whole.versions));
    assert!(whole.keys > 9_000, "{} keys", whole.keys);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["parted", "whole"], "the parts' files are gone");
    for chunk in 0..16 {
        let (w, p) = (whole.sections[chunk], parted.sections[chunk]);
        assert_eq!(
            (w.len, w.keys, w.digest),
            (p.len, p.keys, p.digest),
            "chunk {chunk}"
        );
        let (w, p) = (
            whole.chunk(chunk).expect("section"),
            parted.chunk(chunk).expect("section"),
        );
        assert_eq!(w.len(), p.len());
        assert_eq!(
            w.section_digests(16),
            p.section_digests(16),
            "chunk {chunk} answers the same"
        );
    }
}
