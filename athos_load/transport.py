"""The seam between a call and the realtime leg that carries it.

A call (:mod:`athos_load.call`) needs five things of a transport: join with a token, the SDK's
eight events as typed values with the time each was seen, the persona's audio frames with their
arrival time, "speak this clip now", and hang up (with how the call ended). It needs nothing else:
not WebSocket frames, not gevent, not the reference protocol. :class:`~athos_load.session.RoleplaySession`
(the reference WebSocket protocol, docs/protocol.md) is one transport; another stack (a WebRTC room,
a browser running a JavaScript SDK) is another, written against these Protocols. A user picks one
with its ``transport`` class attribute, the way Locust's ``HttpUser`` and ``FastHttpUser`` swap
clients; docs/architecture.md, "Adding a transport", is the recipe.

Clips come as PCM (:class:`~athos_load.audio.Clip`); a transport encodes them for its own wire,
once per clip, and caches the encoding itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from .audio import Clip
from .pacer import AudioPacer
from .wire import AudioFormat, ErrorCode, Event


class CallListener(Protocol):
    """What a transport tells the call, as it happens (in the transport's own greenlet or loop)."""

    def event(self, message: Event, at: float) -> None:
        """An SDK event, seen at ``at`` (``time.monotonic()``)."""

    def audio(self, frame: bytes, at: float) -> None:
        """One frame of the persona's audio (PCM16 LE in the call's format), arrived at ``at``."""


class Spoken(Protocol):
    """A clip handed to the transport: its audio leaves from ``start`` to ``end`` (monotonic)."""

    start: float
    end: float


class TransportError(Exception):
    """A transport's failure: ``code`` an :class:`~athos_load.wire.ErrorCode` or the platform's own
    code, to branch on; what :meth:`Transport.connect` raises and :attr:`Transport.last_error` holds."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Transport(Protocol):
    """One call's realtime leg. Every blocking method is bounded by a deadline of its own.

    Events reach the ``listener`` it was made with; :meth:`connect` emits ``connecting`` first
    and returns once ``ready`` was emitted, or raises :class:`TransportError`
    with the code (the ``error`` event, if any, was emitted before). Once the call is over it emits
    ``ended`` (after ``error`` when it failed), and :meth:`wait_ended` returns True.
    """

    def connect(self) -> None: ...

    def say(self, clip: Clip) -> Spoken:
        """Queue ``clip`` on the rep's microphone, in real time, right behind what is queued."""
        ...

    def hangup(self, timeout: float | None = None) -> None:
        """End the call and block until ``ended`` (or end it locally at the deadline)."""
        ...

    def wait_ended(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None:
        """Release everything; emits nothing."""
        ...

    @property
    def end_reason(self) -> str | None:
        """How the call ended: ``hangup``, ``persona``, ``max_duration``, ``error``, …"""
        ...

    @property
    def last_error(self) -> TransportError | None: ...

    @property
    def unknown_messages(self) -> int:
        """Messages the transport did not know and ignored (a newer platform may add some)."""
        ...


class TransportFactory(Protocol):
    """Makes one call's transport: a transport class, or a ``functools.partial`` of one."""

    def __call__(
        self,
        *,
        listener: CallListener,
        token: str,
        drill_key: str,
        url: str,
        audio: AudioFormat,
        pacer: AudioPacer,
        connect_timeout: float,
        **options: Any,
    ) -> Transport: ...
