"""`failure_clusters`: triage's clusters of the window's failed tests, as warehouse tables and as
triage's `failure_data.json` (plus its slices) under export/triage/.

Incremental by default: failures already clustered keep their cluster, failures that left the
window leave theirs, and only new failures are matched. A change of options, or `full: true`,
clusters the whole window again.
"""

import hashlib
import json
import os
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Iterator, Optional

import dagster as dg
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.clustering import ClusterOptions, cluster_stream
from ..core.triage_output import (
    BuildColumns, GroupTokens, dumps, failure_data, key_hash, slices, summarize, test_key_rows)
from ..core.triage_text import cluster_id, ngram_counts
from ..resources.cluster_tables import CLUSTERS, DAYS, FAILURES, TEST_KEYS, ClusterTables, Window, cluster_tables
from ..core import report_links
from ..resources.settings import KettleSettings
from ..resources.staging import StagingStore
from ..resources.warehouse import Warehouse
from .common import WAREHOUSE_GROUP, md_table
from .links import report_link

OPTIONS_MARKER = "failure_clusters.options"
TOKENS_MARKER = "failure_clusters.group_tokens"  # the token of the group tokens file the tables go with
PARALLEL_FROM = 20_000  # failures in the window from which normalising is worth worker processes


class FailureClustersConfig(dg.Config):
    window_days: int = 14
    last_day: Optional[str] = None  # YYYY-MM-DD, last day of the window; default: the latest failure's day
    excluded_jobs: list[str] = ["ci-kubernetes-coverage-unit"]
    rules: str = "python"  # normalisation rules: python (triage's default) or go (its later ones)
    max_distance_checks: int = 1000  # exact edit distances per text before it founds its own cluster
    full: bool = False  # cluster the whole window from scratch
    workers: int = 2  # processes normalising text when there are many failures (the result is the same)
    owners_file: Optional[str] = None  # JSON {sig: [test name prefixes]}, as triage's --owners


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_triage_files(folder: Path, data: dict, builds: BuildColumns) -> dict:
    """failure_data.json and slices/failure_data_<slice>.json; stale slices removed. Returns sizes."""
    main = dumps(data)
    _write_atomic(folder / "failure_data.json", main)
    written, largest = set(), 0
    for name, part in slices(data, builds):
        blob = dumps(part)
        path = folder / "slices" / f"failure_data_{name}.json"
        _write_atomic(path, blob)
        written.add(path.name)
        largest = max(largest, len(blob))
    for old in (folder / "slices").glob("failure_data_*.json"):
        if old.name not in written:
            old.unlink()
    return {"failure_data_bytes": len(main), "slices": len(written), "largest_slice_bytes": largest,
            "failure_data_sha1": hashlib.sha1(main).hexdigest()}


def _columns(rows: list[dict], names: list[str]) -> dict[str, list]:
    return {n: [r[n] for r in rows] for n in names}


def run_failure_clusters(context, config: FailureClustersConfig, staging: StagingStore, warehouse: Warehouse,
                         report: dg.MetadataValue | None = None):
    tables = cluster_tables(warehouse)
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
    previous = None
    if not config.full and staging.read_marker(OPTIONS_MARKER) == fingerprint:
        previous = tables.previous()
    incremental = previous is not None
    local_by_hash, previous_global = previous or ({}, {})
    del previous
    chunks = tables.test_chunks(window)
    unnamed = tables.unnamed_failures(window)
    if unnamed:
        context.log.warning(f"failure_clusters: {unnamed} failed tests without a name in the window, left out")
    workers = config.workers if sum(n for _, _, n in chunks) >= PARALLEL_FROM else 1
    started = time.monotonic()
    clustering = cluster_stream((f for f, _ in tables.failures(window, chunks, local_by_hash, kept_texts=False)),
                                previous_global, options, workers)
    clustered_seconds = time.monotonic() - started
    del previous_global  # the clustering holds the cluster keys still in use
    builds = tables.builds(window)
    owners = json.loads(Path(config.owners_file).read_text()) if config.owners_file else None
    membership = _Membership(tables, clustering)
    group_tokens = _GroupTokensFile(staging, staging.read_marker(TOKENS_MARKER) if incremental else None)
    started = time.monotonic()
    summary = summarize(membership.rows(tables.failures(window, chunks, local_by_hash)), builds, owners,
                        previous=group_tokens.read(), keep=group_tokens.write)
    group_tokens.close()
    summary_seconds = time.monotonic() - started
    columns = BuildColumns(builds.values())
    del builds, membership  # one object per build: the largest thing held while the JSON is written
    data = failure_data(summary, columns)

    cluster_cols = ["id", "key_hash", "key", "text", "owner", "failures", "flaky_failures", "first_seen", "last_seen"]
    clusters = _columns(summary.clusters, cluster_cols)
    clusters["tests"] = [len(c["tests"]) for c in summary.clusters]
    clusters["jobs"] = [len({j["name"] for t in c["tests"] for j in t["jobs"]}) for c in summary.clusters]
    clusters["in_triage"] = [c["failures"] > 1 for c in summary.clusters]
    clusters_table = pa.table(clusters).rename_columns(
        ["cluster_id", "key_hash", "cluster_key", *cluster_cols[3:], "tests", "jobs", "in_triage"])
    clusters_table = _with_timestamps(clusters_table, ["first_seen", "last_seen"])
    tables.replace(clusters_table, pa.table(test_key_rows(clustering)))
    staging.write_marker(OPTIONS_MARKER, fingerprint)
    staging.write_marker(TOKENS_MARKER, group_tokens.token)
    started = time.monotonic()
    sizes = write_triage_files(staging.export_dir / "triage", data, columns)
    render_seconds = time.monotonic() - started
    failures_total = len(clustering.local_ids)

    flaky = sum(c["flaky_failures"] for c in summary.clusters)
    context.log.info(
        f"failure_clusters: {failures_total} failures of {window.first_day}..{window.last_day} in "
        f"{len(summary.clusters)} clusters ({clustering.new_failures} newly matched, {clustering.kept_failures} kept); "
        f"{clustering.bound_hits} texts hit the distance-check bound"
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(summary.clusters),
            "window": f"{window.first_day}..{window.last_day}",
            "mode": "incremental" if incremental else "full",
            "failures": failures_total,
            "new_failures": clustering.new_failures,
            "kept_failures": clustering.kept_failures,
            "clusters": len(summary.clusters),
            "clusters_in_triage": len(data["clustered"]),
            "flaky_failures": flaky,
            "skipped_unnamed_failures": unnamed,
            "distance_checks": clustering.distance_checks,
            "bound_hits": clustering.bound_hits,
            "max_distance_checks": options.max_distance_checks,
            "clustering_seconds": round(clustered_seconds, 2),
            "summary_seconds": round(summary_seconds, 2),
            "render_seconds": round(render_seconds, 2),
            "tokenized_failures": summary.tokenized_failures,
            **sizes,
            "tables": ", ".join(tables.describe(t) for t in (CLUSTERS, FAILURES, DAYS, TEST_KEYS)),
            **({"report": report} if report is not None else {}),
            "top_clusters": dg.MetadataValue.md(md_table(
                [{"id": c["id"], "failures": c["failures"], "flaky": c["flaky_failures"], "owner": c["owner"],
                  "key": c["key"]} for c in summary.clusters[:10]],
                ["id", "failures", "flaky", "owner", "key"])),
        }
    )


class _Membership:
    """Each failure with its cluster key, for the summary, while its row of
    `failure_cluster_failures` is written in batches (never the whole window in memory)."""

    COLUMNS = ("key_hash", "cluster_id", "path", "job", "number", "name", "seq", "started", "flaky", "local_key_hash")

    def __init__(self, tables: ClusterTables, clustering):
        self.tables = tables
        self.clustering = clustering
        cluster_keys = [clustering.global_key[local] for local in clustering.local_keys]
        hashes, ids = {}, {}
        for key in cluster_keys:
            if key not in hashes:
                hashes[key] = key_hash(key)
                ids[key] = cluster_id(ngram_counts(key))
        self.cluster_keys = cluster_keys
        self.by_local = [(hashes[k], ids[k], key_hash(local)) for k, (_, local) in zip(cluster_keys, clustering.local_keys)]

    def rows(self, failures):
        self.tables.start_failures_table()
        batch = {c: [] for c in self.COLUMNS}
        for (failure, facts), local_id in zip(failures, self.clustering.local_ids, strict=True):
            hashed, cid, local_hash = self.by_local[local_id]
            for column, value in zip(self.COLUMNS, (hashed, cid, failure.build, facts.job, facts.number, failure.test,
                                                    failure.fid[-1], facts.started, facts.flaky, local_hash)):
                batch[column].append(value)
            if len(batch["path"]) == 20_000:
                self.tables.append_failures(pa.table(batch))
                batch = {c: [] for c in self.COLUMNS}
            yield failure, facts, self.cluster_keys[local_id], self.clustering.local_keys[local_id][1]
        if batch["path"]:
            self.tables.append_failures(pa.table(batch))


class _GroupTokensFile:
    """The common tokens of each test key and day (`GroupTokens`), kept in staging for the next run.

    A file is used only by the run after the one that wrote it: its token must equal the marker
    written after the tables, so a run that crashed in between leaves a file nobody reads.
    """

    # tokens as a JSON array: ten times faster to write than an Arrow list of strings
    SCHEMA = pa.schema([("test", pa.string()), ("local_key_hash", pa.string()), ("day", pa.int32()),
                        ("failures", pa.int64()), ("tokens", pa.binary())])
    BATCH = 5_000

    def __init__(self, staging: StagingStore, expected_token: str | None):
        self.path = staging.root / "failure_clusters" / "group_tokens.parquet"
        self.token = uuid.uuid4().hex
        self._expected = expected_token
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self._tmp, self.SCHEMA.with_metadata({"token": self.token}),
                                        compression="zstd")
        self._rows: list[GroupTokens] = []

    def read(self) -> Iterator[GroupTokens]:
        if self._expected is None or not self.path.exists():
            return
        source = pq.ParquetFile(self.path)
        if (source.schema_arrow.metadata or {}).get(b"token", b"").decode() != self._expected:
            return
        for batch in source.iter_batches(batch_size=self.BATCH):
            for test, local, day, failures, tokens in zip(*(batch.column(i).to_pylist() for i in range(5))):
                yield GroupTokens(test, local, day, failures, orjson.loads(tokens))

    def write(self, group: GroupTokens) -> None:
        self._rows.append(group)
        if len(self._rows) == self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows))
            columns[4] = [orjson.dumps(list(tokens)) for tokens in columns[4]]
            self._writer.write_table(pa.Table.from_arrays(
                [pa.array(values, f.type) for values, f in zip(columns, self.SCHEMA)], schema=self.SCHEMA))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)


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
