"""Checkpointing cost: the demo job over ten years in hourly chunks (87,648
chunks; the demo data fills one of the years). Measures `plan` before and
after the state holds every chunk, the plan sync at the start of a run, and
the state store's time per committed chunk, for a run narrowed to one week
(168 chunks). Figures come from the tool's own `-v` lines and from wall
time of the `plan` process. Invoked by bench/run.sh --state.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import job_file  # noqa: E402

ROWS = 100_000


def timed(cmd):
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    return wall, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    data = Path(a.work) / f"data-{ROWS}"
    if not (data / "source" / "_demo.json").exists():
        subprocess.run([a.bin, "-q", "demo", "--dir", str(data), "--rows", str(ROWS), "--no-run", "--force"], check=True)
    shutil.rmtree(data / "out" / "state", ignore_errors=True)
    job = job_file(data, '"1h"', "state")
    text = job.read_text().replace('start = "2023-01-01"', 'start = "2014-01-01"')
    assert 'start = "2014-01-01"' in text, "the demo job's range start moved"
    job.write_text(text)

    plan_cold, p = timed([a.bin, "plan", str(job)])
    chunks = sum(1 for line in p.stdout.splitlines() if re.match(r"\s*\d+\s", line))
    run_wall, p = timed([a.bin, "-v", "run", str(job), "--from", "2023-06-01", "--to", "2023-06-08"])
    sync_ms = float(re.search(r"plan of (\d+) chunks synced in ([\d.]+) ms", p.stderr).group(2))
    m = re.search(r"state: ([\d.]+) ms per committed chunk in the state store \((\d+) chunks\)", p.stderr)
    per_chunk_ms, committed = float(m.group(1)), int(m.group(2))
    plan_warm, _ = timed([a.bin, "plan", str(job)])

    result = {
        "chunks": chunks,
        "plan_without_state_s": plan_cold,
        "plan_with_state_s": plan_warm,
        "run_plan_sync_ms": sync_ms,
        "state_ms_per_chunk": per_chunk_ms,
        "committed_chunks": committed,
        "narrowed_run_wall_s": run_wall,
    }
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "state.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"Demo job, 2014-01-01 to 2024-01-01 in hourly chunks ({chunks:,} chunks), SQLite state; "
        f"a run narrowed to one week ({committed} chunks).",
        "",
        "| measure | value | target |",
        "|---|---:|---:|",
        f"| `backfill plan`, no state yet (wall, whole process) | {plan_cold:.2f} s | |",
        f"| `backfill plan`, state holding every chunk (wall, whole process) | {plan_warm:.2f} s | 2 s |",
        f"| plan sync at the start of `run` | {sync_ms:.0f} ms | |",
        f"| state store time per committed chunk | {per_chunk_ms:.2f} ms | 5 ms |",
        f"| the narrowed run (wall) | {run_wall:.2f} s | |",
    ]
    (res / "state.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
