"""What the UI shows must be true: partitions that cover the data, each partition's own numbers,
sensors that start from the instance's state, a refetch that really re-reads, named runs, links."""

import json
import time
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest

from kettle_assets.assets.links import artifact_url, bucket_owners, md_link, owner_of_contact
from kettle_assets.automation import stream_run_config
from kettle_assets.core.config import load_buckets
from kettle_assets.core.schema import CONTRACT_COLUMNS
from kettle_assets.project import Settings, build_assets, build_definitions, build_resources, first_partition_day
from kettle_assets.resources.notifications import LocalFolderNotificationSource

from .conftest import BUCKETS, SAMPLE_NOW

DAY_ASSETS = ("junit_results", "build_rows", "build_all")
SAMPLE_DAY = datetime.fromtimestamp(SAMPLE_NOW, tz=timezone.utc).date().isoformat()


def _materialized(instance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def _latest_by_partition(instance, asset: str) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=1000, ascending=True).records
    for record in records:
        mat = record.asset_materialization
        latest[mat.partition] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return latest


def test_day_partitions_start_at_the_first_staged_day_and_the_sync_fills_them(synced):
    defs = build_definitions(synced.settings)
    for asset in DAY_ASSETS:
        days = defs.resolve_assets_def(asset).partitions_def
        first = days.get_first_partition_key()
        assert first == min(p.name for p in (synced.home / "staging" / "metadata").iterdir())
        keys = [k for k in days.get_partition_keys() if k <= SAMPLE_DAY]
        assert keys[-1] == SAMPLE_DAY and _materialized(synced.instance, asset) == set(keys), asset  # 100% to the end
        # a backfill of many days is many month-sized runs, never one run holding the warehouse pool
        assert defs.resolve_assets_def(asset).backfill_policy.max_partitions_per_run == 31


def test_first_partition_day_is_configured_discovered_or_two_weeks_ago(tmp_path):
    settings = Settings(buckets_file=str(BUCKETS), storage_root=str(tmp_path), home=str(tmp_path / "home"))
    two_weeks_ago = (datetime.now(timezone.utc).date() - timedelta(days=14)).isoformat()
    assert first_partition_day(settings) == two_weeks_ago  # nothing staged yet
    for day in ("1970-01-01", "2025-03-04", "2025-05-06", "2024-xx-01"):  # 1970: a bad timestamp; not a day
        (tmp_path / "home" / "staging" / "metadata" / day).mkdir(parents=True)
    assert first_partition_day(settings) == "2025-03-04"
    configured = Settings(**{**settings.__dict__, "start_date": "2020-01-01"})
    assert first_partition_day(configured) == "2020-01-01"


def test_each_partition_reports_its_own_numbers(synced):
    rows_by_day = dict(synced.query('SELECT CAST(CAST(finished AS DATE) AS VARCHAR), count(*) FROM "all" GROUP BY 1'))
    published = _latest_by_partition(synced.instance, "build_all")
    staged = _latest_by_partition(synced.instance, "build_rows")
    junit = _latest_by_partition(synced.instance, "junit_results")
    assert set(published) == set(rows_by_day)
    assert len(set(rows_by_day.values())) > 1  # the days differ, so a run total would show
    for day, count in rows_by_day.items():
        assert published[day]["dagster/row_count"] == published[day]["rows_loaded"] == count, day
        assert staged[day]["dagster/row_count"] == staged[day]["rows_built"] == count, day
        assert junit[day]["builds"] == junit[day]["fetched"] == count, day
    assert sum(m["tests"] for m in staged.values()) == synced.query('SELECT sum(tests_run) FROM "all"')[0][0]
    # unpartitioned tables: the whole table
    week = synced.instance.fetch_materializations(dg.AssetKey("build_week"), limit=1).records[0]
    assert week.asset_materialization.metadata["dagster/row_count"].value == synced.query('SELECT count(*) FROM "week"')[0][0]


def test_table_assets_carry_the_contract_schema_and_owners(synced):
    defs = build_definitions(synced.settings)
    for asset in ("build_rows", "build_all", "build_week", "build_day"):
        spec = next(iter(defs.resolve_assets_def(asset).specs))
        schema = spec.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == CONTRACT_COLUMNS
        assert next(c for c in schema.columns if c.name == "test").type.startswith("ARRAY<STRUCT<name STRING")
        assert spec.owners == ["team:fejta", "team:chuckbutler"]
    build_all = next(iter(defs.resolve_assets_def("build_all").specs))
    assert "`export/all/YYYY-MM-DD.json.gz`" in build_all.description  # no angle brackets for HTML to eat
    specs = defs.resolve_assets_def("junit_results").check_specs
    assert all(spec.description for spec in specs)


def test_the_sync_runs_are_named_jobs(synced):
    runs = synced.instance.get_runs()
    assert {r.job_name for r in runs} == {
        "collect_bucket", "stage_and_publish_days", "refresh_windows", "refresh_metrics", "refresh_failure_clusters",
        "refresh_report",
    }


def test_publish_affected_days_starts_after_the_sync_and_then_follows_new_collections(own_kettle):
    own_kettle.sync()
    defs = build_definitions(own_kettle.settings)
    sensor = defs.resolve_sensor_def("publish_affected_days")
    resources = build_resources(own_kettle.settings)

    def tick(cursor):
        with dg.build_sensor_context(
            instance=own_kettle.instance, cursor=cursor, resources=resources, definitions=defs
        ) as ctx:
            return sensor(ctx)

    first = tick(None)
    assert not first.run_requests  # the sync published its days: nothing is redone
    latest = own_kettle.instance.fetch_materializations(dg.AssetKey("build_metadata"), limit=1).records[0]
    assert first.cursor == str(latest.storage_id)
    assert tick(first.cursor).run_requests == []
    def collected(days):
        own_kettle.instance.report_runless_asset_event(
            dg.AssetMaterialization("build_metadata", partition="kubernetes-jenkins/logs", metadata={"affected_days": days})
        )
        return own_kettle.instance.fetch_materializations(dg.AssetKey("build_metadata"), limit=1).records[0].storage_id

    # a `kettle sync` while the daemon runs: it collects and publishes the days itself
    seen = collected(["2026-10-28"])
    assert tick(first.cursor).run_requests == []  # 2026-10-28 is clean: published since its collection
    staging = resources["staging"]
    staging.mark_dirty(["2026-10-30", "2026-10-31"])  # what a collection of new builds leaves
    collected(["2026-10-30", "2026-10-31"])
    after = tick(str(seen))
    days = [r for r in after.run_requests if r.job_name == "stage_and_publish_days"]
    assert [(r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"]) for r in days] == [
        ("2026-10-30", "2026-10-31")
    ]
    assert all(r.tags["dagster/priority"] == "5" for r in after.run_requests)


def test_refetch_rereads_a_junit_file_changed_after_finished_json(own_kettle):
    own_kettle.sync()
    path, day, tests_run = own_kettle.query(
        'SELECT path, CAST(CAST(finished AS DATE) AS VARCHAR), tests_run FROM "all" '
        "WHERE tests_run > 3 AND path LIKE 'gs://kubernetes-jenkins/logs/%' ORDER BY path LIMIT 1"
    )[0]
    artifacts = own_kettle.tree / path[len("gs://"):] / "artifacts"
    for old in artifacts.rglob("junit*.xml"):
        old.unlink()
    (artifacts / "junit_01.xml").write_text('<testsuite><testcase name="only" time="1"/></testsuite>')
    defs = build_definitions(own_kettle.settings)
    job = defs.resolve_job_def("stage_and_publish_days")

    def publish(refetch: bool):
        config = {"ops": {"junit_results": {"config": {"refetch": refetch}}, "build_rows": {"config": {"refetch": refetch}}}}
        assert job.execute_in_process(instance=own_kettle.instance, partition_key=day, run_config=config).success
        return own_kettle.query('SELECT tests_run FROM "all" WHERE path = ?', path)[0][0]

    assert publish(refetch=False) == tests_run  # finished.json unchanged: the staged results stand
    assert publish(refetch=True) == 1


def test_streamed_problems_are_counted_in_metadata(own_kettle):
    own_kettle.sync()
    defs = build_definitions(own_kettle.settings)
    good = own_kettle.query("SELECT min(path) FROM \"all\" WHERE path LIKE 'gs://kubernetes-jenkins/logs/%'")[0][0]
    broken = own_kettle.tree / "kubernetes-jenkins/logs/ci-kubernetes-unit/77"
    broken.mkdir(parents=True)
    (broken / "started.json").write_text("{not json")
    (broken / "finished.json").write_text(json.dumps({"timestamp": int(SAMPLE_NOW) - 60, "result": "SUCCESS"}))
    truncated = own_kettle.tree / "kubernetes-jenkins/logs/ci-kubernetes-unit/76"
    truncated.mkdir(parents=True)
    (truncated / "started.json").write_text(json.dumps({"timestamp": int(SAMPLE_NOW) - 600}))
    (truncated / "finished.json").write_text('{"timestamp": 17')
    named = [good, str(broken).replace(str(own_kettle.tree), "gs:/"), str(truncated).replace(str(own_kettle.tree), "gs:/"),
             "gs://not-watched/logs/job/1"]
    result = defs.resolve_job_def("stream_builds").execute_in_process(
        instance=own_kettle.instance, partition_key="kubernetes-jenkins/logs", run_config=stream_run_config(named)
    )
    assert result.success
    metadata = result.asset_materializations_for_node("build_metadata")[-1].metadata
    # the broken started.json, the truncated finished.json (not JSON, so no timestamp either)
    assert metadata["problems"].value == 3
    assert metadata["named_builds"].value == 4 and metadata["named_not_in_bucket"].value == 1
    assert metadata["unchanged"].value == 1 and metadata["new_finished"].value == 2


def test_a_day_without_staged_rows_reports_zero_not_the_table(own_kettle):
    own_kettle.sync()
    empty_day = (date.fromisoformat(SAMPLE_DAY) + timedelta(days=3)).isoformat()  # inside the partitions, no builds
    build_all = next(a for a in build_assets(own_kettle.settings) if a.key.path == ["build_all"])
    result = dg.materialize(
        [build_all], partition_key=empty_day, instance=own_kettle.instance,
        resources=build_resources(own_kettle.settings),
    )
    [mat] = result.asset_materializations_for_node("build_all")
    assert mat.metadata["dagster/row_count"].value == 0 and mat.metadata["skipped"].value is True
    assert mat.metadata["table_rows"].value == own_kettle.query('SELECT count(*) FROM "all"')[0][0]


def test_the_stream_sensor_counts_finished_json_it_cannot_read(own_kettle, tmp_path):
    """A notification whose finished.json is gone by the time the sensor reads it (deleted or
    overwritten in GCS): it comes back later, and meanwhile it is counted on the bucket."""
    own_kettle.sync()
    defs = build_definitions(own_kettle.settings)
    sensor = defs.resolve_sensor_def("stream_finished_builds")
    announced = tmp_path / "announced"  # what notifications name; the artifact tree lacks it
    resources = {
        **build_resources(own_kettle.settings),
        "notifications": LocalFolderNotificationSource(root=str(announced), state_file=str(tmp_path / "watch.json")),
    }

    def tick(cursor):
        with dg.build_sensor_context(
            instance=own_kettle.instance, cursor=cursor, resources=resources, definitions=defs
        ) as ctx:
            return sensor(ctx)

    cursor = tick(None).cursor  # the folder watcher starts from what is there
    gone = announced / "kubernetes-jenkins/logs/ci-kubernetes-unit/78/finished.json"
    gone.parent.mkdir(parents=True)
    gone.write_text("{}")
    result = tick(cursor)
    assert result.run_requests == []
    [observation] = result.asset_events
    assert observation.partition == "kubernetes-jenkins/logs"
    assert observation.metadata["stream_unreadable_finished_json"].value == 1


def test_stream_runs_go_before_backfills(own_kettle):
    own_kettle.sync()
    defs = build_definitions(own_kettle.settings)
    sensor = defs.resolve_sensor_def("stream_finished_builds")
    resources = build_resources(own_kettle.settings)
    with dg.build_sensor_context(instance=own_kettle.instance, resources=resources, definitions=defs) as ctx:
        cursor = sensor(ctx).cursor
    folder = own_kettle.tree / "kubernetes-jenkins/logs/ci-kubernetes-unit/79"
    folder.mkdir(parents=True)
    (folder / "started.json").write_text(json.dumps({"timestamp": int(time.time()) - 300}))
    (folder / "finished.json").write_text(json.dumps({"timestamp": int(time.time()) - 60, "result": "SUCCESS"}))
    with dg.build_sensor_context(instance=own_kettle.instance, cursor=cursor, resources=resources, definitions=defs) as ctx:
        result = sensor(ctx)
    assert [r.tags["dagster/priority"] for r in result.run_requests] == ["10"]


@pytest.mark.parametrize(
    "path,pattern,url",
    [
        ("gs://kubernetes-jenkins/logs/ci-a/12", None, "https://gcsweb.k8s.io/gcs/kubernetes-jenkins/logs/ci-a/12/"),
        ("gs://kubernetes-jenkins/logs/ci-a/12", "https://prow.k8s.io/view/gs/{bucket}/{path}",
         "https://prow.k8s.io/view/gs/kubernetes-jenkins/logs/ci-a/12"),
        ("not/a/gs/path", None, None),
    ],
)
def test_artifact_urls(path, pattern, url):
    assert (artifact_url(path, pattern) if pattern else artifact_url(path)) == url


def test_markdown_links_and_owners():
    assert md_link("gs://b/logs/j/1") == "[gs://b/logs/j/1](https://gcsweb.k8s.io/gcs/b/logs/j/1/)"
    assert md_link("gs://b/logs/j (x)/1") == "[gs://b/logs/j (x)/1](https://gcsweb.k8s.io/gcs/b/logs/j%20(x%29/1/)"
    assert owner_of_contact("fejta") == "team:fejta"
    assert owner_of_contact("sig-testing@kubernetes.io") == "sig-testing@kubernetes.io"
    assert owner_of_contact("") is None and owner_of_contact("two words") is None
    assert bucket_owners(load_buckets(str(BUCKETS))) == ["team:fejta", "team:chuckbutler"]


def test_a_bad_artifact_url_pattern_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("KETTLE_ARTIFACT_URL", "https://x/{bucket}/{build}")
    with pytest.raises(ValueError, match="KETTLE_ARTIFACT_URL"):
        Settings.from_env(buckets_file=str(BUCKETS), storage_root="tree")
