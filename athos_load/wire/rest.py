"""REST bodies of the Athos External API (the public contract, docs/protocol.md §1-§3): the roster
(registering a rep), minting and redeeming a session token, the error envelope, a call's detail and
the list of scored calls. Times are unix seconds here and ISO-8601 UTC strings on the wire."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import RemoteProtocolError
from .fields import dumps, from_iso, iso, json_object, loads, optional, optional_number, typed
from .values import SOURCE_ROLEPLAY, ErrorCode, error_code

# -- the roster ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterAgentRequest:
    """``POST /agents``: a rep by name and one handle of ours (``platformAgentId``)."""

    first_name: str
    last_name: str
    platform_agent_id: str
    platform_agency_id: str | None = None

    def serialize(self) -> str:
        body: dict[str, Any] = {
            "firstName": self.first_name,
            "lastName": self.last_name,
            "platformAgentId": self.platform_agent_id,
        }
        if self.platform_agency_id:
            body["platformAgencyId"] = self.platform_agency_id
        return dumps(body)

    @classmethod
    def parse(cls, text: str | bytes) -> RegisterAgentRequest:
        obj = loads(text)
        return cls(
            first_name=_non_blank(obj, "firstName"),
            last_name=_non_blank(obj, "lastName"),
            platform_agent_id=_non_blank(obj, "platformAgentId"),
            platform_agency_id=optional(obj, "platformAgencyId", str, None),
        )


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered rep: the Athos ids (``athos_agent_…``, ``athos_agency_…``) and ours."""

    id: str
    agency_id: str
    platform_agent_id: str | None = None
    first_name: str = ""
    last_name: str = ""
    created_at: float = 0.0

    def serialize(self, agency_name: str, platform_agency_id: str | None) -> str:
        """The ``201`` answer: the agent and the agency it belongs to."""
        created = iso(self.created_at)
        return dumps(
            {
                "agent": {
                    "id": self.id, "firstName": self.first_name, "lastName": self.last_name, "email": None,
                    "npn": None, "platformAgentId": self.platform_agent_id, "agencyId": self.agency_id,
                    "createdAt": created,
                },
                "agency": {
                    "id": self.agency_id, "name": agency_name, "platformAgencyId": platform_agency_id,
                    "createdAt": created,
                },
            }
        )  # fmt: skip

    @classmethod
    def parse(cls, text: str | bytes) -> Agent:
        agent = json_object(loads(text).get("agent"), "agent")
        return cls(
            id=typed(agent, "id", str),
            agency_id=typed(agent, "agencyId", str),
            platform_agent_id=optional(agent, "platformAgentId", str, None),
            first_name=optional(agent, "firstName", str, ""),
            last_name=optional(agent, "lastName", str, ""),
        )


# -- sessions --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MintRequest:
    """``POST /session``: a token for exactly one registered agent, by our id or by the Athos id."""

    platform_agent_id: str | None = None
    agent_id: str | None = None

    def serialize(self) -> str:
        if self.agent_id:
            return dumps({"agentId": self.agent_id})
        return dumps({"platformAgentId": self.platform_agent_id})

    @classmethod
    def parse(cls, text: str | bytes) -> MintRequest:
        obj = loads(text)
        ours, theirs = optional(obj, "platformAgentId", str, None), optional(obj, "agentId", str, None)
        if bool(ours) == bool(theirs):
            raise RemoteProtocolError("send exactly one of platformAgentId and agentId")
        return cls(platform_agent_id=ours or None, agent_id=theirs or None)


@dataclass(frozen=True, slots=True)
class MintResponse:
    token: str
    expires_at: float

    def serialize(self) -> str:
        return dumps({"token": self.token, "expiresAt": iso(self.expires_at)})

    @classmethod
    def parse(cls, text: str | bytes) -> MintResponse:
        obj = loads(text)
        return cls(token=typed(obj, "token", str), expires_at=from_iso(typed(obj, "expiresAt", str)))


@dataclass(frozen=True, slots=True)
class RedeemRequest:
    """``POST /roleplay/session`` with the session token as the bearer: the SDK's ``connect()``."""

    drill_key: str
    difficulty: str | None = None

    def serialize(self) -> str:
        body: dict[str, Any] = {"drillKey": self.drill_key}
        if self.difficulty:
            body["difficulty"] = self.difficulty
        return dumps(body)

    @classmethod
    def parse(cls, text: str | bytes) -> RedeemRequest:
        obj = loads(text)
        return cls(drill_key=_non_blank(obj, "drillKey"), difficulty=optional(obj, "difficulty", str, None))


@dataclass(frozen=True, slots=True)
class Redemption:
    """The redeem answer: where and with what the realtime leg joins, and the call's public id."""

    connection_url: str
    connection_ticket: str
    call_id: str
    persona_name: str
    session_id: str = ""

    def serialize(self) -> str:
        return dumps(
            {
                "connectionTicket": self.connection_ticket,
                "connectionUrl": self.connection_url,
                "sessionId": self.session_id,
                "callId": self.call_id,
                "persona": {"name": self.persona_name},
            }
        )

    @classmethod
    def parse(cls, text: str | bytes) -> Redemption:
        obj = loads(text)
        persona = json_object(obj.get("persona"), "persona")
        return cls(
            connection_url=typed(obj, "connectionUrl", str),
            connection_ticket=typed(obj, "connectionTicket", str),
            call_id=typed(obj, "callId", str),
            persona_name=typed(persona, "name", str),
            session_id=optional(obj, "sessionId", str, ""),
        )


# -- errors ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiErrorBody:
    """The error envelope ``{"error": {"code", "message", "requestId"[, "details"]}}``."""

    code: ErrorCode | str
    message: str
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def error_body(code: ErrorCode | str, message: str, request_id: str, details: dict[str, Any] | None = None) -> str:
    """The JSON body of every non-2xx answer."""
    error: dict[str, Any] = {"code": str(code), "message": message, "requestId": request_id}
    if details:
        error["details"] = details
    return dumps({"error": error})


def parse_error_body(text: str | bytes) -> ApiErrorBody:
    """Any answer as an error: one that is not the envelope is the platform's ``remote_protocol``."""
    try:
        obj = json_object(loads(text).get("error"), "error")
        return ApiErrorBody(
            error_code(typed(obj, "code", str)),
            typed(obj, "message", str),
            optional(obj, "requestId", str, None),
            optional(obj, "details", dict, {}),
        )
    except RemoteProtocolError:
        return ApiErrorBody(ErrorCode.REMOTE_PROTOCOL, f"unparseable error body: {text[:200]!r}")


# -- calls -----------------------------------------------------------------------------------------


class CallStatus(enum.StrEnum):
    """A call's state inside the simulator; the External API shows only ``scored`` calls."""

    IN_PROGRESS = "in_progress"
    SCORING = "scoring"  # ended, waiting for a scorer
    SCORED = "scored"
    NOT_SCORED = "not_scored"  # scoring failed (call.scored with success false): never readable


ROLES = {"rep": "agent", "persona": "beneficiary"}  # our speakers, the contract's transcript roles
SPEAKERS = {role: speaker for speaker, role in ROLES.items()}


@dataclass(frozen=True, slots=True)
class Segment:
    """One transcript turn; ``start``/``end`` in seconds from the start of the call (optional on
    the wire: ``startTime``/``endTime``; 0 when absent)."""

    speaker: str  # "rep" | "persona" (the wire's roles "agent" | "beneficiary")
    start: float
    end: float
    text: str = ""

    def to_wire(self) -> dict[str, Any]:
        role = ROLES.get(self.speaker, self.speaker)
        return {"role": role, "content": self.text, "startTime": self.start, "endTime": self.end}

    @classmethod
    def from_wire(cls, obj: Any) -> Segment:
        obj = json_object(obj, "transcript turn")
        role = typed(obj, "role", str)
        return cls(
            speaker=SPEAKERS.get(role, role),
            start=optional_number(obj, "startTime") or 0.0,
            end=optional_number(obj, "endTime") or 0.0,
            text=typed(obj, "content", str),
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as ``GET /calls/:callId`` shows it (the detail); the list's slim rows are the same
    without ``status``, transcript and score."""

    id: str
    status: CallStatus
    drill_key: str | None = None
    duration_sec: float | None = None
    score: float | None = None  # score.overallScore
    ended_at: float | None = None
    scored_at: float | None = None
    transcript: tuple[Segment, ...] = ()
    started_at: float | None = None
    agent_id: str = ""
    agency_id: str = ""
    platform_agent_id: str | None = None
    platform_agency_id: str | None = None
    summary: str = ""
    feedback: str = ""

    def to_wire(self, detail: bool = True) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.id,
            "source": SOURCE_ROLEPLAY,
            "agencyId": self.agency_id,
            "agentId": self.agent_id,
            "platformAgentId": self.platform_agent_id,
            "platformAgencyId": self.platform_agency_id,
            "drillKey": self.drill_key,
            "startedAt": _iso_or_none(self.started_at),
            "endedAt": _iso_or_none(self.ended_at),
            "durationSec": None if self.duration_sec is None else int(round(self.duration_sec)),
            "scoredAt": _iso_or_none(self.scored_at),
        }
        if detail:
            obj["status"] = self.status.value
            obj["transcript"] = [s.to_wire() for s in self.transcript]
            obj["score"] = {"overallScore": self.score, "summary": self.summary, "feedback": self.feedback}
            obj |= {"audioUrl": None, "audioUrlExpiresAt": None, "waveform": None}
            obj |= {"createdAt": obj["startedAt"], "updatedAt": obj["scoredAt"]}
        return obj

    @classmethod
    def from_wire(cls, obj: Any) -> CallRecord:
        obj = json_object(obj, "call")
        status = optional(obj, "status", str, CallStatus.SCORED.value)  # a list row: scored, by definition
        try:
            status = CallStatus(status)
        except ValueError:
            raise RemoteProtocolError(f"status: unknown {status[:40]!r}") from None
        score = obj.get("score")
        score = json_object(score, "score") if score is not None else {}
        return cls(
            id=typed(obj, "id", str),
            status=status,
            drill_key=optional(obj, "drillKey", str, None),
            duration_sec=optional_number(obj, "durationSec"),
            score=optional_number(score, "overallScore"),
            ended_at=_time_or_none(obj, "endedAt"),
            scored_at=_time_or_none(obj, "scoredAt"),
            transcript=tuple(Segment.from_wire(s) for s in optional(obj, "transcript", list, [])),
            started_at=_time_or_none(obj, "startedAt"),
            agent_id=optional(obj, "agentId", str, ""),
            agency_id=optional(obj, "agencyId", str, ""),
            platform_agent_id=optional(obj, "platformAgentId", str, None),
            platform_agency_id=optional(obj, "platformAgencyId", str, None),
            summary=optional(score, "summary", str, ""),
            feedback=optional(score, "feedback", str, ""),
        )


def parse_call(text: str | bytes) -> CallRecord:
    return CallRecord.from_wire(loads(text))


def parse_call_list(text: str | bytes) -> tuple[list[CallRecord], str | None]:
    """``GET /calls`` → one page of scored calls and ``nextCursor`` (None on the last page)."""
    obj = loads(text)
    calls = obj.get("data")
    if not isinstance(calls, list):
        raise RemoteProtocolError("data: expected list")
    if "nextCursor" not in obj:
        raise RemoteProtocolError("nextCursor: missing")
    return [CallRecord.from_wire(c) for c in calls], optional(obj, "nextCursor", str, None)


def call_list_body(calls: list[CallRecord], next_cursor: str | None) -> str:
    return dumps({"data": [c.to_wire(detail=False) for c in calls], "nextCursor": next_cursor})


def _non_blank(obj: dict[str, Any], key: str) -> str:
    value = typed(obj, key, str)
    if not value.strip():
        raise RemoteProtocolError(f"{key}: blank")
    return value.strip()


def _iso_or_none(unix: float | None) -> str | None:
    return None if unix is None else iso(unix)


def _time_or_none(obj: dict[str, Any], key: str) -> float | None:
    text = optional(obj, key, str, None)
    return None if text is None else from_iso(text)
