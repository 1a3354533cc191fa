"""Staging: the bounded Parquet files that replace Kettle's one huge SQLite file.

Layout under `<home>/staging/`:
  known/<bucket>.parquet          every build already collected (small: keys and day)
  listing/<bucket>.parquet        candidates of the last listing
  metadata/<day>/<bucket>.parquet started/finished of builds finished that UTC day
  junit/<day>.parquet             parsed tests per build of that day
  rows/<day>.parquet              contract rows of that day
and `<home>/export/` holds Kettle-format NDJSON. Every write replaces its
file atomically, so a crashed run leaves the previous version, never half.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field


# Arrow's default allocator (mimalloc) keeps freed memory per thread; jemalloc hands it back,
# which keeps a sync's peak memory close to the one day it works on.
try:
    pa.set_memory_pool(pa.jemalloc_memory_pool())
except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
    pa.set_memory_pool(pa.system_memory_pool())

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
TEST_TYPE = pa.struct(
    [("name", pa.string()), ("time", pa.float64()), ("failed", pa.bool_()), ("failure_text", pa.string())]
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
# Contract rows as Kettle's JSON holds them: timestamps and elapsed as integer seconds.
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("job", pa.string()),
        ("number", pa.int64()),
        ("started", pa.int64()),
        ("finished", pa.int64()),
        ("elapsed", pa.int64()),
        ("passed", pa.bool_()),
        ("result", pa.string()),
        ("version", pa.string()),
        ("executor", pa.string()),
        ("repo_commit", pa.string()),
        ("repos", pa.string()),
        ("metadata", pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))),
        ("test", pa.list_(TEST_TYPE)),
        ("tests_run", pa.int64()),
        ("tests_failed", pa.int64()),
        # not part of the contract: the exact make_json line (exports are these lines, never
        # re-serialised) and the finished.json the row was built from (rows are rebuilt only
        # when it or the JUnit results change)
        ("_json", pa.string()),
        ("_finished_hash", pa.string()),
    ]
)
PUBLISHED_SCHEMA = pa.schema([("path", pa.string()), ("digest", pa.string())])
CONTRACT_COLUMNS = [f.name for f in ROW_SCHEMA if not f.name.startswith("_")]


class StagingStore(dg.ConfigurableResource):
    """Staging Parquet and exports under one data folder (KETTLE_HOME)."""

    home: str = Field(description="Data folder: staging Parquet, the DuckDB file, exports.")

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

    # --- days waiting to be published -----------------------------------------
    # build_metadata marks the days it changed; build_all clears a mark only if it was made
    # before junit_results read that day's metadata. A crash or a failed load anywhere in
    # between leaves the mark, so the next cycle publishes the day: nothing is marked done
    # that did not land.
    def mark_dirty(self, days: Iterable[str]) -> None:
        folder = self.root / "dirty"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = repr(time.time())
        for day in days:
            (folder / day).write_text(stamp)

    def dirty_days(self) -> dict[str, float]:
        folder = self.root / "dirty"
        if not folder.exists():
            return {}
        out = {}
        for f in folder.iterdir():
            try:
                out[f.name] = float(f.read_text() or 0)
            except (OSError, ValueError):
                out[f.name] = float("inf")
        return dict(sorted(out.items()))

    def clear_dirty(self, day: str, marked_before: float) -> bool:
        f = self.root / "dirty" / day
        try:
            if float(f.read_text() or 0) <= marked_before:
                f.unlink()
                return True
        except (OSError, ValueError):
            pass
        return False

    def record_junit_read(self, day: str, at: float) -> None:
        path = self.root / "junit" / f"{day}.read_at"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repr(at))

    def junit_read_at(self, day: str) -> float:
        try:
            return float((self.root / "junit" / f"{day}.read_at").read_text())
        except (OSError, ValueError):
            return 0.0

    # --- what was last published of each day -------------------------------
    # build_all upserts only the builds whose rows changed since it last published a day to a
    # warehouse; these digests (path -> hash of the row's line) are what it compares against.
    def row_digests(self, day: str) -> dict[str, str]:
        digests = {}
        path = self.rows_file(day)
        if not path.exists():
            return digests
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["path", "_json"]):
            for p, line in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                digests[p] = hashlib.blake2b(line.encode(), digest_size=16).hexdigest()
        return digests

    def _published_file(self, day: str, target: str) -> Path:
        return self.root / "published" / hashlib.sha1(target.encode()).hexdigest()[:16] / f"{day}.parquet"

    def read_published(self, day: str, target: str) -> dict[str, str] | None:
        """The digests last published of `day` to `target` (a warehouse table), None if never."""
        path = self._published_file(day, target)
        if not path.exists():
            return None
        t = pq.read_table(path)
        return dict(zip(t.column("path").to_pylist(), t.column("digest").to_pylist()))

    def write_published(self, day: str, target: str, digests: dict[str, str]) -> None:
        table = pa.table({"path": list(digests), "digest": list(digests.values())}, schema=PUBLISHED_SCHEMA)
        self._write(table, self._published_file(day, target))

    def forget_published(self) -> None:
        """The warehouse is being rebuilt: every day must be replaced whole again."""
        shutil.rmtree(self.root / "published", ignore_errors=True)

    # --- exports ---------------------------------------------------------------
    def row_batches(self, day: str, since_epoch: int | None = None) -> Iterator[pa.RecordBatch]:
        """A day's staged rows (`finished`, `_json`) in small batches, optionally only those
        finished at or after `since_epoch`: exports never hold a whole day in memory."""
        path = self.rows_file(day)
        if not path.exists():
            return
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=["finished", "_json"]):
            if since_epoch is not None:
                batch = batch.filter(pc.fill_null(pc.greater_equal(batch.column(0), since_epoch), False))
            yield batch

    def rows_fingerprint(self, days: list[str], since_epoch: int) -> str:
        """Which rows (and which versions of them) days hold from `since_epoch` on: equal
        fingerprints mean an export of them would come out the same."""
        digest = hashlib.sha1(str(ROW_SCHEMA).encode())
        for day in days:
            path = self.rows_file(day)
            if not path.exists():
                continue
            t = pq.read_table(path, columns=["path", "finished", "_finished_hash"])
            t = t.filter(pc.fill_null(pc.greater_equal(t.column("finished"), since_epoch), False))
            for p, h in zip(t.column("path").to_pylist(), t.column("_finished_hash").to_pylist()):
                digest.update(f"{p}\0{h}\n".encode())
        return digest.hexdigest()

    def read_marker(self, name: str) -> str | None:
        try:
            return (self.root / "markers" / name).read_text()
        except OSError:
            return None

    def write_marker(self, name: str, value: str) -> None:
        path = self.root / "markers" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    def export_batches_without(self, relpath: str, paths: set[str]) -> Iterator[pa.RecordBatch]:
        """The lines of an existing export (as `_json` batches) whose build is not in `paths`."""
        path = self.export_dir / relpath
        if not path.exists():
            return
        kept: list[str] = []
        with gzip.open(path, "rt", encoding="ascii") as f:
            for line in f:
                line = line.rstrip("\n")
                if line and json.loads(line).get("path") not in paths:
                    kept.append(line)
                if len(kept) >= 256:
                    yield pa.record_batch({"_json": pa.array(kept, pa.string())})
                    kept = []
        if kept:
            yield pa.record_batch({"_json": pa.array(kept, pa.string())})

    def write_export(self, relpath: str, batches: Iterable[pa.RecordBatch]) -> tuple[Path, int, int]:
        """Kettle's make_json output (the rows' stored `_json` lines), gzipped, written atomically;
        returns (path, rows, bytes)."""
        path = self.export_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json.gz")
        count = 0
        try:
            with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=5) as gz:
                for batch in batches:
                    for line in batch.column("_json").to_pylist():
                        gz.write(line.encode("ascii"))
                        gz.write(b"\n")
                        count += 1
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path, count, path.stat().st_size

    def pruned_days(self) -> set[str]:
        """Days whose staging retention dropped: their staged rows, if any, are only late
        arrivals, so publishing one must add to the warehouse, never replace the day."""
        folder = self.root / "pruned"
        return {f.name for f in folder.iterdir()} if folder.exists() else set()

    def prune_before(self, day: str) -> list[str]:
        """Retention: drop per-day staging older than `day`, except days not yet published.
        The known index stays, so pruned builds are never fetched again; the warehouse keeps
        their rows (build_all leaves a day without staged rows as it is, and adds late
        builds of a pruned day to it)."""
        keep = set(self.dirty_days())
        dropped = []
        marks = self.root / "pruned"
        marks.mkdir(parents=True, exist_ok=True)
        for folder in (self.root / "rows", self.root / "junit", self.root / "metadata"):
            for f in sorted(folder.glob("*")) if folder.exists() else []:
                stem = f.name.split(".")[0]
                if stem < day and stem not in keep:
                    (marks / stem).touch()  # before anything is deleted: a crash leaves the mark
        for kind in ("junit", "rows"):
            folder = self.root / kind
            for f in sorted(folder.glob("*")) if folder.exists() else []:
                stem = f.name.split(".")[0]
                if stem < day and stem not in keep:
                    f.unlink()
                    dropped.append(f"{kind}/{f.name}")
        for f in sorted((self.root / "published").glob("*/*.parquet")):
            if f.stem < day and f.stem not in keep:
                f.unlink()
        meta = self.root / "metadata"
        for d in sorted(meta.iterdir()) if meta.exists() else []:
            if d.name < day and d.name not in keep:
                shutil.rmtree(d)
                dropped.append(f"metadata/{d.name}")
        return dropped
