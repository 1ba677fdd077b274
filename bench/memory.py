"""Memory under `[run] memory_limit`: two cases where what a run holds grows
with the data unless it is bounded, each run by backfill with the limit,
by backfill with a limit too large to matter (what it would hold), and by
DuckDB with the same limit (SET memory_limit), outputs checked against each
other. Invoked by bench/run.sh --memory.

* change log: the demo rows as a change log where nine keys in ten have five
  versions, deduplicated in one chunk (`chunk = "all"`), so every version of
  a repeated key is held back until the chunk ends;
* 10,000 partitions: the demo job partitioned by `transaction_id % 10000`
  in one chunk, rows arriving in no order of the partition value.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import RULES, job_file, measure  # noqa: E402

LIMIT_MIB = 256

DUCKDB = """
import duckdb, sys
src, out, limit, extra, part = sys.argv[1:6]
con = duckdb.connect()
con.execute(f"SET memory_limit = '{limit}MiB'")
con.execute(f'''
COPY (
  SELECT * FROM (
    SELECT *, year(created_at) AS year, month(created_at) AS month, day(created_at) AS day{extra}
    FROM read_parquet('{src}/*.parquet')
    WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01'
      AND RULES
  )
  QUALIFY row_number() OVER (PARTITION BY transaction_id
                             ORDER BY created_at DESC NULLS LAST, amount DESC NULLS LAST) = 1
) TO '{out}' (FORMAT parquet, PARTITION_BY ({part}), COMPRESSION zstd)
''')
""".replace("RULES", RULES)

PARTITION = "transaction_id % 10000"


def check(out: Path):
    import duckdb

    rows, total, files = duckdb.connect().execute(
        f"SELECT count(*), round(sum(amount), 2), count(DISTINCT filename) "
        f"FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true, filename = true)"
    ).fetchone()
    return rows, total, files


def change_log(data: Path) -> Path:
    log = data / "changelog"
    if not (log / "log.parquet").exists():
        import duckdb

        log.mkdir(exist_ok=True)
        duckdb.connect().execute(
            f"COPY (SELECT * REPLACE (created_at + to_hours(v) AS created_at, amount + v AS amount) "
            f"FROM read_parquet('{data}/source/*.parquet'), range(5) t(v) "
            f"WHERE v = 0 OR transaction_id % 10 <> 0 ORDER BY created_at) "
            f"TO '{log}/log.parquet' (FORMAT parquet, COMPRESSION zstd)"
        )
    return log


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    a = ap.parse_args()
    data = Path(a.work) / f"data-{a.rows}"
    if not (data / "source" / "_demo.json").exists():
        subprocess.run([a.bin, "-q", "demo", "--dir", str(data), "--rows", str(a.rows), "--no-run", "--force"], check=True)
    log = change_log(data)
    source_rows = {
        "change log": __import__("duckdb").connect().execute(f"SELECT count(*) FROM '{log}/log.parquet'").fetchone()[0],
        "10,000 partitions": a.rows,
    }

    def backfill_job(case: str, limit_mib: int) -> Path:
        name = f"mem-{'log' if case == 'change log' else 'parts'}-{limit_mib}"
        job = job_file(data, '"all"', name)
        text = job.read_text().replace("parallelism = 2", f'parallelism = 2\nmemory_limit = "{limit_mib}MiB"')
        if case == "change log":
            text = text.replace('path = "source/"', 'path = "changelog/"')
        else:
            text = text.replace("AS day FROM source", f"AS day, {PARTITION} AS p FROM source")
            text = text.replace('partition_by = ["year", "month"]', 'partition_by = ["p"]')
        job.write_text(text)
        return job

    results = []
    for case in ["change log", "10,000 partitions"]:
        src = log if case == "change log" else data / "source"
        checks = {}
        for tool, limit in [("backfill", LIMIT_MIB), ("backfill, limit 8 GiB", 8192), ("duckdb", LIMIT_MIB)]:
            out = data / "out" / f"mem-{len(results)}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            if tool == "duckdb":
                extra, part = ("", "year, month") if case == "change log" else (f", {PARTITION} AS p", "p")
                cmd = [a.python, "-c", DUCKDB, str(src), str(out), str(limit), extra, part]
                table = out
            else:
                job = backfill_job(case, limit)
                subprocess.run(["rm", "-rf", str(job.parent / "out" / job.stem.removeprefix("bench-"))], check=True)
                cmd = [a.bin, "-q", "run", str(job)]
                table = job.parent / "out" / job.stem.removeprefix("bench-") / "transactions"
            wall, rss = measure(cmd)
            rows, total, files = check(table)
            checks[tool] = (rows, total)
            results.append({
                "case": case, "tool": tool, "limit_mib": limit, "wall_s": round(wall, 2),
                "peak_rss_mib": round(rss), "rows": rows, "amount": total, "files": files,
            })
            print(f"  {case}, {tool}: {wall:.2f} s, {rss:.0f} MiB, {rows:,} rows in {files:,} files", flush=True)
        if len(set(checks.values())) != 1:
            sys.exit(f"{case}: the outputs differ: {checks}")

    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / f"memory-{a.rows}.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"The demo data at {a.rows:,} rows; one chunk per job (`chunk = \"all\"`); "
        f"limits: `[run] memory_limit` for backfill, `SET memory_limit` for DuckDB. "
        f"Outputs checked equal (rows, sum of amount).",
        "",
        "| case | source rows | tool | limit | wall | peak RSS | RSS / limit | files |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {source_rows[r['case']]:,} | {r['tool']} | {r['limit_mib']} MiB | {r['wall_s']:.2f} s "
            f"| {r['peak_rss_mib']} MiB | {r['peak_rss_mib'] / r['limit_mib']:.2f} | {r['files']:,} |"
        )
    (res / f"memory-{a.rows}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
