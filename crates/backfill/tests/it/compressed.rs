//! Compressed CSV and newline-delimited JSON sources (`.gz`, `.zst`,
//! `.bz2`, `.xz`), found by extension or named by `[source] compression`.
//! The files are written by DuckDB (gzip, zstd) and Python's standard
//! library (bzip2, xz) from the demo's Parquet source, and the target is
//! compared with DuckDB's answer over that source.

use crate::harness::*;

/// Per month over the job's range: rows and sum(amount), from the source.
fn expected(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT month(created_at) AS m, count(*), round(sum(amount), 2) FROM read_parquet('{}') \
         WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01' \
         GROUP BY m ORDER BY m",
        demo.source_glob()
    ))
}

fn actual(demo: &Demo) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT month(created_at) AS m, count(*), round(sum(amount), 2) \
         FROM read_parquet('{}', hive_partitioning = true) GROUP BY m ORDER BY m",
        demo.target_glob()
    ))
}

/// Writes the demo's source as `dir/a<ext>` (the first half of the year)
/// and `dir/b<ext>` (the rest) in `format` (csv or json), compressed by
/// `codec` (gzip, zstd, bzip2, xz or none).
fn write_source(demo: &Demo, dir: &str, format: &str, codec: &str, ext: &str) {
    let out = demo.path().join(dir);
    std::fs::create_dir_all(&out).expect("source dir");
    for (name, filter) in [
        ("a", "created_at < TIMESTAMP '2023-07-01'"),
        ("b", "created_at >= TIMESTAMP '2023-07-01'"),
    ] {
        let plain = demo.path().join(format!("{name}.plain"));
        let options = match format {
            "csv" => "FORMAT csv, HEADER true",
            _ => "FORMAT json",
        };
        duckdb(&format!(
            "COPY (SELECT * FROM read_parquet('{}') WHERE {filter}) TO '{}' ({options})",
            demo.source_glob(),
            plain.display()
        ));
        let target = out.join(format!("{name}{ext}"));
        let module = match codec {
            "gzip" => "gzip",
            "zstd" => "zstd",
            "bzip2" => "bz2",
            "xz" => "lzma",
            _ => "",
        };
        if module.is_empty() {
            std::fs::rename(&plain, &target).expect("move");
        } else if module == "zstd" {
            // DuckDB writes zstd itself.
            duckdb(&format!(
                "COPY (SELECT * FROM read_parquet('{}') WHERE {filter}) TO '{}' ({options}, COMPRESSION zstd)",
                demo.source_glob(),
                target.display()
            ));
        } else {
            let status = std::process::Command::new(python())
                .args([
                    "-c",
                    &format!(
                        "import {module}, sys; open(sys.argv[2], 'wb').write({module}.compress(open(sys.argv[1], 'rb').read()))"
                    ),
                    plain.to_str().unwrap_or_default(),
                    target.to_str().unwrap_or_default(),
                ])
                .status()
                .expect("python");
            assert!(status.success(), "compressing with {module}");
        }
        let _ = std::fs::remove_file(&plain);
    }
}

/// The demo job reading `path` as `format`, with `extra` source keys.
fn source_to(demo: &Demo, format: &str, path: &str, extra: &str) {
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"          # parquet | csv | json (newline-delimited)\npath = \"source/\"",
            &format!(
                "format = \"{format}\"\npath = \"{path}\"\n{extra}\n[source.columns]\ncreated_at = \"timestamp\"\n#"
            ),
        )
    });
}

#[test]
fn compressed_csv_and_json_folders_read_like_the_source() {
    for (format, codec, ext) in [
        ("csv", "gzip", ".csv.gz"),
        ("csv", "zstd", ".csv.zst"),
        ("csv", "bzip2", ".csv.bz2"),
        ("csv", "xz", ".csv.xz"),
        ("json", "gzip", ".json.gz"),
        ("json", "xz", ".json.xz"),
    ] {
        let demo = Demo::new(1_500, "\"1 month\"");
        demo.without_quality();
        write_source(&demo, "landing", format, codec, ext);
        source_to(&demo, format, "landing/", "");
        let out = demo.run(&["run", &demo.job_str()]);
        assert_eq!(code(&out), 0, "{format} {codec}: {}", text(&out));
        assert_months_equal(&expected(&demo), &actual(&demo));
        let v = demo.run(&["validate", &demo.job_str()]);
        assert_eq!(code(&v), 0, "{format} {codec}: {}", text(&v));
    }
}

#[test]
fn a_named_file_or_an_odd_extension_takes_the_compression_it_is_given() {
    // A named file: its extension says gzip.
    let demo = Demo::new(800, "\"1 month\"");
    demo.without_quality();
    write_source(&demo, "landing", "csv", "gzip", ".csv.gz");
    std::fs::remove_file(demo.path().join("landing/b.csv.gz")).expect("one file");
    source_to(&demo, "csv", "landing/a.csv.gz", "");
    demo.run_ok(&[]);
    let first_half = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}') WHERE created_at >= TIMESTAMP '2023-01-01' \
         AND created_at < TIMESTAMP '2023-07-01'",
        demo.source_glob()
    ));
    let rows = duckdb(&format!(
        "SELECT count(*) FROM read_parquet('{}', hive_partitioning = true)",
        demo.target_glob()
    ));
    assert_eq!(int(&rows[0][0]), int(&first_half[0][0]));

    // Files whose names say nothing: `compression` decides.
    let demo = Demo::new(800, "\"1 month\"");
    demo.without_quality();
    write_source(&demo, "landing", "csv", "bzip2", ".dat");
    source_to(&demo, "csv", "landing/*.dat", "compression = \"bzip2\"");
    demo.run_ok(&[]);
    assert_months_equal(&expected(&demo), &actual(&demo));
}
