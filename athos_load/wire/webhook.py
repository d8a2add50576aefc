"""The ``call.scored`` webhook as the public contract has it: a thin body that names the call (never
its score), signed in ``X-Athos-Signature`` with HMAC-SHA256 over ``"<t>.<raw body>"``."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import RemoteProtocolError, SignatureError
from .fields import dumps, from_iso, iso, loads, optional, typed
from .values import SIGNATURE_HEADER, SOURCE_ROLEPLAY

_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_UNIX = re.compile(r"[0-9]{1,12}", re.ASCII)  # a unix time in seconds; anything longer is no timestamp
# Why scoring failed (success false). The list is append-only: a reason this version does not know
# is kept as sent in the event and counted as ``other`` in metric labels (low cardinality).
SCORE_FAILURE_REASONS = frozenset({"SCORING_INCOMPLETE"})


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """The ``call.scored`` body. ``success`` false: the call will never be scored (``reason`` says why)."""

    call_id: str
    success: bool
    occurred_at: float  # unix seconds
    agent_id: str = ""
    agency_id: str = ""
    platform_agent_id: str | None = None
    platform_agency_id: str | None = None
    request_id: str = ""
    reason: str | None = None
    reason_message: str | None = None
    source: str = SOURCE_ROLEPLAY
    event: ClassVar[str] = "call.scored"

    def serialize(self) -> str:
        body: dict[str, Any] = {
            "event": self.event,
            "success": self.success,
            "callId": self.call_id,
            "source": self.source,
            "agentId": self.agent_id,
            "agencyId": self.agency_id,
            "platformAgentId": self.platform_agent_id,
            "platformAgencyId": self.platform_agency_id,
            "occurredAt": iso(self.occurred_at),
            "requestId": self.request_id,
        }
        if not self.success:
            body["reason"] = self.reason or ""
            body["reasonMessage"] = self.reason_message or ""
        return dumps(body)

    @classmethod
    def parse(cls, text: str | bytes) -> ScoredEvent:
        obj = loads(text)
        if obj.get("event") != cls.event:
            raise RemoteProtocolError(f"event: expected {cls.event!r}, got {str(obj.get('event'))[:40]!r}")
        success = typed(obj, "success", bool)
        return cls(
            call_id=typed(obj, "callId", str),
            success=success,
            occurred_at=from_iso(typed(obj, "occurredAt", str)),
            agent_id=optional(obj, "agentId", str, ""),
            agency_id=optional(obj, "agencyId", str, ""),
            platform_agent_id=optional(obj, "platformAgentId", str, None),
            platform_agency_id=optional(obj, "platformAgencyId", str, None),
            request_id=optional(obj, "requestId", str, ""),
            reason=None if success else optional(obj, "reason", str, "") or "unknown",
            reason_message=None if success else optional(obj, "reasonMessage", str, ""),
            source=optional(obj, "source", str, SOURCE_ROLEPLAY),
        )


def reason_label(reason: str | None) -> str:
    """A failure reason as a metric label: a documented one, else ``other``."""
    return reason if reason in SCORE_FAILURE_REASONS else "other"


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Athos-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256 of "t.body">``."""
    return f"t={timestamp},v1={_mac(secret, str(timestamp), body)}"


def _mac(secret: str, stamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_webhook(secret: str, header: str | None, body: bytes, now: float, tolerance: float = 300.0) -> int:
    """Check a delivery's signature and freshness; return its timestamp or raise SignatureError.

    ``now`` is wall-clock unix time (the timestamp is the sender's wall clock). Any ``t=`` that is
    not a plausible unix time (a 400-digit number included) is refused, never an OverflowError.
    """
    if not header:
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    stamp = parts.get("t", [""])[0]
    if not _UNIX.fullmatch(stamp):
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} has no valid t=")
    timestamp = int(stamp)
    signatures = [v for v in parts.get("v1", []) if _HEX64.fullmatch(v)]  # several while a secret rotates
    if not signatures:
        raise SignatureError("malformed", f"{SIGNATURE_HEADER} has no v1= of 64 hex digits")
    expected = _mac(secret, stamp, body)  # over t exactly as sent
    if not any(hmac.compare_digest(expected, v) for v in signatures):
        raise SignatureError("bad_signature", "signature does not match the body")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale", f"timestamp {timestamp} is {now - timestamp:.0f}s from now")
    return timestamp
