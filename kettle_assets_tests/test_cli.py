"""`kettle` as a person runs it: the console script, its summary, its exit codes."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import BUCKETS

KETTLE = str(Path(sys.executable).with_name("kettle"))


def run(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KETTLE_", "DAGSTER_HOME"))}
    return subprocess.run([KETTLE, *args], cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, timeout=300)


def test_sample_then_sync_from_the_command_line(tmp_path):
    sample = run(["sample", "sample"], tmp_path)
    assert sample.returncode == 0, sample.stderr
    result = run(["sync", "--buckets", str(BUCKETS)], tmp_path, KETTLE_STORAGE_ROOT="sample")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[collect 1/3] gs://kubernetes-jenkins/logs/" in result.stdout
    assert "summary: 3 buckets" in result.stdout and "rows loaded into all" in result.stdout
    exports = sorted((tmp_path / ".kettle" / "export" / "all").glob("*.json.gz"))
    rows = [json.loads(line) for f in exports for line in gzip.open(f, "rt")]
    assert len(rows) == len({r["path"] for r in rows}) > 200
    again = run(["sync", "--buckets", str(BUCKETS)], tmp_path, KETTLE_STORAGE_ROOT="sample")
    assert again.returncode == 0 and "0 days published" in again.stdout


def test_bad_buckets_yaml_exits_2_naming_the_entry(tmp_path):
    bad = tmp_path / "buckets.yaml"
    bad.write_text('gs://kubernetes-jenkins/logs/:\n  prefix: "ci"\n')
    (tmp_path / "tree").mkdir()
    result = run(["sync", "--buckets", str(bad), "--storage-root", "tree"], tmp_path)
    assert result.returncode == 2
    assert "gs://kubernetes-jenkins/logs/" in result.stderr and "ending in ':'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_storage_root_exits_2(tmp_path):
    result = run(["sync", "--buckets", str(BUCKETS), "--env", "local"], tmp_path)
    assert result.returncode == 2 and "KETTLE_STORAGE_ROOT" in result.stderr
    result = run(["sync", "--buckets", str(BUCKETS), "--storage-root", "nowhere"], tmp_path)
    assert result.returncode == 2 and "not a folder" in result.stderr
