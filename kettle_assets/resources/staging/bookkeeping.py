"""Publish bookkeeping: which days wait to be published, what was last published of each,
which were pruned, and small markers: the state that keeps "nothing marked done that did not
land" true across crashes."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

PUBLISHED_SCHEMA = pa.schema([("path", pa.string()), ("digest", pa.string())])


class PublishBookkeeping:
    """Marks and digests under `<home>/staging/` (a part of StagingStore)."""

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

    def read_marker(self, name: str) -> str | None:
        try:
            return (self.root / "markers" / name).read_text()
        except OSError:
            return None

    def write_marker(self, name: str, value: str) -> None:
        path = self.root / "markers" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

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
