"""The client's side of the reference realtime connection, bytes in and bytes out.

:class:`ClientConnection` is to :class:`~athos_load.wire.lifecycle.ClientProtocol` what the
socket is to the call: it owns the WebSocket framing (the :class:`~athos_load.wire.frames.FrameReader`
of each socket, Close and ping answered), decides what a closed or silent socket means (a
resumable drop, or the end) and keeps the idle and resume deadlines. Its driver
(:mod:`athos_load.session`) only moves bytes and time:

* bytes read go to :meth:`receive_data` (EOF or a reset to :meth:`receive_eof`), with the time read;
* :meth:`tick` when :meth:`next_deadline` passes with nothing read;
* out come the frames to write (:meth:`data_to_send`) and, in the order they happened, the SDK
  events and the persona's audio payloads, each with the time it was read (:meth:`events_received`);
* :attr:`connection_done` says this socket is finished: close it, then resume while
  :attr:`wants_resume` holds (:meth:`connection_made` for the new socket, then :meth:`resume`).

Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from .errors import FrameError
from .frames import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    FrameReader,
    client_frame,
    close_payload,
    parse_close,
)
from .lifecycle import CallState, ClientProtocol
from .messages import Event
from .values import RESUMABLE_CLOSE_CODES, AudioFormat, ErrorCode

IDLE_TIMEOUT = 120.0  # nothing from the server this long during a call: treat it as a drop
RESUME_TIMEOUT = 15.0  # a resume must be answered (reconnected, error or ended) this soon


class ClientConnection:
    """A call over the reference protocol's WebSocket, sans I/O (see the module's docstring)."""

    def __init__(
        self,
        *,
        token: str,
        drill_key: str,
        audio: AudioFormat | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        resume_timeout: float = RESUME_TIMEOUT,
    ) -> None:
        self.protocol = ClientProtocol(token=token, drill_key=drill_key, audio=audio or AudioFormat())
        self.idle_timeout = idle_timeout
        self.resume_timeout = resume_timeout
        self.connection_done = False  # this socket is finished: close it (then resume if wanted)
        self.audio_frames_received = 0
        self._reader = FrameReader()
        self._last_heard = 0.0
        self._resume_deadline: float | None = None  # a resume sent and not yet answered must be by then
        self._received: list[tuple[Event | bytes, float]] = []
        self._outgoing: list[bytes] = []

    # -- output ----------------------------------------------------------------------------------

    def events_received(self) -> list[tuple[Event | bytes, float]]:
        """SDK events and persona audio payloads (``bytes``) in order, each with the time it was
        read (or decided); hands over the buffer."""
        if not self._received:
            return []
        out, self._received = self._received, []
        return out

    def data_to_send(self) -> list[bytes]:
        """Whole frames to write, in order; hands over the buffer."""
        for text in self.protocol.data_to_send():
            self._outgoing.append(client_frame(OPCODE_TEXT, text.encode()))
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def state(self) -> CallState:
        return self.protocol.state

    @property
    def finished(self) -> bool:
        return self.protocol.finished

    @property
    def wants_resume(self) -> bool:
        return self.protocol.wants_resume

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must run if nothing is read before (None: no deadline now)."""
        if self._resume_deadline is not None:
            return self._resume_deadline
        if self.protocol.state is CallState.READY and not self.connection_done:
            return self._last_heard + self.idle_timeout
        return None

    # -- commands --------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the call: ``connecting``, and the join to send once the socket is open."""
        self.protocol.connect(now)
        self._collect(now)

    def connection_made(self, now: float) -> None:
        """A new socket is open: its byte stream starts afresh."""
        self._reader = FrameReader()
        self._last_heard = now
        self.connection_done = False

    def resume(self, now: float) -> None:
        """The new socket after a drop is open: ask for the call back, within the resume deadline."""
        self.protocol.resume(now)
        self._resume_deadline = now + self.resume_timeout

    def hangup(self, now: float) -> None:
        self.protocol.hangup(now)
        self._collect(now)

    def fail(self, now: float, code: ErrorCode | str, message: str) -> None:
        """The driver gives up (a connect failed, resumes ran out, a deadline passed)."""
        self.protocol.fail(now, code, message)
        self.connection_done = True
        self._collect(now)

    # -- input -----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the socket at ``now``. Never raises: a broken stream fails the call."""
        self._last_heard = now
        try:
            messages = self._reader.feed(data)
        except FrameError as exc:
            self.fail(now, ErrorCode.REMOTE_PROTOCOL, str(exc))
            return
        received = self._received
        for opcode, payload in messages:
            if opcode == OPCODE_BINARY:
                self.audio_frames_received += 1
                received.append((payload, now))
            elif opcode == OPCODE_TEXT:
                self.protocol.receive_text(payload, now)
                self._collect(now)
                if self.protocol.finished:
                    self.connection_done = True
                    return
            elif opcode == OPCODE_CLOSE:
                try:
                    code = parse_close(payload)
                except FrameError as exc:  # RFC 6455 §7.4.1: fail the connection as a protocol error
                    self._outgoing.append(client_frame(OPCODE_CLOSE, close_payload(exc.close_code)))
                    self.fail(now, ErrorCode.REMOTE_PROTOCOL, str(exc))
                    return
                self._outgoing.append(client_frame(OPCODE_CLOSE, payload[:2]))  # echoed (RFC 6455 §5.5.1)
                self._lost(now, resumable=code in RESUMABLE_CLOSE_CODES)
                return
            elif opcode == OPCODE_PING:
                self._outgoing.append(client_frame(OPCODE_PONG, payload))

    def receive_eof(self, now: float) -> None:
        """The socket closed (EOF, a reset) without a Close frame: an abnormal close (1006), resumable."""
        self._lost(now, resumable=True)

    def tick(self, now: float) -> None:
        """Nothing read until ``now``: a silent call is a drop; an unanswered resume has failed."""
        if self._resume_deadline is not None and now >= self._resume_deadline:
            self.fail(now, ErrorCode.RECONNECT_FAILED, "no answer to the resume within the connect timeout")
        elif self.protocol.state is CallState.READY and now - self._last_heard >= self.idle_timeout:
            self._lost(now, resumable=True)

    # -- internals -------------------------------------------------------------------------------

    def _lost(self, now: float, resumable: bool) -> None:
        self.connection_done = True
        self.protocol.connection_lost(now, resumable=resumable)
        self._collect(now)

    def _collect(self, now: float) -> None:
        """Move the protocol's events into the ordered output, stamped ``now``; an answer to a resume
        (reconnected, error, ended) clears its deadline."""
        for event in self.protocol.events_received():
            if event.name in ("reconnected", "error", "ended"):
                self._resume_deadline = None
            self._received.append((event, now))
