"""The call's lifecycle as one table for both sides, and the client's half of a call.

:class:`ClientProtocol` is the sans-I/O client (the pattern of the ``websockets`` library): text in
through :meth:`ClientProtocol.receive_text`, commands through ``connect``/``resume``/``hangup``; out
come SDK events (:meth:`ClientProtocol.events_received`) and text to send
(:meth:`ClientProtocol.data_to_send`). Every method takes ``now`` (a monotonic time) from its
caller; nothing here reads a clock. The simulator steps the same table from the server's side with
:func:`advance`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .errors import LocalProtocolError, RemoteProtocolError, UnknownMessage
from .messages import (
    Connecting,
    Ended,
    Error,
    Event,
    Hangup,
    Join,
    Ready,
    Reconnected,
    Reconnecting,
    Resume,
    ServerMessage,
    Speaking,
    parse_server_message,
)
from .values import AudioFormat, ErrorCode


class CallState(enum.Enum):
    IDLE = "idle"  # created, connect() not called
    CONNECTING = "connecting"  # join sent, waiting for ready
    READY = "ready"  # in the call
    RECONNECTING = "reconnecting"  # dropped; resuming
    HANGING_UP = "hanging_up"  # hangup sent, waiting for ended
    ENDED = "ended"  # ended event emitted
    FAILED = "failed"  # join refused or failed before ready; no call to end


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class ConnectionLost:
    """Not a message: the socket closed. Each side sees it on its own and steps the table with it."""


# Who sends each message. A side that sends another side's message breaks the protocol.
SENDER: dict[type, Role] = {
    Join: Role.CLIENT,
    Resume: Role.CLIENT,
    Hangup: Role.CLIENT,
    Ready: Role.SERVER,
    Speaking: Role.SERVER,
    Reconnected: Role.SERVER,
    Ended: Role.SERVER,
    Error: Role.SERVER,
}

# (state, message class) -> next state: the call's lifecycle, one table for both sides. A client
# steps it when it sends a command or receives an event; the simulator when it receives a command or
# sends an event. Messages crossing in flight (a hangup and a personaSpeaking) are both allowed. A
# pair missing from the table is a protocol error naming the side, the state and the message.
TRANSITIONS: dict[tuple[CallState, type], CallState] = {
    (CallState.IDLE, Join): CallState.CONNECTING,
    (CallState.CONNECTING, Ready): CallState.READY,
    (CallState.CONNECTING, Error): CallState.FAILED,
    (CallState.CONNECTING, ConnectionLost): CallState.FAILED,
    (CallState.READY, Speaking): CallState.READY,
    (CallState.READY, Error): CallState.READY,  # a non-fatal domain error; the call goes on
    (CallState.READY, ConnectionLost): CallState.RECONNECTING,
    (CallState.READY, Hangup): CallState.HANGING_UP,
    (CallState.READY, Ended): CallState.ENDED,  # the persona or the time limit ended it
    (CallState.RECONNECTING, Resume): CallState.RECONNECTING,
    (CallState.RECONNECTING, Reconnected): CallState.READY,
    (CallState.RECONNECTING, Error): CallState.ENDED,  # resume refused: error, then ended
    (CallState.RECONNECTING, ConnectionLost): CallState.RECONNECTING,
    (CallState.RECONNECTING, Ended): CallState.ENDED,  # the resume window closed
    (CallState.RECONNECTING, Hangup): CallState.HANGING_UP,  # a client delivers it once a resume gets through
    (CallState.HANGING_UP, Speaking): CallState.HANGING_UP,
    (CallState.HANGING_UP, Resume): CallState.HANGING_UP,  # resumed only to hang up
    (CallState.HANGING_UP, Reconnected): CallState.HANGING_UP,
    (CallState.HANGING_UP, Ended): CallState.ENDED,
    (CallState.HANGING_UP, Error): CallState.HANGING_UP,
    (CallState.HANGING_UP, ConnectionLost): CallState.ENDED,  # hung up and gone: the call is over
}


def advance(state: CallState, happening: type, role: Role) -> CallState:
    """The state after ``happening`` (a message class, or :class:`ConnectionLost`) on ``role``'s side.

    A miss raises :class:`LocalProtocolError` when ``role`` itself sent the message (or saw its
    connection go), :class:`RemoteProtocolError` when the peer sent it.
    """
    try:
        return TRANSITIONS[(state, happening)]
    except KeyError:
        error = LocalProtocolError if SENDER.get(happening, role) is role else RemoteProtocolError
        raise error(f"{role.value}: {_label(happening)!r} not allowed in state {state.value}") from None


def _label(happening: type) -> str:
    if happening is Speaking:
        return "personaSpeaking/userSpeaking"
    for attr in ("type", "name"):
        value = getattr(happening, attr, None)
        if isinstance(value, str):
            return value
    return happening.__name__


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
        self._advance(Join)
        self._events.append(Connecting())
        self._outgoing.append(Join(self.token, self.drill_key, self.audio).serialize())

    def redeemed(self, ticket: str) -> None:
        """connect() redeemed the session token (``POST /roleplay/session``): the join, not sent
        yet, carries the connection ticket instead."""
        if self.state is not CallState.CONNECTING:
            raise LocalProtocolError(f"a ticket arrived in state {self.state.value}")
        self.token = ticket
        self._outgoing = [Join(ticket, self.drill_key, self.audio).serialize()]

    def resume(self, now: float) -> None:
        """A new socket is open after a drop: ask the server to resume the call."""
        self._advance(Resume)
        assert self.resume_token is not None and self.call_id is not None
        self._outgoing.append(Resume(self.resume_token, self.call_id).serialize())
        if self.hangup_unsent:  # the platform keeps a dropped call for its resume window: end it now
            self.hangup_unsent = False
            self._outgoing.append(Hangup().serialize())

    def hangup(self, now: float) -> None:
        """Ask the server to end the call. During a drop it is sent right after the next resume."""
        reconnecting = self.state is CallState.RECONNECTING
        self._advance(Hangup)
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
            self._advance(ConnectionLost)
            if was_ready:
                self._events.append(Reconnecting())
            return
        if self.state is CallState.HANGING_UP and not (resumable and self.hangup_unsent):
            self._advance(ConnectionLost)
            self._end(now, "hangup")
            return
        if self.state is CallState.HANGING_UP:
            return  # still dropped, hangup not yet delivered: the next resume carries it
        self.fail(now, ErrorCode.RECONNECT_FAILED, "connection closed and not resumable")

    def _receive(self, message: ServerMessage, now: float) -> None:
        if isinstance(message, Error):
            self.error = message
            self._advance(Error)
            self._events.append(message)
            if self.state is CallState.ENDED:  # a refused resume ends the call
                self._end(now, "error")
            return
        self._advance(type(message))
        if isinstance(message, Ready):
            self.call_id = message.call_id
            self.resume_token = message.resume_token
            self.persona_name = message.persona_name
            self.ready_at = now
        elif isinstance(message, Ended):
            self.end_reason = message.reason
        self._events.append(message)

    # -- internals -------------------------------------------------------------------------------

    def _advance(self, happening: type) -> None:
        self.state = advance(self.state, happening, Role.CLIENT)

    def _end(self, now: float, reason: str) -> None:
        """Emit ``ended`` from the client side, when the server can no longer say it."""
        self.state = CallState.ENDED
        self.end_reason = reason
        duration = 0.0 if self.ready_at is None else max(0.0, now - self.ready_at)
        self._events.append(Ended(self.call_id or "", round(duration, 3), reason))
