"""Where build artifacts live: a local folder laid out like GCS, or GCS itself.

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


def _is_transient(exc: BaseException) -> bool:
    """429, 5xx, dropped connections and timeouts: worth another try."""
    import http.client

    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, (api.TooManyRequests, api.InternalServerError, api.BadGateway,
                        api.ServiceUnavailable, api.GatewayTimeout)):
        return True
    if isinstance(exc, api.GoogleAPICallError):
        return exc.code in (408, 429) or (exc.code or 0) >= 500
    if isinstance(exc, (ConnectionError, requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError, http.client.HTTPException)):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)  # resumable-media InvalidResponse
    return status in (408, 429) or (status or 0) >= 500


class GCSArtifactStore(ArtifactStore):
    """Objects in Google Cloud Storage (or an emulator named by STORAGE_EMULATOR_HOST).

    Every call has a request timeout, and transient failures (429, 5xx,
    connection resets, timeouts) are retried with jittered exponential backoff
    until `deadline_seconds`; then the call raises and the run fails rather
    than hanging. Retries are counted for the materialization metadata.
    """

    project: Optional[str] = Field(default=None, description="GCP project for the client (ADC's by default).")
    request_timeout_seconds: float = Field(default=30.0, description="Connect and read timeout of each request.")
    deadline_seconds: float = Field(default=120.0, description="Total time one call may spend retrying.")
    initial_backoff_seconds: float = Field(default=0.2, description="First retry delay (jittered, doubling).")
    max_backoff_seconds: float = Field(default=10.0, description="Longest retry delay.")

    _local: threading.local = PrivateAttr(default_factory=threading.local)
    _retries: list = PrivateAttr(default_factory=lambda: [0])
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project=self.project or "test-project", credentials=AnonymousCredentials())
            else:
                client = storage.Client(project=self.project)
            self._local.client = client
        return client

    def _count_retry(self, _exc: BaseException) -> None:
        with self._lock:
            self._retries[0] += 1

    @property
    def retries(self) -> int:
        """Transient failures retried so far by this resource instance."""
        return self._retries[0]

    def _retry(self):
        from google.api_core.retry import Retry

        return Retry(
            predicate=_is_transient,
            initial=self.initial_backoff_seconds,
            maximum=self.max_backoff_seconds,
            multiplier=2.0,
            timeout=self.deadline_seconds,
            on_error=self._count_retry,
        )

    def _call(self, fn):
        """Run `fn` under the retry policy; covers errors raised while pages are iterated."""
        return self._retry()(fn)()

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        if not url.startswith("gs://"):
            raise ValueError(f"not a gs:// URL: {url!r}")
        bucket, _, name = url[5:].partition("/")
        return bucket, name

    def _list(self, prefix: str, delimiter: str | None):
        bucket, name = self._split(prefix)

        def run():
            it = self._client().list_blobs(
                bucket, prefix=name, delimiter=delimiter,
                timeout=self.request_timeout_seconds, retry=None,
            )
            blobs = [(b.name, b.size or 0, b.updated.timestamp() if b.updated else None) for b in it]
            return blobs, sorted(it.prefixes)

        return bucket, self._call(run)

    def list_dirs(self, prefix: str) -> list[str]:
        from google.api_core.exceptions import NotFound

        try:
            bucket, (_, prefixes) = self._list(prefix, "/")
        except NotFound:  # the bucket itself is missing
            return []
        return [f"gs://{bucket}/{p}" for p in prefixes]

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        from google.api_core.exceptions import NotFound

        try:
            bucket, (blobs, _) = self._list(prefix, None if recursive else "/")
        except NotFound:
            return []
        return sorted((ObjectInfo(f"gs://{bucket}/{n}", s, u) for n, s, u in blobs), key=lambda o: o.path)

    def read(self, path: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        bucket, name = self._split(path)

        def run():
            blob = self._client().bucket(bucket).blob(name)
            return blob.download_as_bytes(timeout=self.request_timeout_seconds, retry=None)

        try:
            return self._call(run)
        except NotFound:
            return None

    def stat(self, path: str) -> ObjectInfo | None:
        bucket, name = self._split(path)

        def run():
            return self._client().bucket(bucket).get_blob(name, timeout=self.request_timeout_seconds, retry=None)

        blob = self._call(run)
        if blob is None:
            return None
        return ObjectInfo(path, blob.size or 0, blob.updated.timestamp() if blob.updated else None)
