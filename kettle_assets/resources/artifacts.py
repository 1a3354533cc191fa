"""Where build artifacts live: a local folder laid out like GCS, or GCS itself (`gcs.py`).

Both speak in `gs://bucket/path` URLs and implement the core's
`ArtifactReader`; the assets never know which one they have.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
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

    def list_glob(self, prefix: str, glob: str) -> list[ObjectInfo]:
        return self.list_objects(prefix, recursive=True)  # more than matches: the caller filters

    @property
    def lists_by_glob(self) -> bool:
        """True when one filtered listing beats a listing per build (a remote store)."""
        return False

    @property
    def retries(self) -> int:
        """Transient failures retried so far (stores that cannot fail transiently: 0)."""
        return 0

    @property
    def refused(self) -> int:
        """Objects refused because they are not plain objects under the root (local symlinks)."""
        return len(self.refused_paths)

    @property
    def refused_paths(self) -> list[str]:
        return []


class LocalArtifactStore(ArtifactStore):
    """A folder whose top-level folders are buckets: gs://b/x is <root>/b/x.

    Nothing outside the root is ever read: a symlink anywhere under the root (to a file, to a
    folder, inside or outside the root) is refused as if the object did not exist, and counted
    in `refused` so the assets report it. GCS has no symlinks; a tree that has them was not
    written by a CI job.
    """

    root: str = Field(description="Folder standing for gs://; its sub-folders are buckets.")
    _root: Optional[Path] = PrivateAttr(default=None)
    _refused: list = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def refused_paths(self) -> list[str]:
        """Symlinks met and refused so far by this resource instance."""
        with self._lock:
            return list(self._refused)

    def _refuse(self, url: str) -> None:
        with self._lock:
            self._refused.append(url)

    def _local(self, url: str) -> Path:
        if self._root is None:
            self._root = Path(os.path.realpath(self.root))
        if not url.startswith("gs://"):
            raise ValueError(f"not a gs:// URL: {url[:200]!r}")
        rel = url[5:]
        parts = [p for p in rel.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"dot segments in {url[:200]!r}")
        return self._root.joinpath(*parts)

    def _inside(self, url: str, local: Path) -> bool:
        """True when `local` names itself (no symlink on the way); else the URL is refused."""
        real = os.path.realpath(local)
        if real == str(local):
            return True
        if os.path.lexists(local) or os.path.exists(real):
            self._refuse(url)
        return False

    def list_dirs(self, prefix: str) -> list[str]:
        folder = self._local(prefix)
        if not self._inside(prefix, folder):
            return []
        base = prefix if prefix.endswith("/") else prefix + "/"
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = []
        for e in entries:
            if e.is_symlink():
                self._refuse(f"{base}{e.name}")
            elif e.is_dir(follow_symlinks=False):
                names.append(e.name)
        return [f"{base}{n}/" for n in names]

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        folder = self._local(prefix)
        base = prefix if prefix.endswith("/") else prefix + "/"
        out: list[ObjectInfo] = []
        if not self._inside(prefix, folder) or not folder.is_dir():
            return out
        if not recursive:
            with os.scandir(folder) as it:
                for e in it:
                    if e.is_symlink():
                        self._refuse(base + e.name)
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        out.append(ObjectInfo(base + e.name, st.st_size, st.st_mtime))
        else:
            for dirpath, dirs, files in os.walk(folder):  # os.walk does not enter symlinked folders
                rel = Path(dirpath).relative_to(folder).as_posix()
                sub = "" if rel == "." else rel + "/"
                for name in dirs:
                    if os.path.islink(os.path.join(dirpath, name)):
                        self._refuse(base + sub + name)
                for name in files:
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISLNK(st.st_mode):
                        self._refuse(base + sub + name)
                    elif stat.S_ISREG(st.st_mode):
                        out.append(ObjectInfo(base + sub + name, st.st_size, st.st_mtime))
        out.sort(key=lambda o: o.path)
        return out

    def read(self, path: str) -> bytes | None:
        local = self._local(path)
        if not self._inside(path, local):
            return None
        try:
            # O_NOFOLLOW: a symlink swapped in after the check above is refused too
            fd = os.open(local, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse(path)
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()

    def stat(self, path: str) -> ObjectInfo | None:
        local = self._local(path)
        if not self._inside(path, local):
            return None
        try:
            st = os.lstat(local)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(path, st.st_size, st.st_mtime)

