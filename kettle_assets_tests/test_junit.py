"""JUnit XML -> `test` records (Kettle's rules, with our fixes).

Expected values are written from Kettle's rules, not from what the code returns.
"""

from __future__ import annotations

import time

from kettle_assets.core.junit import is_junit_name, parse_junit


def ok(data: bytes) -> list[dict]:
    """Parse and check the file was accepted; return its tests."""
    out = parse_junit(data)
    assert not out.malformed, out.error
    assert out.error is None
    return out.tests


def assert_malformed(data: bytes):
    out = parse_junit(data)
    assert out.malformed is True
    assert out.tests == []
    assert isinstance(out.error, str) and out.error
    return out


# --- roots and names -------------------------------------------------------


def test_root_testsuite_names_direct_cases_by_name():
    xml = b"""<testsuite name="Suite">
      <testcase name="alpha" time="1"/>
      <testcase name="beta" time="2"/>
    </testsuite>"""
    assert ok(xml) == [
        {"name": "alpha", "time": 1.0},
        {"name": "beta", "time": 2.0},
    ]


def test_root_testsuite_nameless_case_is_unspecified():
    xml = b'<testsuite name="S"><testcase time="3"/></testsuite>'
    assert ok(xml) == [{"name": "<unspecified>", "time": 3.0}]


def test_root_testsuites_names_suite_space_case():
    xml = b"""<testsuites>
      <testsuite name="S1"><testcase name="a" time="1"/></testsuite>
      <testsuite name="S2"><testcase name="b" time="2"/><testcase name="c"/></testsuite>
    </testsuites>"""
    assert ok(xml) == [
        {"name": "S1 a", "time": 1.0},
        {"name": "S2 b", "time": 2.0},
        {"name": "S2 c", "time": 0.0},
    ]


def test_root_testsuites_nameless_suite_is_unspecified():
    xml = b"<testsuites><testsuite><testcase name='case'/></testsuite></testsuites>"
    assert ok(xml) == [{"name": "<unspecified> case", "time": 0.0}]


def test_root_testsuites_nameless_suite_and_case():
    xml = b"<testsuites><testsuite><testcase/></testsuite></testsuites>"
    assert ok(xml) == [{"name": "<unspecified> <unspecified>", "time": 0.0}]


# --- nested suites --------------------------------------------


def test_nested_suites_under_root_testsuite_flattened_without_root_name():
    xml = b"""<testsuite name="Root">
      <testcase name="top" time="1"/>
      <testsuite name="A">
        <testcase name="a1" time="2"/>
        <testsuite name="B"><testcase name="b1" time="3"/></testsuite>
      </testsuite>
    </testsuite>"""
    assert sorted(ok(xml), key=lambda t: t["name"]) == [
        {"name": "A B b1", "time": 3.0},
        {"name": "A a1", "time": 2.0},
        {"name": "top", "time": 1.0},
    ]


def test_nested_suites_under_root_testsuites_include_every_suite_name():
    xml = b"""<testsuites name="All">
      <testsuite name="S">
        <testcase name="direct"/>
        <testsuite name="A">
          <testcase name="a1" time="2"/>
          <testsuite name="B"><testcase name="b1" time="3"/></testsuite>
        </testsuite>
      </testsuite>
    </testsuites>"""
    assert sorted(ok(xml), key=lambda t: t["name"]) == [
        {"name": "S A B b1", "time": 3.0},
        {"name": "S A a1", "time": 2.0},
        {"name": "S direct", "time": 0.0},
    ]


def test_nested_nameless_suite_is_unspecified():
    xml = b'<testsuite name="R"><testsuite><testcase name="t"/></testsuite></testsuite>'
    assert ok(xml) == [{"name": "<unspecified> t", "time": 0.0}]


def test_nested_failing_case_keeps_failure():
    xml = b"""<testsuites><testsuite name="S"><testsuite name="N">
      <testcase name="t" time="1.5"><failure message="boom"/></testcase>
    </testsuite></testsuite></testsuites>"""
    assert ok(xml) == [
        {"name": "S N t", "time": 1.5, "failed": True, "failure_text": "boom"}
    ]


# --- time ------------------------------------------------------------------


def test_time_is_float_of_attribute():
    xml = b'<testsuite><testcase name="a" time="12.25"/><testcase name="b" time="7"/></testsuite>'
    out = parse_junit(xml)
    assert out.tests == [{"name": "a", "time": 12.25}, {"name": "b", "time": 7.0}]
    assert all(type(t["time"]) is float for t in out.tests)
    assert out.bad_times == 0


def test_time_missing_or_empty_is_zero_and_not_bad():
    xml = b'<testsuite><testcase name="a"/><testcase name="b" time=""/></testsuite>'
    out = parse_junit(xml)
    assert out.tests == [{"name": "a", "time": 0.0}, {"name": "b", "time": 0.0}]
    assert out.bad_times == 0


def test_time_non_number_reads_zero_and_counts_bad():
    xml = b"""<testsuite>
      <testcase name="a" time="abc"/>
      <testcase name="b" time="1,5"><failure message="m"/></testcase>
      <testcase name="c" time="2"/>
    </testsuite>"""
    out = parse_junit(xml)
    assert not out.malformed
    assert out.tests == [
        {"name": "a", "time": 0.0},
        {"name": "b", "time": 0.0, "failed": True, "failure_text": "m"},
        {"name": "c", "time": 2.0},
    ]
    assert out.bad_times == 2


# --- failures --------------------------------------------------------------


def test_failure_message_and_body_ginkgo_style():
    xml = b"""<testsuite><testcase name="t" time="1">
      <failure message="m" type="Failure">body</failure>
    </testcase></testsuite>"""
    assert ok(xml) == [
        {"name": "t", "time": 1.0, "failed": True, "failure_text": "m\nbody"}
    ]


def test_failure_message_only():
    xml = b'<testsuite><testcase name="t"><failure message="only msg"/></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "only msg"}
    ]


def test_failure_body_only():
    xml = b'<testsuite><testcase name="t"><failure>only body</failure></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "only body"}
    ]


def test_failure_with_neither_message_nor_body():
    xml = b'<testsuite><testcase name="t"><failure/></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "No Failure Message Found"}
    ]


def test_several_failures_last_wins():
    xml = b"""<testsuite><testcase name="t">
      <failure message="first">one</failure>
      <failure message="second"/>
      <failure>third</failure>
    </testcase></testsuite>"""
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "third"}
    ]


def test_error_counts_as_failure_with_message_and_body():
    xml = b'<testsuite><testcase name="t" time="4"><error message="m">trace</error></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "t", "time": 4.0, "failed": True, "failure_text": "m\ntrace"}
    ]


def test_error_without_text_gets_default_message():
    xml = b'<testsuite><testcase name="t"><error/></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "No Failure Message Found"}
    ]


def test_error_and_failure_last_one_wins():
    xml = b"""<testsuite><testcase name="t">
      <failure message="f"/><error message="e"/>
    </testcase></testsuite>"""
    assert ok(xml) == [
        {"name": "t", "time": 0.0, "failed": True, "failure_text": "e"}
    ]


# --- dropped tests ---------------------------------------------------------


def test_skipped_drops_test():
    xml = b"""<testsuite>
      <testcase name="skip"><skipped/></testcase>
      <testcase name="keep"/>
    </testsuite>"""
    assert ok(xml) == [{"name": "keep", "time": 0.0}]


def test_skipped_drops_test_even_with_failure_or_error():
    xml = b"""<testsuite>
      <testcase name="f"><failure message="m"/><skipped/></testcase>
      <testcase name="g"><skipped message="why"/><failure message="m"/></testcase>
      <testcase name="e"><error message="m"/><skipped/></testcase>
    </testsuite>"""
    assert ok(xml) == []


def test_passing_test_with_hash_dropped():
    xml = b"""<testsuite>
      <testcase name="flaky #1"/>
      <testcase name="plain"/>
    </testsuite>"""
    assert ok(xml) == [{"name": "plain", "time": 0.0}]


def test_failing_test_with_hash_kept():
    xml = b'<testsuite><testcase name="flaky #1" time="2"><failure message="m"/></testcase></testsuite>'
    assert ok(xml) == [
        {"name": "flaky #1", "time": 2.0, "failed": True, "failure_text": "m"}
    ]


def test_hash_in_suite_name_drops_passing_test_under_testsuites():
    xml = b'<testsuites><testsuite name="S#2"><testcase name="t"/></testsuite></testsuites>'
    assert ok(xml) == []


def test_passing_test_has_exactly_name_and_time():
    tests = ok(b'<testsuite><testcase name="t" time="1" classname="c"/></testsuite>')
    assert tests == [{"name": "t", "time": 1.0}]
    assert set(tests[0]) == {"name", "time"}
    assert "failed" not in tests[0]


# --- system-out ------------------------------------------------------------


def test_system_out_anywhere_does_not_change_results():
    plain = b"""<testsuites>
      <testsuite name="S">
        <testcase name="a" time="1"/>
        <testcase name="b" time="2"><failure message="m">body</failure></testcase>
      </testsuite>
    </testsuites>"""
    noisy = b"""<testsuites>
      <system-out>root out</system-out>
      <testsuite name="S">
        <system-out>suite out <![CDATA[<testcase name="fake"/>]]></system-out>
        <testcase name="a" time="1"><system-out>case out #1</system-out></testcase>
        <testcase name="b" time="2">
          <system-out>before</system-out>
          <failure message="m">body</failure>
          <system-err>err</system-err>
        </testcase>
        <system-out>trailing</system-out>
      </testsuite>
    </testsuites>"""
    expected = [
        {"name": "S a", "time": 1.0},
        {"name": "S b", "time": 2.0, "failed": True, "failure_text": "m\nbody"},
    ]
    assert ok(plain) == expected
    assert ok(noisy) == expected


# --- bad files -------------------------------------------------------------


def test_malformed_xml():
    assert_malformed(b'<testsuite><testcase name="a"></testsuite>')


def test_truncated_xml():
    assert_malformed(b'<testsuite name="S"><testcase name="a" time="1"/><testcase na')


def test_empty_file():
    assert_malformed(b"")


def test_whitespace_only_file():
    assert_malformed(b" \n\t\r\n ")


def test_unexpected_root_tag():
    out = assert_malformed(b"<html><body><testcase name='a'/></body></html>")
    assert "html" in out.error


def test_billion_laughs_refused_not_expanded():
    xml = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<testsuite><testcase name="t"><failure message="&lol9;"/></testcase></testsuite>"""
    start = time.perf_counter()
    assert_malformed(xml)
    assert time.perf_counter() - start < 1.0


# --- encodings -------------------------------------------------------------


def test_invalid_utf8_byte_replaced_rest_parses():
    xml = b"""<testsuite>
      <testcase name="bad\xffname" time="1"/>
      <testcase name="t" time="2"><failure message="m">x\xffy</failure></testcase>
      <testcase name="after" time="3"/>
    </testsuite>"""
    assert ok(xml) == [
        {"name": "bad\ufffdname", "time": 1.0},
        {"name": "t", "time": 2.0, "failed": True, "failure_text": "m\nx\ufffdy"},
        {"name": "after", "time": 3.0},
    ]


def test_latin1_e_acute_replaced_rest_parses():
    xml = "<testsuite><testcase name=\"caf\u00e9\"/><testcase name=\"ok\"/></testsuite>".encode("latin-1")
    assert b"\xe9" in xml
    assert ok(xml) == [
        {"name": "caf\ufffd", "time": 0.0},
        {"name": "ok", "time": 0.0},
    ]


def test_valid_utf8_non_ascii_kept():
    xml = "<testsuite><testcase name=\"caf\u00e9 \u65e5\u672c\"/></testsuite>".encode("utf-8")
    assert ok(xml) == [{"name": "caf\u00e9 \u65e5\u672c", "time": 0.0}]


def test_utf8_encoding_declaration_parses():
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<testsuite><testcase name="caf\u00e9" time="1"/></testsuite>'
    ).encode("utf-8")
    assert ok(xml) == [{"name": "caf\u00e9", "time": 1.0}]


def test_iso_8859_1_encoding_declaration_parses_as_utf8():
    # Bytes are decoded as UTF-8 first (as Kettle stored them), so the
    # declaration does not matter and the latin-1 byte becomes U+FFFD.
    xml = (
        b'<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        b'<testsuite><testcase name="caf\xe9" time="1"/><testcase name="plain"/></testsuite>'
    )
    assert ok(xml) == [
        {"name": "caf\ufffd", "time": 1.0},
        {"name": "plain", "time": 0.0},
    ]


# --- file names ------------------------------------------------------------


def test_is_junit_name_accepts():
    assert is_junit_name("junit.xml")
    assert is_junit_name("junit_01.xml")
    assert is_junit_name("junit_runner.xml")


def test_is_junit_name_rejects():
    assert not is_junit_name("foo.xml")
    assert not is_junit_name("junit.xml.gz")
    assert not is_junit_name("Junit.xml")


# --- scale -----------------------------------------------------------------


def test_large_file_parses_linearly():
    n = 20_000
    parts = [b'<testsuite name="big">']
    for i in range(n):
        if i % 100 == 0:
            parts.append(b'<testcase name="t%d" time="0.5"/>' % i)
        else:
            parts.append(b'<testcase name="t%d" time="0.5"><skipped/></testcase>' % i)
    parts.append(b"</testsuite>")
    xml = b"".join(parts)
    start = time.perf_counter()
    out = parse_junit(xml)
    elapsed = time.perf_counter() - start
    assert not out.malformed
    assert len(out.tests) == n // 100
    assert out.tests[0] == {"name": "t0", "time": 0.5}
    assert out.tests[-1] == {"name": "t19900", "time": 0.5}
    assert elapsed < 1.0
