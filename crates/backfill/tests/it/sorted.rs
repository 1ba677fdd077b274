//! `[target] sort_by`: each file holds its rows in that order (checked
//! file by file with pyarrow), with the same rows as without it. The demo
//! job's global dedup in one chunk holds repeated keys back until the chunk
//! ends: those rows must be sorted with the rest.

use crate::harness::*;

const CHECK: &str = r#"
import glob, json, sys
import pyarrow.compute as pc, pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1], recursive=True))
rows, unsorted = 0, []
for f in files:
    t = pq.ParquetFile(f).read()
    rows += t.num_rows
    order = pc.sort_indices(t, sort_keys=[("customer_id", "ascending"), ("created_at", "descending")],
                            null_placement="at_end")
    if order.to_pylist() != list(range(t.num_rows)):
        unsorted.append(f)
print(json.dumps({"files": len(files), "rows": rows, "unsorted": unsorted}))
"#;

#[test]
fn each_file_holds_its_rows_in_sort_by_order() {
    let sorted = Demo::new(6_000, "\"all\"");
    sorted.edit_job(|s| {
        s.replace(
            "compression = \"zstd\"",
            "max_file_rows = 300\nsort_by = [\"customer_id\", \"created_at DESC\"]\ncompression = \"zstd\"",
        )
    });
    sorted.run_ok(&[]);
    // The premise: repeated keys, which dedup held back.
    assert!(int(&sorted.status_json()["totals"]["duplicates"]) > 0);
    let check = pyarrow(CHECK, &sorted.target_glob());
    assert_eq!(check["unsorted"], serde_json::json!([]), "{check}");
    // Twelve monthly partitions of ~500 rows, 300 rows a file at most.
    assert!(int(&check["files"]) >= 24, "{check}");
    let plain = Demo::new(6_000, "\"all\"");
    plain.run_ok(&[]);
    assert_eq!(target_fingerprint(&sorted), target_fingerprint(&plain));
    let v = sorted.run(&["validate", &sorted.job_str()]);
    assert_eq!(code(&v), 0, "{}", text(&v));
}

#[test]
fn sorting_fits_the_smallest_memory_limit() {
    // Found by the model (seed 22): under memory_limit = "16MiB" every
    // chunk failed, the sort's merge reserving DataFusion's default 10 MiB
    // from an 8 MiB pool.
    let demo = Demo::new(6_000, "\"1 month\"");
    demo.edit_job(|s| {
        s.replace(
            "compression = \"zstd\"",
            "sort_by = [\"customer_id\", \"created_at DESC\"]\ncompression = \"zstd\"",
        )
        .replace(
            "parallelism = 2",
            "parallelism = 2\nmemory_limit = \"16MiB\"",
        )
    });
    demo.run_ok(&[]);
    let check = pyarrow(CHECK, &demo.target_glob());
    assert_eq!(check["unsorted"], serde_json::json!([]), "{check}");
    let plain = Demo::new(6_000, "\"1 month\"");
    plain.run_ok(&[]);
    assert_eq!(target_fingerprint(&demo), target_fingerprint(&plain));
}
