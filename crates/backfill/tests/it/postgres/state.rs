//! A shared PostgreSQL state store: processes that share one backfill
//! through leases, die, come back, and never commit a chunk twice.

use super::*;

/// Per chunk: (commits, the processes that made them), from the shared state.
fn commits(pg: &Pg) -> Vec<(String, i64, i64)> {
    pg.rows(&format!(
        "SELECT chunk_id, count(*), count(DISTINCT worker) FROM {}_state.attempts \
         WHERE outcome = 'committed' GROUP BY chunk_id ORDER BY chunk_id",
        pg.schema
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap()))
    .collect()
}

fn spawn_run(demo: &Demo, pg: &Pg) -> std::process::Child {
    spawn_with(demo, pg, &["run"], &[])
}

#[test]
fn two_processes_share_one_backfill_through_postgres_state() {
    let pg = Pg::new("shared");
    let demo = Demo::new(30_000, "\"7d\"");
    state_to_pg(&demo, &pg, "30s");
    let (months, dups) = expected_global(&demo);
    let a = spawn_run(&demo, &pg);
    let b = spawn_run(&demo, &pg);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let commits = commits(&pg);
    assert_eq!(commits.len(), 53, "every weekly chunk committed");
    assert!(
        commits.iter().all(|(_, n, _)| *n == 1),
        "a chunk committed twice: {commits:?}"
    );
    let workers = pg.one(&format!(
        "SELECT count(DISTINCT worker) FROM {}_state.attempts WHERE outcome = 'committed'",
        pg.schema
    ));
    assert_eq!(workers, "2", "both processes should have committed chunks");
    let actual = duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.target_glob()
    ));
    assert_months_equal(&months, &actual);
    assert_eq!(duplicate_rows(&demo), 0);
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["totals"]["duplicates"], dups);
    let again = run_pg_ok(&demo, &pg, &["run"]);
    assert!(stdout(&again).contains("nothing to do"), "{}", text(&again));
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_killed_process_leases_expire_and_another_takes_over() {
    let pg = Pg::new("lease");
    let demo = Demo::new(30_000, "\"7d\"");
    state_to_pg(&demo, &pg, "2s");
    let reference = {
        let d = Demo::new(30_000, "\"7d\"");
        d.run_ok(&[]);
        target_fingerprint(&d)
    };
    // The first process dies (kill -9) holding leases on its running chunks.
    let mut first = spawn_run(&demo, &pg);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pg.try_one(&format!(
            "SELECT count(*) FROM {}_state.chunks WHERE status = 'running'",
            pg.schema
        ));
        if running.as_deref().is_some_and(|n| n != "0") || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = first.kill();
    let _ = first.wait();
    // As if that process ran on another machine: its death cannot be seen
    // from here, only its lease running out.
    let held = pg.one(&format!(
        "WITH moved AS (UPDATE {}_state.chunks SET leased_by = '1@elsewhere' \
         WHERE status = 'running' RETURNING 1) SELECT count(*) FROM moved",
        pg.schema
    ));
    // A second process finishes the job: chunks still leased to the dead one
    // are taken over once their leases run out.
    let started = Instant::now();
    let out = run_pg_ok(&demo, &pg, &["run"]);
    let mut rounds = 0;
    while !stdout(&run_pg_ok(&demo, &pg, &["run"])).contains("nothing to do") {
        rounds += 1;
        assert!(rounds < 5, "the job never finished: {}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        target_fingerprint(&demo),
        reference,
        "{held} chunk(s) were held by the killed process; took {:?}\n{}",
        started.elapsed(),
        text(&out)
    );
    assert!(commits(&pg).iter().all(|(_, n, _)| *n == 1));
    assert_eq!(duplicate_rows(&demo), 0);
    eprintln!(
        "lease takeover: {held} chunk(s) held by the killed process, finished {:?} later",
        started.elapsed()
    );
    assert_ne!(held, "0", "the kill should have left leased chunks behind");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "leased chunks were taken over before their lease could run out"
    );
}

#[test]
fn state_in_the_target_database_commits_and_publishes_in_one_transaction() {
    let reference = {
        let pg = Pg::new("oneref");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        run_pg_ok(&demo, &pg, &["run"]);
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"))
    };
    let setup = |name: &str| {
        let pg = Pg::new(name);
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        state_to_pg(&demo, &pg, "30s");
        (pg, demo)
    };
    // Aborts the run at `point`, checks that the table holds exactly the
    // rows of the chunks the state calls committed, then finishes the job.
    let crash = |name: &str, point: &str, committed: &str| {
        let (pg, demo) = setup(name);
        let out = demo.run_env(
            &["run", &demo.job_str(), "--parallel", "1"],
            &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", point)],
        );
        assert_ne!(code(&out), 0, "{}", text(&out));
        let s = format!("{}_state", pg.schema);
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM {s}.chunks WHERE status = 'committed'"
            )),
            committed
        );
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM {s}.chunk_files WHERE NOT published"
            )),
            "0"
        );
        let written = pg.one(&format!(
            "SELECT coalesce(sum((metrics::jsonb ->> 'rows_written')::bigint), 0) FROM {s}.chunks WHERE status = 'committed'"
        ));
        assert_eq!(pg.fingerprint("tx").0, written);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference
        );
        pg
    };
    // Aborted right after the transaction: the data and the state moved
    // together, with nothing left to publish.
    crash("onetx", "after_commit:3", "3");
    // Aborted inside the transaction: neither the rows nor the commit stay.
    let pg = crash("intx", "in_commit_txn:2", "1");
    assert!(commits(&pg).iter().all(|(_, n, _)| *n == 1));
}

#[test]
fn processes_killed_at_random_never_commit_a_shared_chunk_twice() {
    let reference = {
        let d = Demo::new(40_000, "\"7d\"");
        d.run_ok(&[]);
        target_fingerprint(&d)
    };
    let pg = Pg::new("chaos");
    let demo = Demo::new(40_000, "\"7d\"");
    state_to_pg(&demo, &pg, "2s");
    // Rounds of three processes at once; one of each round is killed -9.
    let mut killed = 0;
    for (round, delay_ms) in [120u64, 250, 400].into_iter().enumerate() {
        let mut procs: Vec<_> = (0..3).map(|_| spawn_run(&demo, &pg)).collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = procs[round % 3].kill();
        for p in procs {
            let out = p.wait_with_output().unwrap();
            if out.status.code().is_none() {
                killed += 1;
                continue;
            }
            assert_eq!(
                code(&out),
                0,
                "round {round}: a surviving process failed: {}",
                text(&out)
            );
        }
    }
    assert!(
        killed >= 1,
        "no process was killed before it finished; make the job bigger"
    );
    // Whatever is left (chunks leased to killed processes), one more run
    // finishes after the leases run out.
    let mut rounds = 0;
    while !stdout(&run_pg_ok(&demo, &pg, &["run"])).contains("nothing to do") {
        rounds += 1;
        assert!(rounds < 6, "the job never finished");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(target_fingerprint(&demo), reference);
    assert_eq!(duplicate_rows(&demo), 0);
    let commits = commits(&pg);
    assert_eq!(commits.len(), 53);
    assert!(
        commits.iter().all(|(_, n, _)| *n == 1),
        "a chunk committed twice: {commits:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    eprintln!(
        "shared-state chaos: {killed} process(es) killed mid-run, every chunk committed once"
    );
}

/// Attempts per chunk, from the shared state.
fn attempts(pg: &Pg) -> Vec<(String, i64)> {
    pg.rows(&format!(
        "SELECT chunk_id, count(*) FROM {}_state.attempts GROUP BY chunk_id ORDER BY chunk_id",
        pg.schema
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].parse().unwrap_or(-1)))
    .collect()
}

fn spawn_with(demo: &Demo, pg: &Pg, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let job = demo.job_str();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    let mut cmd = Command::new(BIN);
    cmd.args(&all)
        .env(PG_ENV, &pg.url)
        .env_remove("BACKFILL_FAILPOINTS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn")
}

#[test]
fn two_containers_with_one_pid_and_host_never_hold_one_chunk_together() {
    // Issue 20: holders were `pid@host`, which two containers share (PID 1,
    // one host name): `claim` then let both hold one chunk.
    let pg = Pg::new("containers");
    let demo = Demo::new(20_000, "\"3d\"");
    state_to_pg(&demo, &pg, "30s");
    let container = [
        ("BACKFILL_HOLDER_PID", "1"),
        ("BACKFILL_HOLDER_HOST", "container"),
    ];
    let a = spawn_with(&demo, &pg, &["run"], &container);
    let b = spawn_with(&demo, &pg, &["run"], &container);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(code(&a), 0, "{}", text(&a));
    assert_eq!(code(&b), 0, "{}", text(&b));
    let twice: Vec<_> = attempts(&pg).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "chunks both processes ran: {twice:?}");
    let workers = pg.rows(&format!(
        "SELECT DISTINCT worker FROM {}_state.attempts ORDER BY 1",
        pg.schema
    ));
    assert_eq!(workers.len(), 2, "two holders, told apart: {workers:?}");
    assert!(
        workers.iter().all(|w| w[0].starts_with("1@container#")),
        "{workers:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_committed_chunk_run_again_stays_leased_until_done() {
    // Issue 20: a committed chunk re-run with --from/--to kept its status,
    // and the heartbeat renewed only running chunks: its lease lapsed
    // mid-run and another process took it too.
    let pg = Pg::new("rerun_lease");
    let demo = Demo::new(6_000, "\"1 month\"");
    state_to_pg(&demo, &pg, "1s");
    run_pg_ok(&demo, &pg, &["run"]);
    let before = attempts(&pg);
    let window = [
        "run",
        "--from",
        "2023-03-01",
        "--to",
        "2023-06-01",
        "--parallel",
        "3",
    ];
    // Each chunk is held 4 s (four leases) as it writes.
    let slow = spawn_with(
        &demo,
        &pg,
        &window,
        &[("BACKFILL_FAILPOINTS", "write:sleep=4000")],
    );
    // Once it holds all three, longer than a lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && pg
            .try_one(&format!(
                "SELECT count(*) FROM {}_state.attempts WHERE outcome = 'running'",
                pg.schema
            ))
            .as_deref()
            != Some("3")
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let other = spawn_with(&demo, &pg, &window, &[]);
    let (slow, other) = (
        slow.wait_with_output().unwrap(),
        other.wait_with_output().unwrap(),
    );
    assert_eq!(code(&slow), 0, "{}", text(&slow));
    assert_eq!(code(&other), 0, "{}", text(&other));
    let after = attempts(&pg);
    let more: Vec<(String, i64)> = after
        .iter()
        .zip(&before)
        .map(|((id, n), (_, m))| (id.clone(), n - m))
        .filter(|(_, d)| *d > 0)
        .collect();
    assert_eq!(more.len(), 3, "March, April and May ran again: {more:?}");
    assert!(
        stdout(&slow).contains("3 of 3 selected chunks committed"),
        "{}",
        text(&slow)
    );
    // The second process found the chunks held: a lapsed lease would have
    // let it take them over mid-run (the first one's attempts then end
    // `interrupted`, and it leaves them).
    assert!(
        !text(&slow).contains("took it over"),
        "the second process took over chunks the first still ran:\n{}",
        text(&slow)
    );
    let interrupted = pg.one(&format!(
        "SELECT count(*) FROM {}_state.attempts WHERE outcome = 'interrupted'",
        pg.schema
    ));
    assert_eq!(interrupted, "0", "{more:?}");
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn unlock_refuses_a_holder_that_runs_on_this_host() {
    let demo = Demo::new(2_000, "\"1 month\"");
    let mut slow = Command::new(BIN)
        .args(["run", &demo.job_str()])
        .env("BACKFILL_FAILPOINTS", "read:sleep=20000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until it holds the lock (its chunks are running).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = None;
    while Instant::now() < deadline {
        let out = demo.run(&["unlock", &demo.job_str()]);
        if code(&out) != 0 {
            refused = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // reset and gaps --fix change the state: they wait for no one either.
    let reset = demo.run(&["reset", &demo.job_str(), "--all"]);
    let _ = slow.kill();
    let _ = slow.wait();
    assert_ne!(
        code(&reset),
        0,
        "reset while a run holds the job:\n{}",
        text(&reset)
    );
    assert!(
        text(&reset).contains("being run by another process"),
        "{}",
        text(&reset)
    );
    let out = refused.expect("unlock never refused while the run held the lock");
    assert!(text(&out).contains("which is running"), "{}", text(&out));
    // Once it is gone, unlock takes the lock away.
    let out = demo.run(&["unlock", &demo.job_str()]);
    assert_eq!(code(&out), 0, "{}", text(&out));
}

#[test]
fn ordered_holds_across_processes_sharing_a_state() {
    // Issue 20: `ordered = true` ran one chunk at a time per process, but
    // two processes sharing the state each ran their own, out of order.
    let pg = Pg::new("ordered");
    let demo = Demo::new(6_000, "\"7d\"");
    state_to_pg(&demo, &pg, "30s");
    demo.edit_job(|s| s.replace("# ordered = true", "ordered = true"));
    // One of them panics in chunk 5: nothing after it may commit first.
    let a = spawn_with(
        &demo,
        &pg,
        &["run"],
        &[("BACKFILL_FAILPOINTS", "read:panic*1@5")],
    );
    let b = spawn_with(&demo, &pg, &["run"], &[]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(matches!(code(out), 0 | 1), "{}", text(out));
    }
    // Whatever is left, one more run finishes.
    run_pg_ok(&demo, &pg, &["run"]);
    let order: Vec<i64> = pg
        .rows(&format!(
            "SELECT c.idx FROM {0}_state.attempts a JOIN {0}_state.chunks c USING (job, chunk_id) \
             WHERE a.outcome = 'committed' ORDER BY a.finished_at, c.idx",
            pg.schema
        ))
        .into_iter()
        .map(|r| r[0].parse().unwrap_or(-1))
        .collect();
    assert_eq!(order.len(), 53, "{order:?}");
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "chunks committed out of order: {order:?}"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}
