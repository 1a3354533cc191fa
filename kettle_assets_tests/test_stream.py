"""Streaming: GCS notifications through Google's Pub/Sub emulator, the sensor, a real daemon."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kettle_assets.core.config import parse_buckets
from kettle_assets.core.stream import Notification, finished_build
from kettle_assets.project import Settings, build_definitions, build_resources
from kettle_assets.resources.notifications import LocalFolderNotificationSource

from .conftest import BUCKETS, REPO
from .support.servers import needs_pubsub, pubsub_emulator

PROJECT = "test-project"
BUCKET_SET = parse_buckets(
    {
        "gs://kubernetes-jenkins/logs/": {"prefix": "", "exclude_jobs": ["-canary$"]},
        "gs://kubernetes-jenkins/pr-logs/": {"prefix": "pr:", "pr": True},
    }
)


@pytest.mark.parametrize(
    "bucket,name,event,expected",
    [
        ("kubernetes-jenkins", "logs/ci-a/12/finished.json", "OBJECT_FINALIZE", "gs://kubernetes-jenkins/logs/ci-a/12"),
        ("kubernetes-jenkins", "pr-logs/pull/k_k/1/pull-a/7/finished.json", "OBJECT_FINALIZE",
         "gs://kubernetes-jenkins/pr-logs/pull/k_k/1/pull-a/7"),
        ("kubernetes-jenkins", "logs/ci-a/12/started.json", "OBJECT_FINALIZE", None),
        ("kubernetes-jenkins", "logs/ci-a/12/finished.json", "OBJECT_DELETE", None),
        ("kubernetes-jenkins", "logs/ci-a-canary/12/finished.json", "OBJECT_FINALIZE", None),  # excluded
        ("other-bucket", "logs/ci-a/12/finished.json", "OBJECT_FINALIZE", None),  # not watched
        ("kubernetes-jenkins", "logs/../x/finished.json", "OBJECT_FINALIZE", None),  # odd path
        ("kubernetes-jenkins", "pr-logs/directory/pull-a/7/finished.json", "OBJECT_FINALIZE", None),
    ],
)
def test_which_notifications_name_a_finished_build(bucket, name, event, expected):
    build, why = finished_build(Notification("id", bucket, name, event), BUCKET_SET)
    assert (build.path if build else None) == expected
    assert bool(why) == (expected is None)


def test_local_folder_source_has_pubsub_semantics(tmp_path):
    root = tmp_path / "root"
    (root / "b/logs/job/1").mkdir(parents=True)
    (root / "b/logs/job/1/finished.json").write_text("{}")
    source = LocalFolderNotificationSource(root=str(root), state_file=str(tmp_path / "state.json"), lease_seconds=0.5)
    assert source.pull() == []  # like a new subscription: only what appears later
    (root / "b/logs/job/2").mkdir()
    (root / "b/logs/job/2/finished.json").write_text("{}")
    first = source.pull()
    assert [(n.bucket, n.name) for n in first] == [("b", "logs/job/2/finished.json")]
    assert source.pull() == []  # leased, not redelivered yet
    time.sleep(0.6)
    again = source.pull()
    assert [n.ack_id for n in again] == [first[0].ack_id]  # not acknowledged: it comes back
    source.ack([again[0].ack_id])
    time.sleep(0.6)
    assert source.pull() == []  # acknowledged: gone
    os.utime(root / "b/logs/job/2/finished.json", ns=(1, 10**18))  # rewritten
    assert len(source.pull()) == 1


# --- with Google's Pub/Sub emulator ---------------------------------------------------------



def _clients(host):
    from google.cloud import pubsub_v1

    assert os.environ.get("PUBSUB_EMULATOR_HOST") == host, "set PUBSUB_EMULATOR_HOST with monkeypatch first"
    return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


def make_subscription(host: str, name: str) -> tuple[str, str]:
    publisher, subscriber = _clients(host)
    topic = f"projects/{PROJECT}/topics/{name}"
    sub = f"projects/{PROJECT}/subscriptions/{name}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)
    return topic, sub


def notify(host: str, topic: str, bucket: str, name: str, event: str = "OBJECT_FINALIZE") -> None:
    publisher, _ = _clients(host)
    resource = {"kind": "storage#object", "bucket": bucket, "name": name, "generation": "1"}
    publisher.publish(
        topic, json.dumps(resource).encode(), eventType=event, bucketId=bucket, objectId=name,
        objectGeneration="1", payloadFormat="JSON_API_V1",
    ).result(timeout=30)


def drain(host: str, sub: str, wait: float) -> list[str]:
    """Object names still unacknowledged on the subscription (pulled and acked here)."""
    from google.api_core.retry import Retry

    _, subscriber = _clients(host)
    names = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        resp = subscriber.pull(request={"subscription": sub, "max_messages": 100}, timeout=3, retry=Retry(timeout=3))
        if resp.received_messages:
            names += [m.message.attributes["objectId"] for m in resp.received_messages]
            subscriber.acknowledge(request={"subscription": sub, "ack_ids": [m.ack_id for m in resp.received_messages]})
        else:
            time.sleep(0.5)
    return names


def add_build(tree: Path, rel: str, finished_at: int) -> str:
    folder = tree / rel
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    (folder / "started.json").write_text(json.dumps({"timestamp": finished_at - 300}))
    (folder / "finished.json").write_text(json.dumps({"timestamp": finished_at, "result": "FAILURE"}))
    (folder / "artifacts/junit_01.xml").write_text(
        '<testsuite><testcase name="streamed" time="1"><failure message="m">b</failure></testcase></testsuite>'
    )
    return "gs://" + rel


@needs_pubsub
def test_a_tick_that_dies_loses_nothing_and_acks_after_commit(own_kettle, monkeypatch):
    with pubsub_emulator() as host:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        topic, sub = make_subscription(host, "tick")
        settings = Settings(**{**own_kettle.settings.__dict__, "pubsub_subscription": sub})
        defs = build_definitions(settings)
        sensor = defs.resolve_sensor_def("stream_finished_builds")
        path = add_build(own_kettle.tree, "kubernetes-jenkins/logs/ci-kubernetes-unit/31", int(time.time()) - 60)
        notify(host, topic, "kubernetes-jenkins", path[len("gs://kubernetes-jenkins/"):] + "/finished.json")
        notify(host, topic, "kubernetes-jenkins", "logs/ci-kubernetes-unit/31/started.json")  # irrelevant
        instance = dg.DagsterInstance.ephemeral()
        resources = build_resources(settings)

        def tick(cursor):
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as ctx:
                return sensor(ctx)

        died = tick(None)  # evaluated, then "dies": its run requests and cursor are never recorded
        assert [r.run_config["ops"]["build_metadata"]["config"]["builds"] for r in died.run_requests] == [[path]]
        time.sleep(11)  # past the ack deadline
        again = tick(None)
        assert [r.run_config["ops"]["build_metadata"]["config"]["builds"] for r in again.run_requests] == [[path]]
        tick(again.cursor)  # the next tick acknowledges what the committed cursor holds
        assert drain(host, sub, 12) == []  # nothing comes back: relevant acked after commit, irrelevant at once


@needs_pubsub
def test_daemon_turns_notifications_into_rows(own_kettle, tmp_path, monkeypatch):
    own_kettle.sync()
    tree = own_kettle.tree
    now = int(time.time())
    new = add_build(tree, "kubernetes-jenkins/logs/ci-kubernetes-unit/31", now - 120)
    excluded = add_build(tree, "kubernetes-jenkins/logs/ci-kubernetes-e2e-gce-canary/9", now - 100)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        "concurrency:\n  runs:\n    max_concurrent_runs: 1\ntelemetry:\n  enabled: false\n"
    )
    with pubsub_emulator() as host:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        topic, sub = make_subscription(host, "daemon")
        for name in (
            new[len("gs://kubernetes-jenkins/"):] + "/finished.json",
            new[len("gs://kubernetes-jenkins/"):] + "/finished.json",  # duplicate
            excluded[len("gs://kubernetes-jenkins/"):] + "/finished.json",
            "logs/ci-kubernetes-unit/31/artifacts/junit_01.xml",  # irrelevant object
            "logs/ci-kubernetes-unit/999/finished.json",  # cannot be read: must come back
        ):
            notify(host, topic, "kubernetes-jenkins", name)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "KETTLE_STORAGE_ROOT": str(tree),
            "KETTLE_HOME": str(own_kettle.home),
            "KETTLE_BUCKETS": str(BUCKETS),
            "PUBSUB_EMULATOR_HOST": host,
            "KETTLE_PUBSUB_SUBSCRIPTION": sub,
        }
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "kettle_assets.definitions"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            counts = wait_for_rows(own_kettle.home, new, timeout=180)
            assert counts == {"all": 1, "week": 1, "day": 1}
            time.sleep(20)  # one more sensor tick, which acknowledges what it recorded
        finally:
            os.killpg(daemon.pid, 15)
            daemon.wait(30)
        left = drain(host, sub, 15)
    assert set(left) == {"logs/ci-kubernetes-unit/999/finished.json"}
    with duckdb.connect(str(own_kettle.home / "warehouse.duckdb"), read_only=True) as conn:
        assert conn.execute('SELECT count(*) FROM "all" WHERE path = ?', [excluded]).fetchone()[0] == 0
        assert conn.execute('SELECT count(*) - count(DISTINCT path) FROM "all"').fetchone()[0] == 0
        row = conn.execute('SELECT tests_run, tests_failed, result FROM "all" WHERE path = ?', [new]).fetchone()
        assert row == (1, 1, "FAILURE")


def wait_for_rows(home: Path, path: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    counts = {}
    while time.monotonic() < deadline:
        try:
            with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as conn:
                counts = {
                    t: conn.execute(f'SELECT count(*) FROM "{t}" WHERE path = ?', [path]).fetchone()[0]
                    for t in ("all", "week", "day")
                }
            if all(counts.values()):
                return counts
        except duckdb.Error:
            pass  # a run holds the write lock
        time.sleep(2)
    raise AssertionError(f"{path} did not reach the warehouse in {timeout}s: {counts}")


def test_local_folder_streaming_through_the_sensors(own_kettle):
    """The embedded default streams too: a new finished.json in the folder becomes a
    build_metadata run naming it, and the publish sensor stages and publishes its day."""
    own_kettle.sync()
    defs = build_definitions(own_kettle.settings)
    resources = build_resources(own_kettle.settings)
    instance = own_kettle.instance

    def tick(name, cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as ctx:
            return defs.resolve_sensor_def(name)(ctx)

    def run(request):
        job = defs.resolve_job_def(request.job_name or "stream_builds")
        result = job.execute_in_process(
            partition_key=request.partition_key, run_config=request.run_config or {}, tags=request.tags,
            instance=instance,
        )
        assert result.success
        return result

    first = tick("stream_finished_builds", None)
    publish_cursor = tick("publish_affected_days", None).cursor
    assert not first.run_requests
    path = add_build(own_kettle.tree, "kubernetes-jenkins/logs/ci-kubernetes-unit/32", int(time.time()) - 30)
    result = tick("stream_finished_builds", first.cursor)
    [request] = result.run_requests
    assert request.partition_key == "kubernetes-jenkins/logs"
    streamed = run(request)
    # the lineage is what happened: the streamed build went through build_metadata, and only it
    assert {e.asset_key.to_user_string() for e in streamed.get_asset_materialization_events()} == {"build_metadata"}
    metadata = streamed.asset_materializations_for_node("build_metadata")[0].metadata
    assert metadata["new_finished"].value == 1 and metadata["fetched"].value == 1  # no listing, no other build

    publish = tick("publish_affected_days", publish_cursor)
    assert [r.job_name for r in publish.run_requests] == ["stage_and_publish_days", "refresh_windows"]
    published = run(publish.run_requests[0])
    junit = published.asset_materializations_for_node("junit_results")[0].metadata
    assert junit["fetched"].value == 1  # only the streamed build, not the day
    run(publish.run_requests[1])
    assert own_kettle.query('SELECT count(*) FROM "all" WHERE path = ?', path) == [(1,)]
    assert own_kettle.query('SELECT count(*) FROM "day" WHERE path = ?', path) == [(1,)]
    assert tick("publish_affected_days", publish.cursor).run_requests == []  # the day is published

    # the same notification again (a redelivery) and a second build of the day: one row each,
    # and the day is published by upserting the new build, not by replacing the day
    second = add_build(own_kettle.tree, "kubernetes-jenkins/logs/ci-kubernetes-unit/33", int(time.time()) - 20)
    [request_second] = tick("stream_finished_builds", result.cursor).run_requests
    run(request)
    run(request_second)
    again = tick("publish_affected_days", publish.cursor).run_requests
    build_all = run(again[0]).asset_materializations_for_node("build_all")
    assert build_all[-1].metadata["days_upserted"].value == 1
    assert build_all[0].metadata["rows_loaded"].value == 1 and build_all[0].metadata["dagster/row_count"].value == 2
    assert own_kettle.query('SELECT count(*) FROM "all" WHERE path IN (?, ?)', path, second) == [(2,)]
    assert own_kettle.query('SELECT count(*) - count(DISTINCT path) FROM "all"') == [(0,)]
    for folder in (path, second):
        shutil.rmtree(own_kettle.tree / folder[len("gs://"):])
