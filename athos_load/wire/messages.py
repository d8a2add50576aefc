"""Typed messages: frozen dataclasses with ``serialize()``, and one ``parse_*`` function per direction.

Client commands (``join``, ``resume``, ``hangup``) and the eight SDK events, of which the server
sends six; the client makes ``connecting`` and ``reconnecting`` itself. A parser returns a message or
raises :class:`RemoteProtocolError` (:class:`UnknownMessage` for a well-formed unknown type).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import RemoteProtocolError, UnknownMessage
from .fields import dumps, loads, number, optional, typed
from .values import AudioFormat, ErrorCode, error_code


@dataclass(frozen=True, slots=True)
class Join:
    """First message of a new call: redeem the token and state the audio format."""

    token: str
    drill_key: str
    audio: AudioFormat = AudioFormat()
    type: ClassVar[str] = "join"

    def serialize(self) -> str:
        return dumps(
            {"type": self.type, "token": self.token, "drillKey": self.drill_key, "audio": self.audio.to_wire()}
        )


@dataclass(frozen=True, slots=True)
class Resume:
    """First message on a new connection after a transient drop."""

    resume_token: str
    call_id: str
    type: ClassVar[str] = "resume"

    def serialize(self) -> str:
        return dumps({"type": self.type, "resumeToken": self.resume_token, "callId": self.call_id})


@dataclass(frozen=True, slots=True)
class Hangup:
    """The rep hangs up; the server answers ``ended`` and closes normally."""

    type: ClassVar[str] = "hangup"

    def serialize(self) -> str:
        return dumps({"type": self.type})


ClientMessage = Join | Resume | Hangup


def parse_client_message(text: str | bytes) -> ClientMessage:
    """A client's text frame as a typed command, or :class:`RemoteProtocolError`."""
    obj = loads(text)
    kind = obj.get("type")
    if kind == "join":
        return Join(
            token=typed(obj, "token", str),
            drill_key=typed(obj, "drillKey", str),
            audio=AudioFormat.from_wire(obj["audio"]) if obj.get("audio") is not None else AudioFormat(),
        )
    if kind == "resume":
        return Resume(resume_token=typed(obj, "resumeToken", str), call_id=typed(obj, "callId", str))
    if kind == "hangup":
        return Hangup()
    raise RemoteProtocolError(f"type: unknown client message {kind!r}")


# SDK events. The eight names and payloads are the frontend SDK's contract; the server sends the
# ones it knows about (ready, personaSpeaking, userSpeaking, reconnected, ended, error) as text
# frames, the client makes connecting and reconnecting itself.


@dataclass(frozen=True, slots=True)
class Connecting:
    name: ClassVar[str] = "connecting"

    def payload(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Ready:
    persona_name: str
    call_id: str
    resume_token: str
    name: ClassVar[str] = "ready"

    def payload(self) -> dict[str, Any]:
        return {"persona": {"name": self.persona_name}}

    def serialize(self) -> str:
        return dumps(
            {
                "type": self.name,
                "persona": {"name": self.persona_name},
                "callId": self.call_id,
                "resumeToken": self.resume_token,
            }
        )


class Speaker(enum.StrEnum):
    PERSONA = "persona"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Speaking:
    """``personaSpeaking`` or ``userSpeaking``: one message, named by who speaks."""

    speaker: Speaker
    speaking: bool

    @property
    def name(self) -> str:
        return f"{self.speaker}Speaking"

    def payload(self) -> dict[str, Any]:
        return {"speaking": self.speaking}

    def serialize(self) -> str:
        return dumps({"type": self.name, "speaking": self.speaking})


@dataclass(frozen=True, slots=True)
class Reconnecting:
    name: ClassVar[str] = "reconnecting"

    def payload(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Reconnected:
    call_id: str = ""
    name: ClassVar[str] = "reconnected"

    def payload(self) -> None:
        return None

    def serialize(self) -> str:
        return dumps({"type": self.name, "callId": self.call_id})


@dataclass(frozen=True, slots=True)
class Ended:
    call_id: str
    duration_sec: float
    reason: str = "hangup"  # hangup | persona | max_duration | dropped | error
    name: ClassVar[str] = "ended"

    def payload(self) -> dict[str, Any]:
        return {"callId": self.call_id, "durationSec": self.duration_sec}

    def serialize(self) -> str:
        return dumps(
            {"type": self.name, "callId": self.call_id, "durationSec": self.duration_sec, "reason": self.reason}
        )


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode | str
    message: str
    name: ClassVar[str] = "error"

    def payload(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message}

    def serialize(self) -> str:
        return dumps({"type": self.name, **self.payload()})


Event = Connecting | Ready | Speaking | Reconnecting | Reconnected | Ended | Error
ServerMessage = Ready | Speaking | Reconnected | Ended | Error


def parse_server_message(text: str | bytes) -> ServerMessage:
    """A server's text frame as a typed event, or :class:`RemoteProtocolError`."""
    obj = loads(text)
    kind = obj.get("type")
    if kind == "ready":
        persona = obj.get("persona")
        if not isinstance(persona, dict):
            raise RemoteProtocolError("persona: expected object")
        return Ready(
            persona_name=typed(persona, "name", str),
            call_id=typed(obj, "callId", str),
            resume_token=typed(obj, "resumeToken", str),
        )
    if kind == "personaSpeaking" or kind == "userSpeaking":
        return Speaking(Speaker(kind[: -len("Speaking")]), typed(obj, "speaking", bool))
    if kind == "reconnected":
        return Reconnected(call_id=optional(obj, "callId", str, ""))
    if kind == "ended":
        return Ended(
            call_id=typed(obj, "callId", str),
            duration_sec=number(obj, "durationSec"),
            reason=optional(obj, "reason", str, "hangup"),
        )
    if kind == "error":
        return Error(code=error_code(typed(obj, "code", str)), message=typed(obj, "message", str))
    if isinstance(kind, str):
        raise UnknownMessage(f"type: unknown server message {kind[:40]!r}")
    raise RemoteProtocolError(f"type: expected str, got {type(kind).__name__}")
