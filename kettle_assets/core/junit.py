"""JUnit XML to the `test` records of a row (Kettle's rules, with our fixes).

Kettle's rules, kept: `<testsuite>` and `<testsuites>` roots, `time` 0.0 when
missing or empty, `<skipped>` drops a test, a passing test whose name has `#`
(a repeated run) is dropped, a file that does not parse contributes nothing.
Our fixes: `<error>` is a failure, nested suites are flattened, and bytes are
read as UTF-8 with replacement so one bad byte costs one character.

Two paths, one result (docs/junit-parser.md):
  - the fast path parses with libxml2 (lxml) into a C tree and selects the
    testcases that are not skipped with a compiled XPath, so Python only touches
    the tests that make records (Kubernetes e2e files are ~95% skipped);
  - the safe path is defusedxml's ElementTree (expat) and a Python walk, as before.
The fast path only answers for documents on which libxml2 and expat are known to
agree: nothing but an optional plain XML declaration before the root (so no DTD),
no non-ASCII byte where a name could be, no error or warning from libxml2, and a
<testsuite>/<testsuites> root. Everything else, malformed files included (so their
error text is expat's, as before), goes to the safe path.
`kettle_assets_tests/test_junit_equivalence.py` checks parse_junit against the safe
path and against the plain ElementTree reference in `bench/junit_reference.py`.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from lxml import etree

UNSPECIFIED = "<unspecified>"
# Memory per file stays a small multiple of its size: test names (each carries the names of its
# nested suites) adding up to more than NAME_BUDGET_FACTOR times the file's size make the file
# malformed, instead of gigabytes of names from a few megabytes of deeply nested suites.
NAME_BUDGET_FACTOR = 8
NAME_BUDGET_FLOOR = 1 << 20
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
    name_budget: int = field(default=NAME_BUDGET_FLOOR, compare=False, repr=False)  # name characters still allowed


class _TooLarge(Exception):
    """The file's records would be far larger than the file: refused as malformed."""


def _spend(out: JUnitFile, name: str) -> None:
    out.name_budget -= len(name)
    if out.name_budget < 0:
        raise _TooLarge(
            f"test names add up to over {NAME_BUDGET_FACTOR}x the file's size (deeply nested suites?); refused"
        )


def parse_junit(data: bytes) -> JUnitFile:
    """Parse one file's bytes; never raises for bad input."""
    if not data or not data.strip():
        return JUnitFile(malformed=True, error="empty file")
    data = utf8_bytes(data)
    try:
        out = _parse_fast(data)
    except _TooLarge as exc:
        return JUnitFile(malformed=True, error=str(exc))
    except Exception:  # noqa: BLE001 - anything unexpected: the safe path decides
        out = None
    if out is None:
        try:
            out = _parse_safe(data)
        except _TooLarge as exc:
            return JUnitFile(malformed=True, error=str(exc))
    return out


_BOMS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"),
)


def utf8_bytes(data: bytes) -> bytes:
    """The file as UTF-8 bytes. UTF-16 and UTF-32 files (by their byte order mark, or by the
    zero bytes of `<?xml` without one) are decoded and their declared encoding rewritten to
    UTF-8; they cannot be UTF-8, so Kettle lost them whole. Every other file is read as UTF-8
    with replacement whatever its declaration says, as Kettle stored it (a latin-1 byte becomes
    U+FFFD): rows stay equal to Kettle's."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return _declare_utf8(data[len(bom):].decode(codec, errors="replace")).encode("utf-8")
    for head, codec in ((b"\x00\x00\x00<", "utf-32-be"), (b"<\x00\x00\x00", "utf-32-le"),
                        (b"\x00<", "utf-16-be"), (b"<\x00", "utf-16-le")):
        if data.startswith(head):
            return _declare_utf8(data.decode(codec, errors="replace")).encode("utf-8")
    return data


def _declare_utf8(text: str) -> str:
    return re.sub(r"^(\s*<\?xml[^>]{0,200}?encoding\s*=\s*)([\"'])[^\"']*\2", r"\1\2UTF-8\2", text, count=1)


# --- shared rules -------------------------------------------------------------


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


def _failure_text(message: str | None, body: str | None) -> str:
    message = message or ""
    body = body or ""
    if message and body:
        return message + "\n" + body
    return message or body or NO_FAILURE_MESSAGE


def _record(name: str, time_attr: str | None, failure_text: str | None, out: JUnitFile) -> None:
    """Append the record of a testcase that is not skipped (if it makes one)."""
    _spend(out, name)
    time, ok = _case_time(time_attr)
    if not ok:
        out.bad_times += 1
    if failure_text is None:
        if "#" not in name:  # a passing repeat of a test is dropped
            out.tests.append({"name": name, "time": time})
    else:
        out.tests.append({"name": name, "time": time, "failed": True, "failure_text": failure_text})


# --- fast path: libxml2 tree, XPath selects the testcases that are not skipped ---------

# A testcase counts when every element between the root and it is a <testsuite>; under
# a <testsuites> root the root's children may be anything (Kettle walks each child as a
# suite). Nested suites only count through a chain of suites, so when no suite-level
# element has a <testsuite> child (`_*_HAS_NESTED`, a look at two levels) `_CASES` on
# each suite-level element is exact; otherwise `_*_NESTED` test each case's ancestors.
_CASES = etree.XPath("testcase[not(skipped)]")  # of one suite
_SUITE_HAS_NESTED = etree.XPath("boolean(testsuite)")
_SUITES_HAS_NESTED = etree.XPath("boolean(*/testsuite)")
_SUITE_NESTED = etree.XPath("descendant::testcase[not(skipped)][not(ancestor::*[not(self::testsuite)])]")
_SUITES_NESTED = etree.XPath(
    "*/descendant::testcase[not(skipped)][not(ancestor::*[not(self::testsuite)][parent::*/parent::*])]"
)

# The prolog the fast path takes: an optional plain XML declaration (expat and libxml2
# agree on these; the declared encoding is ignored by both, the bytes are UTF-8), blanks,
# then the root element. A comment, PI or DOCTYPE before the root goes to the safe path,
# so libxml2 never reads a DTD (entities, default attributes).
_S = rb"[ \t\r\n]"
_Q = lambda inner: rb"(?:\"" + inner + rb"\"|'" + inner + rb"')"  # noqa: E731
_PROLOG = re.compile(
    rb"(?:<\?xml" + _S + rb"+version" + _S + rb"*=" + _S + rb"*" + _Q(rb"1\.0")
    + rb"(?:" + _S + rb"+encoding" + _S + rb"*=" + _S + rb"*" + _Q(rb"[A-Za-z][A-Za-z0-9._-]*") + rb")?"
    + rb"(?:" + _S + rb"+standalone" + _S + rb"*=" + _S + rb"*" + _Q(rb"(?:yes|no)") + rb")?"
    + _S + rb"*\?>)?" + _S + rb"*<[^!?]"
)
_BOM = b"\xef\xbb\xbf"

# libxml2 reads names by XML 1.0 5th edition, expat by the 4th: they differ only on
# non-ASCII name characters. A non-ASCII byte inside a possible name sends the file to
# the safe path: a token of name bytes holding it that follows `<`, `</`, `<?`, `<!` or
# `&`, or that is followed by `=` (an attribute name). Text and attribute values may hold
# anything. Only the 4 KB chunks that are not ASCII are searched for runs (with
# translate and find, in C); left of a run, rstrip finds the token's start (a reversed
# copy and an anchored regex when the token is longer than 64 bytes).
_NAME_CLASS = rb"[A-Za-z0-9._:\-\x80-\xff]"
_MARK_NON_ASCII = b"." * 128 + b"x" * 128  # bytes.translate table: ASCII -> ".", the rest -> "x"
_THEN_EQUALS = re.compile(_NAME_CLASS + rb"*+" + _S + rb"*+=")  # from the end of a run
_AFTER_MARKUP = re.compile(_NAME_CLASS + rb"*+[<&/?!]")  # on the reversed bytes, from before a run
_NAME_BYTES = bytes(b for b in range(256) if b >= 0x80 or chr(b).isalnum() or chr(b) in "._:-")
_MARKUP = (b"<", b"&", b"/", b"?", b"!")
_CHUNK = 4096

_local = threading.local()  # lxml parsers are not shared between threads


def _parser(keep_blanks: bool) -> etree.XMLParser:
    """This thread's parser. Both are safe for untrusted bytes: bytes are UTF-8 whatever
    the declaration says, no DTD is loaded, entities are not resolved, no network."""
    parser = getattr(_local, "keep_blanks" if keep_blanks else "noblanks", None)
    if parser is None:
        options = dict(encoding="utf-8", resolve_entities=False, load_dtd=False, no_network=True,
                       huge_tree=True, collect_ids=False)  # huge_tree: failure text over 10 MB
        if keep_blanks:
            parser = etree.XMLParser(remove_comments=True, remove_pis=True, **options)
        else:
            # libxml2 drops whitespace-only text before a tag when its element has no text
            # yet (`areBlanks`): fewer nodes, a faster parse. Only a used <failure>/<error>
            # text can differ; `_parse_fast` detects that (comments and PIs stay visible).
            parser = etree.XMLParser(remove_blank_text=True, **options)
        setattr(_local, "keep_blanks" if keep_blanks else "noblanks", parser)
    return parser


def _non_ascii_in_name(data: bytes) -> bool:
    """True if a non-ASCII byte may be part of an element, attribute, PI or entity name."""
    size = len(data)
    reverse = None
    for start in range(0, size, _CHUNK):
        chunk = data[start:start + _CHUNK]
        if chunk.isascii():
            continue
        marks = chunk.translate(_MARK_NON_ASCII)
        first = marks.find(b"x")
        while first != -1:
            end = marks.find(b".", first)
            if end == -1:
                end = len(marks)
            if _THEN_EQUALS.match(data, start + end) is not None:
                return True
            at = start + first
            before = data[max(0, at - 64):at].rstrip(_NAME_BYTES)
            if before:
                if before[-1:] in _MARKUP:
                    return True
            elif at > 64:  # a long token: look further left
                if reverse is None:
                    reverse = data[::-1]
                if _AFTER_MARKUP.match(reverse, size - at) is not None:
                    return True
            first = marks.find(b"x", end)
    return False


def _parse_fast(data: bytes) -> JUnitFile | None:
    """The file's records, or None when the safe path must decide."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data = data.decode("utf-8", errors="replace").encode("utf-8")
        if _non_ascii_in_name(data):
            return None
    if _PROLOG.match(data, 3 if data.startswith(_BOM) else 0) is None:
        return None
    # Blank text is dropped only right before a `<` or a CR. Without CRs and CDATA
    # sections (whose leading blanks could go unseen), a dropped blank in a <failure> or
    # <error> shows in the tree: no text but children, or a comment/PI child (checked
    # below). `!` is rare in JUnit files and memchr finds it fast.
    keep_blanks = b"\r" in data or (b"!" in data and b"<![CDATA[" in data)
    parser = _parser(keep_blanks)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return None
    if len(parser.error_log):
        return None  # libxml2 recovered from something (a namespace error, a warning)
    tag = root.tag
    out = JUnitFile(name_budget=max(NAME_BUDGET_FLOOR, NAME_BUDGET_FACTOR * len(data)))
    if tag == "testsuite":
        if _SUITE_HAS_NESTED(root):
            groups = _by_parent(_SUITE_NESTED(root), root, out)
        else:
            groups = (("", _CASES(root)),)
    elif tag == "testsuites":
        if _SUITES_HAS_NESTED(root):
            groups = _by_parent(_SUITES_NESTED(root), root, out)
        else:
            groups = ((suite.get("name", UNSPECIFIED) + " ", _CASES(suite))
                      for suite in root.iterchildren(etree.Element))
    else:
        return None  # the safe path words the error
    tests = out.tests
    for prefix, cases in groups:
        for case in cases:
            get = case.get
            name = get("name")
            name = prefix + (UNSPECIFIED if name is None else name)
            out.name_budget -= len(name)
            if out.name_budget < 0:
                _spend(out, "")
            value = get("time")
            if value:
                try:
                    time = float(value)
                except ValueError:
                    time = 0.0
                    out.bad_times += 1
                else:
                    if not math.isfinite(time):
                        time = 0.0
                        out.bad_times += 1
            else:
                time = 0.0
            failure = None
            if len(case):
                for failure in case.iterchildren("failure", "error"):
                    pass  # the last one wins
            if failure is None:
                if "#" not in name:  # a passing repeat of a test is dropped
                    tests.append({"name": name, "time": time})
            else:
                body = failure.text
                if not keep_blanks and len(failure) and (body is None or not _only_elements(failure)):
                    return None  # blank text before a child may be gone: the safe path decides
                tests.append({"name": name, "time": time, "failed": True,
                              "failure_text": _failure_text(failure.get("message"), body)})
    return out


def _only_elements(element) -> bool:
    """No comment or PI among the children (the blank-dropping parser keeps them;
    ElementTree drops them and joins the text around them)."""
    return all(isinstance(child.tag, str) for child in element)


def _by_parent(cases: list, root, out: JUnitFile) -> Iterator[tuple[str, list]]:
    """(prefix, [case]) for cases found through nested suites."""
    prefixes = {root: ""}  # element -> names of the suites down to it, each followed by a space
    for case in cases:
        parent = case.getparent()
        prefix = prefixes.get(parent)
        if prefix is None:
            prefix = _prefix(parent, prefixes, out)
        yield prefix, (case,)


def _prefix(element, prefixes: dict, out: JUnitFile) -> str:
    """Suite names from below the root down to `element`, each followed by a space; every
    prefix kept is paid for from the name budget."""
    chain = []
    while element not in prefixes:
        chain.append(element)
        element = element.getparent()
    prefix = prefixes[element]
    for element in reversed(chain):
        prefix = prefixes[element] = prefix + element.get("name", UNSPECIFIED) + " "
        _spend(out, prefix)
    return prefix


# --- safe path: defusedxml (expat), a Python walk --------------------------------


def _parse_safe(data: bytes) -> JUnitFile:
    text = data.decode("utf-8", errors="replace")
    try:
        root = safe_fromstring(text)
    except ParseError as exc:
        return JUnitFile(malformed=True, error=f"XML parse error: {exc}")
    except DefusedXmlException as exc:
        return JUnitFile(malformed=True, error=f"refused unsafe XML: {exc!r}")
    except ValueError as exc:  # e.g. an encoding declaration expat cannot honour
        return JUnitFile(malformed=True, error=f"XML error: {exc}")
    return tests_from_root(root, name_budget=max(NAME_BUDGET_FLOOR, NAME_BUDGET_FACTOR * len(data)))


def tests_from_root(root: Element, name_budget: int = NAME_BUDGET_FLOOR) -> JUnitFile:
    """The records of an ElementTree root (the safe path's walk)."""
    out = JUnitFile(name_budget=name_budget)
    if root.tag == "testsuite":
        _walk_suites([(root, "")], out)
    elif root.tag == "testsuites":
        _walk_suites([(suite, suite.get("name", UNSPECIFIED) + " ") for suite in root], out)
    else:
        out.malformed = True
        out.error = f"unexpected root element <{root.tag}>"
    return out


def _walk_suites(suites: list[tuple[Element, str]], out: JUnitFile) -> None:
    """Direct testcases of each suite and, where they stand, of its nested suites,
    in document order. A stack instead of recursion: nesting depth is the file's choice.
    The stack holds each level's own name, and a level's full prefix is only joined when a
    testcase needs it (and paid for from the name budget), so memory stays linear in depth."""
    for suite, first in suites:
        stack = [iter(suite)]
        parts = [first]
        prefix = None
        while stack:
            for child in stack[-1]:
                tag = child.tag
                if tag == "testcase":
                    if prefix is None:
                        prefix = "".join(parts)
                        _spend(out, prefix)
                    _case(child, prefix + child.get("name", UNSPECIFIED), out)
                elif tag == "testsuite":
                    stack.append(iter(child))
                    parts.append(child.get("name", UNSPECIFIED) + " ")
                    prefix = None
                    break
            else:
                stack.pop()
                parts.pop()
                prefix = None


def _case(case: Element, name: str, out: JUnitFile) -> None:
    failure_text = None
    for child in case:
        tag = child.tag
        if tag == "skipped":
            return
        if tag == "failure" or tag == "error":
            failure_text = _failure_text(child.get("message"), child.text)  # the last one wins
    _record(name, case.get("time"), failure_text, out)
