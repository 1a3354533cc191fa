"""The warehouse tables `all`, `week` and `day`.

Loads are idempotent by construction: a day partition of `all` is deleted
and re-inserted in one transaction (with any row of the same `path` found in
another day, so a build whose finished time moved is never doubled), and the
windows are replaced whole.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from ..core.metrics import TEST_RESULT_COLUMNS, test_results_select
from ..core.schema import duckdb_columns, duckdb_select_staged

TABLES = ("all", "week", "day")
WINDOWS = ("week", "day")


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _select_rows(files: list[Path], where: str = "TRUE") -> str:
    """Staged Parquet rows cast to the contract's types (epoch seconds to TIMESTAMP)."""
    file_list = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
    return f"""
        SELECT {duckdb_select_staged()}
        FROM read_parquet({file_list}, union_by_name = true)
        WHERE {where}
    """


class Warehouse(dg.ConfigurableResource):
    """Base of the warehouses: DuckDB locally, BigQuery in production."""

    def replace_day(self, day: str, rows_file: Path) -> int:
        raise NotImplementedError

    def replace_window(self, table: str, rows_files: list[Path], since_epoch: int) -> int:
        raise NotImplementedError

    def upsert_builds(self, rows_file: Path, paths: list[str]) -> int:
        """Replace just these builds' rows in `all`: delete every row of `paths`, insert those
        of them staged in `rows_file`; returns the rows inserted."""
        raise NotImplementedError

    def count(self, table: str, where: str = "TRUE") -> int:
        raise NotImplementedError

    def contract_findings(self, table: str) -> dict:
        """What the contract checks look at: schema differences, duplicate paths, tests_failed > tests_run."""
        raise NotImplementedError

    def describe(self, table: str) -> str:
        raise NotImplementedError

    def replace_test_results(self, day: str) -> int:
        """Make `test_results` hold exactly the tests of the builds `all` holds for `day`."""
        raise NotImplementedError

    def query(self, sql: str) -> list[dict]:
        """Rows of a query written in DuckDB's dialect (translated where the warehouse needs)."""
        raise NotImplementedError

    def replace_table(self, table: str, sql: str) -> int:
        """`table` replaced by the rows of `sql` (DuckDB's dialect); returns its row count."""
        raise NotImplementedError

    def query_all(self, queries: dict[str, str]) -> dict[str, list[dict]]:
        """Rows of several queries by name (e.g. every set of rows the CI report is made from)."""
        return {name: self.query(sql) for name, sql in queries.items()}


DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file


class CorruptWarehouseError(RuntimeError):
    """The warehouse file exists but is not a DuckDB database."""


def check_duckdb_file(path: Path) -> None:
    """Fail at once on a file that is not a DuckDB database: DuckDB's own error comes only after
    dagster-duckdb has retried the connection for minutes (it takes it for a lock)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        return
    if len(head) < 12 or head[8:12] != DUCKDB_MAGIC:
        raise CorruptWarehouseError(
            f"{path} is not a valid DuckDB database file (no DuckDB header): move it aside and rebuild "
            f"the warehouse from staging (kettle sync --rebuild-warehouse)"
        )


class DuckDBWarehouse(Warehouse):
    """Kettle's BigQuery tables, in a local DuckDB file."""

    duckdb: DuckDBResource = Field(description="The DuckDB database holding the tables.")
    # Tables are created once per run, not before every statement: each connection to the file
    # costs a checkpoint when it closes.
    _tables_ready: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        check_duckdb_file(Path(self.duckdb.database))

    def describe(self, table: str) -> str:
        return f"duckdb:{self.duckdb.database}#{table}"

    def ensure_tables(self) -> None:
        if self._tables_ready:
            return
        with self.duckdb.get_connection() as conn:
            conn.execute(f'CREATE TABLE IF NOT EXISTS "all" ({duckdb_columns()})')
            test_columns = ", ".join(f'"{c}" {t}' for c, t in TEST_RESULT_COLUMNS)
            conn.execute(f"CREATE TABLE IF NOT EXISTS test_results ({test_columns})")
            # The day under which test_results holds each build's tests (one row a build), filled
            # from test_results the first time a warehouse made before it is opened.
            conn.execute(
                "CREATE TABLE IF NOT EXISTS test_result_days AS "
                "SELECT DISTINCT path, CAST(finished AS DATE) AS day FROM test_results"
            )
            for window in WINDOWS:
                exists = conn.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [window]
                ).fetchone()[0]
                if not exists:
                    conn.execute(f'CREATE VIEW "{window}" AS SELECT * FROM "all" WHERE FALSE')
        self._tables_ready = True

    def replace_day(self, day: str, rows_file: Path) -> int:
        """Make `all` hold exactly the staged rows of `day`; returns the rows loaded."""
        staged = f"read_parquet({_sql_str(str(rows_file))})"
        with self._transaction() as conn:
            conn.execute(f"""DELETE FROM "all" WHERE CAST(finished AS DATE) = DATE {_sql_str(day)}
                             OR path IN (SELECT path FROM {staged})""")
            conn.execute(f'INSERT INTO "all" {_select_rows([rows_file])}')
            return int(conn.execute(f"SELECT count(*) FROM {staged}").fetchone()[0])

    @contextmanager
    def _transaction(self, vacuum: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Statements in one transaction: readers see the old rows or the new, never neither.
        With `vacuum`, the commit is checkpointed at once, merging small row groups."""
        self.ensure_tables()
        with self.duckdb.get_connection() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if vacuum:
                self._vacuum(conn)

    def replace_window(self, table: str, rows_files: list[Path], since_epoch: int) -> int:
        """`week`/`day` are views of `all` with the window's start frozen at the refresh: the
        same rows a copied table would hold, without copying (DuckDB would hold the copy in memory)."""
        assert table in WINDOWS, table
        self.ensure_tables()
        with self.duckdb.get_connection() as conn:
            conn.execute(
                f'CREATE OR REPLACE VIEW "{table}" AS SELECT * FROM "all" '
                f"WHERE finished >= make_timestamp({int(since_epoch)}::BIGINT * 1000000)"
            )
            return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])

    def upsert_builds(self, rows_file: Path, paths: list[str]) -> int:
        params = {"paths": paths}
        with self._transaction(vacuum=True) as conn:
            conn.execute('DELETE FROM "all" WHERE list_contains($paths, path)', params)
            conn.execute(f'INSERT INTO "all" {_select_rows([rows_file], "list_contains($paths, path)")}', params)
            return int(conn.execute('SELECT count(*) FROM "all" WHERE list_contains($paths, path)', params).fetchone()[0])

    def _vacuum(self, conn: duckdb.DuckDBPyConnection) -> None:
        """A checkpoint with DuckDB's vacuum, which merges small row groups and drops deleted
        rows. The warehouse runs without it (project.py): a replaced day's rows stay one row group,
        dropped whole when the day is next replaced. An upsert leaves a few builds in a group of
        their own and deleted rows in another, which would pile up as the stream adds builds one
        by one; its vacuum merges them (the first after a cold sync merges every day's group:
        about 3 s and a 315 MB peak at 20,000 builds, then 0.05 s an upsert)."""
        configured = self.duckdb.connection_config.get("max_vacuum_tasks")
        conn.execute("RESET max_vacuum_tasks")
        conn.execute("CHECKPOINT")
        if configured is not None:
            conn.execute(f"SET max_vacuum_tasks = {int(configured)}")

    def contract_findings(self, table: str) -> dict:
        self.ensure_tables()
        with self.duckdb.get_connection() as conn:
            actual = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            conn.execute(f"CREATE OR REPLACE TEMP TABLE kettle_expected ({duckdb_columns()})")
            expected = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'kettle_expected' "
                "ORDER BY ordinal_position"
            ).fetchall()
            rows, dupes, over = conn.execute(
                f'SELECT count(*), count(*) - count(DISTINCT path), count(*) FILTER (WHERE tests_failed > tests_run) FROM "{table}"'
            ).fetchone()
        diffs = [f"expected {e}, found {a}" for e, a in zip(expected, actual) if e != a]
        if len(expected) != len(actual):
            diffs.append(f"expected {len(expected)} columns, found {len(actual)}")
        return {"schema_differences": diffs, "rows": int(rows), "duplicate_rows": int(dupes), "failed_over_run": int(over)}

    def replace_test_results(self, day: str) -> int:
        the_day = f"DATE {_sql_str(day)}"
        on_day = f"CAST(finished AS DATE) = {the_day}"
        builds_of_day = f'SELECT path FROM "all" WHERE {on_day}'
        with self._transaction() as conn:
            # A build whose finished time moved leaves its old day too. test_result_days finds
            # such builds; asking test_results itself would scan every test of the history.
            moved = conn.execute(
                f"SELECT day, list(path) FROM test_result_days WHERE day <> {the_day} "
                f"AND path IN ({builds_of_day}) GROUP BY day"
            ).fetchall()
            conn.execute(f"DELETE FROM test_results WHERE {on_day}")
            for old_day, paths in moved:
                conn.execute(
                    f"DELETE FROM test_results WHERE CAST(finished AS DATE) = DATE '{old_day.isoformat()}' "
                    "AND list_contains($paths, path)",
                    {"paths": paths},
                )
            conn.execute(f"DELETE FROM test_result_days WHERE day = {the_day} OR path IN ({builds_of_day})")
            conn.execute(f"INSERT INTO test_result_days SELECT path, {the_day} FROM ({builds_of_day})")
            conn.execute(f"INSERT INTO test_results {test_results_select(day)}")
            return int(conn.execute(f"SELECT count(*) FROM test_results WHERE {on_day}").fetchone()[0])

    def query(self, sql: str) -> list[dict]:
        self.ensure_tables()
        with self.duckdb.get_connection() as conn:
            cursor = conn.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def query_all(self, queries: dict[str, str]) -> dict[str, list[dict]]:
        """One connection for all: opening a large warehouse file costs more than a small query."""
        self.ensure_tables()
        out = {}
        with self.duckdb.get_connection() as conn:
            for name, sql in queries.items():
                cursor = conn.execute(sql)
                names = [d[0] for d in cursor.description]
                out[name] = [dict(zip(names, row)) for row in cursor.fetchall()]
        return out

    def replace_table(self, table: str, sql: str) -> int:
        with self.duckdb.get_connection() as conn:
            conn.execute(f'CREATE OR REPLACE TABLE "{table}" AS {sql}')
            return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])

    def count(self, table: str, where: str = "TRUE", params: dict | None = None) -> int:
        self.ensure_tables()
        with self.duckdb.get_connection() as conn:
            return int(conn.execute(f'SELECT count(*) FROM "{table}" WHERE {where}', params or {}).fetchone()[0])
