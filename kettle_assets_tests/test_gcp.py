"""The production path against real API servers: gcp-storage-emulator for GCS, bqemulator for BigQuery."""

import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kettle_assets.automation import DAILY_SELECTION
from kettle_assets.project import Settings, build_assets, build_resources
from kettle_assets.sync import run_sync

from .conftest import BUCKETS, SAMPLE_NOW
from .support.fault_proxy import BlackHole, FaultProxy
from .support.servers import bq_emulator, free_port, gcs_emulator, upload_tree

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def servers(sample_tree):
    with gcs_emulator() as gcs, bq_emulator() as bq:
        upload_tree(gcs, sample_tree)
        yield gcs, bq


def gcp_settings(home, bq_endpoint, dataset, **kw) -> Settings:
    return Settings(
        buckets_file=str(BUCKETS), storage_root=None, home=str(home), env="gcp", fetch_threads=8,
        bq_project="test-project", bq_dataset=dataset, bq_endpoint=bq_endpoint, **kw,
    )


def sync(settings, instance, monkeypatch, gcs_endpoint, **kw):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    return run_sync(settings, instance=instance, as_of=SAMPLE_NOW, echo=lambda _m: None, **kw)


def _epoch(v):
    return None if v is None else int(v.timestamp()) if isinstance(v, datetime) else v


def normalise(row: dict) -> dict:
    out = {k: _epoch(v) for k, v in row.items() if k not in ("test", "metadata")}
    out["elapsed"] = None if out.get("elapsed") is None else float(out["elapsed"])
    out["test"] = [tuple(t[k] for k in ("name", "time", "failed", "failure_text")) for t in row["test"] or []]
    out["metadata"] = [(m["key"], m["value"]) for m in row["metadata"] or []]
    return out


def duckdb_rows(home) -> list[dict]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        cur = conn.execute('SELECT * FROM "all" ORDER BY path')
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


def bigquery_rows(settings, table="all") -> list[dict]:
    return build_resources(settings)["warehouse"].rows(table)


def test_gcp_sync_gives_the_local_rows_and_is_idempotent(servers, synced, tmp_path, monkeypatch):
    gcs, bq = servers
    settings = gcp_settings(tmp_path / "home", bq, "build_same")
    instance = dg.DagsterInstance.ephemeral()
    first = sync(settings, instance, monkeypatch, gcs)
    assert first.ok, first.failures

    local = [normalise(r) for r in duckdb_rows(synced.home)]
    remote = [normalise(r) for r in bigquery_rows(settings)]
    assert remote == local
    # the Kettle-format exports are byte-identical too
    for f in sorted((synced.home / "export" / "all").glob("*.json.gz")):
        assert (tmp_path / "home" / "export" / "all" / f.name).read_bytes() == f.read_bytes()
    # and so are triage's failure clusters, written to BigQuery's cluster tables
    assert first.clusters > 0
    triage = Path("export") / "triage" / "failure_data.json"
    assert (tmp_path / "home" / triage).read_bytes() == (synced.home / triage).read_bytes()
    for table in ("week", "day"):
        assert {r["path"] for r in bigquery_rows(settings, table)} == {
            r[0] for r in synced.query(f'SELECT path FROM "{table}"')
        }

    # a second sync adds nothing
    second = sync(settings, instance, monkeypatch, gcs)
    assert second.ok and second.days == []
    assert all(m["new_finished"] == 0 for m in second.buckets.values())
    assert len(bigquery_rows(settings)) == len(local)

    # re-running a day leaves one row per build
    day = time.strftime("%Y-%m-%d", time.gmtime(max(r["finished"] for r in local)))
    for _ in range(2):
        result = dg.materialize(build_assets(settings), selection=DAILY_SELECTION, partition_key=day,
                                resources=build_resources(settings), instance=instance)
        assert result.success
    paths = [r["path"] for r in bigquery_rows(settings)]
    assert len(paths) == len(set(paths)) == len(local)


def test_gcs_into_a_local_duckdb_needs_no_bigquery_project(servers, synced, tmp_path, monkeypatch):
    """Real buckets, local warehouse: what many users try first. No KETTLE_BQ_* at all."""
    gcs, _bq = servers
    for name in ("KETTLE_BQ_PROJECT", "KETTLE_BQ_ENDPOINT", "KETTLE_STORAGE_ROOT", "KETTLE_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KETTLE_WAREHOUSE", "duckdb")
    settings = Settings.from_env(buckets_file=str(BUCKETS), home=str(tmp_path / "home"), fetch_threads=8)
    assert (settings.env, settings.warehouse_kind, settings.bq_project) == ("gcp", "duckdb", None)
    summary = sync(settings, dg.DagsterInstance.ephemeral(), monkeypatch, gcs)
    assert summary.ok, summary.failures
    assert [normalise(r) for r in duckdb_rows(tmp_path / "home")] == [normalise(r) for r in duckdb_rows(synced.home)]


def test_failed_bigquery_load_marks_nothing_done(servers, tmp_path, monkeypatch):
    gcs, bq = servers
    instance = dg.DagsterInstance.ephemeral()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    broken = sync(gcp_settings(tmp_path / "home", dead, "build_retry", bq_deadline=3.0), instance, monkeypatch, gcs)
    assert not broken.ok and broken.rows_loaded == 0
    assert broken.days  # collected and staged, not published

    healed = sync(gcp_settings(tmp_path / "home", bq, "build_retry"), instance, monkeypatch, gcs)
    assert healed.ok, healed.failures
    assert healed.days == broken.days  # the same days, published now
    assert all(m["new_finished"] == 0 for m in healed.buckets.values())  # nothing fetched twice
    rows = bigquery_rows(gcp_settings(tmp_path / "home", bq, "build_retry"))
    assert len(rows) == healed.rows_loaded > 0


def test_faulty_gcs_still_lands_every_build_and_counts_retries(servers, synced, tmp_path, monkeypatch):
    gcs, bq = servers
    settings = gcp_settings(tmp_path / "home", bq, "build_faults", gcs_timeout=1.0, gcs_deadline=60.0)
    with FaultProxy(gcs, error_500=0.08, error_429=0.08, reset=0.04, stall=0.02, stall_seconds=1.5) as proxy:
        summary = sync(settings, dg.DagsterInstance.ephemeral(), monkeypatch, proxy.url)
    assert summary.ok, summary.failures
    assert all(proxy.counts[f] > 0 for f in ("500", "429", "reset", "stall")), proxy.counts
    assert {r["path"] for r in bigquery_rows(settings)} == {r[0] for r in synced.query('SELECT path FROM "all"')}
    retries = sum(m["artifact_retries"] for m in summary.buckets.values())
    assert retries > 0


def test_unanswering_gcs_fails_the_run_within_the_deadline(tmp_path, monkeypatch):
    settings = gcp_settings(tmp_path / "home", f"http://127.0.0.1:{free_port()}", "unused",
                            gcs_timeout=0.5, gcs_deadline=3.0, bq_deadline=3.0)
    with BlackHole() as hole:
        started = time.monotonic()
        summary = sync(settings, dg.DagsterInstance.ephemeral(), monkeypatch, hole.url)
        elapsed = time.monotonic() - started
    assert not summary.ok
    assert [f.split(":")[0] for f in summary.failures[:3]] == [
        "collect kubernetes-jenkins/logs", "collect kubernetes-jenkins/pr-logs", "collect canonical-kubernetes-tests/logs"
    ]
    assert elapsed < 60, f"took {elapsed:.0f}s: a stuck call must fail the run, not hang it"
