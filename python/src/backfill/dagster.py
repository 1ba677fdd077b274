"""Dagster: a backfill job as a resource, and a partitioned asset whose
partitions are the job's chunk windows.

    import dagster as dg
    from backfill.dagster import BackfillResource, backfill_asset

    partitions = dg.WeeklyPartitionsDefinition(start_date="2023-01-01", end_date="2024-01-01")
    transactions = backfill_asset("transactions", partitions)
    defs = dg.Definitions(
        assets=[transactions],
        resources={"backfill": BackfillResource(job_path="/jobs/transactions.toml")},
    )

Materializing a partition runs the job's chunks overlapping the
partition's time window (re-running them if they were committed, as
Dagster's re-materialization expects), checkpointed and exactly once;
its stats become the materialization's metadata. A backfill of many
partitions in Dagster runs them through the same job state, so chunks are
never written twice.
"""

# No `from __future__ import annotations`: Dagster reads the context
# parameter's annotation as an object.
from typing import Any, Optional

import dagster as dg

from .job import Job


class BackfillResource(dg.ConfigurableResource):
    """A backfill job file; ``validate_after`` checks each materialized
    window against the source and fails the run on a mismatch."""

    job_path: str
    parallel: Optional[int] = None
    validate_after: bool = False

    def job(self) -> Job:
        return Job.from_toml(self.job_path)

    def run_window(self, start: Any, end: Any, log: Any = None) -> dict:
        job = self.job()

        def progress(e: dict) -> None:
            if log is not None:
                log.info(
                    f"[{e['done']}/{e['total']}] chunk {e['id']} {e['bounds']} {e['state']}: "
                    f"{e['rows_written']} rows written"
                )

        result = job.run(from_=start, to=end, parallel=self.parallel, progress=progress)
        stats = {"job": job.name, **result.stats()}
        if self.validate_after:
            check = job.validate(from_=start, to=end, check=True)
            stats["valid"] = check.ok
        return stats


def backfill_asset(
    name: str,
    partitions_def: dg.TimeWindowPartitionsDefinition,
    *,
    resource_key: str = "backfill",
    **asset_kwargs: Any,
) -> dg.AssetsDefinition:
    """An asset named ``name`` whose partitions (a time-window partitions
    definition) each run the job's chunks in that window."""

    @dg.asset(
        name=name,
        partitions_def=partitions_def,
        required_resource_keys={resource_key},
        **asset_kwargs,
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        window = context.partition_time_window
        resource: BackfillResource = getattr(context.resources, resource_key)
        stats = resource.run_window(window.start.isoformat(), window.end.isoformat(), context.log)
        metadata = {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))}
        return dg.MaterializeResult(metadata=metadata)

    return _asset
