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
:attr:`Schedule.next_deadline`, ask :meth:`Schedule.due` and send. Comparisons are made with the
same ``start + k * period`` expression everywhere, so "due" and "not early" agree to the last bit.
"""

from __future__ import annotations

__all__ = ["Schedule"]


class Schedule:
    """The deadlines of one stream and how far it has got: frame ``k`` is due at ``start + k * period``.

    ``next`` is the first frame not yet sent; a driver that has sent frame ``k`` sets it to ``k + 1``.
    """

    __slots__ = ("start", "period", "next")

    def __init__(self, start: float, period: float, next: int = 0) -> None:  # noqa: A002 - the cursor's name
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
        k = -int((start - t) // period)  # ceil((t - start) / period), which float division may miss by one
        if k <= 0:
            return 0
        if start + (k - 1) * period >= t:
            return k - 1
        if start + k * period < t:
            return k + 1
        return k

    def due(self, now: float) -> int:
        """How many frames from ``next`` on are due at ``now``: every one whose deadline has passed
        (a late wake-up catches up at once), none whose deadline has not (never early)."""
        start, period, k = self.start, self.period, self.next
        if start + k * period > now:
            return 0
        if start + (k + 1) * period > now:
            return 1  # on time, the common case: no division
        last = int((now - start) // period)  # the last frame due, which float division may miss by one
        if start + last * period > now:
            last -= 1
        elif start + (last + 1) * period <= now:
            last += 1
        return last + 1 - k

    def lag(self, k: int, now: float) -> float:
        """How late frame ``k`` is at ``now``: how long after its deadline it leaves."""
        return now - (self.start + k * self.period)

    def __repr__(self) -> str:
        return f"Schedule(start={self.start!r}, period={self.period!r}, next={self.next!r})"
