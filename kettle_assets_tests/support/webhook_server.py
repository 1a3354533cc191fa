"""A real HTTP server on 127.0.0.1 (port chosen by the OS) that records the webhook posts it gets."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Callable

from .http_server import BackgroundHTTPServer


@dataclass(frozen=True)
class Post:
    status: int  # what the server answered
    path: str
    idempotency_key: str | None
    body: dict


class WebhookReceiver(BackgroundHTTPServer):
    """`statuses[path]`: the answers to give that path's next posts (then 200); `on_post` runs
    before a post is answered (e.g. to kill the poster mid-post)."""

    def __init__(self):
        self.received: list[Post] = []  # every post, whatever the answer
        self.statuses: dict[str, list[int]] = {}
        self.on_post: Callable[[Post], None] | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    queued = receiver.statuses.get(self.path, [])
                    status = queued.pop(0) if queued else 200
                    post = Post(status, self.path, self.headers.get("Idempotency-Key"), body)
                    receiver.received.append(post)
                if receiver.on_post is not None:
                    receiver.on_post(post)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args):
                pass

        super().__init__(Handler)

    def accepted(self, path: str | None = None) -> list[Post]:
        """The posts answered 200 (to `path`, or to any)."""
        with self._lock:
            return [p for p in self.received if p.status == 200 and (path is None or p.path == path)]

    def url_of(self, path: str) -> str:
        return self.url + path
