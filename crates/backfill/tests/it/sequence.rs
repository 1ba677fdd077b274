//! Sequence backfills: integer ranges, text sources, ordered commits and the watermark.

use std::fmt::Write as _;

use crate::harness::*;

fn events_csv(dir: &std::path::Path, n: i64) {
    let mut csv = String::from("event_id,kind,value,at\n");
    for i in 1..=n {
        let _ = writeln!(
            csv,
            "{i},{},{},2023-01-01 00:00:{:02}",
            ["a", "b", "c"][(i % 3) as usize],
            i * 10,
            i % 60
        );
    }
    std::fs::create_dir_all(dir.join("events")).unwrap();
    std::fs::write(dir.join("events/part1.csv"), csv).unwrap();
}

fn job(dir: &std::path::Path, extra_range: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[job]
name = "events"
[source]
format = "csv"
path = "events/"
[source.columns]
at = "timestamp"
[range]
column = "event_id"
start = 1
end = 1001
chunk = 100
{extra_range}
[target]
path = "out/events"
partition_by = ["kind"]
[run]
parallelism = 2
retries = 0
"#
    );
    let p = dir.join("events.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn ordered_sequence_keeps_a_watermark() {
    let dir = tempfile::tempdir().unwrap();
    // Rows 1..=1200: the range stops at 1000, so 200 rows stay out.
    events_csv(dir.path(), 1200);
    let job = job(dir.path(), "ordered = true");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["run", job.to_str().unwrap()])
            .env_remove("BACKFILL_FAILPOINTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    // Chunk 3 fails: ordered mode stops there, later chunks wait.
    let out = run(&[("BACKFILL_FAILPOINTS", "read:permanent@3")]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        stdout(&out)
            .contains("3 of 10 selected chunks committed, 1 failed, 6 left for the next run"),
        "{}",
        text(&out)
    );
    let status = std::process::Command::new(BIN)
        .args(["status", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stdout(&status).contains("watermark: 301"),
        "{}",
        text(&status)
    );

    let out = run(&[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status = std::process::Command::new(BIN)
        .args(["status", job.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["watermark"]["value"], 1001);
    assert_eq!(json["totals"]["rows_written"], 1000);

    let rows = duckdb(&format!(
        "SELECT kind, count(*), sum(value), min(event_id), max(event_id) FROM read_parquet('{}/out/events/**/*.parquet', hive_partitioning = true) GROUP BY kind ORDER BY kind",
        dir.path().display()
    ));
    let expected = duckdb(&format!(
        "SELECT kind, count(*), sum(value), min(event_id), max(event_id) FROM read_csv('{}/events/part1.csv') WHERE event_id BETWEEN 1 AND 1000 GROUP BY kind ORDER BY kind",
        dir.path().display()
    ));
    assert_eq!(rows, expected);
}

#[test]
fn json_source_full_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..500 {
        let _ = writeln!(
            lines,
            r#"{{"id": {i}, "name": "n{i}", "score": {}.5}}"#,
            i % 7
        );
    }
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.json"), lines).unwrap();
    let job = dir.path().join("full.toml");
    std::fs::write(
        &job,
        "[source]\nformat = \"json\"\npath = \"in/\"\n[transform]\nsql = \"SELECT id, name, score * 2 AS doubled FROM source WHERE id % 5 <> 0\"\n[target]\npath = \"out\"\ncompression = \"snappy\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("1 of 1 selected chunks committed"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("500 read, 400 written"),
        "{}",
        text(&out)
    );
    let rows = duckdb(&format!(
        "SELECT count(*), sum(doubled) FROM read_parquet('{}/out/*.parquet')",
        dir.path().display()
    ));
    let expected = duckdb(&format!(
        "SELECT count(*), sum(score * 2) FROM read_json('{}/in/a.json') WHERE id % 5 <> 0",
        dir.path().display()
    ));
    assert_eq!(rows, expected);
}

#[test]
fn rows_with_a_null_range_value_are_counted_not_silently_lost() {
    let dir = tempfile::tempdir().unwrap();
    events_csv(dir.path(), 300);
    let mut csv = std::fs::read_to_string(dir.path().join("events/part1.csv")).unwrap();
    csv.push_str(",a,5,2023-01-01 00:00:00\n,b,6,2023-01-01 00:00:00\n");
    std::fs::write(dir.path().join("events/part1.csv"), csv).unwrap();
    let job = job(dir.path(), "");
    let out = std::process::Command::new(BIN)
        .args(["run", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        stdout(&out).contains("note: 2 source row(s) have a NULL range column"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 source row(s) have a NULL event_id"),
        "{}",
        text(&out)
    );
    let v = std::process::Command::new(BIN)
        .args(["validate", job.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stdout(&v).contains("note: 2 source row(s) have a NULL range column"),
        "{}",
        text(&v)
    );
    // Counted once per source change: an unchanged CSV is not scanned for
    // it again, a changed one is.
    let run = || {
        let out = std::process::Command::new(BIN)
            .args(["-v", "run", job.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", text(&out));
        out
    };
    let again = run();
    assert!(
        text(&again).contains("2 source row(s) have a NULL event_id")
            && text(&again).contains("counted before, the source is unchanged"),
        "{}",
        text(&again)
    );
    let mut csv = std::fs::read_to_string(dir.path().join("events/part1.csv")).unwrap();
    csv.push_str(",c,7,2023-01-01 00:00:00\n");
    std::fs::write(dir.path().join("events/part1.csv"), csv).unwrap();
    let changed = run();
    assert!(
        text(&changed).contains("3 source row(s) have a NULL event_id")
            && !text(&changed).contains("counted before"),
        "{}",
        text(&changed)
    );
    // So is a change of how the files are parsed: a column's declared type
    // decides which of its values read as NULL.
    let text_now = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text_now.replace(
            "at = \"timestamp\"",
            "at = \"timestamp\"\nkind = \"string\"",
        ),
    )
    .unwrap();
    let reparsed = run();
    assert!(
        text(&reparsed).contains("3 source row(s) have a NULL event_id")
            && !text(&reparsed).contains("counted before"),
        "{}",
        text(&reparsed)
    );
}
