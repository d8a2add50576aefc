"""One real-time audio pacer per process, for the frames of every session.

A sleeping loop per session costs a greenlet switch and a timer per frame per session; with a
thousand 20 ms streams that is 50 000 timer wake-ups a second. The pacer keeps one heap of due
times instead, wakes once per due instant, and sends every frame due then in one pass. Due times
are absolute (``start + i * period``), so a late wake-up never shifts the frames after it: lag is
measured against the schedule and reported, not absorbed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import gevent
import gevent.event

logger = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Where a stream's frames go: a session, or anything with these two methods."""

    def can_send_audio(self) -> bool: ...

    def send_audio_frame(self, frame: bytes) -> bool: ...


class AudioStream:
    """One clip being played into one session. ``wait()`` blocks until its last frame is due."""

    __slots__ = ("sink", "frames", "start", "period", "index", "sent", "skipped", "_done", "cancelled")

    def __init__(self, sink: FrameSink, frames: Sequence[bytes], start: float, period: float) -> None:
        self.sink = sink
        self.frames = frames
        self.start = start
        self.period = period
        self.index = 0
        self.sent = 0
        self.skipped = 0  # frames due while the call could not take audio (a drop): lost, as on a phone
        self.cancelled = False
        self._done = gevent.event.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def end(self) -> float:
        """When the last frame's audio ends, on the monotonic clock."""
        return self.start + len(self.frames) * self.period

    def cancel(self) -> None:
        self.cancelled = True
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class AudioPacer:
    """Sends due frames of all streams from one greenlet.

    ``on_lag(seconds)`` is called for every frame sent with how late it left versus its due time.
    """

    def __init__(self, on_lag: Callable[[float], None] | None = None) -> None:
        self.on_lag = on_lag
        self._heap: list[tuple[float, int, AudioStream]] = []
        self._seq = itertools.count()
        self._wakeup = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def play(self, sink: FrameSink, frames: Sequence[bytes], period: float, start: float | None = None) -> AudioStream:
        """Schedule ``frames`` into ``sink``, one every ``period`` seconds from ``start`` (default now)."""
        stream = AudioStream(sink, frames, time.monotonic() if start is None else start, period)
        if not frames:
            stream._done.set()
            return stream
        heapq.heappush(self._heap, (stream.start, next(self._seq), stream))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        self._wakeup.set()
        return stream

    @property
    def active_streams(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        heap = self._heap
        while heap:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, _, stream = heapq.heappop(heap)
                if stream.cancelled:
                    continue
                self._send(stream, due, now)
            if heap:
                self._wakeup.clear()
                self._wakeup.wait(heap[0][0] - time.monotonic())

    def _send(self, stream: AudioStream, due: float, now: float) -> None:
        sink = stream.sink
        if sink.can_send_audio():
            if sink.send_audio_frame(stream.frames[stream.index]):
                stream.sent += 1
                if self.on_lag is not None:
                    self.on_lag(now - due)
            else:
                stream.skipped += 1
        else:
            stream.skipped += 1
        stream.index += 1
        if stream.index < len(stream.frames):
            heapq.heappush(self._heap, (stream.start + stream.index * stream.period, next(self._seq), stream))
        else:
            stream._done.set()


_default: AudioPacer | None = None


def default_pacer() -> AudioPacer:
    """The process-wide pacer that sessions share unless given another."""
    global _default
    if _default is None:
        _default = AudioPacer()
    return _default
