//! The command line as a user meets it: help, plans, and the message and exit
//! code of each bad job file.

use crate::harness::*;

fn scrub(demo: &Demo, s: &str) -> String {
    s.replace(&demo.path().display().to_string(), "[TMP]")
}

/// Runs a command and renders exit code, stdout and stderr for a snapshot.
fn snap(demo: &Demo, args: &[&str]) -> String {
    let out = demo.run(args);
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        code(&out),
        scrub(demo, &String::from_utf8_lossy(&out.stdout)),
        scrub(demo, &String::from_utf8_lossy(&out.stderr))
    )
}

fn job_with(demo: &Demo, from: &str, to: &str) -> String {
    let text = backfill::core::spec::EXAMPLE_JOB.replace(from, to);
    std::fs::write(demo.job(), text).unwrap();
    demo.job().display().to_string()
}

#[test]
fn help() {
    let demo = Demo::new(200, "\"7d\"");
    insta::assert_snapshot!(snap(&demo, &["--help"]));
    insta::assert_snapshot!(snap(&demo, &["run", "--help"]));
}

#[test]
fn plan_lists_chunks_with_stable_ids() {
    let demo = Demo::new(200, "\"1 month\"");
    let job = demo.job().display().to_string();
    insta::assert_snapshot!(snap(&demo, &["plan", &job]));
    let out = demo.run(&["plan", &job, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["total"], 12);
    assert_eq!(json["chunks"][1]["lo"]["value"], 1_675_209_600_000_000i64);
}

#[test]
fn bad_job_files_exit_2_with_every_problem() {
    let demo = Demo::new(200, "\"7d\"");
    let job = job_with(
        &demo,
        "chunk = \"7d\"",
        "chunk = \"7 dayz\"\nparalelism = 3",
    );
    insta::assert_snapshot!("bad_chunk_and_unknown_key", snap(&demo, &["run", &job]));

    let job = job_with(&demo, "column = \"created_at\"", "column = \"created\"");
    insta::assert_snapshot!("missing_range_column", snap(&demo, &["plan", &job]));

    let job = job_with(&demo, "column = \"created_at\"", "column = \"status\"");
    insta::assert_snapshot!("wrong_range_column_type", snap(&demo, &["run", &job]));

    let job = job_with(
        &demo,
        "FROM source\"",
        "FROM source WHERE no_such_column > 1\"",
    );
    let s = snap(&demo, &["run", &job]);
    assert!(s.starts_with("exit: 2"), "{s}");
    assert!(
        s.contains("backfill.toml:23:7: transform.sql:") && s.contains("no_such_column"),
        "{s}"
    );

    let job = job_with(
        &demo,
        "path = \"source/\"",
        "path = \"${BACKFILL_TEST_UNSET_VAR}/x\"",
    );
    insta::assert_snapshot!("unset_env_var", snap(&demo, &["run", &job]));

    let job = job_with(&demo, "path = \"source/\"", "path = \"nowhere/\"");
    insta::assert_snapshot!("missing_source", snap(&demo, &["run", &job]));

    let job = job_with(
        &demo,
        "partition_by = [\"year\", \"month\"]",
        "partition_by = [\"year\", \"quarter\"]",
    );
    insta::assert_snapshot!("missing_partition_column", snap(&demo, &["run", &job]));

    // Nothing ran: no state, no warehouse.
    assert!(!demo.warehouse().exists());
}

#[test]
fn a_changed_range_is_refused_without_replan() {
    let demo = Demo::new(2_000, "\"1 month\"");
    demo.run_ok(&[]);
    let before = target_fingerprint(&demo);
    demo.write_job("\"7d\"", "");
    let job = demo.job().display().to_string();
    let out = demo.run(&["run", &job]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--replan"),
        "{}",
        text(&out)
    );
    assert_eq!(
        target_fingerprint(&demo),
        before,
        "a refused run must not touch the target"
    );

    demo.run_ok(&["--replan"]);
    assert_eq!(target_fingerprint(&demo), before);
    assert_eq!(duplicate_rows(&demo), 0);
    let files = demo.warehouse_files();
    assert!(
        files.len() >= 53,
        "weekly chunks write their own files: {files:?}"
    );
}

#[test]
fn status_before_and_after() {
    let demo = Demo::new(500, "\"1 month\"");
    let job = demo.job().display().to_string();
    let out = demo.run(&["status", &job]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("12 chunks: 0 committed, 12 pending"),
        "{}",
        text(&out)
    );
    demo.run_ok(&["--parallel", "3"]);
    let out = demo.run(&["status", &job]);
    assert!(
        stdout(&out).contains("12 chunks: 12 committed, 0 pending"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("watermark: 2024-01-01"),
        "{}",
        text(&out)
    );
    let dry = demo.run(&[
        "run",
        &job,
        "--dry-run",
        "--from",
        "2023-06-15",
        "--to",
        "2023-07-02",
    ]);
    assert!(
        stdout(&dry).contains("dry run: 2 of 12 chunks would run"),
        "{}",
        text(&dry)
    );
}

/// `status` with each chunk's duration (`1.23s`) shown as `0.00s`: the one
/// column that differs from run to run.
fn without_durations(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = i - start;
        if int == 1
            && i + 3 < b.len()
            && b[i] == b'.'
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && b[i + 3] == b's'
            && (start == 0 || !b[start - 1].is_ascii_alphanumeric())
        {
            out.push_str("0.00s");
            i += 4;
        } else if int > 0 {
            out.push_str(&s[start..i]);
        } else {
            let c = s[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
    }
    out
}

#[test]
fn status_after_a_run_with_a_failed_chunk() {
    // Issue 21: the table a user reads after a run that failed one chunk
    // and committed the others, pinned as a whole.
    let demo = Demo::new(500, "\"1 month\"");
    let job = demo.job().display().to_string();
    let out = demo.run_env(
        &["run", &job, "--parallel", "2"],
        &[("BACKFILL_FAILPOINTS", "read:permanent@3")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    insta::assert_snapshot!(without_durations(&snap(&demo, &["status", &job])));
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::{BufRead, BufReader};
    let demo = Demo::new(200, "\"1h\"");
    let mut child = std::process::Command::new(BIN)
        .args(["status", &demo.job_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is gone now, like `backfill status job.toml | head -1`.
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("chunk"), "{first}");
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        text(&out)
    );
}
