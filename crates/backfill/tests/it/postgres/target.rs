//! PostgreSQL as a target: replace and merge against DuckDB, crashes at
//! every step of a commit, schema changes, hostile names.

use super::*;

#[test]
fn parquet_to_postgres_replace_and_merge_match_duckdb() {
    for mode in ["replace", "merge"] {
        let pg = Pg::new(mode);
        let demo = Demo::new(10_000, "\"1 month\"");
        let (months, _) = expected_global(&demo);
        target_to_pg(&demo, &pg, "tx", mode);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_months_equal(&months, &pg.months("tx"));
        assert_eq!(
            quarantine_per_rule(&pg, "tx_quarantine"),
            expected_per_rule(&demo),
            "mode {mode}"
        );
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) - count(DISTINCT transaction_id) FROM {}.tx",
                pg.schema
            )),
            "0"
        );
        // Running every chunk again leaves exactly the same table.
        let before = pg.fingerprint("tx");
        let q_before = pg.fingerprint("tx_quarantine");
        run_pg_ok(&demo, &pg, &["reset", "--all"]);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            pg.fingerprint("tx"),
            before,
            "mode {mode}: re-run changed the table"
        );
        assert_eq!(pg.fingerprint("tx_quarantine"), q_before, "mode {mode}");
        // `validate` reads each chunk's rows back from the table.
        let v = run_pg(&demo, &pg, &["validate"]);
        assert_eq!(code(&v), 0, "mode {mode}: {}", text(&v));
        pg.exec(&format!(
            "UPDATE {0}.tx SET amount = amount + 1 WHERE transaction_id = (SELECT min(transaction_id) FROM {0}.tx)",
            pg.schema
        ));
        let v = run_pg(&demo, &pg, &["validate"]);
        assert_eq!(
            code(&v),
            3,
            "mode {mode}: an altered row must not validate: {}",
            text(&v)
        );
        assert!(stdout(&v).contains("MISMATCH in 1 of"), "{}", text(&v));
        pg.exec(&format!(
            "UPDATE {0}.tx SET amount = amount - 1 WHERE transaction_id = (SELECT min(transaction_id) FROM {0}.tx)",
            pg.schema
        ));
        // No staging tables are left behind.
        assert_eq!(
            pg.one(&format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = '{}' AND tablename LIKE '\\_bf\\_%'",
                pg.schema
            )),
            "0"
        );
    }
}

#[test]
fn postgres_to_postgres_with_a_rate_limit() {
    let pg = Pg::new("p2p");
    let demo = Demo::new(6_000, "\"1 month\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "max_rows_per_second = 4000");
    target_to_pg(&demo, &pg, "out", "replace");
    let started = Instant::now();
    run_pg_ok(&demo, &pg, &["run"]);
    let took = started.elapsed();
    // 6,000 rows read for the dedup index and 6,000 for the chunks, at 4,000/s.
    assert!(
        took >= Duration::from_millis(2_900),
        "a source capped at 4000 rows/s read 12000 rows in {took:?}"
    );
    let (months, _) = expected_global(&demo);
    assert_months_equal(&months, &pg.months("out"));
}

#[test]
fn a_crash_at_any_step_of_a_postgres_commit_is_repaired() {
    let reference = {
        let pg = Pg::new("ref");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        run_pg_ok(&demo, &pg, &["run"]);
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"))
    };
    for point in [
        "after_write:3",
        "after_commit:2",
        "after_publish:4",
        "after_cleanup:5",
    ] {
        let pg = Pg::new("crash");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        let job = demo.job_str();
        let out = demo.run_env(
            &["run", &job],
            &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", point)],
        );
        assert_ne!(
            code(&out),
            0,
            "{point} should have aborted the run: {}",
            text(&out)
        );
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference,
            "after a crash at {point}"
        );
    }
    // kill -9 at moments spread over a run.
    for delay_ms in [150u64, 400, 700] {
        let pg = Pg::new("kill");
        let demo = Demo::new(8_000, "\"1 month\"");
        target_to_pg(&demo, &pg, "tx", "replace");
        demo.run_killed_after(&[(PG_ENV, &pg.url)], delay_ms);
        run_pg_ok(&demo, &pg, &["run"]);
        assert_eq!(
            (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
            reference,
            "after kill -9 at {delay_ms} ms"
        );
    }
}

/// A PostgreSQL server of one test's own (`scripts/pg.sh`), for tests that
/// crash it: the suite's shared server must stay up for the others.
struct PrivateServer {
    url: String,
    dir: String,
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
        // The server inherits the script's stderr: a pipe there would
        // never close, so it goes to the test's own.
        let out = Command::new("bash")
            .args([script, "start"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/pg.sh");
        assert!(out.status.success(), "scripts/pg.sh start: {}", text(&out));
        let exports = String::from_utf8_lossy(&out.stdout);
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{name} not in {exports}"))
                .to_string()
        };
        PrivateServer {
            url: value("BACKFILL_TEST_PG_URL"),
            dir: value("BACKFILL_TEST_PG_DIR"),
        }
    }

    /// `pg_ctl restart -m immediate`: the server stops as in a crash (no
    /// checkpoint) and recovers on start, which empties unlogged tables.
    fn crash_and_restart(&self) {
        let bindir = std::fs::read_to_string(format!("{}/bindir", self.dir)).expect("bindir");
        let pg_ctl = format!("{}/pg_ctl", bindir.trim());
        let data = format!("{}/data", self.dir);
        let args = [
            pg_ctl.as_str(),
            "-D",
            &data,
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
            "restart",
        ];
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n");
        // pg_ctl's output goes to the server log: the restarted server
        // would hold a pipe open.
        let log = std::fs::File::options()
            .append(true)
            .open(format!("{}/restart.log", self.dir))
            .or_else(|_| std::fs::File::create(format!("{}/restart.log", self.dir)))
            .expect("restart log");
        let mut cmd = if root.unwrap_or(false) {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).args(args);
            c
        } else {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let status = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("run pg_ctl");
        let shown =
            std::fs::read_to_string(format!("{}/restart.log", self.dir)).unwrap_or_default();
        assert!(status.success(), "pg_ctl restart: {shown}");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg.sh");
        let _ = Command::new("bash")
            .args([script, "stop", &self.dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_stage_emptied_by_a_database_crash_is_never_published() {
    let server = PrivateServer::start();
    let mut pg = Pg::on(server.url.clone(), "restart");
    let demo = Demo::new(6_000, "\"1 month\"");
    let (months, _) = expected_global(&demo);
    target_to_pg(&demo, &pg, "tx", "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    let reference = (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine"));
    // March runs again and commits in the (SQLite) state; the process dies
    // before it publishes the staged rows.
    let job = demo.job_str();
    let out = demo.run_env(
        &["run", &job, "--from", "2023-03-01", "--to", "2023-04-01"],
        &[(PG_ENV, &pg.url), ("BACKFILL_FAILPOINTS", "after_commit:1")],
    );
    assert_ne!(
        code(&out),
        0,
        "the failpoint must stop the run:\n{}",
        text(&out)
    );
    // The database crashes: its unlogged staging tables come back empty.
    server.crash_and_restart();
    pg.reconnect();
    let out = run_pg_ok(&demo, &pg, &["run"]);
    assert!(
        stdout(&out).contains("1 of 1 selected chunks committed"),
        "the chunk whose stage was lost must run again:\n{}",
        text(&out)
    );
    assert_months_equal(&months, &pg.months("tx"));
    assert_eq!(
        (pg.fingerprint("tx"), pg.fingerprint("tx_quarantine")),
        reference
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn hostile_table_names_are_quoted_never_executed() {
    let pg = Pg::new("evil");
    let s = &pg.schema;
    // Unqualified, as an injected statement would name it.
    let victim = format!("victim_{}", std::process::id());
    pg.exec(&format!(
        "DROP TABLE IF EXISTS public.{victim}; CREATE TABLE public.{victim} (x int); INSERT INTO public.{victim} VALUES (1)"
    ));
    let demo = Demo::new(2_000, "\"1 month\"");
    let evil = format!("x\\\"; DROP TABLE {victim}; --");
    target_to_pg(&demo, &pg, &evil, "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    assert_eq!(
        pg.one(&format!("SELECT count(*) FROM public.{victim}")),
        "1"
    );
    pg.exec(&format!("DROP TABLE public.{victim}"));
    // The rows went into a table with that odd name.
    let name = format!("x\"; DROP TABLE {victim}; --");
    assert_eq!(
        pg.one(&format!(
            "SELECT count(*) > 0 FROM {s}.\"{}\"",
            name.replace('"', "\"\"")
        )),
        "t"
    );
}

#[test]
fn merge_refuses_null_keys_that_every_rerun_would_insert_again() {
    let pg = Pg::new("nullkey");
    let demo = Demo::new(4_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "merge");
    // Without the rule that quarantines NULL ids, they reach the merge.
    demo.edit_job(|s| s.replace("check = \"transaction_id IS NOT NULL\"", "check = \"true\""));
    let out = run_pg(&demo, &pg, &["run"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("merge key \"transaction_id\" is NULL in") && all.contains("IS NOT NULL"),
        "{all}"
    );
    // Chunks without NULL keys committed; the others failed, not retried.
    let status = run_pg_ok(&demo, &pg, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let failed = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .count();
    assert!(failed > 0, "{status}");
}

#[test]
fn a_postgres_target_and_its_quarantine_gain_a_column() {
    let pg = Pg::new("evolve");
    let demo = Demo::new(3_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    run_pg_ok(&demo, &pg, &["run"]);
    demo.edit_job(|s| {
        s.replace(
            "date_part('day', created_at) AS day FROM source",
            "date_part('day', created_at) AS day, CAST(amount * 100 AS BIGINT) AS cents FROM source",
        )
    });
    let all = ["run", "--from", "2023-01-01", "--to", "2024-01-01"];
    let out = run_pg(&demo, &pg, &all);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("+ cents: Int64"), "{}", text(&out));
    demo.edit_job(|s| s.replace("[target]\n", "[target]\nschema = \"add_columns\"\n"));
    run_pg_ok(&demo, &pg, &all);
    let s = &pg.schema;
    assert_eq!(
        pg.one(&format!("SELECT count(*) FROM {s}.tx WHERE cents IS NULL")),
        "0"
    );
    assert_eq!(
        pg.one(&format!(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = 'tx_quarantine' AND column_name = 'cents'"
        )),
        "bigint"
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn a_replan_that_shrinks_the_range_leaves_no_rows_outside_it() {
    let pg = Pg::new("shrink");
    let demo = Demo::new(6_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    demo.without_quality();
    run_pg_ok(&demo, &pg, &["run"]);
    demo.edit_job(|s| {
        s.replace("end = \"2024-01-01\"", "end = \"2023-07-15\"")
            .replace("chunk = \"1 month\"", "chunk = \"7d\"")
    });
    run_pg_ok(&demo, &pg, &["run", "--replan"]);
    assert_eq!(
        pg.one(&format!(
            "SELECT count(*) FROM {}.tx WHERE created_at >= '2023-07-15'",
            pg.schema
        )),
        "0",
        "rows of the dropped range stay in the table"
    );
    let expected = duckdb(&format!(
        "SELECT count(*), sum(amount) FROM read_parquet('{}') \
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2023-07-15'",
        demo.source_glob()
    ));
    let actual = pg.rows(&format!(
        "SELECT count(*), sum(amount) FROM {}.tx",
        pg.schema
    ));
    assert_eq!(
        actual[0][0],
        int(&expected[0][0]).to_string(),
        "the table holds the new range's rows only"
    );
    let sum: f64 = actual[0][1].parse().expect("a sum");
    assert!(
        (sum - float(&expected[0][1])).abs() < 0.01,
        "{sum} against {}",
        expected[0][1]
    );
    let v = run_pg(&demo, &pg, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn merge_never_replaces_a_newer_version_with_an_older_one() {
    // Issue 20: re-running an older window in merge mode put its older
    // versions back over keys a later chunk had updated.
    let pg = Pg::new("merge_versions");
    let demo = Demo::new(6_000, "\"7d\"");
    crate::harness::dedup_per_chunk(&demo);
    target_to_pg(&demo, &pg, "tx", "merge");
    run_pg_ok(&demo, &pg, &["run"]);
    crate::harness::newer_versions_in_april(&demo);
    // April's weeks run again (a source file under them is new).
    run_pg_ok(&demo, &pg, &["run"]);
    run_pg_ok(
        &demo,
        &pg,
        &["run", "--from", "2023-03-01", "--to", "2023-04-01"],
    );
    let table = pg.rows(&format!(
        "SELECT count(*)::text, sum(transaction_id)::text, round(sum(amount) * 100)::bigint::text FROM {}.tx",
        pg.schema
    ));
    assert_eq!(
        table[0],
        crate::harness::latest_per_key(&demo),
        "rows, sum(id), sum(amount): the latest version of each key"
    );
}

#[test]
fn a_version_column_decides_which_version_a_merge_keeps() {
    // `[target] version_column` orders versions for the merge, whatever
    // `[dedup] order_by` says within a chunk: here dedup keeps each chunk's
    // largest amount, and the merge the latest created_at.
    let pg = Pg::new("merge_version_column");
    let demo = Demo::new(6_000, "\"7d\"");
    crate::harness::dedup_per_chunk(&demo);
    demo.edit_job(|s| {
        s.replace(
            "order_by = [\"created_at DESC\", \"amount DESC\"]",
            "order_by = [\"amount DESC\"]",
        )
    });
    target_to_pg(&demo, &pg, "tx", "merge");
    demo.edit_job(|s| {
        s.replace(
            "mode = \"merge\"\nkeys = [\"transaction_id\"]\n",
            "mode = \"merge\"\nkeys = [\"transaction_id\"]\nversion_column = \"created_at\"\n",
        )
    });
    run_pg_ok(&demo, &pg, &["run"]);
    // Later versions of some of March's keys, with a smaller amount: by
    // amount they would lose, by created_at they win.
    let source = demo.source_glob();
    duckdb(&format!(
        "COPY (SELECT * REPLACE (created_at + INTERVAL 35 DAY AS created_at, round(amount * 0.5, 2) AS amount) FROM read_parquet('{source}') \
         WHERE created_at >= TIMESTAMP '2023-03-01' AND created_at < TIMESTAMP '2023-03-20' AND transaction_id % 7 = 0) TO '{}' (FORMAT PARQUET)",
        demo.path().join("source/april-versions.parquet").display()
    ));
    run_pg_ok(&demo, &pg, &["run"]);
    run_pg_ok(
        &demo,
        &pg,
        &["run", "--from", "2023-03-01", "--to", "2023-04-01"],
    );
    let table = pg.rows(&format!(
        "SELECT count(*)::text, sum(transaction_id)::text, round(sum(amount) * 100)::bigint::text FROM {}.tx",
        pg.schema
    ));
    let expected = duckdb(&format!(
        "SELECT count(*)::VARCHAR, sum(transaction_id)::VARCHAR, round(sum(amount) * 100)::BIGINT::VARCHAR FROM (
           SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY created_at DESC) AS v FROM (
             SELECT *, row_number() OVER (
               PARTITION BY transaction_id, floor((epoch(created_at) - epoch(TIMESTAMP '2023-01-01')) / 604800)
               ORDER BY amount DESC NULLS LAST) AS rn
             FROM ({}) WHERE rule IS NULL) WHERE rn = 1) WHERE v = 1",
        ruled_source_sql(&demo)
    ));
    let expected: Vec<String> = expected[0]
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(table[0], expected, "rows, sum(id), sum(amount)");
}
