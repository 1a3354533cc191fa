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

from ..core.clustering import Failure
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

    def has_test_results(self) -> bool:
        with self.warehouse.duckdb.get_connection() as conn:
            return "test_results" in self._present(conn)

    def latest_day(self) -> date | None:
        with self.warehouse.duckdb.get_connection() as conn:
            return conn.execute("SELECT max(started)::DATE FROM test_results WHERE failed").fetchone()[0]

    _WINDOW = """started >= $first AND started < $last + INTERVAL 1 DAY
                  AND NOT list_contains($excluded, coalesce(job, ''))"""
    _FAILED = f"""
        WITH w AS (
            SELECT * FROM test_results WHERE {_WINDOW} AND name BETWEEN $lo AND $hi
        ), passed AS (
            SELECT DISTINCT job, "commit", name FROM w WHERE NOT failed AND "commit" IS NOT NULL
        )
        SELECT w.path, w.name,
               row_number() OVER (PARTITION BY w.path, w.name ORDER BY w.failure_text) - 1 AS seq,
               coalesce(w.failure_text, '') AS failure_text, coalesce(w.job, '') AS job, w.number,
               epoch(w.started)::BIGINT AS started, p.job IS NOT NULL AS flaky
        FROM w LEFT JOIN passed p ON p.job = w.job AND p."commit" = w."commit" AND p.name = w.name
        WHERE w.failed AND w.started IS NOT NULL
    """
    ORDER = "ORDER BY f.name, f.started, f.path, f.seq"

    def _present(self, conn) -> set[str]:
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables").fetchall()}

    def test_chunks(self, window: Window, rows: int = BATCH_ROWS) -> list[tuple[str, str, int]]:
        """Ranges of test names (first, last, failures) of about `rows` failures each (a test is
        never split): each is read and sorted on its own, so memory follows the chunk, not the window."""
        with self.warehouse.duckdb.get_connection() as conn:
            counts = conn.execute(
                f"SELECT name, count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NOT NULL "
                "GROUP BY name ORDER BY name", window.params()).fetchall()
        chunks, lo, size = [], None, 0
        for name, n in counts:
            lo = name if lo is None else lo
            size += n
            if size >= rows:
                chunks.append((lo, name, size))
                lo, size = None, 0
        if lo is not None:
            chunks.append((lo, counts[-1][0], size))
        return chunks

    def unnamed_failures(self, window: Window) -> int:
        """Failed tests without a name: they cannot be clustered by test, so they are counted."""
        with self.warehouse.duckdb.get_connection() as conn:
            return conn.execute(f"SELECT count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NULL",
                                window.params()).fetchone()[0]

    def failures(self, window: Window, chunks: list[tuple[str, str, int]], previous: dict[tuple[str, str], str] | None = None
                 ) -> Iterator[tuple[Failure, FailureFacts]]:
        """The window's failed tests in stream order (test, started, build path, ordinal), each with
        the local key `previous` (keyed by (test, local key hash)) gave it."""
        with self.warehouse.duckdb.get_connection() as conn:
            if previous and {FAILURES} <= self._present(conn):
                sql = (f"SELECT f.*, m.local_key_hash FROM ({self._FAILED}) f LEFT JOIN {FAILURES} m "
                       f"ON m.path = f.path AND m.name = f.name AND m.seq = f.seq {self.ORDER}")
            else:
                sql = f"SELECT f.*, NULL AS local_key_hash FROM ({self._FAILED}) f {self.ORDER}"
            previous = previous or {}
            for lo, hi, _ in chunks:
                result = conn.execute(sql, {**window.params(), "lo": lo, "hi": hi})
                while rows := result.fetchmany(BATCH_ROWS):
                    for path, name, seq, text, job, number, started, flaky, local_hash in rows:
                        kept = previous.get((name, local_hash)) if local_hash is not None else None
                        yield (Failure((path, name, seq), name, path, text, started, kept),
                               FailureFacts(job=job, number=number, started=started, flaky=flaky))

    def start_failures_table(self) -> None:
        """The next `failure_cluster_failures`, filled by `append_failures` and swapped in by `replace`."""
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute(f"""CREATE OR REPLACE TABLE {FAILURES}_next (key_hash VARCHAR, cluster_id VARCHAR,
                             path VARCHAR, job VARCHAR, number BIGINT, name VARCHAR, seq BIGINT, started TIMESTAMP,
                             flaky BOOLEAN, local_key_hash VARCHAR)""")

    def append_failures(self, batch: pa.Table) -> None:
        with self.warehouse.duckdb.get_connection() as conn:
            conn.register("incoming", batch)
            conn.execute(f"""INSERT INTO {FAILURES}_next SELECT key_hash, cluster_id, path, job, number, name, seq,
                             make_timestamp(started * 1000000), flaky, local_key_hash FROM incoming""")
            conn.unregister("incoming")

    def builds(self, window: Window) -> dict[str, Build]:
        """The builds started in the window, as triage's `builds` file lists them."""
        self.warehouse.ensure_tables()
        shared: dict = {}  # one object per distinct job, result and executor
        builds: dict[str, Build] = {}
        with self.warehouse.duckdb.get_connection() as conn:
            result = conn.execute(
                """SELECT path, job, number, epoch(started)::BIGINT, trunc(elapsed)::BIGINT, tests_run,
                          tests_failed, result, executor
                   FROM "all"
                   WHERE started >= $first AND started < $last + INTERVAL 1 DAY
                     AND NOT list_contains($excluded, coalesce(job, ''))""",
                window.params(),
            )
            while rows := result.fetchmany(BATCH_ROWS):
                for path, job, number, started, elapsed, run, failed, outcome, executor in rows:
                    builds[path] = Build(path, shared.setdefault(job, job), number, started, elapsed, run, failed,
                                         shared.setdefault(outcome, outcome), shared.setdefault(executor, executor))
        return builds

    def previous(self) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]] | None:
        """The last run's keys: (test, local key hash) -> local key, and (test, local key) -> its
        cluster's key; None when there is no last run."""
        with self.warehouse.duckdb.get_connection() as conn:
            if not {CLUSTERS, FAILURES, TEST_KEYS} <= self._present(conn):
                return None
            local, cluster = {}, {}
            for name, local_hash, local_key, cluster_key in conn.execute(
                f"SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key FROM {TEST_KEYS} k JOIN {CLUSTERS} c USING (key_hash)"
            ).fetchall():
                local[(name, local_hash)] = local_key
                cluster[(name, local_key)] = cluster_key
        return local, cluster

    def replace(self, clusters: pa.Table, test_keys: pa.Table) -> None:
        """Swap in the failures written since `start_failures_table`, count them per cluster and
        day, and replace the other tables, in one transaction."""
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(f"DROP TABLE IF EXISTS {FAILURES}")
                conn.execute(f"ALTER TABLE {FAILURES}_next RENAME TO {FAILURES}")
                conn.execute(
                    f"""CREATE OR REPLACE TABLE {DAYS} AS
                        SELECT key_hash, cluster_id, started::DATE AS day, count(*) AS failures,
                               count(*) FILTER (WHERE flaky) AS flaky_failures, count(DISTINCT path) AS builds,
                               count(DISTINCT name) AS tests, count(DISTINCT job) AS jobs
                        FROM {FAILURES} GROUP BY ALL ORDER BY key_hash, day""")
                for name, table in ((CLUSTERS, clusters), (TEST_KEYS, test_keys)):
                    conn.register("incoming", table)
                    conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
                    conn.unregister("incoming")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def describe(self, table: str) -> str:
        return self.warehouse.describe(table)
