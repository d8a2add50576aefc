"""The Athos reference wire protocol, in one place, with no sockets and no clock.

Everything a client or the simulator puts on the wire is shaped here, so a platform build that
speaks differently is adapted in this module only. ``docs/protocol.md`` is the prose version.

Layers (the sans-I/O pattern of the ``websockets`` library):

* wire values: :class:`AudioFormat`, :class:`ErrorCode`, the REST bodies and the webhook signature;
* messages: frozen dataclasses with ``serialize()`` and a ``parse_*`` function per direction;
* :class:`ClientProtocol`: the call's lifecycle as seen by a client, driven by the I/O layer.
  Text in through :meth:`ClientProtocol.receive_text`, commands through ``connect``/``resume``/
  ``hangup``; out come SDK events (:meth:`events_received`) and text to send (:meth:`data_to_send`).
  Every method takes ``now`` (a monotonic time) from its caller; this module never reads a clock.

Exceptions::

    ProtocolError
    ├── LocalProtocolError    we broke the protocol (a command in the wrong state)
    ├── RemoteProtocolError   the peer sent something unparseable or out of place
    └── SignatureError        a webhook whose signature, timestamp or body does not check out
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# -- paths -----------------------------------------------------------------------------------------

PATH_SESSIONS = "/v1/sessions"
PATH_REALTIME = "/v1/realtime"
PATH_CALLS = "/v1/calls"
CURSOR_NOW = "now"  # GET /v1/calls?after=now: no calls, and the cursor of the newest change
PATH_WEBHOOK = "/webhooks/athos"  # where athos-load's receiver takes call.scored
SIGNATURE_HEADER = "Athos-Signature"
EVENT_ID_HEADER = "Athos-Event-Id"
CALL_ID_PREFIX = "athos_call_"
SDK_EVENTS = (
    "connecting",
    "ready",
    "personaSpeaking",
    "userSpeaking",
    "reconnecting",
    "reconnected",
    "ended",
    "error",
)


# -- errors ----------------------------------------------------------------------------------------


class ProtocolError(Exception):
    """Root of this module's exceptions."""


class LocalProtocolError(ProtocolError):
    """We broke the protocol: a command that the call's state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: bad JSON, an unknown message, a missing field."""


class UnknownMessage(RemoteProtocolError):
    """A well-formed message of a type this version does not know: a newer peer may send one."""


class SignatureError(ProtocolError):
    """A webhook delivery that must be rejected; ``reason`` is a short stable label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ErrorCode(enum.StrEnum):
    """Codes carried by ``error`` events. Branch on these, never on the message."""

    # sent by the platform (documented in docs/protocol.md)
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REDEEMED = "token_redeemed"
    UNKNOWN_DRILL = "unknown_drill"
    BAD_AUDIO_FORMAT = "bad_audio_format"
    UNKNOWN_CALL = "unknown_call"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMIT = "concurrency_limit"
    UNAUTHORIZED = "unauthorized"
    INTERNAL_ERROR = "internal_error"
    PROTOCOL_ERROR = "protocol_error"
    # raised by the client itself
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    RECONNECT_FAILED = "reconnect_failed"
    REMOTE_PROTOCOL = "remote_protocol"
    NO_REPLY = "no_reply"


SERVER_ERROR_CODES = frozenset(
    {
        ErrorCode.TOKEN_INVALID,
        ErrorCode.TOKEN_EXPIRED,
        ErrorCode.TOKEN_REDEEMED,
        ErrorCode.UNKNOWN_DRILL,
        ErrorCode.BAD_AUDIO_FORMAT,
        ErrorCode.UNKNOWN_CALL,
        ErrorCode.RATE_LIMITED,
        ErrorCode.CONCURRENCY_LIMIT,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.PROTOCOL_ERROR,
    }
)
# HTTP status for each error code a REST endpoint can answer with.
HTTP_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.UNKNOWN_DRILL: 404,
    ErrorCode.UNKNOWN_CALL: 404,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PROTOCOL_ERROR: 400,
    ErrorCode.INTERNAL_ERROR: 500,
}


def error_code(value: str) -> ErrorCode | str:
    """The enum member for a known code, the raw string otherwise (a newer platform build)."""
    try:
        return ErrorCode(value)
    except ValueError:
        return value


class CloseCode(enum.IntEnum):
    """WebSocket close codes the reference protocol uses."""

    NORMAL = 1000  # the call ended
    GOING_AWAY = 1001  # server shutting down: resumable
    POLICY = 1008  # after an ``error`` event that ends the connection
    INTERNAL = 1011  # server fault: resumable


RESUMABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})


# -- audio -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """The audio both directions carry in binary frames. The default is what Athos web clients send."""

    encoding: str = "pcm16le"
    sample_rate: int = 16000
    channels: int = 1
    frame_ms: int = 20

    ENCODINGS: ClassVar[frozenset[str]] = frozenset({"pcm16le"})
    SAMPLE_RATES: ClassVar[frozenset[int]] = frozenset({8000, 16000, 24000, 48000})
    FRAME_MS: ClassVar[frozenset[int]] = frozenset({10, 20, 40, 60, 100})

    @property
    def bytes_per_sample(self) -> int:
        return 2 * self.channels

    @property
    def frame_samples(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_bytes(self) -> int:
        return self.frame_samples * self.bytes_per_sample

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000.0

    def check(self) -> None:
        """Raise ``ValueError`` naming the field if the platform does not accept this format."""
        if self.encoding not in self.ENCODINGS:
            raise ValueError(f"encoding {self.encoding!r} not supported (use pcm16le)")
        if self.sample_rate not in self.SAMPLE_RATES:
            raise ValueError(f"sampleRate {self.sample_rate} not in {sorted(self.SAMPLE_RATES)}")
        if self.channels != 1:
            raise ValueError(f"channels {self.channels} not supported (mono only)")
        if self.frame_ms not in self.FRAME_MS:
            raise ValueError(f"frameMs {self.frame_ms} not in {sorted(self.FRAME_MS)}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "sampleRate": self.sample_rate,
            "channels": self.channels,
            "frameMs": self.frame_ms,
        }

    @classmethod
    def from_wire(cls, obj: Any) -> AudioFormat:
        if not isinstance(obj, dict):
            raise RemoteProtocolError("audio must be an object")
        try:
            return cls(
                encoding=_typed(obj, "encoding", str),
                sample_rate=_typed(obj, "sampleRate", int),
                channels=_typed(obj, "channels", int),
                frame_ms=_typed(obj, "frameMs", int),
            )
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"audio.{exc}") from None


# -- messages --------------------------------------------------------------------------------------


def _typed(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]``, checked against ``kind``; bool is not accepted where a number is expected."""
    if key not in obj:
        raise RemoteProtocolError(f"{key}: missing")
    value = obj[key]
    if isinstance(value, bool) and kind is not bool:
        raise RemoteProtocolError(f"{key}: expected {_kind_name(kind)}, got bool")
    if not isinstance(value, kind):
        raise RemoteProtocolError(f"{key}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """``obj[key]`` when present and not null, checked against ``kind``; else ``default``."""
    if obj.get(key) is None:
        return default
    return _typed(obj, key, kind)


def _number(obj: dict[str, Any], key: str) -> float:
    """A finite number: a 400-digit integer or an infinity is the peer's error, not an OverflowError."""
    value = _typed(obj, key, (int, float))
    try:
        number = float(value)
    except OverflowError:
        raise RemoteProtocolError(f"{key}: number out of range") from None
    if not math.isfinite(number):
        raise RemoteProtocolError(f"{key}: not a finite number")
    return number


def _optional_number(obj: dict[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: expected object, got {type(value).__name__}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _loads(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise RemoteProtocolError("not JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message must be a JSON object")
    return obj


# Client → server commands (text frames).


@dataclass(frozen=True, slots=True)
class Join:
    """First message of a new call: redeem the token and state the audio format."""

    token: str
    drill_key: str
    audio: AudioFormat = AudioFormat()
    type: ClassVar[str] = "join"

    def serialize(self) -> str:
        return _dumps(
            {"type": self.type, "token": self.token, "drillKey": self.drill_key, "audio": self.audio.to_wire()}
        )


@dataclass(frozen=True, slots=True)
class Resume:
    """First message on a new connection after a transient drop."""

    resume_token: str
    call_id: str
    type: ClassVar[str] = "resume"

    def serialize(self) -> str:
        return _dumps({"type": self.type, "resumeToken": self.resume_token, "callId": self.call_id})


@dataclass(frozen=True, slots=True)
class Hangup:
    """The rep hangs up; the server answers ``ended`` and closes normally."""

    type: ClassVar[str] = "hangup"

    def serialize(self) -> str:
        return _dumps({"type": self.type})


ClientMessage = Join | Resume | Hangup


def parse_client_message(text: str | bytes) -> ClientMessage:
    """A client's text frame as a typed command, or :class:`RemoteProtocolError`."""
    obj = _loads(text)
    kind = obj.get("type")
    if kind == "join":
        return Join(
            token=_typed(obj, "token", str),
            drill_key=_typed(obj, "drillKey", str),
            audio=AudioFormat.from_wire(obj["audio"]) if obj.get("audio") is not None else AudioFormat(),
        )
    if kind == "resume":
        return Resume(resume_token=_typed(obj, "resumeToken", str), call_id=_typed(obj, "callId", str))
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
        return _dumps(
            {
                "type": self.name,
                "persona": {"name": self.persona_name},
                "callId": self.call_id,
                "resumeToken": self.resume_token,
            }
        )


@dataclass(frozen=True, slots=True)
class PersonaSpeaking:
    speaking: bool
    name: ClassVar[str] = "personaSpeaking"

    def payload(self) -> dict[str, Any]:
        return {"speaking": self.speaking}

    def serialize(self) -> str:
        return _dumps({"type": self.name, "speaking": self.speaking})


@dataclass(frozen=True, slots=True)
class UserSpeaking:
    speaking: bool
    name: ClassVar[str] = "userSpeaking"

    def payload(self) -> dict[str, Any]:
        return {"speaking": self.speaking}

    def serialize(self) -> str:
        return _dumps({"type": self.name, "speaking": self.speaking})


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
        return _dumps({"type": self.name, "callId": self.call_id})


@dataclass(frozen=True, slots=True)
class Ended:
    call_id: str
    duration_sec: float
    reason: str = "hangup"  # hangup | persona | max_duration | dropped | error
    name: ClassVar[str] = "ended"

    def payload(self) -> dict[str, Any]:
        return {"callId": self.call_id, "durationSec": self.duration_sec}

    def serialize(self) -> str:
        return _dumps(
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
        return _dumps({"type": self.name, **self.payload()})


Event = Connecting | Ready | PersonaSpeaking | UserSpeaking | Reconnecting | Reconnected | Ended | Error
ServerMessage = Ready | PersonaSpeaking | UserSpeaking | Reconnected | Ended | Error


def parse_server_message(text: str | bytes) -> ServerMessage:
    """A server's text frame as a typed event, or :class:`RemoteProtocolError`."""
    obj = _loads(text)
    kind = obj.get("type")
    if kind == "ready":
        persona = obj.get("persona")
        if not isinstance(persona, dict):
            raise RemoteProtocolError("persona: expected object")
        return Ready(
            persona_name=_typed(persona, "name", str),
            call_id=_typed(obj, "callId", str),
            resume_token=_typed(obj, "resumeToken", str),
        )
    if kind == "personaSpeaking":
        return PersonaSpeaking(speaking=_typed(obj, "speaking", bool))
    if kind == "userSpeaking":
        return UserSpeaking(speaking=_typed(obj, "speaking", bool))
    if kind == "reconnected":
        return Reconnected(call_id=_optional(obj, "callId", str, ""))
    if kind == "ended":
        return Ended(
            call_id=_typed(obj, "callId", str),
            duration_sec=_number(obj, "durationSec"),
            reason=_optional(obj, "reason", str, "hangup"),
        )
    if kind == "error":
        return Error(code=error_code(_typed(obj, "code", str)), message=_typed(obj, "message", str))
    if isinstance(kind, str):
        raise UnknownMessage(f"type: unknown server message {kind[:40]!r}")
    raise RemoteProtocolError(f"type: expected str, got {type(kind).__name__}")


# -- the call's lifecycle, as a client sees it ------------------------------------------------------


class CallState(enum.Enum):
    IDLE = "idle"  # created, connect() not called
    CONNECTING = "connecting"  # join sent, waiting for ready
    READY = "ready"  # in the call
    RECONNECTING = "reconnecting"  # dropped; resuming
    HANGING_UP = "hanging_up"  # hangup sent, waiting for ended
    ENDED = "ended"  # ended event emitted
    FAILED = "failed"  # join refused or failed before ready; no call to end


# (state, what happened) -> next state. What happened is an SDK event name or a client command.
# A pair missing from the table is a protocol error naming the state and the event.
TRANSITIONS: dict[tuple[CallState, str], CallState] = {
    (CallState.IDLE, "connect"): CallState.CONNECTING,
    (CallState.CONNECTING, "ready"): CallState.READY,
    (CallState.CONNECTING, "error"): CallState.FAILED,
    (CallState.CONNECTING, "lost"): CallState.FAILED,
    (CallState.READY, "personaSpeaking"): CallState.READY,
    (CallState.READY, "userSpeaking"): CallState.READY,
    (CallState.READY, "error"): CallState.READY,  # a non-fatal domain error; the call goes on
    (CallState.READY, "lost"): CallState.RECONNECTING,
    (CallState.READY, "hangup"): CallState.HANGING_UP,
    (CallState.READY, "ended"): CallState.ENDED,
    (CallState.RECONNECTING, "resume"): CallState.RECONNECTING,
    (CallState.RECONNECTING, "reconnected"): CallState.READY,
    (CallState.RECONNECTING, "error"): CallState.ENDED,  # resume refused: error, then ended
    (CallState.RECONNECTING, "lost"): CallState.RECONNECTING,
    (CallState.RECONNECTING, "ended"): CallState.ENDED,
    (CallState.RECONNECTING, "hangup"): CallState.HANGING_UP,  # told once a resume gets through
    (CallState.HANGING_UP, "personaSpeaking"): CallState.HANGING_UP,
    (CallState.HANGING_UP, "userSpeaking"): CallState.HANGING_UP,
    (CallState.HANGING_UP, "resume"): CallState.HANGING_UP,  # resumed only to hang up
    (CallState.HANGING_UP, "reconnected"): CallState.HANGING_UP,
    (CallState.HANGING_UP, "ended"): CallState.ENDED,
    (CallState.HANGING_UP, "error"): CallState.HANGING_UP,
    (CallState.HANGING_UP, "lost"): CallState.ENDED,  # hung up and gone: the call is over
}
# States from which a lost connection means the call is gone rather than resumable.
TERMINAL_STATES = frozenset({CallState.ENDED, CallState.FAILED})


@dataclass(slots=True)
class ClientProtocol:
    """The client half of a call: commands in, SDK events and text frames out.

    The I/O layer owns the socket: it sends what :meth:`data_to_send` returns, feeds every text
    frame to :meth:`receive_text`, tells :meth:`connection_lost` when the socket closes, and calls
    :meth:`resume` once a new socket is open after a drop. Audio frames bypass this object (they
    carry no state); :attr:`can_send_audio` says when they may flow.
    """

    token: str
    drill_key: str
    audio: AudioFormat = field(default_factory=AudioFormat)
    state: CallState = CallState.IDLE
    call_id: str | None = None
    resume_token: str | None = None
    persona_name: str | None = None
    ready_at: float | None = None
    end_reason: str | None = None
    error: Error | None = None  # the last error event, kept for the caller to read
    hangup_unsent: bool = False  # hung up during a drop: the hangup goes out right after a resume
    unknown_messages: int = 0  # well-formed messages of types this version does not know, ignored
    _events: list[Event] = field(default_factory=list)
    _outgoing: list[str] = field(default_factory=list)

    # -- output ----------------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """The SDK events produced since the last call, in order; hands over the buffer."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[str]:
        """Text frames to send, in order; hands over the buffer."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def can_send_audio(self) -> bool:
        return self.state is CallState.READY

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def wants_resume(self) -> bool:
        """The connection is down and the call needs one: to go on, or to deliver its hangup."""
        return self.state is CallState.RECONNECTING or (self.state is CallState.HANGING_UP and self.hangup_unsent)

    # -- commands --------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        self._step("connect")
        self._events.append(Connecting())
        self._outgoing.append(Join(self.token, self.drill_key, self.audio).serialize())

    def resume(self, now: float) -> None:
        """A new socket is open after a drop: ask the server to resume the call."""
        self._step("resume")
        assert self.resume_token is not None and self.call_id is not None
        self._outgoing.append(Resume(self.resume_token, self.call_id).serialize())
        if self.hangup_unsent:  # the platform keeps a dropped call for its resume window: end it now
            self.hangup_unsent = False
            self._outgoing.append(Hangup().serialize())

    def hangup(self, now: float) -> None:
        """Ask the server to end the call. During a drop it is sent right after the next resume."""
        reconnecting = self.state is CallState.RECONNECTING
        self._step("hangup")
        if reconnecting:
            self.hangup_unsent = True
        else:
            self._outgoing.append(Hangup().serialize())

    def fail(self, now: float, code: ErrorCode | str, message: str) -> None:
        """The I/O layer gives up (connect failed, resume attempts exhausted, a deadline passed).

        Emits ``error`` and, if a call was in progress, ``ended``.
        """
        if self.finished:
            return
        err = Error(code, message)
        self.error = err
        self._events.append(err)
        if self.call_id is None:
            self.state = CallState.FAILED
        else:
            self._end(now, "error")

    # -- input -----------------------------------------------------------------------------------

    def receive_text(self, text: str | bytes, now: float) -> None:
        """Feed one text frame. A malformed or out-of-place message fails the call, never raises;
        a message of an unknown type is counted (:attr:`unknown_messages`) and ignored."""
        try:
            message = parse_server_message(text)
            self._receive(message, now)
        except UnknownMessage:
            self.unknown_messages += 1
        except RemoteProtocolError as exc:
            self.fail(now, ErrorCode.REMOTE_PROTOCOL, str(exc))
        except Exception as exc:  # a parser bug must still end in an error code, not a dead reader
            self.fail(now, ErrorCode.REMOTE_PROTOCOL, f"unreadable message ({type(exc).__name__}: {exc})"[:300])

    def connection_lost(self, now: float, resumable: bool = True) -> None:
        """The socket closed. A drop during the call is resumable; other closes end things."""
        if self.finished:
            return
        if self.state is CallState.CONNECTING:
            self.fail(now, ErrorCode.CONNECT_FAILED, "connection closed before ready")
            return
        if self.state in (CallState.READY, CallState.RECONNECTING) and resumable:
            was_ready = self.state is CallState.READY
            self._step("lost")
            if was_ready:
                self._events.append(Reconnecting())
            return
        if self.state is CallState.HANGING_UP and not (resumable and self.hangup_unsent):
            self._step("lost")
            self._end(now, "hangup")
            return
        if self.state is CallState.HANGING_UP:
            return  # still dropped, hangup not yet delivered: the next resume carries it
        self.fail(now, ErrorCode.RECONNECT_FAILED, "connection closed and not resumable")

    def _receive(self, message: ServerMessage, now: float) -> None:
        if isinstance(message, Error):
            self.error = message
            self._step("error")
            self._events.append(message)
            if self.state is CallState.ENDED:  # a refused resume ends the call
                self._end(now, "error")
            return
        self._step(message.name)
        if isinstance(message, Ready):
            self.call_id = message.call_id
            self.resume_token = message.resume_token
            self.persona_name = message.persona_name
            self.ready_at = now
        elif isinstance(message, Ended):
            self.end_reason = message.reason
        self._events.append(message)

    # -- internals -------------------------------------------------------------------------------

    def _step(self, what: str) -> None:
        try:
            self.state = TRANSITIONS[(self.state, what)]
        except KeyError:
            error = LocalProtocolError if what in ("connect", "resume", "hangup") else RemoteProtocolError
            raise error(f"{what!r} not allowed in state {self.state.value}") from None

    def _end(self, now: float, reason: str) -> None:
        """Emit ``ended`` from the client side, when the server can no longer say it."""
        self.state = CallState.ENDED
        self.end_reason = reason
        duration = 0.0 if self.ready_at is None else max(0.0, now - self.ready_at)
        self._events.append(Ended(self.call_id or "", round(duration, 3), reason))


# -- REST bodies -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MintRequest:
    """``POST /v1/sessions`` body. ``webhook_url`` is a simulator extension (see docs)."""

    drill_key: str
    webhook_url: str | None = None

    def serialize(self) -> str:
        body: dict[str, Any] = {"drillKey": self.drill_key}
        if self.webhook_url:
            body["webhookUrl"] = self.webhook_url
        return _dumps(body)

    @classmethod
    def parse(cls, text: str | bytes) -> MintRequest:
        obj = _loads(text)
        url = obj.get("webhookUrl")
        if url is not None and not isinstance(url, str):
            raise RemoteProtocolError("webhookUrl: expected str")
        return cls(drill_key=_typed(obj, "drillKey", str), webhook_url=url)


@dataclass(frozen=True, slots=True)
class MintResponse:
    token: str
    expires_at: float  # unix seconds; on the wire an ISO-8601 UTC string

    def serialize(self) -> str:
        return _dumps({"token": self.token, "expiresAt": _iso(self.expires_at)})

    @classmethod
    def parse(cls, text: str | bytes) -> MintResponse:
        obj = _loads(text)
        return cls(token=_typed(obj, "token", str), expires_at=_from_iso(_typed(obj, "expiresAt", str)))


def error_body(code: ErrorCode | str, message: str) -> str:
    """The JSON body of every non-2xx REST answer."""
    return _dumps({"error": {"code": str(code), "message": message}})


def parse_error_body(text: str | bytes) -> Error:
    try:
        obj = _loads(text)["error"]
        return Error(error_code(_typed(obj, "code", str)), _typed(obj, "message", str))
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
        obj = _object(obj, "transcript segment")
        return cls(
            speaker=_typed(obj, "speaker", str),
            start=_number(obj, "start"),
            end=_number(obj, "end"),
            text=_optional(obj, "text", str, ""),
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
            "endedAt": _iso(self.ended_at) if self.ended_at is not None else None,
            "scoredAt": _iso(self.scored_at) if self.scored_at is not None else None,
        }
        if with_transcript:
            obj["transcript"] = [s.to_wire() for s in self.transcript]
        return obj

    @classmethod
    def from_wire(cls, obj: Any) -> CallRecord:
        obj = _object(obj, "call")
        try:
            status = CallStatus(_typed(obj, "status", str))
        except ValueError:
            raise RemoteProtocolError(f"status: unknown {str(obj.get('status'))[:40]!r}") from None
        ended, scored = _optional(obj, "endedAt", str, ""), _optional(obj, "scoredAt", str, "")
        return cls(
            id=_typed(obj, "id", str),
            status=status,
            drill_key=_optional(obj, "drillKey", str, ""),
            duration_sec=_optional_number(obj, "durationSec"),
            score=_optional_number(obj, "score"),
            ended_at=_from_iso(ended) if ended else None,
            scored_at=_from_iso(scored) if scored else None,
            transcript=tuple(Segment.from_wire(s) for s in _optional(obj, "transcript", list, [])),
        )


def parse_call(text: str | bytes) -> CallRecord:
    return CallRecord.from_wire(_loads(text))


def parse_call_list(text: str | bytes) -> tuple[list[CallRecord], str | None]:
    """``GET /v1/calls`` → the calls and the cursor to pass as ``after`` next time."""
    obj = _loads(text)
    calls = obj.get("calls")
    if not isinstance(calls, list):
        raise RemoteProtocolError("calls: expected list")
    return [CallRecord.from_wire(c) for c in calls], _optional(obj, "cursor", str, None)


def call_list_body(calls: list[CallRecord], cursor: str | None) -> str:
    return _dumps({"calls": [c.to_wire(with_transcript=False) for c in calls], "cursor": cursor})


# -- the call.scored webhook -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """The ``call.scored`` webhook body. ``id`` is the same on every retry of one delivery."""

    id: str
    call_id: str
    score: float
    created_at: float  # unix seconds
    type: ClassVar[str] = "call.scored"

    def serialize(self) -> str:
        return _dumps(
            {
                "id": self.id,
                "type": self.type,
                "createdAt": _iso(self.created_at),
                "data": {"callId": self.call_id, "score": self.score, "status": CallStatus.SCORED.value},
            }
        )

    @classmethod
    def parse(cls, text: str | bytes) -> ScoredEvent:
        obj = _loads(text)
        if obj.get("type") != cls.type:
            raise RemoteProtocolError(f"type: expected {cls.type!r}, got {obj.get('type')!r}")
        data = obj.get("data")
        if not isinstance(data, dict):
            raise RemoteProtocolError("data: expected object")
        return cls(
            id=_typed(obj, "id", str),
            call_id=_typed(data, "callId", str),
            score=_number(data, "score"),
            created_at=_from_iso(_typed(obj, "createdAt", str)),
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
    expected = sign_webhook(secret, timestamp, body).rpartition("v1=")[2].encode()
    # bytes, not str: compare_digest refuses non-ASCII text, and a header may hold anything
    if not any(hmac.compare_digest(expected, v.encode("utf-8", "replace")) for v in parts.get("v1", [])):
        raise SignatureError("bad_signature", "signature does not match the body")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("stale", f"timestamp {timestamp} is {now - timestamp:.0f}s from now")
    return timestamp


# -- time on the wire ------------------------------------------------------------------------------


def _iso(unix: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _from_iso(text: str) -> float:
    from datetime import datetime

    if not isinstance(text, str):
        raise RemoteProtocolError(f"expected an ISO-8601 time string, got {type(text).__name__}")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        raise RemoteProtocolError(f"not an ISO-8601 time: {text[:40]!r}") from None
