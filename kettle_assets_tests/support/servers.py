"""Real Google Cloud API servers on 127.0.0.1 for tests.

Each is started by the test that needs it and stopped after; none is mocked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BQEMU_VENV = REPO / ".venv-bqemu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _patch_gcs_emulator() -> None:
    """Two fixes from EMULATORS.md: no quadratic index rewrite in memory mode, a real listen backlog."""
    from http import server as http_server

    from gcp_storage_emulator import server as gcs_server
    from gcp_storage_emulator import storage as gcs_storage

    if getattr(gcs_storage.Storage, "_kettle_patched", False):
        return
    original_write = gcs_storage.Storage._write_config_to_file

    def write_config(self):
        if not self._use_memory_fs:
            original_write(self)

    class Backlogged(http_server.HTTPServer):
        request_queue_size = 256

    def run(self):
        self._httpd = Backlogged((self._host, self._port), gcs_server.partial(gcs_server.RequestHandler, self._storage))
        self.is_running.set()
        self._httpd.serve_forever()

    gcs_storage.Storage._write_config_to_file = write_config
    gcs_server.APIThread.run = run
    gcs_storage.Storage._kettle_patched = True


@contextlib.contextmanager
def gcs_emulator():
    """An in-memory GCS API server; yields its base URL."""
    _patch_gcs_emulator()
    from gcp_storage_emulator.server import create_server

    srv = create_server("127.0.0.1", 0, in_memory=True)
    srv.start()
    try:
        port = srv._api._httpd.server_address[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.stop()


def upload_tree(endpoint: str, tree: Path, threads: int = 16) -> int:
    """Upload a local artifact tree (top-level folders are buckets) to a GCS emulator."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    try:
        client = storage.Client(project="test-project", credentials=AnonymousCredentials())
        files = [p for p in tree.rglob("*") if p.is_file() and not p.relative_to(tree).parts[0].startswith(".")]
        for bucket in {p.relative_to(tree).parts[0] for p in files}:
            client.create_bucket(bucket)

        def put(path: Path) -> None:
            bucket, *rest = path.relative_to(tree).parts
            client.bucket(bucket).blob("/".join(rest)).upload_from_filename(str(path))

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, files))
        return len(files)
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


def bqemulator_python() -> Path | None:
    """bqemulator's interpreter: it needs its own DuckDB version, so `.ci/test-deps.sh` puts it
    in its own virtualenv. None when that step has not been run."""
    python = BQEMU_VENV / "bin" / "python"
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", "import bqemulator, google.cloud.bigquery"], capture_output=True)
    return python if probe.returncode == 0 else None


def require_bqemulator() -> Path:
    """bqemulator's interpreter, or skip the calling test saying how to get it."""
    import pytest

    python = bqemulator_python()
    if python is None:
        pytest.skip("bqemulator is not installed in .venv-bqemu: run .ci/test-deps.sh (the README's test command does)")
    return python


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


@contextlib.contextmanager
def bq_emulator(project: str = "test-project"):
    """bqemulator (DuckDB-backed BigQuery API) in a subprocess; yields its REST endpoint."""
    python = require_bqemulator()
    rest, grpc = free_port(), free_port()
    launcher = Path(__file__).with_name("bqemu_launcher.py")
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [str(python), str(launcher), str(rest), str(grpc), project], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        endpoint = f"http://127.0.0.1:{rest}"
        _wait_http(f"{endpoint}/bigquery/v2/projects/{project}/datasets", proc)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


PUBSUB_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def find_pubsub_emulator() -> Path | None:
    if PUBSUB_EMULATOR.exists():
        return PUBSUB_EMULATOR
    try:
        out = subprocess.run(["dpkg", "-L", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True).stdout
    except OSError:
        return None
    hits = [line for line in out.splitlines() if line.endswith("bin/cloud-pubsub-emulator")]
    return Path(hits[0]) if hits else None


@contextlib.contextmanager
def pubsub_emulator():
    """Google's Pub/Sub emulator on a free port; yields host:port (for PUBSUB_EMULATOR_HOST)."""
    binary = find_pubsub_emulator()
    if binary is None:
        raise RuntimeError("the Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator) is not installed")
    port = free_port()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"pubsub-{port}"
    log = open(os.devnull, "wb")
    proc = subprocess.Popen(
        [str(binary), "--host=127.0.0.1", f"--port={port}", f"--data-dir={data_dir}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pubsub emulator exited with {proc.returncode}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("pubsub emulator did not start")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


def needs_pubsub(test):
    """Marks a test that starts Google's Pub/Sub emulator: tier `servers`, skipped where it is absent."""
    import pytest

    skip = pytest.mark.skipif(find_pubsub_emulator() is None, reason="Pub/Sub emulator not installed")
    return pytest.mark.servers(skip(test))
