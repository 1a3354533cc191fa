"""`alert_on_new_failures`: after each publish, find the events worth a message and post them.

Each tick it delivers what is due in the outbox (new messages, and retries whose wait is
over), and, when `all`, `test_flakiness` or `failure_clusters` materialized since its last
look, first reads them and records the events they show. `kettle sync` does the same after
its metrics and clusters (`alert_round`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import dagster as dg

from ..core.alerts import AlertEvent, cluster_events, clusters_sql, flakiness_events, flakiness_sql, job_events, job_runs_sql
from ..resources.settings import KettleSettings
from ..resources.warehouse import Warehouse
from ..resources.webhooks import AlertWebhooks, DeliveryReport
from .links import artifact_url

# the asset whose table each family of events is read from
SOURCES = {"build_all": "jobs", "test_flakiness": "flakiness", "failure_clusters": "clusters"}


@dataclass
class AlertRound:
    found: int | None = None  # None: the warehouse was not read this round
    new: list[AlertEvent] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # family -> why it could not be read
    delivery: DeliveryReport = field(default_factory=DeliveryReport)

    def summary(self) -> str:
        d = self.delivery
        found = "" if self.found is None else f"{self.found} events found, {len(self.new)} new; "
        text = f"alerts: {found}{d.posted} posted, {d.failed} failed, {d.pending} waiting"
        return text + (f"; not read: {', '.join(sorted(self.unavailable))}" if self.unavailable else "")


def find_events(warehouse: Warehouse, alerts: AlertWebhooks, artifact_pattern: str, now: float,
                log: Callable[[str], None]) -> tuple[list[AlertEvent], dict[str, str]]:
    """The events the warehouse shows now. A family whose table cannot be read (not computed yet,
    a warehouse busy with a write) is left out with one log line, and found on a later look."""
    rules = alerts.alert_rules()
    at = datetime.fromtimestamp(now, tz=timezone.utc)
    families = {
        "jobs": lambda: job_events(warehouse.query(job_runs_sql(rules, at)), rules, alerts.report_url,
                                   lambda path: artifact_url(path, artifact_pattern)),
        "clusters": lambda: cluster_events(warehouse.query(clusters_sql(rules)), rules, alerts.report_url, at),
        "flakiness": lambda: flakiness_events(warehouse.query(flakiness_sql(rules)), rules, alerts.report_url, at),
    }
    events: list[AlertEvent] = []
    unavailable: dict[str, str] = {}
    for family, find in families.items():
        try:
            events.extend(find())
        except Exception as exc:  # noqa: BLE001 - a missing or busy table skips one family, not the round
            unavailable[family] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"alerts: {family} not read this time ({unavailable[family]})")
    return events, unavailable


def alert_round(warehouse: Warehouse | None, alerts: AlertWebhooks, artifact_pattern: str,
                log: Callable[[str], None], as_of: float | None = None, now: float | None = None) -> AlertRound:
    """Record the events the warehouse shows as of `as_of` (unless `warehouse` is None), then
    deliver what is due at `now` (both default to the current time)."""
    now = time.time() if now is None else now
    result = AlertRound()
    if warehouse is not None:
        events, result.unavailable = find_events(warehouse, alerts, artifact_pattern, now if as_of is None else as_of, log)
        result.found = len(events)
        result.new = alerts.record(events, now)
    result.delivery = alerts.deliver_due(now, log)
    return result


def _latest_materializations(instance: dg.DagsterInstance) -> dict[str, int]:
    latest = {}
    for name in SOURCES:
        records = instance.fetch_materializations(dg.AssetKey(name), limit=1, ascending=False).records
        if records:
            latest[name] = records[0].storage_id
    return latest


@dg.sensor(
    name="alert_on_new_failures",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After `all`, `test_flakiness` or `failure_clusters` materialize: jobs that started failing, "
        "new big failure clusters and flakiness jumps, posted once each to the configured webhooks."
    ),
)
def alert_on_new_failures(
    context: dg.SensorEvaluationContext, warehouse: Warehouse, alerts: AlertWebhooks, settings: KettleSettings,
):
    seen = json.loads(context.cursor) if context.cursor else {}
    latest = _latest_materializations(context.instance)
    changed = sorted(name for name, storage_id in latest.items() if storage_id > seen.get(name, 0))
    result = alert_round(warehouse if changed else None, alerts, settings.artifact_url, context.log.info)
    # what a family could not read (e.g. the warehouse was busy) is read again next tick
    cursor = {**seen, **{name: i for name, i in latest.items() if SOURCES[name] not in result.unavailable}}
    if changed or result.delivery.posted or result.delivery.failed:
        context.log.info(result.summary() + (f" (after {', '.join(changed)})" if changed else ""))
    return dg.SensorResult(
        cursor=json.dumps(cursor, sort_keys=True),
        skip_reason=None if (changed or result.delivery.posted or result.delivery.failed) else "nothing new, nothing due",
    )
