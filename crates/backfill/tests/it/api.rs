//! The library API does what the CLI does.

use backfill::{Backfill, RunOptions};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_plan_and_status_through_the_library() {
    let demo = Demo::new(1_000, "\"1 month\"");
    let job = Backfill::from_file(demo.job()).unwrap();
    let plan = job.plan().await.unwrap();
    assert_eq!(plan.len(), 12);
    let summary = job
        .run_with(RunOptions {
            parallelism: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(summary.committed, 12);
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
