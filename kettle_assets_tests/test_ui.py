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
from .support.servers import free_port

ASSETS = {"build_listing", "build_metadata", "junit_results", "build_rows", "build_all", "build_week", "build_day",
          "failure_clusters"}


@pytest.fixture(scope="module")
def dagster_dev(synced, tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KETTLE_STORAGE_ROOT": str(synced.tree),
        "KETTLE_HOME": str(synced.home),
        "KETTLE_BUCKETS": str(BUCKETS),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
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
    assert set(nodes) - {"test_results"} == ASSETS  # test_results: failure_clusters' input, its own asset
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
        "failure_clusters_automation": "RUNNING",
    }
    assert {s["name"] for s in repo["schedules"]} == {"reconcile_buckets", "refresh_windows_hourly", "close_yesterday"}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    # Debian's package; the test installs it on a fresh machine (root, registry reachable)
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True)
    return shutil.which("chromium")


def test_asset_graph_page_shows_the_kettle_assets(dagster_dev, tmp_path):
    browser = chromium()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1600,1000", "--virtual-time-budget=20000",
    ]
    # build_rows' lineage, three steps each way: every kettle asset, groups expanded
    page = f"{dagster_dev}/assets/build_rows?view=lineage&lineageScope=neighbors&lineageDepth=3"
    dom = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    shown = {name for name in ASSETS if name in dom}
    assert shown == ASSETS, f"missing on the page: {ASSETS - shown}"
    shot = tmp_path / "lineage.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("KETTLE_SAVE_SCREENSHOT"):
        shutil.copy(shot, REPO / "docs" / "lineage.png")
