"""A plain ElementTree JUnit parser: the baseline and the oracle for `parse_junit`.

Kettle's JUnit-to-`test` rule, written the obvious way: decode the bytes as UTF-8
(invalid bytes become U+FFFD), `xml.etree.ElementTree.fromstring`, walk the tree.
Like kettle, it refuses documents that declare entities (untrusted input), so a
billion-laughs file is malformed rather than expanded.

Deliberately not optimised: `bench/junit_parsers.py` measures candidates against
it, and `kettle_assets_tests/test_junit_equivalence.py` checks `parse_junit` gives
the same tests, malformed flag and bad-time count for every input.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from xml.parsers import expat

UNSPECIFIED = "<unspecified>"
NO_FAILURE_MESSAGE = "No Failure Message Found"


class _EntityDeclared(Exception):
    pass


def _refuse(*args):
    raise _EntityDeclared()


def declares_entities(text: str) -> bool:
    """True if expat reports an entity declaration (what defusedxml refuses)."""
    if "<!ENTITY" not in text:
        return False
    parser = expat.ParserCreate(namespace_separator="}")
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    try:
        parser.Parse(text, True)
    except _EntityDeclared:
        return True
    except expat.ExpatError:
        return False  # not well-formed before any declaration: fromstring fails too
    return False


def case_time(case) -> tuple[float, bool]:
    """(time, ok): 0.0 when missing or empty; 0.0 and not ok when not a finite number."""
    value = case.get("time")
    if not value:
        return 0.0, True
    try:
        t = float(value)
    except ValueError:
        return 0.0, False
    if not math.isfinite(t):
        return 0.0, False
    return t, True


def failure_text(element) -> str:
    message = element.get("message") or ""
    body = element.text or ""
    if message and body:
        return message + "\n" + body
    return message or body or NO_FAILURE_MESSAGE


def walk_suite(suite, names: list[str], tests: list[dict], counts: dict) -> None:
    """Direct testcases of `suite` and, recursively, of its nested testsuites, in document order."""
    for child in suite:
        if child.tag == "testsuite":
            walk_suite(child, names + [child.get("name", UNSPECIFIED)], tests, counts)
        elif child.tag == "testcase":
            name = " ".join(names + [child.get("name", UNSPECIFIED)])
            skipped = False
            failure = None
            for sub in child:
                if sub.tag == "skipped":
                    skipped = True
                elif sub.tag in ("failure", "error"):
                    failure = failure_text(sub)  # the last one wins
            if skipped:
                continue
            time, ok = case_time(child)
            if not ok:
                counts["bad_times"] += 1
            if failure is not None:
                tests.append({"name": name, "time": time, "failed": True, "failure_text": failure})
            elif "#" not in name:  # a passing repeat of a test is dropped
                tests.append({"name": name, "time": time})


def parse_file(data: bytes) -> tuple[list[dict], bool, int]:
    """(tests, malformed, bad_times) for one JUnit file's bytes."""
    if not data.strip():
        return [], True, 0
    text = data.decode("utf-8", errors="replace")
    if declares_entities(text):
        return [], True, 0
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError):
        return [], True, 0
    tests: list[dict] = []
    counts = {"bad_times": 0}
    if root.tag == "testsuite":
        walk_suite(root, [], tests, counts)
    elif root.tag == "testsuites":
        for suite in root:
            walk_suite(suite, [suite.get("name", UNSPECIFIED)], tests, counts)
    else:
        return [], True, 0
    return tests, False, counts["bad_times"]


def parse(data: bytes) -> list[dict]:
    """The `test` records of one JUnit file ([] when it does not parse)."""
    return parse_file(data)[0]
