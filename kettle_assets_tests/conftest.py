import gzip
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kettle_assets.project import Settings
from kettle_assets.sample import write_sample
from kettle_assets.sync import run_sync

REPO = Path(__file__).resolve().parent.parent
BUCKETS = REPO / "buckets.yaml"
# The sample's two weeks end here; windows are computed as of this instant.
SAMPLE_NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="session")
def sample_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, now=SAMPLE_NOW)
    return root


class Kettle:
    """One kettle home over one artifact tree, synced through Dagster in process."""

    def __init__(self, tree: Path, home: Path, buckets: Path = BUCKETS):
        self.tree = tree
        self.home = home
        self.settings = Settings(buckets_file=str(buckets), storage_root=str(tree), home=str(home), fetch_threads=4)
        self.instance = dg.DagsterInstance.ephemeral()

    def sync(self, **kwargs):
        kwargs.setdefault("as_of", SAMPLE_NOW)
        summary = run_sync(self.settings, instance=self.instance, echo=lambda _m: None, **kwargs)
        assert summary.ok, summary.failures
        return summary

    def query(self, sql: str, *params):
        with duckdb.connect(str(self.home / "warehouse.duckdb"), read_only=True) as conn:
            return conn.execute(sql, params).fetchall()

    def export_lines(self, relpath: str) -> list[str]:
        with gzip.open(self.home / "export" / relpath, "rt", encoding="ascii") as f:
            return f.read().splitlines()

    def export_rows(self, relpath: str) -> list[dict]:
        return [json.loads(line) for line in self.export_lines(relpath)]

    def all_export_rows(self) -> list[dict]:
        return [r for f in sorted((self.home / "export" / "all").glob("*.json.gz")) for r in self.export_rows(f"all/{f.name}")]


@pytest.fixture(scope="module")
def synced(sample_tree, tmp_path_factory) -> Kettle:
    """The sample, synced once; tests of this fixture only read."""
    kettle = Kettle(sample_tree, tmp_path_factory.mktemp("home"))
    kettle.first_summary = kettle.sync()
    return kettle


@pytest.fixture
def own_kettle(sample_tree, tmp_path) -> Kettle:
    """A private copy of the sample tree, for tests that change it."""
    tree = tmp_path / "tree"
    shutil.copytree(sample_tree, tree)
    return Kettle(tree, tmp_path / "home")


# Test tiers (`pytest -m unit` runs in well under a minute):
#   unit     pure logic and single Dagster runs on hand-made data
#   e2e      whole syncs of the sample through Dagster in process
#   servers  real API servers or daemons (GCS, BigQuery, Pub/Sub emulators, dagster-daemon)
#   ui       `dagster dev` and a headless browser
SYNC_FIXTURES = {"synced", "own_kettle", "sample_tree"}


def pytest_collection_modifyitems(items):
    slow_files = set()
    for item in items:
        if item.get_closest_marker("servers") or item.get_closest_marker("ui"):
            slow_files.add(item.path)
            continue
        item.add_marker(pytest.mark.e2e if SYNC_FIXTURES & set(item.fixturenames) else pytest.mark.unit)
    # Files that start servers or daemons go first: the suite runs one file per worker
    # (pytest-xdist, --dist loadfile), and a long file started last would finish alone.
    items.sort(key=lambda item: item.path not in slow_files)
