"""JUnit XML to the `test` records of a row (DESIGN §4, with §5's fixes).

Kettle's rules, kept: `<testsuite>` and `<testsuites>` roots, `time` 0.0 when
missing or empty, `<skipped>` drops a test, a passing test whose name has `#`
(a repeated run) is dropped, a file that does not parse contributes nothing.
Our fixes: `<error>` is a failure, nested suites are flattened, and bytes are
read as UTF-8 with replacement so one bad byte costs one character.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

UNSPECIFIED = "<unspecified>"
NO_FAILURE_MESSAGE = "No Failure Message Found"
_JUNIT_NAME = re.compile(r"junit.*\.xml$")


def is_junit_name(basename: str) -> bool:
    """Kettle's `.*/junit.*\\.xml$` applied to an object directly in `artifacts/`."""
    return _JUNIT_NAME.match(basename) is not None


@dataclass
class JUnitFile:
    """What one JUnit file contributes to its build's row."""

    tests: list[dict] = field(default_factory=list)
    malformed: bool = False
    error: str | None = None  # why it contributed nothing, for the log
    bad_times: int = 0  # `time` attributes that were not numbers (read as 0.0)


def _case_time(value: str | None) -> tuple[float, bool]:
    if not value:
        return 0.0, True
    try:
        t = float(value)
    except ValueError:
        return 0.0, False
    if not math.isfinite(t):
        return 0.0, False
    return t, True


def _failure_text(el: Element) -> str:
    message = el.get("message") or ""
    body = el.text or ""
    if message and body:
        return message + "\n" + body
    return message or body or NO_FAILURE_MESSAGE


def _case_record(case: Element, name: str, out: JUnitFile) -> dict | None:
    failure_text = None
    for child in case:
        tag = child.tag
        if tag == "skipped":
            return None
        if tag == "failure" or tag == "error":
            failure_text = _failure_text(child)  # the last one wins
    time, ok = _case_time(case.get("time"))
    if not ok:
        out.bad_times += 1
    if failure_text is None:
        if "#" in name:
            return None  # a passing repeat of a test
        return {"name": name, "time": time}
    return {"name": name, "time": time, "failed": True, "failure_text": failure_text}


def _walk_suite(suite: Element, names: list[str], out: JUnitFile) -> None:
    """Direct testcases of `suite`, then (in document order) nested suites, flattened."""
    for child in suite:
        tag = child.tag
        if tag == "testcase":
            name = " ".join(names + [child.get("name", UNSPECIFIED)])
            record = _case_record(child, name, out)
            if record is not None:
                out.tests.append(record)
        elif tag == "testsuite":
            _walk_suite(child, names + [child.get("name", UNSPECIFIED)], out)


def tests_from_root(root: Element) -> JUnitFile:
    out = JUnitFile()
    if root.tag == "testsuite":
        _walk_suite(root, [], out)
    elif root.tag == "testsuites":
        for suite in root:
            _walk_suite(suite, [suite.get("name", UNSPECIFIED)], out)
    else:
        out.malformed = True
        out.error = f"unexpected root element <{root.tag}>"
    return out


def parse_junit(data: bytes) -> JUnitFile:
    """Parse one file's bytes; never raises for bad input."""
    if not data or not data.strip():
        return JUnitFile(malformed=True, error="empty file")
    text = data.decode("utf-8", errors="replace")
    try:
        root = safe_fromstring(text)
    except ParseError as exc:
        return JUnitFile(malformed=True, error=f"XML parse error: {exc}")
    except DefusedXmlException as exc:
        return JUnitFile(malformed=True, error=f"refused unsafe XML: {exc!r}")
    except ValueError as exc:  # e.g. an encoding declaration expat cannot honour
        return JUnitFile(malformed=True, error=f"XML error: {exc}")
    return tests_from_root(root)
