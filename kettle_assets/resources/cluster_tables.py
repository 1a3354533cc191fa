"""Where the failure clusters read from and write to: the DuckDB warehouse.

Reads the failed tests of a window from `test_results` (with whether the same test passed at the
same job and commit) and their builds from `all`; reads and replaces the cluster tables, which
are also the state an incremental run starts from:

- `failure_clusters`: one row per cluster (key, triage id, owner, counts, first/last seen).
- `failure_cluster_failures`: one row per failed test of the window, with its cluster.
- `failure_cluster_days`: per cluster and UTC day, failures, flaky failures, builds, tests, jobs.
- `failure_cluster_test_keys`: each test's own cluster keys (the first clustering level).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterator

import pyarrow as pa

from ..core.clustering import Failure, Previous
from ..core.triage_output import Build, FailureFacts
from .warehouse import DuckDBWarehouse, Warehouse

CLUSTERS = "failure_clusters"
FAILURES = "failure_cluster_failures"
DAYS = "failure_cluster_days"
TEST_KEYS = "failure_cluster_test_keys"
BATCH_ROWS = 20_000


@dataclass(frozen=True)
class Window:
    first_day: date
    last_day: date  # inclusive
    excluded_jobs: tuple[str, ...]

    def params(self) -> dict:
        return {"first": self.first_day, "last": self.last_day, "excluded": list(self.excluded_jobs)}


class ClusterTables:
    """The cluster tables of a DuckDB warehouse (BigQuery is not supported yet)."""

    def __init__(self, warehouse: Warehouse):
        if not isinstance(warehouse, DuckDBWarehouse):
            raise NotImplementedError(
                f"failure clusters read and write the DuckDB warehouse only; {type(warehouse).__name__} is not supported yet"
            )
        self.warehouse = warehouse

    def latest_day(self) -> date | None:
        with self.warehouse.duckdb.get_connection() as conn:
            return conn.execute("SELECT max(started)::DATE FROM test_results WHERE failed").fetchone()[0]

    _FAILED = """
        WITH w AS (
            SELECT * FROM test_results
            WHERE started >= $first AND started < $last + INTERVAL 1 DAY
              AND NOT list_contains($excluded, coalesce(job, ''))
        ), passed AS (
            SELECT DISTINCT job, "commit", name FROM w WHERE NOT failed AND "commit" IS NOT NULL
        )
        SELECT w.path, w.name,
               row_number() OVER (PARTITION BY w.path, w.name ORDER BY w.failure_text) - 1 AS seq,
               coalesce(w.failure_text, '') AS failure_text, coalesce(w.job, '') AS job, w.number,
               epoch(w.started)::BIGINT AS started, p.job IS NOT NULL AS flaky
        FROM w LEFT JOIN passed p ON p.job = w.job AND p."commit" = w."commit" AND p.name = w.name
        WHERE w.failed AND w.name IS NOT NULL AND w.started IS NOT NULL
        ORDER BY w.path, w.name, seq
    """

    def failures(self, window: Window) -> Iterator[tuple[Failure, FailureFacts]]:
        """The window's failed tests, in (build path, test, ordinal) order, streamed in batches."""
        with self.warehouse.duckdb.get_connection() as conn:
            result = conn.execute(self._FAILED, window.params())
            while rows := result.fetchmany(BATCH_ROWS):
                for path, name, seq, text, job, number, started, flaky in rows:
                    yield (Failure((path, name, seq), name, path, text),
                           FailureFacts(job=job, number=number, started=started, flaky=flaky))

    def builds(self, window: Window) -> dict[str, Build]:
        """The builds started in the window, as triage's `builds` file lists them."""
        self.warehouse.ensure_tables()
        with self.warehouse.duckdb.get_connection() as conn:
            rows = conn.execute(
                """SELECT path, job, number, epoch(started)::BIGINT, trunc(elapsed)::BIGINT, tests_run,
                          tests_failed, result, executor
                   FROM "all"
                   WHERE started >= $first AND started < $last + INTERVAL 1 DAY
                     AND NOT list_contains($excluded, coalesce(job, ''))""",
                window.params(),
            ).fetchall()
        return {r[0]: Build(*r) for r in rows}

    def previous(self) -> Previous | None:
        """The last run's decisions, or None when there is none."""
        with self.warehouse.duckdb.get_connection() as conn:
            present = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            if not {CLUSTERS, FAILURES, TEST_KEYS} <= present:
                return None
            keys = {}
            previous = Previous()
            for name, local_hash, local_key, cluster_key in conn.execute(
                f"""SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key
                    FROM {TEST_KEYS} k JOIN {CLUSTERS} c USING (key_hash)"""
            ).fetchall():
                keys[(name, local_hash)] = local_key
                previous.global_key[(name, local_key)] = cluster_key
            result = conn.execute(f"SELECT path, name, seq, local_key_hash FROM {FAILURES}")
            while rows := result.fetchmany(BATCH_ROWS):
                for path, name, seq, local_hash in rows:
                    key = keys.get((name, local_hash))
                    if key is not None:
                        previous.local_key[(path, name, seq)] = key
        return previous

    def replace(self, clusters: pa.Table, failures: pa.Table, days: pa.Table, test_keys: pa.Table) -> None:
        """Replace the four tables in one transaction."""
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                for name, table in ((CLUSTERS, clusters), (FAILURES, failures), (DAYS, days), (TEST_KEYS, test_keys)):
                    conn.register("incoming", table)
                    conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
                    conn.unregister("incoming")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def describe(self, table: str) -> str:
        return self.warehouse.describe(table)
