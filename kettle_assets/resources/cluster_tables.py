"""Where the failure clusters read from and write to: the warehouse, DuckDB or BigQuery.

A run copies the failed tests of its window from `test_results` into a scratch table, the
*input* (with whether the same test passed at the same job and commit, and the test key the last
run gave each failure); texts are read only where the run needs them: for the failures not
clustered before, and for those whose common tokens must be counted again. Everything else the
run needs is counted from the input by SQL, so that a daily increment handles one day of text,
not the window's. Builds come from `all`. The cluster tables are also the state an incremental
run starts from:

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

import contextlib
import json
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import IO, Iterator, NamedTuple

import pyarrow as pa

from ..core.clustering import Failure
from ..core.triage_output import BuildColumns
from .bigquery import BigQueryWarehouse
from .warehouse import DuckDBWarehouse, Warehouse

CLUSTERS = "failure_clusters"
FAILURES = "failure_cluster_failures"
DAYS = "failure_cluster_days"
TEST_KEYS = "failure_cluster_test_keys"
BATCH_ROWS = 20_000  # rows read into Python at a time (texts included)
# failed tests staged by one statement: fewer make DuckDB scan the window again for each, more
# make its sorts spill (at 1,000,000 failures: 7.2 s in batches of 20,000, 2.2 s of 250,000, 5.2 s in one)
STAGE_ROWS = 250_000
# DuckDB cannot spill a sort whose rows carry long failure texts: a run raises the warehouse's
# lower limit to this for as long as its connection is open.
SORTED_TEXT_MEMORY_LIMIT = "256MB"
# The warehouse's statements use one thread; a run's are the only work while they run (its worker
# processes wait), so they get two: 17.7 -> 13.0 s of statements at 1,000,000 failures.
RUN_THREADS = 2

# Columns (DuckDB types) of the tables; `failure_cluster_failures` and `failure_cluster_days` are made
# from the input by SQL.
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
    SELECT key_hash, any_value(cluster_id) AS cluster_id, CAST(started AS DATE) AS day, count(*) AS failures,
           count(CASE WHEN flaky THEN 1 END) AS flaky_failures, count(DISTINCT path) AS builds,
           count(DISTINCT name) AS tests, count(DISTINCT job) AS jobs
    FROM {failures} GROUP BY key_hash, day"""  # a cluster's id is a function of its key hash


# Schemas of what a run hands the warehouse: the new failures' test keys, the key map (every test
# key in use, with its cluster), and failures to find by group or by id.
ASSIGNED_SCHEMA = pa.schema([("path", pa.string()), ("name", pa.string()), ("seq", pa.int64()),
                             ("local_key_hash", pa.string())])
KEYMAP_SCHEMA = pa.schema([("name", pa.string()), ("local_key_hash", pa.string()), ("local_key", pa.string()),
                           ("key_hash", pa.string()), ("cluster_id", pa.string())])
GROUPS_SCHEMA = pa.schema([("key_hash", pa.string()), ("day", pa.int64())])
IDS_SCHEMA = pa.schema([("path", pa.string()), ("name", pa.string()), ("seq", pa.int64())])


class PreviousKeys(NamedTuple):
    """The last run's keys."""

    local: dict[tuple[str, str], str]  # (test, local key hash) -> local key
    cluster: dict[tuple[str, str], str]  # (test, local key) -> its cluster's key
    hashes: dict[str, str]  # key -> key hash, local and cluster keys
    ids: dict[str, str]  # cluster key -> triage id


@dataclass(frozen=True)
class Window:
    first_day: date
    last_day: date  # inclusive
    excluded_jobs: tuple[str, ...]

    def params(self) -> dict:
        return {"first": self.first_day, "last": self.last_day, "excluded": list(self.excluded_jobs)}


@contextlib.contextmanager
def cluster_tables(warehouse: Warehouse) -> Iterator["ClusterTables"]:
    """The cluster tables of this warehouse, for one run; its scratch tables go with it."""
    if isinstance(warehouse, DuckDBWarehouse):
        tables = DuckDBClusterTables(warehouse)
    elif isinstance(warehouse, BigQueryWarehouse):
        tables = BigQueryClusterTables(warehouse)
    else:
        raise NotImplementedError(f"failure clusters cannot use a {type(warehouse).__name__}")
    try:
        yield tables
    finally:
        tables.close()


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
    """What `failure_clusters` reads and writes, whatever the warehouse. The methods after `stage`
    work on the input it made: test keys of new failures (`add_assigned`), then the key map
    (`set_keys`), then counts and texts, then `replace`."""

    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse

    def close(self) -> None:
        """Drop the run's scratch tables (again: a no-op)."""

    def has_test_results(self) -> bool:
        raise NotImplementedError

    def latest_day(self) -> date | None:
        """The UTC day of the latest failed test's build."""
        raise NotImplementedError

    def unnamed_failures(self, window: Window) -> int:
        """Failed tests without a name: they cannot be clustered by test, so they are counted."""
        raise NotImplementedError

    def stage(self, window: Window, with_previous: bool, all_texts: bool) -> int:
        """Copy the window's failed tests into the input, each with its previous test key (with
        `with_previous`), marked to be tokenised if it has none (or with `all_texts`). Returns how
        many there are."""
        raise NotImplementedError

    def kept_keys(self) -> Iterator[tuple[str, str, int]]:
        """(test, previous local key hash, failures) of the failures that keep their test key."""
        raise NotImplementedError

    def new_failures(self) -> Iterator[Failure]:
        """The failures without a previous test key, with their texts, in stream order (test,
        started, build path, ordinal), read about BATCH_ROWS at a time."""
        raise NotImplementedError

    def add_assigned(self, batch: pa.Table) -> None:
        """Test keys of new failures (ASSIGNED_SCHEMA)."""
        raise NotImplementedError

    def set_keys(self, keymap: pa.Table) -> None:
        """Every test key in use with its cluster (KEYMAP_SCHEMA); the assigned keys join the input."""
        raise NotImplementedError

    def group_counts(self) -> pa.Table:
        """Per cluster (key hash) and UTC day, in that order: failures, and how many of them have
        their text in the input to tokenise."""
        raise NotImplementedError

    def tokenize_groups(self, groups: pa.Table) -> None:
        """Have every failure of these groups (GROUPS_SCHEMA) tokenised, texts included."""
        raise NotImplementedError

    def tally_rows(self, since: int) -> Iterator[tuple]:
        """Per cluster and test: key hash, test, failures, flaky failures, first and last build
        start, (started, build path, ordinal as text) of the first failure, triage's jobs
        ([{"builds": numbers as text descending, "name": job}] of its numbered builds, jobs by
        builds descending then name), and its numbered builds of jobs without ":" started after
        `since` and not. A build number counts once per job, at its latest start."""
        raise NotImplementedError

    def tokenized_texts(self) -> Iterator[tuple[str, int, str]]:
        """(cluster key hash, day, text) of the failures to tokenise, in group order, read about
        BATCH_ROWS at a time."""
        raise NotImplementedError

    def failure_texts(self, ids: pa.Table) -> dict[tuple[str, str, int], str]:
        """The texts of these failures (IDS_SCHEMA)."""
        raise NotImplementedError

    def builds(self, window: Window) -> BuildColumns:
        """The builds started in the window, as triage's `builds` file lists them."""
        return BuildColumns(self._build_table(window))

    def _build_table(self, window: Window) -> pa.Table:
        """BUILD_FIELDS (started as epoch seconds, elapsed truncated to seconds) in (job, number,
        path) order."""
        raise NotImplementedError

    def previous(self) -> PreviousKeys | None:
        """The last run's keys, or None when there is no last run."""
        rows = self._previous_rows()
        if rows is None:
            return None
        previous = PreviousKeys({}, {}, {}, {})
        # Each row comes with its own copy of its cluster's key (and a key is often also a local
        # key): one copy of each, as a run from scratch holds them.
        same: dict[str, str] = {}
        for name, local_hash, local_key, cluster_key, cluster_hash, triage_id in (
                row for batch in rows for row in batch):
            local_key = same.setdefault(local_key, local_key)
            cluster_key = same.setdefault(cluster_key, cluster_key)
            previous.local[(name, local_hash)] = local_key
            previous.cluster[(name, local_key)] = cluster_key
            previous.hashes[local_key] = local_hash
            previous.hashes[cluster_key] = cluster_hash
            previous.ids[cluster_key] = triage_id
        return previous

    def _previous_rows(self) -> Iterator[list[tuple]] | None:
        """Batches of (test, local key hash, local key, cluster key, its hash, its triage id)."""
        raise NotImplementedError

    def replace(self, clusters: pa.Table) -> None:
        """Make the failures (input with the key map) and their per cluster and day counts, and
        replace the four tables with them, `clusters` and the key map, all at once."""
        raise NotImplementedError

    def describe(self, table: str) -> str:
        return self.warehouse.describe(table)


def _failure(path, name, seq, text, started) -> Failure:
    return Failure((path, name, seq), name, path, text, started)


class DuckDBClusterTables(ClusterTables):
    """The cluster tables in the DuckDB warehouse; the run's scratch tables are temporary tables
    of its one connection (which also keeps other writers out, so row ids stay put)."""

    warehouse: DuckDBWarehouse

    _WINDOW = """started >= $first AND started < $last + INTERVAL 1 DAY
                  AND NOT list_contains($excluded, coalesce(job, ''))"""
    # The failed tests of some tests' window rows, by row id; ordinals number each (build, test)'s
    # rows (passes included) by failure text, passes last. Only a (build, test) with more than one
    # row is sorted, its texts fetched by row id: sorting every row by its text took 10 s of 17 at
    # 1,000,000 failures.
    _FAILED = f"""
        WITH w AS (
            SELECT rowid AS rid, path, name, failed, job, number, started, "commit",
                   count(*) OVER (PARTITION BY path, name) AS rows_of_test
            FROM test_results WHERE {_WINDOW} AND name BETWEEN $lo AND $hi
        ), repeated AS (
            SELECT w.rid, row_number() OVER (PARTITION BY w.path, w.name ORDER BY t.failure_text) - 1 AS seq
            FROM w JOIN test_results t ON t.rowid = w.rid WHERE w.rows_of_test > 1
        ), passed AS (
            SELECT DISTINCT job, "commit", name FROM w WHERE NOT failed AND "commit" IS NOT NULL AND "commit" <> 'unknown'
        )
        SELECT w.rid, w.path, w.name, coalesce(r.seq, 0) AS seq, coalesce(w.job, '') AS job, w.number,
               epoch(w.started)::BIGINT AS started, p.job IS NOT NULL AS flaky
        FROM w LEFT JOIN repeated r USING (rid)
        LEFT JOIN passed p ON p.job = w.job AND p."commit" = w."commit" AND p.name = w.name
        WHERE w.failed AND w.started IS NOT NULL
    """
    # The input holds no text: a failure's text is read by row id when it is needed.
    _TEXT = "coalesce(t.failure_text, '')"
    _TEXT_JOIN = "JOIN test_results t ON t.rowid = i.rid"

    def __init__(self, warehouse: DuckDBWarehouse):
        super().__init__(warehouse)
        self._session = None
        self._conn = None

    def _db(self):
        if self._conn is None:
            self._session = self.warehouse.duckdb.get_connection()
            self._conn = self._session.__enter__()
            self._conn.execute(f"SET memory_limit = '{SORTED_TEXT_MEMORY_LIMIT}'")
            self._conn.execute(f"SET threads = {RUN_THREADS}")
            self._conn.execute("SET enable_progress_bar = false")  # its bars would land in the run's stdout
        return self._conn

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)  # temporary tables go with the connection
            self._session = self._conn = None

    def _present(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT table_name FROM information_schema.tables").fetchall()}

    def has_test_results(self) -> bool:
        return "test_results" in self._present()

    def latest_day(self) -> date | None:
        return self._db().execute("SELECT max(started)::DATE FROM test_results WHERE failed").fetchone()[0]

    def unnamed_failures(self, window: Window) -> int:
        return self._db().execute(
            f"SELECT count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NULL",
            window.params()).fetchone()[0]

    def stage(self, window: Window, with_previous: bool, all_texts: bool) -> list[tuple]:
        db = self._db()
        counts = db.execute(
            f"SELECT name, count(*) FROM test_results WHERE {self._WINDOW} AND failed AND name IS NOT NULL "
            "GROUP BY name ORDER BY name", window.params()).fetchall()
        db.execute("""CREATE OR REPLACE TEMP TABLE kc_input (rid BIGINT, path VARCHAR, name VARCHAR, seq BIGINT,
                      job VARCHAR, number BIGINT, started BIGINT, flaky BOOLEAN,
                      local_key_hash VARCHAR, new BOOLEAN, tokenize BOOLEAN)""")
        db.execute("CREATE OR REPLACE TEMP TABLE kc_assigned (path VARCHAR, name VARCHAR, seq BIGINT, "
                   "local_key_hash VARCHAR)")
        previous = with_previous and FAILURES in self._present()
        join = (f"LEFT JOIN {FAILURES} m ON m.path = f.path AND m.name = f.name AND m.seq = f.seq" if previous
                else "LEFT JOIN (SELECT NULL::VARCHAR AS local_key_hash) m ON FALSE")
        wanted = "TRUE" if all_texts else "m.local_key_hash IS NULL"
        for lo, hi, _ in _chunks(counts, STAGE_ROWS):
            db.execute(f"""INSERT INTO kc_input
                SELECT f.rid, f.path, f.name, f.seq, f.job, f.number, f.started, f.flaky, m.local_key_hash,
                       m.local_key_hash IS NULL, {wanted}
                FROM ({self._FAILED}) f {join}""", {**window.params(), "lo": lo, "hi": hi})
        return sum(n for _, n in counts)

    def _read_chunks(self, where: str) -> list[tuple]:
        """Tests of the input in runs of about BATCH_ROWS rows that match `where`."""
        return _chunks(self._db().execute(
            f"SELECT name, count(*) FROM kc_input WHERE {where} GROUP BY name ORDER BY name").fetchall(), BATCH_ROWS)

    def kept_keys(self) -> Iterator[tuple[str, str, int]]:
        yield from self._db().execute(
            "SELECT name, local_key_hash, count(*) FROM kc_input WHERE NOT new GROUP BY ALL").fetchall()

    def new_failures(self) -> Iterator[Failure]:
        for lo, hi, _ in self._read_chunks("new"):
            # A chunk at a time, whole: the consumer writes to the same connection between rows.
            rows = self._db().execute(
                f"SELECT i.path, i.name, i.seq, {self._TEXT}, i.started FROM kc_input i {self._TEXT_JOIN} "
                "WHERE i.new AND i.name BETWEEN $lo AND $hi ORDER BY i.name, i.started, i.path, i.seq",
                {"lo": lo, "hi": hi}).fetchall()
            for row in rows:
                yield _failure(*row)

    def add_assigned(self, batch: pa.Table) -> None:
        db = self._db()
        db.register("incoming", batch)
        db.execute("INSERT INTO kc_assigned SELECT * FROM incoming")
        db.unregister("incoming")

    def set_keys(self, keymap: pa.Table) -> None:
        db = self._db()
        db.register("incoming", keymap)
        db.execute("CREATE OR REPLACE TEMP TABLE kc_keys AS SELECT * FROM incoming")
        db.unregister("incoming")
        # Each failure's cluster joins the input once, for the counts, the texts to tokenise and the tables.
        db.execute("""CREATE OR REPLACE TEMP TABLE kc_keyed AS
            SELECT i.rid, i.path, i.name, i.seq, i.job, i.number, i.started, i.flaky,
                   coalesce(i.local_key_hash, a.local_key_hash) AS local_key_hash, i.new, i.tokenize,
                   k.key_hash, k.cluster_id
            FROM kc_input i
            LEFT JOIN kc_assigned a ON i.new AND a.path = i.path AND a.name = i.name AND a.seq = i.seq
            JOIN kc_keys k ON k.name = i.name AND k.local_key_hash = coalesce(i.local_key_hash, a.local_key_hash)""")
        db.execute("DROP TABLE kc_input")
        db.execute("ALTER TABLE kc_keyed RENAME TO kc_input")

    def group_counts(self) -> pa.Table:
        return self._db().sql("""
            SELECT key_hash, started // 86400 AS day, count(*) AS failures,
                   count(CASE WHEN tokenize THEN 1 END) AS tokenized
            FROM kc_input GROUP BY 1, 2 ORDER BY 1, 2""").to_arrow_table()

    def tokenize_groups(self, groups: pa.Table) -> None:
        db = self._db()
        db.register("incoming", groups)
        db.execute("""UPDATE kc_input SET tokenize = TRUE FROM incoming g
                      WHERE g.key_hash = kc_input.key_hash AND g.day = kc_input.started // 86400""")
        db.unregister("incoming")

    def tally_rows(self, since: int) -> Iterator[tuple]:
        reader = self._db().sql(f"""
            WITH f AS (
                SELECT key_hash, name, path, job, number, started, flaky, seq FROM kc_input
            ), numbered AS (
                SELECT key_hash, name, job, number, max(started) AS started FROM f WHERE number IS NOT NULL GROUP BY ALL
            ), per_job AS (
                SELECT key_hash, name, job, list(CAST(number AS VARCHAR) ORDER BY number DESC) AS builds,
                       count(*) AS n, count(CASE WHEN started > $since AND job NOT LIKE '%:%' THEN 1 END) AS recent,
                       count(CASE WHEN started <= $since AND job NOT LIKE '%:%' THEN 1 END) AS older
                FROM numbered GROUP BY ALL
            ), jobs AS (
                SELECT key_hash, name, list({{'builds': builds, 'name': job}} ORDER BY n DESC, job) AS jobs,
                       sum(recent)::BIGINT AS recent, sum(older)::BIGINT AS older
                FROM per_job GROUP BY ALL
            ), tests AS (
                SELECT key_hash, name, count(*) AS failures, count(CASE WHEN flaky THEN 1 END) AS flaky,
                       min(started) AS first_seen, max(started) AS last_seen,
                       min({{'started': started, 'path': path, 'seq': CAST(seq AS VARCHAR)}}) AS first
                FROM f GROUP BY ALL
            )
            SELECT t.key_hash, t.name, t.failures, t.flaky, t.first_seen, t.last_seen, t.first.started, t.first.path,
                   t.first.seq, coalesce(j.jobs, []), coalesce(j.recent, 0), coalesce(j.older, 0)
            FROM tests t LEFT JOIN jobs j USING (key_hash, name)""", params={"since": since}).to_arrow_reader(BATCH_ROWS)
        for batch in reader:  # Arrow: the nested jobs become Python objects in one step per column
            for hashed, name, failures, flaky, first_seen, last_seen, started, path, seq, jobs, recent, older in zip(
                    *(column.to_pylist() for column in batch.columns)):
                yield hashed, name, failures, flaky, first_seen, last_seen, (started, path, seq), jobs, recent, older

    def tokenized_texts(self) -> Iterator[tuple[str, int, str]]:
        db = self._db()
        db.execute("""CREATE OR REPLACE TEMP TABLE kc_tokenize AS
                       SELECT rid, key_hash, started // 86400 AS day FROM kc_input WHERE tokenize""")
        counts = db.execute("SELECT key_hash, count(*) FROM kc_tokenize GROUP BY 1 ORDER BY 1").fetchall()
        for lo, hi, _ in _chunks(counts, BATCH_ROWS):
            yield from self._db().execute(
                f"SELECT i.key_hash, i.day, {self._TEXT} FROM kc_tokenize i {self._TEXT_JOIN} "
                "WHERE i.key_hash BETWEEN $lo AND $hi ORDER BY 1, 2", {"lo": lo, "hi": hi}).fetchall()

    def failure_texts(self, ids: pa.Table) -> dict[tuple[str, str, int], str]:
        db = self._db()
        db.register("kc_ids", ids)
        try:
            rows = db.execute(f"""SELECT i.path, i.name, i.seq, {self._TEXT}
                                  FROM kc_input i SEMI JOIN kc_ids r ON r.path = i.path AND r.name = i.name AND r.seq = i.seq
                                  {self._TEXT_JOIN}""").fetchall()
        finally:
            db.unregister("kc_ids")
        return {(path, name, seq): text for path, name, seq, text in rows}

    def _build_table(self, window: Window) -> pa.Table:
        self.warehouse.ensure_tables()
        return self._db().sql(
            """SELECT path, job, number, epoch(started)::BIGINT AS started, trunc(elapsed)::BIGINT AS elapsed,
                      tests_run, tests_failed, result, executor
               FROM "all"
               WHERE started >= $first AND started < $last + INTERVAL 1 DAY
                 AND NOT list_contains($excluded, coalesce(job, ''))
               ORDER BY job, number, path""",
            params=window.params(),
        ).to_arrow_table()

    def _previous_rows(self) -> Iterator[list[tuple]] | None:
        if not {CLUSTERS, FAILURES, TEST_KEYS} <= self._present():
            return None
        result = self._db().execute(
            f"SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key, c.key_hash, c.cluster_id "
            f"FROM {TEST_KEYS} k JOIN {CLUSTERS} c USING (key_hash)")
        return iter(lambda: result.fetchmany(BATCH_ROWS), [])

    def replace(self, clusters: pa.Table) -> None:
        db = self._db()
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute(f"""CREATE OR REPLACE TABLE {FAILURES} AS
                SELECT key_hash, cluster_id, path, job, number, name, seq,
                       make_timestamp(started * 1000000) AS started, flaky, local_key_hash
                FROM kc_input""")  # unsorted: sorting 1,000,000 rows was 1.5 s of 2.3
            db.execute(f"CREATE OR REPLACE TABLE {DAYS} AS {DAYS_SELECT.format(failures=FAILURES)} ORDER BY key_hash, day")
            db.register("incoming", clusters)
            db.execute(f"CREATE OR REPLACE TABLE {CLUSTERS} AS SELECT * FROM incoming")
            db.unregister("incoming")
            db.execute(f"CREATE OR REPLACE TABLE {TEST_KEYS} AS "
                       "SELECT name, local_key_hash, local_key, key_hash FROM kc_keys ORDER BY name, local_key_hash")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


_BQ_TYPES = {"VARCHAR": "STRING", "BIGINT": "INTEGER", "TIMESTAMP": "TIMESTAMP", "BOOLEAN": "BOOLEAN", "DATE": "DATE"}
_ARROW_TO_BQ = {pa.string(): "STRING", pa.int64(): "INTEGER"}


def _utc(value):
    """A TIMESTAMP as load jobs take it (emulators refuse epoch numbers; BigQuery takes both)."""
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value


class BigQueryClusterTables(ClusterTables):
    """The cluster tables in the BigQuery dataset. The input is a scratch table clustered by test
    number (with every text: BigQuery reads only the columns a query names), what the run hands
    over is loaded into scratch tables by load jobs, and the new tables are swapped in by one
    multi-statement transaction. Scratch tables start with `_kettle_cluster_`."""

    warehouse: BigQueryWarehouse
    INPUT = "_kettle_cluster_input"  # the window's failed tests, numbered by test
    SCRATCH = "_kettle_cluster_"

    def __init__(self, warehouse: BigQueryWarehouse):
        super().__init__(warehouse)
        self._assigned: IO[bytes] | None = None
        self._scratch: set[str] = set()
        self._closed = False

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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._assigned is not None:
            self._assigned.close()
            self._assigned = None
        wh = self.warehouse
        with wh.bigquery.get_client() as client:
            # Also what a run that was killed left behind.
            left = {t.table_id for t in client.list_tables(f"{wh.bigquery.project}.{wh.dataset}", **wh._calls())
                    if t.table_id.startswith(self.SCRATCH)}
            for name in left | self._scratch:
                client.delete_table(wh._table(name), not_found_ok=True, **wh._calls())
        self._scratch.clear()

    def has_test_results(self) -> bool:
        return "test_results" in self._present()

    def latest_day(self) -> date | None:
        return next(iter(self._query(f"SELECT DATE(max(started)) FROM {self._table('test_results')} WHERE failed")))[0]

    # test_results is partitioned by day of `finished`: the first clause lets BigQuery read only the
    # window's partitions (and those of builds without a finished time).
    _WINDOW = """(finished >= TIMESTAMP(@first) OR finished IS NULL)
                  AND started >= TIMESTAMP(@first) AND started < TIMESTAMP(DATE_ADD(@last, INTERVAL 1 DAY))
                  AND coalesce(job, '') NOT IN UNNEST(@excluded)"""

    def unnamed_failures(self, window: Window) -> int:
        return next(iter(self._query(
            f"SELECT count(*) FROM {self._table('test_results')} WHERE {self._WINDOW} AND failed AND name IS NULL",
            window.params())))[0]

    def stage(self, window: Window, with_previous: bool, all_texts: bool) -> list[tuple]:
        previous = with_previous and FAILURES in self._present()
        join = (f"LEFT JOIN {self._table(FAILURES)} m ON m.path = f.path AND m.name = f.name AND m.seq = f.seq"
                if previous else "")
        local = "m.local_key_hash" if previous else "CAST(NULL AS STRING)"
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
            SELECT f.*, {local} AS local_key_hash, {local} IS NULL AS new,
                   {'TRUE' if all_texts else f'{local} IS NULL'} AS tokenize,
                   DENSE_RANK() OVER (ORDER BY f.name) AS test_no
            FROM f {join}""", window.params())
        self._input = self._table(self.INPUT)
        return next(iter(self._query(f"SELECT count(*) FROM {self._table(self.INPUT)}")))[0]

    def _read_chunks(self, where: str) -> list[tuple]:
        """Test numbers of the input in runs of about BATCH_ROWS rows that match `where`."""
        return _chunks([tuple(r) for r in self._query(
            f"SELECT test_no, count(*) FROM {self._input} WHERE {where} GROUP BY test_no ORDER BY test_no")],
            BATCH_ROWS)

    def kept_keys(self) -> Iterator[tuple[str, str, int]]:
        yield from (tuple(r) for r in self._query(
            f"SELECT name, local_key_hash, count(*) FROM {self._table(self.INPUT)} WHERE NOT new GROUP BY 1, 2",
            page_size=BATCH_ROWS))

    def new_failures(self) -> Iterator[Failure]:
        for lo, hi, _ in self._read_chunks("new"):
            for row in self._query(
                    f"""SELECT path, name, seq, failure_text, started FROM {self._table(self.INPUT)}
                        WHERE new AND test_no BETWEEN @lo AND @hi ORDER BY name, started, path, seq""",
                    {"lo": lo, "hi": hi}, page_size=BATCH_ROWS):
                yield _failure(*row)

    def _load(self, client, spool: IO[bytes], schema: list, destination: str) -> None:
        from google.cloud import bigquery

        spool.seek(0)
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                                        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE, schema=schema)
        wh = self.warehouse
        job = client.load_table_from_file(spool, wh._table(destination), job_config=config,
                                          timeout=wh.request_timeout_seconds)
        job.result(timeout=wh.job_timeout_seconds, retry=wh._retry())

    def _load_arrow(self, table: pa.Table, name: str, spool: IO[bytes] | None = None) -> str:
        """Load rows (an Arrow table, or a spool of them as NDJSON) into scratch table `name`."""
        from google.cloud import bigquery

        schema = [bigquery.SchemaField(f.name, _ARROW_TO_BQ[f.type]) for f in table.schema]
        scratch = self.SCRATCH + name
        own = spool is None
        if own and not table.num_rows:  # a load job refuses an empty file: an empty table instead
            wh = self.warehouse
            with wh.bigquery.get_client() as client:
                client.delete_table(wh._table(scratch), not_found_ok=True, **wh._calls())
                client.create_table(bigquery.Table(wh._table(scratch), schema=schema), **wh._calls())
            self._scratch.add(scratch)
            return self._table(scratch)
        if own:
            spool = tempfile.TemporaryFile()
            _write_ndjson(spool, table)
        try:
            with self.warehouse.bigquery.get_client() as client:
                self._load(client, spool, schema, scratch)
        finally:
            if own:
                spool.close()
        self._scratch.add(scratch)
        return self._table(scratch)

    def add_assigned(self, batch: pa.Table) -> None:
        if self._assigned is None:
            self._assigned = tempfile.TemporaryFile()
        _write_ndjson(self._assigned, batch)

    def set_keys(self, keymap: pa.Table) -> None:
        self._keys = self._load_arrow(keymap, "keys")
        if self._assigned is None:  # no new failure (and a load job refuses an empty file)
            return
        keyed = self.SCRATCH + "keyed"
        assigned = self._load_arrow(ASSIGNED_SCHEMA.empty_table(), "assigned", self._assigned)
        self._query(f"""
            CREATE OR REPLACE TABLE {self._table(keyed)} CLUSTER BY test_no AS
            SELECT i.path, i.name, i.seq, i.failure_text, i.job, i.number, i.started, i.flaky,
                   coalesce(i.local_key_hash, a.local_key_hash) AS local_key_hash, i.new, i.tokenize, i.test_no
            FROM {self._table(self.INPUT)} i LEFT JOIN {assigned} a ON a.path = i.path AND a.name = i.name AND a.seq = i.seq""")
        self._scratch.add(keyed)
        self._input = self._table(keyed)

    @property
    def _keyed(self) -> str:
        return f"{self._input} i JOIN {self._keys} k ON k.name = i.name AND k.local_key_hash = i.local_key_hash"

    def group_counts(self) -> pa.Table:
        rows = [tuple(r) for r in self._query(f"""
            SELECT k.key_hash, DIV(i.started, 86400) AS day, count(*) AS failures, COUNTIF(i.tokenize) AS tokenized
            FROM {self._keyed} GROUP BY 1, 2 ORDER BY 1, 2""", page_size=BATCH_ROWS)]
        names = ["key_hash", "day", "failures", "tokenized"]
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)},
                        schema=pa.schema([(n, pa.int64() if n in ("day", "failures", "tokenized") else pa.string())
                                          for n in names]))

    def tokenize_groups(self, groups: pa.Table) -> None:
        needed = self._load_arrow(groups, "groups")
        retokenized = self.SCRATCH + "retokenized"
        self._query(f"""
            CREATE OR REPLACE TABLE {self._table(retokenized)} CLUSTER BY test_no AS
            SELECT i.path, i.name, i.seq, i.failure_text, i.job, i.number, i.started, i.flaky, i.local_key_hash,
                   i.new, i.tokenize OR g.name IS NOT NULL AS tokenize, i.test_no
            FROM {self._input} i LEFT JOIN (
                SELECT k.name, k.local_key_hash, g.day FROM {needed} g JOIN {self._keys} k ON k.key_hash = g.key_hash
            ) g ON g.name = i.name AND g.local_key_hash = i.local_key_hash AND g.day = DIV(i.started, 86400)""")
        self._scratch.add(retokenized)
        self._input = self._table(retokenized)

    def tally_rows(self, since: int) -> Iterator[tuple]:
        for row in self._query(f"""
                WITH f AS (
                    SELECT k.key_hash, i.name, i.path, i.job, i.number, i.started, i.flaky, i.seq FROM {self._keyed}
                ), numbered AS (
                    SELECT key_hash, name, job, number, max(started) AS started FROM f WHERE number IS NOT NULL
                    GROUP BY 1, 2, 3, 4
                ), per_job AS (
                    SELECT key_hash, name, job, ARRAY_AGG(CAST(number AS STRING) ORDER BY number DESC) AS builds,
                           count(*) AS n, COUNTIF(started > @since AND job NOT LIKE '%:%') AS recent,
                           COUNTIF(started <= @since AND job NOT LIKE '%:%') AS older
                    FROM numbered GROUP BY 1, 2, 3
                ), jobs AS (
                    SELECT key_hash, name, ARRAY_AGG(STRUCT(builds, job AS name) ORDER BY n DESC, job) AS jobs,
                           sum(recent) AS recent, sum(older) AS older
                    FROM per_job GROUP BY 1, 2
                ), tests AS (
                    SELECT key_hash, name, count(*) AS failures, COUNTIF(flaky) AS flaky,
                           min(started) AS first_seen, max(started) AS last_seen,
                           ARRAY_AGG(STRUCT(started, path, CAST(seq AS STRING) AS seq)
                                     ORDER BY started, path, CAST(seq AS STRING) LIMIT 1)[OFFSET(0)] AS first
                    FROM f GROUP BY 1, 2
                )
                SELECT t.key_hash, t.name, t.failures, t.flaky, t.first_seen, t.last_seen, t.first.started AS started,
                       t.first.path AS path, t.first.seq AS seq, j.jobs, coalesce(j.recent, 0) AS recent,
                       coalesce(j.older, 0) AS older
                FROM tests t LEFT JOIN jobs j USING (key_hash, name)""", {"since": since}, page_size=BATCH_ROWS):
            hashed, name, failures, flaky, first_seen, last_seen, started, path, seq, jobs, recent, older = row
            jobs = [{"builds": list(j["builds"]), "name": j["name"]} for j in jobs or []]
            yield hashed, name, failures, flaky, first_seen, last_seen, (started, path, seq), jobs, recent, older

    def tokenized_texts(self) -> Iterator[tuple[str, int, str]]:
        texts = self.SCRATCH + "tokenize"
        self._query(f"""
            CREATE OR REPLACE TABLE {self._table(texts)} CLUSTER BY key_hash AS
            SELECT k.key_hash, DIV(i.started, 86400) AS day, i.failure_text FROM {self._keyed} WHERE i.tokenize""")
        self._scratch.add(texts)
        counts = [tuple(r) for r in self._query(
            f"SELECT key_hash, count(*) FROM {self._table(texts)} GROUP BY 1 ORDER BY 1", page_size=BATCH_ROWS)]
        for lo, hi, _ in _chunks(counts, BATCH_ROWS):
            yield from (tuple(r) for r in self._query(
                f"""SELECT key_hash, day, failure_text FROM {self._table(texts)}
                    WHERE key_hash BETWEEN @lo AND @hi ORDER BY 1, 2""", {"lo": lo, "hi": hi}, page_size=BATCH_ROWS))

    def failure_texts(self, ids: pa.Table) -> dict[tuple[str, str, int], str]:
        wanted = self._load_arrow(ids, "ids")
        return {(r[0], r[1], r[2]): r[3] for r in self._query(
            f"""SELECT i.path, i.name, i.seq, i.failure_text FROM {self._input} i
                JOIN {wanted} w ON w.path = i.path AND w.name = i.name AND w.seq = i.seq""", page_size=BATCH_ROWS)}

    def _build_table(self, window: Window) -> pa.Table:
        return self._query(
            f"""SELECT path, job, number, UNIX_SECONDS(started) AS started, CAST(TRUNC(elapsed) AS INT64) AS elapsed,
                       tests_run, tests_failed, result, executor
                FROM {self._table('all')}
                WHERE (finished >= TIMESTAMP(@first) OR finished IS NULL)
                  AND started >= TIMESTAMP(@first) AND started < TIMESTAMP(DATE_ADD(@last, INTERVAL 1 DAY))
                  AND coalesce(job, '') NOT IN UNNEST(@excluded)
                ORDER BY job, number, path""", window.params(), page_size=BATCH_ROWS
        ).to_arrow(create_bqstorage_client=False)

    def _previous_rows(self) -> Iterator[list[tuple]] | None:
        if not {CLUSTERS, FAILURES, TEST_KEYS} <= self._present():
            return None
        rows = self._query(f"SELECT k.name, k.local_key_hash, k.local_key, c.cluster_key, c.key_hash, c.cluster_id "
                           f"FROM {self._table(TEST_KEYS)} k JOIN {self._table(CLUSTERS)} c USING (key_hash)",
                           page_size=BATCH_ROWS)
        return ([tuple(r) for r in page] for page in rows.pages)

    def _schema(self, table: str):
        from google.cloud import bigquery

        return [bigquery.SchemaField(name, _BQ_TYPES[kind]) for name, kind in COLUMNS[table]]

    def replace(self, clusters: pa.Table) -> None:
        from google.cloud import bigquery

        wh = self.warehouse
        spool = tempfile.TemporaryFile()
        _write_ndjson(spool, clusters)
        scratch = {name: self.SCRATCH + "next_" + name for name in (CLUSTERS, FAILURES)}
        try:
            with wh.bigquery.get_client() as client:
                for name in (CLUSTERS, FAILURES, TEST_KEYS, DAYS):
                    table = bigquery.Table(wh._table(name), schema=self._schema(name))
                    table.clustering_fields = ["key_hash"] if name != TEST_KEYS else ["name"]
                    client.create_table(table, exists_ok=True, **wh._calls())
                self._load(client, spool, self._schema(CLUSTERS), scratch[CLUSTERS])
                self._scratch.update(scratch.values())
            self._query(f"""
                CREATE OR REPLACE TABLE {self._table(scratch[FAILURES])} AS
                SELECT k.key_hash, k.cluster_id, i.path, i.job, i.number, i.name, i.seq,
                       TIMESTAMP_SECONDS(i.started) AS started, i.flaky, i.local_key_hash
                FROM {self._keyed}""")
            days = DAYS_SELECT.format(failures=self._table(scratch[FAILURES]))
            with wh.bigquery.get_client() as client:
                wh._run(client, f"""
                    BEGIN TRANSACTION;
                    DELETE FROM {self._table(CLUSTERS)} WHERE TRUE;
                    INSERT INTO {self._table(CLUSTERS)} SELECT * FROM {self._table(scratch[CLUSTERS])};
                    DELETE FROM {self._table(FAILURES)} WHERE TRUE;
                    INSERT INTO {self._table(FAILURES)} SELECT * FROM {self._table(scratch[FAILURES])};
                    DELETE FROM {self._table(TEST_KEYS)} WHERE TRUE;
                    INSERT INTO {self._table(TEST_KEYS)} SELECT name, local_key_hash, local_key, key_hash FROM {self._keys};
                    DELETE FROM {self._table(DAYS)} WHERE TRUE;
                    INSERT INTO {self._table(DAYS)} {days};
                    COMMIT TRANSACTION;""")
        finally:
            spool.close()


def _write_ndjson(spool: IO[bytes], table: pa.Table) -> None:
    for row in table.to_pylist():
        spool.write(json.dumps({k: _utc(v) for k, v in row.items()}).encode() + b"\n")
