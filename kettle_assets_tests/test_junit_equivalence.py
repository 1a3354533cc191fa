"""parse_junit (libxml2 fast path + expat safe path) against two oracles, input by input.

- `bench/junit_reference.py`: a plain ElementTree parse-and-walk of a row. The
  tests, the malformed flag and the bad-time count must be equal.
- the safe path alone (`_parse_safe`, kettle's parse_junit before the fast path was
  added): the whole JUnitFile must be equal, error text included.

Inputs: a generated Kubernetes-sized corpus, hand-written odd files, seeded random
documents, every truncation of a small real-looking file at many offsets, and a few
hundred seeded byte flips and insertions.
"""

from __future__ import annotations

import importlib.util
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kettle_assets.core import junit
from kettle_assets.core.junit import JUnitFile, parse_junit

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load("junit_reference")
corpus = _load("junit_corpus")


def previous(data: bytes) -> JUnitFile:
    """Kettle's parse_junit before the fast path: empty check, then defusedxml + walk."""
    if not data or not data.strip():
        return JUnitFile(malformed=True, error="empty file")
    return junit._parse_safe(data)


def check(data: bytes, with_reference: bool = True) -> JUnitFile:
    got = parse_junit(data)
    assert isinstance(got, JUnitFile)
    data = junit.utf8_bytes(data)  # UTF-16/32 are transcoded first (test_junit.py pins that step)
    assert got == previous(data), data[:300]
    if with_reference:
        tests, malformed, bad_times = reference.parse_file(data)
        assert (got.tests, got.malformed, got.bad_times) == (tests, malformed, bad_times), data[:300]
    if got.malformed:
        assert got.tests == [] and isinstance(got.error, str) and got.error
    return got


def answered_fast(data: bytes) -> bool:
    try:
        return junit._parse_fast(data) is not None
    except Exception:  # noqa: BLE001
        return False


# --- the generated corpus --------------------------------------------------------


def test_generated_corpus():
    files = corpus.corpus(seed=7, e2e_files=2, unit_files=3)
    for _name, data in files:
        got = check(data)
        assert not got.malformed and got.tests
        assert answered_fast(data)  # the realistic files must take the fast path


# --- hand-written odd files ----------------------------------------------------------

CASE = b'<testcase name="t" time="1">%s</testcase>'
ODD = {
    "cdata": b"<testsuite>" + CASE % b'<failure message="m"><![CDATA[a <b> & c]]> tail</failure>' + b"</testsuite>",
    "cdata_with_leading_blanks": b"<testsuite>" + CASE % b"<failure>  <![CDATA[x]]></failure>" + b"</testsuite>",
    "cdata_only_blanks": b"<testsuite>" + CASE % b"<error><![CDATA[   ]]></error>" + b"</testsuite>",
    "entities": b'<testsuite><testcase name="a&amp;b &lt;c&gt; &quot;d&quot; &apos;e&apos; &#10;f&#x9;g">'
                b'<failure message="&#10;&#13;&#x41;">x &amp;&#10;y &lt;z&gt;</failure></testcase></testsuite>',
    "undefined_entity": b'<testsuite><testcase name="&nbsp;"/></testsuite>',
    "comment_in_testcase": b"<testsuite>" + CASE % b"<!-- <skipped/> --><failure>a<!-- c -->b</failure>" + b"</testsuite>",
    "comment_before_failure_text": b"<testsuite>" + CASE % b"<failure>  <!--c-->  y</failure>" + b"</testsuite>",
    "pi_in_testcase": b"<testsuite>" + CASE % b"<?pi data?><error>a<?x y?>b</error>" + b"</testsuite>",
    "pi_before_root": b'<?xml version="1.0"?><?xml-stylesheet href="a"?><testsuite>' + CASE % b"" + b"</testsuite>",
    "comment_before_root": b"<!-- hi --><testsuite>" + CASE % b"" + b"</testsuite>",
    "comment_after_root": b"<testsuite>" + CASE % b"" + b"</testsuite><!-- bye -->\n",
    "blank_failure_before_child": b"<testsuite>" + CASE % b"<failure message='m'>  \n  <detail/>tail</failure>" + b"</testsuite>",
    "blank_failure_only": b"<testsuite>" + CASE % b"<failure>  \n  </failure>" + b"</testsuite>",
    "failure_child_and_tail": b"<testsuite>" + CASE % b"<failure message='m'>body<b>in</b>tail</failure>" + b"</testsuite>",
    "failure_only_child": b"<testsuite>" + CASE % b"<failure><b/></failure>" + b"</testsuite>",
    "xml_space_preserve": b'<testsuite xml:space="preserve">' + CASE % b"<failure> <b/></failure>" + b"</testsuite>",
    "error_and_failure_mixed": b"<testsuite>" + CASE % b'<error message="e1"/><failure>f</failure><error>e2</error><system-out>o</system-out>' + b"</testsuite>",
    "skipped_after_failure": b"<testsuite>" + CASE % b"<failure/><skipped/>" + b'<testcase name="kept"/></testsuite>',
    "namespaces_default": b'<testsuite xmlns="urn:x">' + CASE % b"" + b"</testsuite>",
    "namespaces_inner": b'<testsuite><testcase xmlns="urn:x" name="ns"/><p:testcase xmlns:p="urn:p" name="pns"/>'
                        b'<testcase name="plain" p:name="other" xmlns:p="urn:p"><p:skipped/><p:failure/></testcase></testsuite>',
    "unbound_prefix": b"<testsuite><p:testcase name='x'/></testsuite>",
    "bom": b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?>\n<testsuite>" + CASE % b"" + b"</testsuite>",
    "bom_without_decl": b"\xef\xbb\xbf<testsuite>" + CASE % b"" + b"</testsuite>",
    "utf16_bom_bytes": b"\xff\xfe<\x00t\x00/\x00>\x00",
    "crlf": b'<?xml version="1.0"?>\r\n<testsuite>\r\n  <testcase name="a\r\nb" time="1">\r\n    <failure>line1\r\nline2\r</failure>\r\n  </testcase>\r\n</testsuite>\r\n',
    "attribute_whitespace": b'<testsuite><testcase\tname="a\tb\nc\r\nd"\n\ttime = " 2.5 "\r\n/></testsuite>',
    "empty_names": b'<testsuites><testsuite name=""><testcase name="" time=""/></testsuite><testsuite><testcase/></testsuite></testsuites>',
    "odd_times": b"<testsuite>" + b"".join(b'<testcase name="t%d" time="%s"/>' % (i, t) for i, t in enumerate(
        [b"1e3", b"-1", b"nan", b"inf", b"-inf", b"1_0", b"0x10", b"\xd9\xa1", b" 7 ", b"1,5", b"", b"."])) + b"</testsuite>",
    "hash_names": b"<testsuites><testsuite name='s#1'><testcase name='a'/><testcase name='b'><failure/></testcase></testsuite></testsuites>",
    "nested_4_deep": b'<testsuites name="all"><testsuite name="a"><testcase name="a1"/><testsuite name="b"><testsuite name="c">'
                     b'<testsuite name="d"><testcase name="d1" time="4"><failure message="deep"/></testcase></testsuite>'
                     b'<testcase name="c1"/></testsuite></testsuite><testcase name="a2"/></testsuite></testsuites>',
    "nested_under_root_suite": b'<testsuite name="r"><testsuite name="x"><testsuite><testcase name="y"/></testsuite></testsuite></testsuite>',
    "cases_outside_suites": b'<testsuites><group name="g"><testcase name="in-group"/><testsuite name="s"><testcase name="deep"/></testsuite>'
                            b'<other><testcase name="hidden"/></other></group><testcase name="walked"><testcase name="inner"/></testcase>'
                            b'<properties><property name="p" value="v"/></properties></testsuites>',
    "testcase_in_testcase": b'<testsuite><testcase name="outer"><testcase name="inner"/></testcase></testsuite>',
    "non_utf8_bytes": b'<testsuite><testcase name="caf\xe9 \xff\xfe" time="1"><failure message="bad \xc3 byte">x\x80y\xed\xa0\x80z</failure></testcase></testsuite>',
    "non_utf8_in_attribute_name": b'<testsuite><testcase name="x" b\xff="1"/></testsuite>',
    "non_ascii_names_5th_edition": "<testsuite><testcase name='x' a\u2070='1'/><x\u00b7y/></testsuite>".encode(),
    "non_ascii_element": "<testsuite><caf\u00e9/><testcase name='\u65e5\u672c'/></testsuite>".encode(),
    "non_ascii_text_everywhere": "<testsuite name='\u2022'><testcase name='\u65e5\u672c \U0001F600' time='1'><failure message='\u201cq\u201d'>\u00e9 \u2028 \x85</failure><system-out>\u2714</system-out></testcase></testsuite>".encode(),
    "decl_latin1": b'<?xml version="1.0" encoding="ISO-8859-1"?><testsuite><testcase name="caf\xe9"/></testsuite>',
    "decl_utf16": b'<?xml version="1.0" encoding="UTF-16"?><testsuite><testcase name="caf\xc3\xa9"/></testsuite>',
    "decl_ebcdic": b"<?xml version='1.0' encoding='EBCDIC-US' standalone='yes'?><testsuite><testcase name='x'/></testsuite>",
    "decl_bogus": b'<?xml version="1.0" encoding="bogus"?><testsuite><testcase name="x"/></testsuite>',
    "decl_version_1_1": b'<?xml version="1.1"?><testsuite><testcase name="x"/></testsuite>',
    "decl_not_first": b' <?xml version="1.0"?><testsuite/>',
    "doctype_plain": b"<!DOCTYPE testsuite><testsuite><testcase name='x'/></testsuite>",
    "doctype_attlist_default": b'<!DOCTYPE testsuite [<!ATTLIST testcase name CDATA "from-dtd" time CDATA "3">]>'
                               b"<testsuite><testcase/><testcase name='own'/></testsuite>",
    "doctype_entity": b'<!DOCTYPE testsuite [<!ENTITY e "expanded">]><testsuite><testcase name="&e;"/></testsuite>',
    "doctype_external": b'<!DOCTYPE testsuite SYSTEM "http://example.invalid/junit.dtd"><testsuite><testcase name="x"/></testsuite>',
    "doctype_external_entity_ref": b'<!DOCTYPE testsuite SYSTEM "junit.dtd"><testsuite><testcase name="&x;"/></testsuite>',
    "unexpected_root": b"<html><body><testcase name='a'/></body></html>",
    "root_testcase": b"<testcase name='a'><skipped/></testcase>",
    "two_roots": b"<testsuite/><testsuite/>",
    "junk_after_root": b"<testsuite/>junk",
    "nul_byte": b"<testsuite><testcase name='a\x00'/></testsuite>",
    "control_char": b"<testsuite><testcase name='a\x01'/></testsuite>",
    "invalid_char_ref": b"<testsuite><testcase name='&#0;'/></testsuite>",
    "nonchar_fffe": "<testsuite><testcase name='a\ufffe'/></testsuite>".encode("utf-8", "surrogatepass"),
    "duplicate_attribute": b"<testsuite><testcase name='a' name='b'/></testsuite>",
    "duplicate_by_namespace": b"<testsuite><x xmlns:p='u' xmlns:q='u' p:a='1' q:a='2'/></testsuite>",
    "cdata_end_in_text": b"<testsuite><testcase name='a'>]]></testcase></testsuite>",
    "cdata_end_in_attribute": b"<testsuite><testcase name='a]]>b'/></testsuite>",
    "lt_in_attribute": b"<testsuite><testcase name='a<b'/></testsuite>",
    "gt_in_attribute": b"<testsuite><testcase name='a>b' time='1'><failure message='x>y'/></testcase></testsuite>",
    "empty": b"",
    "whitespace": b" \n\t\r\n ",
    "vertical_tab": b"\x0b",
    "only_decl": b'<?xml version="1.0"?>',
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_inputs(name):
    check(ODD[name])


def test_odd_inputs_that_must_stay_malformed():
    for name in ("undefined_entity", "unbound_prefix", "doctype_entity", "unexpected_root", "root_testcase",
                 "two_roots", "junk_after_root", "nul_byte", "control_char", "invalid_char_ref", "nonchar_fffe",
                 "duplicate_attribute", "duplicate_by_namespace", "cdata_end_in_text", "lt_in_attribute",
                 "empty", "whitespace", "only_decl", "non_utf8_in_attribute_name", "non_ascii_names_5th_edition"):
        assert parse_junit(ODD[name]).malformed, name


def test_doctype_default_attributes_are_applied_like_expat():
    # libxml2 would not apply them (attribute_defaults is off): this file must not take the fast path.
    assert not answered_fast(ODD["doctype_attlist_default"])
    assert parse_junit(ODD["doctype_attlist_default"]).tests == [
        {"name": "from-dtd", "time": 3.0}, {"name": "own", "time": 3.0}]


def test_blank_failure_text_is_kept():
    assert parse_junit(ODD["blank_failure_before_child"]).tests[0]["failure_text"] == "m\n  \n  "
    assert parse_junit(ODD["cdata_with_leading_blanks"]).tests[0]["failure_text"] == "  x"
    assert parse_junit(ODD["comment_before_failure_text"]).tests[0]["failure_text"] == "    y"


def test_billion_laughs_refused_quickly():
    lol = b"".join(b'<!ENTITY lol%d "%s">' % (i, b"".join(b"&lol%d;" % (i - 1) for _ in range(10)) if i else b"lol")
                   for i in range(10))
    data = b'<?xml version="1.0"?><!DOCTYPE lolz [' + lol + b']><testsuite><testcase name="&lol9;"/></testsuite>'
    start = time.perf_counter()
    got = check(data)
    assert got.malformed and "refused" in got.error
    assert time.perf_counter() - start < 1.0


def test_huge_failure_text():
    body = (b"x" * 1023 + b"\n") * (11 * 1024)  # 11 MB in one text node
    data = b'<testsuite><testcase name="big" time="1"><failure message="m">' + body + b"</failure></testcase></testsuite>"
    got = check(data)
    assert got.tests[0]["failure_text"] == "m\n" + body.decode()
    assert answered_fast(data)


def test_deep_nesting_does_not_raise():
    # Deeper than libxml2 allows (2048 with huge_tree) and than Python's recursion limit.
    depth = 3000
    data = (b"<testsuite>" * depth) + b'<testcase name="leaf"/>' + (b"</testsuite>" * depth)
    got = check(data, with_reference=False)  # the reference walk recurses
    assert got.tests == [{"name": " ".join(["<unspecified>"] * (depth - 1) + ["leaf"]), "time": 0.0}]
    shallow = (b"<testsuites>" + b'<testsuite name="s">' * 300) + b'<testcase name="leaf"/>' + (b"</testsuite>" * 300 + b"</testsuites>")
    check(shallow)


def test_threads_share_nothing():
    files = [data for _, data in corpus.corpus(seed=3, e2e_files=1, unit_files=3)] + list(ODD.values())
    expected = [parse_junit(data) for data in files]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(parse_junit, files)) == expected


# --- seeded random documents ------------------------------------------------------

NAMES = ["a", "x y", "p #1", "", "caf\u00e9", "\u65e5\u672c", "a&b", "tab\there", "nl\nhere", 'q"q', "<lt>", "\U0001F600"]
TIMES = [None, "", "1", "1.5", "abc", "nan", "-1", " 2 ", "1e3"]
TEXTS = ["", "body", " ", "\n  ", "multi\nline\nbody", "caf\u00e9 \u2022", "x<y>&z"]


def _attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;").replace("\n", "&#10;")


def _text(rng: random.Random, value: str) -> str:
    if rng.random() < 0.15 and "]]>" not in value:
        return "<![CDATA[" + value + "]]>"
    return value.replace("&", "&amp;").replace("<", "&lt;")


def _random_case(rng: random.Random) -> str:
    attrs = ""
    if rng.random() < 0.9:
        attrs += f' name="{_attr(rng.choice(NAMES))}"'
    t = rng.choice(TIMES)
    if t is not None:
        attrs += f' time="{t}"'
    children = []
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        r = rng.random()
        tag = rng.choice(["failure", "error", "skipped", "system-out", "failure"])
        if r < 0.15:
            children.append(rng.choice(["<!-- c -->", "<?pi x?>", "\n    "]))
        elif r < 0.4:
            children.append(f"<{tag}/>")
        else:
            msg = f' message="{_attr(rng.choice(TEXTS))}"' if rng.random() < 0.6 else ""
            body = _text(rng, rng.choice(TEXTS))
            if rng.random() < 0.2:
                body += rng.choice(["<child/>", "<!--x-->", "<?p?>"]) + _text(rng, rng.choice(TEXTS))
            children.append(f"<{tag}{msg}>{body}</{tag}>")
    return f"<testcase{attrs}>{''.join(children)}</testcase>" if children or rng.random() < 0.5 else f"<testcase{attrs}/>"


def _random_suite(rng: random.Random, depth: int) -> str:
    parts = []
    for _ in range(rng.randint(0, 5)):
        r = rng.random()
        if r < 0.65:
            parts.append(_random_case(rng))
        elif r < 0.8 and depth < 4:
            parts.append(_random_suite(rng, depth + 1))
        else:
            parts.append(rng.choice(["<properties><property name='k' value='v'/></properties>", "\n  ",
                                     "<system-out>out</system-out>", "<!-- note -->"]))
    name = f' name="{_attr(rng.choice(NAMES))}"' if rng.random() < 0.8 else ""
    return f"<testsuite{name}>{''.join(parts)}</testsuite>"


def _random_document(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        body = _random_suite(rng, 0)
    else:
        body = "<testsuites>" + "".join(_random_suite(rng, 1) for _ in range(rng.randint(0, 3))) + "</testsuites>"
    decl = rng.choice(["", '<?xml version="1.0" encoding="UTF-8"?>\n', "<?xml version='1.0' encoding='latin-1'?>"])
    doc = decl + body + rng.choice(["", "\n"])
    if rng.random() < 0.2:
        doc = doc.replace("\n", "\r\n")
    data = doc.encode("utf-8")
    if rng.random() < 0.1:
        i = rng.randrange(len(data))
        data = data[:i] + rng.choice([b"\xff", b"\xe9", b"\xc3"]) + data[i:]
    return data


def test_random_documents():
    rng = random.Random(20251122)
    fast = 0
    for _ in range(400):
        data = _random_document(rng)
        check(data)
        fast += answered_fast(data)
    assert fast > 150  # most of them exercise the fast path


# --- truncations and byte flips of a real-looking file --------------------------------


def _small_e2e() -> bytes:
    return corpus.e2e_file(random.Random(5), 60, v2=True, fancy=True)


def test_truncated_at_many_offsets():
    data = _small_e2e()
    offsets = sorted(set(range(0, len(data), max(1, len(data) // 150))) | {1, 2, 5, len(data) - 1, len(data) - 2})
    for offset in offsets:
        check(data[:offset])


def test_random_byte_flips():
    rng = random.Random(1122)
    files = [_small_e2e(), corpus.unit_file(random.Random(6), 40),
             corpus.e2e_file(random.Random(8), 40, v2=False, fancy=False)]
    tokens = [b"<", b">", b"/", b'"', b"&", b"=", b" ", b"\n", b"\r", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"<?",
              b"&amp;", b"&#10;", b"&bogus;", b"xmlns='u'", b"p:", b"\xc3\xa9", b"\xe2\x81\xb0", b"\xff", b"\x00",
              b"<skipped/>", b"</testcase>", b"<testsuite>", b"<failure>", b"<!DOCTYPE x>"]
    for _ in range(300):
        data = bytearray(rng.choice(files))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(data))
            r = rng.random()
            if r < 0.4:
                data[i] = rng.randrange(256)
            elif r < 0.8:
                data[i:i] = rng.choice(tokens)
            else:
                del data[i:i + rng.randint(1, 16)]
        check(bytes(data))
