"""Kafka replay: N JSON events from a local tansu broker into Hive Parquet
with one rule (amount > 0) and key dedup (latest offset wins), by backfill
(offset chunks) and by a hand-written Python consumer (kafka-python,
batching into pyarrow) in the same run. The consumer reads until its
partitions stay empty for two 0.5 s polls (about 1 s of its time). Both run as child processes, timed
and measured (peak RSS) the same way; their outputs are checked against
each other with DuckDB. Invoked by bench/run.sh --kafka; see the README.
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench import measure  # the same child-process timing as the main bench

PARTITIONS = 4
REGIONS = ["eu", "us", "apac", "latam", "mea", "na", "sa", "oc"]

PRODUCER = """
import json, sys
from kafka import KafkaProducer
brokers, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
regions = %r
p = KafkaProducer(bootstrap_servers=brokers, linger_ms=20, batch_size=1 << 20,
                  acks=1, api_version_auto_timeout_ms=10000)
for i in range(n):
    key = f"k{i %% (n // 4 or 1)}"
    amount = ((i * 7919) %% 100000) / 100.0 - (5 if i %% 17 == 0 else 0)
    value = {"id": i, "customer": f"c{i %% 50000}", "amount": amount,
             "region": regions[i %% len(regions)], "note": "x" * (i %% 40)}
    p.send(topic, key=key.encode(), value=json.dumps(value).encode())
p.flush()
""" % (REGIONS,)

CONSUMER = """
import json, sys
import pyarrow as pa, pyarrow.dataset as ds
from kafka import KafkaConsumer, TopicPartition
brokers, topic, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False,
                  max_poll_records=50000, fetch_max_bytes=1 << 26,
                  max_partition_fetch_bytes=1 << 24)
parts = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
c.assign(parts)
c.seek_to_beginning(*parts)
# Read until the partitions run dry: tansu's ListOffsets answers short for
# multi-record batches, so end_offsets() cannot say where to stop.
latest = {}
idle = 0
while idle < 2:
    batch = c.poll(timeout_ms=500)
    idle = 0 if batch else idle + 1
    for tp, records in batch.items():
        for r in records:
            try:
                v = json.loads(r.value)
            except ValueError:
                continue
            if not isinstance(v, dict) or not (v.get("amount") or 0) > 0:
                continue
            key = r.key.decode() if r.key is not None else None
            prev = latest.get(key)
            if prev is None or (prev[0], prev[1]) < (tp.partition, r.offset):
                latest[key] = (tp.partition, r.offset, r.timestamp, v)
cols = {"_partition": [], "_offset": [], "_key": [], "id": [], "customer": [],
        "amount": [], "region": [], "note": []}
for key, (p, o, ts, v) in latest.items():
    cols["_partition"].append(p); cols["_offset"].append(o); cols["_key"].append(key)
    for f in ("id", "customer", "amount", "region", "note"):
        cols[f].append(v.get(f))
table = pa.table(cols)
ds.write_dataset(table, out, format="parquet", partitioning=["region"],
                 partitioning_flavor="hive",
                 file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"))
"""

JOB = """[job]
name = "kafka-bench"

[source]
format = "kafka"
brokers = ["{brokers}"]
topic = "{topic}"
value = "json"

[range]
column = "_offset"
start = "earliest"
end = "latest"
chunk = {chunk}

[[rules]]
name = "positive_amount"
check = "amount > 0"
action = "drop"

[dedup]
keys = ["_key"]
order_by = ["_offset DESC"]
scope = "global"

[target]
format = "parquet"
path = "out"
partition_by = ["region"]

[run]
parallelism = 2
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def summary(py: str, out: Path) -> list:
    script = (
        "import duckdb, json, sys\n"
        "r = duckdb.connect().execute(\"SELECT count(*), round(sum(amount), 2), sum(id) "
        "FROM read_parquet(?, hive_partitioning = true)\", [sys.argv[1]]).fetchone()\n"
        "print(json.dumps(list(r)))\n"
    )
    got = subprocess.run([py, "-c", script, f"{out}/**/*.parquet"], check=True,
                         capture_output=True, text=True)
    return json.loads(got.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tansu", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    a = ap.parse_args()
    work = Path(a.work) / f"kafka-{a.rows}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [a.tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    brokers = f"127.0.0.1:{port}"
    topic = "events"
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        subprocess.run([a.tansu, "topic", "create", "--broker", url, "--partitions",
                        str(PARTITIONS), topic], check=True, capture_output=True)
        t = time.perf_counter()
        subprocess.run([a.python, "-c", PRODUCER, brokers, topic, str(a.rows)], check=True)
        produced = time.perf_counter() - t
        print(f"produced {a.rows} events in {produced:.1f} s", file=sys.stderr)
        job = work / "job.toml"
        job.write_text(JOB.format(brokers=brokers, topic=topic, chunk=max(a.rows // 20, 1000)))
        rounds = []
        for _ in range(a.repeat):
            shutil.rmtree(work / "out", ignore_errors=True)
            shutil.rmtree(work / ".backfill", ignore_errors=True)
            shutil.rmtree(work / "py", ignore_errors=True)
            ours = measure([a.bin, "-q", "run", str(job)])
            peer = measure([a.python, "-c", CONSUMER, brokers, topic, str(work / "py")])
            rounds.append({"backfill": ours, "python": peer})
        mine, theirs = summary(a.python, work / "out"), summary(a.python, work / "py")
        if mine != theirs:
            sys.exit(f"outputs differ: backfill {mine}, python consumer {theirs}")
    finally:
        broker.kill()
        broker.wait()
    ratios = sorted(r["python"][0] / r["backfill"][0] for r in rounds)
    median = ratios[len(ratios) // 2]
    best = {k: min(r[k][0] for r in rounds) for k in ("backfill", "python")}
    rss = {k: max(r[k][1] for r in rounds) for k in ("backfill", "python")}
    result = {
        "rows": a.rows,
        "rounds": rounds,
        "rows_out": mine[0],
        "backfill_records_per_s": a.rows / best["backfill"],
        "python_records_per_s": a.rows / best["python"],
        "speedup_median_of_pairs": median,
        "peak_rss_mib": rss,
        "goal_5x": median >= 5.0,
        "goal_rss_512": rss["backfill"] < 512,
    }
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"kafka-{a.rows}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        f"# Kafka replay, {a.rows:,} JSON events ({PARTITIONS} partitions, tansu, loopback)\n\n"
        f"One rule (amount > 0, dropped), key dedup (latest offset wins), Hive Parquet by region, zstd.\n"
        f"Both outputs: {mine[0]:,} rows, equal counts and sums.\n\n"
        "| | best wall (s) | records/s | peak RSS (MiB) |\n|---|---:|---:|---:|\n"
        f"| backfill (offset chunks) | {best['backfill']:.2f} | {result['backfill_records_per_s']:,.0f} | {rss['backfill']:.0f} |\n"
        f"| Python consumer (kafka-python + pyarrow) | {best['python']:.2f} | {result['python_records_per_s']:,.0f} | {rss['python']:.0f} |\n\n"
        f"backfill is {median:.1f}x the consumer's throughput (median of {len(rounds)} paired rounds): "
        f"goal 5x {'met' if result['goal_5x'] else 'NOT met'}; peak RSS under 512 MiB "
        f"{'met' if result['goal_rss_512'] else 'NOT met'}.\n"
    )
    (results / f"kafka-{a.rows}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
