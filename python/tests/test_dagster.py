"""Dagster: each partition of a weekly asset runs the job's chunks of that
week, checked against DuckDB."""

import dagster as dg

from backfill import Job
from backfill.dagster import BackfillResource, backfill_asset


def test_each_partition_materializes_its_chunks_exactly(demo):
    # 2023-01-01 is a Sunday: Dagster's weeks and the job's 7-day chunks
    # from 2023-01-01 line up.
    weeks = dg.WeeklyPartitionsDefinition(start_date="2023-01-01", end_date="2024-01-01")
    asset = backfill_asset("transactions", weeks)
    resource = BackfillResource(job_path=demo.job, validate_after=True)
    instance = dg.DagsterInstance.ephemeral()
    for key in ["2023-01-01", "2023-01-08"]:
        result = dg.materialize(
            [asset], partition_key=key, resources={"backfill": resource}, instance=instance
        )
        assert result.success
        meta = result.asset_materializations_for_node("transactions")[0].metadata
        assert meta["chunks"].value == 1 and meta["valid"].value is True
    status = Job.from_toml(demo.job).status()
    committed = [s for s in status if s["status"] == "committed"]
    assert [s["index"] for s in committed] == [0, 1]
    assert demo.got() == demo.expected(window=("2023-01-01", "2023-01-15"))
    # Materializing a partition again re-runs its chunk and changes nothing.
    again = dg.materialize(
        [asset], partition_key="2023-01-08", resources={"backfill": resource}, instance=instance
    )
    assert again.success
    assert demo.got() == demo.expected(window=("2023-01-01", "2023-01-15"))
