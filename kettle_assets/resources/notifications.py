"""Where notifications of new finished.json objects come from.

- `PubSubNotificationSource`: a Pub/Sub subscription fed by GCS OBJECT_FINALIZE notifications.
- `LocalFolderNotificationSource`: watches the local artifact folder, with Pub/Sub's
  semantics (delivered once, leased until acknowledged, redelivered if not), so the
  embedded default streams too.
Both pull a bounded batch (count and time) and never block a sensor tick for long.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..core.stream import Notification


class NotificationSource(dg.ConfigurableResource):
    """Base: pull a bounded batch; acknowledge what is done; nack what must come back."""

    def pull(self) -> list[Notification]:
        raise NotImplementedError

    def ack(self, ack_ids: list[str]) -> None:
        raise NotImplementedError

    def nack(self, ack_ids: list[str]) -> None:
        raise NotImplementedError


class PubSubNotificationSource(NotificationSource):
    """GCS notifications (JSON_API_V1) from a Pub/Sub subscription; honours PUBSUB_EMULATOR_HOST."""

    subscription: str = Field(description="projects/<project>/subscriptions/<name>")
    max_messages: int = Field(default=100, description="Messages per pull (at most 100 per request).")
    pull_timeout_seconds: float = Field(default=5.0, description="How long one pull may wait.")

    def _client(self):
        from google.cloud import pubsub_v1

        return pubsub_v1.SubscriberClient()

    def pull(self) -> list[Notification]:
        from google.api_core import exceptions
        from google.api_core.retry import Retry

        if not self.subscription:
            return []  # streaming not configured: the reconcile schedule alone keeps the tables complete
        client = self._client()
        try:
            response = client.pull(
                request={"subscription": self.subscription, "max_messages": self.max_messages},
                timeout=self.pull_timeout_seconds,
                # the client's default retry spins for about 60 s on an empty subscription
                retry=Retry(timeout=self.pull_timeout_seconds),
            )
        except (exceptions.DeadlineExceeded, exceptions.RetryError):
            return []
        finally:
            client.close()
        out = []
        for received in response.received_messages:
            attrs = received.message.attributes
            out.append(
                Notification(
                    ack_id=received.ack_id,
                    bucket=attrs.get("bucketId", ""),
                    name=attrs.get("objectId", ""),
                    event_type=attrs.get("eventType", ""),
                )
            )
        return out

    def ack(self, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        client = self._client()
        try:
            for i in range(0, len(ack_ids), 1000):
                client.acknowledge(request={"subscription": self.subscription, "ack_ids": ack_ids[i : i + 1000]})
        finally:
            client.close()

    def nack(self, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        client = self._client()
        try:
            client.modify_ack_deadline(
                request={"subscription": self.subscription, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
            )
        finally:
            client.close()


class LocalFolderNotificationSource(NotificationSource):
    """New or rewritten finished.json files under the local artifact folder.

    Like a new subscription, it announces only files that appear after it first ran.
    State (what was acknowledged, what is leased) lives in a small JSON file.
    """

    root: str = Field(description="The local artifact folder (KETTLE_STORAGE_ROOT).")
    state_file: str = Field(description="Where delivery state is kept.")
    lease_seconds: float = Field(default=120.0, description="How long a pulled, unacknowledged file is held back.")
    max_messages: int = Field(default=500)

    def _scan(self) -> dict[str, int]:
        found = {}
        root = Path(self.root)
        for dirpath, _dirs, files in os.walk(root):
            if "finished.json" in files:
                p = Path(dirpath) / "finished.json"
                try:
                    found[p.relative_to(root).as_posix()] = p.stat().st_mtime_ns
                except OSError:
                    continue
        return found

    def _load(self) -> dict | None:
        try:
            return json.loads(Path(self.state_file).read_text())
        except (OSError, ValueError):
            return None

    def _save(self, state: dict) -> None:
        path = Path(self.state_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def pull(self) -> list[Notification]:
        files = self._scan()
        state = self._load()
        if state is None:  # first run: everything already there counts as delivered
            self._save({"delivered": files, "leases": {}})
            return []
        now = time.time()
        leases = {k: v for k, v in state.get("leases", {}).items() if v > now}
        out = []
        for rel, mtime in sorted(files.items()):
            ack_id = f"{mtime}:{rel}"
            if state["delivered"].get(rel) == mtime or ack_id in leases:
                continue
            bucket, _, name = rel.partition("/")
            out.append(Notification(ack_id=ack_id, bucket=bucket, name=name))
            leases[ack_id] = now + self.lease_seconds
            if len(out) >= self.max_messages:
                break
        state["leases"] = leases
        self._save(state)
        return out

    def ack(self, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        state = self._load() or {"delivered": {}, "leases": {}}
        for ack_id in ack_ids:
            mtime, _, rel = ack_id.partition(":")
            state["delivered"][rel] = int(mtime)
            state["leases"].pop(ack_id, None)
        self._save(state)

    def nack(self, ack_ids: list[str]) -> None:
        if not ack_ids:
            return
        state = self._load() or {"delivered": {}, "leases": {}}
        for ack_id in ack_ids:
            state["leases"].pop(ack_id, None)
        self._save(state)
