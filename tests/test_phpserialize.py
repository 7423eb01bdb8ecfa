"""gateway/phpserialize.py: fixtures of real PHP 8.2 ``serialize()`` output, refusals,
hypothesis round trips and fuzzing, and (when php is installed) PHP itself reading
what we write."""

from __future__ import annotations

import base64
import contextlib
import math
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pygatewayworker.gateway.phpserialize import (
    MAX_DEPTH,
    PhpSerializeError,
    dumps,
    loads,
    php_float,
    php_key,
)

# (Python value, the bytes PHP 8.2's serialize() wrote for the same PHP value). The
# value is what loads(text=True) returns and what dumps() turns back into those bytes.
PHP_OUTPUT: list[tuple[Any, bytes]] = [
    (None, b"N;"),
    (True, b"b:1;"),
    (False, b"b:0;"),
    (42, b"i:42;"),
    (-7, b"i:-7;"),
    (2**63 - 1, b"i:9223372036854775807;"),
    (-(2**63), b"i:-9223372036854775808;"),
    (0.1, b"d:0.1;"),
    (3.0, b"d:3;"),
    (1.5e-7, b"d:1.5E-7;"),
    (1e25, b"d:1.0E+25;"),
    (math.inf, b"d:INF;"),
    (-math.inf, b"d:-INF;"),
    ('héllo "quoted"; {}', b's:19:"h\xc3\xa9llo "quoted"; {}";'),
    (b"\x00\xff\n", b's:3:"\x00\xff\n";'),
    ("", b's:0:"";'),
    ([1, "two", 3.5, None, False], b'a:5:{i:0;i:1;i:1;s:3:"two";i:2;d:3.5;i:3;N;i:4;b:0;}'),
    ([], b"a:0:{}"),
    (
        {"name": "alice", "age": 30, "tags": ["a", "b"], "nested": {"x": {"y": 1}}},
        b'a:4:{s:4:"name";s:5:"alice";s:3:"age";i:30;s:4:"tags";a:2:{i:0;s:1:"a";i:1;'
        b's:1:"b";}s:6:"nested";a:1:{s:1:"x";a:1:{s:1:"y";i:1;}}}',
    ),
    (
        {10: "ten", "05": "oh-five", -3: "minus three", 7: "seven"},
        b'a:4:{i:10;s:3:"ten";s:2:"05";s:7:"oh-five";i:-3;s:11:"minus three";i:7;s:5:"seven";}',
    ),
    ({1: "a", 2: "b"}, b'a:2:{i:1;s:1:"a";i:2;s:1:"b";}'),
    ({1: "b", 0: "a"}, b'a:2:{i:1;s:1:"b";i:0;s:1:"a";}'),
    (
        {
            "uid": 1001,
            "name": "张三",
            "login_at": 1700000000,
            "roles": ["admin", "ops"],
            "prefs": {"lang": "zh-CN", "dark": True},
        },
        b'a:5:{s:3:"uid";i:1001;s:4:"name";s:6:"\xe5\xbc\xa0\xe4\xb8\x89";s:8:"login_at";'
        b'i:1700000000;s:5:"roles";a:2:{i:0;s:5:"admin";i:1;s:3:"ops";}s:5:"prefs";'
        b'a:2:{s:4:"lang";s:5:"zh-CN";s:4:"dark";b:1;}}',
    ),
]


@pytest.mark.parametrize(("value", "php"), PHP_OUTPUT, ids=[repr(v)[:30] for v, _ in PHP_OUTPUT])
def test_matches_php_output_both_ways(value: Any, php: bytes) -> None:
    assert dumps(value) == php
    assert same(loads(php, text=True), value)


def test_nan_and_negative_zero() -> None:
    assert dumps(math.nan) == b"d:NAN;"
    assert math.isnan(loads(b"d:NAN;"))
    assert dumps(-0.0) == b"d:-0;"
    assert math.copysign(1, loads(b"d:-0;")) == -1


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e15, "1000000000000000"),
        (1e16, "10000000000000000"),
        (1e17, "1.0E+17"),
        (3e16, "30000000000000000"),
        (0.0001, "0.0001"),
        (0.00001, "1.0E-5"),
        (123.456, "123.456"),
        (5e-324, "5.0E-324"),
        (1.7976931348623157e308, "1.7976931348623157E+308"),
        (12345678901234567890.0, "1.2345678901234567E+19"),
        (123456789012345678.0, "1.2345678901234568E+17"),
        (0.5, "0.5"),
        (100.0, "100"),
    ],
)
def test_floats_are_written_like_php(value: float, text: str) -> None:
    # each figure printed by php 8.2 -r 'echo serialize($value);'
    assert php_float(value) == text


def test_strings_are_bytes_unless_text_is_asked_for() -> None:
    data = dumps({"k": "é", "b": b"\xff"})
    assert loads(data) == {b"k": b"\xc3\xa9", b"b": b"\xff"}
    assert loads(data, text=True) == {"k": "é", "b": b"\xff"}


def test_numeric_string_keys_are_int_keys_as_in_php() -> None:
    assert dumps({"123": 1, "-5": 2, "05": 3, "+1": 4, "-0": 5}) == (
        b'a:5:{i:123;i:1;i:-5;i:2;s:2:"05";i:3;s:2:"+1";i:4;s:2:"-0";i:5;}'
    )
    assert loads(b'a:1:{s:3:"123";i:1;}') == {123: 1}
    assert loads(b'a:2:{s:1:"0";s:1:"a";s:1:"1";s:1:"b";}', text=True) == ["a", "b"]
    assert php_key("9223372036854775808") == b"9223372036854775808"  # beyond int64
    with pytest.raises(PhpSerializeError, match="repeats the PHP array key"):
        dumps({1: "a", "1": "b"})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'O:8:"stdClass":0:{}', "objects are refused"),
        (b'C:11:"ArrayObject":21:{x:i:0;a:0:{};m:a:0:{}}', "objects are refused"),
        (b'E:7:"Foo:Bar";', "enums are refused"),
        (b'a:2:{i:0;s:1:"a";i:1;r:2;}', "references are refused"),
        (b'a:2:{i:0;s:1:"a";i:1;R:2;}', "references are refused"),
        (b'S:1:"\\61";', "escaped strings"),
        (b"i:5;junk", "unexpected bytes"),
        (b"i:9223372036854775808;", "outside 64 bits"),
        (b"b:2;", "bool"),
        (b"d:1e5x;", "bad float"),
        (b"d:infinity;", "bad float"),
        (b"a:1:{d:1.5;i:1;}", "key must be an int or a string"),
        (b's:5:"abc";', "runs past the end"),
        (b"a:99999999:{}", "runs past the end"),
        (b"", "truncated"),
        (b"x:1;", "unknown type"),
    ],
)
def test_refusals_are_clear(data: bytes, match: str) -> None:
    with pytest.raises(PhpSerializeError, match=match):
        loads(data)


def test_depth_and_size_are_bounded() -> None:
    deep = b"a:1:{i:0;" * (MAX_DEPTH + 1) + b"N;" + b"}" * (MAX_DEPTH + 1)
    with pytest.raises(PhpSerializeError, match="nested deeper"):
        loads(deep)
    assert loads(deep, max_depth=MAX_DEPTH + 1) is not None
    with pytest.raises(PhpSerializeError, match="too many values"):
        loads(dumps(list(range(100))), max_items=50)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(PhpSerializeError, match="nested deeper"):
        dumps(cyclic)


@pytest.mark.parametrize("value", [{1, 2}, object(), 2**63, {True: 1}, "\ud800", 1j])
def test_values_php_cannot_hold_are_refused(value: Any) -> None:
    with pytest.raises(PhpSerializeError):
        dumps(value)


# ---- hypothesis -------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False)


def _not_numeric(text: str) -> bool:
    return not isinstance(php_key(text), int)


def _not_a_list(d: dict[Any, Any]) -> bool:
    return list(d) != list(range(len(d)))


def php_values(strings: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values that come back exactly: dict keys that stay what they are in PHP
    (no numeric strings) and dicts that are not lists in disguise."""
    keys = INT64 | strings.filter(_not_numeric)
    scalars = st.none() | st.booleans() | INT64 | FLOATS | strings
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(keys, inner, min_size=1, max_size=5).filter(_not_a_list)
        ),
        max_leaves=25,
    )


def same(a: Any, b: Any) -> bool:
    """Equality that tells -0.0 from 0.0 and list from dict."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(php_values(st.text(max_size=12)))
def test_text_values_round_trip_exactly(value: Any) -> None:
    data = dumps(value)
    back = loads(data, text=True)
    assert same(back, value)
    assert dumps(back) == data


@given(php_values(st.binary(max_size=12)))
def test_byte_values_round_trip_exactly(value: Any) -> None:
    data = dumps(value)
    assert same(loads(data), value)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(PhpSerializeError):
        loads(data, text=True)


@given(php_values(st.text(max_size=8)), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_damaged_documents_give_only_our_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at : at + data.draw(st.integers(1, 5))]
        else:
            raw[at:at] = data.draw(st.sampled_from([b"a:1:{", b"}", b";", b":", b'"', b"9", b"O:"]))
    with contextlib.suppress(PhpSerializeError):
        loads(bytes(raw), text=True)


# ---- PHP itself ---------------------------------------------------------------------------

PHP = shutil.which("php")


@pytest.mark.skipif(PHP is None, reason="php is not installed (scripts/test.sh installs php-cli)")
def test_php_reads_what_we_write() -> None:
    """PHP unserializes every document we write and serializes it back to the very
    same bytes (a few hundred random values in one php run)."""
    samples: list[bytes] = []

    @given(php_values(st.text(max_size=10)) | php_values(st.binary(max_size=10)))
    @settings(max_examples=300, database=None)
    def collect(value: Any) -> None:
        samples.append(dumps(value))

    collect()
    samples.append(dumps([math.nan, -0.0, math.inf, 1e-300, 2.5e300]))
    script = (
        "while (($line = fgets(STDIN)) !== false) {"
        " $data = base64_decode(trim($line));"
        " $value = unserialize($data);"
        " echo serialize($value) === $data ? 'ok' : 'DIFF ' . base64_encode(serialize($value)),"
        ' "\\n"; }'
    )
    stdin = b"\n".join(base64.b64encode(s) for s in samples) + b"\n"
    assert PHP is not None
    done = subprocess.run([PHP, "-r", script], input=stdin, capture_output=True, timeout=60)
    results = done.stdout.decode().split("\n")[:-1]
    assert done.returncode == 0, done.stderr
    assert len(results) == len(samples)
    diffs = [(s, r) for s, r in zip(samples, results, strict=True) if r != "ok"]
    assert not diffs, diffs[:3]
