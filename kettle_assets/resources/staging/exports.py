"""Kettle-format exports: the staged rows' `_json` lines, gzipped, streamed batch by batch."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core.schema import ROW_SCHEMA


class Exports:
    """Exports under `<home>/export/` (a part of StagingStore)."""

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

