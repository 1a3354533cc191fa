"""The alerts' outbox: a durable ledger of every event found and of its delivery to each webhook.

One SQLite file (`$KETTLE_HOME/alerts/outbox.sqlite`), shared safely by the daemon's sensor and
`kettle sync`. The order of writes is what makes delivery crash-safe:

1. `record`: an event is inserted once by its key (a known key is ignored), with one pending
   delivery per webhook configured at that moment (a webhook added later gets new events only).
2. `claim_due`: a due delivery is leased for `lease_seconds` in one transaction, so two
   processes never post it at the same time, and one that died mid-post frees it when the
   lease runs out.
3. The post, then `mark_sent` (never posted again) or `mark_failed` (due again after a backoff).

A crash after the post and before `mark_sent` is the one way a message is posted twice: once,
with the same `Idempotency-Key`, after the lease runs out.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ..core.alerts import AlertEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, event TEXT NOT NULL, recorded_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT NOT NULL REFERENCES events(key), target TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',            -- pending | sent
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL, lease_until REAL NOT NULL DEFAULT 0,
    sent_at REAL, last_error TEXT,
    PRIMARY KEY (key, target)
);
CREATE INDEX IF NOT EXISTS due ON deliveries (state, next_attempt_at);
"""


@dataclass(frozen=True)
class Delivery:
    event: AlertEvent
    target: str  # the webhook's id
    attempt: int  # 1 for the first post


class AlertOutbox:
    def __init__(self, path: str | Path, lease_seconds: float = 120.0):
        self.path = Path(path)
        self.lease_seconds = lease_seconds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a recorded event survives a power cut
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def record(self, events: Iterable[AlertEvent], targets: list[str], now: float) -> list[AlertEvent]:
        """Insert the events not seen before, each with a pending delivery per target; returns them."""
        new = []
        with self._transaction() as conn:
            for event in events:
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO events (key, kind, event, recorded_at) VALUES (?, ?, ?, ?)",
                    (event.key, event.kind, event.to_json(), now),
                ).rowcount
                if inserted:
                    new.append(event)
                    conn.executemany(
                        "INSERT INTO deliveries (key, target, next_attempt_at) VALUES (?, ?, ?)",
                        [(event.key, target, now) for target in targets],
                    )
        return new

    def claim_due(self, targets: Iterable[str], now: float, limit: int) -> list[Delivery]:
        """Lease up to `limit` due deliveries to these targets, in the order the events were recorded."""
        targets = list(targets)
        if not targets or limit <= 0:
            return []
        marks = ",".join("?" * len(targets))
        with self._transaction() as conn:
            rows = conn.execute(
                f"""SELECT d.key, d.target, d.attempts, e.event FROM deliveries d JOIN events e USING (key)
                    WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND d.lease_until <= ?
                      AND d.target IN ({marks})
                    ORDER BY e.rowid, d.target LIMIT ?""",
                (now, now, *targets, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, lease_until = ? WHERE key = ? AND target = ?",
                [(now + self.lease_seconds, key, target) for key, target, _, _ in rows],
            )
        return [Delivery(AlertEvent.from_json(event), target, attempts + 1) for _, target, attempts, event in rows]

    def mark_sent(self, delivery: Delivery, now: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, lease_until = 0, last_error = NULL "
                "WHERE key = ? AND target = ?",
                (now, delivery.event.key, delivery.target),
            )

    def mark_failed(self, delivery: Delivery, error: str, retry_at: float) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, lease_until = 0, last_error = ? "
                "WHERE key = ? AND target = ? AND state = 'pending'",
                (retry_at, error[:500], delivery.event.key, delivery.target),
            )

    def release(self, delivery: Delivery) -> None:
        """Give back a claimed delivery not attempted (the round ran out of time): due again at once."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE deliveries SET attempts = attempts - 1, lease_until = 0 WHERE key = ? AND target = ? "
                "AND state = 'pending'", (delivery.event.key, delivery.target),
            )

    def counts(self) -> dict[str, int]:
        """Events recorded, and deliveries by state (`pending` includes those waiting for a retry)."""
        with self._connect() as conn:
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            states = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
        return {"events": events, "sent": states.get("sent", 0), "pending": states.get("pending", 0)}

    def pending_for_unknown_targets(self, targets: Iterable[str]) -> int:
        """Pending deliveries to webhooks no longer configured (kept, in case they come back)."""
        targets = list(targets)
        marks = ",".join("?" * len(targets)) or "NULL"
        with self._connect() as conn:
            return conn.execute(
                f"SELECT count(*) FROM deliveries WHERE state = 'pending' AND target NOT IN ({marks})", targets
            ).fetchone()[0]
