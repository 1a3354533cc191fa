"""`buckets.yaml`: Kettle's bucket list, validated on load.

A bad file must stop a run before it lists anything, with a message that
names the entry and the rule it breaks. Loading is bounded: no YAML anchors or
aliases (an alias bomb expands exponentially), no duplicate keys (YAML would keep
the last one silently), and `exclude_jobs` runs on RE2, whose matching is linear in
the job name's length, so no pattern can hang a sync.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2
import yaml

MAX_FILE_BYTES = 1024 * 1024  # a bucket list is a few kilobytes

ALLOWED_KEYS = {"contact", "prefix", "sequential", "exclude_jobs", "pr"}


class BucketConfigError(ValueError):
    """buckets.yaml breaks a rule; the message names the entry."""


@dataclass(frozen=True)
class Bucket:
    url: str  # always ends with "/"
    prefix: str
    contact: str = ""
    sequential: bool = True
    pr: bool = False
    exclude_jobs: tuple[str, ...] = ()
    _exclude_res: tuple = field(default=(), compare=False, repr=False)  # compiled RE2 patterns

    @property
    def key(self) -> str:
        """Partition key: the URL without scheme or trailing slash."""
        return self.url[len("gs://") :].rstrip("/")

    @property
    def slug(self) -> str:
        """A file-name-safe form of the key, for staging files."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.key)

    def excludes(self, job: str) -> bool:
        """Kettle's rule: a job is skipped when any regex matches (re.search)."""
        return any(rx.search(job) for rx in self._exclude_res)


@dataclass(frozen=True)
class BucketSet:
    buckets: tuple[Bucket, ...]

    def __iter__(self):
        return iter(self.buckets)

    def __len__(self):
        return len(self.buckets)

    @property
    def keys(self) -> list[str]:
        return [b.key for b in self.buckets]

    def by_key(self, key: str) -> Bucket:
        for b in self.buckets:
            if b.key == key:
                return b
        raise KeyError(f"no bucket {key!r} in buckets.yaml (known: {', '.join(self.keys)})")

    def owner_of(self, path: str) -> Bucket | None:
        """The first bucket, in file order, whose URL is a prefix of `path` (as Kettle)."""
        for b in self.buckets:
            if path.startswith(b.url) or path == b.url.rstrip("/"):
                return b
        return None


def compile_job_regex(pattern: str):
    """An `exclude_jobs` pattern on RE2 (linear time). Python's syntax mostly carries over; what
    RE2 cannot do in linear time (backreferences, lookaround) is refused with the reason."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        try:
            re.compile(pattern)
        except re.error as py_exc:
            raise ValueError(f"does not compile: {py_exc}") from None
        raise ValueError(
            f"is not supported: exclude_jobs run on RE2, which matches in linear time and has no "
            f"backreferences or lookaround ({reason})"
        ) from None


def _fail(url: str, rule: str) -> BucketConfigError:
    return BucketConfigError(f"buckets.yaml entry {url!r}: {rule}")


def parse_buckets(data: Any) -> BucketSet:
    if not isinstance(data, dict) or not data:
        raise BucketConfigError("buckets.yaml: must be a non-empty mapping of gs:// URL to settings")
    buckets: list[Bucket] = []
    seen_prefixes: dict[str, str] = {}
    for raw_url, meta in data.items():
        if not isinstance(raw_url, str) or not re.fullmatch(r"gs://[a-z0-9][a-z0-9_.-]*[a-z0-9](/\S*)?", raw_url):
            raise _fail(str(raw_url), "the key must be a gs://bucket[/prefix/] URL")
        if "/../" in raw_url + "/" or "/./" in raw_url + "/" or "//" in raw_url[5:]:
            raise _fail(raw_url, "the URL must not contain empty, '.' or '..' segments")
        if not isinstance(meta, dict):
            raise _fail(raw_url, "settings must be a mapping with at least 'prefix'")
        unknown = set(meta) - ALLOWED_KEYS
        if unknown:
            raise _fail(raw_url, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")
        if "prefix" not in meta:
            raise _fail(raw_url, "'prefix' is required")
        prefix = meta["prefix"]
        if not isinstance(prefix, str) or (prefix and not prefix.endswith(":")):
            raise _fail(raw_url, f"'prefix' must be a string ending in ':' (or \"\"), got {prefix!r}")
        if prefix in seen_prefixes:
            what = "only one bucket may use the empty prefix" if prefix == "" else "prefixes must be unique"
            raise _fail(raw_url, f"prefix {prefix!r} is already used by {seen_prefixes[prefix]!r}: {what}")
        seen_prefixes[prefix] = raw_url
        for key in ("sequential", "pr"):
            if key in meta and not isinstance(meta[key], bool):
                raise _fail(raw_url, f"{key!r} must be true or false, got {meta[key]!r}")
        contact = meta.get("contact", "")
        if contact is None or not isinstance(contact, str):
            raise _fail(raw_url, f"'contact' must be a string, got {contact!r}")
        excludes = meta.get("exclude_jobs", []) or []
        if not isinstance(excludes, list) or not all(isinstance(x, str) for x in excludes):
            raise _fail(raw_url, "'exclude_jobs' must be a list of regex strings")
        compiled = []
        for rx in excludes:
            try:
                compiled.append(compile_job_regex(rx))
            except ValueError as exc:
                raise _fail(raw_url, f"exclude_jobs regex {rx[:200]!r} {exc}") from None
        url = raw_url if raw_url.endswith("/") else raw_url + "/"
        if any(b.url == url for b in buckets):
            raise _fail(raw_url, "the same URL is listed twice")
        buckets.append(
            Bucket(
                url=url,
                prefix=prefix,
                contact=contact,
                sequential=meta.get("sequential", True),
                pr=meta.get("pr", False),
                exclude_jobs=tuple(excludes),
                _exclude_res=tuple(compiled),
            )
        )
    return BucketSet(tuple(buckets))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (no alias bombs) and without duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases are not allowed in buckets.yaml", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:200]!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One short line: the problem and where, never the document itself."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem[:200]}{where}"


def load_buckets(path: str | Path) -> BucketSet:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BucketConfigError(f"cannot read buckets file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise BucketConfigError(f"{path}: larger than {MAX_FILE_BYTES} bytes; not a bucket list")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BucketConfigError(f"{path}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise BucketConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
    try:
        return parse_buckets(data)
    except BucketConfigError as exc:
        raise BucketConfigError(f"{path}: {exc}") from None
