"""Load shapes, chosen by name with ``--athos-shape`` and ``--athos-shape-params key=value,...``.

=========  ==================================================================================
ramp       Locust's own: ``-u`` users at ``-r`` per second, for ``-t`` (the default)
steps      ``start`` users, then ``+step`` every ``step_seconds``, ``steps`` times, then stop
spike      ``base`` users; at ``at`` seconds jump to ``peak`` for ``hold`` seconds; back to
           ``base`` for ``recover`` seconds, then stop
soak       ramp to ``-u`` over ``ramp_seconds``, hold for ``hold_seconds`` (or until ``-t``); with
           ``low`` > 0 the hold is a daily-traffic wave: ``-u`` users, down to ``low`` half a
           ``period`` later and back, sinusoidally. The first ``warmup_seconds`` (the ramp when
           not given) are left out of the run's timings, drift and change-points
capacity   like steps, but after each step evaluate ``gate`` (e.g. ``connect_ready.p95<1.0``)
           on that step's recordings; stop at the first step that breaks it and report the last
           good level
=========  ==================================================================================

The shape reads ``-u``/``-r`` where they make sense (``use_common_options``), so one locustfile
serves every shape.
"""

from __future__ import annotations

import logging
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from locust import LoadTestShape

from ..histogram import LogHistogram
from ..metrics import Timing

logger = logging.getLogger(__name__)

# parameters that must be above zero (a step of 0 seconds divides by zero); every other one >= 0
POSITIVE = frozenset({"step_seconds", "steps", "min_samples", "period"})
UNSET = -1  # a default that means "derived from another parameter" (soak's warm-up: its ramp)
GATE = re.compile(r"^(\w+)\.(p50|p95|p99|max)\s*(<=|<)\s*([0-9.]+)$")


def parse_params(shape: str, text: str) -> dict[str, Any]:
    """``key=value,...`` over the shape's defaults; unknown keys and bad numbers are errors."""
    params: dict[str, Any] = dict(DEFAULTS[shape])
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--athos-shape-params: {item!r} is not key=value")
        if key == "gate" and shape == "capacity":
            params["gate"] = Gate.parse(value)
            continue
        if key not in params:
            known = ", ".join(sorted(params)) or "none"
            raise ValueError(f"--athos-shape-params: {key!r} is not a parameter of {shape} (known: {known})")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--athos-shape-params: {key}={value!r} is not a number") from None
        low_ok = number > 0 if key in POSITIVE else number >= 0
        if not (math.isfinite(number) and low_ok):
            bound = "> 0" if key in POSITIVE else ">= 0"
            raise ValueError(f"--athos-shape-params: {key}={value!r} must be a finite number {bound}")
        params[key] = number
    if params.get("warmup_seconds") == UNSET:
        params["warmup_seconds"] = params["ramp_seconds"]
    if shape == "capacity" and "gate" not in params:
        raise ValueError("--athos-shape capacity needs gate=TIMING.STAT<SECONDS, e.g. gate=connect_ready.p95<1.0")
    return params


READS_USERS = frozenset({"ramp", "soak"})  # the shapes whose concurrency is -u


def check_load(shape: str, users: int | None, rate: float | None) -> None:
    """``-u``/``-r`` as the shape reads them (None: not given, Locust's default of 1). ``-u 0``
    starts no user (Locust allows it: users can be added later from its UI, which a shape does not
    do), so a run would measure nothing for its whole ``-t``: refused, as a rate of no users a second."""
    if users is not None and users < 1 and shape in READS_USERS:
        raise ValueError(f"-u/--users {users}: the {shape} shape needs at least 1 user (-u 0 would run none)")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"-r/--spawn-rate {rate:g}: must be a number of users per second above 0")


@dataclass(frozen=True)
class Gate:
    """``timing.stat < seconds`` on one window of recordings."""

    timing: Timing
    stat: str
    op: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        match = GATE.match(text.strip())
        if not match:
            raise ValueError(f"gate {text!r}: expected TIMING.STAT<SECONDS, e.g. connect_ready.p95<1.0")
        name, stat, op, limit = match.groups()
        try:
            timing = Timing(name)
        except ValueError:
            raise ValueError(f"gate {text!r}: unknown timing {name!r} ({', '.join(Timing)})") from None
        return cls(timing, stat, op, float(limit))

    def value(self, window: LogHistogram) -> float | None:
        return window.max if self.stat == "max" and window.count else window.percentile(float(self.stat[1:]))

    def holds(self, value: float) -> bool:
        return (operator.lt if self.op == "<" else operator.le)(value, self.limit)

    def __str__(self) -> str:
        return f"{self.timing.value}.{self.stat}{self.op}{self.limit:g}"


class Shape:
    """One load shape: ``tick`` gives (users, spawn rate) at ``t`` seconds, or None to stop;
    ``defaults`` are its ``--athos-shape-params``."""

    defaults: ClassVar[dict[str, float]] = {}

    def __init__(self, params: dict[str, Any], environment: Any) -> None:
        self.p = params
        self.environment = environment

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        raise NotImplementedError


class Ramp(Shape):
    defaults: ClassVar[dict[str, float]] = {}

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        return users, rate


class Steps(Shape):
    defaults: ClassVar[dict[str, float]] = {"start": 10, "step": 10, "step_seconds": 60, "steps": 5}

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        p = self.p
        index = int(t // p["step_seconds"])
        if index >= p["steps"]:
            return None
        return int(p["start"] + index * p["step"]), rate


class Spike(Shape):
    defaults: ClassVar[dict[str, float]] = {"base": 10, "peak": 100, "at": 60, "hold": 30, "recover": 60}

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        p = self.p
        if t < p["at"]:
            return int(p["base"]), rate
        if t < p["at"] + p["hold"]:
            return int(p["peak"]), max(rate, p["peak"])  # a spike arrives at once
        if t < p["at"] + p["hold"] + p["recover"]:
            return int(p["base"]), max(rate, p["peak"])
        return None


class Soak(Shape):
    defaults: ClassVar[dict[str, float]] = {
        "ramp_seconds": 300,
        "hold_seconds": 0,
        "low": 0,
        "period": 86400,
        "warmup_seconds": -1,
    }

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        p = self.p
        if p["hold_seconds"] and t > p["ramp_seconds"] + p["hold_seconds"]:
            return None
        if t >= p["warmup_seconds"]:
            self.environment.athos.metrics.end_warmup()  # once; later calls do nothing
        ramp = users / p["ramp_seconds"] if p["ramp_seconds"] else rate
        wave = (users - p["low"]) * math.pi / p["period"] if p["low"] else 0.0  # its steepest, users/s
        return soak_users(users, p, t), max(ramp, wave, 0.01)


class Capacity(Shape):
    defaults: ClassVar[dict[str, float]] = {"start": 10, "step": 10, "step_seconds": 60, "steps": 20, "min_samples": 20}

    def __init__(self, params: dict[str, Any], environment: Any) -> None:
        super().__init__(params, environment)
        self.search: CapacitySearch | None = None  # made at the first tick: the run's metrics exist by then

    def tick(self, t: float, users: int, rate: float) -> tuple[int, float] | None:
        if self.search is None:
            metrics = self.environment.athos.metrics
            self.search = CapacitySearch(self.p, lambda: metrics.timing(self.p["gate"].timing))
        return self.search.tick(t, rate)


SHAPES: dict[str, type[Shape]] = {"ramp": Ramp, "steps": Steps, "spike": Spike, "soak": Soak, "capacity": Capacity}
DEFAULTS = {name: shape.defaults for name, shape in SHAPES.items()}


class AthosShape(LoadTestShape):
    """The one shape class the locustfile exports; ``--athos-shape`` picks the :class:`Shape` it runs."""

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self._shape: Shape | None = None

    def tick(self) -> tuple[int, float] | None:
        environment = self.runner.environment
        opts = environment.parsed_options
        if self._shape is None:
            name = opts.athos_shape or "ramp"
            self._shape = SHAPES[name](parse_params(name, opts.athos_shape_params), environment)
        # Locust's defaults when not given; 0 is refused at start (check_load), never read as 1
        users = 1 if opts.num_users is None else int(opts.num_users)
        rate = 1.0 if opts.spawn_rate is None else float(opts.spawn_rate)
        t = self.get_run_time()
        if opts.run_time and t >= opts.run_time:
            return None  # Locust's -t: a headless run with a shape waits on the shape, not the timer
        return self._shape.tick(t, users, rate)

    @property
    def capacity_result(self) -> dict[str, Any] | None:
        """The capacity search's verdict once it has one (for the JSON summary and the exit code)."""
        shape = self._shape
        if not isinstance(shape, Capacity) or shape.search is None:
            return None
        return shape.search.verdict()


def soak_users(users: int, p: dict[str, Any], t: float) -> int:
    """The soak's concurrency at ``t``: ``users`` after the ramp, or with ``low`` a wave that starts
    at ``users``, is down to ``low`` half a ``period`` later and back up at a full period."""
    low = min(p["low"], users)
    if not low or t < p["ramp_seconds"]:
        return users
    phase = 2.0 * math.pi * (t - p["ramp_seconds"]) / p["period"]
    return round(low + (users - low) * (1.0 + math.cos(phase)) / 2.0)


class CapacitySearch:
    """Steps concurrency up; after each step judges the gate on that step's window only."""

    def __init__(self, params: dict[str, Any], read: Callable[[], LogHistogram]) -> None:
        self.p = params
        self.gate: Gate = params["gate"]
        self.read = read  # the gate's timing so far, over the whole run (merged from every worker)
        self.index = 0
        self.last_good: int | None = None
        self.result: dict[str, Any] | None = None
        self._snapshot = self.read().copy()

    def users(self, index: int) -> int:
        return int(self.p["start"] + index * self.p["step"])

    def _window(self) -> LogHistogram:
        """This step's recordings: the running histogram since the snapshot at the step's start."""
        return self.read().since(self._snapshot)

    def tick(self, t: float, rate: float) -> tuple[int, float] | None:
        if self.result is not None:
            return None
        index = int(t // self.p["step_seconds"])
        if index > self.index:  # a step just finished: judge it
            window = self._window()
            value = self.gate.value(window)
            users = self.users(self.index)
            if window.count >= self.p["min_samples"] and value is not None and self.gate.holds(value):
                self.last_good = users
                logger.info("capacity: %d users hold %s (%.3fs)", users, self.gate, value)
            else:
                shown = "no data" if value is None else f"{value:.3f}s"
                self.result = self._result(users, value, window.count)
                logger.warning("capacity: %d users break %s (%s, %d samples)", users, self.gate, shown, window.count)
                if self.last_good is None:
                    print(f"athos-load capacity: no step held {self.gate}: the first, {users} users, gave {shown}")
                else:
                    print(f"athos-load capacity: last good level {self.last_good} users; {users} broke {self.gate}")
                return None
            self.index = index
            self._snapshot = self.read().copy()
            if self.index >= self.p["steps"]:
                self.result = self._result(None, value, window.count)
                print(f"athos-load capacity: every step held {self.gate}; last good level {self.last_good} users")
                return None
        return self.users(self.index), rate

    def _result(self, broke_at: int | None, value: float | None, samples: int) -> dict[str, Any]:
        """``value`` and ``samples``: the gate's figure on the step that broke (or the last one)."""
        return {
            "gate": str(self.gate),
            "last_good_users": self.last_good,
            "broke_at": broke_at,
            "value": value,
            "samples": samples,
            "finished": True,
        }

    def verdict(self) -> dict[str, Any]:
        """The result, or what is known when the run ended first (``-t``) with the search unfinished."""
        if self.result is not None:
            return self.result
        return {**self._result(None, None, 0), "finished": False}
