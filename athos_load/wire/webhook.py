"""The ``call.scored`` webhook: its body, and its HMAC signature (``Athos-Signature``)."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import ClassVar

from .errors import RemoteProtocolError, SignatureError
from .fields import dumps, from_iso, iso, loads, number, typed
from .rest import CallStatus
from .values import SIGNATURE_HEADER

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """The ``call.scored`` webhook body. ``id`` is the same on every retry of one delivery."""

    id: str
    call_id: str
    score: float
    created_at: float  # unix seconds
    type: ClassVar[str] = "call.scored"

    def serialize(self) -> str:
        return dumps(
            {
                "id": self.id,
                "type": self.type,
                "createdAt": iso(self.created_at),
                "data": {"callId": self.call_id, "score": self.score, "status": CallStatus.SCORED.value},
            }
        )

    @classmethod
    def parse(cls, text: str | bytes) -> ScoredEvent:
        obj = loads(text)
        if obj.get("type") != cls.type:
            raise RemoteProtocolError(f"type: expected {cls.type!r}, got {obj.get('type')!r}")
        data = obj.get("data")
        if not isinstance(data, dict):
            raise RemoteProtocolError("data: expected object")
        return cls(
            id=typed(obj, "id", str),
            call_id=typed(data, "callId", str),
            score=number(data, "score"),
            created_at=from_iso(typed(obj, "createdAt", str)),
        )


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Athos-Signature`` header value: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: str, header: str | None, body: bytes, now: float, tolerance: float = 300.0) -> int:
    """Check a delivery's signature and freshness; return its timestamp or raise SignatureError.

    ``now`` is wall-clock unix time (the timestamp is the sender's wall clock).
    """
    if not header:
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} has no valid t=") from None
    signatures = [v for v in parts.get("v1", []) if _HEX64.fullmatch(v)]  # several while a secret rotates
    if not signatures:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} has no v1= of 64 hex digits")
    expected = sign_webhook(secret, timestamp, body).rpartition("v1=")[2]
    if not any(hmac.compare_digest(expected, v) for v in signatures):
        raise SignatureError("bad_signature", "signature does not match the body")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale", f"timestamp {timestamp} is {now - timestamp:.0f}s from now")
    return timestamp
