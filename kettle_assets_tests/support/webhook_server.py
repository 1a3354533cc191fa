"""A real HTTP server on 127.0.0.1 (port chosen by the OS) that records the webhook posts it gets."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass(frozen=True)
class Post:
    status: int  # what the server answered
    path: str
    idempotency_key: str | None
    body: dict


class WebhookReceiver:
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accepted(self, path: str | None = None) -> list[Post]:
        """The posts answered 200 (to `path`, or to any)."""
        with self._lock:
            return [p for p in self.received if p.status == 200 and (path is None or p.path == path)]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
