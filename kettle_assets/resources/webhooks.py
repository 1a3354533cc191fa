"""Webhooks the alerts are posted to, and the outbox that makes each post happen once.

A webhook is written `<kind>:<url>`: `slack:https://hooks.slack.com/services/…` gets Slack's
`{"text": …}` (a title, the details and a link into the report), `json:https://…` gets the event
itself as JSON. Every post carries `Idempotency-Key` (the same for every post of one event), so
a receiver can drop the one repeat a crash can cause (see alert_outbox.py).
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import dagster as dg
import requests
from pydantic import Field
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..core.alerts import AlertEvent, AlertRules
from .alert_outbox import AlertOutbox, Delivery

KINDS = ("slack", "json")
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Webhook:
    kind: str
    url: str

    @property
    def id(self) -> str:
        """How the outbox names it: a hash, so the URL (often a secret) is not stored."""
        return hashlib.sha256(f"{self.kind}:{self.url}".encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """For logs: kind and host, never the URL's secret path."""
        return f"{self.kind}:{urlsplit(self.url).netloc}"


def parse_webhooks(text: str) -> list[Webhook]:
    """`slack:https://…,json:https://…` (commas or whitespace between); ValueError names a bad entry."""
    hooks = []
    for entry in text.replace(",", " ").split():
        kind, sep, url = entry.partition(":")
        parts = urlsplit(url)
        if not sep or kind not in KINDS or parts.scheme not in ("http", "https") or not parts.netloc:
            # a webhook's path is often its secret: shown cut short
            shown = f"{kind}:{parts.scheme}://{parts.netloc}/…" if parts.netloc else entry[:24] + "…" * (len(entry) > 24)
            raise ValueError(f"a webhook is slack:<http(s) URL> or json:<http(s) URL>, not {shown[:80]!r}")
        if Webhook(kind, url) not in hooks:
            hooks.append(Webhook(kind, url))
    return hooks


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(kind: str, event: AlertEvent) -> dict:
    if kind == "slack":
        return {"text": f"*{_slack_escape(event.title)}*\n{_slack_escape(event.text)}\n"
                        f"<{event.url.replace('|', '%7C').replace('>', '%3E')}|Open in the CI report>"}
    return {"key": event.key, "kind": event.kind, "title": event.title, "text": event.text, "url": event.url,
            "facts": event.facts}


def idempotency_key(event: AlertEvent) -> str:
    return hashlib.sha256(event.key.encode()).hexdigest()[:32]


def _without_secret(text: str, url: str) -> str:
    """An error message with the webhook's path and query (often its secret) cut out."""
    parts = urlsplit(url)
    for secret in sorted({parts.path, parts.query, parts.path + "?" + parts.query} - {"", "/", "?"}, key=len, reverse=True):
        text = text.replace(secret, "/…")
    return text


@dataclass(frozen=True)
class PostOutcome:
    ok: bool
    detail: str  # "HTTP 200", "HTTP 500", "ConnectionError: …"
    retry_after: float | None = None  # what a 429/503 asked for, in seconds


class WebhookPoster:
    """One pooled HTTP session; a refused connection or a 502/503/504 is retried twice at once,
    anything else is left to the outbox's next tick."""

    def __init__(self, timeout_seconds: float):
        self.timeout = (min(5.0, timeout_seconds), timeout_seconds)
        self.session = requests.Session()
        retry = Retry(
            total=2, connect=2, read=0, status=2, other=0, backoff_factor=0.2,
            status_forcelist=(502, 503, 504), allowed_methods=frozenset({"POST"}),
            raise_on_status=False, respect_retry_after_header=False,
        )
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def post(self, hook: Webhook, event: AlertEvent) -> PostOutcome:
        try:
            response = self.session.post(
                hook.url, json=payload(hook.kind, event), timeout=self.timeout,
                headers={IDEMPOTENCY_HEADER: idempotency_key(event), "User-Agent": "kettle-assets-alerts"},
            )
        except requests.RequestException as exc:
            return PostOutcome(False, f"{type(exc).__name__}: {_without_secret(str(exc), hook.url)[:200]}")
        retry_after = None
        try:
            retry_after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            pass
        response.close()
        return PostOutcome(200 <= response.status_code < 300, f"HTTP {response.status_code}", retry_after)

    def close(self) -> None:
        self.session.close()


@dataclass
class DeliveryReport:
    posted: int = 0
    failed: int = 0
    pending: int = 0  # after this round, including those waiting for their retry
    sent_total: int = 0
    events_total: int = 0
    unknown_target_pending: int = 0

    def metadata(self) -> dict:
        return {"alerts_posted": self.posted, "alert_posts_failed": self.failed, "alerts_pending": self.pending,
                "alerts_sent_total": self.sent_total, "alert_events_total": self.events_total}


class AlertWebhooks(dg.ConfigurableResource):
    """Where alerts go, how they are found (`rules`), and the outbox that delivers them."""

    webhooks: str = Field(default="", description="Webhooks, `slack:<url>` or `json:<url>`, comma-separated.")
    report_url: str = Field(description="The CI report's root address; messages link to its pages.")
    outbox_file: str = Field(description="The SQLite ledger of events and deliveries.")
    rules: str = Field(default="", description="Alert thresholds, `name=value,...` over the defaults.")
    timeout_seconds: float = Field(default=10.0, description="Longest wait for a webhook's answer.")
    retry_base_seconds: float = Field(default=30.0, description="First wait after a failed post; doubles each time.")
    retry_max_seconds: float = Field(default=3600.0, description="Longest wait between two posts of one message.")
    max_posts_per_round: int = Field(default=50, description="Posts per sensor tick or sync at most; the rest wait.")
    round_seconds: float = Field(
        default=20.0, description="No new post starts after this long (a post takes 30 s at worst; a sensor tick has 60 s)."
    )

    def targets(self) -> list[Webhook]:
        return parse_webhooks(self.webhooks)

    def alert_rules(self) -> AlertRules:
        return AlertRules.parse(self.rules)

    def outbox(self) -> AlertOutbox:
        # a post holds its lease for its timeout and the session's quick retries, with room to spare
        return AlertOutbox(Path(self.outbox_file), lease_seconds=4 * self.timeout_seconds + 30)

    def record(self, events: list[AlertEvent], now: float) -> list[AlertEvent]:
        return self.outbox().record(events, [hook.id for hook in self.targets()], now)

    def deliver_due(self, now: float, log: Callable[[str], None]) -> DeliveryReport:
        """Post what is due (new events and retries whose wait is over), marking each sent or failed."""
        hooks = {hook.id: hook for hook in self.targets()}
        outbox = self.outbox()
        report = DeliveryReport()
        due = outbox.claim_due(hooks, now, self.max_posts_per_round)
        if due:
            poster = WebhookPoster(self.timeout_seconds)
            started = time.monotonic()
            try:
                for i, delivery in enumerate(due):
                    if time.monotonic() - started > self.round_seconds:
                        for left in due[i:]:
                            outbox.release(left)
                        break
                    self._deliver(outbox, poster, hooks[delivery.target], delivery, now + time.monotonic() - started, log, report)
            finally:
                poster.close()
        counts = outbox.counts()
        report.pending, report.sent_total, report.events_total = counts["pending"], counts["sent"], counts["events"]
        report.unknown_target_pending = outbox.pending_for_unknown_targets(hooks)
        if report.unknown_target_pending:
            log(f"alerts: {report.unknown_target_pending} messages wait for webhooks no longer configured")
        return report

    def _deliver(self, outbox: AlertOutbox, poster: WebhookPoster, hook: Webhook, delivery: Delivery, now: float,
                 log: Callable[[str], None], report: DeliveryReport) -> None:
        outcome = poster.post(hook, delivery.event)
        if outcome.ok:
            outbox.mark_sent(delivery, now)
            report.posted += 1
            return
        wait = min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (delivery.attempt - 1))
        wait = max(wait * random.uniform(0.8, 1.0), min(outcome.retry_after or 0.0, self.retry_max_seconds))
        outbox.mark_failed(delivery, outcome.detail, now + wait)
        report.failed += 1
        log(f"alerts: posting {delivery.event.key[:120]!r} to {hook.label} failed ({outcome.detail}), "
            f"attempt {delivery.attempt}; next try in {wait:.0f} s")
