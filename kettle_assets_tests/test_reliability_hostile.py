"""Hostile input and settings: nothing outside the artifact root is read, regex and XML work is
bounded, and bad settings end `kettle` with exit code 2 and one line, never a traceback."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from kettle_assets import cli
from kettle_assets.core.config import BucketConfigError, load_buckets, parse_buckets
from kettle_assets.core.junit import parse_junit
from kettle_assets.resources.artifacts import LocalArtifactStore

from .conftest import BUCKETS, SAMPLE_NOW

KETTLE = str(Path(sys.executable).with_name("kettle"))
SECRET = "TOPSECRET-7f3a9c-never-in-a-log"


# --- nothing outside the root is read -------------------------------------------------------------


def _plant_symlinks(tree: Path, outside: Path) -> None:
    """Symlinks out of the root at every level a listing or a read can meet."""
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text(SECRET)
    (outside / "secret.json").write_text(json.dumps({"timestamp": SAMPLE_NOW - 3600, "result": SECRET}))
    (outside / "secret.xml").write_text(f'<testsuite><testcase name="{SECRET}"/></testsuite>')
    build = outside / "build"
    (build / "artifacts").mkdir(parents=True)
    (build / "started.json").write_text(json.dumps({"timestamp": SAMPLE_NOW - 7200, "node": SECRET}))
    (build / "finished.json").write_text(json.dumps({"timestamp": SAMPLE_NOW - 3600, "result": SECRET}))
    (build / "artifacts/junit_01.xml").write_text(f'<testsuite><testcase name="{SECRET}"/></testsuite>')

    os.symlink(outside, tree / "kubernetes-jenkins/logs/ci-evil-job")  # a job folder
    logs = next((tree / "canonical-kubernetes-tests/logs").iterdir())  # a bucket listed folder by folder
    os.symlink(build, logs / "990")  # a build folder
    own = logs / "991"
    (own / "artifacts").mkdir(parents=True)
    os.symlink(outside / "secret.json", own / "started.json")  # started and finished files
    os.symlink(outside / "secret.json", own / "finished.json")
    real = logs / "992"  # a real build whose JUnit file is a symlink
    (real / "artifacts").mkdir(parents=True)
    (real / "started.json").write_text(json.dumps({"timestamp": SAMPLE_NOW - 7200}))
    (real / "finished.json").write_text(json.dumps({"timestamp": SAMPLE_NOW - 3600, "result": "SUCCESS"}))
    (real / "artifacts/junit_01.xml").write_text('<testsuite><testcase name="kept"/></testsuite>')
    os.symlink(outside / "secret.xml", real / "artifacts/junit_02.xml")
    os.symlink(outside / "build/artifacts", real / "artifacts/nested")
    directory = tree / "kubernetes-jenkins/pr-logs/directory/pull-kubernetes-e2e-gce"
    os.symlink(secret, directory / "9999.txt")  # a PR directory entry


def _everything_written(home: Path, instance: dg.DagsterInstance) -> bytes:
    blobs = [p.read_bytes() for p in home.rglob("*") if p.is_file()]
    for run in instance.get_runs():
        for event in instance.all_logs(run.run_id):
            blobs.append(repr(event).encode())
    return b"\n".join(blobs)


def test_symlinks_out_of_the_root_are_refused_counted_and_never_read(own_kettle, tmp_path):
    _plant_symlinks(own_kettle.tree, tmp_path / "outside")
    own_kettle.sync()
    written = _everything_written(own_kettle.home, own_kettle.instance)
    assert SECRET.encode() not in written
    refused = {}
    for asset in ("build_listing", "build_metadata", "junit_results"):
        records = own_kettle.instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
        refused[asset] = sum(r.asset_materialization.metadata["artifacts_refused"].value for r in records)
    assert refused["build_listing"] >= 3 and refused["build_metadata"] >= 2 and refused["junit_results"] >= 2, refused
    # the real build beside the symlinks still lands, with its own JUnit file only
    rows = own_kettle.query("SELECT tests_run FROM \"all\" WHERE path LIKE 'gs://canonical-kubernetes-tests/%/992'")
    assert rows == [(1,)]
    assert own_kettle.query(
        "SELECT count(*) FROM \"all\" WHERE path LIKE '%ci-evil-job%' OR path LIKE '%/990' OR path LIKE '%/991'"
    ) == [(0,)]


def test_the_store_refuses_a_symlink_to_a_file_inside_the_root_too(tmp_path):
    (tmp_path / "b/job/1").mkdir(parents=True)
    (tmp_path / "b/job/1/finished.json").write_text("{}")
    os.symlink(tmp_path / "b/job/1/finished.json", tmp_path / "b/job/1/started.json")
    store = LocalArtifactStore(root=str(tmp_path))
    assert store.read("gs://b/job/1/finished.json") == b"{}"
    assert store.read("gs://b/job/1/started.json") is None
    assert store.stat("gs://b/job/1/started.json") is None
    assert [o.path for o in store.list_objects("gs://b/job/1/")] == ["gs://b/job/1/finished.json"]
    assert store.refused_paths == ["gs://b/job/1/started.json"] * 3


# --- buckets.yaml: bounded, strict, one line ------------------------------------------------------


def _buckets_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "buckets.yaml"
    path.write_bytes(content)
    return path


def test_a_catastrophic_regex_cannot_hang_a_sync():
    bucket = parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": ["(a+)+$", "-canary$"]}}).buckets[0]
    started = time.monotonic()
    assert not bucket.excludes("a" * 100_000 + "b")  # backtracking engines take longer than the universe
    assert bucket.excludes("a" * 100_000)
    assert bucket.excludes("ci-kubernetes-e2e-canary")
    assert time.monotonic() - started < 30  # generous: linear time is milliseconds


def test_a_regex_re2_cannot_run_in_linear_time_is_refused_by_name():
    with pytest.raises(BucketConfigError) as info:
        parse_buckets({"gs://bkt/logs/": {"prefix": "", "exclude_jobs": [r"(a)\1"]}})
    assert r"(a)\\1" in str(info.value) and "RE2" in str(info.value)


def test_duplicate_bucket_keys_are_an_error_not_a_silent_drop(tmp_path):
    path = _buckets_file(tmp_path, b'gs://bkt/logs/:\n  prefix: ""\ngs://bkt/logs/:\n  prefix: "x:"\n')
    with pytest.raises(BucketConfigError, match="duplicate key 'gs://bkt/logs/'.*line 3"):
        load_buckets(path)


def test_non_utf8_buckets_file_is_named(tmp_path):
    path = _buckets_file(tmp_path, b'gs://bkt/logs/:\n  prefix: ""\n  contact: "\xff\xfe"\n')
    with pytest.raises(BucketConfigError, match="not UTF-8"):
        load_buckets(path)


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 12):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    path = _buckets_file(tmp_path, ("\n".join(lines) + "\n").encode())
    with pytest.raises(BucketConfigError) as info:
        load_buckets(path)
    message = str(info.value)
    assert "aliases are not allowed" in message and len(message) < 400 and "\n" not in message


# --- JUnit: bounded memory, any Unicode encoding -----------------------------------------------

DEEP_JUNIT = """
import resource, sys
from kettle_assets.core.junit import parse_junit
depth = int(sys.argv[1])
data = b"".join(b'<testsuite name="suite%07d"><testcase name="t"/>' % i for i in range(depth)) + b"</testsuite>" * depth
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = parse_junit(data)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(len(data), int(out.malformed), grown)
print(out.error)
"""


def test_deeply_nested_suites_cost_a_small_multiple_of_the_file():
    """1.6 MB of nested suites once made 2.9 GB of test names (each name carries its suites')."""
    done = subprocess.run([sys.executable, "-c", DEEP_JUNIT, "50000"], capture_output=True, text=True, timeout=120)
    size, malformed, grown = map(int, done.stdout.split("\n")[0].split())
    assert size > 1_500_000
    assert malformed == 1 and "refused" in done.stdout
    assert grown < 40 * size, f"{grown / size:.0f}x the file's size"


def test_nesting_within_the_budget_still_flattens():
    data = b'<testsuite name="a"><testsuite name="b"><testcase name="t"/></testsuite></testsuite>'
    assert parse_junit(data).tests == [{"name": "b t", "time": 0.0}]


@pytest.mark.parametrize("codec,bom", [("utf-16-le", "\ufeff"), ("utf-16-be", "\ufeff"), ("utf-32-le", "\ufeff"),
                                       ("utf-16-le", "")])
def test_utf16_and_utf32_junit_files_parse(codec, bom):
    xml = bom + '<?xml version="1.0" encoding="UTF-16"?>\n<testsuite><testcase name="caf\u00e9" time="2">' \
                '<failure message="m\u00fc">body</failure></testcase></testsuite>'
    parsed = parse_junit(xml.encode(codec))
    assert not parsed.malformed, parsed.error
    assert parsed.tests == [{"name": "caf\u00e9", "time": 2.0, "failed": True, "failure_text": "m\u00fc\nbody"}]


# --- `kettle`: exit code 2 and one line, never a traceback ---------------------------------------


def kettle(args, cwd: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KETTLE_", "DAGSTER_HOME"))}
    return subprocess.run([KETTLE, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=300)


def assert_one_line_exit_2(result: subprocess.CompletedProcess, *named: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    for name in named:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize(
    "variable,value",
    [("KETTLE_FETCH_THREADS", "0"), ("KETTLE_FETCH_THREADS", "many"), ("KETTLE_START_DATE", "2024-02-30"),
     ("KETTLE_START_DATE", "yesterday"), ("KETTLE_GCS_TIMEOUT", "-1"), ("KETTLE_STAGING_RETENTION_DAYS", "1.5"),
     ("KETTLE_ENV", "prod"), ("KETTLE_WAREHOUSE", "sqlite")],
)
def test_bad_settings_exit_2_naming_the_setting(tmp_path, monkeypatch, capsys, variable, value):
    (tmp_path / "tree").mkdir()
    for name in list(os.environ):
        if name.startswith("KETTLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KETTLE_STORAGE_ROOT", str(tmp_path / "tree"))
    monkeypatch.setenv(variable, value)
    code = cli.main(["sync", "--buckets", str(BUCKETS)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and variable in err, err


def test_bad_settings_through_the_console_script(tmp_path):
    (tmp_path / "tree").mkdir()
    result = kettle(["sync", "--buckets", str(BUCKETS)], tmp_path, KETTLE_STORAGE_ROOT="tree", KETTLE_FETCH_THREADS="many")
    assert_one_line_exit_2(result, "KETTLE_FETCH_THREADS")


@pytest.mark.parametrize(
    "content,named",
    [(b'gs://bkt/logs/:\n  prefix: ""\ngs://bkt/logs/:\n  prefix: "x:"\n', "duplicate key"),
     (b'gs://bkt/logs/:\n  prefix: ""\n  contact: "\xff"\n', "not UTF-8"),
     (b'a: &a ["x"]\nb: [*a, *a]\n', "aliases are not allowed")],
)
def test_bad_buckets_files_exit_2_in_one_line(tmp_path, capsys, content, named):
    (tmp_path / "tree").mkdir()
    path = _buckets_file(tmp_path, content)
    code = cli.main(["sync", "--buckets", str(path), "--storage-root", str(tmp_path / "tree")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err and str(path) in err, err


@pytest.fixture
def small_disk(tmp_path):
    """A real, nearly full file system: a 4 MB tmpfs (needs root and mount; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_named_with_the_space_needed(tmp_path, small_disk, sample_tree):
    result = kettle(["sync", "--buckets", str(BUCKETS)], tmp_path, KETTLE_STORAGE_ROOT=str(sample_tree),
                    KETTLE_HOME=str(small_disk / "home"))
    assert_one_line_exit_2(result, str(small_disk / "home"), "MB free", "needs at least")


def test_no_space_left_mid_sync_is_explained_from_the_real_error(small_disk):
    from kettle_assets.cli import explain_failure

    with pytest.raises(OSError) as info:
        (small_disk / "big").write_bytes(b"\0" * (8 << 20))
    explained = explain_failure(RuntimeError("the run failed").with_traceback(None), small_disk)
    assert explained is None
    chained = RuntimeError("the run failed")
    chained.__cause__ = info.value
    explained = explain_failure(chained, small_disk)
    assert explained.startswith("no space left on device writing") and str(small_disk) in explained


def test_a_corrupt_warehouse_is_named(tmp_path, synced):
    home = tmp_path / "home"
    shutil.copytree(synced.home, home)  # a synced home, whose warehouse then breaks
    env = dict(KETTLE_STORAGE_ROOT=str(synced.tree), KETTLE_HOME=str(home))
    warehouse = home / "warehouse.duckdb"
    warehouse.write_bytes(b"this is not a DuckDB file" * 1000)
    result = kettle(["sync", "--buckets", str(BUCKETS), "--recheck",
                     "gs://kubernetes-jenkins/logs/ci-kubernetes-unit/1"], tmp_path, **env)
    assert_one_line_exit_2(result, str(warehouse), "not a readable DuckDB database")
