"""The load generator watching itself: CPU, memory and event-loop lag, and a saturation verdict.

A generator whose core is full or whose event loop wakes up late makes every latency it measures
a lie (the delay is ours, not the platform's). The monitor samples the gevent loop's lateness every
``tick`` seconds and the process's CPU and memory every second, and calls the generator saturated
while, over the last ``window`` seconds, CPU use exceeds ``cpu_limit`` of one core or the loop's
p99 lag exceeds ``lag_limit``. Saturation is judged only while users run (``running``): the
start-up and a run's end (draining, writing reports) are not the run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import gevent
import numpy as np
import psutil

from .metrics import Metrics

logger = logging.getLogger(__name__)


# Calibrated on the fidelity benchmark (docs/performance.md): at 700 users the generator's 5-second
# CPU peaked at 78-83% of a core, unflagged at the old 90%, and connect_ready's p95 was already
# 5.4-9 ms off the simulator's truth (handshakes queued behind the busy loop); at 400 users, 60%
# CPU, it was within 3 ms. A generator past this share of a core is saturated.
CPU_LIMIT = 0.75
# The loop's lateness is sampled every TICK, a frame of audio, so a stall is seen within a frame of
# its start; a tick a frame late is a stall, and persona audio gaps it covers are the generator's
# (hearing.PersonaStream.judge).
TICK = 0.02
STALL = 0.02


class HealthMonitor:
    def __init__(
        self,
        metrics: Metrics,
        *,
        users: Callable[[], int] | None = None,
        running: Callable[[], bool] | None = None,
        tick: float = TICK,
        window: float = 5.0,
        cpu_limit: float = CPU_LIMIT,
        lag_limit: float = 0.020,
    ) -> None:
        self.metrics = metrics
        self.users = users
        self.running = running
        self.tick = tick
        self.window = window
        self.cpu_limit = cpu_limit
        self.lag_limit = lag_limit
        self.saturated = False
        self.saturated_seconds = 0.0
        self.max_cpu = 0.0
        self._process = psutil.Process()
        self._lags: deque[float] = deque(maxlen=int(window / tick))
        self._cpu: deque[tuple[float, float]] = deque(maxlen=int(window) + 1)  # (wall, cpu seconds)
        self._greenlet: gevent.Greenlet | None = None
        self._running_since: float | None = None
        self._last_sample: float | None = None

    def start(self) -> HealthMonitor:
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        next_sample = time.monotonic()
        while True:
            due = time.monotonic() + self.tick
            gevent.sleep(self.tick)
            woke = time.monotonic()
            lag = max(0.0, woke - due)
            self._lags.append(lag)
            self.metrics.loop_lag.observe(lag, worker=self.metrics.source)
            if lag > STALL:  # the loop was blocked from at most a tick before due until now
                self.metrics.loop_stalls.append((due, woke))
            if woke >= next_sample:
                next_sample = max(next_sample + 1.0, woke)  # a late loop samples late, not in a burst
                self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        since, self._last_sample = self._last_sample, now
        times = self._process.cpu_times()
        self._cpu.append((now, times.user + times.system))
        cpu = 0.0
        if len(self._cpu) > 1:
            (t0, c0), (t1, c1) = self._cpu[0], self._cpu[-1]
            cpu = (c1 - c0) / max(t1 - t0, 1e-9)
        lag_p99 = float(np.percentile(self._lags, 99)) if self._lags else 0.0
        # judge only once a test has run for a whole window: start-up (imports, loading audio) and
        # the end (draining scores, writing reports) are not the run. Time, not a count of ticks:
        # a saturated loop ticks late, and would otherwise take far longer to be judged.
        running = self.running is None or self.running()
        if not running:
            self._running_since = None
            self._lags.clear()
            self._cpu.clear()
            self._cpu.append((now, times.user + times.system))
        elif self._running_since is None:
            self._running_since = now
        full = self._running_since is not None and now - self._running_since >= self.window
        if running:
            self.max_cpu = max(self.max_cpu, cpu)
        saturated = running and full and (cpu > self.cpu_limit or lag_p99 > self.lag_limit)
        saturated_for = now - since if saturated and since is not None else 0.0
        self.saturated_seconds += saturated_for  # wall time, however late this sample came
        if saturated != self.saturated:
            self.saturated = saturated
            if saturated:
                logger.warning(
                    "athos-load generator saturated (CPU %.0f%% of a core, loop lag p99 %.0f ms): "
                    "its timings now include its own delay; add workers or lower the load",
                    cpu * 100,
                    lag_p99 * 1000,
                )
        if self.users is not None:
            self.metrics.users = self.users()
        sample = {
            "cpu_seconds": self._cpu[-1][1],
            "memory_bytes": float(self._process.memory_info().rss),
            "open_fds": float(self._process.num_fds()) if hasattr(self._process, "num_fds") else 0.0,
            "saturated": 1.0 if saturated else 0.0,
            "cpu_ratio": cpu,
            "loop_lag_p99": lag_p99,
            "saturated_seconds": self.saturated_seconds,
        }
        self.metrics.record_health(sample, saturated_for=saturated_for)

    def summary(self) -> dict[str, float]:
        return {
            "max_cpu_ratio": round(self.max_cpu, 3),
            "saturated_seconds": self.saturated_seconds,
        }
