"""Airflow: a DAG of BackfillOperator and BackfillCheckOperator run with
dag.test() over the demo, in a process of its own (Airflow reads its home
and database at import), checked against DuckDB."""

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime

from backfill import Job

# The DAG file: Airflow 3's dag.test() runs a DAG it has parsed from its
# dags folder, so the DAG lives there and takes the job from the
# environment.
DAG = textwrap.dedent(
    """
    import json, os, sys
    import pendulum
    try:
        from airflow.sdk import DAG
    except ImportError:
        from airflow import DAG
    from backfill.airflow import BackfillCheckOperator, BackfillOperator

    job = os.environ["BACKFILL_TEST_JOB"]
    from airflow.timetables.interval import CronDataIntervalTimetable

    # Data intervals a week long (Airflow 3's plain cron schedules trigger
    # at a time, with an interval of no length).
    weekly = CronDataIntervalTimetable("0 0 * * 0", timezone="UTC")
    with DAG("backfill_demo", schedule=weekly, start_date=pendulum.datetime(2023, 1, 1, tz="UTC"),
             catchup=False) as dag:
        load = BackfillOperator(task_id="load", job=job, parallel=2)
        check = BackfillCheckOperator(task_id="check", job=job, expect="daily")
        load >> check

    if __name__ == "__main__":
        run = dag.test(logical_date=pendulum.parse(sys.argv[1]))
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
        print(json.dumps({"state": str(run.state), "tasks": states,
                          "start": run.data_interval_start.isoformat(),
                          "end": run.data_interval_end.isoformat()}))
    """
)


def run_dag(home, job, when):
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "BACKFILL_TEST_JOB": str(job),
        }
    )
    dags = home / "dags"
    dags.mkdir(exist_ok=True)
    (dags / "backfill_demo.py").write_text(DAG)
    if not (home / "airflow.db").exists():
        subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "airflow"), "db", "migrate"],
            env=env, check=True, capture_output=True, timeout=600,
        )
    out = subprocess.run([sys.executable, str(dags / "backfill_demo.py"), when], env=env,
                         capture_output=True, text=True, timeout=600)
    last = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert last, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(last[-1]), out


def test_a_dag_run_backfills_its_data_interval_and_checks_it(demo, tmp_path):
    home = tmp_path / "airflow"
    home.mkdir()
    got, out = run_dag(home, demo.job, "2023-01-15T00:00:00+00:00")
    assert got["state"].endswith("success"), out.stderr[-4000:]
    assert set(got["tasks"].values()) == {"success"} or all(
        s.endswith("success") for s in got["tasks"].values()
    ), got
    start, end = datetime.fromisoformat(got["start"]), datetime.fromisoformat(got["end"])
    # The interval's chunks, and only they, are committed and equal DuckDB
    # (the weekly interval and the job's 7-day chunks both start on Sundays).
    status = Job.from_toml(demo.job).status_table().to_pylist()
    committed = [(s["from"], s["to"]) for s in status if s["status"] == "committed"]
    assert committed == [(start, end)], (got, committed)
    window = (start.strftime("%Y-%m-%d %H:%M:%S"), end.strftime("%Y-%m-%d %H:%M:%S"))
    assert demo.got() == demo.expected(window=window)


def test_a_failing_chunk_fails_the_task(demo, tmp_path):
    text = open(demo.job).read()
    text = text.replace('action = "quarantine"', 'action = "fail"', 1).replace(
        'check = "transaction_id IS NOT NULL"', 'check = "transaction_id < 0"'
    )
    open(demo.job, "w").write(text)
    home = tmp_path / "airflow"
    home.mkdir()
    got, out = run_dag(home, demo.job, "2023-01-15T00:00:00+00:00")
    assert got["state"].endswith("failed"), got
    assert got["tasks"]["load"].endswith("failed"), got
