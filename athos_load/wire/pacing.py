"""The real-time pacing schedule, sans-I/O: what is due at ``now``, with ``now`` passed in.

A stream of frames (a rep's microphone, a persona's utterance, the buckets of a timing wheel) is
paced on absolute deadlines: frame ``k`` is due at ``start + k * period``. Each deadline is computed
from ``start``, never by adding ``period`` to the one before, so a late wake-up shifts nothing after
it and float error does not build up over a long call. At each wake-up a driver follows one rule:

* never early: frame ``k`` goes only once ``deadline(k) <= now``;
* catch up: every frame whose deadline has passed is due now, all at once; a late wake-up sends what
  it missed immediately instead of sliding the rest of the stream later (drift);
* lag is ``now - deadline(k)`` for each frame sent: measured against the schedule and reported,
  never absorbed into it, and never negative.

The drivers, :class:`athos_load.pacer.AudioPacer` (gevent, the client) and
:class:`athos_load.sim.pacer.Pacer` (asyncio, the simulator), read the clock, sleep until
:attr:`Schedule.next_deadline`, then :meth:`Schedule.take` the frames due and send them. Every
comparison uses the same ``start + k * period`` expression, so "due" and "not early" agree to the
last bit, whatever float division would say.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Schedule"]


class Schedule:
    """The deadlines of one stream and how far it has got: frame ``k`` is due at ``start + k * period``.

    ``next`` is the first frame not yet sent; a driver that has sent frame ``k`` sets it to ``k + 1``.
    """

    __slots__ = ("start", "period", "next")

    def __init__(self, start: float, period: float, next: int = 0) -> None:
        if not period > 0:
            raise ValueError(f"period must be positive, not {period!r}")
        self.start = start
        self.period = period
        self.next = next

    def deadline(self, k: int) -> float:
        """When frame ``k`` is due."""
        return self.start + k * self.period

    @property
    def next_deadline(self) -> float:
        """When the first frame not yet sent is due: the time to wake up for this stream."""
        return self.start + self.next * self.period

    def index_at(self, t: float) -> int:
        """The first frame due at or after ``t`` (frame 0 at the earliest): the slot for something
        that may not begin before ``t``, such as a clip queued at ``t`` or a timer filed for ``t``."""
        start, period = self.start, self.period
        k = int((t - start) / period)  # float division can miss by a frame: the deadlines decide
        if start + k * period < t:
            k += 1
            while start + k * period < t:
                k += 1
        else:
            while k > 0 and start + (k - 1) * period >= t:
                k -= 1
        return k if k > 0 else 0

    def due(self, now: float) -> int:
        """How many frames from ``next`` on are due at ``now``: every one whose deadline has passed
        (a late wake-up catches up at once), none whose deadline has not (never early)."""
        return max(0, self._stop(now) - self.next)

    def take(self, now: float) -> Sequence[int]:
        """The frames due at ``now`` (see :meth:`due`), by index, with ``next`` moved past them."""
        start, period, k = self.start, self.period, self.next
        if start + k * period > now:
            return ()
        if start + (k + 1) * period > now:  # on time, the common case: one frame, no division
            self.next = k + 1
            return (k,)  # a tuple is quicker to build and walk than a range
        stop = self._stop(now)
        self.next = stop
        return range(k, stop)

    def _stop(self, now: float) -> int:
        """One past the last frame due at ``now`` (0 or less: not even frame 0)."""
        start, period = self.start, self.period
        last = int((now - start) / period)  # float division can miss by a frame: the deadlines decide
        if start + last * period > now:
            last -= 1
            while start + last * period > now:
                last -= 1
        else:
            while start + (last + 1) * period <= now:
                last += 1
        return last + 1

    def lag(self, k: int, now: float) -> float:
        """How late frame ``k`` is at ``now``: how long after its deadline it leaves."""
        return now - (self.start + k * self.period)

    def __repr__(self) -> str:
        return f"Schedule(start={self.start!r}, period={self.period!r}, next={self.next!r})"
