//! A state belongs to one job, and jobs that share a folder or a target
//! never see, overwrite or delete each other's chunks or files.

use std::path::Path;

use crate::harness::*;

/// The demo job under another name, writing to `target`.
fn other_job(demo: &Demo, file: &str, name: &str, target: &str) -> String {
    let text = std::fs::read_to_string(demo.job())
        .expect("read job")
        .replace("name = \"transactions\"", &format!("name = \"{name}\""))
        .replace(
            "path = \"warehouse/transactions\"",
            &format!("path = \"{target}\""),
        )
        .replace(
            "path = \"warehouse/transactions_quarantine\"",
            &format!("path = \"{target}_quarantine\""),
        );
    let path = demo.path().join(file);
    std::fs::write(&path, text).expect("write job");
    path.display().to_string()
}

fn run_job(demo: &Demo, job: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", job];
    args.extend_from_slice(extra);
    let out = demo.run(&args);
    assert_eq!(code(&out), 0, "run {job} {extra:?}:\n{}", text(&out));
    out
}

/// Count and order-independent hash of a Hive Parquet folder's rows.
fn fingerprint(glob: &str) -> (i64, String) {
    let rows = duckdb(&format!(
        "SELECT count(*), sum(hash(transaction_id, customer_id, created_at, amount, status, region, category, email))::VARCHAR
         FROM read_parquet('{glob}', hive_partitioning = true)"
    ));
    (int(&rows[0][0]), rows[0][1].to_string())
}

#[test]
fn a_second_job_in_the_folder_runs_on_its_own_state() {
    let demo = Demo::new(3_000, "\"1 month\"");
    demo.run_ok(&[]);
    let copy = other_job(&demo, "copy.toml", "copy", "warehouse/copy");
    let out = run_job(&demo, &copy, &[]);
    assert!(
        stdout(&out).contains("12 of 12 selected chunks committed"),
        "the second job must run every chunk itself:\n{}",
        text(&out)
    );
    let original = fingerprint(&demo.target_glob());
    let copied = fingerprint(&format!(
        "{}/warehouse/copy/**/*.parquet",
        demo.path().display()
    ));
    assert!(original.0 > 0);
    assert_eq!(copied, original, "the second job's target differs");
    // Each has its own state beside the job files, and each validates.
    assert!(demo.path().join(".backfill/transactions.db").is_file());
    assert!(demo.path().join(".backfill/copy.db").is_file());
    for job in [demo.job_str(), copy] {
        let v = demo.run(&["validate", &job]);
        assert_eq!(code(&v), 0, "validate {job}:\n{}", text(&v));
    }
}

/// Moves the demo's monthly source files into two folders, odd and even
/// months, for two jobs that load one table.
fn split_source(demo: &Demo) {
    for dir in ["source_odd", "source_even"] {
        std::fs::create_dir_all(demo.path().join(dir)).expect("mkdir");
    }
    for e in std::fs::read_dir(demo.path().join("source"))
        .expect("source")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let month: u32 = name
            .trim_end_matches(".parquet")
            .rsplit('-')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("unexpected source file {name}"));
        let to = if month % 2 == 1 {
            "source_odd"
        } else {
            "source_even"
        };
        std::fs::rename(e.path(), demo.path().join(to).join(&name)).expect("move");
    }
}

fn job_reading(demo: &Demo, file: &str, name: &str, source: &str) -> String {
    let text = std::fs::read_to_string(demo.job())
        .expect("read job")
        .replace("name = \"transactions\"", &format!("name = \"{name}\""))
        .replace("path = \"source/\"", &format!("path = \"{source}/\""));
    let path = demo.path().join(file);
    std::fs::write(&path, text).expect("write job");
    path.display().to_string()
}

#[test]
fn two_jobs_load_one_target_without_touching_each_other() {
    let demo = Demo::new(4_000, "\"7d\"");
    demo.without_quality();
    split_source(&demo);
    let odd = job_reading(&demo, "odd.toml", "odd_months", "source_odd");
    let even = job_reading(&demo, "even.toml", "even_months", "source_even");
    let all_sources = format!("{}/source_*/*.parquet", demo.path().display());
    let expected = || {
        let rows = duckdb(&format!(
            "SELECT count(*), sum(hash(transaction_id, customer_id, created_at, amount, status, region, category, email))::VARCHAR
             FROM read_parquet('{all_sources}')
             WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'"
        ));
        (int(&rows[0][0]), rows[0][1].to_string())
    };
    let check = |step: &str| {
        assert_eq!(
            fingerprint(&demo.target_glob()),
            expected(),
            "after {step}: the shared target is not the union of both sources"
        );
        assert_eq!(duplicate_rows(&demo), 0, "after {step}");
        // Each job accounts for its own files: the other's, in the same
        // ranges, are not strays.
        for job in [&odd, &even] {
            let v = demo.run(&["validate", job]);
            assert_eq!(code(&v), 0, "validate {job} after {step}:\n{}", text(&v));
        }
    };

    run_job(&demo, &odd, &[]);
    run_job(&demo, &even, &[]);
    check("both jobs ran");
    // Re-running one job's chunks replaces its own files only.
    run_job(&demo, &odd, &["--from", "2023-02-20", "--to", "2023-04-10"]);
    check("a narrowed re-run of one job");
    // One job loses its state: its recovery must not take the other's files
    // for its own leftovers, and its re-run replaces its own old files.
    remove_state(demo.path(), "even_months");
    run_job(&demo, &even, &[]);
    check("the even job ran again after losing its state");
    // A crash of one job mid-run leaves staged files; the other job's next
    // run leaves them alone, and the crashed job cleans them up itself.
    let out = demo.run_env(
        &["run", &odd, "--from", "2023-05-01", "--to", "2023-06-01"],
        &[("BACKFILL_FAILPOINTS", "after_write:1")],
    );
    assert_ne!(
        code(&out),
        0,
        "the failpoint must stop the run:\n{}",
        text(&out)
    );
    run_job(
        &demo,
        &even,
        &["--from", "2023-05-01", "--to", "2023-06-01"],
    );
    run_job(&demo, &odd, &["--from", "2023-05-01", "--to", "2023-06-01"]);
    check("a crash of one job between the other's runs");
    let staged: Vec<String> = demo
        .warehouse_files()
        .into_iter()
        .filter(|f| f.ends_with(".inprogress"))
        .collect();
    assert!(staged.is_empty(), "staged files left: {staged:?}");
}

fn remove_state(dir: &Path, job: &str) {
    for suffix in ["db", "db-wal", "db-shm", "dedup-index"] {
        let _ = std::fs::remove_file(dir.join(format!(".backfill/{job}.{suffix}")));
    }
}
