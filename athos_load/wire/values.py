"""Wire values: paths and headers, error and close codes, the audio format."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import RemoteProtocolError
from .fields import typed

# -- paths -----------------------------------------------------------------------------------------

# The External API (the public contract): every path below sits under API_BASE on the platform's host.
API_BASE = "/api/external/v1"
PATH_AGENTS = API_BASE + "/agents"  # POST: register a rep
PATH_SESSION = API_BASE + "/session"  # POST (API key): mint a session token
PATH_REDEEM = API_BASE + "/roleplay/session"  # POST (session token): redeem it, the call starts
PATH_CALLS = API_BASE + "/calls"  # GET: scored calls; GET /calls/:callId: one call's detail
PATH_REALTIME = "/v1/realtime"  # the built-in simulator's realtime WebSocket (the tool's own protocol)
PATH_WEBHOOK = "/webhooks/athos"  # where athos-load's receiver takes call.scored
REQUEST_ID_HEADER = "X-Athos-Request-Id"
SIGNATURE_HEADER = "X-Athos-Signature"
WEBHOOK_ID_HEADER = "X-Athos-Webhook-Id"
RETRY_AFTER_HEADER = "Retry-After"
CALL_ID_PREFIX = "athos_call_"
AGENT_ID_PREFIX = "athos_agent_"
AGENCY_ID_PREFIX = "athos_agency_"
REQUEST_ID_PREFIX = "req_"
SOURCE_ROLEPLAY = "roleplay"


def authority(host: str, port: int) -> str:
    """``host`` and ``port`` as a URL's authority (RFC 3986): an IPv6 address in brackets
    (``[::1]:8080``), a name or an IPv4 address as it is. Every URL the tool builds or prints uses it."""
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def realtime_url(http_url: str) -> str:
    """The realtime WebSocket URL of a platform at ``http_url``: ws(s):// on the same host, /v1/realtime."""
    return "ws" + http_url.removeprefix("http").rstrip("/") + PATH_REALTIME


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


# -- codes -----------------------------------------------------------------------------------------


class ErrorCode(enum.StrEnum):
    """The tool's one error vocabulary: what ``error`` events, REST answers and the client itself
    report. Branch on these, never on the message."""

    # the External API's codes (its error envelope) and the SDK's, as the public contract spells them
    INVALID_REQUEST = "INVALID_REQUEST"
    DRILL_NOT_FOUND = "DRILL_NOT_FOUND"
    INVALID_API_KEY = "INVALID_API_KEY"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    INVALID_TOKEN = "INVALID_TOKEN"
    API_TOKEN_EXPIRED = "TOKEN_EXPIRED"  # the session token, at redeem (TOKEN_EXPIRED is the realtime ticket's)
    TOKEN_ALREADY_USED = "TOKEN_ALREADY_USED"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    TENANT_INACTIVE = "TENANT_INACTIVE"
    TENANT_QUOTA_EXCEEDED = "TENANT_QUOTA_EXCEEDED"
    CALL_NOT_FOUND = "CALL_NOT_FOUND"
    AGENT_NOT_FOUND = "AGENT_NOT_FOUND"
    AGENT_ALREADY_EXISTS = "AGENT_ALREADY_EXISTS"
    AGENCY_NOT_FOUND = "AGENCY_NOT_FOUND"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # no persona available for the drill: a capacity signal
    API_INTERNAL_ERROR = "INTERNAL_ERROR"
    NETWORK_LOST = "NETWORK_LOST"  # the SDK's: a drop not recovered in time ended the session
    # the simulator's realtime leg (the tool's own protocol, docs/protocol.md), and a 429
    # (Athos documents no code for it)
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_REDEEMED = "token_redeemed"
    UNKNOWN_DRILL = "unknown_drill"
    BAD_AUDIO_FORMAT = "bad_audio_format"
    UNKNOWN_CALL = "unknown_call"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMIT = "concurrency_limit"
    INTERNAL_ERROR = "internal_error"
    PROTOCOL_ERROR = "protocol_error"
    # raised by the client itself
    CONNECT_FAILED = "connect_failed"
    CONNECT_TIMEOUT = "connect_timeout"
    REQUEST_TIMEOUT = "request_timeout"  # a REST answer not whole within its deadline
    HANGUP_TIMEOUT = "hangup_timeout"  # the platform never acknowledged a hang-up with ended
    RECONNECT_FAILED = "reconnect_failed"
    REMOTE_PROTOCOL = "remote_protocol"
    NO_REPLY = "no_reply"


# Codes a REST answer of the External API carries (documented by Athos), and their HTTP status.
API_ERROR_STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.DRILL_NOT_FOUND: 400,
    ErrorCode.INVALID_API_KEY: 401,
    ErrorCode.API_KEY_REVOKED: 401,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.API_TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_ALREADY_USED: 401,
    ErrorCode.IP_NOT_ALLOWED: 403,
    ErrorCode.TENANT_INACTIVE: 403,
    ErrorCode.TENANT_QUOTA_EXCEEDED: 403,
    ErrorCode.CALL_NOT_FOUND: 404,
    ErrorCode.AGENT_NOT_FOUND: 404,
    ErrorCode.AGENCY_NOT_FOUND: 404,
    ErrorCode.AGENT_ALREADY_EXISTS: 409,
    ErrorCode.API_INTERNAL_ERROR: 500,
    ErrorCode.SERVICE_UNAVAILABLE: 503,
}
API_ERROR_CODES = frozenset(API_ERROR_STATUS)
SDK_ERROR_CODES = frozenset({ErrorCode.NETWORK_LOST})  # documented by the SDK; its reference twin: reconnect_failed
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
        ErrorCode.INTERNAL_ERROR,
        ErrorCode.PROTOCOL_ERROR,
    }
)
# HTTP status for each error code a REST endpoint can answer with (429: a code of the tool's own).
HTTP_STATUS = {**API_ERROR_STATUS, ErrorCode.RATE_LIMITED: 429}


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
                encoding=typed(obj, "encoding", str),
                sample_rate=typed(obj, "sampleRate", int),
                channels=typed(obj, "channels", int),
                frame_ms=typed(obj, "frameMs", int),
            )
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"audio.{exc}") from None
