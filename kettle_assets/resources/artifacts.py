"""Where build artifacts live: a local folder laid out like GCS, or GCS itself.

Both speak in `gs://bucket/path` URLs and implement the core's
`ArtifactReader`; the assets never know which one they have.
"""

from __future__ import annotations

import os
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
