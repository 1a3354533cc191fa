"""BigQuery as the warehouse: the tables Kettle published, loaded with load jobs.

- `all` is partitioned by DAY of `finished` (and clustered by `path`); a day is replaced by
  loading its rows into a scratch table, then one multi-statement transaction deletes the
  day (and the same paths in any other day, for builds whose finished time moved) and
  inserts the scratch rows. Idempotent, atomic, no streaming inserts.
- `week` and `day` are replaced whole by a WRITE_TRUNCATE load job.
- Schema and descriptions come from the project's schema.json.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

from ..core.metrics import METRICS, TEST_RESULT_COLUMNS, test_results_select, to_bigquery
from ..core.schema import CONTRACT_COLUMNS, TIMESTAMP_COLUMNS, bigquery_schema
from .warehouse import Warehouse

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class KettleBigQueryResource(dg.ConfigurableResource):
    """A BigQuery client for a project, with Application Default Credentials, or an endpoint and
    anonymous credentials (an emulator in tests). Not dagster-gcp's BigQueryResource: importing
    dagster-gcp (with pandas and the Google API discovery client) cost every run process 72 MB."""

    project: Optional[str] = Field(default=None, description="Project of the jobs; default: the credentials'.")
    location: Optional[str] = Field(default=None, description="Location of the jobs, e.g. US.")
    api_endpoint: Optional[str] = Field(
        default=None, description="Override the BigQuery API endpoint, e.g. http://127.0.0.1:9050 for an emulator."
    )
    anonymous_credentials: bool = Field(default=False, description="Use anonymous credentials (emulators only).")

    @contextlib.contextmanager
    def get_client(self):
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        client = bigquery.Client(
            project=self.project,
            location=self.location,
            credentials=AnonymousCredentials() if self.anonymous_credentials else None,
            client_options=ClientOptions(api_endpoint=self.api_endpoint) if self.api_endpoint else None,
        )
        try:
            yield client
        finally:
            client.close()


def _ts(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_lines(files: list[Path], since_epoch: int | None = None, paths: set[str] | None = None) -> Iterator[bytes]:
    """Staged rows as BigQuery NDJSON: absent values left out, TIMESTAMPs as UTC strings
    (accepted by BigQuery and by emulators that refuse epoch numbers)."""
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=CONTRACT_COLUMNS):
            for rec in batch.to_pylist():
                if since_epoch is not None and (rec["finished"] is None or rec["finished"] < since_epoch):
                    continue
                if paths is not None and rec["path"] not in paths:
                    continue
                row = {k: v for k, v in rec.items() if v is not None}
                row["test"] = [{k: v for k, v in t.items() if v is not None} for t in rec["test"] or []]
                for key in TIMESTAMP_COLUMNS:
                    if key in row:
                        row[key] = _ts(row[key])
                yield json.dumps(row, sort_keys=True).encode() + b"\n"


class BigQueryWarehouse(Warehouse):
    """Kettle's tables in a BigQuery dataset (default `build.all`, `build.week`, `build.day`)."""

    bigquery: KettleBigQueryResource = Field(description="Client settings: project, location, credentials.")
    dataset: str = Field(default="build", description="Dataset holding the tables.")
    table_all: str = Field(default="all")
    table_week: str = Field(default="week")
    table_day: str = Field(default="day")
    job_timeout_seconds: float = Field(default=600.0, description="How long a load or query job may take.")
    request_timeout_seconds: float = Field(default=60.0, description="Timeout of each API request.")
    retry_deadline_seconds: float = Field(default=180.0, description="How long one call may spend retrying.")

    _tables_ready: bool = PrivateAttr(default=False)
    _test_result_days_ready: bool = PrivateAttr(default=False)

    def _retry(self):
        from google.cloud.bigquery import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(self.retry_deadline_seconds)

    def _calls(self) -> dict:
        """Timeout and bounded retry for every API call (Kettle hung on calls with neither)."""
        return {"timeout": self.request_timeout_seconds, "retry": self._retry()}

    def _table(self, name: str) -> str:
        logical = {"all": self.table_all, "week": self.table_week, "day": self.table_day}.get(name, name)
        return f"{self.bigquery.project}.{self.dataset}.{logical}"

    def describe(self, table: str) -> str:
        return f"bigquery:{self._table(table)}"

    def _schema(self):
        from google.cloud import bigquery

        return [bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema()]

    def ensure_tables(self, client) -> None:
        from google.cloud import bigquery

        if self._tables_ready:
            return
        client.create_dataset(f"{self.bigquery.project}.{self.dataset}", exists_ok=True, **self._calls())
        for name in ("all", "week", "day"):
            table = bigquery.Table(self._table(name), schema=self._schema())
            table.description = f"Kettle build rows: {name}"
            if name == "all":
                table.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="finished")
                table.clustering_fields = ["path"]
            client.create_table(table, exists_ok=True, **self._calls())
        self._tables_ready = True

    def _load(self, client, lines: Iterator[bytes], destination: str) -> int:
        """A WRITE_TRUNCATE load job of NDJSON, spooled to disk to bound memory."""
        from google.cloud import bigquery

        with tempfile.TemporaryFile() as spool:
            for line in lines:
                spool.write(line)
            spool.seek(0)
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
                schema=self._schema(),
            )
            job = client.load_table_from_file(
                spool, destination, job_config=config, timeout=self.request_timeout_seconds
            )
            job.result(timeout=self.job_timeout_seconds, retry=self._retry())
            return int(job.output_rows or 0)

    def replace_day(self, day: str, rows_file: Path) -> int:
        if not _DAY.fullmatch(day):
            raise ValueError(f"not a day: {day!r}")
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            scratch = self._table(f"_kettle_load_{day.replace('-', '')}")
            loaded = self._load(client, load_lines([rows_file]), scratch)
            script = f"""
                BEGIN TRANSACTION;
                DELETE FROM `{self._table('all')}`
                  WHERE DATE(finished) = DATE '{day}' OR path IN (SELECT path FROM `{scratch}`);
                INSERT INTO `{self._table('all')}` SELECT * FROM `{scratch}`;
                COMMIT TRANSACTION;
            """
            client.query(script, **self._calls()).result(timeout=self.job_timeout_seconds, retry=self._retry())
            client.delete_table(scratch, not_found_ok=True, **self._calls())
        return loaded

    def replace_window(self, table: str, rows_files: list[Path], since_epoch: int) -> int:
        assert table in ("week", "day"), table
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            return self._load(client, load_lines(rows_files, since_epoch), self._table(table))

    def upsert_builds(self, rows_file: Path, paths: list[str]) -> int:
        table = "all"
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            scratch = self._table(f"_kettle_upsert_{table}_{abs(hash(tuple(sorted(paths)))):x}")
            loaded = self._load(client, load_lines([rows_file], paths=set(paths)), scratch)
            listed = ", ".join(_sql_string(p) for p in sorted(paths))
            script = f"""
                BEGIN TRANSACTION;
                DELETE FROM `{self._table(table)}` WHERE path IN ({listed});
                INSERT INTO `{self._table(table)}` SELECT * FROM `{scratch}`;
                COMMIT TRANSACTION;
            """
            client.query(script, **self._calls()).result(timeout=self.job_timeout_seconds, retry=self._retry())
            client.delete_table(scratch, not_found_ok=True, **self._calls())
            return loaded

    def _bq(self, sql: str) -> str:
        names = {"all": self.table_all, "test_results": "test_results", "test_result_days": "test_result_days",
                 "test_flakiness": "test_flakiness"}
        names.update({m.table: m.table for m in METRICS.values()})
        return to_bigquery(sql, self.bigquery.project, self.dataset, names)

    def _run(self, client, sql: str):
        return client.query(sql, **self._calls()).result(timeout=self.job_timeout_seconds, retry=self._retry())

    def _ensure_test_results(self, client) -> None:
        from google.cloud import bigquery

        types = {"VARCHAR": "STRING", "BIGINT": "INTEGER", "TIMESTAMP": "TIMESTAMP", "DOUBLE": "FLOAT", "BOOLEAN": "BOOLEAN"}
        schema = [
            bigquery.SchemaField(name, types[kind.split()[0]], mode="REQUIRED" if "NOT NULL" in kind else "NULLABLE")
            for name, kind in TEST_RESULT_COLUMNS
        ]
        table = bigquery.Table(self._table("test_results"), schema=schema)
        table.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field="finished")
        table.clustering_fields = ["job", "name"]
        client.create_table(table, exists_ok=True, **self._calls())

    def replace_test_results(self, day: str) -> int:
        if not _DAY.fullmatch(day):
            raise ValueError(f"not a day: {day!r}")
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            self._ensure_test_results(client)
            target, days = f"`{self._table('test_results')}`", f"`{self._table('test_result_days')}`"
            if not self._test_result_days_ready:
                # The day under which test_results holds each build's tests (one row a build),
                # filled from test_results the first time a dataset made before it is used.
                self._run(client, f"CREATE TABLE IF NOT EXISTS {days} AS "
                                  f"SELECT DISTINCT path, DATE(finished) AS day FROM {target}")
                self._test_result_days_ready = True
            the_day = f"DATE '{day}'"
            builds_of_day = f"SELECT path FROM `{self._table('all')}` WHERE DATE(finished) = {the_day}"
            # A build whose finished time moved leaves its old day too. test_result_days finds such
            # builds and their old days, so each delete stays in its partition: asking
            # test_results itself would bill a read of every test's path in the history.
            moved = self._run(client, f"""
                SELECT day, ARRAY_AGG(path ORDER BY path) AS paths FROM {days}
                WHERE day <> {the_day} AND path IN ({builds_of_day}) GROUP BY day ORDER BY day
            """)
            moved_deletes = "".join(
                f"DELETE FROM {target} WHERE DATE(finished) = DATE '{old_day.isoformat()}' "
                f"AND path IN ({', '.join(_sql_string(p) for p in paths)});\n"
                for old_day, paths in moved
            )
            self._run(client, f"""
                BEGIN TRANSACTION;
                DELETE FROM {target} WHERE DATE(finished) = {the_day};
                {moved_deletes}
                DELETE FROM {days} WHERE day = {the_day} OR path IN ({builds_of_day});
                INSERT INTO {days} (path, day) SELECT path, {the_day} FROM ({builds_of_day});
                INSERT INTO {target} {self._bq(test_results_select(day, lateral_unnest=True))};
                COMMIT TRANSACTION;
            """)
            rows = self._run(client, f"SELECT count(*) FROM {target} WHERE DATE(finished) = DATE '{day}'")
            return int(next(iter(rows))[0])

    def query(self, sql: str) -> list[dict]:
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            self._ensure_test_results(client)
            return [dict(r.items()) for r in self._run(client, self._bq(sql))]

    def replace_table(self, table: str, sql: str) -> int:
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            self._ensure_test_results(client)
            self._run(client, f"CREATE OR REPLACE TABLE `{self._table(table)}` AS {self._bq(sql)}")
            return int(next(iter(self._run(client, f"SELECT count(*) FROM `{self._table(table)}`")))[0])

    def count(self, table: str, where: str = "TRUE") -> int:
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            rows = client.query(f"SELECT count(*) AS n FROM `{self._table(table)}` WHERE {where}", **self._calls()).result(
                timeout=self.job_timeout_seconds, retry=self._retry()
            )
            return int(next(iter(rows))[0])

    def contract_findings(self, table: str) -> dict:
        with self.bigquery.get_client() as client:
            self.ensure_tables(client)
            actual = client.get_table(self._table(table), **self._calls()).schema
            expected = self._schema()

            def shape(fields):
                return [(f.name, f.field_type, f.mode, shape(f.fields)) for f in fields]

            diffs = [f"expected {e}, found {a}" for e, a in zip(shape(expected), shape(actual)) if e != a]
            if len(expected) != len(actual):
                diffs.append(f"expected {len(expected)} columns, found {len(actual)}")
            result = client.query(
                f"SELECT count(*) AS n, count(*) - count(DISTINCT path) AS d, "
                f"COUNTIF(tests_failed > tests_run) AS o FROM `{self._table(table)}`",
                **self._calls(),
            ).result(timeout=self.job_timeout_seconds, retry=self._retry())
            n, d, o = next(iter(result))
        return {"schema_differences": diffs, "rows": int(n), "duplicate_rows": int(d), "failed_over_run": int(o)}

    def rows(self, table: str) -> list[dict]:
        """Every row of a table as plain dicts (for tests and spot checks; not for big tables)."""
        with self.bigquery.get_client() as client:
            result = client.query(f"SELECT * FROM `{self._table(table)}` ORDER BY path", **self._calls()).result(
                timeout=self.job_timeout_seconds, retry=self._retry()
            )
            return [dict(r.items()) for r in result]

