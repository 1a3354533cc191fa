"""Failure text as triage sees it: normalisation, the n-gram histogram, common spans.

Normalisation removes what changes from run to run of the same failure (times,
pointers, IPs, UUIDs, node names, Go map order) so that equal failures get
equal text; the histogram gives a cheap lower bound of the edit distance.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from typing import NamedTuple

import numpy as np
import orjson
import pcre2

NGRAM_BUCKETS = 64
LONG_TEXT = 10_000
TRUNCATED = "\n...[truncated]...\n"

_DATE = (
    r"[A-Z][a-z]{2}, \d+ \w+ 2\d{3} [\d.-: ]*([-+]\d+)?"
    r"|\w{3}\s+\d{1,2} \d+:\d+:\d+(\.\d+)?"
    r"|(\d{4}-\d\d-\d\d.|.\d{4} )\d\d:\d\d:\d\d(.\d+)?"
)
_NOISE_COMMON = (
    r"0x[0-9a-fA-F]+"  # hex constants, pointers
    r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(:\d+)?"  # IPv4 with an optional port
    r"|[0-9a-fA-F]{8}-\S{4}-\S{4}-\S{4}-\S{12}(-\d+)?"  # UUIDs and a trailing number
    r"|[0-9a-f]{12,32}"  # hex digests
)
# The Python rules rename only the node suffix; the Go rules (no look-behind there) rename the
# whole node name, and split map items on single spaces instead of runs of whitespace.
_NOISE = {
    "python": _NOISE_COMMON + r"|(?<=minion-group-|default-pool-)[-0-9a-z]{4,}",
    "go": _NOISE_COMMON + r"|(minion-group-|default-pool-)[-0-9a-z]{4,}",
}
RULES = tuple(_NOISE)
_MAP = r"map\[([^][]*)\]"
_REPEATED_LINES = r"(?m)^(.*\n)\1+"
_SPAN_TOKEN = re.compile(r"\w+|\W+")
_NAME_TAGS = re.compile(r"\[.*?\]|{.*?\}")
_SPACES = re.compile(r"\s+")


class _Patterns(NamedTuple):
    date: object
    noise: dict[str, object]
    map: object
    repeated_lines: object


def _compiled(compile_pattern) -> _Patterns:
    return _Patterns(compile_pattern(_DATE), {rules: compile_pattern(p) for rules, p in _NOISE.items()},
                     compile_pattern(_MAP), compile_pattern(_REPEATED_LINES))


def _pcre2(pattern: str):
    compiled = pcre2.compile("(*LF)" + pattern)  # `.` and `^` know only \n as a line end, as in `re`
    compiled.jit_compile()
    return compiled


# Python's `re` defines the rules; PCRE2's JIT runs them 3-6 times faster and matches exactly the
# same on text of ASCII characters other than \x1c-\x1f (which `re` counts as white space and
# PCRE2 does not): the text all the generated and most real failures are. Not on long text: the
# `pcre2` package copies the text for each match it hands a callback (2 MB with 60,000 matches
# took a minute), and its JIT's stack runs out on the repeated-lines pattern's backreference, so
# that pattern (used only on long text anyway) stays on `re`.
_RE = _compiled(re.compile)
_FAST = _compiled(_pcre2)._replace(repeated_lines=_RE.repeated_lines)
_NOT_FAST = re.compile(r"[^\x00-\x1b\x20-\x7f]")
FAST_TEXT = 4 * LONG_TEXT  # characters; longer text goes through `re`


def normalize(text: str, rules: str = "python") -> str:
    """The text with its run-to-run noise replaced: TIME for dates, UNIQn for each distinct noise."""
    if len(text) <= FAST_TEXT and not _NOT_FAST.search(text):
        try:
            return _normalize(text, rules, _FAST)
        except pcre2.LibraryError:  # a limit of PCRE2's (its JIT's stack, say): `re` gives the same text
            pass
    return _normalize(text, rules, _RE)


def _normalize(text: str, rules: str, patterns: _Patterns) -> str:
    text = patterns.date.sub("TIME", text)
    if "map[" in text:
        text = patterns.map.sub(_sorted_map_python if rules == "python" else _sorted_map_go, text)
    names: dict[str, str] = {}

    def rename(match) -> str:
        found = match.group(0)
        name = names.get(found)
        if name is None:
            name = names[found] = f"UNIQ{len(names) + 1}"
        return name

    text = patterns.noise[rules].sub(rename, text)
    if len(text) > LONG_TEXT:
        text = patterns.repeated_lines.sub(r"\1", text)
    if len(text) > LONG_TEXT:
        text = text[: LONG_TEXT // 2] + TRUNCATED + text[-LONG_TEXT // 2 :]
    return text


def _sorted_map_python(match) -> str:
    return "map[" + " ".join(sorted(match.group(1).split())) + "]"


def _sorted_map_go(match) -> str:
    return "map[" + " ".join(sorted(match.group(1).split(" "))) + "]"


def normalize_name(name: str) -> str:
    """A test name without its [tags] and {params}, as owners files list them."""
    return _SPACES.sub(" ", _NAME_TAGS.sub("", name)).strip()


def _bucket_tables() -> tuple[np.ndarray, int]:
    """CRC-32 is affine in its input for a fixed length: crc(w) = crc(0000) ^ T0[w0] ^ T1[w1] ^
    T2[w2] ^ T3[w3], where Tk[x] = crc(x at position k, zeros elsewhere) ^ crc(0000). Only the
    low 6 bits are kept, so the tables are bytes."""
    zero = zlib.crc32(bytes(4))
    tables = np.zeros((4, 256), dtype=np.uint8)
    for position in range(4):
        for byte in range(256):
            window = bytearray(4)
            window[position] = byte
            tables[position, byte] = (zlib.crc32(bytes(window)) ^ zero) & (NGRAM_BUCKETS - 1)
    return tables, zero & (NGRAM_BUCKETS - 1)


_BUCKETS, _BUCKET_OF_ZEROS = _bucket_tables()


def ngram_counts(text: str) -> np.ndarray:
    """Histogram of crc32(each 4-character window) & 63: 64 counts (int32).

    ASCII text (nearly all of it) is hashed with numpy, every window at once through the byte
    tables; other text falls back to zlib per window (a window is 4 characters, UTF-8 encoded).
    """
    windows = len(text) - 3
    if windows <= 0:
        return np.zeros(NGRAM_BUCKETS, dtype=np.int32)
    if text.isascii():
        data = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        buckets = _BUCKETS[0][data[:windows]]
        for position in (1, 2, 3):
            buckets ^= _BUCKETS[position][data[position : position + windows]]
        buckets ^= _BUCKET_OF_ZEROS
        return np.bincount(buckets, minlength=NGRAM_BUCKETS).astype(np.int32)
    counts = np.zeros(NGRAM_BUCKETS, dtype=np.int32)
    for start in range(windows):
        counts[zlib.crc32(text[start : start + 4].encode("utf-8")) & (NGRAM_BUCKETS - 1)] += 1
    return counts


def cluster_id(counts: np.ndarray) -> str:
    """Triage's cluster id: sha1 of the key's counts written as `[c0, c1, ...]`, 20 hex digits."""
    return hashlib.sha1(("[" + ", ".join(str(int(c)) for c in counts) + "]").encode()).hexdigest()[:20]


def span_tokens(text: str) -> list[str]:
    return _SPAN_TOKEN.findall(text)


def common_tokens(texts: list[str]) -> set[str]:
    """The tokens every one of `texts` has."""
    common = set(span_tokens(texts[0]))
    for text in texts[1:]:
        common.intersection_update(span_tokens(text))
    return common


def tokens_json(tokens: set[str]) -> bytes:
    """A set of tokens as a sorted JSON list: the same set, the same bytes."""
    ordered = sorted(tokens)
    try:
        return orjson.dumps(ordered)
    except orjson.JSONEncodeError:  # a lone surrogate, which only the standard library writes
        return json.dumps(ordered).encode()


def common_tokens_json(groups: list[list[str]]) -> list[bytes]:
    """`tokens_json` of each group's `common_tokens` (what a worker process returns: a group's few
    distinct tokens cost less to send back than its texts' many)."""
    return [tokens_json(common_tokens(texts)) for texts in groups]


def common_spans(first: str, common: set[str]) -> list[int]:
    """Alternating lengths of the runs of `first` whose tokens every failure has, and of those it
    does not (starting with a common run, possibly of length 0)."""
    spans: list[int] = []
    in_common = True
    run = 0
    for token in _SPAN_TOKEN.findall(first):
        if (token in common) != in_common:
            spans.append(run)
            run = 0
            in_common = not in_common
        run += len(token)
    if run:
        spans.append(run)
    return spans

