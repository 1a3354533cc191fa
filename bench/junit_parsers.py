"""JUnit-to-tests candidates on a Kubernetes-sized corpus: `python bench/junit_parsers.py`.

Every candidate turns a file's bytes into the `test` records of a row. Each is
first checked against the plain ElementTree reference (`bench/junit_reference.py`)
on every corpus file; one that differs is reported as incorrect, not timed as fast.

Timing: whole passes over the corpus (time.perf_counter), round robin over the
candidates so load from elsewhere on the machine is shared, best pass of --repeat.
Then: the same for the e2e and the unit files apart (reference vs the chosen parser),
and the floors (parsing alone, no records) that bound what any extraction can reach.
`--threads` adds the reference and the chosen parser run from a pool of 2 threads.

Options: --repeat N (default 7), --e2e N / --unit N (corpus size), --seed S, --threads.
"""

from __future__ import annotations

import argparse
import gc
import io
import math
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import xml.etree.ElementTree as ET
from xml.parsers import expat

HERE = Path(__file__).resolve().parent

import junit_corpus  # noqa: E402
import junit_reference  # noqa: E402
from lxml import etree  # noqa: E402

from kettle_assets.core import junit as kettle_junit  # noqa: E402

UNSPECIFIED = "<unspecified>"


def _utf8(data: bytes) -> bytes:
    """The bytes as UTF-8 with invalid sequences replaced (what every candidate must see)."""
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")


def _record(tests: list, name: str, time_attr, failure) -> None:
    time = junit_reference.case_time({"time": time_attr})[0]
    if failure is not None:
        tests.append({"name": name, "time": time, "failed": True, "failure_text": failure})
    elif "#" not in name:
        tests.append({"name": name, "time": time})


def _text(message, body) -> str:
    message, body = message or "", body or ""
    return message + "\n" + body if message and body else message or body or junit_reference.NO_FAILURE_MESSAGE


# --- candidates: each returns the list of test records ------------------------------------


def reference(data: bytes) -> list:
    return junit_reference.parse(data)


def kettle_previous(data: bytes) -> list:
    """defusedxml ElementTree + walk: kettle's parse_junit before this change, now its safe path."""
    return kettle_junit._parse_safe(data).tests


def kettle_parse_junit(data: bytes) -> list:
    """The chosen parser: lxml + XPath behind the guards, safe path otherwise."""
    return kettle_junit.parse_junit(data).tests


def junitparser_candidate(data: bytes) -> list:
    """junitparser's object model (JUnitXml.fromstring is lxml fromstring + fromroot)."""
    from junitparser import Error, Failure, JUnitXml, Skipped

    root = etree.fromstring(_utf8(data))  # nosec - the benchmark's own corpus
    root_is_suite = root.tag == "testsuite"
    xml = JUnitXml.fromroot(root)  # wraps a <testsuite> root in a <testsuites>
    tests: list = []
    for suite in xml:
        prefix = "" if root_is_suite else (suite.name if suite.name is not None else UNSPECIFIED) + " "
        for case in suite:
            results = case.result
            if any(isinstance(r, Skipped) for r in results):
                continue
            failure = None
            for r in results:
                if isinstance(r, (Failure, Error)):
                    failure = _text(r.message, r.text)
            name = case.name if case.name is not None else UNSPECIFIED
            _record(tests, prefix + name, case._elem.get("time"), failure)
    return tests


_ITERPARSE_OPTS = dict(encoding="utf-8", huge_tree=True, resolve_entities=False, no_network=True, load_dtd=False,
                       remove_comments=True, remove_pis=True)


def lxml_iterparse(data: bytes) -> list:
    """lxml.etree.iterparse: an event per testcase end; clear it once read."""
    tests: list = []
    root = None
    prefixes: dict = {}
    for _event, case in etree.iterparse(io.BytesIO(_utf8(data)), events=("end",), tag="testcase", **_ITERPARSE_OPTS):
        if root is None:
            root = case.getroottree().getroot()
            if root.tag not in ("testsuite", "testsuites"):
                return []
            prefixes = {root: ""}
        parent = case.getparent()
        prefix = prefixes.get(parent)
        if prefix is None:
            chain, el = [], parent
            while el not in prefixes and el is not None:
                chain.append(el)
                el = el.getparent()
            ok = all(e.tag == "testsuite" for e in (chain[:-1] if root.tag == "testsuites" else chain))
            if root.tag == "testsuites" and not chain:
                ok = False  # a testcase directly under <testsuites> is walked as a suite, not a test
            prefix = prefixes[el] if ok else None
            if ok:
                for e in reversed(chain):
                    prefix = prefixes[e] = prefix + e.get("name", UNSPECIFIED) + " "
        if prefix is not None:
            skipped, failure = False, None
            for child in case:
                if child.tag == "skipped":
                    skipped = True
                elif child.tag in ("failure", "error"):
                    failure = _text(child.get("message"), child.text)
            if not skipped:
                _record(tests, prefix + case.get("name", UNSPECIFIED), case.get("time"), failure)
        case.clear(keep_tail=True)
    return tests


class _Refused(Exception):
    pass


def _refuse(*args):
    raise _Refused()


def pyexpat_handlers(data: bytes) -> list:
    """pyexpat with Python start/end handlers and a stack; character data only inside failures."""
    tests: list = []
    # stack entries: [kind, prefix or record]; kinds: S suite, A children-are-suites, C case, F failure, O other
    stack: list = []
    parser = expat.ParserCreate(namespace_separator="}")
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.buffer_text = True
    chunks: list = []

    def data_handler(text):
        chunks.append(text)

    def start(tag, attrs):
        if not stack:
            stack.append(["S", ""] if tag == "testsuite" else ["A", ""] if tag == "testsuites" else ["O", None])
            return
        top = stack[-1]
        kind = top[0]
        if kind == "S":
            if tag == "testcase":
                stack.append(["C", top[1] + attrs.get("name", UNSPECIFIED), attrs.get("time"), False, None])
            elif tag == "testsuite":
                stack.append(["S", top[1] + attrs.get("name", UNSPECIFIED) + " "])
            else:
                stack.append(["O", None])
        elif kind == "A":
            stack.append(["S", attrs.get("name", UNSPECIFIED) + " "])
        elif kind == "C":
            if tag == "skipped":
                top[3] = True
                stack.append(["O", None])
            elif tag == "failure" or tag == "error":
                chunks.clear()
                parser.CharacterDataHandler = data_handler
                stack.append(["F", attrs.get("message")])
            else:
                stack.append(["O", None])
        else:
            if kind == "F" and parser.CharacterDataHandler is not None:
                parser.CharacterDataHandler = None  # text ends at the first child element
                top.append("".join(chunks))
            stack.append(["O", None])

    def end(tag):
        entry = stack.pop()
        kind = entry[0]
        if kind == "F":
            parser.CharacterDataHandler = None
            body = entry[2] if len(entry) > 2 else "".join(chunks)
            stack[-1][4] = _text(entry[1], body)
        elif kind == "C" and not entry[3]:
            _record(tests, entry[1], entry[2], entry[4])

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data.decode("utf-8", errors="replace"), True)
    except (expat.ExpatError, _Refused):
        return []
    return tests


_CASES = etree.XPath("descendant::testcase[not(skipped)][not(ancestor::*[not(self::testsuite)])]")
_SUITES_CASES = etree.XPath(
    "*/descendant::testcase[not(skipped)][not(ancestor::*[not(self::testsuite)][parent::*/parent::*])]")


def _lxml_parser():
    return etree.XMLParser(encoding="utf-8", resolve_entities=False, load_dtd=False, no_network=True, huge_tree=True,
                           remove_comments=True, remove_pis=True, collect_ids=False)


_PARSER = _lxml_parser()


def lxml_xpath(data: bytes) -> list:
    """lxml fromstring + XPath selecting the testcases that are not skipped, in C (no guards)."""
    root = etree.fromstring(_utf8(data), _PARSER)
    if root.tag == "testsuite":
        cases = _CASES(root)
    elif root.tag == "testsuites":
        cases = _SUITES_CASES(root)
    else:
        return []
    tests: list = []
    prefixes = {root: ""}
    for case in cases:
        parent = case.getparent()
        prefix = prefixes.get(parent)
        if prefix is None:
            prefix = kettle_junit._prefix(parent, prefixes)
        failure = None
        for failure in case.iterchildren("failure", "error"):
            pass
        _record(tests, prefix + case.get("name", UNSPECIFIED), case.get("time"),
                None if failure is None else _text(failure.get("message"), failure.text))
    return tests


def lxml_walk(data: bytes) -> list:
    """lxml fromstring + the same Python walk as the reference (every testcase gets a proxy)."""
    root = etree.fromstring(_utf8(data), _PARSER)
    tests: list = []
    counts = {"bad_times": 0}
    if root.tag == "testsuite":
        junit_reference.walk_suite(root, [], tests, counts)
    elif root.tag == "testsuites":
        for suite in root:
            junit_reference.walk_suite(suite, [suite.get("name", UNSPECIFIED)], tests, counts)
    return tests


def etree_c_walk(data: bytes) -> list:
    """ElementTree's C parser, but the walk only builds names for tests that are kept."""
    root = ET.fromstring(data.decode("utf-8", errors="replace"))
    tests: list = []

    def walk(suite, prefix):
        for child in suite:
            tag = child.tag
            if tag == "testcase":
                failure = None
                for sub in child:
                    if sub.tag == "skipped":
                        break
                    if sub.tag in ("failure", "error"):
                        failure = _text(sub.get("message"), sub.text)
                else:
                    _record(tests, prefix + child.get("name", UNSPECIFIED), child.get("time"), failure)
            elif tag == "testsuite":
                walk(child, prefix + child.get("name", UNSPECIFIED) + " ")

    if root.tag == "testsuite":
        walk(root, "")
    elif root.tag == "testsuites":
        for suite in root:
            walk(suite, suite.get("name", UNSPECIFIED) + " ")
    return tests


class _NoTarget:
    """A parser target with no callbacks: libxml2 checks the document, builds nothing."""

    def close(self):
        return None


def _expat_raw(data: bytes) -> None:
    expat.ParserCreate("utf-8", "}").Parse(data, True)


_KEEP = etree.XMLParser(encoding="utf-8", resolve_entities=False, load_dtd=False, no_network=True, huge_tree=True)
_NOBLANK = etree.XMLParser(encoding="utf-8", resolve_entities=False, load_dtd=False, no_network=True, huge_tree=True,
                           remove_blank_text=True)
_SAX_ONLY = etree.XMLParser(encoding="utf-8", resolve_entities=False, load_dtd=False, no_network=True, huge_tree=True,
                            target=_NoTarget())
FLOORS = [
    ("expat, no handlers (well-formedness only)", _expat_raw),
    ("libxml2 via lxml, no tree (well-formedness only)", lambda data: etree.fromstring(data, _SAX_ONLY)),
    ("libxml2 via lxml, tree", lambda data: etree.fromstring(data, _KEEP)),
    ("libxml2 via lxml, tree without blank text nodes", lambda data: etree.fromstring(data, _NOBLANK)),
    ("ElementTree fromstring (expat + Python tree)", lambda data: ET.fromstring(data.decode("utf-8", "replace"))),
]


CANDIDATES = [
    ("reference: ElementTree fromstring + walk", reference),
    ("kettle previous: defusedxml ElementTree + walk", kettle_previous),
    ("junitparser 4.x (lxml underneath)", junitparser_candidate),
    ("lxml.etree.iterparse (testcase end events)", lxml_iterparse),
    ("pyexpat, Python handlers", pyexpat_handlers),
    ("ElementTree C parser, leaner walk", etree_c_walk),
    ("lxml fromstring + Python walk", lxml_walk),
    ("lxml fromstring + XPath testcase[not(skipped)]", lxml_xpath),
    ("chosen: kettle parse_junit (lxml, XPath, guards)", kettle_parse_junit),
]


def one_pass(fn, files: list[bytes]) -> float:
    gc.collect()
    start = time.perf_counter()
    for data in files:
        fn(data)
    return time.perf_counter() - start


def best_of_threads(fn, files: list[bytes], repeat: int, threads: int) -> float:
    times = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, files))  # warm the workers (and their thread-local parsers)
        for _ in range(repeat):
            gc.collect()
            start = time.perf_counter()
            list(pool.map(fn, files))
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--e2e", type=int, default=6)
    ap.add_argument("--unit", type=int, default=12)
    ap.add_argument("--seed", type=int, default=20251122)
    ap.add_argument("--threads", action="store_true")
    args = ap.parse_args()

    started = time.perf_counter()
    corpus = junit_corpus.corpus(seed=args.seed, e2e_files=args.e2e, unit_files=args.unit)
    files = [data for _, data in corpus]
    total = sum(len(d) for d in files)
    expected = [junit_reference.parse_file(d) for d in files]
    assert not any(malformed for _, malformed, _ in expected)
    cases = sum(d.count(b"<testcase") for d in files)
    kept = sum(len(t) for t, _, _ in expected)
    print(f"corpus: {len(files)} files ({args.e2e} e2e, {args.unit} unit), {total / 1e6:.2f} MB, "
          f"{cases} testcases, {kept} test records")
    print(f"python {platform.python_version()}, lxml {'.'.join(map(str, etree.LXML_VERSION[:3]))}, "
          f"libxml2 {'.'.join(map(str, etree.LIBXML_VERSION))}, {expat.EXPAT_VERSION}; best of {args.repeat}\n")

    rows = []
    for label, fn in CANDIDATES:
        problem = None
        for (name, data), (tests, _, _) in zip(corpus, expected):
            try:
                got = fn(data)
            except Exception as exc:  # noqa: BLE001
                problem = f"raised {type(exc).__name__} on {name}"
                break
            if got != tests:
                problem = f"differs from the reference on {name}"
                break
        rows.append([label, fn, problem, math.nan])

    # Round robin: each repeat times every correct candidate once (starting one further
    # along each time), so load from elsewhere on the machine is spread over all of them;
    # the best pass of each counts.
    timed = [row for row in rows if row[2] is None]
    for round_ in range(args.repeat):
        for i in range(len(timed)):
            row = timed[(round_ + i) % len(timed)]
            seconds = one_pass(row[1], files)
            row[3] = seconds if math.isnan(row[3]) else min(row[3], seconds)

    ref_seconds = rows[0][3]
    print(f"| {'candidate':<48} | correct | {'MB/s':>6} | {'files/s':>7} | {'ms/pass':>7} | {'vs ref':>6} |")
    print(f"|{'-' * 50}|---------|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for label, _fn, problem, seconds in rows:
        if problem:
            print(f"| {label:<48} | NO      | {'-':>6} | {'-':>7} | {'-':>7} | {'-':>6} |  {problem}")
            continue
        print(f"| {label:<48} | yes     | {total / seconds / 1e6:6.1f} | {len(files) / seconds:7.1f} | "
              f"{seconds * 1e3:7.1f} | {ref_seconds / seconds:5.2f}x |")

    chosen = rows[-1][1]
    print("\nby shape (reference vs chosen, same method):")
    for shape in ("e2e", "unit"):
        subset = [data for name, data in corpus if f"_{shape}_" in name]
        ref_s = chosen_s = math.inf
        for round_ in range(args.repeat):
            for fn in ((reference, chosen) if round_ % 2 else (chosen, reference)):
                seconds = one_pass(fn, subset)
                if fn is reference:
                    ref_s = min(ref_s, seconds)
                else:
                    chosen_s = min(chosen_s, seconds)
        size = sum(map(len, subset))
        print(f"  {shape:4s} {len(subset):2d} files {size / 1e6:5.2f} MB: reference {size / ref_s / 1e6:6.1f} MB/s, "
              f"chosen {size / chosen_s / 1e6:6.1f} MB/s, {ref_s / chosen_s:.2f}x")

    print("\nfloors (parsing only, no records; same method):")
    for label, fn in FLOORS:
        seconds = min(one_pass(fn, files) for _ in range(args.repeat))
        print(f"  {label:<56} {total / seconds / 1e6:6.1f} MB/s {seconds * 1e3:6.1f} ms  ({ref_seconds / seconds:.2f}x)")

    if args.threads:
        print("\nthread pool of 2 (files spread over the pool), best of", args.repeat)
        for label, fn, _problem, _seconds in (rows[0], rows[-1]):
            seconds = best_of_threads(fn, files, args.repeat, 2)
            print(f"  {label:<48} {total / seconds / 1e6:6.1f} MB/s  {ref_seconds / seconds:5.2f}x the 1-thread reference")
    print(f"\n({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
