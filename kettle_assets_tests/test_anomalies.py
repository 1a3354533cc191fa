"""The per-build and per-day checks, on hand-made builds and days."""

from datetime import date, timedelta

import dagster as dg
import pyarrow as pa

from kettle_assets.assets.junit_results import builds_with_all_junit_malformed
from kettle_assets.core.anomalies import sharp_test_drops, thin_days
from kettle_assets.resources.staging import JUNIT_SCHEMA


def _builds(job: str, counts: list[int]) -> list[dict]:
    return [{"path": f"gs://b/logs/{job}/{i}", "job": job, "started": 1000 + i, "tests_run": n} for i, n in enumerate(counts)]


def test_a_build_that_lost_most_of_its_tests_is_flagged():
    builds = _builds("e2e", [46, 45, 47, 46, 16, 46]) + _builds("unit", [300, 310, 305, 290])
    drops = sharp_test_drops(builds)
    assert [(d["path"], d["tests_run"], d["typical"]) for d in drops] == [("gs://b/logs/e2e/4", 16, 46)]


def test_small_suites_short_histories_and_gentle_drops_pass():
    assert sharp_test_drops(_builds("tiny", [6, 6, 6, 6, 1])) == []  # under 10 tests: too noisy to judge
    assert sharp_test_drops(_builds("young", [46, 46, 3])) == []  # fewer than 3 builds before it
    assert sharp_test_drops(_builds("shrunk", [46, 46, 46, 46, 30])) == []  # 65% of typical is not sharp
    assert sharp_test_drops(_builds("none", [46, 46, 46, 46, None])) != []  # no tests at all is a drop


def test_order_is_by_start_time_not_input_order():
    builds = _builds("e2e", [46, 45, 47, 46, 16])
    assert [d["path"] for d in sharp_test_drops(list(reversed(builds)))] == ["gs://b/logs/e2e/4"]


def test_a_day_with_far_fewer_builds_than_the_same_weekday_is_thin():
    monday = date(2026, 10, 5)
    counts = {}
    for week in range(5):
        for offset in range(7):
            day = monday + timedelta(weeks=week, days=offset)
            counts[day.isoformat()] = 40 if offset < 5 else 8  # weekends are quiet, and that is normal
    counts[(monday + timedelta(weeks=4)).isoformat()] = 12  # an outage on the last Monday
    thin = thin_days(counts)
    assert thin == [{"day": "2026-11-02", "builds": 12, "typical": 40}]


def test_the_day_still_filling_is_not_judged():
    counts = {"2026-10-26": 40, "2026-11-02": 3}
    assert thin_days(counts)[0]["day"] == "2026-11-02"
    assert thin_days(counts, before="2026-11-02") == []


def test_builds_whose_every_junit_file_is_malformed():
    junit = pa.Table.from_pylist(
        [
            {"path": "gs://b/1", "finished_hash": "h", "tests": [], "files": 2, "bytes": 10, "malformed": 2, "too_large": 0},
            {"path": "gs://b/2", "finished_hash": "h", "tests": [], "files": 3, "bytes": 10, "malformed": 1, "too_large": 0},
            {"path": "gs://b/3", "finished_hash": "h", "tests": [], "files": 0, "bytes": 0, "malformed": 0, "too_large": 0},
        ],
        schema=JUNIT_SCHEMA,
    )
    assert [b["path"] for b in builds_with_all_junit_malformed(junit)] == ["gs://b/1"]


def test_the_checks_fail_on_a_day_with_a_build_that_lost_its_tests(own_kettle):
    """Through Dagster: a build of the sample re-run with 3 of its tests fails the check, with a link."""
    own_kettle.sync()
    path, job, started = own_kettle.query(
        'SELECT path, job, started FROM "all" WHERE job = \'ci-kubernetes-e2e-gce\' ORDER BY started DESC LIMIT 1'
    )[0]
    artifacts = own_kettle.tree / path[len("gs://"):] / "artifacts"
    for old in artifacts.rglob("junit*.xml"):
        old.unlink()
    (artifacts / "junit_01.xml").write_text(
        "<testsuite>" + "".join(f'<testcase name="t{i}" time="1"/>' for i in range(3)) + "</testsuite>"
    )
    (artifacts.parent / "finished.json").write_text((artifacts.parent / "finished.json").read_text() + " ")
    own_kettle.sync(recheck_paths=[path])
    key = dg.AssetCheckKey(dg.AssetKey("build_rows"), "no_sharp_test_count_drop")
    [record] = own_kettle.instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    evaluation = record.event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["builds_with_drop"].value == 1
    assert f"[{path}](https://gcsweb.k8s.io/gcs/{path[len('gs://'):]}/)" in evaluation.metadata["drops"].value
