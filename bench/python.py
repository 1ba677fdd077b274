"""The demo job run through the Python package against the same job run by
the CLI, alternately in one run, as child processes measured the same way
(bench.py's measure): the ratio of each pair's wall times, and the median
of the pairs. Both must be built alike (the same profile and features) for
the ratio to mean anything; the script says which binary and which module
it ran. Invoked by bench/run.sh --python; see the README.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench import measure

PY_RUN = """
import sys, backfill
r = backfill.Job.from_toml(sys.argv[1]).run()
assert r.ok, r
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", required=True, help="a Python with the backfill package installed")
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--profile", default="release")
    a = ap.parse_args()
    work = Path(a.work) / f"python-{a.rows}"
    if not (work / "backfill.toml").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        subprocess.run([a.bin, "-q", "demo", "--dir", str(work), "--rows", str(a.rows), "--no-run"], check=True)
    job = work / "backfill.toml"
    module = subprocess.run(
        [a.python, "-c", "import backfill._engine as e; print(e.__file__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    pairs = []
    for i in range(a.pairs):
        runs = {}
        # Alternate which goes first, so neither always meets a warm cache.
        order = ["cli", "python"] if i % 2 == 0 else ["python", "cli"]
        for who in order:
            for sub in ("warehouse", ".backfill"):
                shutil.rmtree(work / sub, ignore_errors=True)
            if who == "cli":
                runs[who] = measure([a.bin, "-q", "run", str(job)])
            else:
                runs[who] = measure([a.python, "-c", PY_RUN, str(job)])
        pairs.append(runs)
    ratios = [p["python"][0] / p["cli"][0] for p in pairs]
    median = statistics.median(ratios)
    result = {
        "rows": a.rows,
        "profile": a.profile,
        "bin": a.bin,
        "module": module,
        "pairs": pairs,
        "python_over_cli_median_of_pairs": median,
        "goal_within_5_percent": median <= 1.05,
    }
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"python-{a.rows}.json").write_text(json.dumps(result, indent=2) + "\n")
    cli = statistics.median(p["cli"][0] for p in pairs)
    py = statistics.median(p["python"][0] for p in pairs)
    md = (
        f"# The demo job through Python and through the CLI, {a.rows:,} rows ({a.profile} builds)\n\n"
        f"| | median wall (s) | peak RSS (MiB) |\n|---|---:|---:|\n"
        f"| CLI (`backfill run`) | {cli:.2f} | {max(p['cli'][1] for p in pairs):.0f} |\n"
        f"| Python (`Job.from_toml(...).run()`) | {py:.2f} | {max(p['python'][1] for p in pairs):.0f} |\n\n"
        f"Python / CLI, median of {a.pairs} alternating pairs: {median:.3f} "
        f"(goal <= 1.05: {'met' if median <= 1.05 else 'NOT met'}).\n"
    )
    (out / f"python-{a.rows}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
