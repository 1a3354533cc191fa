"""Where the failure clusters read from and write to: the warehouse, DuckDB or BigQuery.

Reads the failed tests of a window from `test_results` (with whether the same test passed at the
same job and commit) and their builds from `all`; reads and replaces the cluster tables, which
are also the state an incremental run starts from:

- `failure_clusters`: one row per cluster (key, triage id, owner, counts, first/last seen).
- `failure_cluster_failures`: one row per failed test of the window, with its cluster and whether
  it is flaky (the same test passed in the window at the same job and known commit; Kettle's
  `unknown` version is no commit).
- `failure_cluster_days`: per cluster and UTC day, failures, flaky failures, builds, tests, jobs.
- `failure_cluster_test_keys`: each test's own cluster keys (the first clustering level).

Both warehouses replace the four tables together: readers see the last run's tables or the new
ones, never a mix.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import IO, Iterator

import pyarrow as pa

from ..core.clustering import Failure
from ..core.triage_output import Build, FailureFacts
from .bigquery import BigQueryWarehouse
from .warehouse import DuckDBWarehouse, Warehouse

CLUSTERS = "failure_clusters"
FAILURES = "failure_cluster_failures"
DAYS = "failure_cluster_days"
TEST_KEYS = "failure_cluster_test_keys"
BATCH_ROWS = 20_000
# DuckDB cannot spill a sort whose rows carry long failure texts: reading the window's failures
# raises the warehouse's lower limit to this for as long as the read's connection is open.
SORTED_TEXT_MEMORY_LIMIT = "256MB"

# Columns (DuckDB types) of the tables a run writes row by row; `failure_cluster_days` is counted from
# `failure_cluster_failures` by SQL.
COLUMNS = {
    FAILURES: [("key_hash", "VARCHAR"), ("cluster_id", "VARCHAR"), ("path", "VARCHAR"), ("job", "VARCHAR"),
               ("number", "BIGINT"), ("name", "VARCHAR"), ("seq", "BIGINT"), ("started", "TIMESTAMP"),
               ("flaky", "BOOLEAN"), ("local_key_hash", "VARCHAR")],
    CLUSTERS: [("cluster_id", "VARCHAR"), ("key_hash", "VARCHAR"), ("cluster_key", "VARCHAR"), ("text", "VARCHAR"),
               ("owner", "VARCHAR"), ("failures", "BIGINT"), ("flaky_failures", "BIGINT"),
               ("first_seen", "TIMESTAMP"), ("last_seen", "TIMESTAMP"), ("tests", "BIGINT"), ("jobs", "BIGINT"),
               ("in_triage", "BOOLEAN")],
    TEST_KEYS: [("name", "VARCHAR"), ("local_key_hash", "VARCHAR"), ("local_key", "VARCHAR"), ("key_hash", "VARCHAR")],
    DAYS: [("key_hash", "VARCHAR"), ("cluster_id", "VARCHAR"), ("day", "DATE"), ("failures", "BIGINT"),
           ("flaky_failures", "BIGINT"), ("builds", "BIGINT"), ("tests", "BIGINT"), ("jobs", "BIGINT")],
}
# Per cluster and day, from the failures; the same SQL in both warehouses.
DAYS_SELECT = """
    SELECT key_hash, cluster_id, CAST(started AS DATE) AS day, count(*) AS failures,
           count(CASE WHEN flaky THEN 1 END) AS flaky_failures, count(DISTINCT path) AS builds,
           count(DISTINCT name) AS tests, count(DISTINCT job) AS jobs
    FROM {failures} GROUP BY 1, 2, 3"""


@dataclass(frozen=True)
class Window:
    first_day: date
    last_day: date  # inclusive
    excluded_jobs: tuple[str, ...]

    def params(self) -> dict:
        return {"first": self.first_day, "last": self.last_day, "excluded": list(self.excluded_jobs)}


def cluster_tables(warehouse: Warehouse) -> "ClusterTables":
    """The cluster tables of this warehouse."""
    if isinstance(warehouse, DuckDBWarehouse):
        return DuckDBClusterTables(warehouse)
    if isinstance(warehouse, BigQueryWarehouse):
        return BigQueryClusterTables(warehouse)
    raise NotImplementedError(f"failure clusters cannot use a {type(warehouse).__name__}")


def _chunks(counts: list[tuple], rows: int) -> list[tuple]:
    """Consecutive runs of (test, failures) of about `rows` failures each, as (first test, last
    test, failures); a test is never split."""
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


class ClusterTables:
    """What `failure_clusters` reads and writes, whatever the warehouse."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse

    def has_test_results(self) -> bool:
        raise NotImplementedError

    def latest_day(self) -> date | None:
        """The UTC day of the latest failed test's build."""
        raise NotImplementedError

    def test_chunks(self, window: Window, rows: int = BATCH_ROWS) -> list[tuple]:
        """Chunks of tests of about `rows` failures each, (first, last, failures): each is read and
        sorted on its own, so memory follows the chunk, not the window."""
        raise NotImplementedError

    def unnamed_failures(self, window: Window) -> int:
        """Failed tests without a name: they cannot be clustered by test, so they are counted."""
        raise NotImplementedError

    def failures(self, window: Window, chunks: list[tuple], previous: dict[tuple[str, str], str] | None = None,
                 kept_texts: bool = True) -> Iterator[tuple[Failure, FailureFacts]]:
        """The window's failed tests in stream order (test, started, build path, ordinal), each with
        the local key `previous` (keyed by (test, local key hash)) gave it; without `kept_texts`,
        a failure that has one comes without its text (the clustering does not need it)."""
        rows = self._failure_rows(window, chunks, with_previous=bool(previous), kept_texts=kept_texts)
        previous = previous or {}
        for path, name, seq, text, job, number, started, flaky, local_hash in rows:
            kept = previous.get((name, local_hash)) if local_hash is not None else None
            if text is None:
                if kept is None:  # the tables are written together, so this cannot happen short of a bug
                    raise RuntimeError(f"failure ({path}, {name}, {seq}) has a previous key hash but no key")
                text = ""
            yield (Failure((path, name, seq), name, path, text, started, kept),
                   FailureFacts(job=job, number=number, started=started, flaky=flaky))

    def _failure_rows(self, window: Window, chunks: list[tuple], with_previous: bool, kept_texts: bool
                      ) -> Iterator[tuple]:
        """Rows (path, name, seq, text, job, number, started, flaky, previous local key hash); text
        None for a failure with a previous key hash unless `kept_texts`."""
        raise NotImplementedError

    def builds(self, window: Window) -> dict[str, Build]:
        """The builds started in the window, as triage's `builds` file lists them."""
        shared: dict = {}  # one object per distinct job, result and executor
        builds: dict[str, Build] = {}
        for path, job, number, started, elapsed, run, failed, outcome, executor in self._build_rows(window):
            builds[path] = Build(path, shared.setdefault(job, job), number, started, elapsed, run, failed,
                                 shared.setdefault(outcome, outcome), shared.setdefault(executor, executor))
        return builds

    def _build_rows(self, window: Window) -> Iterator[tuple]:
        raise NotImplementedError

    def previous(self) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], str]] | None:
        """The last run's keys: (test, local key hash) -> local key, and (test, local key) -> its
        cluster's key; None when there is no last run."""
        rows = self._previous_rows()
        if rows is None:
            return None
        local, cluster = {}, {}
        # Each row comes with its own copy of its cluster's key (and a key is often also a local
        # key): one copy of each, as a run from scratch holds them.
        same: dict[str, str] = {}
        for name, local_hash, local_key, cluster_key in rows:
            local_key = same.setdefault(local_key, local_key)
            cluster_key = same.setdefault(cluster_key, cluster_key)
            local[(name, local_hash)] = local_key
            cluster[(name, local_key)] = cluster_key
        return local, cluster

    def _previous_rows(self) -> Iterator[tuple] | None:
        raise NotImplementedError

    def start_failures_table(self) -> None:
        """The next `failure_cluster_failures`, filled by `append_failures` and swapped in by `replace`."""
        raise NotImplementedError

    def append_failures(self, batch: pa.Table) -> None:
        """Rows of the next `failure_cluster_failures` (`started` in epoch seconds)."""
        raise NotImplementedError

    def replace(self, clusters: pa.Table, test_keys: pa.Table) -> None:
        """Swap in the failures written since `start_failures_table`, count them per cluster and
        day, and replace the other tables, all at once."""
        raise NotImplementedError

    def describe(self, table: str) -> str:
        return self.warehouse.describe(table)


class DuckDBClusterTables(ClusterTables):
    """The cluster tables in the DuckDB warehouse."""

    warehouse: DuckDBWarehouse

    _WINDOW = """started >= $first AND started < $last + INTERVAL 1 DAY
                  AND NOT list_contains($excluded, coalesce(job, ''))"""
    _FAILED = f"""
        WITH w AS (
            SELECT * FROM test_results WHERE {_WINDOW} AND name BETWEEN $lo AND $hi
        ), passed AS (
            SELECT DISTINCT job, "commit", name FROM w WHERE NOT failed AND "commit" IS NOT NULL AND "commit" <> 'unknown'
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

    def has_test_results(self) -> bool:
        with self.warehouse.duckdb.get_connection() as conn:
            return "test_results" in self._present(conn)

    def latest_day(self) -> date | None:
        with self.warehouse.duckdb.get_connection() as conn:
            return conn.execute("SELECT max(started)::DATE FROM test_results WHERE failed").fetchone()[0]

    def test_chunks(self, window: Window, rows: int = BATCH_ROWS) -> list[tuple]:
        with self.warehouse.duckdb.get_connection() as conn:
            counts = conn.execute(
                f"SELECT name, count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NOT NULL "
                "GROUP BY name ORDER BY name", window.params()).fetchall()
        return _chunks(counts, rows)

    def unnamed_failures(self, window: Window) -> int:
        with self.warehouse.duckdb.get_connection() as conn:
            return conn.execute(f"SELECT count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NULL",
                                window.params()).fetchone()[0]

    def _failure_rows(self, window: Window, chunks: list[tuple], with_previous: bool, kept_texts: bool
                      ) -> Iterator[tuple]:
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute(f"SET memory_limit = '{SORTED_TEXT_MEMORY_LIMIT}'")
            if with_previous and FAILURES in self._present(conn):
                text = "f.failure_text" if kept_texts else \
                    "CASE WHEN m.local_key_hash IS NULL THEN f.failure_text END"
                sql = (f"SELECT f.path, f.name, f.seq, {text}, f.job, f.number, f.started, f.flaky, m.local_key_hash "
                       f"FROM ({self._FAILED}) f LEFT JOIN {FAILURES} m "
                       f"ON m.path = f.path AND m.name = f.name AND m.seq = f.seq {self.ORDER}")
            else:
                sql = f"SELECT f.*, NULL AS local_key_hash FROM ({self._FAILED}) f {self.ORDER}"
            for lo, hi, _ in chunks:
                result = conn.execute(sql, {**window.params(), "lo": lo, "hi": hi})
                while rows := result.fetchmany(BATCH_ROWS):
                    yield from rows

    def start_failures_table(self) -> None:
        columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS[FAILURES])
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute(f"CREATE OR REPLACE TABLE {FAILURES}_next ({columns})")

    def append_failures(self, batch: pa.Table) -> None:
        columns = ", ".join("make_timestamp(started * 1000000)" if name == "started" else name
                            for name, _ in COLUMNS[FAILURES])
        with self.warehouse.duckdb.get_connection() as conn:
            conn.register("incoming", batch)
            conn.execute(f"INSERT INTO {FAILURES}_next SELECT {columns} FROM incoming")
            conn.unregister("incoming")

    def _build_rows(self, window: Window) -> Iterator[tuple]:
        self.warehouse.ensure_tables()
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
                yield from rows

    def _previous_rows(self) -> list[tuple] | None:
        with self.warehouse.duckdb.get_connection() as conn:
            if not {CLUSTERS, FAILURES, TEST_KEYS} <= self._present(conn):
                return None
            return conn.execute(
                f"SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key "
                f"FROM {TEST_KEYS} k JOIN {CLUSTERS} c USING (key_hash)").fetchall()

    def replace(self, clusters: pa.Table, test_keys: pa.Table) -> None:
        with self.warehouse.duckdb.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(f"DROP TABLE IF EXISTS {FAILURES}")
                conn.execute(f"ALTER TABLE {FAILURES}_next RENAME TO {FAILURES}")
                conn.execute(f"CREATE OR REPLACE TABLE {DAYS} AS {DAYS_SELECT.format(failures=FAILURES)} "
                             "ORDER BY key_hash, day")
                for name, table in ((CLUSTERS, clusters), (TEST_KEYS, test_keys)):
                    conn.register("incoming", table)
                    conn.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM incoming")
                    conn.unregister("incoming")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise


_BQ_TYPES = {"VARCHAR": "STRING", "BIGINT": "INTEGER", "TIMESTAMP": "TIMESTAMP", "BOOLEAN": "BOOLEAN", "DATE": "DATE"}


def _utc(value):
    """A TIMESTAMP as load jobs take it (emulators refuse epoch numbers; BigQuery takes both)."""
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value


class BigQueryClusterTables(ClusterTables):
    """The cluster tables in the BigQuery dataset: the window's failures are first copied into a
    scratch table clustered by test, which the run reads twice, chunk by chunk, and the new tables
    are loaded into scratch tables and swapped in by one multi-statement transaction."""

    warehouse: BigQueryWarehouse
    INPUT = "_kettle_cluster_input"  # the window's failed tests, numbered by test

    def __init__(self, warehouse: BigQueryWarehouse):
        super().__init__(warehouse)
        self._spool: IO[bytes] | None = None

    def _table(self, name: str) -> str:
        return f"`{self.warehouse._table(name)}`"

    def _query(self, sql: str, params: dict | None = None, page_size: int | None = None):
        from google.cloud import bigquery

        kinds = {date: "DATE", int: "INT64", str: "STRING"}
        parameters = [
            bigquery.ArrayQueryParameter(name, "STRING", value) if isinstance(value, list)
            else bigquery.ScalarQueryParameter(name, kinds[type(value)], value)
            for name, value in (params or {}).items()
        ]
        wh = self.warehouse
        with wh.bigquery.get_client() as client:
            job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=parameters), **wh._calls())
            return job.result(timeout=wh.job_timeout_seconds, retry=wh._retry(), page_size=page_size)

    def _present(self) -> set[str]:
        wh = self.warehouse
        with wh.bigquery.get_client() as client:
            wh.ensure_tables(client)
            return {t.table_id for t in client.list_tables(f"{wh.bigquery.project}.{wh.dataset}", **wh._calls())}

    def has_test_results(self) -> bool:
        return "test_results" in self._present()

    def latest_day(self) -> date | None:
        return next(iter(self._query(f"SELECT DATE(max(started)) FROM {self._table('test_results')} WHERE failed")))[0]

    # test_results is partitioned by day of `finished`: the first clause lets BigQuery read only the
    # window's partitions (and those of builds without a finished time).
    _WINDOW = """(finished >= TIMESTAMP(@first) OR finished IS NULL)
                  AND started >= TIMESTAMP(@first) AND started < TIMESTAMP(DATE_ADD(@last, INTERVAL 1 DAY))
                  AND coalesce(job, '') NOT IN UNNEST(@excluded)"""

    def test_chunks(self, window: Window, rows: int = BATCH_ROWS) -> list[tuple]:
        """Also copies the window's failures (with their previous local key) into the scratch table."""
        previous = (f"LEFT JOIN {self._table(FAILURES)} m ON m.path = f.path AND m.name = f.name AND m.seq = f.seq"
                    if FAILURES in self._present() else "")
        self._query(f"""
            CREATE OR REPLACE TABLE {self._table(self.INPUT)} CLUSTER BY test_no AS
            WITH w AS (
                SELECT * FROM {self._table('test_results')} WHERE {self._WINDOW} AND name IS NOT NULL
            ), passed AS (
                SELECT DISTINCT job, `commit`, name FROM w WHERE NOT failed AND `commit` IS NOT NULL AND `commit` <> 'unknown'
            ), f AS (
                SELECT w.path, w.name,
                       row_number() OVER (PARTITION BY w.path, w.name ORDER BY w.failure_text NULLS LAST) - 1 AS seq,
                       coalesce(w.failure_text, '') AS failure_text, coalesce(w.job, '') AS job, w.number,
                       UNIX_SECONDS(w.started) AS started, p.job IS NOT NULL AS flaky
                FROM w LEFT JOIN passed p ON p.job = w.job AND p.`commit` = w.`commit` AND p.name = w.name
                WHERE w.failed AND w.started IS NOT NULL
            )
            SELECT f.*, {'m.local_key_hash' if previous else 'CAST(NULL AS STRING) AS local_key_hash'},
                   DENSE_RANK() OVER (ORDER BY f.name) AS test_no
            FROM f {previous}""", window.params())
        counts = [tuple(r) for r in self._query(
            f"SELECT test_no, count(*) FROM {self._table(self.INPUT)} GROUP BY test_no ORDER BY test_no")]
        return _chunks(counts, rows)

    def unnamed_failures(self, window: Window) -> int:
        return next(iter(self._query(
            f"SELECT count(*) FROM {self._table('test_results')} WHERE {self._WINDOW} AND failed AND name IS NULL",
            window.params())))[0]

    def _failure_rows(self, window: Window, chunks: list[tuple], with_previous: bool, kept_texts: bool
                      ) -> Iterator[tuple]:
        text = "failure_text" if kept_texts or not with_previous else \
            "CASE WHEN local_key_hash IS NULL THEN failure_text END"
        local = "local_key_hash" if with_previous else "CAST(NULL AS STRING)"
        for lo, hi, _ in chunks:
            yield from (tuple(r) for r in self._query(
                f"""SELECT path, name, seq, {text}, job, number, started, flaky, {local}
                    FROM {self._table(self.INPUT)} WHERE test_no BETWEEN @lo AND @hi
                    ORDER BY name, started, path, seq""", {"lo": lo, "hi": hi}, page_size=BATCH_ROWS))

    def _build_rows(self, window: Window) -> Iterator[tuple]:
        yield from (tuple(r) for r in self._query(
            f"""SELECT path, job, number, UNIX_SECONDS(started), CAST(TRUNC(elapsed) AS INT64), tests_run,
                       tests_failed, result, executor
                FROM {self._table('all')}
                WHERE (finished >= TIMESTAMP(@first) OR finished IS NULL)
                  AND started >= TIMESTAMP(@first) AND started < TIMESTAMP(DATE_ADD(@last, INTERVAL 1 DAY))
                  AND coalesce(job, '') NOT IN UNNEST(@excluded)""", window.params(), page_size=BATCH_ROWS))

    def _previous_rows(self) -> list[tuple] | None:
        if not {CLUSTERS, FAILURES, TEST_KEYS} <= self._present():
            return None
        return [tuple(r) for r in self._query(
            f"SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key "
            f"FROM {self._table(TEST_KEYS)} k JOIN {self._table(CLUSTERS)} c USING (key_hash)", page_size=BATCH_ROWS)]

    def start_failures_table(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._spool = tempfile.TemporaryFile()

    def append_failures(self, batch: pa.Table) -> None:
        for row in batch.to_pylist():
            row["started"] = _utc(datetime.fromtimestamp(row["started"], tz=timezone.utc))
            self._spool.write(json.dumps(row).encode() + b"\n")

    def _schema(self, table: str):
        from google.cloud import bigquery

        return [bigquery.SchemaField(name, _BQ_TYPES[kind]) for name, kind in COLUMNS[table]]

    def _load(self, client, spool: IO[bytes], table: str, destination: str) -> None:
        from google.cloud import bigquery

        spool.seek(0)
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                                        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                                        schema=self._schema(table))
        wh = self.warehouse
        job = client.load_table_from_file(spool, wh._table(destination), job_config=config,
                                          timeout=wh.request_timeout_seconds)
        job.result(timeout=wh.job_timeout_seconds, retry=wh._retry())

    def replace(self, clusters: pa.Table, test_keys: pa.Table) -> None:
        from google.cloud import bigquery

        wh = self.warehouse
        spools = {FAILURES: self._spool}
        for name, table in ((CLUSTERS, clusters), (TEST_KEYS, test_keys)):
            spools[name] = spool = tempfile.TemporaryFile()
            for row in table.to_pylist():
                spool.write(json.dumps({k: _utc(v) for k, v in row.items()}).encode() + b"\n")
        scratch = {name: f"_kettle_next_{name}" for name in spools}
        try:
            with wh.bigquery.get_client() as client:
                for name in (*spools, DAYS):
                    table = bigquery.Table(wh._table(name), schema=self._schema(name))
                    table.clustering_fields = ["key_hash"] if name != TEST_KEYS else ["name"]
                    client.create_table(table, exists_ok=True, **wh._calls())
                for name, spool in spools.items():
                    self._load(client, spool, name, scratch[name])
                moves = "".join(
                    f"DELETE FROM {self._table(name)} WHERE TRUE;\n"
                    f"INSERT INTO {self._table(name)} SELECT * FROM {self._table(scratch[name])};\n"
                    for name in spools)
                days = DAYS_SELECT.format(failures=self._table(scratch[FAILURES]))
                wh._run(client, f"""
                    BEGIN TRANSACTION;
                    {moves}
                    DELETE FROM {self._table(DAYS)} WHERE TRUE;
                    INSERT INTO {self._table(DAYS)} {days};
                    COMMIT TRANSACTION;""")
                for name in (*scratch.values(), self.INPUT):
                    client.delete_table(wh._table(name), not_found_ok=True, **wh._calls())
        finally:
            for spool in spools.values():
                spool.close()
            self._spool = None
