use super::*;
use crate::interval::{MICROS_PER_DAY, parse_time};
use crate::spec::RangeSpec;
use proptest::prelude::*;

fn t(s: &str) -> RangeValue {
    RangeValue::Time(parse_time(s).unwrap())
}

/// `[range]` over `column` from `start` to `end` in chunks of `chunk`.
fn range(column: &str, chunk: ChunkSize, start: RangeValue, end: RangeValue) -> RangeSpec {
    RangeSpec {
        column: column.into(),
        column_loc: Default::default(),
        start: Some(start),
        end: Some(end),
        chunk,
        ordered: false,
        end_now: false,
        lookback: 1,
        extend_to: None,
        partitions: None,
        calendar: Calendar::default(),
        naive_local: None,
        buckets: None,
        start_earliest: false,
        end_latest: false,
    }
}

fn assert_tiles(chunks: &[Chunk], start: RangeValue, end: RangeValue) {
    assert_eq!(chunks.first().and_then(|c| c.lo), Some(start));
    assert_eq!(chunks.last().and_then(|c| c.hi), Some(end));
    for pair in chunks.windows(2) {
        assert_eq!(
            pair[0].hi, pair[1].lo,
            "gap or overlap between {} and {}",
            pair[0], pair[1]
        );
    }
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        assert!(c.lo < c.hi, "empty chunk {c}");
    }
    let mut ids: Vec<_> = chunks.iter().map(|c| &c.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), chunks.len(), "chunk ids must be unique");
}

#[test]
fn weekly_chunks_over_2023() {
    let chunks = plan_bounds(
        "job",
        "created_at",
        t("2023-01-01"),
        t("2024-01-01"),
        ChunkSize::Fixed(7 * MICROS_PER_DAY),
    )
    .unwrap();
    assert_eq!(chunks.len(), 53);
    assert_tiles(&chunks, t("2023-01-01"), t("2024-01-01"));
    assert_eq!(chunks[52].bounds(), "[2023-12-31, 2024-01-01)");
}

#[test]
fn months_follow_the_calendar_with_leap_day() {
    let chunks = plan_bounds(
        "job",
        "d",
        t("2024-01-01"),
        t("2025-01-01"),
        ChunkSize::Months(1),
    )
    .unwrap();
    assert_eq!(chunks.len(), 12);
    assert_eq!(chunks[1].bounds(), "[2024-02-01, 2024-03-01)");
    let feb = chunks[1].hi.unwrap().raw() - chunks[1].lo.unwrap().raw();
    assert_eq!(feb, 29 * MICROS_PER_DAY);
    assert_tiles(&chunks, t("2024-01-01"), t("2025-01-01"));
}

#[test]
fn daily_chunks_include_the_leap_day() {
    let chunks = plan_bounds(
        "job",
        "d",
        t("2024-02-28"),
        t("2024-03-01"),
        ChunkSize::Fixed(MICROS_PER_DAY),
    )
    .unwrap();
    let bounds: Vec<_> = chunks.iter().map(Chunk::bounds).collect();
    assert_eq!(
        bounds,
        ["[2024-02-28, 2024-02-29)", "[2024-02-29, 2024-03-01)"]
    );
}

#[test]
fn years_and_a_clipped_last_chunk() {
    let chunks = plan_bounds(
        "job",
        "d",
        t("2020-03-15"),
        t("2023-01-01"),
        ChunkSize::Months(12),
    )
    .unwrap();
    let bounds: Vec<_> = chunks.iter().map(Chunk::bounds).collect();
    assert_eq!(
        bounds,
        [
            "[2020-03-15, 2021-03-15)",
            "[2021-03-15, 2022-03-15)",
            "[2022-03-15, 2023-01-01)"
        ]
    );
}

#[test]
fn single_and_empty_ranges() {
    let one = plan_bounds(
        "job",
        "id",
        RangeValue::Int(1),
        RangeValue::Int(5),
        ChunkSize::Count(100),
    )
    .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].bounds(), "[1, 5)");
    let empty = plan_bounds(
        "job",
        "id",
        RangeValue::Int(5),
        RangeValue::Int(5),
        ChunkSize::Count(1),
    )
    .unwrap();
    assert!(empty.is_empty());
    let all = plan("job", None).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].lo, None);
}

#[test]
fn buckets_split_every_window_with_ids_of_their_own() {
    let mut r = range("t", ChunkSize::Months(1), t("2023-01-01"), t("2023-04-01"));
    let windows = plan("j", Some(&r)).unwrap();
    r.buckets = Some(crate::spec::Buckets {
        count: 4,
        column: "customer_id".into(),
        loc: Default::default(),
    });
    let chunks = plan("j", Some(&r)).unwrap();
    assert_eq!(chunks.len(), 12);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        assert_eq!(
            c.bucket,
            Some(Bucket {
                index: (i % 4) as u32,
                of: 4
            })
        );
        assert_eq!((c.lo, c.hi), (windows[i / 4].lo, windows[i / 4].hi));
        assert!(windows.iter().all(|w| w.id != c.id));
    }
    assert_ne!(
        fingerprint(Some(&r)),
        fingerprint(Some(&range(
            "t",
            ChunkSize::Months(1),
            t("2023-01-01"),
            t("2023-04-01")
        )))
    );
    // MD5("42") = a1d0c6e83f027327d8461063f4ac58a6: 0xa1d0c6e83f02732 % 7.
    let digest = [
        0xa1, 0xd0, 0xc6, 0xe8, 0x3f, 0x02, 0x73, 0x27, 0xd8, 0x46, 0x10, 0x63, 0xf4, 0xac, 0x58,
        0xa6,
    ];
    assert_eq!(bucket_of(digest, 7), (0xa1d0c6e83f02732u64 % 7) as u32);
}

#[test]
fn sequence_batches() {
    let chunks = plan_bounds(
        "job",
        "event_id",
        RangeValue::Int(1),
        RangeValue::Int(10_000_001),
        ChunkSize::Count(100_000),
    )
    .unwrap();
    assert_eq!(chunks.len(), 100);
    assert_tiles(&chunks, RangeValue::Int(1), RangeValue::Int(10_000_001));
}

#[test]
fn ids_are_stable_when_the_range_grows() {
    let a = plan_bounds(
        "job",
        "c",
        t("2023-01-01"),
        t("2023-03-01"),
        ChunkSize::Months(1),
    )
    .unwrap();
    let b = plan_bounds(
        "job",
        "c",
        t("2023-01-01"),
        t("2023-06-01"),
        ChunkSize::Months(1),
    )
    .unwrap();
    assert_eq!(a[0].id, b[0].id);
    assert_eq!(a[1].id, b[1].id);
    let other_column = plan_bounds(
        "job",
        "d",
        t("2023-01-01"),
        t("2023-03-01"),
        ChunkSize::Months(1),
    )
    .unwrap();
    assert_ne!(a[0].id, other_column[0].id);
}

#[test]
fn ids_carry_the_job_and_64_bits() {
    let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
    let a = plan_bounds("eu", "c", t("2023-01-01"), t("2023-03-01"), week).unwrap();
    let b = plan_bounds("us", "c", t("2023-01-01"), t("2023-03-01"), week).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x.id, y.id, "two jobs share the id of {x}");
        assert_eq!(x.id.len(), 16);
        assert!(is_chunk_id(&x.id));
    }
    // The name's length is hashed too: ("a|b", "c") and ("a", "b|c")
    // must not make one text.
    let x = plan_bounds("a|b", "c", t("2023-01-01"), t("2023-01-02"), week).unwrap();
    let y = plan_bounds("a", "b|c", t("2023-01-01"), t("2023-01-02"), week).unwrap();
    assert_ne!(x[0].id, y[0].id);
    let v = plan_values("eu", "region", &["a".into(), "b".into()]).unwrap();
    let w = plan_values("us", "region", &["a".into(), "b".into()]).unwrap();
    assert_ne!(v[0].id, w[0].id);
}

#[test]
fn legacy_ids_are_the_first_versions() {
    // Ids of the first version, as a state written then recorded them.
    let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
    let r = range("created_at", week, t("2023-01-01"), t("2024-01-01"));
    let chunks = plan("transactions", Some(&r)).unwrap();
    let text = format!(
        "v1|created_at|{week}|{:?}|{:?}",
        chunks[0].lo.unwrap(),
        chunks[0].hi.unwrap()
    );
    let want = format!("{:012x}", XxHash3_64::oneshot(text.as_bytes()) >> 16);
    assert_eq!(legacy_id(Some(&r), &chunks[0]), want);
    let all = plan("x", None).unwrap();
    let want = format!(
        "{:012x}",
        XxHash3_64::oneshot(format!("v1||{}|-|-", ChunkSize::All).as_bytes()) >> 16
    );
    assert_eq!(legacy_id(None, &all[0]), want);
    assert!(is_chunk_id(&want));
}

#[test]
fn colliding_ids_are_refused() {
    let mut chunks = plan_bounds(
        "job",
        "id",
        RangeValue::Int(0),
        RangeValue::Int(10),
        ChunkSize::Count(1),
    )
    .unwrap();
    assert_eq!(check_unique(&chunks), Ok(()));
    chunks[7].id = chunks[2].id.clone();
    let err = check_unique(&chunks).unwrap_err();
    assert!(matches!(err, PlanError::IdCollision { .. }));
    let text = err.to_string();
    assert!(text.contains("#2 ") && text.contains("#7 "), "{text}");
}

#[test]
fn extending_keeps_every_planned_chunk_and_follows_the_grid() {
    let week = ChunkSize::Fixed(7 * MICROS_PER_DAY);
    let mut r = range("c", week, t("2023-01-01"), t("2024-01-01"));
    let fixed = plan("job", Some(&r)).unwrap();
    r.extend_to = Some(t("2024-01-10"));
    let extended = plan("job", Some(&r)).unwrap();
    assert_eq!(&extended[..fixed.len()], &fixed[..]);
    // [2023-12-31, 2024-01-01) stays; then [2024-01-01, 2024-01-07), [2024-01-07, 2024-01-14).
    let tail: Vec<String> = extended[fixed.len()..].iter().map(|c| c.bounds()).collect();
    assert_eq!(
        tail,
        ["[2024-01-01, 2024-01-07)", "[2024-01-07, 2024-01-14)"]
    );
    // end = "now": the grid from the start, up to the chunk holding now.
    r.end = None;
    r.end_now = true;
    let now = plan("job", Some(&r)).unwrap();
    assert_eq!(now.len(), 54);
    assert_eq!(now[53].bounds(), "[2024-01-07, 2024-01-14)");
    assert_ne!(fingerprint(Some(&r)), fingerprint(None));
}

#[test]
fn estimates_bound_the_plan() {
    let r = |chunk, start, end| range("c", chunk, start, end);
    let weekly = r(
        ChunkSize::Fixed(7 * MICROS_PER_DAY),
        t("2023-01-01"),
        t("2024-01-01"),
    );
    assert_eq!(estimate(Some(&weekly)), Some(53));
    let monthly = r(ChunkSize::Months(1), t("2023-01-01"), t("2024-01-01"));
    let n = estimate(Some(&monthly)).unwrap();
    assert!((12..=14).contains(&n), "{n}");
    let absurd = r(
        ChunkSize::Count(1),
        RangeValue::Int(0),
        RangeValue::Int(i64::MAX),
    );
    assert_eq!(plan("job", Some(&absurd)), Err(PlanError::TooManyChunks));
    assert_eq!(estimate(None), None);
}

#[test]
fn mismatched_kinds_are_refused() {
    let err = plan_bounds(
        "job",
        "c",
        t("2023-01-01"),
        t("2023-03-01"),
        ChunkSize::Count(5),
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::KindMismatch { .. }));
}

#[test]
fn overlap_selection() {
    let chunks = plan_bounds(
        "job",
        "c",
        t("2023-01-01"),
        t("2023-01-29"),
        ChunkSize::Fixed(7 * MICROS_PER_DAY),
    )
    .unwrap();
    let picked: Vec<_> = chunks
        .iter()
        .filter(|c| c.overlaps(Some(t("2023-01-08")), Some(t("2023-01-09"))))
        .map(|c| c.index)
        .collect();
    assert_eq!(picked, [1]);
    let picked: Vec<_> = chunks
        .iter()
        .filter(|c| c.overlaps(Some(t("2023-01-14")), None))
        .map(|c| c.index)
        .collect();
    assert_eq!(picked, [1, 2, 3]);
}

fn chunk_size() -> impl Strategy<Value = ChunkSize> {
    prop_oneof![
        (1i64..=400).prop_map(|h| ChunkSize::Fixed(h * 3600 * 1_000_000)),
        (1i64..=90).prop_map(|m| ChunkSize::Fixed(m * 60 * 1_000_000 + 17)),
        (1u32..=30).prop_map(ChunkSize::Months),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn time_chunks_tile_the_range(
        start in -2_000_000_000i64..4_000_000_000i64,
        len in 1i64..40_000_000i64,
        chunk in chunk_size(),
    ) {
        let s = RangeValue::Time(start * 1_000_000);
        let e = RangeValue::Time((start + len) * 1_000_000);
        let chunks = plan_bounds("job", "t", s, e, chunk).unwrap();
        assert_tiles(&chunks, s, e);
    }

    #[test]
    fn integer_chunks_tile_the_range(start in -1_000_000i64..1_000_000, len in 1i64..100_000, width in 1i64..5_000) {
        let s = RangeValue::Int(start);
        let e = RangeValue::Int(start + len);
        let chunks = plan_bounds("job", "id", s, e, ChunkSize::Count(width)).unwrap();
        assert_tiles(&chunks, s, e);
        prop_assert_eq!(chunks.len() as i64, (len + width - 1) / width);
    }
}

#[test]
fn kafka_offset_chunks_sit_on_a_grid_per_partition_and_extend_without_moving() {
    let span = |partition, start, ends: &[i64]| PartitionSpan {
        partition,
        start,
        ends: ends.to_vec(),
    };
    let first = plan_offsets(
        "j",
        "_offset",
        100,
        &[span(1, 250, &[420]), span(0, 0, &[150])],
    )
    .expect("plan");
    let bounds: Vec<(i32, i64, i64)> = first
        .iter()
        .map(|c| {
            let (p, lo) = position_parts(c.lo.expect("lo").raw());
            let (q, hi) = position_parts(c.hi.expect("hi").raw());
            assert_eq!(p, q, "a chunk stays in one partition");
            (p, lo, hi)
        })
        .collect();
    assert_eq!(
        bounds,
        vec![
            (0, 0, 100),
            (0, 100, 150),
            (1, 250, 300),
            (1, 300, 400),
            (1, 400, 420)
        ]
    );
    // Extended later: the old chunks keep their ids, the first new chunk
    // starts at the old end.
    let later = plan_offsets(
        "j",
        "_offset",
        100,
        &[span(1, 250, &[420, 520]), span(0, 0, &[150])],
    )
    .expect("plan");
    let ids: Vec<&str> = first.iter().map(|c| c.id.as_str()).collect();
    for id in &ids {
        assert!(later.iter().any(|c| c.id == *id), "chunk {id} kept");
    }
    let added: Vec<(i64, i64)> = later
        .iter()
        .filter(|c| !ids.contains(&c.id.as_str()))
        .map(|c| {
            (
                position_parts(c.lo.expect("lo").raw()).1,
                position_parts(c.hi.expect("hi").raw()).1,
            )
        })
        .collect();
    assert_eq!(added, vec![(420, 500), (500, 520)]);
    assert!(plan_offsets("j", "_offset", 0, &[]).is_err());
}
