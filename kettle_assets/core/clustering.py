"""Triage's clustering: per test, then across tests, by bounded edit distance on normalised text.

A failure joins the first existing key (in ascending order of the n-gram lower bound, then of
the key) whose edit distance to its normalised text is under 10% of their mean length, else it
founds a new key. Work is bounded by size, never by time: at most `max_distance_checks` exact
distances per text, after which the text founds its own key and the bound hit is counted.

The same function runs a full clustering (no previous state) and an incremental one: failures
already assigned keep their keys and are not even read, keys whose failures all left the window
disappear, and only the new failures are matched, first against their test's keys and then
against the global keys.
"""

from __future__ import annotations

from array import array
from itertools import groupby
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Iterator, NamedTuple

import numpy as np
from rapidfuzz.distance import Levenshtein

from .parallel import map_in_order, sized_chunks
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
    local_keys: list[tuple[str, str]] = field(default_factory=list)  # (test, local key) by local id
    local_ids: array = field(default_factory=lambda: array("i"))  # per failure, in stream order
    global_key: dict[tuple[str, str], str] = field(default_factory=dict)  # (test, local key) -> global key
    local_key: dict[Hashable, str] = field(default_factory=dict)  # fid -> local key (cluster_failures only)
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
    """The keys of one level (a test's keys, or the global ones) with their histograms in an array
    and their indexes sorted by length: only keys within about 10% of a text's length can match
    it, and the lower bounds to those are one vectorised step."""

    def __init__(self, options: ClusterOptions, stats: Clustering):
        self.keys: list[str] = []
        self.position: dict[str, int] = {}
        self._hist = np.zeros((8, NGRAM_BUCKETS), dtype=np.int32)
        self._has_hist = np.zeros(8, dtype=bool)  # histograms are computed when a search first needs them
        self._len = np.zeros(8, dtype=np.int64)
        self._sorted_len = np.zeros(0, dtype=np.int64)  # key lengths, ascending
        self._sorted_idx = np.zeros(0, dtype=np.int64)  # the keys' indexes in that order
        self._histograms = _Histograms()
        self._options = options
        self._stats = stats
        # text -> (index of the key it matched, number of keys when it did): a repeated text only
        # needs checking against the keys founded since, which gives the answer a fresh search would.
        self._matched: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str) -> int:
        n = len(self.keys)
        self._reserve(n + 1)
        self._len[n] = len(key)
        at = int(np.searchsorted(self._sorted_len, len(key), side="right"))
        self._sorted_len = np.insert(self._sorted_len, at, len(key))
        self._sorted_idx = np.insert(self._sorted_idx, at, n)
        self.keys.append(key)
        self.position[key] = n
        return n

    def add_all(self, keys: list[str]) -> None:
        """Add keys at once (one sort instead of one insertion each)."""
        start = len(self.keys)
        size = start + len(keys)
        self._reserve(size)
        for n, key in enumerate(keys, start):
            self._len[n] = len(key)
            self.keys.append(key)
            self.position[key] = n
        order = np.argsort(self._len[:size], kind="stable")
        self._sorted_idx = order.astype(np.int64)
        self._sorted_len = self._len[:size][order]

    def _reserve(self, size: int) -> None:
        """Room for `size` keys in the arrays, doubling them when they grow."""
        if size > len(self._len):
            grow = max(size, 2 * len(self._len)) - len(self._len)
            self._hist = np.concatenate([self._hist, np.zeros((grow, NGRAM_BUCKETS), dtype=np.int32)])
            self._has_hist = np.concatenate([self._has_hist, np.zeros(grow, dtype=bool)])
            self._len = np.concatenate([self._len, np.zeros(grow, dtype=np.int64)])

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
        if start >= len(self.keys):
            return None, False
        size = len(text)
        # |len(key) - size| < int((len(key) + size) / 2 * 0.1) needs 19 * size / 21 < len(key) < 21 * size / 19.
        lo = int(np.searchsorted(self._sorted_len, (19 * size) // 21, side="right"))
        hi = int(np.searchsorted(self._sorted_len, -(-21 * size // 19), side="left"))
        candidates = self._sorted_idx[lo:hi]
        if start:
            candidates = candidates[candidates >= start]
        if not len(candidates):
            return None, False
        self._fill_histograms(candidates)
        hist = self._histograms(text)
        bounds = np.abs(self._hist[candidates] - hist).sum(axis=1) // 4
        lengths = self._len[candidates]
        limits = ((size + lengths) / 2.0 * MATCH_FRACTION).astype(np.int64)
        # Skipped: lower bound over the limit, limit <= 1 (only equal text could match, and equal
        # text is found by lookup), length difference alone at the limit (edit distance >= it).
        viable = np.nonzero((bounds <= limits) & (limits > 1) & (np.abs(lengths - size) < limits))[0]
        if incumbent is not None:
            incumbent_order = (self._bound(text, incumbent), self.keys[incumbent])
        checks = 0
        for i in self._by_bound_then_key(viable, bounds, candidates):
            key = self.keys[candidates[i]]
            if incumbent is not None and (int(bounds[i]), key) >= incumbent_order:
                break
            if checks == self._options.max_distance_checks:
                return None, True
            checks += 1
            self._stats.distance_checks += 1
            limit = int(limits[i])
            if Levenshtein.distance(text, key, score_cutoff=limit - 1) < limit:
                return int(candidates[i]), False
        return None, False

    def _by_bound_then_key(self, viable: np.ndarray, bounds: np.ndarray, candidates: np.ndarray) -> Iterator[int]:
        """`viable` in (lower bound, key) order, the keys of one bound sorted only when the search
        gets to them (it usually stops at the first few)."""
        viable_bounds = bounds[viable]
        order = np.argsort(viable_bounds, kind="stable")
        ordered = viable_bounds[order]
        start = 0
        while start < len(order):
            end = int(np.searchsorted(ordered, ordered[start], side="right"))
            yield from sorted(viable[order[start:end]].tolist(), key=lambda i: self.keys[candidates[i]])
            start = end

    def _fill_histograms(self, indexes: np.ndarray) -> None:
        for i in indexes[~self._has_hist[indexes]].tolist():
            self._hist[i] = self._histograms(self.keys[i])
            self._has_hist[i] = True

    def _bound(self, text: str, index: int) -> int:
        self._fill_histograms(np.array([index]))
        return int(np.abs(self._hist[index] - self._histograms(text)).sum()) // 4


def failure_order(failure: Failure) -> tuple:
    """The order the stream must come in: by test, then (started, build path, id) within a test."""
    return (failure.test, failure.started, failure.build, str(failure.fid))


CLUSTER_CHUNK = 2000  # failures (of whole tests) handed to a worker at a time


class LocalKeys(NamedTuple):
    """One test's local clustering: the keys its new failures founded, in order, and each new
    failure's key as an index into its kept keys (sorted) followed by those founded."""

    founded: list[str]
    key_ids: array
    distance_checks: int
    bound_hits: int


def cluster_tests(tests: list[tuple[list[str], list[str]]], options: ClusterOptions) -> list[LocalKeys]:
    """Local clustering of whole tests, each given as (its kept keys, sorted; its new failures' raw
    texts in stream order). A test's keys depend on nothing else, so tests can be clustered in
    any process (what a worker is given)."""
    done = []
    for kept, texts in tests:
        stats = Clustering()
        index = KeyIndex(options, stats)
        index.add_all(kept)
        key_ids = array("i", (index.position[index.place(normalize(text, options.rules))] for text in texts))
        done.append(LocalKeys(index.keys[len(kept):], key_ids, stats.distance_checks, stats.bound_hits))
    return done


def _by_test(failures: Iterable[Failure]) -> Iterator[tuple[str, list[Failure]]]:
    """(test, its failures) of a stream grouped by test; a test that comes back is an error."""
    done: set[str] = set()
    for test, batch in groupby(failures, key=lambda failure: failure.test):
        if test in done:
            raise ValueError(f"failures must come grouped by test; {test!r} came back")
        done.add(test)
        yield test, list(batch)


def _local_keys(failures: Iterable[Failure], kept: dict[str, dict[str, int]], options: ClusterOptions,
                workers: int) -> Iterator[tuple[str, list[Failure], list[str], LocalKeys]]:
    """(test, its new failures, its kept keys sorted, its `LocalKeys`) per test of the stream, in
    order. With workers > 1 whole tests are clustered in a process pool a chunk at a time, a few
    chunks ahead."""
    tests = ((test, batch, sorted(kept.get(test, ()))) for test, batch in _by_test(failures))
    if workers <= 1:
        for test, batch, keys in tests:
            yield test, batch, keys, cluster_tests([(keys, [f.text for f in batch])], options)[0]
        return

    def arguments(chunk) -> tuple:
        return [(keys, [f.text for f in batch]) for _, batch, keys in chunk], options

    chunks = sized_chunks(tests, lambda test: len(test[1]), CLUSTER_CHUNK)
    for chunk, results in map_in_order(cluster_tests, chunks, arguments, workers):
        for (test, batch, keys), local in zip(chunk, results):
            yield test, batch, keys, local


def cluster_stream(
    failures: Iterable[Failure], previous_global: dict[tuple[str, str], str] | None = None,
    options: ClusterOptions = ClusterOptions(), workers: int = 1,
    kept: dict[str, dict[str, int]] | None = None,
    on_key: Callable[[Failure, str], None] | None = None,
) -> Clustering:
    """Local then global clustering of a stream of new failures in `failure_order`.

    `kept` holds what an earlier run decided and still stands: per test, its local keys that
    still have failures in the window (each with how many), whose global keys are in
    `previous_global`. Those failures are not streamed: they keep their keys, and a new failure
    of the same test is matched against them first. Memory is the keys and a few tests' failures,
    not the window: each new failure's local key comes back as an index into `local_keys`, one int
    per failure in stream order, and is handed to `on_key` as its test is done. `workers` > 1
    clusters tests (their local level) in that many processes (same result).
    """
    previous_global = previous_global or {}
    kept = kept or {}
    result = Clustering()
    local_sizes: dict[tuple[str, str], int] = {}  # (test, local key) -> failures
    first_seen: dict[tuple[str, str], tuple[int, str]] = {}  # (test, new local key) -> first (started, build)
    done: set[str] = set()
    for test, keys in kept.items():
        for key, size in keys.items():
            if (test, key) not in previous_global:
                raise ValueError(f"kept key of {test!r} has no global key")
            local_sizes[(test, key)] = size
            result.kept_failures += size

    for test, batch, kept_keys, local in _local_keys(failures, kept, options, workers):
        done.add(test)
        keys = kept_keys + local.founded
        start = len(result.local_keys)
        result.local_keys.extend((test, key) for key in keys)
        result.distance_checks += local.distance_checks
        result.bound_hits += local.bound_hits
        for failure, key_id in zip(batch, local.key_ids):
            key = keys[key_id]
            if key_id >= len(kept_keys):
                if (test, key) not in first_seen:  # a test's new keys are all founded in its one batch
                    local_sizes[(test, key)] = 0
                    first_seen[(test, key)] = (failure.started, failure.build)
            local_sizes[(test, key)] += 1
            result.local_ids.append(start + key_id)
            if on_key is not None:
                on_key(failure, key)
        result.new_failures += len(batch)
    for name, keys in kept.items():
        if name not in done:
            result.local_keys.extend((name, key) for key in sorted(keys))

    # Global: kept local keys keep their global key; new local keys are matched against the
    # global keys in `options.global_order`.
    global_index = KeyIndex(options, result)
    kept_global = set()
    for name, keys in kept.items():
        for key in keys:
            result.global_key[(name, key)] = previous_global[(name, key)]
            kept_global.add(previous_global[(name, key)])
    global_index.add_all(sorted(kept_global))
    test_sizes: dict[str, int] = {}
    for (name, _), size in local_sizes.items():
        test_sizes[name] = test_sizes.get(name, 0) + size
    pending = [(name, key, size) for (name, key), size in local_sizes.items() if (name, key) not in result.global_key]
    if options.global_order == "size":
        pending.sort(key=lambda tks: (-test_sizes[tks[0]], tks[0], -tks[2], tks[1]))
    else:
        pending.sort(key=lambda tks: (first_seen[(tks[0], tks[1])], tks[0], tks[1]))
    for name, key, _ in pending:
        result.global_key[(name, key)] = global_index.place(key)
    return result


def cluster_failures(
    failures: Iterable[Failure], previous: Previous | None = None, options: ClusterOptions = ClusterOptions()
) -> Clustering:
    """`cluster_stream` over failures in any order, with the previous run given per failure id;
    the result also maps each failure id to its local key (`local_key`)."""
    previous = previous or Previous()
    kept: dict[str, dict[str, int]] = {}
    new, local_key = [], {}
    for failure in failures:
        key = previous.local_key.get(failure.fid)
        if key is not None and (failure.test, key) in previous.global_key:
            sizes = kept.setdefault(failure.test, {})
            sizes[key] = sizes.get(key, 0) + 1
            local_key[failure.fid] = key
        else:
            new.append(failure)
    new.sort(key=failure_order)
    result = cluster_stream(new, previous.global_key, options, kept=kept,
                            on_key=lambda failure, key: local_key.__setitem__(failure.fid, key))
    result.local_key = local_key
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
