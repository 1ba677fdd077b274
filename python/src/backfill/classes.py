"""The classes data engineers write by hand around PySpark, with the same
names and keyword arguments, each a thin layer over a job: the engine
plans the chunks, checkpoints each one in its state, retries, applies the
rules and dedup, and can prove the result with ``validate``.

No Spark session is needed. Pass ``spark=`` a Spark Connect URL
(``"sc://host:15002"``) or a Spark Connect session to run the chunks on
Spark instead of in this process.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .job import Bound, Job

PathLike = Union[str, os.PathLike]


def _format_of(path: PathLike) -> str:
    """A source's format from its name: a directory or anything else is Parquet."""
    name = str(path).lower().rstrip("/")
    for ext, fmt in ((".csv", "csv"), (".json", "json"), (".ndjson", "json"), (".jsonl", "json")):
        if name.endswith(ext) or name.endswith(ext + ".gz") or name.endswith(ext + ".zst"):
            return fmt
    return "parquet"


def _name(backfill_id: Optional[str], default: str) -> str:
    name = backfill_id or default
    if not re.match(r"^[A-Za-z0-9_.-]+$", name):
        raise ValueError(f"backfill_id: {name!r} may hold only letters, digits, '_', '.' and '-'")
    return name


def _state(state_path: Optional[PathLike], name: str) -> Optional[str]:
    """A state file as given (``*.db``), or ``<name>.db`` inside a folder."""
    if state_path is None:
        return None
    p = Path(state_path)
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return str(p.absolute())
    return str((p / f"{name}.db").absolute())


def _date(v: Bound) -> Union[str, int]:
    if isinstance(v, _dt.datetime):
        return v.isoformat()
    if isinstance(v, _dt.date):
        return v.isoformat()
    if isinstance(v, (str, int)) and not isinstance(v, bool):
        return v
    raise TypeError(f"expected a date, a datetime, a string or an integer, not {type(v).__name__}")


def _engine(spark: Any) -> Optional[dict]:
    """``[engine]`` for a Spark Connect URL or session; ``None``: local."""
    if spark is None:
        return None
    if isinstance(spark, str):
        url = spark
    else:
        # A Spark Connect session knows its URL; a classic SparkSession
        # cannot be driven from here.
        client = getattr(spark, "client", None)
        url = getattr(client, "_url", None) or getattr(spark, "_connect_url", None)
        if not isinstance(url, str):
            conf = getattr(spark, "conf", None)
            url = conf.get("spark.remote", None) if conf is not None else None
        if not isinstance(url, str):
            raise TypeError(
                "spark: pass a Spark Connect URL (\"sc://host:15002\") or a Spark Connect session; "
                "without it the chunks run in this process"
            )
    return {"kind": "spark", "remote": url}


class _Base:
    def __init__(self, spark: Any = None, *, parallelism: int = 2, base_dir: Optional[PathLike] = None):
        self._engine = _engine(spark)
        self.parallelism = parallelism
        self._base = Path(base_dir) if base_dir is not None else Path.cwd()
        self.last_job: Optional[Job] = None

    def _job(
        self,
        name: str,
        source_path: PathLike,
        target_path: PathLike,
        state_path: Optional[PathLike],
        range_: Optional[dict],
        *,
        source_format: Optional[str] = None,
        partition_by: Optional[Sequence[str]] = None,
        transform_sql: Optional[str] = None,
        rules: Optional[Mapping[str, str]] = None,
        dedup_column: Optional[str] = None,
        dedup_order_by: Optional[Sequence[str]] = None,
        sum_columns: Optional[Sequence[str]] = None,
        parallelism: Optional[int] = None,
    ) -> Job:
        spec: dict = {
            "job": {"name": name},
            "source": {
                "format": source_format or _format_of(source_path),
                "path": str(Path(source_path).absolute()),
            },
        }
        if range_ is not None:
            spec["range"] = range_
        if transform_sql:
            spec["transform"] = {"sql": transform_sql}
        if rules:
            spec["rules"] = [
                {"name": n, "check": c, "action": "quarantine"} for n, c in rules.items()
            ]
        if dedup_column:
            spec["dedup"] = {"keys": [dedup_column]}
            if dedup_order_by:
                spec["dedup"]["order_by"] = list(dedup_order_by)
        if sum_columns:
            spec["validate"] = {"sum": list(sum_columns)}
        spec["target"] = {"format": "parquet", "path": str(Path(target_path).absolute())}
        if partition_by:
            spec["target"]["partition_by"] = list(partition_by)
        spec["run"] = {"parallelism": parallelism or self.parallelism}
        state = _state(state_path, name)
        if state is not None:
            spec["state"] = {"path": state}
        if self._engine is not None:
            spec["engine"] = dict(self._engine)
        job = Job(spec, base_dir=self._base)
        self.last_job = job
        return job

    @staticmethod
    def _go(job: Job, resume: bool, **run: Any) -> dict:
        if not resume:
            # Start over: every chunk runs again and replaces its rows.
            job.reset()
        result = job.run(**run)
        return {"backfill_id": job.name, **result.stats()}


class TimestampBackfill(_Base):
    """Backfill a time range in chunks of ``interval_days``."""

    def backfill_by_time_range(
        self,
        source_path: PathLike,
        target_path: PathLike,
        state_path: Optional[PathLike],
        start_date: Bound,
        end_date: Bound,
        timestamp_column: str,
        interval_days: int = 7,
        backfill_id: Optional[str] = None,
        resume: bool = True,
        *,
        source_format: Optional[str] = None,
        partition_by: Optional[Sequence[str]] = None,
        transform_sql: Optional[str] = None,
    ) -> dict:
        """Loads ``[start_date, end_date)`` of ``timestamp_column``; with
        ``resume`` (default) committed chunks are skipped, without it every
        chunk runs again. Returns the run's stats."""
        if interval_days < 1:
            raise ValueError("interval_days: must be at least 1")
        name = _name(backfill_id, "timestamp_backfill")
        job = self._job(
            name,
            source_path,
            target_path,
            state_path,
            {
                "column": timestamp_column,
                "start": _date(start_date),
                "end": _date(end_date),
                "chunk": f"{interval_days}d",
            },
            source_format=source_format,
            partition_by=partition_by,
            transform_sql=transform_sql,
        )
        return self._go(job, resume)


class SequenceBackfill(_Base):
    """Backfill a sequence (an integer column) in batches of ``batch_size``, in order."""

    def backfill_by_sequence_range(
        self,
        source_path: PathLike,
        target_path: PathLike,
        state_path: Optional[PathLike],
        start_sequence: int,
        end_sequence: int,
        sequence_column: str,
        batch_size: int = 100_000,
        backfill_id: Optional[str] = None,
        resume: bool = True,
        *,
        source_format: Optional[str] = None,
        partition_by: Optional[Sequence[str]] = None,
        ordered: bool = True,
    ) -> dict:
        """Loads ``[start_sequence, end_sequence)``; ``ordered`` (default)
        runs the batches strictly in order, as a sequence loader does."""
        if batch_size < 1:
            raise ValueError("batch_size: must be at least 1")
        name = _name(backfill_id, "sequence_backfill")
        job = self._job(
            name,
            source_path,
            target_path,
            state_path,
            {
                "column": sequence_column,
                "start": int(start_sequence),
                "end": int(end_sequence),
                "chunk": int(batch_size),
                "ordered": bool(ordered),
            },
            source_format=source_format,
            partition_by=partition_by,
        )
        return self._go(job, resume)


class ParallelBackfill(_Base):
    """Backfill split by a hash of ``partition_column`` into
    ``num_partitions`` chunks run ``num_partitions`` at a time."""

    def __init__(self, spark: Any = None, *, num_partitions: int = 4, partition_column: Optional[str] = None, **kw: Any):
        super().__init__(spark, **kw)
        self.num_partitions = num_partitions
        self.partition_column = partition_column

    def backfill_parallel(
        self,
        source_path: PathLike,
        target_path: PathLike,
        state_path: Optional[PathLike] = None,
        partition_column: Optional[str] = None,
        num_partitions: Optional[int] = None,
        backfill_id: Optional[str] = None,
        resume: bool = True,
        *,
        source_format: Optional[str] = None,
        partition_by: Optional[Sequence[str]] = None,
    ) -> dict:
        column = partition_column or self.partition_column
        n = num_partitions or self.num_partitions
        if not column:
            raise ValueError("partition_column: the column whose hash splits the work")
        if n < 1:
            raise ValueError("num_partitions: must be at least 1")
        name = _name(backfill_id, "parallel_backfill")
        job = self._job(
            name,
            source_path,
            target_path,
            state_path,
            {"column": column, "buckets": int(n)},
            source_format=source_format,
            partition_by=partition_by,
            parallelism=n,
        )
        return self._go(job, resume)


class FullHistoricalLoad(_Base):
    """A one-time full load with validation rules, dedup and a check."""

    def full_load_with_validation(
        self,
        source_path: PathLike,
        target_path: PathLike,
        state_path: Optional[PathLike] = None,
        validation_rules: Optional[Mapping[str, str]] = None,
        dedup_column: Optional[str] = None,
        partition_by: Optional[Sequence[str]] = None,
        backfill_id: Optional[str] = None,
        resume: bool = True,
        *,
        dedup_order_by: Optional[Sequence[str]] = None,
        source_format: Optional[str] = None,
        validate: bool = True,
    ) -> dict:
        """Loads everything; ``validation_rules`` maps a rule name to a SQL
        condition every kept row meets (the others are quarantined beside
        the target); ``dedup_column`` keeps one row per value. With
        ``validate`` the load is reconciled with the source afterwards
        (``is_valid`` in the result)."""
        name = _name(backfill_id, "full_historical_load")
        job = self._job(
            name,
            source_path,
            target_path,
            state_path,
            None,
            source_format=source_format,
            partition_by=partition_by,
            rules=validation_rules,
            dedup_column=dedup_column,
            dedup_order_by=dedup_order_by,
        )
        stats = self._go(job, resume)
        if validate:
            check = job.validate()
            stats["is_valid"] = check.ok
            stats["mismatched_chunks"] = len(check.mismatched_chunks)
        return stats


class IncrementalBackfillValidator(_Base):
    """Checks a backfilled range against its source, per group."""

    def validate_backfill(
        self,
        source_path: PathLike,
        target_path: PathLike,
        date_column: str,
        start_date: Bound,
        end_date: Bound,
        group_by_columns: Optional[Sequence[str]] = None,
        state_path: Optional[PathLike] = None,
        backfill_id: Optional[str] = None,
        *,
        interval_days: int = 7,
        source_format: Optional[str] = None,
        sum_columns: Optional[Sequence[str]] = None,
    ) -> dict:
        """Reconciles ``[start_date, end_date)`` of the target with the
        source. Returns ``is_valid``, ``source_count``, ``target_count``,
        ``difference`` (source rows the target is missing, after rules and
        dedup; negative: extra rows) and per-group rows (``groups``)."""
        name = _name(backfill_id, "timestamp_backfill")
        job = self._job(
            name,
            source_path,
            target_path,
            state_path,
            {
                "column": date_column,
                "start": _date(start_date),
                "end": _date(end_date),
                "chunk": f"{interval_days}d",
            },
            source_format=source_format,
            sum_columns=sum_columns,
        )
        result = job.validate(group_by=list(group_by_columns or []))
        expected = sum(c["expected_target"] for c in result.chunks)
        target = sum(c["target_rows"] for c in result.chunks)
        source = sum(c["source_rows"] for c in result.chunks)
        groups = [
            {
                **dict(zip(result.group_by, g["group"])),
                "source_rows": g["source"],
                "target_rows": g["target"],
                "expected_rows": g["expected_target"],
                "difference": g["expected_target"] - g["target"],
                "ok": g["ok"],
            }
            for g in result.groups
        ]
        return {
            "is_valid": result.ok,
            "source_count": source,
            "expected_count": expected,
            "target_count": target,
            "difference": expected - target,
            "mismatched_chunks": [c["id"] for c in result.mismatched_chunks],
            "groups": groups,
        }
