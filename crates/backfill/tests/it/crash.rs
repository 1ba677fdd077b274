//! Crashes at every step of the commit protocol, kill -9 at random moments,
//! and failing chunks: the next `run` must leave exactly the rows of a clean run.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use backfill::core::state::{SqliteStateStore, StateStore};

use crate::harness::*;

pub(crate) const ROWS: u64 = 3_000;
pub(crate) const CHUNK: &str = "\"14d\"";

/// Fingerprint of a clean run over the same data, computed once.
pub(crate) fn reference() -> &'static (i64, String) {
    &reference_run().0
}

/// The clean run's target fingerprint and quarantine fingerprint.
pub(crate) fn reference_run() -> &'static ((i64, String), (i64, String)) {
    static REF: OnceLock<((i64, String), (i64, String))> = OnceLock::new();
    REF.get_or_init(|| {
        let demo = Demo::new(ROWS, CHUNK);
        demo.run_ok(&[]);
        (target_fingerprint(&demo), quarantine_fingerprint(&demo))
    })
}

/// Quarantined rows, ignoring `_run` (which differs between runs).
pub(crate) fn quarantine_fingerprint(demo: &Demo) -> (i64, String) {
    let rows = duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, created_at, amount, status, email, _rule, _chunk))::VARCHAR
         FROM read_parquet('{}', hive_partitioning = true)",
        demo.quarantine_glob()
    ));
    (int(&rows[0][0]), rows[0][1].to_string())
}

/// Rows the first `n` chunks wrote, which is what readers must see once
/// exactly those chunks are published.
fn rows_of_first_chunks(demo: &Demo, n: usize) -> i64 {
    demo.status_json()["chunks"].as_array().unwrap()[..n]
        .iter()
        .map(|c| c["metrics"]["rows_written"].as_i64().unwrap_or(0))
        .sum()
}

fn visible_rows(demo: &Demo) -> i64 {
    if demo
        .warehouse_files()
        .iter()
        .all(|f| !f.ends_with(".parquet"))
    {
        return 0;
    }
    int(&duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ))[0][0])
}

/// Resumes until a run succeeds, then checks the target against the reference.
fn resume_and_check(demo: &Demo) {
    let mut tries = 0;
    loop {
        tries += 1;
        let out = demo.run(&["run", demo.job().to_str().unwrap_or_default()]);
        if code(&out) == 0 {
            break;
        }
        assert!(tries < 3, "resume keeps failing:\n{}", text(&out));
    }
    assert_eq!(
        &target_fingerprint(demo),
        reference(),
        "target differs from a clean run"
    );
    assert_eq!(duplicate_rows(demo), 0);
    let stray: Vec<_> = demo
        .warehouse_files()
        .into_iter()
        .filter(|f| {
            !f.rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with("part-")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "files left that are not published data: {stray:?}"
    );
    let state = SqliteStateStore::open(demo.path().join(".backfill/transactions.db")).unwrap();
    assert_eq!(state.integrity_check().unwrap(), "ok");
    let commits = state.commit_counts().unwrap();
    assert_eq!(commits.len(), 27, "every chunk committed");
    assert!(
        commits.values().all(|&n| n == 1),
        "a chunk committed twice: {commits:?}"
    );
}

#[test]
fn abort_at_each_step_of_the_commit_protocol() {
    // (failpoint, chunks whose rows readers must see right after the crash)
    let cases = [
        ("after_write:3", Some(2)),
        ("in_commit_txn:3", Some(2)),
        ("after_commit:3", Some(2)),
        ("after_publish:3", Some(3)),
        ("after_cleanup:3", Some(3)),
        ("mid_publish:1", None),
    ];
    for (fp, visible_until) in cases {
        let demo = Demo::new(ROWS, CHUNK);
        demo.write_job(CHUNK, "");
        std::fs::write(
            demo.job(),
            std::fs::read_to_string(demo.job())
                .unwrap()
                .replace("parallelism = 2", "parallelism = 1"),
        )
        .unwrap();
        let out = demo.run_env(
            &["run", demo.job().to_str().unwrap_or_default()],
            &[("BACKFILL_FAILPOINTS", fp)],
        );
        assert_eq!(
            out.status.code(),
            None,
            "{fp}: the process should have aborted:\n{}",
            text(&out)
        );
        if let Some(n) = visible_until {
            assert_eq!(
                visible_rows(&demo),
                rows_of_first_chunks(&demo, n),
                "{fp}: readers see uncommitted or missing rows"
            );
        }
        resume_and_check(&demo);
    }
}

/// A clean weekly run of `rows` demo rows, and how long it took: kills are
/// timed as fractions of it.
fn timed_clean_run(rows: u64) -> (Demo, Duration) {
    let clean = Demo::new(rows, "\"7d\"");
    let t = std::time::Instant::now();
    clean.run_ok(&[]);
    (clean, t.elapsed())
}

#[test]
fn kill_9_at_random_moments() {
    // Large enough that a run lasts long enough to be killed in the middle.
    const BIG: u64 = 120_000;
    let (clean, duration) = timed_clean_run(BIG);
    let expected = target_fingerprint(&clean);
    let expected_quarantine = quarantine_fingerprint(&clean);
    let mut killed_mid_run = 0;
    for (trial, fraction) in [0.15f64, 0.35, 0.55, 0.8].into_iter().enumerate() {
        let demo = Demo::new(BIG, "\"7d\"");
        let mut child = Command::new(BIN)
            .args(["-q", "run", demo.job().to_str().unwrap_or_default()])
            .env_remove("BACKFILL_FAILPOINTS")
            .spawn()
            .expect("spawn");
        std::thread::sleep(duration.mul_f64(fraction));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if status.code().is_none() {
            killed_mid_run += 1;
        }
        eprintln!(
            "trial {trial}: SIGKILL at {:.0}% of a clean run ({status:?})",
            fraction * 100.0
        );
        let out = demo.run_ok(&[]);
        assert_eq!(
            target_fingerprint(&demo),
            expected,
            "trial {trial}: {}",
            text(&out)
        );
        assert_eq!(
            quarantine_fingerprint(&demo),
            expected_quarantine,
            "trial {trial}"
        );
        assert_eq!(duplicate_rows(&demo), 0);
        assert!(demo.warehouse_files().iter().all(|f| {
            f.rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with("part-")
        }));
    }
    assert!(
        killed_mid_run >= 2,
        "only {killed_mid_run} trials were killed before finishing; the runs are too short"
    );
}

#[test]
fn a_failing_chunk_is_retried_then_failed_and_the_next_run_finishes() {
    let demo = Demo::new(ROWS, CHUNK);
    demo.write_job(CHUNK, "");
    let job = demo.job().display().to_string();
    std::fs::write(
        &job,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace("retries = 3", "retries = 2"),
    )
    .unwrap();

    let out = demo.run_env(&["run", &job], &[("BACKFILL_FAILPOINTS", "read:error@4")]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let s = stdout(&out);
    assert!(
        s.contains("26 of 27 selected chunks committed, 1 failed"),
        "{}",
        text(&out)
    );
    assert!(
        s.contains("failed: chunk #4") && s.contains("injected failure at failpoint read"),
        "{}",
        text(&out)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&demo.run(&["status", &job, "--json"]).stdout).unwrap();
    let c4 = &status["chunks"][4];
    assert_eq!(c4["status"], "failed");
    assert_eq!(c4["attempts"], 3, "one attempt and two retries");
    assert_eq!(status["totals"]["committed"], 26);

    // A transient fault that passes: retried and committed.
    let out = demo.run_env(
        &["run", &job, "--only-failed"],
        &[("BACKFILL_FAILPOINTS", "read:error*1")],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: serde_json::Value =
        serde_json::from_slice(&demo.run(&["status", &job, "--json"]).stdout).unwrap();
    assert_eq!(status["chunks"][4]["attempts"], 5);
    assert_eq!(&target_fingerprint(&demo), reference());

    // A permanent error is not retried.
    let out = demo.run_env(
        &["run", &job, "--from", "2023-01-01", "--to", "2023-01-02"],
        &[("BACKFILL_FAILPOINTS", "read:permanent")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(stdout(&out).contains("not retried"), "{}", text(&out));
    // The committed files of the failed re-run are still what readers see.
    assert_eq!(&target_fingerprint(&demo), reference());
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_run_resumes() {
    const BIG: u64 = 120_000;
    let (clean, duration) = timed_clean_run(BIG);
    let expected = target_fingerprint(&clean);

    for signal in ["-INT", "-TERM"] {
        let demo = Demo::new(BIG, "\"7d\"");
        let job = demo.job().display().to_string();
        let child = Command::new(BIN)
            .args(["run", &job])
            .env_remove("BACKFILL_FAILPOINTS")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        std::thread::sleep(duration.mul_f64(0.4));
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let stopping = std::time::Instant::now();
        let out = child.wait_with_output().expect("wait");
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "took {:?} to stop",
            stopping.elapsed()
        );
        assert_eq!(code(&out), 130, "{signal}: {}", text(&out));
        assert!(
            stdout(&out).contains("interrupted: run the same command again to resume"),
            "{}",
            text(&out)
        );

        let status: serde_json::Value =
            serde_json::from_slice(&demo.run(&["status", &job, "--json"]).stdout).unwrap();
        assert_eq!(
            status["totals"]["running"], 0,
            "no chunk may stay 'running' after a clean stop"
        );
        let committed = status["totals"]["committed"].as_u64().unwrap();
        assert!(
            committed > 0 && committed < 53,
            "{committed} chunks committed before the stop"
        );
        assert!(
            demo.warehouse_files().iter().all(|f| f
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .starts_with("part-")),
            "a clean stop leaves no staged files"
        );

        demo.run_ok(&[]);
        assert_eq!(target_fingerprint(&demo), expected);
        assert_eq!(duplicate_rows(&demo), 0);
    }
}

/// Crash torture: random SIGKILLs and aborts at random failpoints, then
/// resume, then compare with a clean run row by row. CI runs 20 trials;
/// `scripts/torture.sh 200` runs more.
#[test]
fn torture() {
    use rand::{Rng, SeedableRng};
    const TORTURE_ROWS: u64 = 40_000;
    let trials: u64 = std::env::var("BACKFILL_TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (clean, duration) = timed_clean_run(TORTURE_ROWS);
    let (mut kills, mut aborts, mut lost, mut duplicated, mut orphans) = (0, 0, 0i64, 0i64, 0usize);
    // Every step a crash can hit, but the two that fail rather than abort.
    let points: Vec<&str> = backfill::failpoint::POINTS
        .iter()
        .copied()
        .filter(|p| !matches!(*p, "read" | "write"))
        .collect();
    for trial in 0..trials {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xB4C4F111 + trial);
        let demo = Demo::new(TORTURE_ROWS, "\"7d\"");
        let job = demo.job_str();
        if rng.random_bool(0.5) {
            let mut child = Command::new(BIN)
                .args(["-q", "run", &job])
                .env_remove("BACKFILL_FAILPOINTS")
                .spawn()
                .expect("spawn");
            std::thread::sleep(duration.mul_f64(rng.random_range(0.05..0.95)));
            let _ = child.kill();
            if child.wait().map(|s| s.code().is_none()).unwrap_or(false) {
                kills += 1;
            }
        } else {
            let fp = format!(
                "{}:{}",
                points[rng.random_range(0..points.len())],
                rng.random_range(1..30)
            );
            let out = demo.run_env(&["-q", "run", &job], &[("BACKFILL_FAILPOINTS", &fp)]);
            if out.status.code().is_none() {
                aborts += 1;
            }
        }
        let mut tries = 0;
        while code(&demo.run(&["-q", "run", &job])) != 0 {
            tries += 1;
            assert!(tries < 3, "trial {trial}: resume keeps failing");
        }
        for (a, b, what) in [
            (clean.target_glob(), demo.target_glob(), "target"),
            (
                clean.quarantine_glob(),
                demo.quarantine_glob(),
                "quarantine",
            ),
        ] {
            let cols = if what == "target" {
                "* "
            } else {
                "* EXCLUDE (_run) "
            };
            let diff = |x: &str, y: &str| {
                int(&duckdb(&format!(
                    "SELECT count(*) FROM (SELECT {cols} FROM read_parquet('{x}', hive_partitioning = true) EXCEPT ALL SELECT {cols} FROM read_parquet('{y}', hive_partitioning = true))"
                ))[0][0])
            };
            lost += diff(&a, &b);
            duplicated += diff(&b, &a);
        }
        let files = demo.warehouse_files();
        orphans += files
            .iter()
            .filter(|f| {
                !f.rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .starts_with("part-")
            })
            .count();
        let state = SqliteStateStore::open(demo.path().join(".backfill/transactions.db")).unwrap();
        assert_eq!(state.integrity_check().unwrap(), "ok", "trial {trial}");
        let recorded: usize = state
            .committed_files()
            .unwrap()
            .values()
            .flatten()
            .filter(|f| !f.starts_with("quarantine::"))
            .count();
        orphans += files.len().saturating_sub(recorded);
        let commits = state.commit_counts().unwrap();
        assert!(
            commits.len() == 53 && commits.values().all(|&n| n == 1),
            "trial {trial}: {commits:?}"
        );
    }
    println!(
        "torture: trials={trials} kills={kills} aborts={aborts} lost_rows={lost} duplicated_rows={duplicated} orphans={orphans}"
    );
    assert_eq!((lost, duplicated, orphans), (0, 0, 0));
    assert!(
        kills + aborts >= trials / 2,
        "most trials must actually interrupt a run"
    );
}

#[test]
fn a_chunk_whose_publish_keeps_failing_does_not_hold_back_the_others() {
    // Issue 20: recovery stopped the whole run at the first committed
    // chunk it could not publish, so one stuck chunk blocked every run.
    let demo = Demo::new(4_000, "\"7d\"");
    demo.without_quality();
    // Chunk 4, [2023-01-29, 2023-02-05), writes into two month folders:
    // it is committed, then the process dies before publishing it.
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[("BACKFILL_FAILPOINTS", "after_commit:1@4")],
    );
    assert_ne!(code(&out), 0, "{}", text(&out));
    // Its publish now fails every time.
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[("BACKFILL_FAILPOINTS", "mid_publish:permanent@4")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        stdout(&out).contains("publishing it failed again"),
        "{}",
        text(&out)
    );
    // Every other chunk ran and is visible.
    let rows = |filter: &str| {
        int(&duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}') WHERE {filter}",
            demo.source_glob()
        ))[0][0])
    };
    let week4 = "created_at >= TIMESTAMP '2023-01-29' AND created_at < TIMESTAMP '2023-02-05'";
    let others = rows(&format!(
        "created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01' AND NOT ({week4})"
    ));
    let visible = int(&duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', hive_partitioning = true) WHERE NOT ({week4})",
        demo.target_glob()
    ))[0][0]);
    assert_eq!(visible, others, "the other chunks' rows");
    // The next run publishes it.
    demo.run_ok(&[]);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn publish_retries_follow_the_run_section() {
    // Issue 21: publishing retried five times whatever `[run] retries` said.
    // Chunk 4, [2023-01-29, 2023-02-05), writes into two month folders, so
    // its publish reaches `mid_publish`.
    let strict = Demo::new(4_000, "\"7d\"");
    strict.without_quality();
    strict.edit_job(|s| s.replace("retries = 3", "retries = 0"));
    let out = strict.run_env(
        &["run", &strict.job_str()],
        &[("BACKFILL_FAILPOINTS", "mid_publish:error*1@4")],
    );
    assert_eq!(code(&out), 1, "no retry was allowed: {}", text(&out));
    // The next run publishes what was committed, and the target is exact.
    strict.run_ok(&[]);
    let v = strict.run(&["validate", &strict.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    let patient = Demo::new(4_000, "\"7d\"");
    patient.without_quality();
    patient.edit_job(|s| s.replace("retries = 3", "retries = 8"));
    let out = patient.run_env(
        &["run", &patient.job_str()],
        &[("BACKFILL_FAILPOINTS", "mid_publish:error*7@4")],
    );
    assert_eq!(
        code(&out),
        0,
        "eight retries ride out seven failures: {}",
        text(&out)
    );
    let v = patient.run(&["validate", &patient.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn files_capped_by_rows_are_read_back_whole_and_owned_after_a_crash() {
    // Issue 22: one chunk over the whole range writes files of at most
    // `max_file_rows` rows; a process killed once they are staged leaves
    // nothing the next run does not own.
    let demo = Demo::new(3_000, "\"all\"");
    demo.without_quality();
    demo.edit_job(|s| {
        s.replace(
            "compression = \"zstd\"",
            "max_file_rows = 70\ncompression = \"zstd\"",
        )
    });
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[("BACKFILL_FAILPOINTS", "after_write:1")],
    );
    assert_ne!(code(&out), 0, "{}", text(&out));
    demo.run_ok(&[]);
    let files = duckdb(&format!(
        "SELECT count(*), max(n), sum(n) FROM (SELECT filename, count(*) AS n \
         FROM read_parquet('{}', filename = true, hive_partitioning = true) GROUP BY filename)",
        demo.target_glob()
    ));
    let expected = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}') WHERE created_at >= TIMESTAMP '2023-01-01' \
         AND created_at < TIMESTAMP '2024-01-01'",
        demo.source_glob()
    ));
    let (count, largest, rows) = (int(&files[0][0]), int(&files[0][1]), int(&files[0][2]));
    assert!(largest <= 70, "a file holds {largest} rows");
    assert!(count >= int(&expected[0][0]) / 70, "{count} files");
    assert_eq!(rows, int(&expected[0][0]));
    assert_eq!(duplicate_rows(&demo), 0);
    assert!(
        demo.warehouse_files()
            .iter()
            .all(|f| !f.contains(".inprogress")),
        "{:?}",
        demo.warehouse_files()
    );
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}
