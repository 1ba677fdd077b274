"""Airflow: run a backfill job's chunks for a DAG run's data interval, and
check it afterwards.

    from backfill.airflow import BackfillOperator, BackfillCheckOperator

    load = BackfillOperator(task_id="load", job="/jobs/transactions.toml")
    check = BackfillCheckOperator(task_id="check", job="/jobs/transactions.toml")
    load >> check

``BackfillOperator`` runs the chunks overlapping the run's data interval
(``data_interval_start`` to ``data_interval_end``), so ``airflow dags
backfill`` over a year maps to the job's chunks in that year, each run
checkpointed and exactly once. Failed chunks fail the task (after the
engine's own retries); the run's stats are the task's XCom value.
``BackfillCheckOperator`` fails the task when ``validate`` finds a mismatch
or ``gaps`` finds missing periods in the interval.

A run whose data interval has no length (a manual run, or Airflow 3's
plain cron schedules, which trigger at a time) runs every chunk not yet
committed. For a window per run, schedule with a data-interval timetable
(``CronDataIntervalTimetable``, ``@weekly`` with
``create_cron_data_intervals``) or give ``from_``/``to`` as templates.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Sequence, Union

try:  # Airflow 3
    from airflow.sdk import BaseOperator
except ImportError:  # Airflow 2
    from airflow.models import BaseOperator

from ._engine import BackfillError
from .job import Job

JobRef = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _open(job: JobRef, base_dir: Optional[str]) -> Job:
    if isinstance(job, Mapping):
        return Job(job, base_dir=base_dir)
    return Job.from_toml(job)


def _interval(context: Mapping[str, Any], from_: Any, to: Any, use_data_interval: bool):
    """``[from_, to)`` as given, else the DAG run's data interval."""
    if from_ is not None or to is not None or not use_data_interval:
        return from_, to
    start = context.get("data_interval_start")
    end = context.get("data_interval_end")
    if start is None or end is None:
        return None, None
    # A manual run without an interval has start == end: the whole job.
    if start == end:
        return None, None
    return start.isoformat(), end.isoformat()


def _within(period: Mapping[str, Any], from_: Optional[str], to: Optional[str]) -> bool:
    start = datetime.fromisoformat(period["start"].replace("Z", "+00:00"))
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)

    def at(v: str) -> datetime:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)

    return (from_ is None or start >= at(from_)) and (to is None or start < at(to))


class BackfillOperator(BaseOperator):
    """Runs a backfill job (a TOML file or a dict) for the data interval.

    ``from_``/``to`` override the interval (templated); with
    ``use_data_interval=False`` and neither given, every chunk not yet
    committed runs. Returns the run's stats (chunks, rows, seconds).
    """

    template_fields: Sequence[str] = ("job", "from_", "to")

    def __init__(
        self,
        *,
        job: JobRef,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        use_data_interval: bool = True,
        parallel: Optional[int] = None,
        incremental: bool = False,
        base_dir: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.from_ = from_
        self.to = to
        self.use_data_interval = use_data_interval
        self.parallel = parallel
        self.incremental = incremental
        self.base_dir = base_dir

    def execute(self, context: Any) -> dict:
        job = _open(self.job, self.base_dir)
        from_, to = _interval(context, self.from_, self.to, self.use_data_interval)
        self.log.info("backfill %s: chunks overlapping [%s, %s)", job.name, from_ or "start", to or "end")

        def progress(e: dict) -> None:
            self.log.info(
                "[%s/%s] chunk %s %s %s: %s rows written",
                e["done"], e["total"], e["id"], e["bounds"], e["state"], e["rows_written"],
            )

        # A narrowed run re-runs committed chunks of the interval (as
        # Airflow's own backfills re-run tasks); without bounds, only what
        # is not committed yet.
        result = job.run(
            from_=from_,
            to=to,
            parallel=self.parallel,
            incremental=self.incremental,
            progress=progress,
        )
        return {"job": job.name, "from": from_, "to": to, **result.stats()}


class BackfillCheckOperator(BaseOperator):
    """Fails the task when the target does not match the source in the
    data interval (``validate``) or, with ``expect``, when periods of that
    cadence are missing or thin (``gaps``). Returns what it found."""

    template_fields: Sequence[str] = ("job", "from_", "to")

    def __init__(
        self,
        *,
        job: JobRef,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        use_data_interval: bool = True,
        group_by: Optional[Sequence[str]] = None,
        expect: Optional[str] = None,
        base_dir: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.from_ = from_
        self.to = to
        self.use_data_interval = use_data_interval
        self.group_by = list(group_by) if group_by else None
        self.expect = expect
        self.base_dir = base_dir

    def execute(self, context: Any) -> dict:
        job = _open(self.job, self.base_dir)
        from_, to = _interval(context, self.from_, self.to, self.use_data_interval)
        check = job.validate(group_by=self.group_by, from_=from_, to=to, check=True)
        found = {"job": job.name, "valid": check.ok, "chunks": len(check.chunks)}
        if self.expect:
            gaps = job.gaps(expect=self.expect)
            # gaps covers the whole job; periods outside this run's interval
            # are other runs' business (later ones may not be loaded yet).
            missing = [g["start"] for g in gaps.missing if _within(g, from_, to)]
            thin = [g["start"] for g in gaps.thin if _within(g, from_, to)]
            found["missing"], found["thin"] = missing, thin
            if missing or thin:
                raise BackfillError(
                    f"{job.name}: {len(missing)} missing and {len(thin)} thin "
                    f"{gaps.cadence} period(s) in the target between {from_ or 'start'} and {to or 'end'}"
                )
        return found
