"""PHP ``serialize()`` / ``unserialize()`` for plain data, and nothing else.

How this works
--------------
PHP's format is a prefix notation: ``N;`` (null), ``b:1;`` (bool), ``i:42;`` (int),
``d:0.5;`` (float), ``s:5:"hello";`` (a byte string and its exact byte length) and
``a:2:{<key><value><key><value>}`` (an array: ordered pairs whose keys are ``i:`` or
``s:``). PHP-side sessions and the replies a GatewayWorker gateway sends to
GatewayClient use only these, so that is all this module reads or writes.

Everything else is refused with :class:`PhpSerializeError`, never guessed and never
executed: objects (``O:``, ``C:``), enums (``E:``), references (``r:``, ``R:``), the
legacy escaped string ``S:``, trailing bytes after the value (PHP ignores them; a
well-formed peer never sends them), integers outside 64 bits, nesting deeper than
``max_depth`` and more than ``max_items`` values in one document. :func:`loads` never
raises anything but that error, whatever the input (fuzzed with hypothesis).

Mapping between PHP and Python:

- ``null``/``bool``/``int``/``float`` <-> ``None``/``bool``/``int``/``float``. Floats
  are written the way PHP (>= 7.1, ``serialize_precision = -1``) writes them: the
  shortest repr, ``1`` not ``1.0``, ``1.0E+25``, ``INF``, ``-INF``, ``NAN``.
- strings are bytes in PHP. :func:`dumps` writes ``str`` as UTF-8 and ``bytes`` as
  they are. :func:`loads` returns ``bytes`` (``text=False``) or, with ``text=True``,
  ``str`` for strings that are valid UTF-8 and ``bytes`` for the others.
- a PHP array whose keys are exactly ``0..n-1`` in order (the empty array included)
  becomes a ``list``; any other array a ``dict`` with ``int`` and ``str``/``bytes``
  keys. ``list``/``tuple`` and ``dict`` are written as arrays.
- keys follow PHP's own rule: a string key that is a canonical decimal integer
  (``"123"``, ``"-5"``; not ``"05"``, ``"-0"`` or ``"+1"``) *is* that integer key in
  PHP, so :func:`dumps` writes it as ``i:123;`` (byte-identical to PHP's output) and
  :func:`loads` returns it as ``123``. Two Python keys that are the same PHP key
  (``1`` and ``"1"``) are refused.

This module is pure: bytes in, values out, no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "PhpSerializeError",
    "dumps",
    "loads",
    "php_key",
    "MAX_DEPTH",
    "MAX_ITEMS",
]

MAX_DEPTH = 64
"""Deepest nesting of arrays :func:`loads` and :func:`dumps` accept by default."""
MAX_ITEMS = 1_000_000
"""Most values (array entries count once each, keys not counted) in one document."""

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_CANONICAL_INT = re.compile(rb"-?[1-9][0-9]{0,18}|0")
_INT_TEXT = re.compile(rb"[+-]?[0-9]+")
_UINT_TEXT = re.compile(rb"[0-9]+")
_FLOAT_TEXT = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL_FLOATS = {b"INF": math.inf, b"-INF": -math.inf, b"NAN": math.nan}
_REFUSED = {
    ord("O"): "PHP objects are refused (never instantiated)",
    ord("C"): "PHP objects are refused (never instantiated)",
    ord("E"): "PHP enums are refused",
    ord("r"): "PHP references are refused",
    ord("R"): "PHP references are refused",
    ord("S"): "PHP escaped strings (S:) are refused",
}


class PhpSerializeError(ValueError):
    """The data is not PHP serialized plain data (or a value cannot be written as it)."""


# ---- reading ------------------------------------------------------------------------


def loads(
    data: bytes | bytearray | memoryview,
    *,
    text: bool = False,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
) -> Any:
    """The value serialized in ``data`` (see the module docstring for the mapping).

    Raises :class:`PhpSerializeError` for anything that is not exactly one serialized
    plain value.
    """
    reader = _Reader(bytes(data), text, max_depth, max_items)
    value = reader.value(0)
    if reader.pos != len(reader.data):
        raise PhpSerializeError(
            f"{len(reader.data) - reader.pos} unexpected bytes after the value "
            f"at offset {reader.pos}"
        )
    return value


class _Reader:
    __slots__ = ("data", "pos", "text", "max_depth", "items_left")

    def __init__(self, data: bytes, text: bool, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.text = text
        self.max_depth = max_depth
        self.items_left = max_items

    def fail(self, what: str) -> PhpSerializeError:
        return PhpSerializeError(f"{what} at offset {self.pos}")

    def until(self, stop: int) -> bytes:
        """The bytes up to (not including) ``stop``; the position moves past it."""
        end = self.data.find(bytes((stop,)), self.pos)
        if end < 0:
            raise self.fail(f"missing {chr(stop)!r}")
        token = self.data[self.pos : end]
        self.pos = end + 1
        return token

    def expect(self, literal: bytes) -> None:
        if not self.data.startswith(literal, self.pos):
            raise self.fail(f"expected {literal.decode()!r}")
        self.pos += len(literal)

    def count(self) -> None:
        self.items_left -= 1
        if self.items_left < 0:
            raise self.fail("too many values")

    def value(self, depth: int) -> Any:
        data = self.data
        if self.pos >= len(data):
            raise self.fail("truncated data")
        self.count()
        tag = data[self.pos]
        if tag == ord("N"):
            self.expect(b"N;")
            return None
        if data[self.pos + 1 : self.pos + 2] != b":":
            raise self.fail(_REFUSED.get(tag, f"unknown type {chr(tag)!r}"))
        if tag == ord("b"):
            return self.boolean()
        if tag == ord("i"):
            self.pos += 2
            return self.integer(self.until(ord(";")))
        if tag == ord("d"):
            self.pos += 2
            return self.double(self.until(ord(";")))
        if tag == ord("s"):
            return self.string(self.text)
        if tag == ord("a"):
            return self.array(depth + 1)
        raise self.fail(_REFUSED.get(tag, f"unknown type {chr(tag)!r}"))

    def boolean(self) -> bool:
        token = self.data[self.pos : self.pos + 4]
        if token == b"b:0;" or token == b"b:1;":
            self.pos += 4
            return token == b"b:1;"
        raise self.fail("a bool must be b:0; or b:1;")

    def integer(self, token: bytes) -> int:
        if len(token) > 24 or not _INT_TEXT.fullmatch(token):
            raise self.fail(f"bad integer {token[:24]!r}")
        value = int(token)
        if not _INT_MIN <= value <= _INT_MAX:
            raise self.fail("integer outside 64 bits")
        return value

    def double(self, token: bytes) -> float:
        special = _SPECIAL_FLOATS.get(token)
        if special is not None:
            return special
        if len(token) > 400 or not _FLOAT_TEXT.fullmatch(token):
            raise self.fail(f"bad float {token[:24]!r}")
        return float(token)

    def string(self, text: bool) -> str | bytes:
        self.pos += 2
        size_text = self.until(ord(":"))
        if not _UINT_TEXT.fullmatch(size_text) or len(size_text) > 19:
            raise self.fail("bad string length")
        size = int(size_text)
        self.expect(b'"')
        end = self.pos + size
        if end + 2 > len(self.data):
            raise self.fail(f"string of {size} bytes runs past the end")
        raw = self.data[self.pos : end]
        self.pos = end
        self.expect(b'";')
        if text:
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return raw
        return raw

    def array(self, depth: int) -> list[Any] | dict[Any, Any]:
        if depth > self.max_depth:
            raise self.fail(f"arrays nested deeper than {self.max_depth}")
        self.pos += 2
        size_text = self.until(ord(":"))
        if not _UINT_TEXT.fullmatch(size_text) or len(size_text) > 19:
            raise self.fail("bad array size")
        size = int(size_text)
        # Each entry takes at least 6 bytes (i:0;N;): a size the data cannot hold is
        # refused before anything is allocated for it.
        if size * 6 > len(self.data) - self.pos:
            raise self.fail(f"array of {size} entries runs past the end")
        self.expect(b"{")
        out: dict[Any, Any] = {}
        sequential = True
        for index in range(size):
            key = self.key()
            if sequential and key != index or type(key) is not int:
                sequential = False
            out[key] = self.value(depth)
        self.expect(b"}")
        if sequential and len(out) == size:
            return list(out.values())
        return out

    def key(self) -> int | str | bytes:
        data = self.data
        tag = data[self.pos : self.pos + 2]
        if tag == b"i:":
            self.pos += 2
            return self.integer(self.until(ord(";")))
        if tag == b"s:":
            raw = self.string(False)
            assert type(raw) is bytes
            if _CANONICAL_INT.fullmatch(raw):  # PHP stores "123" as the int key 123
                number = int(raw)
                if _INT_MIN <= number <= _INT_MAX:
                    return number
            if self.text:
                try:
                    return raw.decode()
                except UnicodeDecodeError:
                    return raw
            return raw
        raise self.fail("an array key must be an int or a string")


# ---- writing ------------------------------------------------------------------------


def dumps(value: Any, *, max_depth: int = MAX_DEPTH) -> bytes:
    """``value`` serialized as PHP's ``serialize()`` would write it.

    Raises :class:`PhpSerializeError` for a value outside the mapping (an object, a
    set, an int outside 64 bits, a str that is not encodable as UTF-8, two keys that
    are one PHP key, nesting deeper than ``max_depth``).
    """
    out: list[bytes] = []
    _write(value, out, 0, max_depth)
    return b"".join(out)


def php_key(key: Any) -> int | bytes:
    """The PHP array key ``key`` becomes: an ``int``, or the bytes of a string key.
    ``"123"`` -> ``123`` (as PHP does); ``"05"`` stays a string."""
    if type(key) is int:
        if not _INT_MIN <= key <= _INT_MAX:
            raise PhpSerializeError(f"int key {key} is outside 64 bits")
        return key
    if type(key) is str:
        raw = _utf8(key)
    elif type(key) is bytes:
        raw = key
    else:
        raise PhpSerializeError(
            f"a PHP array key must be an int or a string, not {type(key).__name__}"
        )
    if _CANONICAL_INT.fullmatch(raw):
        number = int(raw)
        if _INT_MIN <= number <= _INT_MAX:
            return number
    return raw


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise PhpSerializeError(f"string is not encodable as UTF-8: {exc.reason}") from None


def _write(value: Any, out: list[bytes], depth: int, max_depth: int) -> None:
    kind = type(value)
    if value is None:
        out.append(b"N;")
    elif kind is bool:
        out.append(b"b:1;" if value else b"b:0;")
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise PhpSerializeError(f"int {value} is outside 64 bits")
        out.append(b"i:%d;" % value)
    elif kind is float:
        out.append(b"d:" + php_float(value).encode() + b";")
    elif kind is str or kind is bytes or kind is bytearray or kind is memoryview:
        raw = _utf8(value) if kind is str else bytes(value)
        out.append(b's:%d:"' % len(raw) + raw + b'";')
    elif kind is list or kind is tuple:
        _write_array(enumerate(value), len(value), out, depth + 1, max_depth)
    elif kind is dict:
        _write_array(value.items(), len(value), out, depth + 1, max_depth)
    else:
        raise PhpSerializeError(f"{kind.__name__} cannot be written as PHP plain data")


def _write_array(items: Any, size: int, out: list[bytes], depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise PhpSerializeError(f"arrays nested deeper than {max_depth}")
    out.append(b"a:%d:{" % size)
    seen: set[int | bytes] = set()
    for key, item in items:
        php = php_key(key)
        if php in seen:
            raise PhpSerializeError(f"key {key!r} repeats the PHP array key {php!r}")
        seen.add(php)
        if isinstance(php, int):
            out.append(b"i:%d;" % php)
        else:
            out.append(b's:%d:"' % len(php) + php + b'";')
        _write(item, out, depth, max_depth)
    out.append(b"}")


def php_float(value: float) -> str:
    """``value`` as PHP (``serialize_precision = -1``) writes it: the shortest digits
    that read back as the same float, in fixed notation unless the decimal exponent
    is below -4 or above 17 (then ``1.5E-7``, ``1.0E+25``)."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    digits, point = _shortest_digits(abs(value))
    if point < -3 or point > 17:
        exponent = point - 1
        mantissa = digits[0] + "." + (digits[1:] or "0")
        return f"{sign}{mantissa}E{'-' if exponent < 0 else '+'}{abs(exponent)}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if len(digits) <= point:
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _shortest_digits(value: float) -> tuple[str, int]:
    """``(digits, point)``: ``value == 0.<digits> * 10**point``, the shortest digits
    that round-trip (Python's ``repr`` finds them), no leading or trailing zeros."""
    if value == 0:
        return "0", 1
    mantissa, _, exp = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    return stripped.rstrip("0") or "0", point
