//! `[range] timezone`: day, week and month chunks on a zone's calendar, with
//! data dense around both 2023 DST changes in New York, in a half-hour zone
//! (Kolkata), and with naive timestamps declared local. DuckDB's
//! `timezone()` (ICU) is the oracle for which local day each row is in.

use serde_json::Value;

use crate::harness::*;

/// A job over `source/` with the given `[range]` body and transform.
fn tz_job(dir: &std::path::Path, range: &str, sql: &str) {
    std::fs::write(
        dir.join("backfill.toml"),
        format!(
            "[job]\nname = \"tz\"\n\n[source]\nformat = \"parquet\"\npath = \"source/\"\n\n\
             [range]\ncolumn = \"ts\"\n{range}\n\n[transform]\nsql = \"{sql}\"\n\n\
             [target]\npath = \"out\"\npartition_by = [\"local_day\"]\n\n\
             [validate]\nsum = [\"amount\"]\n\n[run]\nparallelism = 2\nretry_backoff = \"10ms\"\n"
        ),
    )
    .expect("write job");
}

/// Rows every 7 minutes over the given UTC days, plus a row on each local
/// midnight of the zone and one a microsecond before it, as `ts TYPE`.
fn write_source(dir: &std::path::Path, zone: &str, spans: &[(&str, u32)], ty: &str) {
    std::fs::create_dir_all(dir.join("source")).unwrap();
    let mut selects = Vec::new();
    for (i, (from, days)) in spans.iter().enumerate() {
        let n = days * 24 * 60 / 7;
        let base = i as u64 * 1_000_000;
        selects.push(format!(
            "SELECT {base} + r AS id, TIMESTAMPTZ '{from} 00:00:00+00' + r * INTERVAL 7 MINUTE AS ts \
             FROM range(0, {n}) t(r)"
        ));
        selects.push(format!(
            "SELECT {base} + 500000 + r, timezone('{zone}', TIMESTAMP '{from} 00:00:00' + (r // 2) * INTERVAL 1 DAY) \
             - (r % 2) * INTERVAL 1 MICROSECOND FROM range(0, {}) t(r)",
            2 * days
        ));
    }
    let union = selects.join(" UNION ALL ");
    let cast = match ty {
        "local" => format!("timezone('{zone}', ts)"),
        _ => "ts".into(),
    };
    duckdb(&format!(
        "SET TimeZone = 'UTC'; COPY (SELECT id, {cast} AS ts, (id % 97) * 1.5 AS amount FROM ({union}) \
         ORDER BY id) TO '{}/source/data.parquet'",
        dir.display()
    ));
}

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let job = dir.join("backfill.toml").display().to_string();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    std::process::Command::new(BIN)
        .args(&all)
        .env_remove("BACKFILL_FAILPOINTS")
        .env("NO_COLOR", "1")
        .output()
        .expect("run backfill")
}

fn json(out: &std::process::Output) -> Value {
    assert_eq!(code(out), 0, "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Per committed chunk, in plan order: hours long and rows read.
fn chunk_rows(dir: &std::path::Path) -> Vec<(i64, i64)> {
    let status = json(&run(dir, &["status", "--json"]));
    status["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let hours = (int(&c["hi"]["value"]) - int(&c["lo"]["value"])) / 3_600_000_000;
            (hours, int(&c["metrics"]["rows_read"]))
        })
        .collect()
}

/// DuckDB: rows and sum(amount) per local day (as `day_expr` reads `ts`)
/// in [start, end), as text rows.
fn oracle_days(dir: &std::path::Path, day_expr: &str, lo: &str, hi: &str) -> Vec<Vec<Value>> {
    duckdb(&format!(
        "SET TimeZone = 'UTC'; SELECT CAST({day_expr} AS VARCHAR) AS d, count(*), round(sum(amount), 2) \
         FROM read_parquet('{}/source/*.parquet') WHERE {day_expr} >= DATE '{lo}' AND {day_expr} < DATE '{hi}' \
         GROUP BY d ORDER BY d",
        dir.display()
    ))
}

fn target_days(dir: &std::path::Path) -> Vec<Vec<Value>> {
    duckdb(&format!(
        "SELECT CAST(local_day AS VARCHAR) AS d, count(*), round(sum(amount), 2) \
         FROM read_parquet('{}/out/**/*.parquet', hive_partitioning = true) GROUP BY d ORDER BY d",
        dir.display()
    ))
}

const LOCAL_DAY_SQL: &str =
    "SELECT id, ts, amount, CAST(CAST(local_time(ts) AS DATE) AS VARCHAR) AS local_day FROM source";

#[test]
fn new_york_days_are_23_and_25_hours_and_lose_or_double_nothing() {
    let ny = "America/New_York";
    for (start, end, short_or_long, hours) in [
        ("2023-03-09", "2023-03-16", "2023-03-12", 23),
        ("2023-11-02", "2023-11-09", "2023-11-05", 25),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_source(d, ny, &[("2023-03-08", 10), ("2023-11-01", 10)], "utc");
        tz_job(
            d,
            &format!("start = \"{start}\"\nend = \"{end}\"\nchunk = \"1d\"\ntimezone = \"{ny}\""),
            LOCAL_DAY_SQL,
        );
        let out = run(d, &["run"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        let local_day = format!("CAST(timezone('{ny}', ts) AS DATE)");
        let expected = oracle_days(d, &local_day, start, end);
        assert_eq!(expected.len(), 7, "{expected:?}");
        // One chunk per local day, each holding exactly that day's rows.
        let chunks = chunk_rows(d);
        let per_chunk: Vec<i64> = chunks.iter().map(|c| c.1).collect();
        let per_day: Vec<i64> = expected.iter().map(|r| int(&r[1])).collect();
        assert_eq!(per_chunk, per_day, "{start}: chunks {chunks:?}");
        let i = expected
            .iter()
            .position(|r| r[0] == short_or_long)
            .expect("the DST day");
        assert_eq!(chunks[i].0, hours, "{short_or_long} is {hours} hours long");
        assert!(chunks.iter().enumerate().all(|(j, c)| j == i || c.0 == 24));
        // The transform's local_time() agrees with the chunks' calendar.
        assert_eq!(target_days(d), expected, "{start}");
        let v = run(d, &["validate"]);
        assert_eq!(code(&v), 0, "{}", text(&v));
        // status shows the bounds in the zone, with their offsets.
        let status = run(d, &["status"]);
        assert!(
            stdout(&status).contains(&format!("{short_or_long}T00:00:00-0")),
            "{}",
            text(&status)
        );

        // gaps counts local days: removing the DST day's partition makes
        // exactly that local day missing.
        std::fs::remove_dir_all(d.join(format!("out/local_day={short_or_long}"))).unwrap();
        let g = run(d, &["gaps", "--expect", "daily", "--json"]);
        let g: Value = serde_json::from_slice(&g.stdout).expect("gaps json");
        assert_eq!(g["periods"], 7, "{g}");
        let missing: Vec<&str> = g["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["start"].as_str().unwrap())
            .collect();
        assert_eq!(missing.len(), 1, "{g}");
        assert!(
            missing[0].starts_with(&format!("{short_or_long}T00:00:00-0")),
            "{g}"
        );
    }
}

#[test]
fn half_hour_zone_months_and_monday_weeks() {
    let zone = "Asia/Kolkata";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_source(
        d,
        zone,
        &[("2022-12-30", 4), ("2023-01-30", 4), ("2023-02-27", 4)],
        "utc",
    );
    let local_day = format!("CAST(timezone('{zone}', ts) AS DATE)");
    let month = |expr: &str| format!("CAST(date_trunc('month', {expr}) AS DATE)");
    tz_job(
        d,
        &format!(
            "start = \"2023-01-01\"\nend = \"2023-04-01\"\nchunk = \"1 month\"\ntimezone = \"{zone}\""
        ),
        LOCAL_DAY_SQL,
    );
    let out = run(d, &["run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let expected = oracle_days(d, &month(&local_day), "2023-01-01", "2023-04-01");
    let per_chunk: Vec<i64> = chunk_rows(d).iter().map(|c| c.1).collect();
    let per_month: Vec<i64> = expected.iter().map(|r| int(&r[1])).collect();
    assert_eq!(per_chunk, per_month);
    assert_eq!(
        target_days(d),
        oracle_days(d, &local_day, "2023-01-01", "2023-04-01")
    );

    // Weeks from ISO Mondays: 2023-01-01 is a Sunday, so the first chunk
    // is that day alone and the rest start on Mondays at local midnight.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_source(d, zone, &[("2022-12-30", 40)], "utc");
    tz_job(
        d,
        &format!(
            "start = \"2023-01-01\"\nend = \"2023-02-01\"\nchunk = \"1w\"\ntimezone = \"{zone}\"\nweek_start = \"monday\""
        ),
        LOCAL_DAY_SQL,
    );
    let plan = json(&run(d, &["plan", "--json"]));
    let starts: Vec<String> = plan["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let us = int(&c["lo"]["value"]);
            duckdb(&format!(
                "SELECT strftime(timezone('{zone}', make_timestamptz({us})), '%a %Y-%m-%d %H:%M')"
            ))[0][0]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        starts,
        [
            "Sun 2023-01-01 00:00",
            "Mon 2023-01-02 00:00",
            "Mon 2023-01-09 00:00",
            "Mon 2023-01-16 00:00",
            "Mon 2023-01-23 00:00",
            "Mon 2023-01-30 00:00"
        ]
    );
    let out = run(d, &["run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        target_days(d),
        oracle_days(d, &local_day, "2023-01-01", "2023-02-01")
    );
}

#[test]
fn naive_timestamps_declared_local_are_cut_on_their_wall_clock() {
    let ny = "America/New_York";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Wall-clock readings: 01:xx twice on 2023-11-05, no 02:xx on 2023-03-12.
    write_source(d, ny, &[("2023-03-10", 5), ("2023-11-03", 5)], "local");
    let sql = "SELECT id, ts, amount, CAST(CAST(ts AS DATE) AS VARCHAR) AS local_day FROM source";
    let range = |start: &str, end: &str| {
        format!("start = \"{start}\"\nend = \"{end}\"\nchunk = \"1d\"\ntimezone = \"{ny}\"")
    };
    // Undeclared, a naive column is ambiguous: exit 2 at the column.
    tz_job(d, &range("2023-03-11", "2023-03-15"), sql);
    let out = run(d, &["run"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("naive_timestamps"), "{}", text(&out));

    for (start, end) in [("2023-03-11", "2023-03-15"), ("2023-11-04", "2023-11-08")] {
        let _ = std::fs::remove_dir_all(d.join("out"));
        let _ = std::fs::remove_dir_all(d.join(".backfill"));
        tz_job(
            d,
            &format!("{}\nnaive_timestamps = \"local\"", range(start, end)),
            sql,
        );
        let out = run(d, &["run"]);
        assert_eq!(code(&out), 0, "{}", text(&out));
        let expected = oracle_days(d, "CAST(ts AS DATE)", start, end);
        assert_eq!(expected.len(), 4);
        assert_eq!(target_days(d), expected, "{start}");
        // Each chunk is one wall-clock day of the column: 24 hours of
        // readings, whatever the clocks did.
        let chunks = chunk_rows(d);
        assert!(chunks.iter().all(|c| c.0 == 24), "{chunks:?}");
        let per_day: Vec<i64> = expected.iter().map(|r| int(&r[1])).collect();
        assert_eq!(chunks.iter().map(|c| c.1).collect::<Vec<_>>(), per_day);
        let v = run(d, &["validate"]);
        assert_eq!(code(&v), 0, "{}", text(&v));
    }
}
