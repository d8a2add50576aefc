"""One real-time audio pacer per process, for the frames of every session.

A sleeping loop per session costs a greenlet switch and a timer per frame per session; with a
thousand 20 ms streams that is 50 000 timer wake-ups a second. The pacer keeps one heap of due
times instead, wakes once per due instant, and sends every frame due then in one pass. Due times
are absolute (``start + i * period``), so a late wake-up never shifts the frames after it: lag is
measured against the schedule and reported, not absorbed.

A :class:`Microphone` is one session's outgoing audio: clips (:class:`Utterance`) play one after
another on the frame grid, and a continuous microphone sends silence between them, as a real
client's does (the platform's voice activity detection needs the silence to hear a turn end).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import gevent
import gevent.event


class FrameSink(Protocol):
    """Where a microphone's frames go: a session, or anything with this method."""

    def send_audio_frame(self, frame: bytes) -> bool:
        """Send now if the call takes audio; False means the frame is lost (a drop, the end)."""
        ...


class Utterance:
    """One clip on a microphone. ``start``/``end`` are its due times on the monotonic clock."""

    __slots__ = ("frames", "start", "end", "sent", "skipped", "_index", "_done")

    def __init__(self, frames: Sequence[bytes], start: float, period: float) -> None:
        self.frames = frames
        self.start = start
        self.end = start + len(frames) * period  # when its audio has fully left
        self.sent = 0
        self.skipped = 0  # frames due while the call could not take audio (a drop): lost, as on a phone
        self._index = 0
        self._done = gevent.event.Event()
        if not frames:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the last frame has been sent (or the microphone closed)."""
        return self._done.wait(timeout)


class Microphone:
    """A session's outgoing audio stream, paced by an :class:`AudioPacer`."""

    __slots__ = ("sink", "period", "silence", "next_due", "closed", "_queue", "_pacer")

    def __init__(self, pacer: AudioPacer, sink: FrameSink, period: float, silence: bytes | None, start: float) -> None:
        self._pacer = pacer
        self.sink = sink
        self.period = period
        self.silence = silence  # None: a one-shot stream that finishes when its clips do
        self.next_due = start
        self.closed = False
        self._queue: deque[Utterance] = deque()

    def say(self, frames: Sequence[bytes]) -> Utterance:
        """Queue a clip; it starts on the next free frame slot after what is already queued."""
        if self.closed:
            raise RuntimeError("microphone is closed")
        start = self._queue[-1].end if self._queue else max(self.next_due, time.monotonic())
        utterance = Utterance(frames, self._snap(start), self.period)
        if frames:
            self._queue.append(utterance)
            self._pacer._schedule(self)
        return utterance

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def close(self) -> None:
        self.closed = True
        for utterance in self._queue:
            utterance._done.set()
        self._queue.clear()

    def _snap(self, t: float) -> float:
        """``t`` moved forward onto this microphone's frame grid."""
        if t <= self.next_due:
            return self.next_due
        steps = math.ceil((t - self.next_due) / self.period - 1e-6)  # float noise is not a frame
        return self.next_due + steps * self.period

    def _tick(self, due: float, now: float, lags: list[float]) -> bool:
        """Send the frame due at ``due``; returns whether the microphone stays scheduled."""
        if self.closed:
            return False
        queue = self._queue
        utterance = queue[0] if queue and queue[0].start <= due + 1e-9 else None
        if utterance is not None:
            frame = utterance.frames[utterance._index]
        elif self.silence is not None:
            frame = self.silence
        else:  # one-shot and nothing due now (cannot happen: clips are contiguous)
            return bool(queue)
        sent = self.sink.send_audio_frame(frame)
        if sent:
            lags.append(now - due)
        if utterance is not None:
            if sent:
                utterance.sent += 1
            else:
                utterance.skipped += 1
            utterance._index += 1
            if utterance._index == len(utterance.frames):
                queue.popleft()._done.set()
        self.next_due = due + self.period
        return self.silence is not None or bool(queue)


LAG_BATCH = 1024
LAG_FLUSH_S = 0.5


class AudioPacer:
    """Sends due frames of every microphone from one greenlet.

    ``on_lags(seconds)`` receives, in batches, how late each frame sent left versus its due time:
    recording a histogram sample per frame would cost as much as a tenth of the frame's send, so
    the pacer hands them over at most every ``LAG_BATCH`` frames or ``LAG_FLUSH_S`` seconds, and
    whenever it runs out of work.
    """

    def __init__(self, on_lags: Callable[[list[float]], None] | None = None) -> None:
        self.on_lags = on_lags
        self._lags: list[float] = []
        self._flushed = time.monotonic()
        self._heap: list[tuple[float, int, Microphone]] = []
        self._scheduled: set[int] = set()  # ids of microphones in the heap, so none is in it twice
        self._seq = itertools.count()
        self._wakeup = gevent.event.Event()
        self._greenlet: gevent.Greenlet | None = None

    def microphone(
        self, sink: FrameSink, period: float, silence: bytes | None, start: float | None = None
    ) -> Microphone:
        """A new stream into ``sink``. With ``silence`` it sends that frame whenever no clip plays."""
        mic = Microphone(self, sink, period, silence, time.monotonic() if start is None else start)
        if silence is not None:
            self._schedule(mic)
        return mic

    def play(self, sink: FrameSink, frames: Sequence[bytes], period: float, start: float | None = None) -> Utterance:
        """Play one clip into ``sink`` and stop."""
        return self.microphone(sink, period, None, start).say(frames)

    @property
    def active_streams(self) -> int:
        return len(self._heap)

    def _schedule(self, mic: Microphone) -> None:
        if id(mic) in self._scheduled:
            return
        self._scheduled.add(id(mic))
        due = max(mic.next_due, mic._queue[0].start) if mic._queue else mic.next_due
        heapq.heappush(self._heap, (due, next(self._seq), mic))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        self._wakeup.set()

    def _run(self) -> None:
        heap, lags = self._heap, self._lags
        while heap:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, _, mic = heapq.heappop(heap)
                if mic._tick(due, now, lags):
                    heapq.heappush(heap, (mic.next_due, next(self._seq), mic))
                else:
                    self._scheduled.discard(id(mic))
            if len(lags) >= LAG_BATCH or now - self._flushed >= LAG_FLUSH_S or not heap:
                self._flush_lags(now)
            if heap:
                self._wakeup.clear()
                self._wakeup.wait(heap[0][0] - time.monotonic())

    def _flush_lags(self, now: float) -> None:
        self._flushed = now
        if self._lags:
            batch = self._lags.copy()
            self._lags.clear()  # in place: the running loop holds this list
            if self.on_lags is not None:
                self.on_lags(batch)


_default: AudioPacer | None = None


def default_pacer() -> AudioPacer:
    """The process-wide pacer that sessions share unless given another."""
    global _default
    if _default is None:
        _default = AudioPacer()
    return _default
