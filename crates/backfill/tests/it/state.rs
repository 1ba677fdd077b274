//! One contract, two state stores: the same sequence of calls against the
//! SQLite store and the PostgreSQL one (a schema of its own on the suite's
//! server), with the same answers expected. Where the stores differ on
//! purpose (locks, leases, claiming a committed chunk) the store's own tests
//! say how.

use std::collections::BTreeMap;
use std::time::Duration;

use backfill::core::RangeValue;
use backfill::core::plan::Chunk;
use backfill::core::spec::PgStateSpec;
use backfill::core::state::postgres::PgStateStore;
use backfill::core::state::{
    ChunkMetrics, ChunkStatus, JobOwner, OwnedFile, SqliteStateStore, StateError, StateStore,
};

use crate::harness::*;

fn owner(name: &str) -> JobOwner {
    JobOwner {
        name: name.into(),
        target: "warehouse/t".into(),
        target_key: "k".into(),
    }
}

fn plan(n: usize) -> Vec<Chunk> {
    (0..n)
        .map(|i| Chunk {
            index: i,
            id: format!("c{i}"),
            lo: Some(RangeValue::Int(10 * i as i64)),
            hi: Some(RangeValue::Int(10 * i as i64 + 10)),
            value: None,
            bucket: None,
        })
        .collect()
}

fn file(name: &str) -> OwnedFile {
    OwnedFile {
        path: format!("p/{name}.parquet"),
        staged: format!("p/.{name}.parquet.inprogress"),
    }
}

fn status(store: &dyn StateStore) -> BTreeMap<String, (ChunkStatus, u32)> {
    store
        .chunks()
        .expect("chunks")
        .into_iter()
        .map(|c| (c.id, (c.status, c.attempts)))
        .collect()
}

fn keeps_the_contract(store: &dyn StateStore) {
    // Ownership: a run adopts the state; another job is refused.
    store.check_owner(&owner("conf"), true).expect("adopt");
    store.check_owner(&owner("conf"), false).expect("same job");
    let other = store.check_owner(&owner("other"), false);
    assert!(
        matches!(other, Err(StateError::OtherJob { .. })),
        "{other:?}"
    );

    // The plan: inserted once, idempotent, extended by appending.
    let chunks = plan(3);
    assert_eq!(
        store
            .sync_plan("conf", "fp", &chunks[..2], false)
            .expect("sync")
            .inserted,
        2
    );
    assert_eq!(
        store
            .sync_plan("conf", "fp", &chunks[..2], false)
            .expect("again")
            .inserted,
        0
    );
    assert_eq!(
        store
            .sync_plan("conf", "fp", &chunks, false)
            .expect("extend")
            .inserted,
        1
    );
    let s = status(store);
    assert_eq!(s.len(), 3);
    assert!(s.values().all(|v| *v == (ChunkStatus::Pending, 0)), "{s:?}");

    let run = store.begin_run("run conf.toml").expect("begin run");
    // Notes: absent, then the last value set.
    assert_eq!(store.note("mark").expect("note"), None);
    store.set_note("mark", "1").expect("set");
    store.set_note("mark", "2").expect("set again");
    assert_eq!(store.note("mark").expect("note").as_deref(), Some("2"));

    // Attempts count over the chunk's life; a failure that will be retried
    // does not fail the chunk.
    let a1 = store.claim(run, "c0", false).expect("claim").expect("free");
    assert_eq!(a1, 1);
    assert_eq!(status(store)["c0"], (ChunkStatus::Running, 1));
    store
        .fail_attempt(run, "c0", a1, "transient", true)
        .expect("fail");
    assert_ne!(status(store)["c0"].0, ChunkStatus::Failed);
    let a2 = store.claim(run, "c0", false).expect("claim").expect("free");
    assert_eq!(a2, 2);

    // The commit point: committed, unpublished until marked.
    let metrics = ChunkMetrics {
        rows_read: 5,
        rows_written: 4,
        checksum: 42,
        ..Default::default()
    };
    let superseded = store
        .commit_chunk(run, "c0", a2, &metrics, &[file("a")])
        .expect("commit");
    assert!(superseded.is_empty(), "{superseded:?}");
    let unpublished = store.unpublished().expect("unpublished");
    assert_eq!(unpublished.get("c0"), Some(&vec![file("a")]));
    store.mark_published("c0").expect("published");
    assert!(store.unpublished().expect("unpublished").is_empty());
    assert_eq!(
        store.committed_files().expect("files").get("c0"),
        Some(&vec!["p/a.parquet".to_string()])
    );
    let c0 = store
        .chunks()
        .expect("chunks")
        .into_iter()
        .find(|c| c.id == "c0")
        .expect("c0");
    assert_eq!((c0.status, c0.attempts), (ChunkStatus::Committed, 2));
    let m = c0.metrics.expect("metrics");
    assert_eq!((m.rows_read, m.rows_written, m.checksum), (5, 4, 42));

    // Committed again: the earlier files are handed back as garbage.
    let a3 = store.claim(run, "c0", true).expect("claim").expect("rerun");
    let superseded = store
        .commit_chunk(run, "c0", a3, &metrics, &[file("b")])
        .expect("commit again");
    assert_eq!(superseded, vec!["p/a.parquet".to_string()]);
    store.mark_published("c0").expect("published");
    store.add_garbage(&superseded).expect("garbage");
    assert!(
        store
            .garbage()
            .expect("garbage")
            .contains(&"p/a.parquet".to_string())
    );
    store.forget_garbage(&superseded).expect("forget");
    assert!(
        !store
            .garbage()
            .expect("garbage")
            .contains(&"p/a.parquet".to_string())
    );

    // A failure that will not be retried fails the chunk, with its message.
    let b = store.claim(run, "c1", false).expect("claim").expect("free");
    store
        .fail_attempt(run, "c1", b, "permanent: no such column", false)
        .expect("fail");
    let c1 = store
        .chunks()
        .expect("chunks")
        .into_iter()
        .find(|c| c.id == "c1")
        .expect("c1");
    assert_eq!(c1.status, ChunkStatus::Failed);
    assert!(
        c1.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no such column")
    );

    // Reset forgets a chunk so it runs again.
    assert_eq!(store.reset(&["c1".to_string()]).expect("reset"), 1);
    assert_eq!(status(store)["c1"].0, ChunkStatus::Pending);

    // A plan without a committed chunk is refused unless replanned; then
    // the chunk is retired and its files are garbage.
    let c = store.claim(run, "c2", false).expect("claim").expect("free");
    store
        .commit_chunk(run, "c2", c, &metrics, &[file("c")])
        .expect("commit");
    store.mark_published("c2").expect("published");
    let refused = store.sync_plan("conf", "fp2", &chunks[..2], false);
    assert!(
        matches!(refused, Err(StateError::RangeChanged { .. })),
        "{refused:?}"
    );
    let replanned = store
        .sync_plan("conf", "fp2", &chunks[..2], true)
        .expect("replan");
    assert_eq!(replanned.retired, vec!["c2".to_string()]);
    assert!(
        store
            .garbage()
            .expect("garbage")
            .contains(&"p/c.parquet".to_string())
    );
    assert!(!status(store).contains_key("c2"));
    store.finish_run(run, "ok").expect("finish");
}

#[test]
fn the_sqlite_state_store_keeps_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStateStore::open(dir.path().join("conf.db")).expect("open");
    keeps_the_contract(&store);
}

#[test]
fn the_postgres_state_store_keeps_the_contract() {
    let pg = Pg::new("stateconf");
    let spec = PgStateSpec {
        url: pg.url.clone(),
        shown: "postgres state".into(),
        schema: pg.schema.clone(),
        lease: Duration::from_secs(30),
    };
    let store = PgStateStore::open(&spec, "conf").expect("open");
    keeps_the_contract(&store);
}
