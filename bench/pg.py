"""PostgreSQL throughput, in one run against one throwaway server:

- `backfill` loading the demo rows (no rules, no dedup: a plain load) into a
  PostgreSQL table with mode = "replace" and mode = "merge", first into an
  empty table and again over the full table (a re-run: every chunk replaces
  or merges its slice);
- the peer: psql's `COPY ... FROM STDIN (FORMAT csv)` of the same rows into an
  empty table, the fastest way PostgreSQL takes rows;
- one and two `backfill run` processes sharing a PostgreSQL state store on the
  demo job (rules and global dedup, Parquet target).

Writes bench/results/pg-<rows>.{md,json}. Run through `bench/run.sh --postgres`.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import time


def sh(cmd, env=None, **kw):
    return subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, **kw)


def psql(url, sql):
    return sh(["psql", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql]).stdout.strip()


def job_text(base, target, state=""):
    """The demo job without rules/dedup/quarantine, with another target."""
    lines = []
    skip = False
    for line in base.splitlines():
        if line.startswith("[[rules]]") or line.startswith("[dedup]") or line.startswith(
            "[quarantine]") or line.startswith("[validate]") or line.startswith("[target]"):
            skip = True
        elif line.startswith("[run]") or line.startswith("[state]"):
            skip = False
        if not skip:
            lines.append(line)
    text = "\n".join(lines) + "\n" + target + "\n"
    # Merge keys must not be NULL (NULL never conflicts); both loads skip them.
    text = text.replace("FROM source", "FROM source WHERE transaction_id IS NOT NULL")
    return text.replace("[state]\n", "[state]\n" + state)


def timed(cmd, env):
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.monotonic() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", required=True, help="a python with duckdb")
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    url = os.environ["BACKFILL_TEST_PG_URL"]
    env = dict(os.environ, BF_PG_URL=url)
    work = pathlib.Path(a.work) / f"pg-{a.rows}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    sh([a.bin, "-q", "demo", "--dir", str(work), "--rows", str(a.rows), "--no-run"])
    base = (work / "backfill.toml").read_text()
    results = {"rows_in": a.rows}

    # The rows a plain load writes, as CSV for the peer.
    csv = work / "rows.csv"
    sh([a.python, "-c",
        "import duckdb, sys; duckdb.sql(f\"COPY (SELECT *, date_part('year', created_at) AS year, "
        "date_part('month', created_at) AS month, date_part('day', created_at) AS day "
        "FROM read_parquet('{sys.argv[1]}/source/*.parquet') WHERE created_at >= TIMESTAMP '2023-01-01' "
        "AND created_at < TIMESTAMP '2024-01-01' AND transaction_id IS NOT NULL) TO '{sys.argv[2]}' (HEADER)\")",
        str(work), str(csv)])
    psql(url, "DROP SCHEMA IF EXISTS bench CASCADE; DROP SCHEMA IF EXISTS bench_state1 CASCADE; "
         "DROP SCHEMA IF EXISTS bench_state2 CASCADE; CREATE SCHEMA bench")

    for mode in ["replace", "merge"]:
        job = work / f"{mode}.toml"
        job.write_text(job_text(
            base,
            f'[target]\nformat = "postgres"\nurl = "${{BF_PG_URL}}"\ntable = "bench.tx_{mode}"\n'
            f'mode = "{mode}"\nkeys = ["transaction_id", "created_at"]\n',
        ).replace("[state]\n", f'[state]\npath = ".backfill/{mode}.db"\n'))
        first = timed([a.bin, "-q", "run", str(job)], env)
        sh([a.bin, "-q", "reset", str(job), "--all"], env=env)
        again = timed([a.bin, "-q", "run", str(job)], env)
        n = int(psql(url, f"SELECT count(*) FROM bench.tx_{mode}"))
        results[mode] = {"rows": n, "empty_s": first, "rerun_s": again}

    cols = psql(url, "SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', ' "
                "ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'bench.tx_replace'::regclass "
                "AND attnum > 0 AND NOT attisdropped")
    psql(url, f"CREATE TABLE bench.tx_copy ({cols})")
    t = time.monotonic()
    sh(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c",
        f"\\copy bench.tx_copy FROM '{csv}' (FORMAT csv, HEADER)"])
    copy_s = time.monotonic() - t
    results["copy"] = {"rows": int(psql(url, "SELECT count(*) FROM bench.tx_copy")), "s": copy_s}
    for mode in ["replace", "merge"]:
        assert results[mode]["rows"] == results["copy"]["rows"], results

    # Shared state: the demo job (rules, global dedup) by one process, then by two.
    for procs in [1, 2]:
        d = work / f"shared{procs}"
        d.mkdir()
        shutil.copytree(work / "source", d / "source")
        # One chunk at a time per process, so the second process is the only
        # added parallelism.
        (d / "backfill.toml").write_text(base.replace(
            "[state]\n", f'[state]\nurl = "${{BF_PG_URL}}"\nschema = "bench_state{procs}"\n'
        ).replace("parallelism = 2", "parallelism = 1"))
        t = time.monotonic()
        ps = [subprocess.Popen([a.bin, "-q", "run", str(d / "backfill.toml")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(procs)]
        for p in ps:
            if p.wait() != 0:
                raise SystemExit(p.stderr.read().decode())
        results[f"shared_{procs}"] = {"s": time.monotonic() - t}
        per_worker = psql(url, f"SELECT string_agg(n::text, '+') FROM (SELECT count(*) n FROM "
                          f"bench_state{procs}.attempts WHERE outcome = 'committed' GROUP BY worker) w")
        results[f"shared_{procs}"]["chunks_per_process"] = per_worker

    rows = results["copy"]["rows"]
    md = [f"# PostgreSQL throughput, {a.rows:,} demo rows ({rows:,} loaded)", "",
          "Plain load (no rules, no dedup), weekly chunks, parallelism 2, one throwaway server on loopback.", "",
          "| load | wall (s) | rows/s | vs plain COPY |", "|---|---:|---:|---:|"]
    c = results["copy"]["s"]
    md.append(f"| psql COPY (csv) into an empty table | {c:.2f} | {rows / c:,.0f} | 1.00x |")
    for mode in ["replace", "merge"]:
        for key, what in [("empty_s", "into an empty table"), ("rerun_s", "over the full table (re-run)")]:
            s = results[mode][key]
            md.append(f"| backfill {mode} {what} | {s:.2f} | {rows / s:,.0f} | {s / c:.2f}x |")
    md += ["", "Shared PostgreSQL state, the demo job (rules, global dedup, Parquet target), "
           "each process running one chunk at a time:", "",
           "| processes | wall (s) | chunks committed per process |", "|---:|---:|---|"]
    for procs in [1, 2]:
        r = results[f"shared_{procs}"]
        md.append(f"| {procs} | {r['s']:.2f} | {r['chunks_per_process']} |")
    out = pathlib.Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pg-{a.rows}.md").write_text("\n".join(md) + "\n")
    (out / f"pg-{a.rows}.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
