"""Start bqemulator offline: no DuckDB extension downloads.

Run with the bqemulator virtualenv's python:
  python bqemu_launcher.py REST_PORT GRPC_PORT PROJECT
"""

import os
import sys

os.environ["BQEMU_ENABLE_FORMAT_EXTENSIONS"] = "false"

from bqemulator.storage import engine  # noqa: E402

engine.DuckDBEngine._load_spatial = lambda self, *a, **k: None

from bqemulator import cli  # noqa: E402

rest_port, grpc_port, project = sys.argv[1:4]
sys.argv = [
    "bqemulator", "start", "--rest-host", "127.0.0.1", "--rest-port", rest_port,
    "--grpc-host", "127.0.0.1", "--grpc-port", grpc_port, "--project", project,
]
sys.exit(cli.main())
