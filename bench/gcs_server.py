"""A small, threaded, paginated GCS JSON API server over a local artifact tree, for the benchmark.

Top-level folders of the tree are buckets (as for `KETTLE_STORAGE_ROOT`). It answers what a
reader of Prow's buckets asks: object listings (`prefix`, `delimiter`, `matchGlob`,
`maxResults`, `pageToken`, pages of at most 1000 entries), object metadata and media downloads
(both the `/storage/v1` and `/download/storage/v1` forms). Every request waits `latency`
seconds; a seeded share of requests fails with 503 or 429, has its connection reset, or
stalls for `stall_seconds` before answering. Requests are counted by kind.

Run alone: `python bench/gcs_server.py TREE --latency 0.03` prints its URL.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import socket
import struct
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from kettle_assets_tests.support.fault_proxy import Faults
from kettle_assets_tests.support.http_server import BackgroundHTTPServer

PAGE_LIMIT = 1000


def glob_regex(glob: str) -> re.Pattern:
    """GCS matchGlob: `**` crosses '/', `*` and `?` do not, `[...]` and `{a,b}` as usual."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.index("]", i + 1)
            body = glob[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
            continue
        elif c == "{":
            end = glob.index("}", i)
            out.append("(?:" + "|".join(re.escape(a) for a in glob[i + 1 : end].split(",")) + ")")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):  # injected resets and clients gone after a stall
        pass


class GCSServer(BackgroundHTTPServer):
    def __init__(self, tree: Path, latency: float = 0.0, fault_rate: float = 0.0, stall_seconds: float = 20.0,
                 seed: int = 7):
        self.tree = Path(tree).resolve()
        self.latency = latency
        self.fault_rate = fault_rate
        self.stall_seconds = stall_seconds
        # 40% 503, 30% 429, 20% reset, 10% stall
        self.fault_dice = Faults(
            [(name, share * fault_rate) for name, share in (("503", 0.4), ("429", 0.3), ("reset", 0.2), ("stall", 0.1))],
            seed,
        )
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.faults: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.names: dict[str, list[str]] = {}
        for bucket in sorted(p for p in self.tree.iterdir() if p.is_dir() and not p.name.startswith(".")):
            names = []
            for dirpath, _dirs, files in os.walk(bucket):
                rel = Path(dirpath).relative_to(bucket).as_posix()
                names.extend(n if rel == "." else f"{rel}/{n}" for n in files)
            self.names[bucket.name] = sorted(names)
        self.objects = sum(len(v) for v in self.names.values())
        super().__init__(self._handler(), QuietServer)

    def listing(self, bucket: str, q: dict) -> dict:
        names = self.names[bucket]
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter")
        glob = glob_regex(q["matchGlob"]) if q.get("matchGlob") else None
        limit = min(PAGE_LIMIT, int(q.get("maxResults") or PAGE_LIMIT))
        start = max(prefix, q.get("pageToken", ""))
        i = bisect.bisect_left(names, start)
        items, prefixes = [], []
        while i < len(names) and len(items) + len(prefixes) < limit:
            name = names[i]
            if not name.startswith(prefix):
                break
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                sub = name[: cut + len(delimiter)]
                prefixes.append(sub)
                i = bisect.bisect_left(names, sub[:-1] + chr(ord(sub[-1]) + 1))
                continue
            i += 1
            if glob is None or glob.match(name):
                st = (self.tree / bucket / name).stat()
                items.append({"name": name, "size": str(st.st_size), "updated": rfc3339(st.st_mtime)})
        page: dict = {"kind": "storage#objects"}
        if items:
            page["items"] = items
        if prefixes:
            page["prefixes"] = prefixes
        if i < len(names) and names[i].startswith(prefix):
            page["nextPageToken"] = names[i]
        return page

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                path = url.path.removeprefix("/download")
                m = re.fullmatch(r"/storage/v1/b/([^/]+)/o(?:/(.+))?", path)
                kind = "other" if not m else (
                    "list_glob" if q.get("matchGlob") else "list") if m.group(2) is None else (
                    "media" if q.get("alt") == "media" else "stat")
                with server.lock:
                    server.requests[kind] += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._serve(m, kind, q)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _serve(self, m, kind: str, q: dict) -> None:
                if server.latency:
                    time.sleep(server.latency)
                fault = server.fault_dice.choose()
                if fault:
                    with server.lock:
                        server.faults[fault] += 1
                if fault in ("503", "429"):
                    body = json.dumps({"error": {"code": int(fault), "message": "injected"}}).encode()
                    return self._send(int(fault), body)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "stall":
                    time.sleep(server.stall_seconds)
                if m is None or unquote(m.group(1)) not in server.names:
                    return self._send(404, b'{"error": {"code": 404, "message": "no such bucket"}}')
                bucket = unquote(m.group(1))
                if kind in ("list", "list_glob"):
                    return self._send(200, json.dumps(server.listing(bucket, q)).encode())
                name = unquote(m.group(2))
                target = server.tree / bucket / name
                if ".." in name.split("/") or not target.is_file():
                    return self._send(404, b'{"error": {"code": 404, "message": "no such object"}}')
                if kind == "media":
                    return self._send(200, target.read_bytes(), "application/octet-stream")
                st = target.stat()
                meta = {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(st.st_size),
                        "updated": rfc3339(st.st_mtime), "generation": "1"}
                return self._send(200, json.dumps(meta).encode())

        return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", type=Path)
    ap.add_argument("--latency", type=float, default=0.03)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--stall-seconds", type=float, default=20.0)
    args = ap.parse_args()
    with GCSServer(args.tree, args.latency, args.fault_rate, args.stall_seconds) as srv:
        print(srv.url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
