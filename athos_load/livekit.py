"""The real platform's realtime leg, LiveKit, as a transport (athos_load/transport.py).

The Athos frontend SDK joins a LiveKit room with the redeem answer (``connectionUrl``,
``connectionTicket``), publishes the rep's microphone, plays the persona's track, and derives its
events from the room. Facts from its documentation and its transport, which this module follows:

* ``ready``: the room is joined and the microphone is published (the persona's name comes from the
  redeem answer, not from the room);
* ``personaSpeaking`` / ``userSpeaking``: the room's active speakers, the local participant for the
  rep and any other for the persona, emitted on changes only;
* ``reconnecting`` / ``reconnected``: the room's own; a recovery that takes longer than
  :data:`RECONNECT_TIMEOUT` is ``NETWORK_LOST`` and the room is left;
* ``ended``: the room is disconnected, with the call's id and its duration in whole seconds. The
  persona never hangs up: a call ends by the rep's hang-up, the platform's ceiling, or a loss.

:class:`RoomCall` is that translation, sans I/O: room signals in (the values below, each with the
time it was seen), SDK events out, deadlines as values. The driver around it (the ``livekit``
Python SDK on an asyncio loop of its own, signals handed to gevent) is :class:`LiveKitTransport`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

from .audio import Clip
from .transport import CallListener, TransportError
from .wire import (
    AudioFormat,
    Connecting,
    Ended,
    Error,
    ErrorCode,
    Event,
    Ready,
    Reconnected,
    Reconnecting,
    Redemption,
    Speaker,
    Speaking,
)
from .wire.pacing import Schedule

logger = logging.getLogger(__name__)

RECONNECT_TIMEOUT = 30.0  # the SDK's bound on an automatic recovery before NETWORK_LOST
NETWORK_LOST = ErrorCode.NETWORK_LOST.value  # the SDK's code for a drop it could not recover
CONNECT_FAILED = ErrorCode.CONNECT_FAILED.value
# How a room's disconnect reads as the call's end (livekit's DisconnectReason names): the rep's own
# leaving is a hang-up; the platform closing the room is its ceiling, a completed call; the rest
# (a server shut down, a failed join or media, a lost signal) fail the call.
COMPLETED_DISCONNECTS = {"CLIENT_INITIATED": "hangup", "ROOM_DELETED": "max_duration", "ROOM_CLOSED": "max_duration"}


# -- what the room says, as values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Joined:
    """``room.connect`` returned: the rep is in the room."""


@dataclass(frozen=True, slots=True)
class MicrophoneLive:
    """The rep's microphone track is published."""


@dataclass(frozen=True, slots=True)
class ActiveSpeakers:
    """The room's active speakers changed: whether the rep (``local``) and anyone else are among them."""

    local: bool
    remote: bool


@dataclass(frozen=True, slots=True)
class RoomReconnecting:
    pass


@dataclass(frozen=True, slots=True)
class RoomReconnected:
    pass


@dataclass(frozen=True, slots=True)
class RoomDisconnected:
    reason: str  # livekit's DisconnectReason name


@dataclass(frozen=True, slots=True)
class JoinFailed:
    message: str


Signal = Joined | MicrophoneLive | ActiveSpeakers | RoomReconnecting | RoomReconnected | RoomDisconnected | JoinFailed


class RoomCall:
    """One call's room signals turned into the SDK's events (see the module's docstring)."""

    def __init__(self, call_id: str, persona_name: str, reconnect_timeout: float = RECONNECT_TIMEOUT) -> None:
        self.call_id = call_id
        self.persona_name = persona_name
        self.reconnect_timeout = reconnect_timeout
        self.ready = False
        self.finished = False
        self.end_reason: str | None = None
        self.error: Error | None = None
        self.wants_leave = False  # the driver must leave the room (the rep hung up, or the network is lost)
        self._joined_at: float | None = None
        self._hung_up = False
        self._speaking = {Speaker.USER: False, Speaker.PERSONA: False}
        self._recover_by: float | None = None
        self._events: list[tuple[Event, float]] = []

    def events_received(self) -> list[tuple[Event, float]]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        return self._recover_by

    # -- commands --------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        self._events.append((Connecting(), now))

    def hangup(self, now: float) -> None:
        if not self.finished:
            self._hung_up = self.wants_leave = True

    def fail(self, now: float, code: str, message: str) -> None:
        """The driver gives up (a deadline of its own passed): ``error``, then ``ended`` if a call was up."""
        if self.finished:
            return
        self._error(code, message, now)
        self._end("error", now)

    # -- input -----------------------------------------------------------------------------------

    def receive(self, signal: Signal, at: float) -> None:
        if self.finished:
            return
        if isinstance(signal, Joined):
            self._joined_at = at
        elif isinstance(signal, MicrophoneLive):
            if not self.ready:
                self.ready = True
                self._events.append((Ready(self.persona_name, self.call_id, ""), at))
        elif isinstance(signal, ActiveSpeakers):
            for speaker, speaking in ((Speaker.USER, signal.local), (Speaker.PERSONA, signal.remote)):
                if self._speaking[speaker] is not speaking:
                    self._speaking[speaker] = speaking
                    self._events.append((Speaking(speaker, speaking), at))
        elif isinstance(signal, RoomReconnecting):
            if self._recover_by is None:
                self._recover_by = at + self.reconnect_timeout
                self._events.append((Reconnecting(), at))
        elif isinstance(signal, RoomReconnected):
            if self._recover_by is not None:
                self._recover_by = None
                self._events.append((Reconnected(self.call_id), at))
        elif isinstance(signal, RoomDisconnected):
            if self.error is not None:  # the network was lost and the room left: that is how it ended
                self._end("error", at)
            elif self._hung_up:
                self._end("hangup", at)
            elif signal.reason in COMPLETED_DISCONNECTS and self.ready:
                self._end(COMPLETED_DISCONNECTS[signal.reason], at)
            else:
                self._error(NETWORK_LOST if self._recover_by is not None else CONNECT_FAILED, signal.reason, at)
                self._end("error", at)
        elif isinstance(signal, JoinFailed):
            self._error(CONNECT_FAILED, signal.message, at)
            self.finished = True  # no call to end: a refused join gets no ended, as in the reference protocol

    def tick(self, now: float) -> None:
        """A recovery past its deadline is a lost network: ``error`` now, ``ended`` once the room is left."""
        if self._recover_by is not None and now >= self._recover_by and self.error is None:
            self._error(NETWORK_LOST, f"no recovery within {self.reconnect_timeout:g}s", now)
            self._recover_by = None
            self.wants_leave = True

    # -- internals -------------------------------------------------------------------------------

    def _error(self, code: str, message: str, at: float) -> None:
        self.error = Error(code, message)
        self._events.append((self.error, at))

    def _end(self, reason: str, at: float) -> None:
        self.finished = True
        self.wants_leave = False
        self.end_reason = reason
        duration = 0.0 if self._joined_at is None else float(round(at - self._joined_at))
        self._events.append((Ended(self.call_id, duration, self.end_reason), at))


# -- the driver: the livekit SDK on an asyncio loop of its own, handed to gevent --------------------


class RoomLoop:
    """The process's one asyncio loop for every LiveKit room, in an OS thread of its own.

    The livekit SDK is asyncio (its media and signalling run in its native library's threads and
    report to the loop). Under gevent's monkey-patching a ``threading.Thread`` is a greenlet and the
    patched selectors wait on gevent's hub, so the loop gets the original ``_thread`` and selector:
    a real thread, blocking in its own ``select``. What the rooms report comes back to gevent through
    the hub's thread-safe callback, in order, with the ``time.monotonic()`` (one clock for the whole
    process) at which the loop saw it.
    """

    def __init__(self) -> None:
        selector = _original("selectors", "DefaultSelector")()
        self.loop = asyncio.SelectorEventLoop(selector)
        self._hub = gevent.get_hub()
        _original("_thread", "start_new_thread")(self.loop.run_forever, ())

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coroutine`` on the loop (from gevent)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback`` on the loop (from gevent)."""
        self.loop.call_soon_threadsafe(callback, *args)

    def to_gevent(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call ``callback`` in gevent's hub (from the loop)."""
        self._hub.loop.run_callback_threadsafe(callback, *args)


def _original(module: str, name: str) -> Any:
    import gevent.monkey

    if gevent.monkey.is_module_patched(module):
        return gevent.monkey.get_original(module, name)
    return getattr(__import__(module), name)


@functools.cache
def room_loop() -> RoomLoop:
    """The process's room loop, started when the first LiveKit call needs it."""
    return RoomLoop()


class Microphone:
    """The rep's microphone as a LiveKit audio source, on the loop: a frame every period on an
    absolute schedule (wire.pacing), the clip's while one plays and silence between, as the
    reference transport's continuous microphone does. Clips are queued from gevent with the frame
    index they start at, which gevent computed on the same schedule (so ``say`` can answer at once)."""

    def __init__(self, capture: Callable[[bytes], Awaitable[None]], schedule: Schedule, silence: bytes) -> None:
        self.capture = capture
        self.schedule = schedule
        self.silence = silence
        self.clips: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self.lags: list[float] = []

    def queue(self, first: int, frames: tuple[bytes, ...]) -> None:
        self.clips.append((first, frames))

    async def run(self) -> None:
        schedule, clips = self.schedule, self.clips
        while True:
            await asyncio.sleep(max(0.0, schedule.next_deadline - time.monotonic()))
            now = time.monotonic()
            for k in schedule.take(now):
                while clips and clips[0][0] + len(clips[0][1]) <= k:
                    clips.popleft()  # a clip whose frames are all due by now (a late wake-up skipped some)
                frame = self.silence
                if clips and clips[0][0] <= k:
                    frame = clips[0][1][k - clips[0][0]]
                await self.capture(frame)
                self.lags.append(schedule.lag(k, now))


@dataclass(frozen=True, slots=True)
class Spoken:
    start: float
    end: float


class LiveKitTransport:
    """A call in a LiveKit room, the way the Athos SDK makes one (see the module's docstring).

    ``redeem`` (the call's: ``POST /roleplay/session`` with its token, inside ``connect`` as the SDK
    does) says where the call's room is; without it, ``url`` and ``token`` are the room's URL and
    ticket as they are.
    """

    def __init__(
        self,
        *,
        listener: CallListener,
        token: str,
        drill_key: str,
        url: str,
        audio: AudioFormat,
        pacer: Any = None,
        connect_timeout: float = 15.0,
        hangup_timeout: float = 10.0,
        redeem: Callable[[], Redemption] | None = None,
        loop: RoomLoop | None = None,
        **_: Any,
    ) -> None:
        self.listener = listener
        self.token = token
        self.url = url
        self.audio = audio
        self.connect_timeout = connect_timeout
        self.hangup_timeout = hangup_timeout
        self.unknown_messages = 0  # a room has no message this transport would not know
        self._redeem = redeem
        self._loop = loop
        self._call: RoomCall | None = None
        self._room: Any = None  # the livekit Room, on the loop
        self._mic: Microphone | None = None
        self._schedule: Schedule | None = None
        self._queued_until = 0  # the first frame index after what is queued on the microphone
        self._ready = gevent.event.Event()
        self._ended = gevent.event.Event()
        self._deadline: gevent.Greenlet | None = None

    # -- the Transport protocol --------------------------------------------------------------------

    @property
    def end_reason(self) -> str | None:
        return None if self._call is None else self._call.end_reason

    @property
    def last_error(self) -> TransportError | None:
        error = None if self._call is None else self._call.error
        return None if error is None else TransportError(str(error.code), error.message)

    def connect(self) -> None:
        started = time.monotonic()
        self.listener.event(Connecting(), started)
        try:
            room = self._redeem() if self._redeem is not None else Redemption(self.url, self.token, "", "")
        except TransportError as exc:  # the redeem failed: its own code, counted like a refused join
            self.listener.event(Error(exc.code, exc.message), time.monotonic())
            raise
        self._call = RoomCall(room.call_id, room.persona_name or "persona")
        self._loop = self._loop or room_loop()
        self._loop.run(self._join(room))
        if not self._ready.wait(max(0.0, started + self.connect_timeout - time.monotonic())):
            self._fail("connect_timeout", f"not in the room within {self.connect_timeout:g}s")
        if not self._call.ready:
            error = self.last_error or TransportError(CONNECT_FAILED, "the room was not joined")
            self.close()
            raise error

    def say(self, clip: Clip) -> Spoken:
        schedule = self._schedule
        if schedule is None or self._mic is None:
            now = time.monotonic()
            return Spoken(now, now)  # no microphone (the call is over): nothing leaves
        first = max(self._queued_until, schedule.index_at(time.monotonic()))
        self._queued_until = first + len(clip.frames)
        assert self._loop is not None
        self._loop.soon(self._mic.queue, first, clip.frames)
        return Spoken(schedule.deadline(first), schedule.deadline(self._queued_until))

    def hangup(self, timeout: float | None = None) -> None:
        call = self._call
        if call is None or call.finished:
            return
        call.hangup(time.monotonic())
        self._leave()
        limit = self.hangup_timeout if timeout is None else timeout
        if not self._ended.wait(limit):
            self._fail("hangup_timeout", f"no disconnect within {limit:g}s of the hang-up")

    def wait_ended(self, timeout: float | None = None) -> bool:
        return self._ended.wait(timeout)

    def close(self) -> None:
        if self._room is not None:
            self._leave()
        if self._deadline is not None:
            self._deadline.kill(block=False)
        self._ready.set()
        self._ended.set()

    # -- on the loop ---------------------------------------------------------------------------------

    async def _join(self, where: Redemption) -> None:
        from livekit import rtc  # its native library loads with it: only in a process that joins a room

        loop = self._loop
        assert loop is not None
        room = rtc.Room(loop=loop.loop)
        self._room = room

        def signal(value: Signal) -> None:
            loop.to_gevent(self._on_signal, value, time.monotonic())

        def speakers(active: list[Any]) -> None:
            local = room.local_participant.sid
            signal(ActiveSpeakers(any(p.sid == local for p in active), any(p.sid != local for p in active)))

        def subscribed(track: Any, *_: Any) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:  # the persona's voice
                asyncio.ensure_future(self._hear(track))

        room.on("active_speakers_changed", speakers)
        room.on("track_subscribed", subscribed)
        room.on("reconnecting", lambda: signal(RoomReconnecting()))
        room.on("reconnected", lambda: signal(RoomReconnected()))
        room.on("disconnected", lambda reason: signal(RoomDisconnected(rtc.DisconnectReason.Name(reason))))
        try:
            options = rtc.RoomOptions(connect_timeout=self.connect_timeout)
            await room.connect(where.connection_url, where.connection_ticket, options)
            signal(Joined())
            fmt = self.audio
            source = rtc.AudioSource(fmt.sample_rate, fmt.channels, queue_size_ms=fmt.frame_ms * 2)
            track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            samples = fmt.frame_bytes // 2

            async def capture(frame: bytes) -> None:
                await source.capture_frame(rtc.AudioFrame(frame, fmt.sample_rate, fmt.channels, samples))

            now = time.monotonic()
            self._schedule = Schedule(now, fmt.frame_seconds)
            self._mic = Microphone(capture, Schedule(now, fmt.frame_seconds), bytes(fmt.frame_bytes))
            asyncio.ensure_future(self._mic.run())
            signal(MicrophoneLive())
        except Exception as exc:  # the SDK's ConnectError, a refused publish: the join failed
            signal(JoinFailed(f"{type(exc).__name__}: {exc}"[:300]))

    async def _hear(self, track: Any) -> None:
        from livekit import rtc

        fmt, loop = self.audio, self._loop
        assert loop is not None
        stream = rtc.AudioStream(
            track, sample_rate=fmt.sample_rate, num_channels=fmt.channels, frame_size_ms=fmt.frame_ms
        )
        async for event in stream:
            loop.to_gevent(self.listener.audio, bytes(event.frame.data), time.monotonic())

    # -- in gevent -------------------------------------------------------------------------------------

    def _on_signal(self, signal: Signal, at: float) -> None:
        call = self._call
        if call is None:
            return
        call.receive(signal, at)
        self._after(call)

    def _after(self, call: RoomCall) -> None:
        for event, at in call.events_received():
            try:
                self.listener.event(event, at)
            except Exception:
                logger.exception("the call's listener raised on %r", event.name)
        if call.ready or call.finished:
            self._ready.set()
        if call.finished:
            self._ended.set()
        if call.wants_leave:
            self._leave()
        deadline = call.next_deadline()
        if deadline is not None and self._deadline is None:
            self._deadline = gevent.spawn_later(max(0.0, deadline - time.monotonic()), self._tick)

    def _tick(self) -> None:
        self._deadline = None
        if self._call is not None:
            self._call.tick(time.monotonic())
            self._after(self._call)

    def _fail(self, code: str, message: str) -> None:
        if self._call is not None:
            self._call.fail(time.monotonic(), code, message)
            self._after(self._call)
        self._leave()

    def _leave(self) -> None:
        room, self._room = self._room, None
        if room is not None and self._loop is not None:
            self._loop.run(room.disconnect())
