"""Triage's clustering: per test, then across tests, by bounded edit distance on normalised text.

A failure joins the first existing key (in ascending order of the n-gram lower bound, then of
the key) whose edit distance to its normalised text is under 10% of their mean length, else it
founds a new key. Work is bounded by size, never by time: at most `max_distance_checks` exact
distances per text, after which the text founds its own key and the bound hit is counted.

The same function runs a full clustering (no previous state) and an incremental one: failures
already assigned keep their keys, keys whose failures all left the window disappear, and only the
new failures are matched, first against their test's keys and then against the global keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable, NamedTuple

import numpy as np
from rapidfuzz.distance import Levenshtein

from .triage_text import NGRAM_BUCKETS, RULES, ngram_counts, normalize

MATCH_FRACTION = 0.10
GLOBAL_ORDERS = ("first_seen", "size")


@dataclass(frozen=True)
class ClusterOptions:
    rules: str = "python"  # normalisation rules: python (default) or go (the later, wider ones)
    max_distance_checks: int = 1000  # exact edit distances tried per text before it founds a key
    # Order of the global level: first_seen (each test's clusters by their first failure) lets a
    # day's increment agree with a full run; size (tests by failures, then clusters by size) is
    # the original's order.
    global_order: str = "size"

    def __post_init__(self):
        if self.rules not in RULES:
            raise ValueError(f"normalisation rules must be one of {RULES}, not {self.rules!r}")
        if self.global_order not in GLOBAL_ORDERS:
            raise ValueError(f"global_order must be one of {GLOBAL_ORDERS}, not {self.global_order!r}")
        if self.max_distance_checks < 1:
            raise ValueError("max_distance_checks must be at least 1")


class Failure(NamedTuple):
    fid: Hashable  # identity of the failure across runs, e.g. (build path, test, ordinal)
    test: str
    build: str  # build path
    text: str  # raw failure text
    started: int = 0  # epoch seconds of the build: failures are clustered in (started, build) order


@dataclass
class Previous:
    """What an earlier run decided: the local key of each failure, the global key of each local key."""

    local_key: dict[Hashable, str] = field(default_factory=dict)  # fid -> local key (of its test)
    global_key: dict[tuple[str, str], str] = field(default_factory=dict)  # (test, local key) -> global key


@dataclass
class Clustering:
    local_key: dict[Hashable, str]  # fid -> local key
    global_key: dict[tuple[str, str], str]  # (test, local key) -> global key
    new_failures: int = 0
    kept_failures: int = 0
    distance_checks: int = 0
    bound_hits: int = 0  # texts that founded a key because max_distance_checks ran out

    def cluster_of(self, failure: Failure) -> str:
        return self.global_key[(failure.test, self.local_key[failure.fid])]


class _Histograms:
    """n-gram histograms of texts, computed once each."""

    def __init__(self):
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        counts = self._cache.get(text)
        if counts is None:
            counts = self._cache[text] = ngram_counts(text)
        return counts


class KeyIndex:
    """The keys of one level (a test's keys, or the global ones) with their histograms and lengths
    in arrays, so that the lower bounds to all keys are one vectorised step."""

    def __init__(self, histograms: _Histograms, options: ClusterOptions, stats: Clustering):
        self.keys: list[str] = []
        self.position: dict[str, int] = {}
        self._hist = np.zeros((8, NGRAM_BUCKETS), dtype=np.int32)
        self._len = np.zeros(8, dtype=np.int64)
        self._histograms = histograms
        self._options = options
        self._stats = stats
        # text -> (index of the key it matched, number of keys when it did): a repeated text only
        # needs checking against the keys founded since, which gives the answer a fresh search would.
        self._matched: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str) -> int:
        n = len(self.keys)
        if n == len(self._len):
            self._hist = np.concatenate([self._hist, np.zeros_like(self._hist)])
            self._len = np.concatenate([self._len, np.zeros_like(self._len)])
        self._hist[n] = self._histograms(key)
        self._len[n] = len(key)
        self.keys.append(key)
        self.position[key] = n
        return n

    def place(self, text: str) -> str:
        """The key `text` belongs to, founding it if nothing matches."""
        at = self.position.get(text)
        if at is not None:
            return text
        seen = self._matched.get(text)
        if seen is None:
            found, exhausted = self._search(text, 0, None)
        else:
            index, known = seen
            found, exhausted = (index, False) if known == len(self.keys) else self._search(text, known, index)
            if found is None:
                found = index
        if found is None:
            if exhausted:
                self._stats.bound_hits += 1
            self.add(text)
            return text
        self._matched[text] = (found, len(self.keys))
        return self.keys[found]

    def _search(self, text: str, start: int, incumbent: int | None) -> tuple[int | None, bool]:
        """First key from `start` on, in (lower bound, key) order, within the distance limit; with an
        incumbent, only keys ordered before it count. Returns (index or None, bound exhausted)."""
        end = len(self.keys)
        if start >= end:
            return None, False
        hist = self._histograms(text)
        size = len(text)
        bounds = np.abs(self._hist[start:end] - hist).sum(axis=1) // 4
        lengths = self._len[start:end]
        limits = ((size + lengths) / 2.0 * MATCH_FRACTION).astype(np.int64)
        # Skipped: lower bound over the limit, limit <= 1 (only equal text could match, and equal
        # text is found by lookup), length difference alone at the limit (edit distance >= it).
        viable = np.nonzero((bounds <= limits) & (limits > 1) & (np.abs(lengths - size) < limits))[0]
        if incumbent is not None:
            incumbent_order = (self._bound(text, incumbent), self.keys[incumbent])
        order = sorted(viable.tolist(), key=lambda i: (int(bounds[i]), self.keys[start + i]))
        checks = 0
        for i in order:
            if incumbent is not None and (int(bounds[i]), self.keys[start + i]) >= incumbent_order:
                break
            if checks == self._options.max_distance_checks:
                return None, True
            checks += 1
            self._stats.distance_checks += 1
            limit = int(limits[i])
            if Levenshtein.distance(text, self.keys[start + i], score_cutoff=limit - 1) < limit:
                return start + i, False
        return None, False

    def _bound(self, text: str, index: int) -> int:
        return int(np.abs(self._hist[index] - self._histograms(text)).sum()) // 4


def cluster_failures(
    failures: Iterable[Failure], previous: Previous | None = None, options: ClusterOptions = ClusterOptions()
) -> Clustering:
    """Local then global clustering of `failures`; those `previous` assigned keep their keys."""
    previous = previous or Previous()
    result = Clustering(local_key={}, global_key={})
    histograms = _Histograms()
    local_sizes: dict[tuple[str, str], int] = {}  # (test, local key) -> failures
    first_seen: dict[tuple[str, str], tuple[int, str]] = {}  # (test, local key) -> first (started, build)
    new_by_test: dict[str, list[Failure]] = {}  # new failures, with their normalised text
    distinct: dict[str, str] = {}
    for failure in failures:
        key = previous.local_key.get(failure.fid)
        if key is not None and (failure.test, key) in previous.global_key:
            result.local_key[failure.fid] = key
            local_sizes[(failure.test, key)] = local_sizes.get((failure.test, key), 0) + 1
            seen = (failure.started, failure.build)
            if seen < first_seen.get((failure.test, key), seen):
                first_seen[(failure.test, key)] = seen
            first_seen.setdefault((failure.test, key), seen)
            result.kept_failures += 1
        else:
            # Only the normalised text is kept (once per distinct text): raw texts are not held.
            text = normalize(failure.text, options.rules)
            text = distinct.setdefault(text, text)
            new_by_test.setdefault(failure.test, []).append(failure._replace(text=text))
            result.new_failures += 1

    # Local: each test on its own (so the order of tests does not matter); within a test, the
    # failures in build order, against the keys its kept failures still hold.
    kept_local: dict[str, list[str]] = {}
    for test, key in local_sizes:
        kept_local.setdefault(test, []).append(key)
    for test in sorted(new_by_test):
        index = KeyIndex(histograms, options, result)
        for key in sorted(kept_local.get(test, ())):
            index.add(key)
        for failure in sorted(new_by_test[test], key=lambda f: (f.started, f.build, str(f.fid))):
            key = index.place(failure.text)
            result.local_key[failure.fid] = key
            local_sizes[(test, key)] = local_sizes.get((test, key), 0) + 1
            first_seen.setdefault((test, key), (failure.started, failure.build))  # failures come in order

    # Global: kept local keys keep their global key (dropped with their last failure); new local
    # keys are matched against the global keys in `options.global_order`.
    global_index = KeyIndex(histograms, options, result)
    kept_global = set()
    for test, key in local_sizes:
        if (test, key) in previous.global_key:
            result.global_key[(test, key)] = previous.global_key[(test, key)]
            kept_global.add(previous.global_key[(test, key)])
    for key in sorted(kept_global):
        global_index.add(key)
    test_sizes: dict[str, int] = {}
    for (test, _), size in local_sizes.items():
        test_sizes[test] = test_sizes.get(test, 0) + size
    pending = [(test, key, size) for (test, key), size in local_sizes.items() if (test, key) not in result.global_key]
    if options.global_order == "size":
        pending.sort(key=lambda tks: (-test_sizes[tks[0]], tks[0], -tks[2], tks[1]))
    else:
        pending.sort(key=lambda tks: (first_seen[(tks[0], tks[1])], tks[0], tks[1]))
    for test, key, _ in pending:
        result.global_key[(test, key)] = global_index.place(key)
    return result


def pairwise_agreement(a: dict[Hashable, Hashable], b: dict[Hashable, Hashable]) -> tuple[float, float]:
    """Precision and recall of "same cluster" pairs of clustering `a` against reference `b` (both
    item -> cluster, over the same items), counted exactly from the contingency table."""
    joint: dict[tuple[Hashable, Hashable], int] = {}
    size_a: dict[Hashable, int] = {}
    size_b: dict[Hashable, int] = {}
    for item, ca in a.items():
        cb = b[item]
        joint[(ca, cb)] = joint.get((ca, cb), 0) + 1
        size_a[ca] = size_a.get(ca, 0) + 1
        size_b[cb] = size_b.get(cb, 0) + 1

    def pairs(n: int) -> int:
        return n * (n - 1) // 2

    both = sum(pairs(n) for n in joint.values())
    in_a = sum(pairs(n) for n in size_a.values())
    in_b = sum(pairs(n) for n in size_b.values())
    return (both / in_a if in_a else 1.0), (both / in_b if in_b else 1.0)
