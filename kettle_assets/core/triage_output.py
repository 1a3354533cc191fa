"""Clusters in triage's shapes: `failure_data.json` (read unchanged by triage's web page), its
slices by id prefix and by owner, and one row per cluster / per cluster and day for the warehouse.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator

from .clustering import Clustering, Failure
from .triage_text import cluster_id, common_spans, ngram_counts, normalize_name, span_tokens

SIG_LABEL = re.compile(r"\[sig-([^]]*)\]")
DEFAULT_OWNER = "testing"
BUILD_COLUMNS = ("started", "tests_failed", "elapsed", "tests_run", "result", "executor", "pr")


@dataclass(frozen=True)
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
    __slots__ = ("key", "failures", "tests", "common", "first", "started", "flaky", "days")

    def __init__(self, key: str):
        self.key = key
        self.failures = 0
        self.tests: dict[str, list[tuple[str, int | None, str]]] = {}  # test -> [(job, number, build path)]
        self.common: set[str] | None = None
        self.first: dict[str, tuple[tuple[str, str], str]] = {}  # test -> ((build, fid), raw text)
        self.started: list[int] = [0, 0]
        self.flaky = 0
        self.days: dict[str, list] = {}  # day -> [failures, flaky, builds set, tests set, jobs set]


@dataclass
class ClusterSummary:
    clusters: list[dict]  # triage's `clustered` entries, singletons included (marked by failures == 1)
    days: list[dict]  # one row per cluster and UTC day
    failures: dict[str, list]  # one row per failure (columns), with its cluster's key hash
    test_keys: dict[str, list]  # one row per test's own key (columns), with its cluster's key hash


def summarize(
    failures: Iterable[tuple[Failure, FailureFacts]],
    clustering: Clustering,
    builds: dict[str, Build],
    owners: dict[str, list[str]] | None = None,
) -> ClusterSummary:
    """Group the failures by their global key and describe each cluster as triage does."""
    clusters: dict[str, _Cluster] = {}
    hashes: dict[str, str] = {}

    def hashed(text: str) -> str:
        digest = hashes.get(text)
        if digest is None:
            digest = hashes[text] = key_hash(text)
        return digest

    members: dict[str, list] = {c: [] for c in ("key_hash", "path", "job", "number", "name", "seq", "started",
                                                 "flaky", "local_key_hash")}
    for failure, facts in failures:
        local = clustering.local_key[failure.fid]
        key = clustering.global_key[(failure.test, local)]
        for column, value in (("key_hash", hashed(key)), ("path", failure.build), ("job", facts.job),
                              ("number", facts.number), ("name", failure.test), ("seq", failure.fid[-1]),
                              ("started", facts.started), ("flaky", facts.flaky), ("local_key_hash", hashed(local))):
            members[column].append(value)
        cluster = clusters.get(key)
        if cluster is None:
            cluster = clusters[key] = _Cluster(key)
        cluster.failures += 1
        cluster.flaky += facts.flaky
        cluster.tests.setdefault(failure.test, []).append((facts.job, facts.number, failure.build))
        tokens = set(span_tokens(failure.text))
        cluster.common = tokens if cluster.common is None else cluster.common & tokens
        order = (failure.build, str(failure.fid))
        first = cluster.first.get(failure.test)
        if first is None or order < first[0]:
            cluster.first[failure.test] = (order, failure.text)
        if cluster.failures == 1:
            cluster.started = [facts.started, facts.started]
        else:
            cluster.started = [min(cluster.started[0], facts.started), max(cluster.started[1], facts.started)]
        day = datetime.fromtimestamp(facts.started, tz=timezone.utc).date().isoformat()
        counts = cluster.days.setdefault(day, [0, 0, set(), set(), set()])
        counts[0] += 1
        counts[1] += facts.flaky
        counts[2].add(failure.build)
        counts[3].add(failure.test)
        counts[4].add(facts.job)

    owner_of = _owner_matcher(owners or {})
    latest = max((b.started for b in builds.values() if b.started and b.number is not None), default=0)
    out, days = [], []
    for cluster in sorted(clusters.values(), key=lambda c: (-c.failures, c.key)):
        tests = sorted(cluster.tests.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        text = cluster.first[tests[0][0]][1]
        entry = {
            "key": cluster.key,
            "id": cluster_id(ngram_counts(cluster.key)),
            "text": text,
            "spans": common_spans(text, cluster.common or set()),
            "tests": [{"name": name, "jobs": _group_by_job(hits, builds)} for name, hits in tests],
            "owner": _owner(tests, owner_of, builds, latest - 86400),
            "failures": cluster.failures,
            "flaky_failures": cluster.flaky,
            "first_seen": cluster.started[0],
            "last_seen": cluster.started[1],
            "key_hash": hashed(cluster.key),
        }
        out.append(entry)
        for day, (n, flaky, blds, tsts, jbs) in sorted(cluster.days.items()):
            days.append({"key_hash": entry["key_hash"], "cluster_id": entry["id"], "day": day, "failures": n,
                         "flaky_failures": flaky, "builds": len(blds), "tests": len(tsts), "jobs": len(jbs)})
    test_keys: dict[str, list] = {"name": [], "local_key_hash": [], "local_key": [], "key_hash": []}
    for (test, local), key in sorted(clustering.global_key.items()):
        for column, value in (("name", test), ("local_key_hash", hashed(local)), ("local_key", local),
                              ("key_hash", hashed(key))):
            test_keys[column].append(value)
    return ClusterSummary(clusters=out, days=days, failures=members, test_keys=test_keys)


def key_hash(key: str) -> str:
    """A unique handle of a key (triage's id is a hash of the histogram, so two keys can share it)."""
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()


def _group_by_job(hits: list[tuple[str, int | None, str]], builds: dict[str, Build]) -> list[dict]:
    """{job, builds} per job, build numbers (as strings) descending, jobs by builds desc then name;
    failures of builds unknown to `builds` or without a number are left out, as triage does."""
    groups: dict[str, set[int]] = {}
    for _job, _number, path in hits:
        build = builds.get(path)
        if build is None or build.number is None:
            continue
        groups.setdefault(build.job, set()).add(build.number)
    ordered = sorted(((job, sorted(numbers, reverse=True)) for job, numbers in groups.items()),
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


def _owner(tests, owner_of, builds: dict[str, Build], since: int) -> str:
    """The SIG whose tests failed most in the last day (then before it), from `[sig-x]` in the test
    name or an owners file's prefixes; `testing` when none is known."""
    counts: dict[str, list[int]] = {}
    for name, hits in tests:
        match = SIG_LABEL.search(name)
        owner = match.group(1) if match else owner_of(name)
        if owner is None:
            continue
        tally = counts.setdefault(owner, [0, 0])
        for job, _number, path in hits:
            if ":" in job:  # not a standard CI job, as triage skips them
                continue
            build = builds.get(path)
            if build is None or build.number is None:
                continue
            tally[0 if (build.started or 0) > since else 1] += 1
    if not counts:
        return DEFAULT_OWNER
    return max(counts.items(), key=lambda oc: (oc[1], oc[0]))[0]


def builds_to_columns(builds: Iterable[Build]) -> dict:
    """triage's columnar builds: per job build number -> column index (or `[first, count, first
    index]` when the numbers are consecutive), the columns, and each job's folder."""
    jobs: dict[str, dict[int, int]] = {}
    cols: dict[str, list] = {c: [] for c in BUILD_COLUMNS}
    job_paths: dict[str, str] = {}
    for build in sorted((b for b in builds if b.number is not None and b.started),
                        key=lambda b: (b.job, b.number, b.path)):
        index = len(cols["started"])
        for column in BUILD_COLUMNS:
            cols[column].append(getattr(build, column))
        numbers = jobs.setdefault(build.job, {})
        if not numbers:
            job_paths[build.job] = build.path[: build.path.rindex("/")]
        numbers[build.number] = index
    out_jobs: dict[str, object] = {}
    for job, indexes in jobs.items():
        numbers = sorted(indexes)
        base = indexes[numbers[0]]
        dense = numbers[-1] == numbers[0] + len(numbers) - 1 and all(
            indexes[number] == base + n for n, number in enumerate(numbers))
        out_jobs[job] = [numbers[0], len(numbers), base] if dense else indexes
    return {"jobs": out_jobs, "cols": cols, "job_paths": job_paths}


TRIAGE_FIELDS = ("key", "id", "text", "spans", "tests", "owner")


def failure_data(summary: ClusterSummary, builds: dict[str, Build]) -> dict:
    """triage's `failure_data.json`: clusters of more than one failure, and all the builds."""
    clustered = [{f: c[f] for f in TRIAGE_FIELDS} for c in summary.clusters if c["failures"] > 1]
    return {"clustered": clustered, "builds": builds_to_columns(builds.values())}


def slices(data: dict, builds: dict[str, Build]) -> Iterator[tuple[str, dict]]:
    """triage's slices: `00`..`ff` by id prefix, then `sig-<owner>` for every owner present (and
    `testing`); each with the builds of the jobs its clusters name."""
    by_job: dict[str, list[Build]] = {}
    for build in builds.values():
        by_job.setdefault(build.job, []).append(build)

    def one(clusters: list[dict]) -> dict:
        jobs = sorted({job["name"] for c in clusters for t in c["tests"] for job in t["jobs"]})
        return {"clustered": clusters, "builds": builds_to_columns(b for j in jobs for b in by_job.get(j, ()))}

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
    """Bytes as triage writes them (sorted keys), so the same clusters give the same file."""
    return json.dumps(data, sort_keys=True).encode("utf-8")
