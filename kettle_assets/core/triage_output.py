"""Clusters in triage's shapes: `failure_data.json` (read unchanged by triage's web page), its
slices by id prefix and by owner, and one row per cluster / per cluster and day for the warehouse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .triage_text import common_spans, normalize_name, tokens_json

SIG_LABEL = re.compile(r"\[sig-([^]]*)\]")
DEFAULT_OWNER = "testing"
BUILD_FIELDS = ("path", "job", "number", "started", "elapsed", "tests_run", "tests_failed", "result", "executor")
BUILD_COLUMNS = ("started", "tests_failed", "elapsed", "tests_run", "result", "executor", "pr")


class ClusterTest(NamedTuple):
    """One test's failures in one cluster, as the warehouse counts them (`tally_rows`)."""

    name: str
    failures: int
    flaky: int
    first_seen: int  # start of its first and last build
    last_seen: int
    first: tuple[int, str, str]  # (started, build path, ordinal as text) of its first failure
    jobs: list[dict]  # triage's [{"builds": numbers as text, descending, "name": job}], numbered builds only
    recent: int  # its numbered builds of standard jobs (no ":" in the name) started after `since`
    older: int  # and those started before


class ClusterTally:
    """One cluster's failures counted: totals, first and last build start, and its tests by
    failures (descending) then name."""

    __slots__ = ("failures", "flaky", "first_seen", "last_seen", "tests")

    def __init__(self, tests: list[ClusterTest]):
        self.tests = sorted(tests, key=lambda t: (-t.failures, t.name))
        self.failures = sum(t.failures for t in tests)
        self.flaky = sum(t.flaky for t in tests)
        self.first_seen = min(t.first_seen for t in tests)
        self.last_seen = max(t.last_seen for t in tests)

    def representative(self) -> tuple[str, str, int]:
        """(build path, test, ordinal) of the failure whose text shows the cluster: the first
        failure, in (started, build path, ordinal) order, of the test with the most failures."""
        test = self.tests[0]
        _, path, seq = test.first
        return path, test.name, int(seq)


def tally(rows: Iterable[tuple]) -> dict[str, ClusterTally]:
    """Clusters by key hash, from rows (key hash, *ClusterTest's fields) per cluster and test."""
    tests: dict[str, list[ClusterTest]] = {}
    for hashed, *fields in rows:
        tests.setdefault(hashed, []).append(ClusterTest(*fields))
    return {hashed: ClusterTally(each) for hashed, each in tests.items()}


@dataclass(frozen=True)
class Shown:
    """How a cluster is shown: its representative failure, that failure's text and the text's spans
    (as JSON: tens of thousands of clusters' lists of ints take hundreds of MB as Python objects)."""

    failure: tuple[str, str, int]  # (build path, test, ordinal)
    text: str
    spans: bytes  # JSON list of the alternating span lengths
    common: bytes  # `common_digest` of the tokens the spans were worked out from


def common_digest(common: set[str]) -> bytes:
    """A digest of a set of tokens: the same failure with the same digest has the same spans."""
    return hashlib.sha1(tokens_json(common)).digest()


def shown(failure: tuple[str, str, int], text: str, common: set[str], digest: bytes | None = None) -> Shown:
    return Shown(failure, text, orjson.dumps(common_spans(text, common)),
                 common_digest(common) if digest is None else digest)


@dataclass
class ClusterSummary:
    clusters: list[dict]  # triage's `clustered` entries plus counts, singletons included


OWNER_RECENT_SECONDS = 86400  # an owner's builds in the day before the window's latest build count first


def describe(tallies: dict[str, ClusterTally], keys: dict[str, tuple[str, str]], shown: dict[str, Shown],
             owners: dict[str, list[str]] | None = None) -> ClusterSummary:
    """Each cluster as triage describes it, by failures then key; `keys` ((key, triage id)) and
    `shown` by key hash. A cluster's tests are rendered to JSON here, once, for the main file and
    the slices alike; `job_names` are the jobs they name."""
    owner_of = _owner_matcher(owners or {})
    out = []
    for hashed, cluster in sorted(tallies.items(), key=lambda hc: (-hc[1].failures, keys[hc[0]][0])):
        key, triage_id = keys[hashed]
        out.append({
            "key": key,
            "id": triage_id,
            "text": shown[hashed].text,
            "spans": orjson.Fragment(shown[hashed].spans),
            "tests": orjson.Fragment(dumps([{"name": t.name, "jobs": t.jobs} for t in cluster.tests])),
            "owner": _owner(cluster.tests, owner_of),
            "failures": cluster.failures,
            "flaky_failures": cluster.flaky,
            "first_seen": cluster.first_seen,
            "last_seen": cluster.last_seen,
            "key_hash": hashed,
            "test_count": len(cluster.tests),
            "job_names": {job["name"] for t in cluster.tests for job in t.jobs},
        })
    return ClusterSummary(clusters=out)


class GroupTokens(NamedTuple):
    """The tokens every failure of a group (one cluster on one UTC day) has, as the last run
    counted them, and how many failures that is."""

    failures: int
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


def _owner(tests: list[ClusterTest], owner_of) -> str:
    """The SIG whose tests failed in most builds in the last day (then before it), from `[sig-x]`
    in the test name or an owners file's prefixes; `testing` when none is known."""
    counts: dict[str, list[int]] = {}
    for test in tests:
        match = SIG_LABEL.search(test.name)
        owner = match.group(1) if match else owner_of(test.name)
        if owner is None:
            continue
        tally = counts.setdefault(owner, [0, 0])
        tally[0] += test.recent
        tally[1] += test.older
    if not counts:
        return DEFAULT_OWNER
    return max(counts.items(), key=lambda oc: (oc[1], oc[0]))[0]


class _JobBlock(NamedTuple):
    rows: int
    columns: dict[str, bytes]  # each column's values in JSON, without the brackets
    keys: list[str]  # build numbers as text
    offsets: np.ndarray  # each number's last build, as a row of the block
    dense: list[int] | None  # [first number, count] when the numbers are consecutive, one build each
    folder: str


class BuildColumns:
    """triage's columnar builds. Each job's block is rendered to JSON once, so that the main file
    and the 256 slices (each a subset of the jobs) are concatenations of bytes. Built from a table
    of BUILD_FIELDS in (job, number, path) order."""

    def __init__(self, table: pa.Table):
        table = table.filter(pc.and_(pc.and_(pc.is_valid(table["number"]), pc.is_valid(table["job"])),
                                     pc.not_equal(pc.fill_null(table["started"], 0), 0)))
        self.latest = pc.max(table["started"]).as_py() or 0  # the start of the latest numbered build
        self._blocks: dict[str, _JobBlock] = {}
        if not table.num_rows:
            return
        jobs = table["job"].combine_chunks().dictionary_encode()
        job_index = jobs.indices.to_numpy(zero_copy_only=False)
        numbers = table["number"].to_numpy()
        same_job = job_index[1:] == job_index[:-1]
        starts = np.flatnonzero(np.r_[True, ~same_job])
        if len(starts) != len(jobs.dictionary):
            raise ValueError("the builds of each job must come together")
        # A repeated number keeps its last build, as triage does (the others stay in the columns).
        last_of_number = np.flatnonzero(np.r_[~same_job | (numbers[1:] != numbers[:-1]), True])
        # The PR number from a pr-logs path (`.../pull/<pr>/<job>/<number>`), as triage takes it.
        pr = pc.if_else(pc.match_substring(table["path"], "pr-logs"),
                        pc.struct_field(pc.extract_regex(table["path"], r"(?P<pr>[^/]*)/[^/]*/[^/]*$"), [0]), None)
        values = {c: (pr if c == "pr" else table[c]).to_pylist() for c in BUILD_COLUMNS}
        folders = table["path"].take(pa.array(starts)).to_pylist()
        ends = np.r_[starts[1:], len(job_index)]
        bounds = np.searchsorted(last_of_number, ends).tolist()
        for n, (job, start, end) in enumerate(zip(jobs.dictionary.take(job_index[starts]).to_pylist(), starts.tolist(),
                                                  ends.tolist())):
            lasts = last_of_number[(bounds[n - 1] if n else 0):bounds[n]]
            block_numbers = numbers[lasts]
            offsets = lasts - start
            count = len(lasts)
            dense = int(block_numbers[-1]) == int(block_numbers[0]) + count - 1 and count == end - start
            path = folders[n]
            self._blocks[job] = _JobBlock(
                end - start, {c: orjson.dumps(values[c][start:end])[1:-1] for c in BUILD_COLUMNS},
                [str(number) for number in block_numbers.tolist()], offsets,
                [int(block_numbers[0]), count] if dense else None, path[: path.rindex("/")])

    def render(self, jobs: Iterable[str] | None = None) -> dict:
        """per job build number -> column index (or `[first, count, first index]` when the numbers
        are consecutive), the columns, and each job's folder; jobs in name order."""
        names = sorted(self._blocks if jobs is None else (j for j in jobs if j in self._blocks))
        parts: dict[str, list[bytes]] = {c: [] for c in BUILD_COLUMNS}
        out_jobs: dict[str, object] = {}
        job_paths: dict[str, str] = {}
        base = 0
        for job in names:
            block = self._blocks[job]
            for c in BUILD_COLUMNS:
                parts[c].append(block.columns[c])
            out_jobs[job] = [*block.dense, base] if block.dense else dict(zip(block.keys, (block.offsets + base).tolist()))
            job_paths[job] = block.folder
            base += block.rows
        cols = {c: orjson.Fragment(b"[" + b",".join(parts[c]) + b"]") for c in BUILD_COLUMNS}
        return {"jobs": out_jobs, "cols": cols, "job_paths": job_paths}


TRIAGE_FIELDS = ("key", "id", "text", "spans", "tests", "owner")


def _triage_entries(clusters: Iterable[dict]) -> list[dict]:
    return [{f: c[f] for f in TRIAGE_FIELDS} for c in clusters]


def _in_triage(summary: ClusterSummary) -> list[dict]:
    """triage lists clusters of more than one failure."""
    return [c for c in summary.clusters if c["failures"] > 1]


def failure_data(summary: ClusterSummary, builds: BuildColumns) -> dict:
    """triage's `failure_data.json`: clusters of more than one failure, and all the builds."""
    return {"clustered": _triage_entries(_in_triage(summary)), "builds": builds.render()}


def slices(summary: ClusterSummary, builds: BuildColumns) -> Iterator[tuple[str, dict]]:
    """triage's slices: `00`..`ff` by id prefix, then `sig-<owner>` for every owner present (and
    `testing`); each with the builds of the jobs its clusters name."""

    def one(clusters: list[dict]) -> dict:
        jobs = set().union(*(c["job_names"] for c in clusters))
        return {"clustered": _triage_entries(clusters), "builds": builds.render(jobs)}

    by_prefix: dict[str, list[dict]] = {}
    by_owner: dict[str, list[dict]] = {DEFAULT_OWNER: []}
    for cluster in _in_triage(summary):
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
