"""Reading and writing JSON fields on the wire: every reader turns bad input into
:class:`RemoteProtocolError` naming the field, never another exception (fuzzed in
``tests/test_fuzz_parsers.py``).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from .errors import RemoteProtocolError


def typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]``, checked against ``kind``; bool is not accepted where a number is expected."""
    if key not in obj:
        raise RemoteProtocolError(f"{key}: missing")
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise RemoteProtocolError(f"{key}: expected {_kind_name(kind)}, got bool")
    if not isinstance(value, kind):
        raise RemoteProtocolError(f"{key}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def optional(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``obj[key]`` when present and not null, checked against ``kind``; else ``default``."""
    if obj.get(key) is None:
        return default
    return typed(obj, key, kind)


def number(obj: dict[str, Any], key: str) -> float:
    """A finite number: a 400-digit integer or an infinity is the peer's error, not an OverflowError."""
    value = typed(obj, key, (int, float))
    try:
        result = float(value)
    except OverflowError:
        raise RemoteProtocolError(f"{key}: number out of range") from None
    if not math.isfinite(result):
        raise RemoteProtocolError(f"{key}: not a finite number")
    return result


def optional_number(obj: dict[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else number(obj, key)


def json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: expected object, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def loads(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError("not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message must be a JSON object")
    return obj


# Times are ISO-8601 UTC strings on the wire and unix seconds in the code.


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> float:
    if not isinstance(text, str):
        raise RemoteProtocolError(f"expected an ISO-8601 time string, got {type(text).__name__}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        raise RemoteProtocolError(f"not an ISO-8601 time: {text[:40]!r}") from None
