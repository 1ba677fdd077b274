//! Keeping a backfill complete over time: `gaps` on a damaged warehouse.

use crate::harness::*;

/// The demo job partitioned by day, so a day is a directory to delete.
fn daily_demo(rows: u64) -> Demo {
    let demo = Demo::new(rows, "\"7d\"");
    demo.edit_job(|s| {
        s.replace(
            "partition_by = [\"year\", \"month\"]",
            "partition_by = [\"year\", \"month\", \"day\"]",
        )
    });
    demo.run_ok(&[]);
    demo
}

fn gaps_json(demo: &Demo, extra: &[&str]) -> (i32, serde_json::Value) {
    let job = demo.job_str();
    let mut args = vec!["gaps", job.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = demo.run(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gaps json: {e}\n{}", text(&out)));
    (code(&out), v)
}

fn starts(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gaps_finds_deleted_and_thinned_days_and_fix_run_restores_them() {
    let demo = daily_demo(40_000);
    let reference = target_fingerprint(&demo);
    let (c, clean) = gaps_json(&demo, &[]);
    assert_eq!(c, 0, "{clean}");
    assert_eq!(clean["periods"], 365);
    assert_eq!(clean["cadence"], "daily");

    // Two days deleted, a third thinned to a fifth of its rows.
    let day = |m: u32, d: u32| {
        demo.warehouse()
            .join(format!("year=2023/month={m}/day={d}"))
    };
    std::fs::remove_dir_all(day(3, 14)).unwrap();
    std::fs::remove_dir_all(day(8, 2)).unwrap();
    let thin = r#"
import glob, json, sys, pyarrow.parquet as pq
files = glob.glob(sys.argv[1] + "/*.parquet")
for f in files:
    t = pq.read_table(f)
    pq.write_table(t.slice(0, t.num_rows // 5), f)
print(json.dumps(len(files)))
"#;
    assert!(int(&pyarrow(thin, &day(6, 10).display().to_string())) >= 1);

    let (c, found) = gaps_json(&demo, &[]);
    assert_eq!(c, 4, "{found}");
    assert_eq!(starts(&found["missing"]), ["2023-03-14", "2023-08-02"]);
    assert_eq!(starts(&found["thin"]), ["2023-06-10"]);
    assert_eq!(found["never_committed"].as_array().unwrap().len(), 0);
    assert_eq!(found["chunks_to_rerun"].as_array().unwrap().len(), 3);
    let shown = demo.run(&["gaps", &demo.job_str()]);
    assert_eq!(code(&shown), 4);
    let t = stdout(&shown);
    assert!(
        t.contains("missing  2023-03-14") && t.contains("thin     2023-06-10"),
        "{t}"
    );
    // validate sees the damage too.
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 3, "{}", text(&v));

    // A chunk of the refill that fails makes it exit 1, not 0 or 4: a
    // script must not take it for a refill that ran.
    let failing = demo.run_env(
        &["gaps", &demo.job_str(), "--fix", "--run"],
        &[("BACKFILL_FAILPOINTS", "write:permanent")],
    );
    assert_eq!(code(&failing), 1, "{}", text(&failing));
    let fixed = demo.run(&["gaps", &demo.job_str(), "--fix", "--run"]);
    assert_eq!(code(&fixed), 0, "{}", text(&fixed));
    assert!(stdout(&fixed).contains("no gaps"), "{}", text(&fixed));
    assert_eq!(target_fingerprint(&demo), reference);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn gaps_reports_chunks_never_committed_and_fix_marks_nothing_else() {
    let demo = Demo::new(4_000, "\"1 month\"");
    demo.run_ok(&["--from", "2023-01-01", "--to", "2023-06-01"]);
    let (c, found) = gaps_json(&demo, &["--expect", "monthly"]);
    assert_eq!(c, 4, "{found}");
    assert_eq!(found["periods"], 12);
    assert_eq!(found["missing"].as_array().unwrap().len(), 7);
    assert_eq!(found["never_committed"].as_array().unwrap().len(), 7);
    let (c, fixed) = gaps_json(&demo, &["--expect", "monthly", "--fix"]);
    assert_eq!(c, 0, "{fixed}");
    assert_eq!(fixed["marked"], 0, "pending chunks need no marking");
    demo.run_ok(&[]);
    let (c, after) = gaps_json(&demo, &["--expect", "monthly"]);
    assert_eq!(c, 0, "{after}");

    let bad = demo.run(&["gaps", &demo.job_str(), "--expect", "fortnightly"]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));
}

/// Appends `n` valid rows at `at` with fresh ids (from 90,000,000) as a new
/// source file, as a late delivery would.
fn append_late_rows(demo: &Demo, n: usize, at: &str) {
    let snippet = r#"
import glob, json, sys, datetime, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
src, n, at = sys.argv[1].split("|")
t = pq.read_table(sorted(glob.glob(src + "/*.parquet"))[0])
ok = pc.and_(pc.greater(t["amount"], 0), pc.is_in(t["status"], pa.array(["completed", "pending", "failed"])))
ok = pc.and_(ok, pc.match_substring(t["email"], "@"))
t = t.filter(pc.and_(ok, pc.is_valid(t["transaction_id"]))).slice(0, int(n))
when = datetime.datetime.fromisoformat(at)
t = t.set_column(t.schema.get_field_index("transaction_id"), t.schema.field("transaction_id"),
                 pa.array(range(90_000_000, 90_000_000 + t.num_rows), pa.int64()))
t = t.set_column(t.schema.get_field_index("created_at"), t.schema.field("created_at"),
                 pa.array([when] * t.num_rows, t.schema.field("created_at").type))
pq.write_table(t, src + "/late-" + at.replace(":", "") + ".parquet")
print(json.dumps(t.num_rows))
"#;
    let arg = format!("{}|{n}|{at}", demo.path().join("source").display());
    assert_eq!(int(&pyarrow(snippet, &arg)), n as i64);
}

fn late_rows_in_target(demo: &Demo) -> i64 {
    let rows = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}') WHERE transaction_id >= 90000000",
        demo.target_glob()
    ));
    int(&rows[0][0])
}

fn planned(demo: &Demo, now: &str) -> Vec<serde_json::Value> {
    let out = demo.run_env(
        &["plan", &demo.job_str(), "--json"],
        &[("BACKFILL_NOW", now)],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    v["chunks"].as_array().expect("chunks").clone()
}

#[test]
fn an_incremental_job_extends_to_now_and_takes_late_rows_exactly_once() {
    let demo = Demo::new(8_000, "\"7d\"");
    demo.edit_job(|s| s.replace("end = \"2024-01-01\"", "end = \"now\"\nlookback = 1"));
    let run = |now: &str| {
        let out = demo.run_env(&["run", &demo.job_str()], &[("BACKFILL_NOW", now)]);
        assert_eq!(code(&out), 0, "{}", text(&out));
    };
    // Up to the chunk holding now: [2023-12-31, 2024-01-07) is the 53rd.
    assert_eq!(planned(&demo, "2024-01-02T06:00:00Z").len(), 53);
    run("2024-01-02T06:00:00Z");
    let (rows, _) = target_fingerprint(&demo);

    // Rows for Dec 31 arrive after its chunk committed.
    append_late_rows(&demo, 5, "2023-12-31T12:00:00");
    run("2024-01-03T06:00:00Z");
    assert_eq!(late_rows_in_target(&demo), 5);
    assert_eq!(target_fingerprint(&demo).0, rows + 5);
    // Again: still once.
    run("2024-01-04T06:00:00Z");
    assert_eq!(late_rows_in_target(&demo), 5);
    assert_eq!(target_fingerprint(&demo).0, rows + 5);

    // Time passes: the plan grows by whole chunks, the old ones stay.
    let later = planned(&demo, "2024-01-20T00:00:00Z");
    assert_eq!(later.len(), 55);
    run("2024-01-20T00:00:00Z");
    let status = demo.status_json();
    let chunks = status["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 55);
    assert!(chunks.iter().all(|c| c["status"] == "committed"));
}

#[test]
fn run_incremental_extends_a_fixed_range_and_a_plain_run_keeps_the_extension() {
    let demo = Demo::new(4_000, "\"7d\"");
    demo.run_ok(&[]);
    let before = demo.status_json()["chunks"].as_array().unwrap().len();
    assert_eq!(
        before, 53,
        "[2023-12-31, 2024-01-01) is the last, short chunk"
    );
    append_late_rows(&demo, 3, "2024-01-05T08:00:00");
    let out = demo.run_env(
        &["run", &demo.job_str(), "--incremental"],
        &[("BACKFILL_NOW", "2024-01-10")],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let chunks = demo.status_json()["chunks"].as_array().unwrap().clone();
    // [2024-01-01, 2024-01-07) then [2024-01-07, 2024-01-14).
    assert_eq!(chunks.len(), 55);
    assert_eq!(late_rows_in_target(&demo), 3);
    // Without --incremental the job file's range no longer covers the
    // committed extension: dropping it needs --replan, never silently.
    let plain = demo.run(&["run", &demo.job_str()]);
    assert_eq!(code(&plain), 2, "{}", text(&plain));
    assert!(text(&plain).contains("--replan"), "{}", text(&plain));
    assert_eq!(late_rows_in_target(&demo), 3);
}

#[test]
fn plan_estimates_rows_from_statistics_and_empty_chunks_skip_the_scan() {
    let demo = Demo::new(8_000, "\"1 month\"");
    demo.edit_job(|s| s.replace("end = \"2024-01-01\"", "end = \"now\""));
    let now = "2024-04-01T00:00:01Z";
    let chunks = planned(&demo, now);
    assert_eq!(chunks.len(), 16, "Jan 2023 to the month holding now");
    let actual = duckdb(&format!(
        "SELECT month(created_at), count(*) FROM read_parquet('{}') GROUP BY 1 ORDER BY 1",
        demo.source_glob()
    ));
    for (c, m) in chunks.iter().zip(&actual) {
        let est = int(&c["estimate"]["rows"]) as f64;
        let real = int(&m[1]) as f64;
        assert!((est - real).abs() <= real * 0.05, "{c} vs {m:?}");
        assert_eq!(c["estimate"]["empty"], false);
    }
    for c in &chunks[12..] {
        assert_eq!(c["estimate"]["empty"], true, "{c}");
        assert_eq!(int(&c["estimate"]["rows"]), 0);
    }
    let text_plan = demo.run_env(&["plan", &demo.job_str()], &[("BACKFILL_NOW", now)]);
    assert!(
        stdout(&text_plan).contains("4 chunk(s) empty"),
        "{}",
        text(&text_plan)
    );

    let out = demo.run_env(
        &["run", &demo.job_str(), "--json"],
        &[("BACKFILL_NOW", now)],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["empty"], 4, "{summary}");
    assert_eq!(summary["committed"], 16);
    let v = demo.run_env(&["validate", &demo.job_str()], &[("BACKFILL_NOW", now)]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}
