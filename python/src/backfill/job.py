"""The direct API: a job from a TOML file or a dict, and its commands.

Every command runs in the engine in this process, with the GIL released.
Results are dataclasses; ``plan_table()`` and ``status_table()`` are Arrow
tables handed over through the Arrow C stream interface (no copy, no JSON).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from . import _engine, _toml
from ._engine import BackfillError

Bound = Union[str, int, _dt.date, _dt.datetime, None]


class ChunkFailures(BackfillError):
    """Some chunks failed after their retries; the others are committed.

    ``result`` is the run's :class:`RunResult`; run again to retry them.
    """

    def __init__(self, message: str, result: "RunResult"):
        super().__init__(message)
        self.result = result


class ValidationMismatch(BackfillError):
    """``validate`` found the target differs from the source.

    ``result`` is the :class:`ValidationResult` with the mismatches.
    """

    def __init__(self, message: str, result: "ValidationResult"):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class RunResult:
    """What a run did (the CLI's ``run --json``)."""

    job: str
    planned: int
    selected: int
    committed: int
    failed: list[dict]
    left: int
    taken: int
    empty: int
    rows_read: int
    rows_written: int
    rows_quarantined: int
    rows_dropped: int
    duplicates: int
    bytes_read: int
    bytes_written: int
    seconds: float
    interrupted: bool
    rules: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def _of(cls, d: dict) -> "RunResult":
        return cls(
            job=d["job"],
            planned=d["planned"],
            selected=d["selected"],
            committed=d["committed"],
            failed=d["failed"],
            left=d["left"],
            taken=d["taken"],
            empty=d["empty"],
            rows_read=d["rows_read"],
            rows_written=d["rows_written"],
            rows_quarantined=d["rows_quarantined"],
            rows_dropped=d["rows_dropped"],
            duplicates=d["duplicates"],
            bytes_read=d["bytes_read"],
            bytes_written=d["bytes_written"],
            seconds=d["elapsed_secs"],
            interrupted=d["interrupted"],
            rules=d.get("rules", {}),
            raw=d,
        )

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    def stats(self) -> dict:
        """The figures a user prints: chunks, rows, seconds."""
        return {
            "chunks": self.selected,
            "chunks_committed": self.committed,
            "chunks_failed": len(self.failed),
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_quarantined": self.rows_quarantined,
            "rows_dropped": self.rows_dropped,
            "duplicates": self.duplicates,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ValidationResult:
    """The reconciliation of target and source (the CLI's ``validate --json``)."""

    ok: bool
    chunks: list[dict]
    groups: list[dict]
    group_by: list[str]
    null_range_rows: int
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def _of(cls, d: dict) -> "ValidationResult":
        return cls(
            ok=d["ok"],
            chunks=d["chunks"],
            groups=d["groups"],
            group_by=d["group_by"],
            null_range_rows=d["null_range_rows"],
            raw=d,
        )

    @property
    def mismatched_chunks(self) -> list[dict]:
        return [c for c in self.chunks if c.get("problems")]


@dataclass(frozen=True)
class GapsResult:
    """Missing and thin periods of the target (the CLI's ``gaps --json``)."""

    cadence: str
    periods: int
    missing: list[dict]
    thin: list[dict]
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def _of(cls, d: dict) -> "GapsResult":
        return cls(
            cadence=d["cadence"],
            periods=d["periods"],
            missing=d["missing"],
            thin=d["thin"],
            raw=d,
        )

    @property
    def has_gaps(self) -> bool:
        return bool(self.missing or self.thin)


def _bound(v: Bound, name: str) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected a date, a time or an integer, not a bool")
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            # A naive datetime is read in the job's zone, like a naive
            # time in the job file.
            return v.isoformat(sep="T")
        return v.isoformat()
    if isinstance(v, (_dt.date, int, str)):
        return v.isoformat() if isinstance(v, _dt.date) else str(v)
    raise TypeError(f"{name}: expected a date, a time or an integer, not {type(v).__name__}")


class Job:
    """A backfill job: ``Job.from_toml(path)`` or ``Job(dict)``.

    A dict job is the job file's tables as a dict (``{"job": {"name": ...},
    "source": {...}, "range": {...}, "target": {...}}``); relative paths in
    it are relative to ``base_dir`` (default: the current directory).
    """

    def __init__(self, spec: Mapping[str, Any], base_dir: Union[str, os.PathLike, None] = None):
        if isinstance(spec, (str, os.PathLike)):
            raise TypeError("Job(spec) takes a dict; use Job.from_toml(path) for a job file")
        text = _toml.dumps(spec)
        name = str(spec.get("job", {}).get("name", "job")) if isinstance(spec.get("job"), Mapping) else "job"
        where = Path(base_dir) if base_dir is not None else Path.cwd()
        self._inner = _engine.Job.from_text(text, str(where / f"{name}.toml"))
        self._text = text

    @classmethod
    def from_toml(cls, path: Union[str, os.PathLike]) -> "Job":
        job = cls.__new__(cls)
        job._inner = _engine.Job.from_file(str(path))
        job._text = None
        return job

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def state(self) -> str:
        """Where the job's state is: the SQLite file or the PostgreSQL URL (no password)."""
        return self._inner.state

    def toml(self) -> Optional[str]:
        """The TOML a dict job was written as (``None`` for a job file)."""
        return self._text

    def plan(self) -> dict:
        """The chunks (with status and estimates) and, for Kafka, the partitions."""
        return json.loads(self._inner.plan_json())

    def plan_table(self):
        """The plan as a ``pyarrow.Table``."""
        import pyarrow as pa

        return pa.table(self._inner.plan_stream())

    def status(self) -> list[dict]:
        """Each chunk's state: status, attempts, counts of its last commit, last error."""
        return json.loads(self._inner.status_json())

    def status_table(self):
        """The status as a ``pyarrow.Table``."""
        import pyarrow as pa

        return pa.table(self._inner.status_stream())

    def run(
        self,
        from_: Bound = None,
        to: Bound = None,
        parallel: Optional[int] = None,
        *,
        replan: bool = False,
        only_failed: bool = False,
        incremental: bool = False,
        dry_run: bool = False,
        progress: Union[bool, Callable[[dict], Any], None] = None,
        check: bool = True,
    ) -> RunResult:
        """Runs the chunks not yet committed, or those overlapping ``[from_, to)``.

        ``progress``: a callable given a dict per chunk as it ends (``done``,
        ``total``, ``id``, ``bounds``, ``state``, ``rows_read``,
        ``rows_written``, ``error``), or ``True`` for a tqdm bar when tqdm is
        installed. Ctrl-C stops the run cleanly (chunks in flight are rolled
        back) and raises ``KeyboardInterrupt``. With ``check`` (default),
        failed chunks raise :class:`ChunkFailures`.
        """
        callback, close = _progress(progress)
        try:
            text = self._inner.run(
                from_=_bound(from_, "from_"),
                to=_bound(to, "to"),
                parallel=parallel,
                replan=replan,
                only_failed=only_failed,
                incremental=incremental,
                dry_run=dry_run,
                on_chunk=callback,
            )
        finally:
            close()
        result = RunResult._of(json.loads(text))
        if check and result.failed:
            first = result.failed[0]
            raise ChunkFailures(
                f"{len(result.failed)} chunk(s) failed (first: {first['id']} {first['bounds']}: "
                f"{first['error']}); the others are committed, run again to retry",
                result,
            )
        return result

    def validate(
        self,
        group_by: Optional[Sequence[str]] = None,
        from_: Bound = None,
        to: Bound = None,
        chunks: Optional[Sequence[str]] = None,
        *,
        check: bool = False,
    ) -> ValidationResult:
        """Reconciles the target with the source; ``check`` raises
        :class:`ValidationMismatch` when they differ."""
        text = self._inner.validate(
            group_by=list(group_by) if group_by is not None else None,
            from_=_bound(from_, "from_"),
            to=_bound(to, "to"),
            chunks=list(chunks) if chunks is not None else None,
        )
        result = ValidationResult._of(json.loads(text))
        if check and not result.ok:
            raise ValidationMismatch(
                f"the target does not match the source in {len(result.mismatched_chunks)} chunk(s)",
                result,
            )
        return result

    def gaps(self, expect: Optional[str] = None, min_ratio: float = 0.5, fix: bool = False) -> GapsResult:
        """Missing or thin periods of the target; ``fix`` resets the chunks covering them."""
        return GapsResult._of(json.loads(self._inner.gaps(expect=expect, min_ratio=min_ratio, fix=fix)))

    def reset(self, from_: Bound = None, to: Bound = None) -> int:
        """Forgets the chunks overlapping ``[from_, to)`` (all without bounds); returns how many."""
        return self._inner.reset(from_=_bound(from_, "from_"), to=_bound(to, "to"))

    def __repr__(self) -> str:
        return f"Job({self.name!r})"


def _progress(progress):
    """The callback for a run's ``progress`` and what to call when it ends."""
    if progress is None or progress is False:
        return None, lambda: None
    if callable(progress):
        return progress, lambda: None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no bar without tqdm: say so once per run
        import warnings

        warnings.warn("progress=True needs tqdm (pip install tqdm); running without a bar", stacklevel=3)
        return None, lambda: None
    bar = {"bar": None}

    def on_chunk(e: dict) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=e["total"], unit="chunk")
        bar["bar"].update(1)
        bar["bar"].set_postfix(rows=e["rows_written"], last=e["state"])

    def close() -> None:
        if bar["bar"] is not None:
            bar["bar"].close()

    return on_chunk, close
