"""A headless twin of the Athos frontend SDK's roleplay session, for gevent and websocket-client.

::

    session = RoleplaySession.create(token=token, drill_key="ma-full-sale", url=ws_url)
    off = session.on("ready", lambda event: print(event.payload["persona"]["name"]))
    session.connect()                        # blocks until ready; raises SessionError if refused
    session.play(frames).wait()              # real-time audio, paced by the pacer given (or its own)
    session.hangup()                         # blocks until ended

The eight SDK events arrive as :class:`SessionEvent`: the typed message (``wire.messages``) and the
monotonic time ``at`` at which the bytes it came in were read; ``name`` and ``payload`` give the
SDK's view of it, built only when read. The session is a thin driver of the sans-I/O
:class:`~athos_load.wire.ClientConnection`, which owns framing, Close, ping, what a closed or silent
socket means and the deadlines: its one reader greenlet feeds it what the socket holds, hands on the
events and audio it makes of that, writes what it answers, and when a socket is done and the call
wants it back, resumes with backoff (reconnecting → resume → reconnected). When recovery fails the
connection emits ``error`` then ``ended``. Every read has a timeout and every wait a deadline, so no
session can hang forever. As a transport (athos_load/transport.py) it reports to a ``listener``.
This module knows nothing of Locust.
"""

from __future__ import annotations

import functools
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.lock
import websocket

from .audio import Clip
from .pacer import AudioPacer, Microphone, Utterance
from .transport import CallListener, TransportError
from .wire import (
    SDK_EVENTS,
    AudioFormat,
    CallState,
    ClientConnection,
    ErrorCode,
    Event,
    MaskedFrames,
    Redemption,
    mask_frames,
    masked,
)

logger = logging.getLogger(__name__)
DEFAULT_AUDIO = AudioFormat()
RECV_BYTES = 65536


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """What a listener receives: the typed event and when the session saw it.

    Code inside the tool reads ``message`` (``event.message.speaking``); ``name`` and ``payload``
    are the SDK's event name and seed payload, for listeners written against the SDK.
    """

    message: Event
    at: float  # time.monotonic() when the session saw it

    @property
    def name(self) -> str:
        return self.message.name

    @property
    def payload(self) -> dict[str, Any] | None:
        return self.message.payload()


Listener = Callable[[SessionEvent], Any]


class SessionError(TransportError):
    """connect() or another blocking call failed; ``code`` is an :class:`ErrorCode` or a platform code."""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a session recovers from a transient drop: exponential backoff with jitter, bounded."""

    max_attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.initial_delay * 2**attempt)
        return base * random.uniform(0.5, 1.0)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One client TLS context per process.

    websocket-client builds a fresh SSLContext (and loads the CA store) on every connect unless it
    is handed one: tens of milliseconds of CPU per session that stall every other greenlet.
    """
    return ssl.create_default_context()


class RoleplaySession:
    """One synthetic rep's call. Create with :meth:`create`; not reusable after it ends."""

    def __init__(
        self,
        *,
        token: str,
        drill_key: str,
        url: str,
        audio: AudioFormat = DEFAULT_AUDIO,
        pacer: AudioPacer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 1.0,
        idle_timeout: float = 120.0,
        hangup_timeout: float = 10.0,
        reconnect: ReconnectPolicy | None = None,
        listener: CallListener | None = None,
        redeem: Callable[[], Redemption] | None = None,
    ) -> None:
        self.url = url
        # the SDK redeems its token inside connect(): called after connecting, it answers where to
        # join (connectionUrl) and with what (connectionTicket), or raises SessionError
        self.redeem = redeem
        self.audio = audio
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.hangup_timeout = hangup_timeout
        self.reconnect = reconnect or ReconnectPolicy()
        self.reconnects = 0
        # the persona's audio, ``on_audio(frame, arrived_at)`` per binary frame (not an SDK event:
        # the SDK plays it; the tool listens to it, see athos_load/hearing.py)
        self.on_audio: Callable[[bytes, float], None] | None = None if listener is None else listener.audio
        # the transport seam (athos_load/transport.py): every event, typed, as it is emitted
        self._listener = listener
        self._connection = ClientConnection(
            token=token, drill_key=drill_key, audio=audio, idle_timeout=idle_timeout, resume_timeout=connect_timeout
        )
        self._protocol = self._connection.protocol  # the call's state, for the properties below
        self._pacer = pacer or AudioPacer()  # none shared in: one of its own, not a process global
        self._ssl_context = ssl_context
        self._listeners: dict[str, list[Listener]] = {name: [] for name in SDK_EVENTS}
        self._ws: websocket.WebSocket | None = None
        self._reader: gevent.Greenlet | None = None
        self._ready = gevent.event.Event()  # set on ready, or when connect can no longer succeed
        self._ended = gevent.event.Event()  # set when the call is over (ended, or failed)
        self._mics: list[Microphone] = []
        self._raw_socket: socket.socket | None = None  # see _raw_socket()
        self._write_lock = gevent.lock.Semaphore()  # one frame at a time on the socket
        self._microphone: Microphone | None = None

    @classmethod
    def create(cls, *, token: str, drill_key: str, url: str, **options: Any) -> RoleplaySession:
        """Like the SDK's ``AthosRoleplay.create({token, drillKey})``; ``url`` is the realtime endpoint."""
        return cls(token=token, drill_key=drill_key, url=url, **options)

    # -- state -----------------------------------------------------------------------------------

    @property
    def state(self) -> CallState:
        return self._protocol.state

    @property
    def call_id(self) -> str | None:
        return self._protocol.call_id

    @property
    def persona_name(self) -> str | None:
        return self._protocol.persona_name

    @property
    def end_reason(self) -> str | None:
        return self._protocol.end_reason

    @property
    def audio_frames_received(self) -> int:
        return self._connection.audio_frames_received

    @property
    def idle_timeout(self) -> float:
        """No frame from the server this long during a call: treated as a drop."""
        return self._connection.idle_timeout

    @property
    def unknown_messages(self) -> int:
        """Messages of a type this version does not know, ignored (a newer platform may add some)."""
        return self._protocol.unknown_messages

    @property
    def last_error(self) -> SessionError | None:
        err = self._protocol.error
        return None if err is None else SessionError(err.code, err.message)

    # -- listeners -------------------------------------------------------------------------------

    def on(self, name: str, callback: Listener) -> Callable[[], None]:
        """Subscribe to an SDK event; returns the function that unsubscribes."""
        if name not in self._listeners:
            raise ValueError(f"unknown event {name!r}; the SDK's events are {', '.join(SDK_EVENTS)}")
        self._listeners[name].append(callback)
        return lambda: self.off(name, callback)

    def off(self, name: str, callback: Listener) -> None:
        """Unsubscribe; unsubscribing twice or an unknown callback is a no-op, as in the SDK."""
        listeners = self._listeners.get(name)
        if listeners and callback in listeners:
            listeners.remove(callback)

    # -- commands --------------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Join the call and block until ``ready``. Raises :class:`SessionError` with the code otherwise."""
        deadline = time.monotonic() + (self.connect_timeout if timeout is None else timeout)
        self._connection.connect(time.monotonic())
        self._flush_events()
        if self.redeem is not None:
            try:
                redemption = self.redeem()
            except SessionError as exc:
                self._fail(exc.code, exc.message)  # type: ignore[arg-type]
                raise
            self.url = redemption.connection_url
            self._protocol.redeemed(redemption.connection_ticket)
        try:
            self._ws = self._open(deadline)
        except (OSError, websocket.WebSocketException) as exc:
            timed_out = isinstance(exc, TimeoutError | websocket.WebSocketTimeoutException)
            code = ErrorCode.CONNECT_TIMEOUT if timed_out else ErrorCode.CONNECT_FAILED
            self._fail(code, f"{type(exc).__name__}: {exc}")
            raise SessionError(code, str(exc)) from None
        self._connection.connection_made(time.monotonic())
        self._send_pending()
        self._reader = gevent.spawn(self._read_loop)
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            self._fail(ErrorCode.CONNECT_TIMEOUT, "no ready before the connect deadline")
        if self._protocol.ready_at is not None:
            return  # the call is in, even if it ended in the same read: its ``ended`` says how
        err = self.last_error or SessionError(ErrorCode.CONNECT_FAILED, f"state {self.state.value}")
        self.close()
        raise err

    def play(self, frames: Sequence[bytes], start: float | None = None) -> Utterance:
        """Stream one clip of wire-format frames in real time, then nothing.

        Frames due during a drop are lost, as on a phone. For a whole call use :meth:`say`.
        """
        mic = self._pacer.microphone(self, self.audio.frame_seconds, None, start)
        self._mics.append(mic)
        return mic.say(masked(frames))

    def say(self, clip: Clip | Sequence[bytes]) -> Utterance:
        """Queue a clip (or its PCM frames) on the session's continuous microphone, which sends
        silence between clips from the first call on, as a real client streams its microphone for
        the whole call. A :class:`~athos_load.audio.Clip` is framed and masked once per process."""
        if self._microphone is None:
            silence = mask_frames([bytes(self.audio.frame_bytes)])[0]
            self._microphone = self._pacer.microphone(self, self.audio.frame_seconds, silence)
            self._mics.append(self._microphone)
        return self._microphone.say(wire_frames(clip) if isinstance(clip, Clip) else masked(clip))

    def hangup(self, timeout: float | None = None) -> None:
        """Hang up and block until ``ended`` (if the server stays silent, end locally at the deadline)."""
        if self._protocol.finished:
            return
        if self._protocol.state in (CallState.IDLE, CallState.CONNECTING):
            self.close()  # no call to end yet
            return
        if self._protocol.state in (CallState.READY, CallState.RECONNECTING):
            # during a drop the reader's reconnect loop resumes and delivers the hangup
            self._connection.hangup(time.monotonic())
            self._send_pending()
            self._flush_events()
        limit = self.hangup_timeout if timeout is None else timeout
        if not self.wait_ended(limit):
            # A platform that never confirms the end (half-open, stalled) has not completed the
            # call: it is failed with a code of its own, not counted as a clean hang-up.
            self._fail(ErrorCode.HANGUP_TIMEOUT, f"no ended within {limit:g}s of the hang-up")
        self.close()

    def wait_ended(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def close(self) -> None:
        """Release the socket and the reader. Does not emit events; use hangup() to end a call."""
        for mic in self._mics:
            mic.close()
        self._mics.clear()
        self._close_socket()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)
        self._ready.set()
        self._ended.set()

    # -- FrameSink, for the pacer ----------------------------------------------------------------

    def send_audio_frame(self, frame: bytes) -> bool:
        """Send one ready-made masked frame (see :mod:`athos_load.wire.frames`) if the call takes
        audio now; False if it does not (a drop, the end) or the socket failed: that frame is lost."""
        ws = self._ws
        if ws is None or self._protocol.state is not CallState.READY:
            return False
        try:
            raw = self._raw_socket
            if raw is not None and not self._write_lock.locked():
                # Nothing between the check and this non-blocking send can switch greenlets, so no
                # text frame can be half-written under us: the lock is not needed for a full send.
                try:
                    sent = raw.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return True
                frame = frame[sent:]
            with self._write_lock:  # never interleave with a text or control frame
                ws.sock.sendall(frame)
            return True
        except (OSError, AttributeError):
            # The reader sees the same broken socket and starts recovery.
            return False

    # -- I/O -------------------------------------------------------------------------------------

    def _open(self, deadline: float) -> websocket.WebSocket:
        """Connect and do the opening handshake by ``deadline``; TimeoutError if it is not done by then."""
        timeout = max(0.1, deadline - time.monotonic())
        sslopt = None
        if self.url.startswith("wss:"):
            sslopt = {"context": self._ssl_context or shared_ssl_context()}
        # websocket-client's timeout bounds each socket operation, so a server that trickles its
        # handshake a byte at a time would never trip it: a gevent timeout bounds the whole of it.
        # websocket-client does the opening handshake only; every frame after it is ours (wire.frames).
        whole = gevent.Timeout(timeout)
        whole.start()
        try:
            ws = websocket.create_connection(self.url, timeout=timeout, sslopt=sslopt, skip_utf8_validation=True)
        except gevent.Timeout as exc:
            if exc is not whole:
                raise
            raise TimeoutError(f"no WebSocket handshake within {timeout:.1f}s") from None  # its socket is closed
        finally:
            whole.close()
        ws.settimeout(self.read_timeout)
        self._raw_socket = _raw_socket(ws.sock)
        return ws

    def _send_pending(self) -> None:
        """Write what the connection has to send; a failed write is the reader's to see and handle."""
        ws = self._ws
        for data in self._connection.data_to_send():
            if ws is None or not self._write(ws, data):
                return

    def _write(self, ws: websocket.WebSocket, frame: bytes) -> bool:
        """Send one whole frame; False if the socket failed (the reader sees it and handles it)."""
        try:
            with self._write_lock:
                ws.sock.sendall(frame)
            return True
        except (OSError, AttributeError):  # AttributeError: closed under us (sock is None)
            return False

    def _read_loop(self) -> None:
        """The one reader: feed the connection whatever the socket holds, hand on what it made of
        it, write what it answers; resume when the socket it had is done and the call wants one."""
        connection = self._connection
        while not connection.finished:
            ws = self._ws
            if ws is None:
                break
            while not connection.connection_done:
                try:
                    data = ws.sock.recv(RECV_BYTES)
                except TimeoutError:
                    connection.tick(time.monotonic())
                except (OSError, AttributeError):  # reset, or closed under us (sock is None)
                    connection.receive_eof(time.monotonic())
                else:
                    if data:
                        connection.receive_data(data, time.monotonic())
                    else:
                        connection.receive_eof(time.monotonic())
                self._send_pending()
                self._flush_events()
            self._close_socket()
            if connection.wants_resume:
                self._resume()
        self._close_socket()
        self._ended.set()
        self._ready.set()

    def _resume(self) -> None:
        """Open a new socket with backoff and ask for the call back; give up after the last attempt."""
        for attempt in range(self.reconnect.max_attempts):
            gevent.sleep(self.reconnect.delay(attempt))
            if not self._connection.wants_resume:
                return  # ended meanwhile
            try:
                self._ws = self._open(time.monotonic() + self.connect_timeout)
            except (OSError, websocket.WebSocketException):
                continue
            self.reconnects += 1
            now = time.monotonic()
            self._connection.connection_made(now)
            self._connection.resume(now)
            self._send_pending()
            return  # reconnected or error arrives as a text frame, by the resume deadline
        self._fail(ErrorCode.RECONNECT_FAILED, f"no connection after {self.reconnect.max_attempts} attempts")

    def _fail(self, code: ErrorCode, message: str) -> None:
        self._connection.fail(time.monotonic(), code, message)
        self._flush_events()
        self._close_socket()

    def _close_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.shutdown()  # no close handshake: the call's end is the protocol's business
            except (OSError, websocket.WebSocketException):
                pass

    def _flush_events(self) -> None:
        """Hand on what the connection made of its input, in order: audio to ``on_audio``, events
        to the listeners, each with the time it was read."""
        on_audio = self.on_audio
        for item, at in self._connection.events_received():
            if isinstance(item, bytes):
                if on_audio is not None:
                    on_audio(item, at)
            else:
                self._emit(item, at)

    def _emit(self, event: Event, at: float) -> None:
        record = SessionEvent(event, at)
        name = event.name  # built per call for a speaking event: once here
        if name == "ready":
            self._ready.set()
        if self._listener is not None:
            try:
                self._listener.event(event, record.at)
            except Exception:
                logger.exception("the call's listener raised on %r", name)
        for callback in tuple(self._listeners[name]):
            try:
                callback(record)
            except Exception:
                # A listener's bug must not kill the call; it is logged with its traceback.
                logger.exception("listener for %r raised", name)
        if self._protocol.finished:
            self._ready.set()
            if name == "ended" or self._protocol.state is CallState.FAILED:
                self._ended.set()


@functools.lru_cache(maxsize=1024)
def wire_frames(clip: Clip) -> MaskedFrames:
    """A clip's frames as masked WebSocket frames, made once and shared by every session that says it
    (masking is a numpy pass over the clip; clips live for the run, so the cache stays small)."""
    return mask_frames(clip.frames)


def _raw_socket(sock: object) -> socket.socket | None:
    """The non-blocking OS socket under a gevent TCP socket, for one-syscall audio sends.

    gevent's socket wrapper costs about as much as the send itself at 50 frames a second per
    session. Only for plain TCP under gevent (TLS must go through the SSL object); else None.
    """
    raw = getattr(sock, "_sock", None)
    if isinstance(sock, ssl.SSLSocket) or raw is None or "gevent" not in type(sock).__module__:
        return None
    return raw if raw.gettimeout() == 0.0 else None
