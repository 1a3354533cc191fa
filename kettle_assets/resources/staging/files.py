"""The staged Parquet files: per bucket (known builds, the last listing) and per day
(metadata, JUnit results, contract rows), each written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ...core.schema import ROW_SCHEMA, TEST_TYPE

KNOWN_SCHEMA = pa.schema(
    [
        ("listed_as", pa.string()),
        ("path", pa.string()),
        ("job", pa.string()),
        ("state", pa.string()),
        ("day", pa.string()),
        ("finished_hash", pa.string()),
    ]
)
LISTING_SCHEMA = pa.schema([("listed_as", pa.string()), ("job", pa.string()), ("path", pa.string())])
METADATA_SCHEMA = pa.schema(
    [
        ("bucket", pa.string()),
        ("listed_as", pa.string()),
        ("job", pa.string()),
        ("path", pa.string()),
        ("started_json", pa.string()),
        ("finished_json", pa.string()),
        ("finished_hash", pa.string()),
        ("day", pa.string()),
    ]
)
JUNIT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("finished_hash", pa.string()),
        ("tests", pa.list_(TEST_TYPE)),
        ("files", pa.int32()),
        ("bytes", pa.int64()),
        ("malformed", pa.int32()),
        ("too_large", pa.int32()),
    ]
)


class StagedFiles:
    """Paths and atomic reads and writes of the staged files (a part of StagingStore)."""

    home: str

    # --- paths -----------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.home) / "staging"

    @property
    def export_dir(self) -> Path:
        return Path(self.home) / "export"

    def _known_file(self, slug: str) -> Path:
        return self.root / "known" / f"{slug}.parquet"

    def _listing_file(self, slug: str) -> Path:
        return self.root / "listing" / f"{slug}.parquet"

    def _metadata_file(self, day: str, slug: str) -> Path:
        return self.root / "metadata" / day / f"{slug}.parquet"

    def junit_file(self, day: str) -> Path:
        return self.root / "junit" / f"{day}.parquet"

    def rows_file(self, day: str) -> Path:
        return self.root / "rows" / f"{day}.parquet"

    # --- generic ---------------------------------------------------------------
    @staticmethod
    def _write(table: pa.Table, path: Path, row_group_size: int | None = None) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path.stat().st_size

    @staticmethod
    def _read(path: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        if not path.exists():
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pq.read_table(path, columns=columns, schema=schema)

    # --- known builds ----------------------------------------------------------
    def read_known(self, slug: str) -> pa.Table:
        return self._read(self._known_file(slug), KNOWN_SCHEMA)

    def write_known(self, slug: str, table: pa.Table) -> int:
        return self._write(table.cast(KNOWN_SCHEMA), self._known_file(slug))

    # --- listing ---------------------------------------------------------------
    def read_listing(self, slug: str) -> pa.Table:
        return self._read(self._listing_file(slug), LISTING_SCHEMA)

    def write_listing(self, slug: str, records: list[dict]) -> int:
        return self._write(pa.Table.from_pylist(records, schema=LISTING_SCHEMA), self._listing_file(slug))

    # --- build metadata by day -------------------------------------------------
    def metadata_days(self) -> list[str]:
        base = self.root / "metadata"
        return sorted(p.name for p in base.iterdir()) if base.exists() else []

    def read_metadata(self, day: str, slug: str | None = None) -> pa.Table:
        """One bucket's builds of a day, or every bucket's when `slug` is None."""
        if slug is not None:
            return self._read(self._metadata_file(day, slug), METADATA_SCHEMA)
        folder = self.root / "metadata" / day
        files = sorted(folder.glob("*.parquet")) if folder.exists() else []
        if not files:
            return METADATA_SCHEMA.empty_table()
        return pa.concat_tables(pq.read_table(f, schema=METADATA_SCHEMA) for f in files)

    def write_metadata(self, day: str, slug: str, table: pa.Table) -> int:
        path = self._metadata_file(day, slug)
        if table.num_rows == 0:
            path.unlink(missing_ok=True)
            return 0
        return self._write(table.cast(METADATA_SCHEMA), path)

    # --- junit and rows by day -------------------------------------------------
    def read_junit(self, day: str) -> pa.Table:
        return self._read(self.junit_file(day), JUNIT_SCHEMA)

    def write_junit(self, day: str, table: pa.Table) -> int:
        return self._write(table.cast(JUNIT_SCHEMA), self.junit_file(day), row_group_size=256)

    def read_rows(self, day: str, columns: list[str] | None = None) -> pa.Table:
        return self._read(self.rows_file(day), ROW_SCHEMA, columns)

    def write_rows(self, day: str, table: pa.Table) -> int:
        # small row groups: readers (exports, DuckDB, BigQuery load files) stream them with little memory
        return self._write(table.cast(ROW_SCHEMA), self.rows_file(day), row_group_size=256)

    def row_days(self) -> list[str]:
        base = self.root / "rows"
        return sorted(p.stem for p in base.glob("*.parquet")) if base.exists() else []

