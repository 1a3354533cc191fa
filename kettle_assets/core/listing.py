"""Which builds a bucket holds and which of them to fetch.

Works against any store with the `ArtifactReader` shape; the store hides
whether objects live in a folder or in GCS. Paths are always `gs://…` URLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol

from .config import Bucket
from .junit import is_junit_name

KNOWN_BEFORE_STOP = 40  # Kettle stops a latest-build.txt walk after this many known builds


class ObjectInfo(NamedTuple):
    path: str
    size: int
    updated: float | None = None  # epoch seconds


class ArtifactReader(Protocol):
    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folders of `prefix` (which ends with '/'), as URLs ending with '/'."""

    def list_objects(self, prefix: str, recursive: bool = False) -> list[ObjectInfo]:
        """Objects under `prefix`; only those directly in it unless `recursive`."""

    def read(self, path: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    def stat(self, path: str) -> ObjectInfo | None:
        """Size and update time, or None when it does not exist."""


class BadPath(ValueError):
    """A path that cannot name a build folder (not gs://, empty or dot segments)."""


def check_build_path(path: str) -> str:
    path = path.rstrip("/")  # never strip spaces: "12 " is a folder of its own
    if not path.startswith("gs://"):
        raise BadPath(f"not a gs:// URL: {path[:200]!r}")
    parts = path[5:].split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        raise BadPath(f"not a gs://bucket/…/job/build folder: {path[:200]!r}")
    if any(ord(c) < 32 for c in path):
        raise BadPath(f"control characters in path: {path[:200]!r}")
    return path


def natural_key(name: str) -> str:
    """Kettle's pad_numbers: digit runs compare as numbers."""
    return re.sub(r"\d+", lambda m: m.group(0).rjust(32, "0"), name)


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Candidate:
    """A build worth fetching: not known yet, or asked for again."""

    listed_as: str  # the key the listing found it by (the build folder, or a PR directory .txt)
    job: str  # job name as listed, without the bucket prefix
    path: str | None  # build folder; None until a PR .txt is read


@dataclass
class ListingStats:
    jobs: int = 0
    jobs_excluded: int = 0
    builds_seen: int = 0
    known_skipped: int = 0
    bad_paths: int = 0


def _job_builds(store: ArtifactReader, bucket: Bucket, job: str) -> tuple[bool, list[str]]:
    """(precise, build names newest first), as Kettle's _get_builds."""
    if bucket.sequential:
        raw = store.read(f"{bucket.url}{job}/latest-build.txt")
        if raw is not None:
            try:
                latest = int(raw.strip())
            except ValueError:
                latest = None
            if latest is not None:
                return False, [str(n) for n in range(latest, 0, -1)]
    names = [basename(d) for d in store.list_dirs(f"{bucket.url}{job}/")]
    return True, sorted(names, key=natural_key, reverse=True)


def list_candidates(
    store: ArtifactReader, bucket: Bucket, known: set[str], stats: ListingStats | None = None
) -> Iterator[Candidate]:
    """Builds of `bucket` not in `known` (a set of `listed_as` keys), newest first per job."""
    stats = stats if stats is not None else ListingStats()
    if bucket.pr:
        yield from _list_pr_candidates(store, bucket, known, stats)
        return
    for job_dir in store.list_dirs(bucket.url):
        job = basename(job_dir)
        stats.jobs += 1
        if bucket.excludes(job):
            stats.jobs_excluded += 1
            continue
        precise, builds = _job_builds(store, bucket, job)
        have = 0
        for build in builds:
            path = f"{bucket.url}{job}/{build}"
            stats.builds_seen += 1
            if path in known:
                have += 1
                stats.known_skipped += 1
                if have > KNOWN_BEFORE_STOP and not precise:
                    break
                continue
            yield Candidate(listed_as=path, job=job, path=path)


def _list_pr_candidates(store: ArtifactReader, bucket: Bucket, known: set[str], stats: ListingStats):
    """PR buckets: `directory/<job>/<build>.txt` names each build; its content is the folder."""
    jobs_seen: set[str] = set()
    excluded: set[str] = set()
    for obj in store.list_objects(f"{bucket.url}directory/", recursive=True):
        name = obj.path
        if not name.endswith(".txt") or basename(name) == "latest-build.txt":
            continue
        parts = name[: -len(".txt")].rsplit("/", 2)
        if len(parts) < 3:
            stats.bad_paths += 1
            continue
        job = parts[1]
        if job not in jobs_seen:
            jobs_seen.add(job)
            stats.jobs += 1
            if bucket.excludes(job):
                excluded.add(job)
                stats.jobs_excluded += 1
        if job in excluded:
            continue
        stats.builds_seen += 1
        if name in known:
            stats.known_skipped += 1
            continue
        yield Candidate(listed_as=name, job=job, path=None)


def junit_paths(store: ArtifactReader, build_path: str) -> list[ObjectInfo]:
    """JUnit files of a build: objects directly in `<build>/artifacts/` named junit*.xml."""
    folder = f"{build_path}/artifacts/"
    found = []
    for obj in store.list_objects(folder, recursive=False):
        rest = obj.path[len(folder) :]
        if "/" not in rest and is_junit_name(rest):
            found.append(obj)
    return sorted(found, key=lambda o: o.path)
