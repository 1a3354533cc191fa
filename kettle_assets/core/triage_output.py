"""Clusters in triage's shapes: `failure_data.json` (read unchanged by triage's web page), its
slices by id prefix and by owner, and one row per cluster / per cluster and day for the warehouse.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Iterator, NamedTuple

import orjson

from .clustering import Clustering, Failure
from .triage_text import cluster_id, common_spans, ngram_counts, normalize_name, span_tokens

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


@dataclass(frozen=True)
class FailureFacts:
    """What the output needs of a failure besides its text."""

    job: str
    number: int | None
    started: int  # epoch seconds
    flaky: bool  # the same test passed at the same (job, commit)


class _Cluster:
    __slots__ = ("key", "failures", "tests", "common", "first", "started", "flaky")

    def __init__(self, key: str):
        self.key = key
        self.failures = 0
        self.tests: dict[str, list] = {}  # test -> [failures, {job: {build numbers}}]
        self.common: set[str] | None = None
        # test -> ((started, build, fid), text): zlib-compressed, a 1,000,000-failure window has ~10^5
        self.first: dict[str, tuple[tuple, bytes]] = {}
        self.started: list[int] = [0, 0]
        self.flaky = 0


@dataclass
class ClusterSummary:
    clusters: list[dict]  # triage's `clustered` entries plus counts, singletons included
    tokenized_failures: int = 0  # failures whose text was tokenised for the spans (the rest came from `previous`)


class GroupTokens(NamedTuple):
    """The tokens every failure of one test key on one UTC day has, and how many failures that is."""

    test: str
    local_key_hash: str
    day: int  # days since 1970-01-01
    failures: int
    tokens: Collection[str]  # in no particular order


class _Group:
    """One test key's failures on one day, in one test's stream: their common tokens kept as a
    running intersection, except while the previous run's tokens may still be reused (same count,
    no new failure); only those texts are held, and only until the test ends."""

    __slots__ = ("cluster", "count", "tokens", "held", "tokenized", "_reusable_count")

    def __init__(self, cluster: _Cluster, reusable_count: int | None):
        self.cluster = cluster
        self.count = 0
        self.tokens: set[str] | None = None
        self.held: list[str] = []
        self.tokenized = 0
        self._reusable_count = reusable_count

    def add(self, text: str, new: bool) -> None:
        self.count += 1
        if self.tokens is None and self._reusable_count is not None and not new and self.count <= self._reusable_count:
            self.held.append(text)
            return
        if self.tokens is None:
            self.tokenize_held()
        self._intersect(text)

    def tokenize_held(self) -> None:
        """Give up on the previous run's tokens: tokenise what was held."""
        self._reusable_count = None
        held, self.held = self.held, []
        for text in held:
            self._intersect(text)

    def _intersect(self, text: str) -> None:
        self.tokenized += 1
        if self.tokenized == 1:
            self.tokens = set(span_tokens(text))
        else:
            self.tokens.intersection_update(span_tokens(text))


class _Groups:
    """The previous run's `GroupTokens`, in (test, local key hash, day) order, read alongside a
    stream of tests in the same order: only the current test's groups are held."""

    def __init__(self, previous: Iterable[GroupTokens]):
        self._rows = iter(previous)
        self._next = next(self._rows, None)

    def of_test(self, test: str) -> dict[tuple[str, int], GroupTokens]:
        while self._next is not None and self._next.test < test:
            self._next = next(self._rows, None)
        found = {}
        while self._next is not None and self._next.test == test:
            found[(self._next.local_key_hash, self._next.day)] = self._next
            self._next = next(self._rows, None)
        return found


def summarize(
    rows: Iterable[tuple[Failure, FailureFacts, str, str]],
    builds: dict[str, Build],
    owners: dict[str, list[str]] | None = None,
    previous: Iterable[GroupTokens] = (),
    keep: Callable[[GroupTokens], None] | None = None,
) -> ClusterSummary:
    """Describe each cluster as triage does, from (failure, facts, cluster key, local key) rows in
    stream order; holds one entry per cluster and test, not per failure.

    A cluster's common tokens (its spans) are the intersection over its failures, computed per
    test key and day: a group with the same failure count as in `previous` and no new failure
    (`kept_key` unset) takes its tokens from there instead of tokenising its texts, so a daily
    increment tokenises about one day. Every group is handed to `keep` for the next run.
    """
    clusters: dict[str, _Cluster] = {}
    earlier = _Groups(previous)
    local_hashes: dict[str, str] = {}
    tokenized = 0
    test, groups, known = None, {}, {}

    def flush() -> None:
        nonlocal tokenized
        for (local_hash, day), group in sorted(groups.items()):
            before = known.get((local_hash, day))
            if group.tokens is None and not (before is not None and before.failures == group.count):
                group.tokenize_held()
            tokens = set(before.tokens) if group.tokens is None else group.tokens
            tokenized += group.tokenized
            group.cluster.common = tokens if group.cluster.common is None else group.cluster.common & tokens
            if keep is not None:
                keep(GroupTokens(test, local_hash, day, group.count, tokens))

    for failure, facts, key, local in rows:
        if failure.test != test:
            if groups:
                flush()
            test, groups = failure.test, {}
            known = earlier.of_test(test)
        cluster = clusters.get(key)
        if cluster is None:
            cluster = clusters[key] = _Cluster(key)
        cluster.failures += 1
        cluster.flaky += facts.flaky
        per_test = cluster.tests.get(failure.test)
        if per_test is None:
            per_test = cluster.tests[failure.test] = [0, {}]
        per_test[0] += 1
        build = builds.get(failure.build)
        if build is not None and build.number is not None:  # triage lists only known, numbered builds
            per_test[1].setdefault(build.job, set()).add(build.number)
        local_hash = local_hashes.get(local)
        if local_hash is None:
            local_hash = local_hashes[local] = key_hash(local)
        group_key = (local_hash, facts.started // 86400)
        group = groups.get(group_key)
        if group is None:
            before = known.get(group_key)
            group = groups[group_key] = _Group(cluster, None if before is None else before.failures)
        group.add(failure.text, new=failure.kept_key is None)
        order = (facts.started, failure.build, str(failure.fid))
        first = cluster.first.get(failure.test)
        if first is None or order < first[0]:
            cluster.first[failure.test] = (order, zlib.compress(failure.text.encode("utf-8", "surrogatepass"), 1))
        if cluster.failures == 1:
            cluster.started = [facts.started, facts.started]
        else:
            cluster.started = [min(cluster.started[0], facts.started), max(cluster.started[1], facts.started)]
    if groups:
        flush()

    owner_of = _owner_matcher(owners or {})
    numbered = {(b.job, b.number): b for b in builds.values() if b.number is not None}
    latest = max((b.started for b in numbered.values() if b.started), default=0)
    out = []
    for cluster in sorted(clusters.values(), key=lambda c: (-c.failures, c.key)):
        tests = sorted(cluster.tests.items(), key=lambda kv: (-kv[1][0], kv[0]))
        text = zlib.decompress(cluster.first[tests[0][0]][1]).decode("utf-8", "surrogatepass")
        entry = {
            "key": cluster.key,
            "id": cluster_id(ngram_counts(cluster.key)),
            "text": text,
            "spans": common_spans(text, cluster.common or set()),
            "tests": [{"name": name, "jobs": _jobs(jobs)} for name, (_, jobs) in tests],
            "owner": _owner(tests, owner_of, numbered, latest - 86400),
            "failures": cluster.failures,
            "flaky_failures": cluster.flaky,
            "first_seen": cluster.started[0],
            "last_seen": cluster.started[1],
            "key_hash": key_hash(cluster.key),
        }
        out.append(entry)
    return ClusterSummary(clusters=out, tokenized_failures=tokenized)


def test_key_rows(clustering: Clustering) -> dict[str, list]:
    """Each test's own keys with their cluster's key hash (columns): the state a next run needs."""
    rows: dict[str, list] = {"name": [], "local_key_hash": [], "local_key": [], "key_hash": []}
    for (test, local), key in sorted(clustering.global_key.items()):
        for column, value in (("name", test), ("local_key_hash", key_hash(local)), ("local_key", local),
                              ("key_hash", key_hash(key))):
            rows[column].append(value)
    return rows


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
