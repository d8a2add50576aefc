"""One task that sends the persona audio of every speaking call, on absolute deadlines.

A sleeping task per call would cost a timer, a future and a task switch per frame per call; here a
timing wheel of ``GRANULARITY`` buckets holds each speaking call once, at its next deadline, and a
single loop wakes per bucket, lets every due call send what is due, and re-files it. The buckets are
themselves a :class:`~athos_load.wire.pacing.Schedule` (bucket ``k`` is due at ``k * granularity``),
so the wheel follows the same rule as a call's frames: a bucket is visited only once its deadline
has passed, a late wake-up visits every bucket it missed at once, and the wake-up's lag is measured
against the first due bucket's deadline. A call is filed in the first bucket at or after its own
deadline, so it is never paced early, and at most one bucket late plus loop latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

from athos_load.wire.pacing import Schedule

GRANULARITY = 0.002  # seconds per wheel bucket
LAG_WINDOW = 2048  # recent wake-ups kept for lag statistics (~4 s while audio flows)


class Paced(Protocol):
    pacer_slot: int  # the bucket the pacer filed the call in; a stale entry has another value

    def pace(self, now: float) -> float | None:
        """Send what is due at ``now``; return the next deadline, or None when done."""


class Pacer:
    def __init__(self, granularity: float = GRANULARITY, lag_window: int | None = LAG_WINDOW) -> None:
        self._buckets = Schedule(0.0, granularity)
        self._buckets.next = self._buckets.index_at(time.monotonic())  # the first bucket not yet visited
        self._wheel: dict[int, list[Paced]] = {}
        self._wake = asyncio.Event()
        # how late each wake-up started versus its bucket's deadline: the simulator's own share of
        # persona audio lateness, apart from the network's and the client's
        self.lags: deque[float] = deque(maxlen=lag_window)  # None: keep every one

    def schedule(self, item: Paced, due: float) -> None:
        """File ``item`` to be paced at ``due`` (a ``time.monotonic()`` deadline); replaces any earlier filing."""
        buckets = self._buckets
        slot = buckets.index_at(due)
        if slot < buckets.next:  # already past: the next bucket visited
            slot = buckets.next
        item.pacer_slot = slot
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [item]
            self._wake.set()
        else:
            bucket.append(item)

    @staticmethod
    def cancel(item: Paced) -> None:
        """Forget ``item``; its filed entry is skipped lazily."""
        item.pacer_slot = -1

    async def run(self) -> None:
        buckets = self._buckets
        wheel = self._wheel
        monotonic = time.monotonic
        while True:
            if not wheel:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = monotonic()
            slots = buckets.take(now)  # every bucket whose deadline has passed, those missed too
            if len(slots) > len(wheel) + 1:  # long idle gap: visit only the filed buckets
                slots = sorted(s for s in wheel if s < buckets.next)
            late = True  # the first due bucket tells how late this wake-up is
            for slot in slots:
                items = wheel.pop(slot, None)
                if items is None:
                    continue
                if late:
                    self.lags.append(buckets.lag(slot, now))
                    late = False
                for item in items:
                    if item.pacer_slot != slot:
                        continue
                    due = item.pace(now)
                    if due is None:
                        item.pacer_slot = -1
                    else:
                        self.schedule(item, due)
            await asyncio.sleep(max(0.0, buckets.next_deadline - monotonic()))
