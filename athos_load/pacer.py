"""The real-time audio pacer for the frames of many sessions: one greenlet, one heap.

A sleeping loop per session costs a greenlet switch and a timer per frame per session; with a
thousand 20 ms streams that is 50 000 timer wake-ups a second. The pacer keeps one heap of due
times instead, wakes once per due instant, and sends every frame due then in one pass. What is due
is decided by each microphone's :class:`~athos_load.wire.pacing.Schedule` (absolute deadlines,
catch-up after a late wake-up, never early, lag against the schedule); this module is the gevent
driver around it: the clock, the heap, the greenlet, the sink.

A :class:`Microphone` is one session's outgoing audio: clips (:class:`Utterance`) play one after
another on the frame grid, and a continuous microphone sends silence between them, as a real
client's does (the platform's voice activity detection needs the silence to hear a turn end).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import gevent
import gevent.event

from .wire.pacing import Schedule


class FrameSink(Protocol):
    """Where a microphone's frames go: a session, or anything with this method."""

    def send_audio_frame(self, frame: bytes) -> bool:
        """Send now if the call takes audio; False means the frame is lost (a drop, the end)."""
        ...


class Utterance:
    """One clip on a microphone. ``start``/``end`` are its due times on the monotonic clock;
    ``first`` is the index of its first frame on the microphone's schedule."""

    __slots__ = ("frames", "first", "start", "end", "sent", "skipped", "_index", "_done")

    def __init__(self, frames: Sequence[bytes], start: float, period: float, first: int = 0) -> None:
        self.frames = frames
        self.first = first
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
    """A session's outgoing audio stream, paced by an :class:`AudioPacer` on its own frame grid."""

    __slots__ = ("sink", "silence", "schedule", "closed", "_queue", "_pacer", "_order")

    def __init__(self, pacer: AudioPacer, sink: FrameSink, period: float, silence: bytes | None, start: float) -> None:
        self._pacer = pacer
        self.sink = sink
        self.silence = silence  # None: a one-shot stream that finishes when its clips do
        self.schedule = Schedule(start, period)
        self.closed = False
        self._queue: deque[Utterance] = deque()
        self._order = next(pacer._seq)  # breaks ties in the heap: unique, and cheaper than a count per push

    @property
    def period(self) -> float:
        return self.schedule.period

    @property
    def next_due(self) -> float:
        """When the next frame is due."""
        return self.schedule.next_deadline

    def say(self, frames: Sequence[bytes]) -> Utterance:
        """Queue a clip; it starts on the next free frame slot after what is already queued."""
        if self.closed:
            raise RuntimeError("microphone is closed")
        schedule, queue = self.schedule, self._queue
        if queue:
            first = queue[-1].first + len(queue[-1].frames)  # right behind the clip before, no gap
        else:
            first = max(schedule.next, schedule.index_at(time.monotonic()))
            if self.silence is None:
                schedule.next = first  # an idle one-shot stream owes no frames until the clip starts
        utterance = Utterance(frames, schedule.deadline(first), schedule.period, first)
        if frames:
            queue.append(utterance)
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

    def _send_due(self, now: float, lags: list[float]) -> float | None:
        """Send every frame due at ``now`` (all the missed ones after a late wake-up); returns when
        the next one is due, or None when the microphone leaves the pacer (closed, or clips done)."""
        if self.closed:
            return None
        schedule, queue, silence = self.schedule, self._queue, self.silence
        send = self.sink.send_audio_frame
        for k in schedule.take(now):
            utterance = queue[0] if queue and queue[0].first <= k else None
            if utterance is not None:
                frame = utterance.frames[utterance._index]
            elif silence is not None:
                frame = silence
            else:  # a one-shot stream whose last clip has left; it owes nothing until its next clip
                return None
            sent = send(frame)
            if self.closed:  # while sending (a blocking send lets the session end): its queue is gone
                return None
            if sent:
                lags.append(schedule.lag(k, now))
            if utterance is not None:
                if sent:
                    utterance.sent += 1
                else:
                    utterance.skipped += 1
                utterance._index += 1
                if utterance._index == len(utterance.frames):
                    queue.popleft()._done.set()
        if silence is None and not queue:
            return None
        return schedule.next_deadline


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
        self._seq = itertools.count()  # numbers the microphones
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
        heapq.heappush(self._heap, (mic.schedule.next_deadline, mic._order, mic))
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        self._wakeup.set()

    def _run(self) -> None:
        heap, lags = self._heap, self._lags
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        while heap:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                entry = heap[0]
                mic = entry[2]
                due = mic._send_due(now, lags)
                if heap[0] is not entry:  # a blocking send let another greenlet file an earlier stream
                    self._refile(entry, due)
                elif due is not None:
                    heapreplace(heap, (due, mic._order, mic))  # one sift instead of a pop and a push
                else:
                    heappop(heap)
                    self._scheduled.discard(id(mic))
            if len(lags) >= LAG_BATCH or now - self._flushed >= LAG_FLUSH_S or not heap:
                self._flush_lags(now)
            if heap:
                self._wakeup.clear()
                self._wakeup.wait(heap[0][0] - time.monotonic())

    def _refile(self, entry: tuple[float, int, Microphone], due: float | None) -> None:
        """Move ``entry``, no longer on top of the heap, to ``due`` (or out); rare, so O(n) is fine."""
        heap, mic = self._heap, entry[2]
        i = heap.index(entry)
        if due is not None:
            heap[i] = (due, mic._order, mic)
        else:
            heap[i] = heap[-1]
            heap.pop()
            self._scheduled.discard(id(mic))
        heapq.heapify(heap)

    def _flush_lags(self, now: float) -> None:
        self._flushed = now
        if self._lags:
            batch = self._lags.copy()
            self._lags.clear()  # in place: the running loop holds this list
            if self.on_lags is not None:
                self.on_lags(batch)
