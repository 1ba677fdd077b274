//! Fault storms and concurrent runs.

use std::process::{Command, Stdio};

use crate::crash::{CHUNK, ROWS, quarantine_fingerprint, reference, reference_run};
use crate::harness::*;

#[test]
fn transient_fault_storm_commits_every_chunk_through_retries() {
    let demo = Demo::new(ROWS, CHUNK);
    demo.edit_job(|s| s.replace("retries = 3", "retries = 8"));
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[
            ("BACKFILL_FAILPOINTS", "read:error%10,write:error%10"),
            ("BACKFILL_FAILPOINTS_SEED", "storm-1"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = demo.status_json();
    let attempts = status["totals"]["attempts"].as_u64().unwrap();
    assert!(
        attempts > 27,
        "a 10% storm must have caused retries: {attempts} attempts for 27 chunks"
    );
    assert_eq!(&target_fingerprint(&demo), reference());
    assert_eq!(&quarantine_fingerprint(&demo), &reference_run().1);
    eprintln!("storm: {} attempts for 27 chunks", attempts);
}

#[test]
fn permanent_faults_fail_only_their_chunks_and_the_next_run_finishes() {
    let demo = Demo::new(ROWS, CHUNK);
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[
            ("BACKFILL_FAILPOINTS", "read:permanent%25"),
            ("BACKFILL_FAILPOINTS_SEED", "storm-2"),
        ],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    let status = demo.status_json();
    let failed: Vec<_> = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(!failed.is_empty() && failed.len() < 27, "{failed:?}");
    assert!(
        failed.iter().all(|&(_, a)| a == 1),
        "permanent errors are not retried: {failed:?}"
    );
    for (i, _) in &failed {
        assert!(
            stdout(&out).contains(&format!("failed: chunk #{i} ")),
            "{}",
            text(&out)
        );
    }
    demo.run_ok(&[]);
    assert_eq!(&target_fingerprint(&demo), reference());
}

#[test]
fn a_second_run_on_the_same_job_is_refused_naming_the_holder() {
    let spawn = |job: &str| {
        Command::new(BIN)
            .args(["-q", "run", job])
            .env_remove("BACKFILL_FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    // Whichever process takes the lock first, the other must be refused and
    // name it. Which one wins is up to the scheduler, so both orders count.
    let mut overlapped = None;
    for _ in 0..5 {
        // A fresh job each try: a finished one would have nothing to run.
        let demo = Demo::new(120_000, "\"7d\"");
        let job = demo.job_str();
        let state = demo.path().join(".backfill/transactions.db");
        let first = spawn(&job);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !state.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let second = spawn(&job);
        let (pid1, pid2) = (first.id(), second.id());
        let out1 = first.wait_with_output().expect("wait");
        let out2 = second.wait_with_output().expect("wait");
        match (out1.status.success(), out2.status.success()) {
            (true, true) => continue,
            (true, false) => overlapped = Some((demo, out2, pid1)),
            (false, true) => overlapped = Some((demo, out1, pid2)),
            (false, false) => panic!(
                "both runs failed:\n{}\n{}",
                String::from_utf8_lossy(&out1.stderr),
                String::from_utf8_lossy(&out2.stderr)
            ),
        }
        break;
    }
    let (demo, refused, holder) =
        overlapped.expect("the two runs never overlapped in 5 tries; make the job bigger");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(code(&refused), 1, "{err}");
    assert!(
        err.contains(&format!("pid {holder}")) && err.contains("is being run by another process"),
        "{err}"
    );
    // The refused run changed nothing; the job is complete and exact.
    assert_eq!(duplicate_rows(&demo), 0);
    let again = demo.run_ok(&[]);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
}

#[test]
fn values_from_the_environment_never_appear_in_any_output() {
    const DIR: &str = "src-Hunter2Secret";
    const NAME: &str = "job-S3cr3tName";
    const WORD: &str = "RuleS3cret";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join(DIR)).unwrap();
    // A good file and a ragged one, so the run fails with a message that
    // carries the (secret) source path.
    std::fs::write(
        d.join(DIR).join("a.csv"),
        "id,email,t\n1,a@x,2023-01-01 00:00:00\n2,b@x,2023-02-01 00:00:00\n",
    )
    .unwrap();
    let job = d.join("job.toml");
    std::fs::write(
        &job,
        r#"[job]
name = "${BF_TEST_NAME}"
[source]
format = "csv"
path = "${BF_TEST_DIR}/"
[source.columns]
t = "timestamp"
[range]
column = "t"
start = "2023-01-01"
end = "2023-03-01"
chunk = "1 month"
[[rules]]
name = "not_the_secret"
check = "email <> '${BF_TEST_WORD}'"
action = "quarantine"
[target]
path = "out"
[run]
retries = 1
retry_backoff = "10ms"
"#,
    )
    .unwrap();
    let env = [
        ("BF_TEST_NAME", NAME),
        ("BF_TEST_DIR", DIR),
        ("BF_TEST_WORD", WORD),
    ];
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env_remove("BACKFILL_FAILPOINTS");
        for (k, v) in env.iter().chain(extra) {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let j = job.to_str().unwrap();
    let mut outputs = vec![
        run(
            &["-v", "run", j],
            &[("BACKFILL_FAILPOINTS", "read:permanent@1")],
        ),
        run(&["status", j], &[]),
        run(&["status", j, "--json"], &[]),
        run(&["plan", j, "--json"], &[]),
        run(&["validate", j, "--json"], &[]),
    ];
    // Now break the source so errors quote the file path.
    std::fs::write(d.join(DIR).join("b.csv"), "id,email,t\n3\n").unwrap();
    outputs.push(run(
        &["-v", "run", j, "--from", "2023-01-01", "--to", "2023-02-01"],
        &[],
    ));
    outputs.push(run(&["validate", j], &[]));
    assert_eq!(code(&outputs[0]), 1, "{}", text(&outputs[0]));
    assert!(
        text(&outputs[5]).contains("***"),
        "the redacted path shows as ***: {}",
        text(&outputs[5])
    );
    for out in &outputs {
        let all = text(out);
        for secret in [DIR, NAME, WORD] {
            assert!(!all.contains(secret), "{secret} leaked:\n{all}");
        }
    }
    let mut state = Vec::new();
    for entry in std::fs::read_dir(d.join(".backfill")).unwrap().flatten() {
        state.extend(std::fs::read(entry.path()).unwrap());
    }
    let state = String::from_utf8_lossy(&state);
    for secret in [DIR, NAME, WORD] {
        assert!(
            !state.contains(secret),
            "{secret} was stored in the state directory"
        );
    }
}

#[test]
fn a_reset_state_store_rebuilds_the_target_without_losing_or_doubling_rows() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.run_ok(&[]);
    let reference = target_fingerprint(&demo);
    let files = demo.warehouse_files();
    // The state is lost (or deleted to start over); the warehouse stays.
    std::fs::remove_dir_all(demo.path().join(".backfill")).expect("remove state");
    demo.run_ok(&[]);
    assert_eq!(target_fingerprint(&demo), reference);
    // One file per chunk and partition again, attempt 1 again, but under
    // new names: a new file never takes the name of one readers may hold.
    let unstamped = |files: &[String]| -> Vec<String> {
        files
            .iter()
            .map(|f| {
                let (head, tail) = f.split_once("-t").expect("a stamped name");
                format!("{head}{}", &tail[tail.find('-').expect("a file number")..])
            })
            .collect()
    };
    let now = demo.warehouse_files();
    assert_eq!(unstamped(&now), unstamped(&files));
    assert!(now.iter().all(|f| !files.contains(f)), "{now:?}\n{files:?}");
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn the_state_and_the_dedup_index_are_private() {
    // Key values (often personal data) live in the state's quality figures
    // and the dedup index: only the owner may read them, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let demo = Demo::new(3_000, "\"1 month\"");
    demo.run_ok(&[]);
    let dir = demo.path().join(".backfill");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut files = 0;
    for e in std::fs::read_dir(&dir).expect("state dir").flatten() {
        let p = e.path();
        if p.is_file() {
            files += 1;
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert!(
        dir.join("transactions.dedup-index").exists(),
        "the index is saved beside the state"
    );
    assert!(files >= 2, "the state and the index: {files} files");
}

#[test]
fn a_chunk_that_panics_fails_and_the_run_exits_1() {
    // A bug that panics in one chunk's attempt: that chunk fails (recorded,
    // not retried, reported), the others commit, and the run exits 1.
    let demo = Demo::new(ROWS, CHUNK);
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[("BACKFILL_FAILPOINTS", "write:panic@2")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        stdout(&out).contains("failed: chunk #2 ") && text(&out).contains("panicked"),
        "{}",
        text(&out)
    );
    let status = demo.status_json();
    let statuses: Vec<(u64, String)> = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "committed")
        .map(|c| (c["index"].as_u64().unwrap(), c["status"].to_string()))
        .collect();
    assert_eq!(statuses, [(2, "\"failed\"".to_string())]);
    demo.run_ok(&[]);
    assert_eq!(&target_fingerprint(&demo), reference());
}
