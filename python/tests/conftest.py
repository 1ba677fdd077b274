"""Fixtures of the Python package's tests: the demo's data and job in a
temporary folder, and DuckDB over them as the oracle."""

import duckdb
import pytest

import backfill

# The demo job's rules, as one CASE naming the first rule a row fails.
RULES_CASE = (
    "CASE WHEN NOT coalesce(transaction_id IS NOT NULL, false) THEN 'non_null_id' "
    "WHEN NOT coalesce(amount > 0, false) THEN 'positive_amount' "
    "WHEN NOT coalesce(status IN ('completed', 'pending', 'failed'), false) THEN 'known_status' "
    "WHEN NOT coalesce(email LIKE '%@%', false) THEN 'valid_email' END"
)
ORDER = "created_at DESC NULLS LAST, amount DESC NULLS LAST"


class Demo:
    def __init__(self, path, rows):
        self.path = path
        self.job = backfill.demo(str(path), rows)
        self.source = f"{path}/source/*.parquet"

    def target(self, sub="warehouse/transactions"):
        return f"{self.path}/{sub}/**/*.parquet"

    def expected(self, where="TRUE", dedup=True, window=None):
        """DuckDB's answer for the demo job: rows in range passing the
        rules, one per transaction_id (the latest over the whole range), as
        (count, sum); `window` (from, to) keeps the winners in it, the part
        of the target its chunks hold."""
        ruled = (
            f"SELECT *, {RULES_CASE} AS rule FROM read_parquet('{self.source}') "
            "WHERE created_at >= TIMESTAMP '2023-01-01' AND created_at < TIMESTAMP '2024-01-01' "
            f"AND {where}"
        )
        if not dedup:
            sql = f"SELECT count(*), round(sum(amount), 2) FROM ({ruled}) WHERE rule IS NULL"
        else:
            kept = "TRUE"
            if window is not None:
                kept = f"created_at >= TIMESTAMP '{window[0]}' AND created_at < TIMESTAMP '{window[1]}'"
            sql = (
                "SELECT count(*), round(sum(amount), 2) FROM ("
                f"SELECT *, row_number() OVER (PARTITION BY transaction_id ORDER BY {ORDER}) AS rn "
                f"FROM ({ruled}) WHERE rule IS NULL) WHERE rn = 1 AND {kept}"
            )
        return query(sql)[0]

    def got(self, sub="warehouse/transactions"):
        return query(
            f"SELECT count(*), round(sum(amount), 2) FROM read_parquet('{self.target(sub)}', hive_partitioning = true)"
        )[0]


def query(sql):
    return duckdb.connect().execute(sql).fetchall()


@pytest.fixture
def demo(tmp_path):
    return Demo(tmp_path, 20_000)
