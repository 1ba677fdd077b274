"""backfill for Python: the same engine as the ``backfill`` command, in
this process.

    from backfill import Job
    job = Job.from_toml("backfill.toml")
    job.run(parallel=4)
    assert job.validate().ok

or the classes written by hand around PySpark, same names and arguments:

    from backfill import TimestampBackfill
    TimestampBackfill().backfill_by_time_range(
        source_path="source/", target_path="warehouse/t", state_path=".state",
        start_date="2023-01-01", end_date="2024-01-01",
        timestamp_column="created_at", interval_days=7)

Integrations: ``backfill.airflow`` (an operator and a sensor) and
``backfill.dagster`` (a resource and partitioned assets).
"""

from ._engine import (
    BackfillError,
    SourceError,
    SpecError,
    StateError,
    TargetError,
    UsageError,
    __version__,
    demo,
)
from .classes import (
    FullHistoricalLoad,
    IncrementalBackfillValidator,
    ParallelBackfill,
    SequenceBackfill,
    TimestampBackfill,
)
from .job import (
    ChunkFailures,
    GapsResult,
    Job,
    RunResult,
    ValidationMismatch,
    ValidationResult,
)

__all__ = [
    "BackfillError",
    "ChunkFailures",
    "FullHistoricalLoad",
    "GapsResult",
    "IncrementalBackfillValidator",
    "Job",
    "ParallelBackfill",
    "RunResult",
    "SequenceBackfill",
    "SourceError",
    "SpecError",
    "StateError",
    "TargetError",
    "TimestampBackfill",
    "UsageError",
    "ValidationMismatch",
    "ValidationResult",
    "__version__",
    "demo",
]
