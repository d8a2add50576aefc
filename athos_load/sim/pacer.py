"""One task that sends the persona audio of every speaking call, on absolute deadlines.

A sleeping task per call would cost a timer, a future and a task switch per frame per call; here a
timing wheel of ``GRANULARITY`` buckets holds each speaking call once, at its next deadline, and a
single loop wakes per bucket, lets every due call send what is due, and re-files it. A call's
deadlines are ``start + k * frame`` (absolute), so a late wake-up sends the missed frames at once
instead of drifting. Frames are never sent early, and at most one bucket late plus loop latency.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol

GRANULARITY = 0.002  # seconds per wheel bucket
LAG_WINDOW = 2048  # recent wake-ups kept for lag statistics (~4 s while audio flows)


class Paced(Protocol):
    pacer_slot: int  # the bucket the pacer filed the call in; a stale entry has another value

    def pace(self, now: float) -> float | None:
        """Send what is due at ``now``; return the next deadline, or None when done."""


class Pacer:
    def __init__(self, granularity: float = GRANULARITY) -> None:
        self._g = granularity
        self._wheel: dict[int, list[Paced]] = {}
        self._next = int(time.monotonic() / granularity)  # first bucket not yet processed
        self._wake = asyncio.Event()
        # how late each wake-up started versus its bucket's deadline: the simulator's own share of
        # persona audio lateness, apart from the network's and the client's
        self.lags: deque[float] = deque(maxlen=LAG_WINDOW)

    def schedule(self, item: Paced, due: float) -> None:
        """File ``item`` to be paced at ``due`` (a ``time.monotonic()`` deadline); replaces any earlier filing."""
        slot = -int(-due // self._g)  # ceil: the bucket is processed once its start has passed
        if slot < self._next:
            slot = self._next
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
        g = self._g
        wheel = self._wheel
        monotonic = time.monotonic
        while True:
            if not wheel:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = monotonic()
            current = int(now / g)
            if current - self._next > len(wheel):  # long idle gap: visit only the filed buckets
                slots = sorted(s for s in wheel if s <= current)
            else:
                slots = range(self._next, current + 1)
            self._next = current + 1
            late = True  # the first due bucket tells how late this wake-up is
            for slot in slots:
                items = wheel.pop(slot, None)
                if items is None:
                    continue
                if late:
                    self.lags.append(now - slot * g)
                    late = False
                for item in items:
                    if item.pacer_slot != slot:
                        continue
                    due = item.pace(now)
                    if due is None:
                        item.pacer_slot = -1
                    else:
                        self.schedule(item, due)
            await asyncio.sleep(max(0.0, (current + 1) * g - monotonic()))
