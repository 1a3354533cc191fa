"""Alerts posted to a real HTTP server on 127.0.0.1: exactly the expected messages, once each,
across rounds, retries and a poster killed with SIGKILL."""

import dataclasses
import json
import os
import signal
import socket
import sqlite3
import threading
import subprocess
import sys
import time

import dagster as dg
import pytest

from kettle_assets.assets.alerts import alert_on_new_failures, alert_round
from kettle_assets.core.alerts import AlertEvent
from kettle_assets.core.report_links import job_page, page_url
from kettle_assets.project import SettingError, Settings, build_resources, duckdb_warehouse, settings_resource
from kettle_assets.sync import SyncSummary, alert_after_answers
from kettle_assets.resources.webhooks import AlertWebhooks, idempotency_key, parse_webhooks

from .conftest import BUCKETS, SAMPLE_NOW, Kettle
from .support.webhook_server import WebhookReceiver
from .test_alerts import LOGS, NOW, builds, insert_builds

REPORT = "https://ci.example/report"
T0 = NOW.timestamp()  # the rounds' clock: retries are due by it, not by how long the test sleeps
FAILING = f"job_failing|ci-three|{LOGS}/ci-three/6"
FLAKY = "flakiness_jump|ci-a|jumped|2026-W49"


@pytest.fixture()
def receiver():
    with WebhookReceiver() as server:
        yield server


@pytest.fixture()
def warehouse(tmp_path):
    """One failing job and one test whose flakiness jumped; no failure clusters computed yet."""
    wh = duckdb_warehouse(tmp_path)
    wh.ensure_tables()
    insert_builds(wh, [*builds("ci-three", "PPFPPFFF"), *builds("ci-green", "FPP")])
    with wh.duckdb.get_connection() as conn:
        conn.execute("""CREATE TABLE test_flakiness (job VARCHAR, name VARCHAR, considered BIGINT, flips BIGINT,
                        flakiness DOUBLE, previous_flakiness DOUBLE, trend DOUBLE)""")
        conn.execute("INSERT INTO test_flakiness VALUES ('ci-a', 'jumped', 20, 5, 25.0, 5.0, 20.0)")
    return wh


def alerts_to(receiver, tmp_path, **config) -> AlertWebhooks:
    return AlertWebhooks(
        webhooks=f"slack:{receiver.url_of('/slack')},json:{receiver.url_of('/json')}", report_url=REPORT,
        outbox_file=str(tmp_path / "alerts" / "outbox.sqlite"), timeout_seconds=5, **config,
    )


def test_each_event_reaches_each_webhook_once_across_rounds(receiver, warehouse, tmp_path):
    alerts = alerts_to(receiver, tmp_path)
    lines = []
    first = alert_round(warehouse, alerts, "https://gcsweb.example/{bucket}/{path}", lines.append, now=T0)
    assert (first.found, len(first.new), first.delivery.posted, first.delivery.failed) == (2, 2, 4, 0)
    assert set(first.unavailable) == {"clusters"}  # no failure_clusters table: left out, said once
    assert [line.split(" (")[0] for line in lines] == ["alerts: clusters not read this time"]
    slack = [p.body for p in receiver.accepted("/slack")]
    assert slack == [
        {"text": "*ci-three failed 3 builds in a row*\nafter 2 passing builds\n"
                 "first failed: build 6 started 2026-11-30 13:00 UTC — https://gcsweb.example/kubernetes-jenkins/logs/ci-three/6\n"
                 "latest: build 8 started 2026-11-30 15:00 UTC — https://gcsweb.example/kubernetes-jenkins/logs/ci-three/8\n"
                 "<https://ci.example/report/jobs/ci-three.html|Open in the CI report>"},
        {"text": "*jumped in ci-a got flakier: 25% (was 5% the week before)*\n5 flips in 20 results over the last 7 days\n"
                 "<https://ci.example/report/tests/jumped.html|Open in the CI report>"},
    ]
    generic = receiver.accepted("/json")
    assert [p.body["key"] for p in generic] == [FAILING, FLAKY]
    assert generic[1].body == {
        "key": FLAKY, "kind": "flakiness_jump", "title": "jumped in ci-a got flakier: 25% (was 5% the week before)",
        "text": "5 flips in 20 results over the last 7 days", "url": "https://ci.example/report/tests/jumped.html",
        "facts": {"job": "ci-a", "test": "jumped", "flakiness": 25.0, "previous_flakiness": 5.0, "trend": 20.0,
                  "flips": 5, "results": 20},
    }
    assert {p.idempotency_key for p in generic} == {idempotency_key(AlertEvent.from_json(json.dumps(
        {**p.body, "facts": p.body["facts"]}))) for p in generic}
    # the same data again, later and in another process's outbox object: nothing new, nothing posted
    second = alert_round(warehouse, alerts_to(receiver, tmp_path), "", lines.append, now=T0 + 7200)
    assert (second.found, len(second.new), second.delivery.posted) == (2, 0, 0)
    assert len(receiver.received) == 4
    assert second.delivery.sent_total == 4 and second.delivery.pending == 0


def test_a_failed_post_is_retried_after_its_wait_and_arrives_once(receiver, warehouse, tmp_path):
    receiver.statuses["/json"] = [500, 500]
    receiver.statuses["/slack"] = [503]  # retried within the post: arrives in the first round
    alerts = alerts_to(receiver, tmp_path, retry_base_seconds=30)
    first = alert_round(warehouse, alerts, "", lambda _l: None, now=T0)
    assert (first.delivery.posted, first.delivery.failed, first.delivery.pending) == (2, 2, 2)
    assert [p.status for p in receiver.received if p.path == "/slack"] == [503, 200, 200]
    too_soon = alert_round(None, alerts, "", lambda _l: None, now=T0 + 10)
    assert (too_soon.delivery.posted, too_soon.delivery.failed) == (0, 0)
    retried = alert_round(None, alerts, "", lambda _l: None, now=T0 + 31)
    assert (retried.delivery.posted, retried.delivery.failed, retried.delivery.pending) == (2, 0, 0)
    json_posts = [p for p in receiver.received if p.path == "/json"]
    assert [(p.status, p.body["key"]) for p in json_posts] == [(500, FAILING), (500, FLAKY), (200, FAILING), (200, FLAKY)]
    assert json_posts[0].idempotency_key == json_posts[2].idempotency_key
    assert alert_round(warehouse, alerts, "", lambda _l: None, now=T0 + 3600).delivery.posted == 0
    assert len(receiver.accepted()) == 4


def test_a_webhook_down_for_hours_gets_its_messages_when_it_is_back(receiver, warehouse, tmp_path):
    receiver.statuses["/json"] = [500] * 6
    alerts = AlertWebhooks(webhooks=f"json:{receiver.url_of('/json')}", report_url=REPORT,
                           outbox_file=str(tmp_path / "outbox.sqlite"), retry_base_seconds=30, retry_max_seconds=600)
    now = T0
    alert_round(warehouse, alerts, "", lambda _l: None, now=now)
    while receiver.statuses["/json"]:
        now += 600
        alert_round(None, alerts, "", lambda _l: None, now=now)
    alert_round(None, alerts, "", lambda _l: None, now=now + 600)
    assert [p.body["key"] for p in receiver.accepted()] == [FAILING, FLAKY]


CHILD = """
import os, signal, sys, time
from kettle_assets.core.alerts import AlertEvent
from kettle_assets.core.report_links import job_page, page_url
from kettle_assets.resources.webhooks import AlertWebhooks
alerts = AlertWebhooks(webhooks=sys.argv[1], report_url="r", outbox_file=sys.argv[2], timeout_seconds=5)
if sys.argv[3] == "record":
    alerts.record([AlertEvent.from_json(line) for line in sys.argv[4:]], time.time())
    os.kill(os.getpid(), signal.SIGKILL)  # dies before posting anything
else:
    alerts.deliver_due(time.time(), print)  # the receiver kills it while it waits for the answer
"""


def run_child(*args) -> int:
    return subprocess.run([sys.executable, "-c", CHILD, *args], timeout=60).returncode


def event(key: str) -> AlertEvent:
    return AlertEvent(key, "job_failing", f"title {key}", "text", f"{REPORT}/jobs/x.html", {"n": 1})


def test_events_recorded_by_a_process_killed_before_posting_are_posted_on_restart(receiver, tmp_path):
    hooks, outbox = f"json:{receiver.url_of('/json')}", str(tmp_path / "outbox.sqlite")
    assert run_child(hooks, outbox, "record", event("a").to_json(), event("b").to_json()) == -signal.SIGKILL
    assert receiver.received == []
    restarted = AlertWebhooks(webhooks=hooks, report_url=REPORT, outbox_file=outbox)
    assert restarted.deliver_due(time.time(), print).posted == 2
    assert restarted.deliver_due(time.time() + 86400, print).posted == 0
    assert [p.body["key"] for p in receiver.accepted()] == ["a", "b"]


def test_a_process_killed_between_post_and_mark_posts_again_once_with_the_same_key(receiver, tmp_path):
    hooks, outbox = f"json:{receiver.url_of('/json')}", str(tmp_path / "outbox.sqlite")
    alerts = AlertWebhooks(webhooks=hooks, report_url=REPORT, outbox_file=outbox, timeout_seconds=5)
    alerts.record([event("a")], time.time())
    child = subprocess.Popen([sys.executable, "-c", CHILD, hooks, outbox, "deliver"])
    receiver.on_post = lambda _post: os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    receiver.on_post = None
    assert len(receiver.received) == 1
    # its lease holds the message while the dead process might still be posting it ...
    assert alerts.deliver_due(time.time(), print).posted == 0
    # ... and once it runs out, the message goes once more, with the same Idempotency-Key
    later = time.time() + alerts.outbox().lease_seconds + 1
    assert alerts.deliver_due(later, print).posted == 1
    assert alerts.deliver_due(later + 86400, print).posted == 0
    first, again = receiver.received
    assert first.body == again.body and first.idempotency_key == again.idempotency_key == idempotency_key(event("a"))


def test_webhook_settings_are_checked():
    assert [(h.kind, h.label) for h in parse_webhooks("slack:https://hooks.slack.com/services/T/B/x , json:http://h:8/p")] == [
        ("slack", "slack:hooks.slack.com"), ("json", "json:h:8")]
    for bad in ("https://hooks.slack.com/x", "teams:https://x", "slack:ftp://x", "json:notaurl"):
        with pytest.raises(ValueError, match="a webhook is slack:"):
            parse_webhooks(bad)


def test_sensor_reads_after_each_publish_and_posts_once(receiver, warehouse, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    # the sensor looks as of the wall clock: the hand-made builds stay active whenever the test runs
    resources = {"warehouse": warehouse, "alerts": alerts_to(receiver, tmp_path, rules="active_days=100000"),
                 "settings": settings_resource(Settings(buckets_file=str(BUCKETS)))}

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            result = alert_on_new_failures(context)
            return result, result.cursor

    result, cursor = tick(None)
    assert result.skip_reason is not None and receiver.received == []  # nothing published yet
    instance.report_runless_asset_event(dg.AssetMaterialization("build_all"))
    result, cursor = tick(cursor)
    assert result.skip_reason is None
    assert [p.body["key"].rsplit("|", 1)[0] for p in receiver.accepted("/json")] == [
        FAILING.rsplit("|", 1)[0], "flakiness_jump|ci-a|jumped"]
    assert set(json.loads(cursor)) == {"build_all"}
    result, cursor = tick(cursor)  # nothing new
    assert result.skip_reason is not None
    insert_builds(warehouse, [r for r in builds("ci-green", "FPPF") if r[2] == 4])
    instance.report_runless_asset_event(dg.AssetMaterialization("test_flakiness"))
    tick(cursor)
    assert len(receiver.received) == 4  # ci-green's single failure after 2 passes is no event; the rest were sent


SAMPLE_EVENTS = [
    "job_started_failing|juju:conformance-juju-aws|gs://canonical-kubernetes-tests/logs/conformance-juju-aws/20261031-185600",
    "flakiness_jump|ci-kubernetes-node-e2e|[sig-node] ci-kubernetes-node-e2e test 3|2026-W44",
    "flakiness_jump|ci-kubernetes-e2e-gce|[sig-network] ci-kubernetes-e2e-gce test 11|2026-W44",
]


def test_kettle_sync_posts_the_samples_events_once(sample_tree, tmp_path, receiver):
    kettle = Kettle(sample_tree, tmp_path / "home")
    kettle.settings = dataclasses.replace(
        kettle.settings, alert_webhooks=f"json:{receiver.url_of('/json')}", report_url="https://ci.example/report")
    first = kettle.sync()
    assert [p.body["key"] for p in receiver.accepted()] == SAMPLE_EVENTS
    assert first.alerts == {"found": 3, "new": 3, "alerts_posted": 3, "alert_posts_failed": 0, "alerts_pending": 0,
                            "alerts_sent_total": 3, "alert_events_total": 3}
    # a timestamped build has no number: its folder names it
    assert receiver.accepted()[0].body["title"] == (
        "juju:conformance-juju-aws started failing: build 20261031-185600 failed after 5 passes")
    assert receiver.accepted()[0].body["url"] == page_url("https://ci.example/report", job_page("juju:conformance-juju-aws"))
    # the next sync's alert step after new rows (as after a sync killed before it cleared its
    # answers marker): the same events found again, none posted twice
    second = SyncSummary()
    alert_after_answers(build_resources(kettle.settings), kettle.settings, second, True, SAMPLE_NOW, lambda _l: None)
    assert (second.alerts["found"], second.alerts["new"], second.alerts["alerts_posted"]) == (3, 0, 0)
    assert len(receiver.received) == 3


def test_alert_settings_come_from_the_environment_and_bad_ones_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("KETTLE_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("KETTLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KETTLE_ALERT_WEBHOOKS", "slack:https://hooks.slack.com/services/T/B/secret")
    monkeypatch.setenv("KETTLE_ALERT_RULES", "consecutive_failures=2")
    settings = Settings.from_env()
    alerts = build_resources(settings)["alerts"]
    assert alerts.report_url == (tmp_path / "home" / "report").as_uri()
    assert alerts.alert_rules().consecutive_failures == 2 and [h.kind for h in alerts.targets()] == ["slack"]
    for name, value, message in [
        ("KETTLE_ALERT_WEBHOOKS", "slack:hooks.slack.com/services/T/B/secret", "KETTLE_ALERT_WEBHOOKS: a webhook is"),
        ("KETTLE_ALERT_RULES", "consecutive_failure=2", "KETTLE_ALERT_RULES: unknown alert rule"),
        ("KETTLE_REPORT_URL", "ci.example/report", "KETTLE_REPORT_URL must be"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingError, match=message) as error:
            Settings.from_env()
        assert "secret" not in str(error.value)
        monkeypatch.delenv(name)


def test_a_refused_connection_waits_for_a_retry_and_logs_no_secret(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alerts = AlertWebhooks(webhooks=f"json:http://127.0.0.1:{port}/services/T/secret?token=hush", report_url=REPORT,
                           outbox_file=str(tmp_path / "outbox.sqlite"))
    alerts.record([event("a")], T0)
    lines = []
    report = alerts.deliver_due(T0, lines.append)
    assert (report.posted, report.failed, report.pending) == (0, 1, 1)
    assert len(lines) == 1 and "ConnectionError" in lines[0] and f"json:127.0.0.1:{port}" in lines[0]
    with sqlite3.connect(tmp_path / "outbox.sqlite") as conn:
        (error,) = conn.execute("SELECT last_error FROM deliveries").fetchone()
    assert "ConnectionError" in error
    assert not any(secret in text for secret in ("secret", "hush") for text in (*lines, error))


def test_two_deliverers_at_once_post_each_message_once(receiver, tmp_path):
    """The sensor and a `kettle sync` may deliver at the same moment: leases keep them apart."""
    hooks, outbox = f"json:{receiver.url_of('/json')}", str(tmp_path / "outbox.sqlite")
    AlertWebhooks(webhooks=hooks, report_url=REPORT, outbox_file=outbox).record([event(f"e{i}") for i in range(30)], T0)
    posted = []

    def deliver():
        mine = AlertWebhooks(webhooks=hooks, report_url=REPORT, outbox_file=outbox, max_posts_per_round=7)
        for _ in range(10):
            posted.append(mine.deliver_due(T0, lambda _l: None).posted)

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(posted) == 30
    assert sorted(p.body["key"] for p in receiver.received) == sorted(f"e{i}" for i in range(30))
