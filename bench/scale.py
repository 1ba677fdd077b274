"""Scaling curve: backfill weekly (the demo job) at several sizes, wall time
(median of --runs) and peak RSS (the highest of them, as bench.py reports
it), written as JSON, Markdown and a PNG plot under bench/results/.
Invoked by bench/run.sh --scale."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import job_file, measure  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--sizes", default="1000000,10000000,50000000")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    points = []
    for rows in [int(s) for s in a.sizes.split(",")]:
        data = Path(a.work) / f"data-{rows}"
        if not (data / "source" / "_demo.json").exists():
            subprocess.run([a.bin, "-q", "demo", "--dir", str(data), "--rows", str(rows), "--no-run", "--force"], check=True)
        out = data / "out" / "scale"
        job = str(job_file(data, '"7d"', "scale"))
        runs = []
        for _ in range(max(1, a.runs)):
            # Each run starts from nothing: no state, no saved dedup index.
            shutil.rmtree(out, ignore_errors=True)
            runs.append(measure([a.bin, "-q", "run", job]))
        wall = sorted(w for w, _ in runs)[len(runs) // 2]
        rss = max(r for _, r in runs)
        points.append({"rows": rows, "wall_s": wall, "peak_rss_mib": rss})
        print(f"  {rows:>12,} rows: {wall:.2f}s, {rss:.0f} MiB", flush=True)
    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "scaling.json").write_text(json.dumps(points, indent=2))
    lines = ["| rows | wall (s) | rows/s | peak RSS (MiB) |", "|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['rows']:,} | {p['wall_s']:.2f} | {p['rows'] / p['wall_s']:,.0f} | {p['peak_rss_mib']:.0f} |")
    by_rows = {p["rows"]: p for p in points}
    if 10_000_000 in by_rows and 50_000_000 in by_rows:
        ratio = by_rows[50_000_000]["peak_rss_mib"] / by_rows[10_000_000]["peak_rss_mib"]
        lines += ["", f"Peak RSS at 50M rows is {ratio:.2f}x the 10M figure."]
    lines += ["", f"Wall: median of {max(1, a.runs)} runs; peak RSS: the highest of them."]
    (res / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax1 = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs = [p["rows"] / 1e6 for p in points]
    ax1.plot(xs, [p["wall_s"] for p in points], "o-", color="tab:blue", label="wall (s)")
    ax1.set_xlabel("rows (millions)")
    ax1.set_ylabel("wall time (s)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [p["peak_rss_mib"] for p in points], "s--", color="tab:red", label="peak RSS (MiB)")
    ax2.set_ylabel("peak RSS (MiB)", color="tab:red")
    ax2.set_ylim(bottom=0)
    ax1.set_ylim(bottom=0)
    ax1.set_title("backfill demo job, weekly chunks, 2 cores")
    fig.tight_layout()
    fig.savefig(res / "scaling.png")
    print(f"wrote {res / 'scaling.png'}")


if __name__ == "__main__":
    main()
