"""Clusters in triage's shapes: `failure_data.json` (read unchanged by triage's web page), its
slices by id prefix and by owner, and one row per cluster / per cluster and day for the warehouse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, NamedTuple

import orjson

from .triage_text import normalize_name

SIG_LABEL = re.compile(r"\[sig-([^]]*)\]")
DEFAULT_OWNER = "testing"
BUILD_COLUMNS = ("started", "tests_failed", "elapsed", "tests_run", "result", "executor", "pr")


@dataclass(frozen=True, slots=True)
class Build:
    path: str
    job: str
    number: int | None
    started: int | None  # epoch seconds
    elapsed: int | None
    tests_run: int | None
    tests_failed: int | None
    result: str | None
    executor: str | None

    @property
    def pr(self) -> str | None:
        """The PR number from a pr-logs path (`.../pull/<pr>/<job>/<number>`), as triage takes it."""
        return self.path.split("/")[-3] if "pr-logs" in self.path else None


class ClusterTally:
    """One cluster's failures counted: totals, first and last build start, and per test its
    failures, its builds by job (numbered builds only, as triage lists them) and its first failure."""

    __slots__ = ("failures", "flaky", "first_seen", "last_seen", "tests")

    def __init__(self):
        self.failures = 0
        self.flaky = 0
        self.first_seen: int | None = None
        self.last_seen: int | None = None
        # test -> [failures, {job: {build numbers}}, (started, build path, ordinal as text) of its first failure]
        self.tests: dict[str, list] = {}

    def representative(self) -> tuple[str, str, int]:
        """(build path, test, ordinal) of the failure whose text shows the cluster: the first
        failure, in (started, build path, ordinal) order, of the test with the most failures."""
        test = min(self.tests.items(), key=lambda kv: (-kv[1][0], kv[0]))[0]
        _, path, seq = self.tests[test][2]
        return path, test, int(seq)


def tally(rows: Iterable[tuple[str, str, str, int, int, int, str]], builds: dict[str, Build]
          ) -> dict[str, ClusterTally]:
    """Clusters by key hash, from rows (key hash, test, build path, failures, flaky failures,
    build started, smallest ordinal written as text) per cluster, test and build."""
    clusters: dict[str, ClusterTally] = {}
    for hashed, test, path, failures, flaky, started, seq in rows:
        cluster = clusters.get(hashed)
        if cluster is None:
            cluster = clusters[hashed] = ClusterTally()
            cluster.first_seen = cluster.last_seen = started
        cluster.failures += failures
        cluster.flaky += flaky
        cluster.first_seen = min(cluster.first_seen, started)
        cluster.last_seen = max(cluster.last_seen, started)
        per_test = cluster.tests.get(test)
        if per_test is None:
            per_test = cluster.tests[test] = [0, {}, None]
        per_test[0] += failures
        build = builds.get(path)
        if build is not None and build.number is not None:  # triage lists only known, numbered builds
            per_test[1].setdefault(build.job, set()).add(build.number)
        # Ordinals compare as text, as the failure ids (path, test, ordinal) of triage's order do.
        order = (started, path, seq)
        if per_test[2] is None or order < per_test[2]:
            per_test[2] = order
    return clusters


@dataclass(frozen=True)
class Shown:
    """How a cluster is shown: its representative failure, that failure's text and the text's spans."""

    failure: tuple[str, str, int]  # (build path, test, ordinal)
    text: str
    spans: list[int]


@dataclass
class ClusterSummary:
    clusters: list[dict]  # triage's `clustered` entries plus counts, singletons included


def describe(tallies: dict[str, ClusterTally], keys: dict[str, tuple[str, str]], shown: dict[str, Shown],
             builds: dict[str, Build], owners: dict[str, list[str]] | None = None) -> ClusterSummary:
    """Each cluster as triage describes it, by failures then key; `keys` ((key, triage id)) and
    `shown` by key hash."""
    owner_of = _owner_matcher(owners or {})
    numbered = {(b.job, b.number): b for b in builds.values() if b.number is not None}
    latest = max((b.started for b in numbered.values() if b.started), default=0)
    out = []
    for hashed, cluster in sorted(tallies.items(), key=lambda hc: (-hc[1].failures, keys[hc[0]][0])):
        key, triage_id = keys[hashed]
        tests = sorted(cluster.tests.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out.append({
            "key": key,
            "id": triage_id,
            "text": shown[hashed].text,
            "spans": shown[hashed].spans,
            "tests": [{"name": name, "jobs": _jobs(jobs)} for name, (_, jobs, _) in tests],
            "owner": _owner(tests, owner_of, numbered, latest - 86400),
            "failures": cluster.failures,
            "flaky_failures": cluster.flaky,
            "first_seen": cluster.first_seen,
            "last_seen": cluster.last_seen,
            "key_hash": hashed,
        })
    return ClusterSummary(clusters=out)


class GroupTokens(NamedTuple):
    """The tokens every failure of one test key on one UTC day has, how many failures that is,
    and the cluster the test key belonged to."""

    test: str
    local_key_hash: str
    day: int  # days since 1970-01-01
    failures: int
    key_hash: str
    tokens: Collection[str]  # in no particular order


def group_tokens(failures: int, tokenized: int, streamed: set[str] | None, kept: GroupTokens | None
                 ) -> set[str] | Collection[str]:
    """A group's common tokens from the `tokenized` failures whose texts were streamed (their
    intersection `streamed`) and, for the others, the previous run's tokens of the group, which
    stand for exactly those failures only when it counted as many."""
    if tokenized == failures:
        return streamed
    if kept is None or kept.failures != failures - tokenized:
        raise ValueError(f"group of {failures} failures has {tokenized} texts and no tokens for the others")
    if not tokenized:
        return kept.tokens
    return streamed & set(kept.tokens)


def key_hash(key: str) -> str:
    """A unique handle of a key (triage's id is a hash of the histogram, so two keys can share it)."""
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()


def _jobs(jobs: dict[str, set[int]]) -> list[dict]:
    """{name, builds} per job, build numbers (as strings) descending, jobs by builds desc then name."""
    ordered = sorted(((job, sorted(numbers, reverse=True)) for job, numbers in jobs.items()),
                     key=lambda jn: (-len(jn[1]), jn[0]))
    return [{"name": job, "builds": [str(n) for n in numbers]} for job, numbers in ordered]


def _owner_matcher(owners: dict[str, list[str]]):
    groups = []
    for n, (sig, prefixes) in enumerate(sorted(owners.items())):
        alternatives = "|".join(re.escape(p) for p in prefixes if p)
        if alternatives:
            groups.append((f"o{n}", sig, f"(?P<o{n}>{alternatives})"))
    if not groups:
        return lambda name: None
    pattern = re.compile("(?:" + "|".join(g for _, _, g in groups) + ")")
    names = {group: sig for group, sig, _ in groups}

    def owner_of(test_name: str) -> str | None:
        match = pattern.match(normalize_name(test_name))
        if not match:
            return None
        return next((names[g] for g, v in match.groupdict().items() if v), None)

    return owner_of


def _owner(tests, owner_of, numbered: dict[tuple[str, int], Build], since: int) -> str:
    """The SIG whose tests failed most in the last day (then before it), from `[sig-x]` in the test
    name or an owners file's prefixes; `testing` when none is known."""
    counts: dict[str, list[int]] = {}
    for name, hits in tests:
        match = SIG_LABEL.search(name)
        owner = match.group(1) if match else owner_of(name)
        if owner is None:
            continue
        tally = counts.setdefault(owner, [0, 0])
        for job, numbers in hits[1].items():
            if ":" in job:  # not a standard CI job, as triage skips them
                continue
            for number in numbers:
                tally[0 if (numbered[(job, number)].started or 0) > since else 1] += 1
    if not counts:
        return DEFAULT_OWNER
    return max(counts.items(), key=lambda oc: (oc[1], oc[0]))[0]


class BuildColumns:
    """triage's columnar builds, each job's block computed once so that the 256 slices (each a
    subset of the jobs) are concatenations rather than re-sorts."""

    def __init__(self, builds: Iterable[Build]):
        by_job: dict[str, list[Build]] = {}
        for build in builds:
            if build.number is not None and build.started:
                by_job.setdefault(build.job, []).append(build)
        self._blocks = {}
        for job, job_builds in by_job.items():
            job_builds.sort(key=lambda b: (b.number, b.path))
            columns = {c: [getattr(b, c) for b in job_builds] for c in BUILD_COLUMNS}
            numbers: dict[int, int] = {}
            for offset, build in enumerate(job_builds):
                numbers[build.number] = offset  # a repeated number keeps its last build, as triage does
            self._blocks[job] = (columns, numbers, job_builds[0].path[: job_builds[0].path.rindex("/")])

    def render(self, jobs: Iterable[str] | None = None) -> dict:
        """per job build number -> column index (or `[first, count, first index]` when the numbers
        are consecutive), the columns, and each job's folder; jobs in name order."""
        names = sorted(self._blocks if jobs is None else (j for j in jobs if j in self._blocks))
        cols: dict[str, list] = {c: [] for c in BUILD_COLUMNS}
        out_jobs: dict[str, object] = {}
        job_paths: dict[str, str] = {}
        for job in names:
            columns, numbers, folder = self._blocks[job]
            base = len(cols["started"])
            for c in BUILD_COLUMNS:
                cols[c].extend(columns[c])
            ordered = sorted(numbers)
            dense = ordered[-1] == ordered[0] + len(ordered) - 1 and all(
                numbers[number] == n for n, number in enumerate(ordered))
            out_jobs[job] = [ordered[0], len(ordered), base] if dense else {str(n): base + i for n, i in numbers.items()}
            job_paths[job] = folder
        return {"jobs": out_jobs, "cols": cols, "job_paths": job_paths}


TRIAGE_FIELDS = ("key", "id", "text", "spans", "tests", "owner")


def failure_data(summary: ClusterSummary, builds: BuildColumns) -> dict:
    """triage's `failure_data.json`: clusters of more than one failure, and all the builds."""
    clustered = [{f: c[f] for f in TRIAGE_FIELDS} for c in summary.clusters if c["failures"] > 1]
    return {"clustered": clustered, "builds": builds.render()}


def slices(data: dict, builds: BuildColumns) -> Iterator[tuple[str, dict]]:
    """triage's slices: `00`..`ff` by id prefix, then `sig-<owner>` for every owner present (and
    `testing`); each with the builds of the jobs its clusters name."""

    def one(clusters: list[dict]) -> dict:
        jobs = {job["name"] for c in clusters for t in c["tests"] for job in t["jobs"]}
        return {"clustered": clusters, "builds": builds.render(jobs)}

    by_prefix: dict[str, list[dict]] = {}
    by_owner: dict[str, list[dict]] = {DEFAULT_OWNER: []}
    for cluster in data["clustered"]:
        by_prefix.setdefault(cluster["id"][:2], []).append(cluster)
        by_owner.setdefault(cluster["owner"], []).append(cluster)
    for prefix in range(256):
        name = f"{prefix:02x}"
        yield name, one(by_prefix.get(name, []))
    for owner in sorted(by_owner):
        yield f"sig-{owner}", one(by_owner[owner])


def dumps(data: dict) -> bytes:
    """Compact JSON with sorted keys: the same clusters give the same bytes."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
