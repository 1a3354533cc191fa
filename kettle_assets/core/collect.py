"""Fetching one build's started/finished and its JUnit files.

Everything here takes a store and returns plain records with the problems it
met; nothing raises for bad input, so one odd build never stops a run.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .junit import parse_junit
from .listing import ArtifactReader, BadPath, Candidate, ObjectInfo, check_build_path, junit_paths
from .rows import epoch_seconds

DAY_SECONDS = 86400
GIVE_UP_AFTER = 5 * DAY_SECONDS  # a build started this long ago with no finished.json is abandoned

FINISHED = "finished"
UNFINISHED = "unfinished"
GIVEN_UP = "given_up"
ABSENT = "absent"
BAD_PATH = "bad_path"


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass
class BuildMeta:
    listed_as: str
    job: str
    path: str | None
    state: str = ABSENT
    started_json: str | None = None  # the file's text, re-parsed when rows are built
    finished_json: str | None = None
    finished_hash: str | None = None  # identity of finished.json: a changed file is a changed build
    day: str | None = None  # UTC day of the finished time: the daily partition
    problems: list[str] = field(default_factory=list)


MAX_JSON_DEPTH = 100  # deeper started/finished.json is unreadable (Prow's are 3 or 4 levels deep)
TOO_DEEP = object()


def _depth(value) -> int:
    """How deeply lists and objects nest in `value`, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _read_json(store: ArtifactReader, path: str, meta: BuildMeta) -> tuple[dict | None, bytes | None]:
    raw = store.read(path)
    if raw is None:
        return None, None
    try:
        value = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError as exc:
        meta.problems.append(f"{path}: not JSON ({exc})")
        return None, raw
    except RecursionError:
        value = TOO_DEEP
    if value is TOO_DEEP or _depth(value) > MAX_JSON_DEPTH:
        # later stages re-parse and re-encode it with less stack to spare: refuse it here, once
        meta.problems.append(f"{path}: JSON nested over {MAX_JSON_DEPTH} levels; its fields are left empty")
        return None, raw
    if not isinstance(value, dict):
        meta.problems.append(f"{path}: JSON is a {type(value).__name__}, not an object")
        return None, raw
    return value, raw


def fetch_build(store: ArtifactReader, cand: Candidate, now: float) -> BuildMeta:
    """started.json and finished.json of one candidate, and what state that puts it in."""
    meta = BuildMeta(listed_as=cand.listed_as, job=cand.job, path=cand.path)
    path = cand.path
    if path is None:  # a PR directory entry: its content is the build folder
        raw = store.read(cand.listed_as)
        if raw is None:
            meta.state = ABSENT
            return meta
        path = raw.decode("utf-8", errors="replace").strip()
    try:
        path = check_build_path(path)
    except BadPath as exc:
        meta.state = BAD_PATH
        meta.problems.append(f"{cand.listed_as}: {exc}")
        return meta
    meta.path = path

    started, started_raw = _read_json(store, f"{path}/started.json", meta)
    finished, finished_raw = _read_json(store, f"{path}/finished.json", meta)
    if started_raw is not None:
        meta.started_json = started_raw.decode("utf-8", errors="replace") if started is not None else None
    if finished_raw is not None:
        meta.state = FINISHED
        meta.finished_json = finished_raw.decode("utf-8", errors="replace") if finished is not None else None
        meta.finished_hash = hashlib.md5(finished_raw).hexdigest()
        meta.day = _finished_day(store, path, finished, now, meta.problems)
        return meta
    if started_raw is None:
        meta.state = ABSENT
        return meta
    started_at = epoch_seconds((started or {}).get("timestamp"))
    if started_at is None:
        info = store.stat(f"{path}/started.json")
        started_at = info.updated if info and info.updated is not None else now
    meta.state = GIVEN_UP if now - started_at > GIVE_UP_AFTER else UNFINISHED
    return meta


def _finished_day(store: ArtifactReader, path: str, finished: dict | None, now: float, problems: list[str]) -> str:
    """The UTC day a build finished: its timestamp, else the object's update time."""
    finished_at = epoch_seconds((finished or {}).get("timestamp"))
    if finished_at is None:
        info = store.stat(f"{path}/finished.json")
        finished_at = info.updated if info and info.updated is not None else now
        problems.append(f"{path}/finished.json: no usable timestamp; filed by the object's update time")
    try:
        return utc_day(finished_at)
    except (OverflowError, OSError, ValueError):
        problems.append(f"{path}/finished.json: timestamp {finished_at!r} out of range; filed today")
        return utc_day(now)


def finished_day(store: ArtifactReader, path: str, now: float) -> str | None:
    """The day partition a streamed build belongs to, or None when finished.json cannot be read."""
    meta = BuildMeta(listed_as=path, job="", path=path)
    finished, raw = _read_json(store, f"{path}/finished.json", meta)
    if raw is None:
        return None
    return _finished_day(store, path, finished, now, meta.problems)


@dataclass
class BuildJUnit:
    path: str
    finished_hash: str | None
    tests: list[dict] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    malformed: int = 0
    too_large: int = 0
    bad_times: int = 0
    problems: list[str] = field(default_factory=list)


def fetch_junit(
    store: ArtifactReader, path: str, finished_hash: str | None, max_file_bytes: int,
    files: list[ObjectInfo] | None = None, parse_slots: AbstractContextManager = nullcontext(),
) -> BuildJUnit:
    """Every JUnit file of one build (`files` when a shared listing found them), parsed; a file
    that fails costs only itself. Parsing holds one of `parse_slots`: many downloads may wait
    on the network at once, but a parsed tree is many times its file's size, so only as many
    files are parsed at once as there are slots."""
    out = BuildJUnit(path=path, finished_hash=finished_hash)
    for obj in junit_paths(store, path) if files is None else files:
        out.files += 1
        if obj.size > max_file_bytes:
            out.too_large += 1
            out.problems.append(f"{obj.path}: {obj.size} bytes is over the {max_file_bytes}-byte limit; skipped")
            continue
        data = store.read(obj.path)
        if data is None:  # deleted between listing and reading
            out.problems.append(f"{obj.path}: vanished before it could be read")
            out.malformed += 1
            continue
        out.bytes += len(data)
        with parse_slots:
            parsed = parse_junit(data)
        del data
        out.bad_times += parsed.bad_times
        if parsed.malformed:
            out.malformed += 1
            out.problems.append(f"{obj.path}: {parsed.error}")
            continue
        out.tests.extend(parsed.tests)
    return out
