#!/usr/bin/env bash
# What the test suite needs beyond `pip install -e '.[dev]'`, installed once, here and nowhere
# else (tests never install anything; a test whose component is missing skips and says why):
#  - Debian's Chromium, for the headless-browser tests of the Dagster UI;
#  - bqemulator (a BigQuery API server) in its own virtualenv, .venv-bqemu, since it pins a
#    DuckDB version of its own.
# Google's Pub/Sub emulator comes with the machine image (google-cloud-cli-pubsub-emulator); it
# is not in the registries this project can reach, so its tests skip where it is absent.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
            || echo "test-deps: could not install chromium; the browser tests will skip"
    else
        echo "test-deps: chromium missing and not root; the browser tests will skip"
    fi
fi

if ! .venv-bqemu/bin/python -c "import bqemulator, google.cloud.bigquery" >/dev/null 2>&1; then
    python3 -m venv .venv-bqemu \
        && .venv-bqemu/bin/pip install -q "bqemulator==1.4.0" "google-cloud-bigquery>=3.20" "numpy>=1.26" "duckdb==1.5.6" \
        || echo "test-deps: could not install bqemulator; the BigQuery tests will skip"
fi
exit 0
