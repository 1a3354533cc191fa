"""Hostile input and hostile operations: no bad build stops the others, no published row is lost."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from .conftest import SAMPLE_NOW, Kettle

LOGS = "kubernetes-jenkins/logs"
DAY = 86400


def write_build(tree: Path, folder: str, finished_at, started_at=None, finished_extra: str = "") -> str:
    """A build folder with started.json and finished.json; timestamps are written verbatim as JSON text."""
    d = tree / folder
    d.mkdir(parents=True, exist_ok=True)
    started = started_at if started_at is not None else "1"
    (d / "started.json").write_text('{"timestamp": %s}' % started)
    (d / "finished.json").write_text('{"timestamp": %s, "result": "SUCCESS"%s}' % (finished_at, finished_extra))
    return "gs://" + folder


def paths_of_day(kettle: Kettle, day: str) -> list[str]:
    return [r[0] for r in kettle.query('SELECT path FROM "all" WHERE CAST(finished AS DATE) = CAST(? AS DATE)', day)]


def export_paths(kettle: Kettle, day: str) -> list[str]:
    return [r["path"] for r in kettle.export_rows(f"all/{day}.json.gz")]


# --- 1. retention never deletes published rows ------------------------------------------------


def test_late_build_for_a_pruned_day_adds_its_row_and_keeps_the_rest(own_kettle):
    own_kettle.settings = dataclasses.replace(own_kettle.settings, retention_days=3)
    own_kettle.sync()
    old_day = time.strftime("%Y-%m-%d", time.gmtime(SAMPLE_NOW - 8 * DAY))
    assert not (own_kettle.home / "staging" / "rows" / f"{old_day}.parquet").exists()  # pruned
    before = paths_of_day(own_kettle, old_day)
    assert len(before) > 3 and sorted(export_paths(own_kettle, old_day)) == sorted(before)

    late_at = int(SAMPLE_NOW - 8 * DAY) // DAY * DAY + 3600
    late = write_build(own_kettle.tree, f"{LOGS}/late-job/1", late_at, late_at - 60)
    summary = own_kettle.sync()
    assert old_day in summary.days

    after = paths_of_day(own_kettle, old_day)
    assert sorted(after) == sorted(before + [late])  # every row once, none lost
    assert sorted(export_paths(own_kettle, old_day)) == sorted(after)  # the export is complete too
    total = own_kettle.query('SELECT count(*), count(DISTINCT path) FROM "all"')[0]
    assert total[0] == total[1]


# --- 2. poison pills ---------------------------------------------------------------------------

HOSTILE_TIMESTAMPS = ["1e20", "1e13", "-1e20", '"NaN"', '"Infinity"', '"1e400"', "1e400"]


def _deep(levels: int) -> str:
    return '"metadata": ' + '{"a": ' * levels + "1" + "}" * levels


def test_hostile_timestamps_and_deep_metadata_are_counted_not_fatal(own_kettle):
    ok_at = int(SAMPLE_NOW - DAY)
    bad = {}
    for i, ts in enumerate(HOSTILE_TIMESTAMPS, 1):
        bad[write_build(own_kettle.tree, f"{LOGS}/poison-finished/{i}", ts, ok_at - 100)] = "finished"
        bad[write_build(own_kettle.tree, f"{LOGS}/poison-started/{i}", ok_at, ts)] = "started"
    deep_finished = write_build(own_kettle.tree, f"{LOGS}/poison-deep/1", ok_at, ok_at - 100, ", " + _deep(100_000))
    deep_started = f"{LOGS}/poison-deep/2"
    write_build(own_kettle.tree, deep_started, ok_at, ok_at - 100)
    (own_kettle.tree / deep_started / "started.json").write_text('{"timestamp": %d, %s}' % (ok_at - 100, _deep(100_000)))
    # deep enough to parse once, too deep for later stages with less stack left
    near_limit = write_build(own_kettle.tree, f"{LOGS}/poison-deep/3", ok_at, ok_at - 100, ", " + _deep(990))
    good = write_build(own_kettle.tree, f"{LOGS}/poison-neighbour/1", ok_at, ok_at - 100)

    first = own_kettle.sync()  # asserts every run succeeded
    rows = {r[0]: r[1:] for r in own_kettle.query('SELECT path, started, finished FROM "all"')}
    assert good in rows
    for path, which in bad.items():
        assert path in rows, path  # a row, with the unusable timestamp nulled
        started, finished = rows[path]
        assert (started if which == "started" else finished) is None, (path, rows[path])
    assert "gs://" + deep_started in rows and deep_finished in rows and near_limit in rows
    finished_bad = sum(1 for w in bad.values() if w == "finished")
    assert first.buckets[LOGS]["problems"] >= finished_bad + 3  # filed by the object's time, counted
    records = own_kettle.instance.fetch_materializations(dg.AssetKey("build_rows"), limit=100).records
    rows_problems = sum(r.asset_materialization.metadata["problems"].value for r in records)
    assert rows_problems >= len(bad)  # every nulled timestamp named in a log line and counted
    assert own_kettle.sync().ok  # and the next sync is not blocked either


# --- 3. a PR directory entry pointing into another bucket --------------------------------------


def test_pr_entry_pointing_at_another_buckets_build_is_skipped_and_counted(own_kettle):
    target = next(p for p in sorted((own_kettle.tree / LOGS).glob("*/*/finished.json")) if "canary" not in str(p))
    target_path = "gs://" + target.parent.relative_to(own_kettle.tree).as_posix()
    entry = own_kettle.tree / "kubernetes-jenkins/pr-logs/directory/pull-hijack/7.txt"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(target_path + "\n")
    summary = own_kettle.sync()
    assert own_kettle.query('SELECT count(*) FROM "all" WHERE path = ?', target_path)[0][0] == 1
    assert own_kettle.query('SELECT count(*) - count(DISTINCT path) FROM "all"')[0][0] == 0
    assert summary.buckets["kubernetes-jenkins/pr-logs"]["foreign_builds"] == 1


# --- 4. build folders named with trailing or non-breaking spaces -------------------------------


@pytest.mark.parametrize("name", ["41 ", "42\u00a0"])
def test_build_folder_with_odd_whitespace_is_collected(own_kettle, name):
    at = int(SAMPLE_NOW - DAY)
    path = write_build(own_kettle.tree, f"{LOGS}/spacey-job/{name}", at, at - 10)
    own_kettle.sync()
    assert own_kettle.query('SELECT count(*) FROM "all" WHERE path = ?', path)[0][0] == 1


# --- 10. rebuilding the warehouse from staging --------------------------------------------------


def test_rebuild_warehouse_restores_every_row(own_kettle):
    own_kettle.sync()
    before = sorted(own_kettle.query('SELECT * FROM "all" ORDER BY path'), key=repr)
    (own_kettle.home / "warehouse.duckdb").unlink()
    summary = own_kettle.sync(rebuild_warehouse=True)
    assert summary.ok
    assert sorted(own_kettle.query('SELECT * FROM "all" ORDER BY path'), key=repr) == before


# --- 9. concurrent syncs on one fresh home ------------------------------------------------------


@pytest.mark.servers  # four real `kettle sync` processes, about a minute
def test_four_concurrent_syncs_on_a_fresh_home_serialise(tmp_path):
    tree, home = tmp_path / "tree", tmp_path / "home"
    at = int(SAMPLE_NOW - DAY)
    for n in range(1, 4):
        write_build(tree, f"{LOGS}/tiny-job/{n}", at + n, at)
    buckets = tmp_path / "buckets.yaml"  # one bucket: fewer runs per sync, the same race
    buckets.write_text(f'gs://{LOGS}/:\n  contact: "x"\n  prefix: ""\n')
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(KETTLE_STORAGE_ROOT=str(tree), KETTLE_HOME=str(home), KETTLE_FETCH_THREADS="2")
    kettle = [sys.executable, "-m", "kettle_assets.cli", "sync", "--buckets", str(buckets),
              "--as-of", str(SAMPLE_NOW)]
    procs = [subprocess.Popen(kettle, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0, 0, 0], outs
    assert sum("waiting for the sync already running" in out + err for out, err in outs) >= 1  # said why
    later = subprocess.run(kettle, env=env, capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, later.stderr
    import duckdb
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
        n, distinct = conn.execute('SELECT count(*), count(DISTINCT path) FROM "all"').fetchone()
    assert n == distinct == 3
