"""The direct API over the demo job, against DuckDB on the source."""

import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

import backfill
from backfill import ChunkFailures, Job, SpecError, UsageError


def test_a_job_file_plans_runs_and_validates_like_the_cli(demo):
    job = Job.from_toml(demo.job)
    assert job.name == "transactions"
    plan = job.plan()
    assert len(plan["chunks"]) == 53
    assert {c["status"] for c in plan["chunks"]} == {"pending"}
    events = []
    result = job.run(parallel=2, progress=events.append)
    assert result.ok and result.committed == 53 and result.selected == 53
    assert demo.got() == demo.expected()
    assert result.rows_written == demo.expected()[0]
    assert (
        result.rows_written + result.rows_quarantined + result.rows_dropped + result.duplicates
        == result.rows_read
    )
    # One event per chunk, on this thread, each counted once.
    assert sorted(e["done"] for e in events) == list(range(1, 54))
    assert {e["state"] for e in events} == {"committed"}
    assert sum(e["rows_written"] for e in events) == result.rows_written
    # Nothing left to do; validate agrees with the target.
    assert job.run().selected == 0
    check = job.validate()
    assert check.ok, check.mismatched_chunks
    assert job.gaps().has_gaps is False
    statuses = job.status()
    assert len(statuses) == 53 and {s["status"] for s in statuses} == {"committed"}


def test_a_dict_job_is_the_job_file_as_a_dict(demo, tmp_path):
    spec = {
        "job": {"name": "from_dict"},
        "source": {"format": "parquet", "path": "source/"},
        "range": {"column": "created_at", "start": "2023-01-01", "end": "2023-04-01", "chunk": "1 month"},
        "rules": [{"name": "positive_amount", "check": "amount > 0", "action": "quarantine"}],
        "target": {"format": "parquet", "path": "out/t"},
    }
    job = Job(spec, base_dir=demo.path)
    result = job.run()
    assert result.committed == 3
    got = demo.got("out/t")
    want = __import__("conftest").query(
        f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{demo.source}') "
        "WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2023-04-01' "
        "AND coalesce(amount > 0, false)"
    )[0]
    assert got == want
    assert "[[rules]]" in job.toml()


def test_a_narrowed_run_takes_dates_and_reruns_only_that_window(demo):
    import datetime as dt

    job = Job.from_toml(demo.job)
    job.run()
    again = job.run(from_=dt.date(2023, 3, 1), to="2023-04-01")
    # Weekly chunks overlapping March: 5 or 6 of them, run again.
    assert 4 <= again.selected <= 6 and again.committed == again.selected
    assert demo.got() == demo.expected()


def test_plan_and_status_are_arrow_tables(demo):
    job = Job.from_toml(demo.job)
    plan = job.plan_table()
    assert isinstance(plan, pa.Table) and plan.num_rows == 53
    assert plan.schema.field("from").type == pa.timestamp("us", tz="UTC")
    job.run()
    status = job.status_table()
    assert status.num_rows == 53
    assert set(status.column("status").to_pylist()) == {"committed"}
    assert sum(status.column("rows_written").to_pylist()) == demo.expected()[0]
    # The stream is the Arrow C stream interface: any consumer takes it.
    stream = job._inner.status_stream()
    reader = pa.RecordBatchReader.from_stream(stream)
    assert reader.read_all().num_rows == 53
    with pytest.raises(backfill.BackfillError, match="already read"):
        pa.table(stream)


def test_a_bad_job_file_raises_with_its_key_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        textwrap.dedent(
            """\
            [job]
            name = "bad"

            [source]
            format = "parquet"
            path = "source/"

            [range]
            column = "created_at"
            start = "2023-01-01"
            end = "2024-01-01"
            chunk = "fortnightly"

            [target]
            path = "out"
            """
        )
    )
    with pytest.raises(SpecError) as e:
        Job.from_toml(path)
    assert e.value.key == "range.chunk"
    assert e.value.line == 12
    assert e.value.path == str(path)
    assert e.value.problems[0]["key"] == "range.chunk"
    assert "range.chunk" in str(e.value) and ":12:" in str(e.value)
    # A dict job names the key too.
    with pytest.raises(SpecError) as e:
        Job({"job": {"name": "x"}, "source": {"format": "nope", "path": "s"}, "target": {"path": "t"}})
    assert e.value.key == "source.format"
    with pytest.raises(TypeError, match="None"):
        Job({"job": {"name": "x"}, "source": {"format": "parquet", "path": None}})


def test_bad_arguments_raise_usage_errors_and_secrets_are_never_shown(demo, monkeypatch):
    job = Job.from_toml(demo.job)
    with pytest.raises(UsageError, match="from_"):
        job.run(from_="not a date")
    with pytest.raises(UsageError, match="expect"):
        job.gaps(expect="fortnightly")
    secret = "pw-3f9a-never-shown"
    monkeypatch.setenv("BF_TEST_PW", secret)
    spec = {
        "job": {"name": "secret"},
        "source": {"format": "postgres", "url": "postgres://u:${BF_TEST_PW}@127.0.0.1:1/db", "table": "t"},
        "target": {"path": "out"},
    }
    with pytest.raises(backfill.BackfillError) as e:
        Job(spec, base_dir=demo.path).run()
    assert secret not in str(e.value)


def test_failed_chunks_raise_with_the_run_result_and_are_logged(demo, caplog):
    text = Path(demo.job).read_text().replace('action = "quarantine"', 'action = "fail"', 1)
    Path(demo.job).write_text(
        text.replace('check = "transaction_id IS NOT NULL"', 'check = "transaction_id < 0"')
    )
    job = Job.from_toml(demo.job)
    with caplog.at_level(logging.WARNING, logger="backfill"):
        with pytest.raises(ChunkFailures) as e:
            job.run()
    assert e.value.result.failed and e.value.result.committed < 53
    # The engine's log reaches Python's logging, under "backfill".
    failed = [r for r in caplog.records if r.name == "backfill" and "failed" in r.getMessage()]
    assert failed and failed[0].levelno == logging.ERROR, caplog.records
    result = job.run(check=False)
    assert not result.ok


CTRL_C = """
import sys, backfill
job = backfill.Job.from_toml(sys.argv[1])
print("started", flush=True)
try:
    job.run(parallel=1, progress=lambda e: print("chunk", e["done"], flush=True))
except KeyboardInterrupt as e:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


def test_ctrl_c_stops_a_run_cleanly_and_the_next_run_finishes(tmp_path):
    demo = __import__("conftest").Demo(tmp_path, 200_000)
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C, demo.job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait for the run to be under way (a chunk committed), then Ctrl-C.
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("chunk"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (lines, out, err)
    assert "interrupted" in out
    job = Job.from_toml(demo.job)
    status = job.status()
    assert "running" not in {s["status"] for s in status}
    committed = sum(1 for s in status if s["status"] == "committed")
    assert 0 < committed < 53, committed
    rest = job.run()
    assert rest.committed == 53 - committed
    assert demo.got() == demo.expected()
    assert job.validate().ok
