"""Clusters in triage's shapes: `failure_data.json` (read unchanged by triage's web page), its
slices by id prefix and by owner, and one row per cluster / per cluster and day for the warehouse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, NamedTuple

import orjson

from .triage_text import common_spans, normalize_name

SIG_LABEL = re.compile(r"\[sig-([^]]*)\]")
DEFAULT_OWNER = "testing"
BUILD_COLUMNS = ("started", "tests_failed", "elapsed", "tests_run", "result", "executor", "pr")


class ClusterTally:
    """One cluster's failures counted: totals, first and last build start, and per test its
    failures, its builds by job (numbered builds only, as triage lists them) and its first failure."""

    __slots__ = ("failures", "flaky", "first_seen", "last_seen", "tests")

    def __init__(self):
        self.failures = 0
        self.flaky = 0
        self.first_seen: int | None = None
        self.last_seen: int | None = None
        # test -> [failures, {job: {build number: started}}, (started, build path, ordinal as text) of its first failure]
        self.tests: dict[str, list] = {}

    def representative(self) -> tuple[str, str, int]:
        """(build path, test, ordinal) of the failure whose text shows the cluster: the first
        failure, in (started, build path, ordinal) order, of the test with the most failures."""
        test = min(self.tests.items(), key=lambda kv: (-kv[1][0], kv[0]))[0]
        _, path, seq = self.tests[test][2]
        return path, test, int(seq)


def tally(rows: Iterable[tuple[str, str, str, str, int | None, int, int, int, str]]) -> dict[str, ClusterTally]:
    """Clusters by key hash, from rows (key hash, test, build path, job, build number, failures,
    flaky failures, build started, smallest ordinal written as text) per cluster, test and build."""
    clusters: dict[str, ClusterTally] = {}
    for hashed, test, path, job, number, failures, flaky, started, seq in rows:
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
        if number is not None:  # triage lists only numbered builds
            numbers = per_test[1].setdefault(job, {})
            numbers[number] = max(numbers.get(number, started), started)
        # Ordinals compare as text, as the failure ids (path, test, ordinal) of triage's order do.
        order = (started, path, seq)
        if per_test[2] is None or order < per_test[2]:
            per_test[2] = order
    return clusters


@dataclass(frozen=True)
class Shown:
    """How a cluster is shown: its representative failure, that failure's text and the text's spans
    (as JSON: tens of thousands of clusters' lists of ints take hundreds of MB as Python objects)."""

    failure: tuple[str, str, int]  # (build path, test, ordinal)
    text: str
    spans: bytes  # JSON list of the alternating span lengths


def shown(failure: tuple[str, str, int], text: str, common: set[str]) -> Shown:
    return Shown(failure, text, orjson.dumps(common_spans(text, common)))


@dataclass
class ClusterSummary:
    clusters: list[dict]  # triage's `clustered` entries plus counts, singletons included


def describe(tallies: dict[str, ClusterTally], keys: dict[str, tuple[str, str]], shown: dict[str, Shown],
             latest: int, owners: dict[str, list[str]] | None = None) -> ClusterSummary:
    """Each cluster as triage describes it, by failures then key; `keys` ((key, triage id)) and
    `shown` by key hash."""
    """`latest`: the start of the window's latest build; an owner's failures since a day before it count first."""
    owner_of = _owner_matcher(owners or {})
    out = []
    for hashed, cluster in sorted(tallies.items(), key=lambda hc: (-hc[1].failures, keys[hc[0]][0])):
        key, triage_id = keys[hashed]
        tests = sorted(cluster.tests.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out.append({
            "key": key,
            "id": triage_id,
            "text": shown[hashed].text,
            "spans": orjson.Fragment(shown[hashed].spans),
            "tests": [{"name": name, "jobs": _jobs(jobs)} for name, (_, jobs, _) in tests],
            "owner": _owner(tests, owner_of, latest - 86400),
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


def _jobs(jobs: dict[str, dict[int, int]]) -> list[dict]:
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


def _owner(tests, owner_of, since: int) -> str:
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
            for started in numbers.values():
                tally[0 if (started or 0) > since else 1] += 1
    if not counts:
        return DEFAULT_OWNER
    return max(counts.items(), key=lambda oc: (oc[1], oc[0]))[0]


class BuildColumns:
    """triage's columnar builds, each job's block computed once so that the 256 slices (each a
    subset of the jobs) are concatenations rather than re-sorts. Built from rows (path, job,
    number, started, elapsed, tests_run, tests_failed, result, executor) in (job, number, path)
    order, straight into columns: no object per build."""

    def __init__(self, rows: Iterable[tuple]):
        self._blocks: dict[str, tuple[dict[str, list], list[int], list[int], str]] = {}
        self.latest = 0  # the start of the latest numbered build
        shared: dict = {}  # one object per distinct result and executor
        columns = numbers = offsets = None
        for path, job, number, started, elapsed, run, failed, result, executor in rows:
            if number is None or not started:
                continue
            self.latest = max(self.latest, started)
            if job not in self._blocks:
                columns, numbers, offsets = {c: [] for c in BUILD_COLUMNS}, [], []
                self._blocks[job] = (columns, numbers, offsets, path[: path.rindex("/")])
            elif self._blocks[job][0] is not columns:
                raise ValueError(f"builds of job {job!r} must come together")
            offset = len(columns["started"])
            for column, value in zip(BUILD_COLUMNS, (started, failed, elapsed, run, shared.setdefault(result, result),
                                                     shared.setdefault(executor, executor), _pr(path))):
                columns[column].append(value)
            if numbers and numbers[-1] == number:
                offsets[-1] = offset  # a repeated number keeps its last build, as triage does
            else:
                numbers.append(number)
                offsets.append(offset)

    def render(self, jobs: Iterable[str] | None = None) -> dict:
        """per job build number -> column index (or `[first, count, first index]` when the numbers
        are consecutive), the columns, and each job's folder; jobs in name order."""
        names = sorted(self._blocks if jobs is None else (j for j in jobs if j in self._blocks))
        cols: dict[str, list] = {c: [] for c in BUILD_COLUMNS}
        out_jobs: dict[str, object] = {}
        job_paths: dict[str, str] = {}
        for job in names:
            columns, numbers, offsets, folder = self._blocks[job]
            base = len(cols["started"])
            for c in BUILD_COLUMNS:
                cols[c].extend(columns[c])
            dense = numbers[-1] == numbers[0] + len(numbers) - 1 and all(o == n for n, o in enumerate(offsets))
            out_jobs[job] = [numbers[0], len(numbers), base] if dense else {
                str(n): base + o for n, o in zip(numbers, offsets)}
            job_paths[job] = folder
        return {"jobs": out_jobs, "cols": cols, "job_paths": job_paths}


def _pr(path: str) -> str | None:
    """The PR number from a pr-logs path (`.../pull/<pr>/<job>/<number>`), as triage takes it."""
    return path.split("/")[-3] if "pr-logs" in path else None


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
