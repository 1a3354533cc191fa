"""A small HTTP proxy that injects faults in front of a real API server.

For a share of requests it answers 500 or 429, resets the connection, or
stalls past the client's timeout; the rest are forwarded unchanged. The
choice is seeded, so a test run is repeatable. Loopback only, bounded.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from .http_server import BackgroundHTTPServer


class Faults:
    """Which fault a request gets: each named fault for its share of requests (seeded, so a run
    is repeatable), None for the rest. Shared by the fault proxy and the benchmark's GCS server."""

    def __init__(self, shares: list[tuple[str, float]], seed: int):
        self.shares = shares
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()  # requests per fault chosen ("forward": none)

    def choose(self) -> str | None:
        with self.lock:
            roll = self.rng.random()
            fault = None
            for name, share in self.shares:
                if roll < share:
                    fault = name
                    break
                roll -= share
            self.counts[fault or "forward"] += 1
        return fault


class FaultProxy(BackgroundHTTPServer):
    def __init__(self, upstream: str, *, error_500=0.1, error_429=0.1, reset=0.05, stall=0.05,
                 stall_seconds=2.0, seed=1234):
        self.upstream = urlsplit(upstream)
        self.faults = Faults([("500", error_500), ("429", error_429), ("reset", reset), ("stall", stall)], seed)
        self.counts = self.faults.counts
        self.stall_seconds = stall_seconds
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy.faults.choose()
                if fault == "500" or fault == "429":
                    payload = b'{"error": {"code": %s, "message": "injected"}}' % fault.encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        super().__init__(Handler)


class BlackHole:
    """Accepts TCP connections and never answers: a server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except (socket.timeout, OSError):
                continue

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> "BlackHole":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()
