"""`failure_clusters`: triage's clusters of the window's failed tests, as warehouse tables and as
triage's `failure_data.json` (plus its slices) under export/triage/.

Incremental by default: failures already clustered keep their cluster, failures that left the
window leave theirs, and only new failures are matched. What a cluster shows (its text and the
spans of that text all its failures share) is worked out again only for clusters whose failures
changed; the rest is counted by the warehouse. A change of options, or `full: true`, clusters the
whole window again.
"""

import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from itertools import groupby
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import dagster as dg
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.clustering import ClusterOptions, Failure, cluster_stream
from ..core.parallel import map_in_order, sized_chunks
from ..core.triage_output import (
    OWNER_RECENT_SECONDS, BuildColumns, ClusterSummary, GroupTokens, Shown, common_digest, describe, dumps,
    failure_data, group_tokens, key_hash, slices, tally)
from ..core.triage_output import shown as shown_as
from ..core.triage_text import cluster_id, common_tokens, common_tokens_json, ngram_counts, tokens_json
from ..resources.cluster_tables import (
    ASSIGNED_SCHEMA, CLUSTERS, DAYS, FAILURES, GROUPS_SCHEMA, IDS_SCHEMA, KEYMAP_SCHEMA, TEST_KEYS, ClusterTables,
    Window, cluster_tables)
from ..core import report_links
from ..resources.settings import KettleSettings
from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import WAREHOUSE_GROUP, md_table
from .links import report_link

OPTIONS_MARKER = "failure_clusters.options"
STATE_MARKER = "failure_clusters.state"  # the token of the state files the tables go with
PARALLEL_FROM = 20_000  # texts from which normalising or tokenising is worth worker processes


class FailureClustersConfig(dg.Config):
    window_days: int = 14
    last_day: Optional[str] = None  # YYYY-MM-DD, last day of the window; default: the latest failure's day
    excluded_jobs: list[str] = ["ci-kubernetes-coverage-unit"]
    rules: str = "python"  # normalisation rules: python (triage's default) or go (its later ones)
    max_distance_checks: int = 1000  # exact edit distances per text before it founds its own cluster
    full: bool = False  # cluster the whole window from scratch
    workers: int = 2  # processes normalising and tokenising text when there is much of it (same result)
    owners_file: Optional[str] = None  # JSON {sig: [test name prefixes]}, as triage's --owners


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_triage_files(folder: Path, summary: ClusterSummary, builds: BuildColumns) -> dict:
    """failure_data.json and slices/failure_data_<slice>.json; stale slices removed. Returns sizes."""
    for partial in [*folder.glob("*.tmp"), *folder.glob("slices/*.tmp")]:  # of a run killed while writing
        partial.unlink()
    main = dumps(failure_data(summary, builds))
    _write_atomic(folder / "failure_data.json", main)
    sizes = {"failure_data_bytes": len(main), "failure_data_sha1": hashlib.sha1(main).hexdigest()}
    del main
    written, largest = set(), 0
    for name, part in slices(summary, builds):
        blob = dumps(part)
        path = folder / "slices" / f"failure_data_{name}.json"
        _write_atomic(path, blob)
        written.add(path.name)
        largest = max(largest, len(blob))
    for old in (folder / "slices").glob("failure_data_*.json"):
        if old.name not in written:
            old.unlink()
    return {**sizes, "slices": len(written), "largest_slice_bytes": largest}


def _timed(function, *args) -> tuple[float, object]:
    start = time.monotonic()
    result = function(*args)
    return round(time.monotonic() - start, 2), result


def _columns(rows: list[dict], names: list[str]) -> dict[str, list]:
    return {n: [r[n] for r in rows] for n in names}


def run_failure_clusters(context, config: FailureClustersConfig, staging: StagingStore, warehouse: Warehouse,
                         report: dg.MetadataValue | None = None):
    with cluster_tables(warehouse) as tables:
        return _run(context, config, staging, tables, report)


def _run(context, config: FailureClustersConfig, staging: StagingStore, tables: ClusterTables,
         report: dg.MetadataValue | None):
    options = ClusterOptions(rules=config.rules, max_distance_checks=config.max_distance_checks)
    if not tables.has_test_results():
        context.log.warning("failure_clusters: no table test_results in the warehouse yet; nothing to cluster")
        return dg.MaterializeResult(metadata={"failures": 0, "missing_input": "test_results"})
    latest = tables.latest_day()
    last_day = date.fromisoformat(config.last_day) if config.last_day else latest
    if last_day is None:
        context.log.info("failure_clusters: test_results has no failed test; nothing to cluster")
        return dg.MaterializeResult(metadata={"failures": 0})
    window = Window(last_day - timedelta(days=config.window_days - 1), last_day, tuple(sorted(config.excluded_jobs)))
    fingerprint = json.dumps({"rules": options.rules, "max_distance_checks": options.max_distance_checks,
                              "excluded": window.excluded_jobs})
    steps = _Steps()
    previous = None
    if not config.full and staging.read_marker(OPTIONS_MARKER) == fingerprint:
        previous = tables.previous()
    incremental = previous is not None
    local_by_hash, previous_global, known_hashes, known_ids = previous or ({}, {}, {}, {})
    del previous
    state = _State(staging, staging.read_marker(STATE_MARKER) if incremental else None)
    steps.mark("previous run's keys and state")
    # Without the last run's state, the kept failures' texts are needed to count their tokens.
    failures_total = tables.stage(window, with_previous=incremental, all_texts=not state.valid)
    steps.mark("staging the window")
    unnamed = tables.unnamed_failures(window)
    if unnamed:
        context.log.warning(f"failure_clusters: {unnamed} failed tests without a name in the window, left out")
    kept: dict[str, dict[str, int]] = {}
    for name, local_hash, failures in tables.kept_keys():
        kept.setdefault(name, {})[local_by_hash[(name, local_hash)]] = failures
    del local_by_hash
    workers = config.workers if failures_total >= PARALLEL_FROM else 1

    assigned = _Assigned(tables)
    clustering = cluster_stream(tables.new_failures(), previous_global, options, workers, kept=kept,
                                on_key=assigned.add)
    assigned.close()
    del previous_global, kept
    steps.mark("clustering new failures")
    keymap, keys = _keymap(clustering, known_hashes, known_ids)
    del known_hashes, known_ids
    tables.set_keys(keymap)
    # From here on only the clustering's counts are needed: its keys (and their copies in the key
    # map) are the largest things a run from scratch holds.
    counted = _Counted(clustering.new_failures, clustering.kept_failures, clustering.distance_checks,
                       clustering.bound_hits)
    del keymap, clustering
    steps.mark("key map")

    groups = state.compare(tables.group_counts())
    needy = groups.needy()
    if needy.num_rows:
        tables.tokenize_groups(needy)
        groups = state.compare(tables.group_counts())
    steps.mark("groups")
    builds = tables.builds(window)
    steps.mark("builds")
    tallies = tally(tables.tally_rows(builds.latest - OWNER_RECENT_SECONDS))
    steps.mark("counting clusters")
    changed = groups.changed_clusters() | {h for h, t in tallies.items() if state.shown_as(h) != t.representative()}
    commons = state.common_tokens(groups, tables.tokenized_texts(), changed,
                                  config.workers if groups.tokenized >= PARALLEL_FROM else 1)
    steps.mark("common tokens")
    shown, reshown = _shown(tables, tallies, commons, state)
    steps.mark("cluster texts")
    del commons
    state.shown.clear()  # the old texts of the clusters described again
    owners = json.loads(Path(config.owners_file).read_text()) if config.owners_file else None
    summary = describe(tallies, keys, shown, owners)
    described = len(changed & tallies.keys())
    steps.mark("describing")
    token = state.write(shown)
    del tallies, shown

    cluster_cols = ["id", "key_hash", "key", "text", "owner", "failures", "flaky_failures", "first_seen", "last_seen"]
    clusters = _columns(summary.clusters, cluster_cols)
    clusters["tests"] = [c["test_count"] for c in summary.clusters]
    clusters["jobs"] = [len(c["job_names"]) for c in summary.clusters]
    clusters["in_triage"] = [c["failures"] > 1 for c in summary.clusters]
    clusters_table = pa.table(clusters).rename_columns(
        ["cluster_id", "key_hash", "cluster_key", *cluster_cols[3:], "tests", "jobs", "in_triage"])
    clusters_table = _with_timestamps(clusters_table, ["first_seen", "last_seen"])
    # The JSON is rendered (Python) while the warehouse writes the tables (DuckDB or BigQuery,
    # outside the interpreter's lock); it depends on nothing the tables hold.
    with ThreadPoolExecutor(1, thread_name_prefix="triage-json") as pool:
        json_written = pool.submit(_timed, write_triage_files, staging.export_dir / "triage", summary, builds)
        tables.replace(clusters_table)
        tables.close()
        steps.mark("writing tables")
        staging.write_marker(OPTIONS_MARKER, fingerprint)
        staging.write_marker(STATE_MARKER, token)
        render_seconds, sizes = json_written.result()
    steps.mark("writing JSON")  # what is left of it once the tables are written

    flaky = sum(c["flaky_failures"] for c in summary.clusters)
    context.log.info(
        f"failure_clusters: {failures_total} failures of {window.first_day}..{window.last_day} in "
        f"{len(summary.clusters)} clusters ({counted.new_failures} newly matched, {counted.kept_failures} kept; "
        f"{described} clusters described again); {counted.bound_hits} texts hit the distance-check bound"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(summary.clusters),
            "window": f"{window.first_day}..{window.last_day}",
            "mode": "incremental" if incremental else "full",
            "failures": failures_total,
            "new_failures": counted.new_failures,
            "kept_failures": counted.kept_failures,
            "clusters": len(summary.clusters),
            "clusters_in_triage": sum(1 for c in summary.clusters if c["failures"] > 1),
            "clusters_described": described,
            "clusters_texts_worked_out": reshown,
            "flaky_failures": flaky,
            "skipped_unnamed_failures": unnamed,
            "distance_checks": counted.distance_checks,
            "bound_hits": counted.bound_hits,
            "max_distance_checks": options.max_distance_checks,
            "clustering_seconds": steps.total(CLUSTERING_STEPS),
            "summary_seconds": steps.total(SUMMARY_STEPS),
            "render_seconds": render_seconds,
            "step_seconds": dg.MetadataValue.json(steps.seconds),
            "tokenized_failures": groups.tokenized,
            "groups_read_again": needy.num_rows,
            **sizes,
            "tables": ", ".join(tables.describe(t) for t in (CLUSTERS, FAILURES, DAYS, TEST_KEYS)),
            **({"report": report} if report is not None else {}),
            "top_clusters": dg.MetadataValue.md(md_table(
                [{"id": c["id"], "failures": c["failures"], "flaky": c["flaky_failures"], "owner": c["owner"],
                  "key": c["key"]} for c in summary.clusters[:10]],
                ["id", "failures", "flaky", "owner", "key"])),
        }
    )


def _shown(tables: ClusterTables, tallies: dict, commons: dict[str, set[str]], state: "_State"
           ) -> tuple[dict[str, Shown], int]:
    """How each cluster is shown, and for how many it was worked out. The clusters with common
    tokens (the changed ones) keep the last run's when their representative failure and common
    tokens are the same; the others' texts are read in one go and their spans worked out."""
    representatives, digests = {}, {}
    for hashed, common in commons.items():
        failure, digest = tallies[hashed].representative(), common_digest(common)
        before = state.shown.get(hashed)
        if before is None or before.failure != failure or before.common != digest:
            representatives[hashed], digests[hashed] = failure, digest
    texts = tables.failure_texts(pa.table(
        [list(c) for c in zip(*representatives.values())] if representatives else [[], [], []], schema=IDS_SCHEMA))
    shown = {}
    for hashed in tallies:
        if hashed in representatives:
            text = texts[representatives[hashed]]
            shown[hashed] = shown_as(representatives[hashed], text, commons[hashed], digests[hashed])
        else:
            shown[hashed] = state.shown[hashed]
    return shown, len(representatives)


class _Steps:
    """Seconds each step of a run took, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def mark(self, step: str) -> None:
        now = time.monotonic()
        self.seconds[step] = round(self.seconds.get(step, 0) + now - self._last, 2)
        self._last = now

    def total(self, steps: list[str]) -> float:
        return round(sum(self.seconds.get(step, 0) for step in steps), 2)


# The steps the metadata's clustering_seconds and summary_seconds add up.
CLUSTERING_STEPS = ["clustering new failures", "key map"]
SUMMARY_STEPS = ["groups", "builds", "counting clusters", "common tokens", "cluster texts", "describing"]


class _Counted(NamedTuple):
    new_failures: int
    kept_failures: int
    distance_checks: int
    bound_hits: int


class _Assigned:
    """The test keys of new failures, handed to the warehouse in batches as the clustering goes."""

    BATCH = 20_000

    def __init__(self, tables: ClusterTables):
        self.tables = tables
        self.rows: list[tuple] = []
        self.hashes: dict[str, str] = {}

    def add(self, failure: Failure, local_key: str) -> None:
        hashed = self.hashes.get(local_key)
        if hashed is None:
            hashed = self.hashes[local_key] = key_hash(local_key)
        path, name, seq = failure.fid
        self.rows.append((path, name, seq, hashed))
        if len(self.rows) == self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.tables.add_assigned(pa.Table.from_arrays(
                [pa.array(c, f.type) for c, f in zip(zip(*self.rows), ASSIGNED_SCHEMA)], schema=ASSIGNED_SCHEMA))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.hashes = {}


def _keymap(clustering, known_hashes: dict[str, str], known_ids: dict[str, str]
            ) -> tuple[pa.Table, dict[str, tuple[str, str]]]:
    """Every test key in use with its cluster's key hash and id (KEYMAP_SCHEMA), and the clusters'
    (key, triage id) by key hash. Both are functions of the key: those of the last run's keys are
    taken as they were."""
    keys = {}
    rows = {f.name: [] for f in KEYMAP_SCHEMA}
    for (test, local), key in sorted(clustering.global_key.items()):
        hashed = known_hashes.get(key) or key_hash(key)
        if hashed not in keys:
            keys[hashed] = (key, known_ids.get(key) or cluster_id(ngram_counts(key)))
        local_hash = known_hashes.get(local) or key_hash(local)
        for column, value in zip(rows, (test, local_hash, local, hashed, keys[hashed][1])):
            rows[column].append(value)
    return pa.table(rows, schema=KEYMAP_SCHEMA), keys


class _Groups:
    """This run's groups (cluster and UTC day) beside the last run's: which must have all their
    texts tokenised, which clusters changed, and each group's common tokens. A kept failure keeps
    its cluster, so a group's failures that are not new were all in the same group last run."""

    def __init__(self, counts: pa.Table, before: pa.Table | None):
        # counts: key_hash, day, failures, tokenized (group order)
        self.counts = counts
        self.tokenized = pc.sum(counts["tokenized"]).as_py() or 0
        self.before = before  # the last run's groups without their tokens, or None
        if before is None:
            self.previous_row = pa.nulls(counts.num_rows, pa.int64())
            self.vanished: set[str] = set()
            return
        prior = before.select(["key_hash", "day"]).append_column(
            "prior_row", pa.array(range(before.num_rows), pa.int64()))
        here = counts.select(["key_hash", "day"]).append_column("row", pa.array(range(counts.num_rows), pa.int64()))
        joined = here.join(prior, ["key_hash", "day"], join_type="full outer")
        matched = joined.filter(pc.is_valid(joined["row"])).sort_by("row")
        self.previous_row = matched["prior_row"].combine_chunks()
        gone = joined.filter(pc.is_null(joined["row"]))
        self.vanished = set(gone["key_hash"].to_pylist())

    def _prior_failures(self) -> pa.Array:
        if self.before is None:
            return pa.nulls(self.counts.num_rows, pa.int64())
        return pc.take(self.before["failures"], self.previous_row)

    def needy(self) -> pa.Table:
        """Groups some of whose failures have no text to tokenise and no previous tokens that
        stand for exactly those failures."""
        failures, tokenized = self.counts["failures"], self.counts["tokenized"]
        untokenized = pc.subtract(failures, tokenized)
        prior = self._prior_failures()
        needs = pc.and_(pc.greater(untokenized, 0),
                        pc.or_(pc.is_null(prior), pc.not_equal(untokenized, pc.fill_null(prior, -1))))
        return self.counts.filter(needs).select(["key_hash", "day"]).cast(GROUPS_SCHEMA)

    def changed_clusters(self) -> set[str]:
        """Clusters a group joined, left or changed in."""
        prior = self._prior_failures()
        changed = pc.or_(pc.greater(self.counts["tokenized"], 0),
                         pc.or_(pc.is_null(prior), pc.not_equal(self.counts["failures"], pc.fill_null(prior, -1))))
        return set(self.counts.filter(changed)["key_hash"].to_pylist()) | self.vanished

    def _rows(self) -> Iterator[tuple]:
        """Each group with its row in, and failures of, the last run, a batch of Python objects at a time."""
        table = self.counts.select(["key_hash", "day", "failures", "tokenized"]).append_column(
            "prior_row", self.previous_row).append_column("prior_failures", self._prior_failures())
        for batch in table.to_batches(max_chunksize=10_000):
            yield from zip(*(column.to_pylist() for column in batch.columns))

    def common_tokens(self, texts: Iterator[tuple[str, int, str]], clusters: set[str],
                      previous: "_PreviousTokens | None", keep: "_GroupsWriter", workers: int = 1
                      ) -> dict[str, set[str]]:
        """Each cluster of `clusters` with the tokens all its failures have; every group's tokens
        (as JSON) are handed to `keep` for the next run, unchanged ones as they were. The texts
        are tokenised in `workers` processes when there are more than one (same result)."""
        commons: dict[str, set[str]] = {}
        streamed_groups = _streamed_commons(texts, workers)
        pending = next(streamed_groups, None)
        for hashed, day, count, tokenized_count, prior_row, prior_count in self._rows():
            streamed = streamed_blob = None
            if tokenized_count:
                if pending is None or pending[0] != ((hashed, day), tokenized_count):
                    raise RuntimeError(f"texts of group ({hashed}, {day}) out of order")
                _, streamed, streamed_blob = pending
                pending = next(streamed_groups, None)
            blob = previous.blob(prior_row) if tokenized_count < count and prior_row is not None else None
            if tokenized_count == 0 and hashed not in clusters:
                keep.add(blob)  # unchanged: the previous run's tokens, kept as they are
                continue
            kept = None
            if blob is not None:
                kept = GroupTokens(prior_count, orjson.loads(blob))
            tokens = group_tokens(count, tokenized_count, streamed, kept)
            if tokenized_count == 0:
                keep.add(blob)
            else:
                keep.add(streamed_blob if tokenized_count == count else tokens_json(tokens))
            if hashed in clusters:
                common = commons.get(hashed)
                commons[hashed] = set(tokens) if common is None else common.intersection(tokens)
        if pending is not None:
            raise RuntimeError("texts left over after the last group")
        return commons


TOKENIZE_CHUNK = 2_000  # texts handed to a worker at a time


def _streamed_commons(texts: Iterator[tuple[str, int, str]], workers: int
                      ) -> Iterator[tuple[tuple, set[str], bytes]]:
    """Per group of consecutive texts ((cluster key hash, day), text): ((group, its number of
    texts), the tokens they all have, those tokens as JSON), in order. With workers > 1 the texts
    are tokenised in a process pool a chunk of groups at a time, a few chunks ahead."""
    grouped = ((key, [row[2] for row in rows]) for key, rows in groupby(texts, key=lambda row: row[:2]))
    if workers <= 1:
        for key, group in grouped:
            tokens = common_tokens(group)
            yield (key, len(group)), tokens, tokens_json(tokens)
        return

    chunks = sized_chunks(grouped, lambda key_group: len(key_group[1]), TOKENIZE_CHUNK)
    for chunk, blobs in map_in_order(common_tokens_json, chunks, lambda chunk: ([g for _, g in chunk],), workers):
        for (key, group), blob in zip(chunk, blobs):
            yield (key, len(group)), set(orjson.loads(blob)), blob


class _PreviousTokens:
    """The last run's group tokens, read in batches as the groups come (in the same order)."""

    def __init__(self, path: Path):
        self.path = path
        self._restart()

    def _restart(self) -> None:
        self._batches = pq.ParquetFile(self.path).iter_batches(batch_size=5_000, columns=["tokens"])
        self._start, self._values = 0, []

    def blob(self, row: int) -> bytes:
        if row < self._start:  # out of order: read again from the start
            self._restart()
        while row >= self._start + len(self._values):
            self._start += len(self._values)
            self._values = next(self._batches).column(0).to_pylist()
        return self._values[row - self._start]


class _GroupsWriter:
    """This run's groups with their tokens, written as they are worked out."""

    BATCH = 5_000

    def __init__(self, path: Path, counts: pa.Table, schema: pa.Schema):
        self.counts = counts
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        self.schema = schema
        self.blobs: list[bytes] = []
        self.written = 0

    def add(self, blob: bytes) -> None:
        self.blobs.append(blob)
        if len(self.blobs) == self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.blobs:
            part = self.counts.slice(self.written, len(self.blobs))
            self.writer.write_table(pa.table(
                [part["key_hash"], part["day"], part["failures"], pa.array(self.blobs, pa.binary())], schema=self.schema))
            self.written += len(self.blobs)
            self.blobs = []

    def close(self) -> Path:
        self._flush()
        self.writer.close()
        if self.written != self.counts.num_rows:
            raise RuntimeError(f"{self.written} of {self.counts.num_rows} groups written")
        return self.tmp


class _State:
    """What the last run worked out that the tables do not hold: each group's common tokens and how
    each cluster is shown (staging/failure_clusters/{groups,shown}.parquet). The files are used
    only by the run after the one that wrote them: their token must equal the marker written after
    the tables, so a run that crashed in between leaves files nobody reads."""

    GROUPS = pa.schema([("key_hash", pa.string()), ("day", pa.int64()), ("failures", pa.int64()),
                        ("tokens", pa.binary())])
    SHOWN = pa.schema([("key_hash", pa.string()), ("path", pa.string()), ("name", pa.string()), ("seq", pa.int64()),
                       ("text", pa.string()), ("spans", pa.binary()), ("common", pa.binary())])

    def __init__(self, staging: StagingStore, expected_token: str | None):
        folder = staging.root / "failure_clusters"
        folder.mkdir(parents=True, exist_ok=True)
        self.groups_path, self.shown_path = folder / "groups.parquet", folder / "shown.parquet"
        self.token = uuid.uuid4().hex  # of the files this run writes
        self.before: pa.Table | None = None
        self.previous_tokens: _PreviousTokens | None = None
        self.shown: dict[str, Shown] = {}
        if expected_token is None or not (self.groups_path.exists() and self.shown_path.exists()):
            return
        tokens = [(pq.read_schema(p).metadata or {}).get(b"token", b"").decode()
                  for p in (self.groups_path, self.shown_path)]
        if tokens != [expected_token, expected_token]:
            return
        if pq.read_schema(self.groups_path).names != self.GROUPS.names:  # groups by test key, before
            return
        self.before = pq.read_table(self.groups_path, columns=[f.name for f in self.GROUPS if f.name != "tokens"]
                                    ).replace_schema_metadata(None)
        self.previous_tokens = _PreviousTokens(self.groups_path)
        shown = pq.read_table(self.shown_path)
        if "common" not in shown.column_names:  # written before the digests were kept
            shown = shown.append_column("common", pa.array([b""] * shown.num_rows, pa.binary()))
        for hashed, path, name, seq, text, spans, common in zip(
                *(shown[f.name].to_pylist() for f in self.SHOWN)):
            # Re-serialised: the bytes go into the output as they are, so they must be orjson's.
            self.shown[hashed] = Shown((path, name, seq), text, orjson.dumps(orjson.loads(spans)), common)

    @property
    def valid(self) -> bool:
        return self.before is not None

    def shown_as(self, hashed: str) -> tuple | None:
        shown = self.shown.get(hashed)
        return None if shown is None else shown.failure

    def compare(self, counts: pa.Table) -> _Groups:
        return _Groups(counts, self.before)

    def common_tokens(self, groups: _Groups, texts: Iterator[tuple[str, int, str]], clusters: set[str],
                      workers: int = 1) -> dict[str, set[str]]:
        """`_Groups.common_tokens`, the groups written for the next run (put in place by `write`)."""
        writer = _GroupsWriter(self.groups_path, groups.counts, self.GROUPS.with_metadata({"token": self.token}))
        try:
            commons = groups.common_tokens(texts, clusters, self.previous_tokens, writer, workers)
        except BaseException:
            writer.writer.close()
            raise
        self._groups_written = writer.close()
        return commons

    def write(self, shown: dict[str, Shown]) -> str:
        ordered = sorted(shown.items())
        columns = [[h for h, _ in ordered], [s.failure[0] for _, s in ordered], [s.failure[1] for _, s in ordered],
                   [s.failure[2] for _, s in ordered], [s.text for _, s in ordered],
                   [s.spans for _, s in ordered], [s.common for _, s in ordered]]
        _write_parquet(self.shown_path, pa.table(columns, schema=self.SHOWN.with_metadata({"token": self.token})))
        os.replace(self._groups_written, self.groups_path)
        return self.token


def _write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _with_timestamps(table: pa.Table, columns: list[str]) -> pa.Table:
    for name in columns:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, table[name].cast(pa.int64()).cast(pa.timestamp("s")))
    return table


@dg.asset(
    name="failure_clusters",
    group_name=WAREHOUSE_GROUP,
    deps=[dg.AssetKey("test_results"), dg.AssetKey("build_all")],
    kinds={"duckdb", "bigquery", "json"},
    pool="warehouse",
    code_version="1",
    # Eager, but not held back by the many day partitions of the inputs that never ran.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    description=(
        "Triage's failure clusters of the last 14 days of failed tests: tables failure_clusters, "
        "failure_cluster_failures, failure_cluster_days, failure_cluster_test_keys; "
        "export triage/failure_data.json and its slices."
    ),
)
def failure_clusters(
    context: dg.AssetExecutionContext, config: FailureClustersConfig, staging: StagingStore, warehouse: Warehouse,
    settings: KettleSettings,
) -> dg.MaterializeResult:
    return run_failure_clusters(context, config, staging, warehouse, report_link(settings, staging, report_links.CLUSTERS))


# Evaluates failure_clusters' automation condition; running by default, as the other sensors are.
failure_clusters_automation = dg.AutomationConditionSensorDefinition(
    "failure_clusters_automation",
    target=dg.AssetSelection.assets("failure_clusters"),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
