"""JSON and query strings for immctl without importing json, re or urllib.

``import json`` loads json.decoder, which compiles regular expressions (``re``, ``enum``,
``functools``...): more than the rest of a read command's start-up. The C parts of the json
package (``_json``) are there without it: ``loads`` scans with ``_json.make_scanner``,
``dumps`` writes the form ``json.dumps(data, indent=2, ensure_ascii=False, default=str)`` gives
(the indented form is Python code in json.encoder; here each container whose members are
all scalars is one call of the C encoder, its separators carrying the newline and indent).
Anything outside plain JSON values (or bytes that are not plain UTF-8) goes to the json
package itself, so the result is always the json package's, errors included.
``urlencode`` and ``quote`` are urllib.parse's for str keys and values.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Any


class _Context:
    """What ``_json.make_scanner`` reads from a json.JSONDecoder, with json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__
    memo: dict[str, str] = {}


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # typeshed: a JSONDecoder
_WS = " \t\n\r"


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``."""
    try:
        if isinstance(raw, bytes):
            # json.loads guesses UTF-16/32 from NUL bytes and honours a UTF-8 BOM: leave those
            # to it
            if raw[:3] == b"\xef\xbb\xbf" or b"\0" in raw[:2]:
                raise ValueError
            s = raw.decode("utf-8", "surrogatepass")
        else:
            s = raw
        obj, end = _scan(s, len(s) - len(s.lstrip(_WS)))
        if s[end:].strip(_WS):
            raise ValueError
        return obj
    except (ValueError, StopIteration, RecursionError):
        import json  # its own answer, and its own error

        return json.loads(raw)


class _Unsupported(Exception):
    pass


def _unsupported(o: object) -> object:
    raise _Unsupported


_CONTAINERS = (dict, list, tuple)
_FLAT: dict[int, Any] = {}  # depth -> a C encoder whose item separator indents for that depth


def _flat(depth: int) -> Any:
    enc = _FLAT.get(depth)
    if enc is None:
        enc = _FLAT[depth] = _json.make_encoder(
            None, _unsupported, _json.encode_basestring, None, ": ",
            ",\n" + "  " * (depth + 1), False, False, True)
    return enc


def _scalar(o: Any) -> str:
    return "".join(_flat(0)(o, 0))


def _encode(o: Any, depth: int, out: list[str]) -> None:
    if isinstance(o, dict):
        for k in o:
            if type(k) is not str:
                raise _Unsupported
        _container(o, [_json.encode_basestring(k) + ": " for k in o], list(o.values()), "{}",
                   depth, out)
    elif isinstance(o, (list, tuple)):
        _container(o, [""] * len(o), list(o), "[]", depth, out)
    else:
        out.append(_scalar(o))


def _container(o: Any, keys: list[str], values: list[Any], brackets: str, depth: int,
               out: list[str]) -> None:
    """One object or array at ``depth``: ``keys`` are the ``"name": `` prefixes of an object's
    members ("" for an array's); one C-encoder call when it holds no container."""
    opening, closing = brackets[0], brackets[1]
    if not values:
        out.append(brackets)
        return
    inner, outer = "\n" + "  " * (depth + 1), "\n" + "  " * depth
    if not any(isinstance(v, _CONTAINERS) for v in values):
        s = "".join(_flat(depth)(o, 0))
        out.append(opening + inner + s[1:-1] + outer + closing)
        return
    sep = opening + inner
    for key, v in zip(keys, values, strict=True):
        out.append(sep + key)
        sep = "," + inner
        if isinstance(v, _CONTAINERS):
            _encode(v, depth + 1, out)
        else:
            out.append(_scalar(v))
    out.append(outer + closing)


def dumps(data: Any) -> str:
    """``json.dumps(data, indent=2, ensure_ascii=False, default=str)``."""
    out: list[str] = []
    try:
        _encode(data, 0, out)
    except (_Unsupported, RecursionError, ValueError, TypeError):
        import json  # not plain JSON values (default=str), a circle, a key json refuses...

        return json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return "".join(out)


# -- query strings -----------------------------------------------------------------------------

_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~"


def _quote(value: str, plus: bool) -> str:
    """urllib.parse.quote(value, safe="") (quote_plus with ``plus``); UnicodeEncodeError for
    a lone surrogate."""
    b = value.encode()
    if not b.translate(None, _SAFE):
        return value
    return "".join([chr(c) if c in _SAFE else "+" if plus and c == 32 else f"%{c:02X}"
                    for c in b])


def quote(value: str) -> str:
    """``urllib.parse.quote(value, safe="")``: one path segment."""
    try:
        return _quote(value, False)
    except UnicodeEncodeError:
        from urllib.parse import quote as q  # its own error for a lone surrogate

        return q(value, safe="")


def urlencode(query: dict[str, Any]) -> str:
    """``urllib.parse.urlencode(query)`` for a dict of str keys and str (or int) values."""
    try:
        parts = []
        for k, v in query.items():
            if isinstance(k, bytes) or isinstance(v, bytes):
                raise _Unsupported
            parts.append(_quote(str(k), True) + "=" + _quote(str(v), True))
        return "&".join(parts)
    except (_Unsupported, UnicodeEncodeError):
        from urllib.parse import urlencode as ue

        return ue(query)
