"""The hand-written PySpark classes' names and arguments, over the engine,
each against DuckDB on the demo's source."""

import duckdb

from backfill import (
    FullHistoricalLoad,
    IncrementalBackfillValidator,
    ParallelBackfill,
    SequenceBackfill,
    TimestampBackfill,
)
from conftest import RULES_CASE, query


def count_sum(glob):
    return query(
        f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{glob}', hive_partitioning = true)"
    )[0]


def test_timestamp_backfill_loads_the_range_weekly_and_resumes(demo):
    p = demo.path
    tb = TimestampBackfill(base_dir=p)
    stats = tb.backfill_by_time_range(
        source_path=p / "source",
        target_path=p / "tb",
        state_path=p / "state",
        start_date="2023-02-01",
        end_date="2023-05-01",
        timestamp_column="created_at",
        interval_days=7,
        backfill_id="payments_2023",
    )
    want = query(
        f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{demo.source}') "
        "WHERE created_at >= TIMESTAMP '2023-02-01' AND created_at < TIMESTAMP '2023-05-01'"
    )[0]
    assert count_sum(f"{p}/tb/**/*.parquet") == want
    assert stats["chunks"] == 13 and stats["rows_written"] == want[0]
    assert stats["backfill_id"] == "payments_2023"
    assert (p / "state" / "payments_2023.db").exists()
    # resume=True: nothing left to do; resume=False: every chunk again,
    # the same rows.
    again = tb.backfill_by_time_range(
        source_path=p / "source", target_path=p / "tb", state_path=p / "state",
        start_date="2023-02-01", end_date="2023-05-01", timestamp_column="created_at",
        interval_days=7, backfill_id="payments_2023", resume=True,
    )
    assert again["chunks"] == 0
    over = tb.backfill_by_time_range(
        source_path=p / "source", target_path=p / "tb", state_path=p / "state",
        start_date="2023-02-01", end_date="2023-05-01", timestamp_column="created_at",
        interval_days=7, backfill_id="payments_2023", resume=False,
    )
    assert over["chunks"] == 13
    assert count_sum(f"{p}/tb/**/*.parquet") == want

    # The validator agrees, per group, and finds a deleted file's rows.
    check = IncrementalBackfillValidator(base_dir=p).validate_backfill(
        source_path=p / "source", target_path=p / "tb", date_column="created_at",
        start_date="2023-02-01", end_date="2023-05-01", group_by_columns=["region"],
        state_path=p / "state", backfill_id="payments_2023",
    )
    assert check["is_valid"] and check["difference"] == 0
    per_region = dict(
        query(
            f"SELECT region, count(*) FROM read_parquet('{demo.source}') "
            "WHERE created_at >= TIMESTAMP '2023-02-01' AND created_at < TIMESTAMP '2023-05-01' GROUP BY region"
        )
    )
    assert {g["region"]: g["target_rows"] for g in check["groups"]} == per_region
    victim = sorted((p / "tb").rglob("*.parquet"))[0]
    lost = query(f"SELECT count(*) FROM read_parquet('{victim}')")[0][0]
    victim.unlink()
    check = IncrementalBackfillValidator(base_dir=p).validate_backfill(
        source_path=p / "source", target_path=p / "tb", date_column="created_at",
        start_date="2023-02-01", end_date="2023-05-01", group_by_columns=["region"],
        state_path=p / "state", backfill_id="payments_2023",
    )
    assert not check["is_valid"] and check["difference"] == lost


def test_sequence_backfill_loads_batches_in_order(demo):
    p = demo.path
    # A sequence column: the transaction ids of the demo are integers.
    lo, hi = query(f"SELECT min(transaction_id), max(transaction_id) FROM read_parquet('{demo.source}')")[0]
    end = lo + (hi - lo) // 2
    stats = SequenceBackfill(base_dir=p).backfill_by_sequence_range(
        source_path=p / "source", target_path=p / "seq", state_path=p / "state",
        start_sequence=lo, end_sequence=end, sequence_column="transaction_id",
        batch_size=2_000, backfill_id="by_id",
    )
    want = query(
        f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{demo.source}') "
        f"WHERE transaction_id >= {lo} AND transaction_id < {end}"
    )[0]
    assert count_sum(f"{p}/seq/**/*.parquet") == want
    assert stats["chunks"] == -(-(end - lo) // 2_000)


def test_parallel_backfill_splits_by_a_hash_of_the_column(demo):
    p = demo.path
    pb = ParallelBackfill(base_dir=p, num_partitions=5, partition_column="customer_id")
    stats = pb.backfill_parallel(source_path=p / "source", target_path=p / "par", state_path=p / "state")
    want = query(f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{demo.source}')")[0]
    assert count_sum(f"{p}/par/**/*.parquet") == want
    assert stats["chunks"] == 5


def test_full_historical_load_applies_rules_and_dedup_and_validates(demo):
    p = demo.path
    rules = {
        "non_null_id": "transaction_id IS NOT NULL",
        "positive_amount": "amount > 0",
        "known_status": "status IN ('completed', 'pending', 'failed')",
        "valid_email": "email LIKE '%@%'",
    }
    stats = FullHistoricalLoad(base_dir=p).full_load_with_validation(
        source_path=p / "source", target_path=p / "full", state_path=p / "state",
        validation_rules=rules, dedup_column="transaction_id",
        dedup_order_by=["created_at DESC", "amount DESC"], partition_by=["region"],
    )
    # All of the source (no range), rules, then one row per id.
    want = query(
        "SELECT count(*), round(sum(amount), 2) FROM ("
        "SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY created_at DESC NULLS LAST, amount DESC NULLS LAST) AS rn "
        f"FROM (SELECT *, {RULES_CASE} AS rule FROM read_parquet('{demo.source}')) WHERE rule IS NULL) WHERE rn = 1"
    )[0]
    assert count_sum(f"{p}/full/**/*.parquet") == want
    assert stats["is_valid"] is True
    assert stats["rows_written"] == want[0]
    assert stats["rows_quarantined"] > 0 and stats["duplicates"] > 0
    regions = duckdb.connect().execute(
        f"SELECT count(DISTINCT region) FROM read_parquet('{p}/full/**/*.parquet', hive_partitioning = true)"
    ).fetchone()[0]
    assert regions > 1
