//! Rules, quarantine and dedup against DuckDB computing the same semantics
//! over the whole range: rules first (a row is charged to the first rule it
//! fails), then `row_number() OVER (PARTITION BY key ORDER BY ...) = 1`.

use crate::harness::*;

const ORDER: &str = "created_at DESC NULLS LAST, amount DESC NULLS LAST";

fn actual_months(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT month, count(*), round(sum(amount), 2) FROM read_parquet('{}', hive_partitioning = true) GROUP BY month ORDER BY month",
        demo.target_glob()
    ))
}

fn checksums(demo: &Demo) -> Vec<String> {
    demo.status_json()["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c["id"], c["metrics"]["checksum"]))
        .collect()
}

#[test]
fn the_demo_job_matches_duckdb() {
    let demo = Demo::new(20_000, "\"7d\"");
    demo.run_ok(&[]);
    let (months, dups) = expected_global(&demo);
    assert_months_equal(&months, &actual_months(&demo));
    assert!(dups > 150, "the demo data should re-emit ids: {dups}");

    let quarantined = duckdb(&format!(
        "SELECT _rule, count(*) FROM read_parquet('{}', hive_partitioning = true) GROUP BY _rule ORDER BY _rule",
        demo.quarantine_glob()
    ));
    assert_eq!(quarantined, expected_per_rule(&demo));

    let status = demo.status_json();
    let totals = &status["totals"];
    assert_eq!(totals["duplicates"], dups);
    assert_eq!(totals["rows_read"], 20_000);
    let accounted = [
        "rows_written",
        "rows_quarantined",
        "rows_dropped",
        "duplicates",
    ]
    .iter()
    .map(|k| totals[k].as_i64().unwrap())
    .sum::<i64>();
    assert_eq!(
        accounted, 20_000,
        "every source row is written, quarantined, dropped or a duplicate: {totals}"
    );
    for (rule, count) in expected_per_rule(&demo)
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), int(&r[1])))
    {
        assert_eq!(totals["rules"][&rule]["quarantined"], count, "rule {rule}");
    }

    // One row per key anywhere in the target, and the quarantine carries its metadata.
    let keys = duckdb(&format!(
        "SELECT count(*) - count(DISTINCT transaction_id) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(int(&keys[0][0]), 0);
    let meta = duckdb(&format!(
        "SELECT count(DISTINCT _chunk), min(_run), count(*) FILTER (WHERE _rule IS NULL) FROM read_parquet('{}', hive_partitioning = true)",
        demo.quarantine_glob()
    ));
    assert!(
        int(&meta[0][0]) > 40 && int(&meta[0][1]) >= 1 && int(&meta[0][2]) == 0,
        "{meta:?}"
    );
}

#[test]
fn one_chunk_resolves_repeated_keys_itself_and_matches_duckdb() {
    // One chunk skips the index's second pass: it holds back the rows of
    // repeated keys and keeps each key's best when the chunk ends.
    let demo = Demo::new(20_000, "\"all\"");
    demo.run_ok(&[]);
    let (months, dups) = expected_global(&demo);
    assert_months_equal(&months, &actual_months(&demo));
    assert!(dups > 150, "the demo data should re-emit ids: {dups}");
    assert_eq!(demo.status_json()["totals"]["duplicates"], dups);
    let keys = duckdb(&format!(
        "SELECT count(*) - count(DISTINCT transaction_id) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(int(&keys[0][0]), 0);

    let weekly = Demo::new(20_000, "\"7d\"");
    weekly.run_ok(&[]);
    assert_eq!(target_fingerprint(&demo), target_fingerprint(&weekly));

    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 0, "{out}");
}

#[test]
fn parallelism_and_chunk_order_do_not_change_the_target() {
    let demo = Demo::new(8_000, "\"1 month\"");
    demo.run_ok(&["--parallel", "1"]);
    let serial = (target_fingerprint(&demo), checksums(&demo));

    let parallel = Demo::new(8_000, "\"1 month\"");
    parallel.run_ok(&["--parallel", "4"]);
    assert_eq!(
        (target_fingerprint(&parallel), checksums(&parallel)),
        serial
    );

    // Months one at a time, December first: a later version of a key may be
    // committed before the chunk that holds its older copy runs.
    let reversed = Demo::new(8_000, "\"1 month\"");
    for m in (1..=12).rev() {
        let from = format!("2023-{m:02}-01");
        let to = if m == 12 {
            "2024-01-01".to_string()
        } else {
            format!("2023-{:02}-01", m + 1)
        };
        reversed.run_ok(&["--from", &from, "--to", &to]);
    }
    assert_eq!(
        (target_fingerprint(&reversed), checksums(&reversed)),
        serial
    );
    let (months, _) = expected_global(&reversed);
    assert_months_equal(&months, &actual_months(&reversed));
}

#[test]
fn chunk_scope_keeps_exactly_the_cross_chunk_duplicates() {
    let demo = Demo::new(20_000, "\"7d\"");
    demo.edit_job(|s| s.replace("scope = \"global\"", "scope = \"chunk\""));
    demo.run_ok(&[]);
    let week = "floor((epoch(created_at) - epoch(TIMESTAMP '2023-01-01')) / (7 * 86400))";
    let per_chunk = duckdb(&format!(
        "SELECT count(*) FILTER (WHERE rn = 1) FROM (SELECT *, row_number() OVER (PARTITION BY transaction_id, {week} ORDER BY {ORDER}) AS rn FROM ({}) WHERE rule IS NULL)",
        ruled_source_sql(&demo)
    ));
    let (months, _) = expected_global(&demo);
    let global: i64 = months.iter().map(|m| int(&m[1])).sum();
    let chunk_rows = target_fingerprint(&demo).0;
    assert_eq!(
        chunk_rows,
        int(&per_chunk[0][0]),
        "chunk scope = per-week dedup"
    );
    let extra = duckdb(&format!(
        "SELECT count(*) - count(DISTINCT transaction_id) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert!(
        int(&extra[0][0]) > 0,
        "the demo data has duplicates across weeks"
    );
    assert_eq!(
        chunk_rows - global,
        int(&extra[0][0]),
        "the difference is exactly the cross-chunk duplicates"
    );
}

#[test]
fn a_fail_rule_fails_only_its_chunk() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.edit_job(|s| {
        s.replace(
            "[dedup]",
            "[[rules]]\nname = \"no_june_10\"\ncheck = \"NOT (created_at >= TIMESTAMP '2023-06-10 00:00:00' AND created_at < TIMESTAMP '2023-06-11 00:00:00')\"\naction = \"fail\"\n\n[dedup]",
        )
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let s = stdout(&out);
    assert!(
        s.contains("11 of 12 selected chunks committed, 1 failed"),
        "{}",
        text(&out)
    );
    assert!(
        s.contains("failed: chunk #5") && s.contains("rule \"no_june_10\""),
        "{}",
        text(&out)
    );
    assert!(s.contains("transaction_id="), "examples name keys: {s}");
    let status = demo.status_json();
    assert_eq!(
        status["chunks"][5]["attempts"], 1,
        "a failing rule is not retried"
    );
    assert_eq!(status["chunks"][5]["status"], "failed");
}

#[test]
fn max_ratio_fails_a_chunk_with_too_many_rejects() {
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.edit_job(|s| {
        s.replace(
            "[dedup]",
            "[[rules]]\nname = \"cheap_in_february\"\ncheck = \"month <> 2 OR amount > 2500\"\naction = \"drop\"\n\n[dedup]",
        )
        .replace("# max_ratio = 0.05", "max_ratio = 0.3")
    });
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let s = stdout(&out);
    assert!(
        s.contains("11 of 12 selected chunks committed, 1 failed"),
        "{}",
        text(&out)
    );
    assert!(
        s.contains("failed: chunk #1") && s.contains("quarantine.max_ratio = 0.3"),
        "{}",
        text(&out)
    );
    // Dropped rows are counted per rule where the chunk committed.
    let status = demo.status_json();
    assert_eq!(
        status["totals"]["rows_dropped"], 0,
        "only February has cheap rows to drop and it failed"
    );
}

#[test]
fn bad_rules_and_dedup_columns_are_job_file_errors() {
    let demo = Demo::new(200, "\"7d\"");
    demo.edit_job(|s| s.replace("check = \"amount > 0\"", "check = \"amount >>> 0\""));
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backfill.toml:34:9: rules[1].check:"),
        "{}",
        text(&out)
    );

    let demo = Demo::new(200, "\"7d\"");
    demo.edit_job(|s| s.replace("keys = [\"transaction_id\"]", "keys = [\"txn\"]"));
    let out = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("dedup.keys: column \"txn\" is not produced by the transform"),
        "{}",
        text(&out)
    );
}

fn validate(demo: &Demo, extra: &[&str]) -> (i32, String) {
    let job = demo.job_str();
    let mut args = vec!["validate", job.as_str()];
    args.extend_from_slice(extra);
    let out = demo.run(&args);
    (code(&out), text(&out))
}

#[test]
fn validate_passes_after_a_clean_run_and_catches_damage() {
    let demo = Demo::new(6_000, "\"7d\"");
    demo.run_ok(&[]);
    let (c, out) = validate(&demo, &["--group-by", "region,category"]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("all 53 chunks reconcile") && out.contains("in all 160 groups"),
        "{out}"
    );

    // A target file deleted after the backfill.
    let victim = demo
        .warehouse_files()
        .into_iter()
        .find(|f| f.starts_with("year=2023/month=3/"))
        .expect("a March file");
    let chunk_id = victim
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_prefix("part-"))
        .and_then(|n| n.split('-').next())
        .unwrap()
        .to_string();
    std::fs::remove_file(demo.warehouse().join(&victim)).unwrap();
    let (c, out) = validate(&demo, &["--group-by", "month"]);
    assert_eq!(c, 3, "{out}");
    assert!(
        out.contains(&format!("{chunk_id} [2023-03"))
            && out.contains("a file was deleted or altered"),
        "{out}"
    );
    assert!(
        out.contains("MISMATCH in 1 of 53 chunks and 1 groups"),
        "{out}"
    );
    let bad: serde_json::Value =
        serde_json::from_slice(&demo.run(&["validate", &demo.job_str(), "--json"]).stdout).unwrap();
    let named: Vec<_> = bad["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["problems"].as_array().unwrap().is_empty())
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, std::slice::from_ref(&chunk_id));

    // Running that chunk again repairs it.
    let status = demo.status_json();
    let chunk = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == chunk_id.as_str())
        .unwrap()
        .clone();
    let lo = chunk["lo"]["value"].as_i64().unwrap();
    let from = chrono::DateTime::from_timestamp_micros(lo)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    let to = chrono::DateTime::from_timestamp_micros(lo + 86_400_000_000)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    demo.run_ok(&["--from", &from, "--to", &to]);
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 0, "{out}");

    // A row appended to a source file after the backfill.
    pyarrow(
        "import pyarrow as pa, pyarrow.parquet as pq, sys, datetime\n\
         p = sys.argv[1]\n\
         t = pq.read_table(p)\n\
         row = t.slice(0, 1).to_pylist()[0]\n\
         row.update(transaction_id=99999999, created_at=datetime.datetime(2023, 6, 14, 12, 0), amount=10.0)\n\
         pq.write_table(pa.concat_tables([t, pa.Table.from_pylist([row], schema=t.schema)]), p)\n\
         print(1)",
        &demo
            .path()
            .join("source/transactions-2023-06.parquet")
            .display()
            .to_string(),
    );
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 3, "{out}");
    assert!(
        out.contains("[2023-06-11, 2023-06-18)") && out.contains("the source has"),
        "{out}"
    );
    assert!(out.contains("MISMATCH in 1 of 53 chunks"), "{out}");
}

#[test]
fn validate_names_a_chunk_that_never_committed() {
    let demo = Demo::new(3_000, "\"1 month\"");
    let out = demo.run_env(
        &["run", &demo.job_str()],
        &[("BACKFILL_FAILPOINTS", "read:permanent@4")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 3, "{out}");
    assert!(
        out.contains("chunk #4") && out.contains("never committed (status: failed)"),
        "{out}"
    );
    assert!(out.contains("MISMATCH in 1 of 12 chunks"), "{out}");
}

#[test]
fn an_index_that_cannot_be_saved_is_kept_in_memory_and_gives_the_same_target() {
    let normal = Demo::new(8_000, "\"1 month\"");
    normal.run_ok(&[]);
    assert!(
        normal
            .path()
            .join(".backfill/transactions.dedup-index")
            .is_file()
    );

    // A directory where the index file goes: the rename into place fails.
    let blocked = Demo::new(8_000, "\"1 month\"");
    let at = blocked.path().join(".backfill/transactions.dedup-index");
    std::fs::create_dir_all(at.join("in-the-way")).expect("mkdir");
    let out = blocked.run_ok(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keeping it all in memory"), "{err}");
    assert!(at.is_dir());
    let leftovers: Vec<_> = std::fs::read_dir(blocked.path().join(".backfill"))
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.contains("spill"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(target_fingerprint(&blocked), target_fingerprint(&normal));
    let (c, out) = validate(&blocked, &[]);
    assert_eq!(c, 0, "{out}");
}

/// Rewrites chunks' recorded checksums in the SQLite state as a release
/// without checksum versions stored them: `sums` maps chunk id to a hex
/// checksum; `version` is written as given, or dropped when `None`.
fn record_checksums(demo: &Demo, sums: &serde_json::Value, version: Option<u32>) {
    let script = r#"
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
version = json.loads(sys.argv[3])
for chunk, hexsum in json.loads(sys.argv[2]).items():
    (q,) = db.execute("SELECT quality FROM chunks WHERE chunk_id = ?", (chunk,)).fetchone()
    q = json.loads(q)
    q["checksum"] = hexsum
    q.pop("checksum_version", None)
    if version is not None:
        q["checksum_version"] = version
    db.execute("UPDATE chunks SET quality = ? WHERE chunk_id = ?", (json.dumps(q), chunk))
db.commit()
"#;
    let db = demo.path().join(".backfill/transactions.db");
    let out = std::process::Command::new(python())
        .args([
            "-c",
            script,
            &db.display().to_string(),
            &sums.to_string(),
            &serde_json::json!(version).to_string(),
        ])
        .output()
        .expect("start python");
    assert!(out.status.success(), "{}", text(&out));
}

/// Chunks committed by a release before checksum versions carry the first
/// definition (xxh3 of Arrow's row format): `validate` checks them by it,
/// still catches a wrong one, and refuses a version it does not know.
#[test]
fn validate_checks_old_commits_by_their_checksum_version() {
    use backfill::checksum::{ChecksumVersion, RowChecksum};
    use backfill::core::state::{SqliteStateStore, StateStore};
    use backfill::{QUARANTINE_PREFIX, partition_seed};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let demo = Demo::new(3_000, "\"1 month\"");
    demo.run_ok(&[]);
    let status = demo.status_json();
    for c in status["chunks"].as_array().unwrap() {
        assert_eq!(c["metrics"]["checksum_version"], 2, "{c}");
    }
    let files = SqliteStateStore::open(demo.path().join(".backfill/transactions.db"))
        .unwrap()
        .committed_files()
        .unwrap();
    let mut legacy = serde_json::Map::new();
    for (chunk, paths) in &files {
        let mut sum = 0u64;
        for rel in paths.iter().filter(|p| !p.starts_with(QUARANTINE_PREFIX)) {
            let dir = rel
                .rsplit_once('/')
                .map_or(String::new(), |(d, _)| format!("{d}/"));
            let file = std::fs::File::open(demo.warehouse().join(rel)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let v1 = RowChecksum::new(ChecksumVersion::RowFormat, &batch.schema()).unwrap();
                sum = sum.wrapping_add(v1.rows(&batch, partition_seed(&dir)).unwrap());
            }
        }
        legacy.insert(chunk.clone(), format!("{sum:016x}").into());
    }
    assert_eq!(legacy.len(), 12);
    let current: Vec<String> = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{:016x}", c["metrics"]["checksum"].as_u64().unwrap()))
        .collect();
    assert!(
        legacy
            .values()
            .all(|v| !current.contains(&v.as_str().unwrap().to_string())),
        "the two definitions should give different checksums"
    );

    record_checksums(&demo, &serde_json::Value::Object(legacy.clone()), None);
    for c in demo.status_json()["chunks"].as_array().unwrap() {
        assert_eq!(c["metrics"]["checksum_version"], 1, "{c}");
    }
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("all 12 chunks reconcile"), "{out}");

    // A wrong version-1 checksum is caught, for that chunk only (May's).
    let victim = status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["index"] == 4)
        .and_then(|c| c["id"].as_str())
        .unwrap()
        .to_string();
    let sum = &legacy[&victim];
    let wrong = u64::from_str_radix(sum.as_str().unwrap(), 16).unwrap() ^ 1;
    record_checksums(
        &demo,
        &serde_json::json!({ victim.clone(): format!("{wrong:016x}") }),
        None,
    );
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 3, "{out}");
    assert!(
        out.contains("MISMATCH in 1 of 12 chunks") && out.contains(&format!("{victim} [2023-05")),
        "{out}"
    );

    // A version this release does not know stops validation with a reason.
    record_checksums(&demo, &serde_json::json!({ victim.clone(): sum }), Some(9));
    let (c, out) = validate(&demo, &[]);
    assert_ne!(c, 0, "{out}");
    assert!(
        out.contains(&format!(
            "chunk {victim} was committed with checksum version 9"
        )),
        "{out}"
    );

    // Running the chunk again records the current definition.
    let ok = demo.run(&[
        "run",
        &demo.job_str(),
        "--from",
        "2023-05-01",
        "--to",
        "2023-06-01",
    ]);
    assert_eq!(code(&ok), 0, "{}", text(&ok));
    let (c, out) = validate(&demo, &[]);
    assert_eq!(c, 0, "{out}");
}
