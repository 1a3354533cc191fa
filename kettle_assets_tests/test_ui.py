"""The UI, seen: `dagster dev` on the sample, its GraphQL API, and a real headless browser."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import BUCKETS, REPO
from .support.browser import chromium_page
from .support.servers import free_port

pytestmark = pytest.mark.ui

ASSETS = {"build_listing", "build_metadata", "junit_results", "build_rows", "build_all", "build_week", "build_day",
          "test_results", "failure_clusters"}  # the pipeline; the metric assets hang off test_results
ANSWERS = {"metric_flakes", "metric_flakes_daily", "metric_build_stats", "metric_failures", "metric_job_health",
           "metric_job_health_weekly", "metric_presubmit_health", "test_flakiness", "ci_report"}


@pytest.fixture(scope="module")
def readme_home(tmp_path_factory) -> Path:
    """The README's first command in a fresh folder: `kettle sample`, `kettle sync` with DAGSTER_HOME
    there and the repository's dagster.yaml, so `dagster dev` shows the sync's runs."""
    home = tmp_path_factory.mktemp("readme")
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = _readme_env(home)
    for args in (["sample", "sample"], ["sync"]):
        done = subprocess.run([str(Path(sys.executable).with_name("kettle")), *args], cwd=home, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return home


def _readme_env(home: Path) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KETTLE_", "DAGSTER_HOME"))}
    return {**base, "DAGSTER_HOME": str(home), "KETTLE_STORAGE_ROOT": "sample", "KETTLE_BUCKETS": str(BUCKETS)}


@pytest.fixture(scope="module")
def dagster_dev(readme_home):
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port),
         "-m", "kettle_assets.definitions"],
        cwd=readme_home, env=_readme_env(readme_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dagster dev did not start")
                time.sleep(0.5)
        # the code location loads in its own process: wait until the assets are there
        while time.monotonic() < deadline:
            if len(graphql(url, "{ assetNodes { id } }")["assetNodes"]) >= len(ASSETS):
                break
            time.sleep(0.5)
        graphql(url, "mutation { setNuxSeen }")  # no first-visit community dialog over the graph
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        body = json.load(resp)
    assert "errors" not in body, body
    return body["data"]


def test_graphql_shows_assets_lineage_partitions_sensors_schedules(dagster_dev):
    data = graphql(
        dagster_dev,
        """{ assetNodes { assetKey { path } dependencyKeys { path } groupName
                          partitionDefinition { type } }
             repositoriesOrError { ... on RepositoryConnection { nodes {
                 sensors { name sensorState { status } }
                 schedules { name scheduleState { status } } } } } }""",
    )
    nodes = {n["assetKey"]["path"][0]: n for n in data["assetNodes"]}
    assert set(nodes) == ASSETS | ANSWERS
    edges = {(d["path"][0], name) for name, n in nodes.items() for d in n["dependencyKeys"]}
    assert {
        ("build_listing", "build_metadata"), ("build_metadata", "junit_results"), ("junit_results", "build_rows"),
        ("build_rows", "build_all"), ("build_rows", "build_week"), ("build_rows", "build_day"),
    } <= edges
    assert nodes["build_listing"]["partitionDefinition"]["type"] == "STATIC"
    assert nodes["build_all"]["partitionDefinition"]["type"] == "TIME_WINDOW"
    assert nodes["build_week"]["partitionDefinition"] is None
    repo = data["repositoriesOrError"]["nodes"][0]
    assert {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]} == {
        "stream_finished_builds": "RUNNING", "publish_affected_days": "RUNNING",
        "failure_clusters_automation": "RUNNING", "refresh_metrics_on_new_rows": "RUNNING",
        "alert_on_new_failures": "RUNNING",
    }
    assert {s["name"] for s in repo["schedules"]} == {"reconcile_buckets", "refresh_windows_hourly", "close_yesterday"}


# The number on each asset's latest materialization that must not be zero after a sync.
SIGNAL = {
    "build_listing": "candidates", "build_metadata": "fetched", "junit_results": "tests",
    "build_rows": "dagster/row_count", "build_all": "dagster/row_count",
    "build_week": "dagster/row_count", "build_day": "dagster/row_count", "test_results": "dagster/row_count",
    "metric_build_stats": "dagster/row_count", "metric_job_health": "dagster/row_count", "ci_report": "pages",
}


def test_after_the_readme_sync_every_asset_is_filled_with_true_numbers(dagster_dev):
    nodes = graphql(
        dagster_dev,
        """{ assetNodes { assetKey { path } description
               partitionStats { numMaterialized numPartitions numFailed numMaterializing }
               assetMaterializations(limit: 1) { partition metadataEntries { label
                   ... on IntMetadataEntry { intValue } ... on MarkdownMetadataEntry { mdStr } } } } }""",
    )["assetNodes"]
    for node in nodes:
        name = node["assetKey"]["path"][0]
        assert node["description"], name
        stats = node["partitionStats"]
        if stats is not None:  # partitioned: every partition materialized, none failed
            assert stats["numMaterialized"] == stats["numPartitions"] > 0 and stats["numFailed"] == 0, (name, stats)
        [latest] = node["assetMaterializations"]  # every asset materialized by the sync
        numbers = {e["label"]: e.get("intValue") for e in latest["metadataEntries"]}
        if name in SIGNAL:  # the others may rightly be empty on the sample (no failing job, say)
            assert numbers[SIGNAL[name]] > 0, (name, numbers)
        if name == "build_rows":  # a day's own rows, not the run's; build paths link to their artifacts
            preview = next(e["mdStr"] for e in latest["metadataEntries"] if e["label"] == "preview")
            assert "(https://gcsweb.k8s.io/gcs/" in preview
            per_day = next(e["mdStr"] for e in latest["metadataEntries"] if e["label"] == "per_day")
            assert f"| {latest['partition']} | {numbers['dagster/row_count']} |" in per_day
    days = next(n for n in nodes if n["assetKey"]["path"] == ["build_all"])["partitionStats"]["numPartitions"]
    assert 14 <= days <= 16  # the sample's two weeks, not the years since 2014


def test_starting_the_ui_after_a_sync_redoes_nothing(dagster_dev):
    """publish_affected_days starts after the sync's collections: its ticks launch no run."""
    query = """{ sensorOrError(sensorSelector: {repositoryName: "__repository__",
                   repositoryLocationName: "kettle_assets.definitions", sensorName: "publish_affected_days"}) {
                   ... on Sensor { sensorState { ticks(limit: 5) { status runIds } } } } }"""
    deadline = time.monotonic() + 90
    while not (ticks := graphql(dagster_dev, query)["sensorOrError"]["sensorState"]["ticks"]):
        assert time.monotonic() < deadline, "publish_affected_days never ticked"
        time.sleep(1)
    assert all(t["status"] == "SKIPPED" and not t["runIds"] for t in ticks), ticks
    runs = graphql(dagster_dev, "{ runsOrError { ... on Runs { results { jobName } } } }")["runsOrError"]["results"]
    assert sorted(r["jobName"] for r in runs) == [
        "collect_bucket", "collect_bucket", "collect_bucket", "refresh_failure_clusters", "refresh_metrics",
        "refresh_report", "refresh_windows", "stage_and_publish_days",
    ]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("Chromium is not installed: run .ci/test-deps.sh (the README's test command does)")
    return found


def test_a_browser_walks_the_assets_without_console_errors(dagster_dev, tmp_path):
    """Real headless Chromium: partitions all materialized, descriptions rendered, the lineage drawn."""
    (tmp_path / "profile").mkdir()
    with chromium_page(chromium(), tmp_path / "profile") as page:
        for asset in ("build_listing", "build_metadata", "junit_results", "build_rows", "build_all"):
            text = page.open(f"{dagster_dev}/assets/{asset}?view=partitions", r"Missing \(\d+\)")
            assert "Missing (0)" in text and "Failed (0)" in text, (asset, text[:1500])
        text = page.open(f"{dagster_dev}/assets/build_all", r"export/all/YYYY-MM-DD\.json\.gz")  # no angle brackets for HTML to eat
        assert "Row count" in text and "Owners" in text and "fejta" in text
        text = page.open(f"{dagster_dev}/assets/build_week", r"Columns")
        assert "tests_failed" in text and "ARRAY<STRUCT<name STRING" in text  # schema.json as column schema
        text = page.open(f"{dagster_dev}/assets/junit_results?view=checks", r"no_build_with_all_junit_malformed")
        assert "malformed_junit_share" in text
        # build_rows' lineage, three steps each way: every kettle asset, groups expanded
        text = page.open(
            f"{dagster_dev}/assets/build_rows?view=lineage&lineageScope=neighbors&lineageDepth=3",
            "".join(f"(?=[\\s\\S]*{name})" for name in ASSETS),
        )
        time.sleep(2)  # let the graph finish its layout animation
        shot = tmp_path / "lineage.png"
        page.screenshot(shot)
        assert page.problems == [], page.problems
    assert shot.stat().st_size > 10_000
    if os.environ.get("KETTLE_SAVE_SCREENSHOT"):
        shutil.copy(shot, REPO / "docs" / "lineage.png")
