"""Google Cloud Storage through its JSON API on one pooled HTTP session.

The google-cloud-storage client builds a Blob, a page iterator and several
wrapper objects per call; at Kubernetes' scale (tens of thousands of small
objects) that client-side CPU, not the network, bounds a sync. Here each call
is one HTTP request on a shared keep-alive connection pool, with a timeout,
jittered exponential backoff on transient failures until a deadline, and
counts of requests (by kind) and retries for the materialization metadata.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Optional
from urllib.parse import quote

import dagster as dg
from pydantic import Field, PrivateAttr

from ..core.listing import ObjectInfo
from .artifacts import ArtifactStore
from .memory import limit_malloc_arenas

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
LIST_FIELDS = "items(name,size,updated),prefixes,nextPageToken"


class GCSError(RuntimeError):
    """A GCS request that failed for good (a non-transient status, or the retry deadline passed)."""


def _epoch(rfc3339: str | None) -> float | None:
    return None if not rfc3339 else datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def split_url(url: str) -> tuple[str, str]:
    if not url.startswith("gs://"):
        raise ValueError(f"not a gs:// URL: {url!r}")
    bucket, _, name = url[5:].partition("/")
    return bucket, name


class GCSJsonClient:
    """One pooled session to the GCS JSON API (or the server STORAGE_EMULATOR_HOST names)."""

    def __init__(self, *, timeout: float, deadline: float, initial_backoff: float, max_backoff: float,
                 connections: int, first_timeout: float = 2.0, endpoint: str | None = None):
        import requests
        from requests.adapters import HTTPAdapter

        endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        if endpoint:  # an emulator or test server: anonymous, as google-cloud-storage does
            session = requests.Session()
            self.base = endpoint.rstrip("/") if "://" in endpoint else f"http://{endpoint.rstrip('/')}"
        else:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=[READ_ONLY_SCOPE])
            session = AuthorizedSession(credentials)
            self.base = "https://storage.googleapis.com"
        # Retries are ours (counted, jittered, with a deadline), never urllib3's.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=connections, max_retries=0, pool_block=True)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self.session = session
        self.timeout = timeout
        self.first_timeout = first_timeout
        self.deadline = deadline
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # kind -> requests sent, retries included
        self.retries = 0

    def _get(self, kind: str, url: str, params: dict):
        """GET with retries; the response, or None for 404."""
        import requests

        give_up = time.monotonic() + self.deadline
        delay = self.initial_backoff
        # A healthy answer starts within a fraction of a second: a first attempt that waits
        # longer is abandoned early and retried, each retry waiting twice as long, up to `timeout`.
        attempt_timeout = min(self.first_timeout, self.timeout)
        while True:
            with self.lock:
                self.requests[kind] += 1
            try:
                resp = self.session.get(url, params=params, timeout=attempt_timeout)
                if resp.status_code == 404:
                    return None
                if resp.status_code < 300:
                    return resp
                failure: str = f"HTTP {resp.status_code} for {kind} {url}: {resp.text[:200]}"
                if resp.status_code not in TRANSIENT_STATUS:
                    raise GCSError(failure)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                failure = f"{type(exc).__name__} for {kind} {url}: {exc}"
                attempt_timeout = min(attempt_timeout * 2, self.timeout)
            # Full jitter: retrying clients spread out instead of returning together.
            pause = random.uniform(0, delay)
            if time.monotonic() + pause > give_up:
                raise GCSError(f"gave up after {self.deadline:.0f}s: {failure}")
            with self.lock:
                self.retries += 1
            time.sleep(pause)
            delay = min(delay * 2, self.max_backoff)

    def _object_url(self, bucket: str, name: str) -> str:
        return f"{self.base}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"

    def list(self, bucket: str, prefix: str, delimiter: str | None = None, match_glob: str | None = None,
             kind: str = "list") -> tuple[list[ObjectInfo], list[str]] | None:
        """Every object and prefix under `prefix`, all pages followed; None when the bucket is missing."""
        params = {"prefix": prefix, "fields": LIST_FIELDS, "maxResults": 1000}
        if delimiter:
            params["delimiter"] = delimiter
        if match_glob:
            params["matchGlob"] = match_glob
        url = f"{self.base}/storage/v1/b/{quote(bucket, safe='')}/o"
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        while True:
            resp = self._get(kind, url, params)
            if resp is None:
                return None
            page = resp.json()
            objects.extend(
                ObjectInfo(f"gs://{bucket}/{o['name']}", int(o.get("size") or 0), _epoch(o.get("updated")))
                for o in page.get("items", ())
            )
            prefixes.extend(page.get("prefixes", ()))
            token = page.get("nextPageToken")
            if not token:
                return objects, prefixes
            params = {**params, "pageToken": token}

    def media(self, bucket: str, name: str) -> bytes | None:
        resp = self._get("media", self._object_url(bucket, name), {"alt": "media"})
        return None if resp is None else resp.content

    def metadata(self, bucket: str, name: str) -> dict | None:
        resp = self._get("stat", self._object_url(bucket, name), {"fields": "name,size,updated"})
        return None if resp is None else resp.json()

    def close(self) -> None:
        self.session.close()


class GCSArtifactStore(ArtifactStore):
    """Objects in Google Cloud Storage (or an emulator named by STORAGE_EMULATOR_HOST).

    Every request has a timeout, and transient failures (408, 429, 5xx,
    connection resets, timeouts) are retried with jittered exponential backoff
    until `deadline_seconds`; then the call raises and the run fails rather
    than hanging. A short first-attempt timeout is what keeps a stalled request
    from holding a fetch thread for long.
    """

    project: Optional[str] = Field(default=None, description="GCP project (unused for reads; kept for settings).")
    request_timeout_seconds: float = Field(default=10.0, description="Connect timeout, and longest wait for a byte.")
    first_attempt_timeout_seconds: float = Field(
        default=2.0, description="The same for a first attempt; each retry doubles it, up to request_timeout_seconds."
    )
    deadline_seconds: float = Field(default=120.0, description="Total time one call may spend retrying.")
    initial_backoff_seconds: float = Field(default=0.2, description="First retry delay (jittered, doubling).")
    max_backoff_seconds: float = Field(default=10.0, description="Longest retry delay.")
    max_connections: int = Field(default=64, description="Pooled keep-alive connections (bounds requests in flight).")

    _client_: Optional[GCSJsonClient] = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        limit_malloc_arenas()

    def _client(self) -> GCSJsonClient:
        if self._client_ is None:
            with self._lock:
                if self._client_ is None:
                    self._client_ = GCSJsonClient(
                        timeout=self.request_timeout_seconds, deadline=self.deadline_seconds,
                        initial_backoff=self.initial_backoff_seconds, max_backoff=self.max_backoff_seconds,
                        connections=self.max_connections, first_timeout=self.first_attempt_timeout_seconds,
                    )
        return self._client_

    @property
    def retries(self) -> int:
        """Transient failures retried so far by this resource instance."""
        return self._client_.retries if self._client_ else 0

    @property
    def requests_by_kind(self) -> dict[str, int]:
        return dict(self._client_.requests) if self._client_ else {}

    def list_dirs(self, prefix: str) -> list[str]:
        bucket, name = split_url(prefix)
        found = self._client().list(bucket, name, delimiter="/", kind="list_dirs")
        return [] if found is None else sorted(f"gs://{bucket}/{p}" for p in found[1])

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        bucket, name = split_url(prefix)
        found = self._client().list(bucket, name, delimiter=None if recursive else "/")
        return [] if found is None else sorted(found[0], key=lambda o: o.path)

    def list_glob(self, prefix: str, glob: str) -> list[ObjectInfo]:
        bucket, name = split_url(prefix)
        found = self._client().list(bucket, name, match_glob=glob, kind="list_glob")
        return [] if found is None else sorted(found[0], key=lambda o: o.path)

    @property
    def lists_by_glob(self) -> bool:
        return True

    def read(self, path: str) -> bytes | None:
        return self._client().media(*split_url(path))

    def stat(self, path: str) -> ObjectInfo | None:
        meta = self._client().metadata(*split_url(path))
        if meta is None:
            return None
        return ObjectInfo(path, int(meta.get("size") or 0), _epoch(meta.get("updated")))
