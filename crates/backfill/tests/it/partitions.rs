//! `[range] partitions`: one chunk per partition value.

use crate::harness::*;

/// Replaces the `[range]` section.
fn range_section(demo: &Demo, body: &str) {
    demo.edit_job(|s| {
        let start = s.find("[range]").expect("range section");
        let end = s.find("[transform]").expect("transform section");
        format!("{}[range]\n{body}\n\n{}", &s[..start], &s[end..])
    });
}

fn per_region(glob: &str, hive: bool) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT region, count(*), round(sum(amount), 2) FROM read_parquet('{glob}', hive_partitioning = {hive}) GROUP BY 1 ORDER BY 1"
    ))
}

#[test]
fn hive_partitions_of_the_source_become_chunks() {
    let demo = Demo::new(6_000, "\"7d\"");
    demo.without_quality();
    let hive = demo.path().join("hive");
    duckdb(&format!(
        "COPY (SELECT * FROM read_parquet('{}')) TO '{}' (FORMAT PARQUET, PARTITION_BY (region))",
        demo.source_glob(),
        hive.display()
    ));
    demo.edit_job(|s| s.replace("path = \"source/\"", "path = \"hive/\""));
    range_section(&demo, "column = \"region\"\npartitions = \"source\"");

    let out = demo.run(&["plan", &demo.job_str(), "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let values: Vec<&str> = plan["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["value"].as_str().unwrap())
        .collect();
    let expected = per_region(&demo.source_glob(), false);
    let regions: Vec<String> = expected
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, regions);

    demo.run_ok(&[]);
    assert_eq!(per_region(&demo.target_glob(), true), expected);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    let before = target_fingerprint(&demo);
    demo.run_ok(&["--only-failed"]);
    let out = demo.run(&["reset", &demo.job_str(), "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    demo.run_ok(&[]);
    assert_eq!(
        target_fingerprint(&demo),
        before,
        "re-running every partition"
    );
    let narrowed = demo.run(&["run", &demo.job_str(), "--from", "2023-01-01"]);
    assert_eq!(code(&narrowed), 2, "{}", text(&narrowed));
    // Nor does reset take a range: a partition has no bounds, and every
    // one of them used to be reset.
    let out = demo.run(&[
        "reset",
        &demo.job_str(),
        "--from",
        "2023-01-01",
        "--to",
        "2023-02-01",
    ]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    let status = demo.status_json();
    assert_eq!(
        status["totals"]["committed"], status["totals"]["chunks"],
        "nothing was reset: {status}"
    );

    // A partition that appears later is one new chunk; the others stay.
    let first = hive.join(format!("region={}", regions[0]));
    let copy = hive.join("region=zz-new");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&first).unwrap().flatten() {
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let out = demo.run(&["run", &demo.job_str(), "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["selected"], 1, "{summary}");
    let after = per_region(&demo.target_glob(), true);
    assert_eq!(after.len(), expected.len() + 1);
    assert_eq!(after.last().unwrap()[1], expected[0][1]);
}

#[test]
fn a_listed_set_of_values_backfills_only_those() {
    let demo = Demo::new(4_000, "\"7d\"");
    demo.without_quality();
    range_section(
        &demo,
        "column = \"region\"\npartitions = [\"eu-west\", \"us-east\"]",
    );
    demo.run_ok(&[]);
    let expected: Vec<Vec<serde_json::Value>> = per_region(&demo.source_glob(), false)
        .into_iter()
        .filter(|r| r[0] == "eu-west" || r[0] == "us-east")
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(per_region(&demo.target_glob(), true), expected);
    let v = demo.run(&["validate", &demo.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));

    // Range keys and partitions do not mix.
    range_section(
        &demo,
        "column = \"region\"\npartitions = [\"eu-west\"]\nchunk = \"7d\"",
    );
    let out = demo.run(&["plan", &demo.job_str()]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("range.partitions"), "{}", text(&out));
}
