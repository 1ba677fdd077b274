use super::*;
use crate::interval::{MICROS_PER_DAY, parse_time};

const EXAMPLE: &str = EXAMPLE_JOB;

fn env(name: &str) -> Option<String> {
    match name {
        "DATA_DIR" => Some("/data".to_string()),
        "SECRET" => Some("hunter2".to_string()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<JobSpec, SpecError> {
    JobSpec::parse(Path::new("jobs/job.toml"), text, &env)
}

fn errors(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_example_job_parses() {
    let spec = parse(EXAMPLE).unwrap();
    assert_eq!(spec.name, "transactions");
    assert_eq!(spec.source.format, SourceFormat::Parquet);
    assert_eq!(spec.source.path, Path::new("jobs/source/"));
    let range = spec.range.unwrap();
    assert_eq!(range.column, "created_at");
    assert_eq!(
        range.start,
        Some(RangeValue::Time(parse_time("2023-01-01").unwrap()))
    );
    assert_eq!(range.chunk, ChunkSize::Fixed(7 * MICROS_PER_DAY));
    assert_eq!(range.column_loc.line, 15);
    assert_eq!(spec.target.partition_by, ["year", "month"]);
    assert_eq!(spec.target.compression, Compression::Zstd(3));
    assert_eq!(spec.run.parallelism, 2);
    assert_eq!(spec.state.path, Path::new("jobs/.backfill/transactions.db"));
    assert!(!spec.state.explicit);
    assert_eq!(spec.target.identity(), "parquet warehouse/transactions");
}

#[test]
fn each_job_has_its_own_default_state() {
    let job = |name: &str| {
        parse(&format!(
            "[job]\nname = {name:?}\n[source]\nformat = \"csv\"\npath = \"in.csv\"\n[target]\npath = \"./out/\"\n"
        ))
        .unwrap()
    };
    assert_eq!(job("eu").state.path, Path::new("jobs/.backfill/eu.db"));
    assert_eq!(job("us").state.path, Path::new("jobs/.backfill/us.db"));
    // Names that are not file names still get one file each.
    let a = job("sales/eu").state.path;
    let b = job("sales:eu").state.path;
    assert_ne!(a, b);
    assert_eq!(a.parent(), Some(Path::new("jobs/.backfill")));
    assert!(a.to_string_lossy().contains("sales_eu-"), "{}", a.display());
    let hidden = job("..").state.path;
    assert_eq!(hidden.parent(), Some(Path::new("jobs/.backfill")));
    assert_eq!(job("eu").target.identity(), "parquet out");
    // One target however it is spelled; another is another.
    let at = |path: &str| {
        parse(&format!(
            "[source]\nformat = \"csv\"\npath = \"in.csv\"\n[target]\npath = \"{path}\"\n"
        ))
        .unwrap()
        .target_key()
    };
    assert_eq!(at("out"), job("eu").target_key());
    assert_eq!(at("${DATA_DIR}/x"), at("/data/x"));
    assert_ne!(at("out2"), at("out"));
    let explicit = parse(
        "[source]\nformat = \"csv\"\npath = \"in.csv\"\n[target]\npath = \"out\"\n[state]\npath = \"s.db\"\n",
    )
    .unwrap();
    assert_eq!(explicit.state.path, Path::new("jobs/s.db"));
    assert!(explicit.state.explicit);
}

#[test]
fn minimal_job_uses_defaults() {
    let spec = parse(
        "[source]\nformat = \"csv\"\npath = \"${DATA_DIR}/in.csv\"\n[target]\npath = \"out\"\n",
    )
    .unwrap();
    assert_eq!(spec.name, "job");
    assert_eq!(spec.range, None);
    assert_eq!(spec.source.path, Path::new("/data/in.csv"));
    assert_eq!(spec.source.path_shown, "${DATA_DIR}/in.csv");
    assert!(spec.source.has_header);
    assert_eq!(spec.run, RunSpec::default());
}

#[test]
fn toml_dates_and_integers_are_bounds() {
    let spec = parse(
        "[source]\nformat = \"parquet\"\npath = \"s\"\n[target]\npath = \"t\"\n\
         [range]\ncolumn = \"d\"\nstart = 2023-01-01\nend = 2023-02-01T00:00:00Z\nchunk = \"1 month\"\n",
    )
    .unwrap();
    let r = spec.range.unwrap();
    assert_eq!(
        r.end,
        Some(RangeValue::Time(parse_time("2023-02-01").unwrap()))
    );
    let spec = parse(
        "[source]\nformat = \"parquet\"\npath = \"s\"\n[target]\npath = \"t\"\n\
         [range]\ncolumn = \"event_id\"\nstart = 1\nend = 10_000_001\nchunk = 100_000\nordered = true\n",
    )
    .unwrap();
    let r = spec.range.unwrap();
    assert_eq!(r.chunk, ChunkSize::Count(100_000));
    assert!(r.ordered);
}

#[test]
fn chunk_all_needs_no_bounds() {
    let spec = parse(
        "[source]\nformat = \"parquet\"\npath = \"s\"\n[target]\npath = \"t\"\n[range]\ncolumn = \"d\"\nchunk = \"all\"\n",
    )
    .unwrap();
    assert_eq!(spec.range.unwrap().chunk, ChunkSize::All);
}

#[test]
fn every_error_is_reported_at_once() {
    insta::assert_snapshot!(errors(
        r#"[job]
name = "t"
colour = "red"

[source]
format = "parquet"
path = "s/"

[range]
column = "created_at"
start = "2023-01-01"
end = "2022-01-01"
chunk = "7 dayz"

[target]
path = "w"
compression = "brotli9"

[run]
parallelism = "two"
"#
    ));
}

#[test]
fn syntax_error_has_line_and_column() {
    insta::assert_snapshot!(errors("[source]\nformat = \"parquet\npath = 3\n"));
}

#[test]
fn unknown_keys_suggest_the_right_one() {
    insta::assert_snapshot!(errors(
        "[source]\nformat = \"parquet\"\npaht = \"s\"\n[target]\npath = \"t\"\n[range]\ncolumn = \"d\"\nstart = 1\nend = 9\nchunck = 2\n"
    ));
}

#[test]
fn zero_chunk_and_kind_mismatch() {
    insta::assert_snapshot!(errors(
        "[source]\nformat = \"parquet\"\npath = \"s\"\n[target]\npath = \"t\"\n[range]\ncolumn = \"d\"\nstart = \"2023-01-01\"\nend = \"2023-02-01\"\nchunk = \"0d\"\n"
    ));
    insta::assert_snapshot!(errors(
        "[source]\nformat = \"parquet\"\npath = \"s\"\n[target]\npath = \"t\"\n[range]\ncolumn = \"d\"\nstart = \"2023-01-01\"\nend = \"2023-02-01\"\nchunk = 1000\n"
    ));
}

#[test]
fn unset_variables_are_named_and_secrets_never_shown() {
    let msg = errors(
        "[source]\nformat = \"${SECRET}x\"\npath = \"${NOT_SET}\"\n[target]\npath = \"t\"\n",
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    insta::assert_snapshot!(msg);
}

#[test]
fn missing_sections_and_a_rules_table() {
    insta::assert_snapshot!(errors("[rules]\nname = \"x\"\n"));
}

#[test]
fn quality_sections() {
    let spec = parse(EXAMPLE).unwrap();
    let names: Vec<_> = spec.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "non_null_id",
            "positive_amount",
            "known_status",
            "valid_email"
        ]
    );
    assert_eq!(spec.rules[1].check, "amount > 0");
    assert_eq!(spec.rules[1].action, RuleAction::Quarantine);
    let dedup = spec.dedup.unwrap();
    assert_eq!(dedup.keys, ["transaction_id"]);
    assert_eq!(dedup.order_by[0].to_string(), "created_at DESC NULLS LAST");
    assert_eq!(dedup.scope, DedupScope::Global);
    assert_eq!(
        spec.quarantine.path,
        Path::new("jobs/warehouse/transactions_quarantine")
    );
    assert_eq!(spec.validate.sum, ["amount"]);
    let minimal =
        parse("[source]\nformat = \"csv\"\npath = \"a.csv\"\n[target]\npath = \"out/t/\"\n")
            .unwrap();
    assert_eq!(minimal.quarantine.path, Path::new("jobs/out/t_quarantine"));
    assert!(minimal.rules.is_empty() && minimal.dedup.is_none());
}

#[test]
fn quality_errors() {
    insta::assert_snapshot!(errors(
        r#"[source]
format = "parquet"
path = "s"
[target]
path = "t"
[[rules]]
name = "a"
check = "x > 0"
action = "shout"
[[rules]]
name = "a"
check = ""
[dedup]
order_by = ["created_at sideways"]
scope = "planet"
[quarantine]
max_ratio = 1.5
"#
    ));
}

#[test]
fn wrong_types() {
    insta::assert_snapshot!(errors(
        "[source]\nformat = 1\npath = [\"a\"]\n[target]\npath = \"t\"\npartition_by = [\"y\", 3, \"y\"]\n[run]\nretries = -1\nretry_backoff = \"soon\"\n[range]\ncolumn = \"d\"\nstart = true\nend = 5\nchunk = 1\n"
    ));
}

#[test]
fn object_store_urls_stay_urls_and_quarantine_follows_the_target() {
    let spec = parse(
        "[source]\nformat = \"parquet\"\npath = \"file:///data/raw\"\n[target]\npath = \"s3://lake/tx/\"\n",
    )
    .unwrap();
    assert_eq!(spec.source.path, PathBuf::from("/data/raw"));
    assert_eq!(spec.source.url, None);
    assert_eq!(spec.target.url.as_deref(), Some("s3://lake/tx/"));
    assert!(spec.target.path.as_os_str().is_empty());
    assert_eq!(
        spec.quarantine.url.as_deref(),
        Some("s3://lake/tx_quarantine")
    );
    let base = Path::new("/jobs");
    assert_eq!(
        resolve_location(base, "rel/dir").unwrap(),
        (PathBuf::from("/jobs/rel/dir"), None)
    );
    for bad in ["hdfs://nn/x", "s3:///x", "gs://b/../etc", "file://relative"] {
        assert!(resolve_location(base, bad).is_err(), "{bad}");
    }
}

#[test]
fn secrets_are_redacted_as_written_and_as_json_escapes_them() {
    let secrets = vec![r#"pa"ss\w0rd"#.to_string()];
    let json = serde_json::json!({ "error": r#"login pa"ss\w0rd refused"# }).to_string();
    let out = redact_with(&secrets, &json);
    assert_eq!(out, r#"{"error":"login *** refused"}"#);
    assert_eq!(redact_with(&secrets, r#"plain pa"ss\w0rd"#), "plain ***");
}

#[test]
fn a_value_from_the_environment_is_not_echoed_by_a_parse_error() {
    let text = EXAMPLE.replace("retry_backoff = \"1s\"", "retry_backoff = \"${BACKOFF}\"");
    let env = |k: &str| (k == "BACKOFF").then(|| "hunter2-not-a-duration".to_string());
    let shown = match JobSpec::parse(Path::new("job.toml"), &text, &env) {
        Ok(_) => panic!("a bad duration parsed"),
        Err(e) => e.to_string(),
    };
    assert!(shown.contains("run.retry_backoff"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn memory_limit_is_a_size_of_at_least_4_mib() {
    let with = |v: &str| {
        EXAMPLE.replace(
            "retry_backoff = \"1s\"",
            &format!("retry_backoff = \"1s\"\nmemory_limit = {v}"),
        )
    };
    let spec = JobSpec::parse(Path::new("job.toml"), &with("\"2GiB\""), &|_| None).expect("parses");
    assert_eq!(spec.run.memory_limit, Some(2 << 30));
    let spec = JobSpec::parse(Path::new("job.toml"), EXAMPLE, &|_| None).expect("parses");
    assert_eq!(spec.run.memory_limit, None);
    for (value, says) in [("\"lots\"", "is not a size"), ("\"1MiB\"", "at least 4MiB")] {
        let shown = match JobSpec::parse(Path::new("job.toml"), &with(value), &|_| None) {
            Ok(_) => panic!("{value} parsed"),
            Err(e) => e.to_string(),
        };
        assert!(
            shown.contains("run.memory_limit") && shown.contains(says),
            "{shown}"
        );
        let line = with(value)
            .lines()
            .position(|l| l.starts_with("memory_limit"))
            .map(|i| i + 1)
            .unwrap_or_default();
        assert!(
            shown.contains(&format!(":{line}:")),
            "no line {line} in {shown}"
        );
    }
}

#[test]
fn max_file_size_is_between_1_mib_and_4_gib() {
    let with = |v: &str| {
        EXAMPLE.replace(
            "compression = \"zstd\"",
            &format!("compression = \"zstd\"\nmax_file_size = {v}"),
        )
    };
    let spec = parse(&with("\"256MiB\"")).expect("parses");
    assert_eq!(spec.target.max_file_size, 256 << 20);
    assert_eq!(
        parse(EXAMPLE).expect("parses").target.max_file_size,
        1 << 30
    );
    for (value, says) in [
        ("\"5GiB\"", "between 1MiB and 4GiB"),
        ("\"big\"", "is not a size"),
    ] {
        let shown = errors(&with(value));
        assert!(
            shown.contains("target.max_file_size") && shown.contains(says),
            "{shown}"
        );
    }
}

#[test]
fn max_file_rows_is_a_positive_count() {
    let with = |v: &str| {
        EXAMPLE.replace(
            "compression = \"zstd\"",
            &format!("compression = \"zstd\"\nmax_file_rows = {v}"),
        )
    };
    assert_eq!(
        parse(&with("1000")).expect("parses").target.max_file_rows,
        Some(1000)
    );
    assert_eq!(parse(EXAMPLE).expect("parses").target.max_file_rows, None);
    let shown = parse(&with("0")).expect_err("zero").to_string();
    assert!(
        shown.contains("target.max_file_rows: must be at least 1"),
        "{shown}"
    );
}
