"""REST bodies: minting a session token, error answers, call records and the change list."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError
from .fields import dumps, from_iso, iso, json_object, loads, number, optional, optional_number, typed
from .messages import Error
from .values import ErrorCode, error_code


@dataclass(frozen=True, slots=True)
class MintRequest:
    """``POST /v1/sessions`` body. ``webhook_url`` is a simulator extension (see docs)."""

    drill_key: str
    webhook_url: str | None = None

    def serialize(self) -> str:
        body: dict[str, Any] = {"drillKey": self.drill_key}
        if self.webhook_url:
            body["webhookUrl"] = self.webhook_url
        return dumps(body)

    @classmethod
    def parse(cls, text: str | bytes) -> MintRequest:
        obj = loads(text)
        url = obj.get("webhookUrl")
        if url is not None and not isinstance(url, str):
            raise RemoteProtocolError("webhookUrl: expected str")
        return cls(drill_key=typed(obj, "drillKey", str), webhook_url=url)


@dataclass(frozen=True, slots=True)
class MintResponse:
    token: str
    expires_at: float  # unix seconds; on the wire an ISO-8601 UTC string

    def serialize(self) -> str:
        return dumps({"token": self.token, "expiresAt": iso(self.expires_at)})

    @classmethod
    def parse(cls, text: str | bytes) -> MintResponse:
        obj = loads(text)
        return cls(token=typed(obj, "token", str), expires_at=from_iso(typed(obj, "expiresAt", str)))


def error_body(code: ErrorCode | str, message: str) -> str:
    """The JSON body of every non-2xx REST answer."""
    return dumps({"error": {"code": str(code), "message": message}})


def parse_error_body(text: str | bytes) -> Error:
    try:
        obj = loads(text)["error"]
        return Error(error_code(typed(obj, "code", str)), typed(obj, "message", str))
    except (RemoteProtocolError, KeyError, TypeError):
        return Error(ErrorCode.REMOTE_PROTOCOL, f"unparseable error body: {text[:200]!r}")


class CallStatus(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    SCORING = "scoring"  # ended, waiting for a scorer
    SCORED = "scored"


@dataclass(frozen=True, slots=True)
class Segment:
    """One diarized transcript segment, seconds from the start of the call."""

    speaker: str  # "rep" | "persona"
    start: float
    end: float
    text: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"speaker": self.speaker, "start": self.start, "end": self.end, "text": self.text}

    @classmethod
    def from_wire(cls, obj: Any) -> Segment:
        obj = json_object(obj, "transcript segment")
        return cls(
            speaker=typed(obj, "speaker", str),
            start=number(obj, "start"),
            end=number(obj, "end"),
            text=optional(obj, "text", str, ""),
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """``GET /v1/calls/:id``; the list endpoint returns the same objects without transcripts."""

    id: str
    status: CallStatus
    drill_key: str
    duration_sec: float | None = None
    score: float | None = None
    ended_at: float | None = None  # unix seconds
    scored_at: float | None = None
    transcript: tuple[Segment, ...] = ()

    def to_wire(self, with_transcript: bool = True) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "drillKey": self.drill_key,
            "durationSec": self.duration_sec,
            "score": self.score,
            "endedAt": iso(self.ended_at) if self.ended_at is not None else None,
            "scoredAt": iso(self.scored_at) if self.scored_at is not None else None,
        }
        if with_transcript:
            obj["transcript"] = [s.to_wire() for s in self.transcript]
        return obj

    @classmethod
    def from_wire(cls, obj: Any) -> CallRecord:
        obj = json_object(obj, "call")
        try:
            status = CallStatus(typed(obj, "status", str))
        except ValueError:
            raise RemoteProtocolError(f"status: unknown {str(obj.get('status'))[:40]!r}") from None
        ended, scored = optional(obj, "endedAt", str, ""), optional(obj, "scoredAt", str, "")
        return cls(
            id=typed(obj, "id", str),
            status=status,
            drill_key=optional(obj, "drillKey", str, ""),
            duration_sec=optional_number(obj, "durationSec"),
            score=optional_number(obj, "score"),
            ended_at=from_iso(ended) if ended else None,
            scored_at=from_iso(scored) if scored else None,
            transcript=tuple(Segment.from_wire(s) for s in optional(obj, "transcript", list, [])),
        )


def parse_call(text: str | bytes) -> CallRecord:
    return CallRecord.from_wire(loads(text))


def parse_call_list(text: str | bytes) -> tuple[list[CallRecord], str | None]:
    """``GET /v1/calls`` → the calls and the cursor to pass as ``after`` next time."""
    obj = loads(text)
    calls = obj.get("calls")
    if not isinstance(calls, list):
        raise RemoteProtocolError("calls: expected list")
    return [CallRecord.from_wire(c) for c in calls], optional(obj, "cursor", str, None)


def call_list_body(calls: list[CallRecord], cursor: str | None) -> str:
    return dumps({"calls": [c.to_wire(with_transcript=False) for c in calls], "cursor": cursor})
