"""A job given as a dict, written as the TOML the engine reads.

Only what a job file holds: tables, arrays of tables (``[[rules]]``),
strings, integers, floats, booleans, lists of those, and dates or
datetimes (written as the strings the job file takes). ``None`` is refused:
leave the key out instead.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any, Mapping

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: Any, where: str) -> str:
    if not isinstance(k, str):
        raise TypeError(f"{where}: keys must be strings, not {type(k).__name__}")
    return k if _BARE.match(k) else _string(k)


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(v: Any, where: str) -> str:
    if v is None:
        raise TypeError(f"{where}: None is not a value a job takes; leave the key out")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, _dt.datetime):
        return _string(v.isoformat())
    if isinstance(v, _dt.date):
        return _string(v.isoformat())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, f"{where}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, Mapping):
        inner = ", ".join(
            f"{_key(k, where)} = {_value(x, f'{where}.{k}')}" for k, x in v.items()
        )
        return "{" + inner + "}"
    raise TypeError(f"{where}: a job cannot hold a {type(v).__name__}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _table(out: list[str], path: list[str], table: Mapping[str, Any]) -> None:
    where = ".".join(path) or "job"
    scalars, tables, arrays = [], [], []
    for k, v in table.items():
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif _is_table_array(v):
            arrays.append((k, v))
        else:
            scalars.append((k, v))
    for k, v in scalars:
        out.append(f"{_key(k, where)} = {_value(v, f'{where}.{k}' if path else k)}")
    for k, v in tables:
        sub = path + [_key(k, where)]
        out.append("")
        out.append("[" + ".".join(sub) + "]")
        _table(out, sub, v)
    for k, items in arrays:
        sub = path + [_key(k, where)]
        for item in items:
            out.append("")
            out.append("[[" + ".".join(sub) + "]]")
            _table(out, sub, item)


def dumps(spec: Mapping[str, Any]) -> str:
    """The job ``spec`` as TOML text."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"a job is a dict of tables, not a {type(spec).__name__}")
    out: list[str] = []
    _table(out, [], spec)
    return "\n".join(out).lstrip("\n") + "\n"
