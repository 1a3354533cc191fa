"""One build to one row of the contract, as Kettle's make_json wrote it.

The row is a plain dict with absent values left out (except `test`,
`tests_run`, `tests_failed`); `row_json` is the exact line Kettle emitted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

INT64_MAX = 2**63 - 1
# BigQuery's TIMESTAMP range, 0001-01-01 .. 9999-12-31 UTC: a time outside it could not be loaded.
EPOCH_MIN = -62135596800
EPOCH_MAX = 253402300799


@dataclass
class RowProblems:
    """Odd values met while building a row: kept out of the row, counted, logged."""

    notes: list[str] = field(default_factory=list)

    def add(self, note: str) -> None:
        self.notes.append(note)


def job_and_number(path: str, prefix: str) -> tuple[str, int | None]:
    """`job` is the prefix plus the build folder's parent; `number` the folder if an integer."""
    assert not path.endswith("/"), path
    job = prefix + os.path.basename(os.path.dirname(path))
    try:
        number = int(os.path.basename(path))
    except ValueError:
        return job, None
    if abs(number) > INT64_MAX:
        return job, None
    return job, number


def epoch_seconds(value: Any) -> int | None:
    """Kettle's `int(timestamp)`, tolerant of strings and floats; None when unusable,
    including a time no warehouse TIMESTAMP can hold (year 1..9999)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError, OverflowError):
        try:
            f = float(value)
            if f != f or f in (float("inf"), float("-inf")):
                return None
            seconds = int(f)
        except (TypeError, ValueError, OverflowError):
            return None
    return seconds if EPOCH_MIN <= seconds <= EPOCH_MAX else None


def _as_string(value: Any, name: str, problems: RowProblems) -> str | None:
    if value is None or isinstance(value, str):
        return value
    problems.add(f"{name} is not a string: {value!r}")
    return json.dumps(value)


def _metadata_pairs(started: dict | None, finished: dict | None, problems: RowProblems):
    """Kettle's get_metadata: finished's metadata, else started's, cleaned and sorted."""
    metadata = None
    repos = None
    if finished and "metadata" in finished:
        metadata = finished["metadata"]
    elif started:
        metadata = started.get("metadata")
    if metadata and not isinstance(metadata, dict):
        problems.add(f"metadata is not an object: {type(metadata).__name__}")
        return None, None
    if not metadata:
        return None, None
    metadata = dict(metadata)
    if "repo" in metadata and not metadata["repo"]:
        metadata.pop("repo")
    build_version = (finished or {}).get("version", "N/A")
    if metadata.get("job-version") == build_version:
        metadata.pop("job-version")
    if metadata.get("version") == build_version:
        metadata.pop("version")
    for key, value in metadata.items():
        if not isinstance(value, str):
            metadata[key] = json.dumps(value)
            if key == "repos":
                repos = metadata[key]
    return [{"key": k, "value": v} for k, v in sorted(metadata.items())], repos


def build_row(
    path: str,
    job_prefix: str,
    started: dict | None,
    finished: dict | None,
    junit_tests: Iterable[list[dict]] = (),
    problems: RowProblems | None = None,
) -> dict:
    """The contract row for one build; `junit_tests` holds each JUnit file's tests."""
    problems = problems if problems is not None else RowProblems()
    tests = [t for file_tests in junit_tests for t in file_tests]
    row: dict[str, Any] = {
        "path": path,
        "test": tests,
        "tests_run": len(tests),
        "tests_failed": sum(1 for t in tests if t.get("failed")),
    }
    row["job"], number = job_and_number(path, job_prefix)
    if number is not None:
        row["number"] = number

    started_at = finished_at = None
    if started:
        started_at = epoch_seconds(started.get("timestamp"))
        if started_at is None:
            problems.add(f"started.json timestamp unusable: {started.get('timestamp')!r}")
        else:
            row["started"] = started_at
        executor = _as_string(started.get("node"), "started.node", problems)
        if executor is not None:
            row["executor"] = executor
        commit = _as_string(started.get("repo-commit", started.get("repo-version")), "started.repo-commit", problems)
        if commit is not None:
            row["repo_commit"] = commit
        if started.get("repos"):
            row["repos"] = json.dumps(started["repos"])
    if finished:
        finished_at = epoch_seconds(finished.get("timestamp"))
        if finished_at is None:
            problems.add(f"finished.json timestamp unusable: {finished.get('timestamp')!r}")
        else:
            row["finished"] = finished_at
        version = _as_string(finished.get("version"), "finished.version", problems)
        if version is not None:
            row["version"] = version
        if "result" in finished:
            result = _as_string(finished.get("result"), "finished.result", problems)
            if result is not None:
                row["result"] = result
            row["passed"] = result == "SUCCESS"
        elif isinstance(finished.get("passed"), bool):
            row["passed"] = finished["passed"]
            row["result"] = "SUCCESS" if finished["passed"] else "FAILURE"

    metadata, meta_repos = _metadata_pairs(started, finished, problems)
    if metadata is not None:
        row["metadata"] = metadata
    if "repos" not in row and meta_repos:
        row["repos"] = meta_repos
    if started_at and finished_at:
        row["elapsed"] = finished_at - started_at
    return row


def row_json(row: dict) -> str:
    """One line of Kettle's make_json output (json.dump with sorted keys)."""
    return json.dumps(row, sort_keys=True)


BIGQUERY_ROW_LIMIT = 100 * 1024 * 1024  # BigQuery's maximum row size in a JSON load
_TEXT_CAPS = (1 << 20, 1 << 16, 1 << 12, 1 << 9, 0)


def trim_row(row: dict, max_bytes: int = BIGQUERY_ROW_LIMIT) -> str | None:
    """Shrink a row that BigQuery would refuse, in place; returns what was done, or None.

    Failure texts are cut first (to ever shorter caps), then passing tests are
    dropped, last first; failing tests go only if that is still not enough.
    `tests_run` and `tests_failed` keep the counts of the build as it ran.
    """
    size = len(row_json(row))
    if size <= max_bytes:
        return None
    original = size
    done: list[str] = []
    tests = row["test"]
    for cap in _TEXT_CAPS:
        cut = 0
        for t in tests:
            text = t.get("failure_text")
            if text is not None and len(text) > cap:
                t["failure_text"] = text[:cap]
                cut += 1
        if cut:
            done.append(f"{cut} failure texts cut to {cap} characters")
        size = len(row_json(row))
        if size <= max_bytes:
            break
    if size > max_bytes:
        for keep_failed in (True, False):
            dropped = 0
            for i in range(len(tests) - 1, -1, -1):
                if size <= max_bytes:
                    break
                if keep_failed and tests[i].get("failed"):
                    continue
                size -= len(json.dumps(tests[i], sort_keys=True)) + 2
                del tests[i]
                dropped += 1
            if dropped:
                done.append(f"{dropped} {'passing' if keep_failed else 'failing'} tests dropped")
            size = len(row_json(row))
            if size <= max_bytes:
                break
    return f"row of {original} bytes trimmed to {size}: " + "; ".join(done)
