"""Which builds a bucket holds and which of them to fetch.

Works against any store with the `ArtifactReader` shape; the store hides
whether objects live in a folder or in GCS. Paths are always `gs://…` URLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol

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

    def list_glob(self, prefix: str, glob: str) -> list[ObjectInfo]:
        """Objects under `prefix` whose name (without the bucket) matches the GCS matchGlob `glob`;
        a store may return more than matches, never less."""


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


def _job_builds(store: ArtifactReader, bucket: Bucket, job: str) -> tuple[bool, Iterable[str]]:
    """(precise, build names newest first), as Kettle's _get_builds."""
    if bucket.sequential:
        raw = store.read(f"{bucket.url}{job}/latest-build.txt")
        if raw is not None:
            try:
                latest = int(raw.strip())
            except ValueError:
                latest = None
            if latest is not None:
                return False, map(str, range(latest, 0, -1))  # lazy: the walk usually stops early
    names = [basename(d) for d in store.list_dirs(f"{bucket.url}{job}/")]
    return True, sorted(names, key=natural_key, reverse=True)


def list_candidates(
    store: ArtifactReader, bucket: Bucket, known: set[str], stats: ListingStats | None = None,
    map_jobs: Callable = map,
) -> Iterator[Candidate]:
    """Builds of `bucket` not in `known` (a set of `listed_as` keys), newest first per job.

    `map_jobs` lists the jobs' builds (an ordered map: a thread pool's lists them concurrently).
    """
    stats = stats if stats is not None else ListingStats()
    if bucket.pr:
        yield from _list_pr_candidates(store, bucket, known, stats)
        return
    jobs = [basename(d) for d in store.list_dirs(bucket.url)]
    stats.jobs += len(jobs)
    included = [job for job in jobs if not bucket.excludes(job)]
    stats.jobs_excluded += len(jobs) - len(included)
    for job, (precise, builds) in zip(included, map_jobs(lambda job: _job_builds(store, bucket, job), included)):
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
    return sorted((o for o in store.list_objects(folder, recursive=False) if _junit_of(o.path) == build_path),
                  key=lambda o: o.path)


def _junit_of(path: str) -> str | None:
    """The build folder whose JUnit file `path` is (`<build>/artifacts/junit*.xml`), else None."""
    folder, _, name = path.rpartition("/")
    build, _, artifacts = folder.rpartition("/")
    return build if artifacts == "artifacts" and build and is_junit_name(name) else None


# Characters with a meaning in a GCS matchGlob; builds whose folder has one are listed alone.
GLOB_SPECIAL = frozenset("*?[]{},\\")
GLOB_MAX_CHARS = 4000  # the glob travels in the URL's query string


@dataclass(frozen=True)
class JUnitListing:
    """One listing that finds the JUnit files of `builds`: `<prefix>` filtered by `glob`
    (None: the one build's `artifacts/` folder, listed plainly)."""

    prefix: str
    glob: str | None
    builds: tuple[str, ...]


def _pr_folder(build_path: str) -> str | None:
    """`…/<pr number>/` above `<job>/<build>` in a PR bucket's `pull/<org_repo>/<pr>/<job>/<build>`."""
    parts = build_path.split("/")
    return "/".join(parts[:-2]) + "/" if len(parts) > 5 and parts[-3].isdigit() and parts[-5] == "pull" else None


def junit_listings(build_paths: list[str], by_glob: bool = True) -> list[JUnitListing]:
    """Listings that find every JUnit file of `build_paths` in few requests.

    Builds of one job folder (or of one PR folder, across its jobs) share one listing whose
    matchGlob names them: `<job>/{b1,b2}/artifacts/junit*`. The glob only narrows what the
    server returns; `junit_files` keeps an object only when its build folder is exactly one
    asked for, so a glob never hands one build another's files. A build alone in its folder,
    or whose path has glob characters, keeps its own plain listing, as does every build of a
    store that cannot filter by glob (`by_glob` false: a local folder lists a build cheaply).
    """
    groups: dict[str, list[str]] = {}
    alone: list[str] = []
    for path in sorted(set(build_paths)):
        body = path[len("gs://"):] if path.startswith("gs://") else path
        if not by_glob or GLOB_SPECIAL.intersection(body) or body.count("/") < 2:
            alone.append(path)
            continue
        groups.setdefault(_pr_folder(path) or path.rsplit("/", 1)[0] + "/", []).append(path)
    out = [JUnitListing(f"{p}/artifacts/", None, (p,)) for p in alone]
    for folder, paths in sorted(groups.items()):
        if len(paths) == 1:
            out.append(JUnitListing(f"{paths[0]}/artifacts/", None, (paths[0],)))
            continue
        batch: list[str] = []
        for path in paths + [None]:
            if batch and (path is None or len(_glob(folder, batch + [path])) > GLOB_MAX_CHARS):
                out.append(JUnitListing(folder, _glob(folder, batch), tuple(batch)))
                batch = []
            if path is not None:
                batch.append(path)
    return out


def _glob(folder: str, paths: list[str]) -> str:
    """`<folder>{b1,b2}/artifacts/junit*` (or `<folder>{j1,j2}/{b1,b2}/…` for a PR folder), without
    the bucket: alternatives never hold a '/', and what the cross product over-matches is dropped
    by `junit_files`."""
    base = folder.split("/", 3)[3]  # gs://bucket/<base>
    levels = list(zip(*(p[len(folder):].split("/") for p in paths)))
    return base + "/".join(_alternatives(set(names)) for names in levels) + "/artifacts/junit*"


def _alternatives(names: set[str]) -> str:
    return next(iter(names)) if len(names) == 1 else "{" + ",".join(sorted(names)) + "}"


def junit_files(store: ArtifactReader, listing: JUnitListing) -> dict[str, list[ObjectInfo]]:
    """Run one listing: each of its builds with its JUnit files (sorted; maybe none)."""
    found: dict[str, list[ObjectInfo]] = {b: [] for b in listing.builds}
    if listing.glob is None:
        objects = store.list_objects(listing.prefix, recursive=False)
    else:
        objects = store.list_glob(listing.prefix, listing.glob)  # type: ignore[attr-defined]
    for obj in objects:
        build = _junit_of(obj.path)
        if build in found:
            found[build].append(obj)
    for files in found.values():
        files.sort(key=lambda o: o.path)
    return found
