"""Where build artifacts live: a local folder laid out like GCS, or GCS itself (`gcs.py`).

Both speak in `gs://bucket/path` URLs and implement the core's
`ArtifactReader`; the assets never know which one they have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field, PrivateAttr

from ..core.listing import ObjectInfo


class ArtifactStore(dg.ConfigurableResource):
    """Base of the artifact stores; see `kettle_assets.core.listing.ArtifactReader`."""

    def list_dirs(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        raise NotImplementedError

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def stat(self, path: str) -> ObjectInfo | None:
        raise NotImplementedError

    @property
    def retries(self) -> int:
        """Transient failures retried so far (stores that cannot fail transiently: 0)."""
        return 0


class LocalArtifactStore(ArtifactStore):
    """A folder whose top-level folders are buckets: gs://b/x is <root>/b/x."""

    root: str = Field(description="Folder standing for gs://; its sub-folders are buckets.")
    _root: Optional[Path] = PrivateAttr(default=None)

    def _local(self, url: str) -> Path:
        if self._root is None:
            self._root = Path(self.root).resolve()
        if not url.startswith("gs://"):
            raise ValueError(f"not a gs:// URL: {url!r}")
        rel = url[5:]
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"dot segments in {url!r}")
        return self._root.joinpath(*parts)

    def list_dirs(self, prefix: str) -> list[str]:
        folder = self._local(prefix)
        try:
            with os.scandir(folder) as it:
                names = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        base = prefix if prefix.endswith("/") else prefix + "/"
        return [f"{base}{n}/" for n in sorted(names)]

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        folder = self._local(prefix)
        base = prefix if prefix.endswith("/") else prefix + "/"
        out: list[ObjectInfo] = []
        if not folder.is_dir():
            return out
        if not recursive:
            with os.scandir(folder) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        st = e.stat()
                        out.append(ObjectInfo(base + e.name, st.st_size, st.st_mtime))
        else:
            for dirpath, _dirs, files in os.walk(folder):
                rel = Path(dirpath).relative_to(folder).as_posix()
                sub = "" if rel == "." else rel + "/"
                for name in files:
                    st = os.stat(os.path.join(dirpath, name))
                    out.append(ObjectInfo(base + sub + name, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.path)
        return out

    def read(self, path: str) -> bytes | None:
        try:
            return self._local(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def stat(self, path: str) -> ObjectInfo | None:
        try:
            st = self._local(path).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(path, st.st_size, st.st_mtime)

