"""`buckets.yaml`: Kettle's bucket list, validated on load.

A bad file must stop a run before it lists anything, with a message that
names the entry and the rule it breaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    _exclude_res: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)

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
                compiled.append(re.compile(rx))
            except re.error as exc:
                raise _fail(raw_url, f"exclude_jobs regex {rx!r} does not compile: {exc}") from None
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


def load_buckets(path: str | Path) -> BucketSet:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BucketConfigError(f"cannot read buckets file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BucketConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_buckets(data)
    except BucketConfigError as exc:
        raise BucketConfigError(f"{path}: {exc}") from None
