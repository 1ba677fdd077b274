//! The library API does what the CLI does.

use backfill::{Backfill, RunOptions};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_plan_and_status_through_the_library() {
    let demo = Demo::new(1_000, "\"1 month\"");
    let job = Backfill::from_file(demo.job()).unwrap();
    let plan = job.plan().await.unwrap();
    assert_eq!(plan.len(), 12);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let summary = job
        .run_with(RunOptions {
            parallelism: Some(3),
            on_chunk: Some(backfill::progress::OnChunk(std::sync::Arc::new(move |e| {
                seen.lock().unwrap().push(e)
            }))),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(summary.committed, 12);
    // The callback hears of each chunk as it ends, each counted once.
    let events = events.lock().unwrap().clone();
    let mut done: Vec<usize> = events.iter().map(|e| e.done).collect();
    done.sort_unstable();
    assert_eq!(done, (1..=12).collect::<Vec<_>>());
    assert!(
        events
            .iter()
            .all(|e| e.state == "committed" && e.total == 12)
    );
    assert_eq!(events.iter().map(|e| e.rows_read).sum::<u64>(), 1_000);
    assert!(summary.failed.is_empty());
    assert_eq!(summary.rows_read, 1_000);
    let again = job.run().await.unwrap();
    assert!(again.nothing_to_do());
    let status = job.status().unwrap();
    assert!(
        status
            .iter()
            .all(|c| c.status == backfill::core::ChunkStatus::Committed)
    );
    assert_eq!(target_fingerprint(&demo).0, summary.rows_written as i64);
    assert_eq!(
        summary.rows_written + summary.rows_quarantined + summary.rows_dropped + summary.duplicates,
        1_000
    );
}

/// A library user stops a run with a [`backfill::Cancel`], as the CLI does
/// on Ctrl-C: no chunk starts after it, the run says it was interrupted,
/// and the next run finishes the rest. The library installs no signal
/// handler and never exits the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_and_the_next_one_finishes() {
    let demo = Demo::new(1_000, "\"1 month\"");
    let job = Backfill::from_file(demo.job()).unwrap();
    let cancel = backfill::Cancel::new();
    cancel.cancel();
    let stopped = job
        .run_with(RunOptions {
            cancel: Some(cancel.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stopped.interrupted, "{stopped:?}");
    assert_eq!(stopped.committed, 0);
    assert_eq!(stopped.left, 12);
    // A cancel that never fires changes nothing.
    let finished = job
        .run_with(RunOptions {
            cancel: Some(backfill::Cancel::new()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!finished.interrupted);
    assert_eq!(finished.committed, 12);
    assert_eq!(target_fingerprint(&demo).0, finished.rows_written as i64);
}
