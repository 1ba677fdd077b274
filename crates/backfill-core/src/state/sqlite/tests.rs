use super::*;
use crate::interval::ChunkSize;
use crate::interval::RangeValue;
use crate::plan::plan_bounds;

fn chunks(n: i64) -> Vec<Chunk> {
    plan_bounds(
        "job",
        "id",
        RangeValue::Int(0),
        RangeValue::Int(n),
        ChunkSize::Count(1),
    )
    .unwrap()
}

fn file(p: &str) -> OwnedFile {
    OwnedFile {
        path: p.to_string(),
        staged: format!(".{p}.tmp"),
    }
}

fn store() -> (tempfile::TempDir, SqliteStateStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStateStore::open(dir.path().join("sub/state.db")).unwrap();
    (dir, s)
}

#[test]
fn commit_moves_old_files_to_garbage() {
    let (_d, s) = store();
    let plan = chunks(3);
    s.sync_plan("job", "fp", &plan, false).unwrap();
    let run = s.begin_run("run").unwrap();
    let a = s.start_attempt(run, &plan[0].id).unwrap();
    assert_eq!(a, 1);
    let m = ChunkMetrics {
        rows_read: 10,
        rows_written: 9,
        dedup_section: Some("0123456789abcdef".into()),
        source_digest: Some("fedcba9876543210".into()),
        ..Default::default()
    };
    s.commit_chunk(run, &plan[0].id, a, &m, &[file("x/a1.parquet")])
        .unwrap();
    assert_eq!(
        s.chunks().unwrap()[0].metrics.as_ref(),
        Some(&m),
        "the metrics read back as committed"
    );
    assert_eq!(s.unpublished().unwrap().len(), 1);
    s.mark_published(&plan[0].id).unwrap();
    assert!(s.unpublished().unwrap().is_empty());
    assert!(s.garbage().unwrap().is_empty());

    let a = s.start_attempt(run, &plan[0].id).unwrap();
    assert_eq!(a, 2);
    // Still committed while the new attempt runs: readers keep the old files.
    assert_eq!(s.chunks().unwrap()[0].status, ChunkStatus::Committed);
    let old = s
        .commit_chunk(run, &plan[0].id, a, &m, &[file("x/a2.parquet")])
        .unwrap();
    assert_eq!(old, ["x/a1.parquet"]);
    assert_eq!(s.garbage().unwrap(), ["x/a1.parquet"]);
    assert_eq!(s.committed_files().unwrap()[&plan[0].id], ["x/a2.parquet"]);
    s.forget_garbage(&["x/a1.parquet".to_string()]).unwrap();
    assert!(s.garbage().unwrap().is_empty());
    let rec = &s.chunks().unwrap()[0];
    assert_eq!(rec.metrics.as_ref().unwrap(), &m);
    assert_eq!(s.commit_counts().unwrap()[&plan[0].id], 2);
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn failed_attempts_and_interrupted_runs() {
    let (_d, s) = store();
    let plan = chunks(2);
    s.sync_plan("job", "fp", &plan, false).unwrap();
    let run = s.begin_run("run").unwrap();
    let a = s.start_attempt(run, &plan[0].id).unwrap();
    s.fail_attempt(run, &plan[0].id, a, "boom", true).unwrap();
    assert_eq!(s.chunks().unwrap()[0].status, ChunkStatus::Running);
    s.fail_attempt(run, &plan[0].id, a, "boom", false).unwrap();
    let rec = &s.chunks().unwrap()[0];
    assert_eq!(rec.status, ChunkStatus::Failed);
    assert_eq!(rec.last_error.as_deref(), Some("boom"));
    s.start_attempt(run, &plan[1].id).unwrap();
    assert_eq!(s.release_interrupted().unwrap(), 1);
    assert_eq!(s.chunks().unwrap()[1].status, ChunkStatus::Pending);
}

#[test]
fn changed_range_is_refused_without_replan() {
    let (_d, s) = store();
    let plan = chunks(2);
    s.sync_plan("job", "fp1", &plan, false).unwrap();
    // Nothing committed yet: a new plan simply replaces the old one.
    let other = plan_bounds(
        "job",
        "id",
        RangeValue::Int(0),
        RangeValue::Int(4),
        ChunkSize::Count(2),
    )
    .unwrap();
    let sync = s.sync_plan("job", "fp2", &other, false).unwrap();
    assert_eq!(sync.retired.len(), 2);
    let run = s.begin_run("run").unwrap();
    let a = s.start_attempt(run, &other[0].id).unwrap();
    s.commit_chunk(
        run,
        &other[0].id,
        a,
        &ChunkMetrics::default(),
        &[file("f1")],
    )
    .unwrap();
    s.mark_published(&other[0].id).unwrap();
    let err = s.sync_plan("job", "fp3", &plan, false).unwrap_err();
    assert!(
        matches!(err, StateError::RangeChanged { committed: 1, .. }),
        "{err}"
    );
    let sync = s.sync_plan("job", "fp3", &plan, true).unwrap();
    assert_eq!(sync.retired.len(), 2);
    assert_eq!(s.garbage().unwrap(), ["f1"]);
    assert_eq!(s.chunks().unwrap().len(), 2);
}

#[test]
fn lock_refuses_a_live_holder_and_takes_over_a_dead_one() {
    let (_d, s) = store();
    let me = LockHolder::current();
    assert_eq!(s.lock(&me).unwrap(), None);
    // The same process may take its own lock again.
    assert_eq!(s.lock(&me).unwrap(), None);
    let other_live = LockHolder {
        pid: 1,
        host: me.host.clone(),
        since: "t".into(),
        token: "another".into(),
    };
    s.unlock(&me).unwrap();
    s.lock(&other_live).unwrap();
    let err = s.lock(&me).unwrap_err();
    assert!(err.to_string().contains("pid 1"), "{err}");
    s.force_unlock().unwrap();
    let dead = LockHolder {
        pid: u32::MAX - 7,
        host: me.host.clone(),
        since: "t".into(),
        token: "another".into(),
    };
    s.lock(&dead).unwrap();
    assert_eq!(s.lock(&me).unwrap(), Some(dead));
}

#[test]
fn newer_schema_is_refused() {
    let (d, s) = store();
    drop(s);
    let path = d.path().join("sub/state.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStateStore::open(&path).err().unwrap();
    assert!(err.to_string().contains("newer backfill"), "{err}");
}

#[test]
fn corrupt_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(
        &path,
        b"this is not a database, just some text that is long enough to look like a header",
    )
    .unwrap();
    let err = SqliteStateStore::open(&path).err().unwrap();
    assert!(err.to_string().contains("state.db"), "{err}");
}

fn owner(name: &str, target: &str) -> JobOwner {
    JobOwner {
        name: name.into(),
        target: target.into(),
        target_key: format!("key of {target}"),
    }
}

#[test]
fn a_state_refuses_another_job() {
    let (_d, s) = store();
    let a = owner("eu", "parquet warehouse/t");
    // Readers of a state that records nobody accept it and record nothing.
    s.check_owner(&owner("x", "parquet y"), false).unwrap();
    s.check_owner(&a, true).unwrap();
    s.check_owner(&a, false).unwrap();
    for other in [
        owner("us", "parquet warehouse/t"),
        owner("eu", "delta warehouse/t"),
    ] {
        for adopt in [false, true] {
            let err = s.check_owner(&other, adopt).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, StateError::OtherJob { .. }), "{text}");
            assert!(
                text.contains("\"eu\" writing to parquet warehouse/t"),
                "{text}"
            );
            assert!(
                text.contains(&format!("\"{}\" writing to {}", other.name, other.target)),
                "{text}"
            );
        }
    }
    // A state of an older version recorded the job's name only.
    let (_d, old) = store();
    old.sync_plan("eu", "fp", &chunks(1), false).unwrap();
    old.check_owner(&owner("eu", "parquet elsewhere"), true)
        .unwrap();
    assert!(
        old.check_owner(&owner("us", "parquet elsewhere"), false)
            .is_err()
    );
    assert!(
        old.check_owner(&owner("eu", "parquet third"), false)
            .is_err()
    );
}

#[test]
fn first_version_ids_are_renamed_once() {
    let (_d, s) = store();
    let mut plan = chunks(3);
    for c in &mut plan {
        c.id = format!("{:012x}", c.index + 0xabc);
    }
    s.sync_plan("job", "fp", &plan, false).unwrap();
    let run = s.begin_run("run").unwrap();
    let a = s.start_attempt(run, &plan[1].id).unwrap();
    s.commit_chunk(run, &plan[1].id, a, &ChunkMetrics::default(), &[file("p1")])
        .unwrap();
    // A state made by this version is never renamed; this one predates it.
    {
        let conn = s.conn();
        conn.execute("DELETE FROM meta WHERE key = 'chunk_ids'", [])
            .unwrap();
    }
    let current = chunks(3);
    let map = |c: &Chunk| {
        let i = usize::from_str_radix(&c.id, 16).ok()?.checked_sub(0xabc)?;
        (i != 2).then(|| current[i].id.clone())
    };
    assert_eq!(s.upgrade_chunk_ids(&map).unwrap(), 2);
    let ids: Vec<String> = s.chunks().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        [
            current[0].id.clone(),
            current[1].id.clone(),
            plan[2].id.clone()
        ]
    );
    assert_eq!(s.committed_files().unwrap()[&current[1].id], ["p1"]);
    assert_eq!(s.commit_counts().unwrap()[&current[1].id], 1);
    assert_eq!(
        s.upgrade_chunk_ids(&|_| panic!("upgraded twice")).unwrap(),
        0
    );
    // A new state is of the current version from the start.
    let (_d, fresh) = store();
    assert_eq!(
        fresh.upgrade_chunk_ids(&|_| panic!("new state")).unwrap(),
        0
    );
}
