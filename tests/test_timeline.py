"""Time windows: bounded however long the run, nothing dropped when they coarsen, and a worker's
windows folding exactly into the master's."""

import json
import tracemalloc

import numpy as np
import pytest

from athos_load.metrics import Metrics, Outcome, Timing
from athos_load.timeline import BASE_SECONDS, Timeline, Window


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_long_run_keeps_a_bounded_number_of_windows_and_every_sample():
    clock = Clock()
    timeline = Timeline(clock=clock, max_windows=50)
    values = []
    for second in range(10_000):  # almost three hours, one sample a second, slower as it goes
        clock.t += 1.0
        value = 0.1 + second / 10_000
        timeline.observe("connect_ready", value)
        timeline.count("athos_errors", ("no_reply",))
        values.append(value)
        assert len(timeline.windows) <= 50
    assert timeline.width >= 10_000 / 50  # it coarsened ...
    hists = [w.timings["connect_ready"] for _, w in timeline]
    assert sum(h.count for h in hists) == 10_000  # ... merging, never dropping
    assert sum(w.counters[("athos_errors", ("no_reply",))] for _, w in timeline) == 10_000
    # each window holds exactly the samples of its own span, in order
    starts = [start for start, _ in timeline]
    assert starts == sorted(starts) and all(s % timeline.width == 0 for s in starts)
    medians = [h.percentile(50) for h in hists]
    assert medians == sorted(medians) and medians[0] < 0.2 and medians[-1] > 1.0


def test_worker_windows_fold_into_a_coarser_master():
    clock = Clock()
    master = Metrics(source="master")
    master.timeline.clock = clock
    workers = [Metrics(source="local"), Metrics(source="local")]
    for worker in workers:
        worker.timeline.clock = clock
    # the master has already coarsened (a long run): its windows are 8 s wide
    master.timeline.width = 8 * BASE_SECONDS
    expected = []
    for step in range(40):
        clock.t += 0.5
        for i, worker in enumerate(workers):
            worker.timings[Timing.CONNECT_READY].observe(0.2 + i, scenario="s")
            expected.append(0.2 + i)
            if step % 10 == 0:
                worker.call_started("s")
        if step % 6 == 5:  # a worker report every 3 s
            for i, worker in enumerate(workers):
                master.merge(worker.take_delta(), f"w{i}")
    for i, worker in enumerate(workers):
        master.merge(worker.take_delta(), f"w{i}")
    assert master.timeline.width == 8 * BASE_SECONDS
    summary = master.timeline_summary()
    assert summary["window_seconds"] == 8.0
    windows = summary["windows"]
    assert len(windows) == 3 or len(windows) == 4  # 20 s of samples on an 8 s grid
    assert sum(w["connect_ready"]["count"] for w in windows) == len(expected)
    assert sum(w["calls"]["started"] for w in windows) == 8
    # the levels stay per worker and add up: both workers' calls were active at once
    assert [w["active_calls"] for w in windows if w["active_calls"] is not None][-1] == 8
    run = master.timing(Timing.CONNECT_READY)
    merged = np.concatenate([[0.2] * 40, [1.2] * 40])
    assert abs(run.percentile(50) - np.percentile(merged, 50)) <= 0.001 * np.percentile(merged, 50)


def test_a_window_accounts_calls_and_health():
    clock = Clock()
    m = Metrics()
    m.timeline.clock = clock
    m.declare(["s"])
    m.call_started("s")
    m.call_started("s")
    clock.t += 1.0
    m.call_finished("s", Outcome.COMPLETED, 0.75)
    m.error("no_reply")
    m.users = 2
    m.record_health({"cpu_ratio": 0.97}, saturated_for=0.8)
    first, second = m.timeline_summary()["windows"]
    assert first["calls"]["started"] == 2 and first["active_calls"] == 2 and first["calls"]["completed"] == 0
    assert second["calls"]["completed"] == 1 and second["errors"] == {"no_reply": 1}
    assert first["session_seconds"] == 0.75 and second["session_seconds"] == 0  # where its seconds accrued
    assert second["saturated_seconds"] == 0.8
    assert second["cpu_ratio"] == 0.97 and second["users"] == 2
    assert second["active_calls"] == 2  # the level the finished call was part of


def test_session_seconds_sit_in_the_windows_they_accrued_in():
    """A call's connected time is counted when it ends, but into each window it spanned: a window
    of long calls none of which ended there still has its session-minutes (reconnect rates)."""
    clock = Clock()
    m = Metrics()
    m.timeline.clock = clock
    clock.t = 1000.25
    m.call_started("s")
    clock.t = 1003.75
    m.call_finished("s", Outcome.COMPLETED, 3.25)  # ready at 1000.5
    windows = m.timeline_summary()["windows"]
    assert [(w["start"], w["session_seconds"]) for w in windows] == [
        (1000.0, 0.5),
        (1001.0, 1.0),
        (1002.0, 1.0),
        (1003.0, 0.75),
    ]
    assert m.session_seconds.total() == 3.25
    # a call longer than the whole timeline coarsens it first; nothing is lost
    clock.t = 1003.75 + 1000
    m.call_finished("s", Outcome.COMPLETED, 1000.0)
    summary = m.timeline_summary()
    assert len(summary["windows"]) <= m.timeline.max_windows
    assert sum(w["session_seconds"] for w in summary["windows"]) == pytest.approx(1003.25)


def test_the_newest_windows_stay_at_full_resolution_beside_the_coarsened_run():
    """Two hours a sample a second: the run's windows coarsen to 64 s; the newest minute is kept
    second by second (older seconds dropped there: the run's windows hold them). A worker's delta
    lands in the master's recent windows too, a coarser one on its first second."""
    clock = Clock()
    m = Metrics()
    m.timeline.clock = clock
    for second in range(7200):
        clock.t = 1_800_000_000.0 + second
        m.timings[Timing.CONNECT_READY].observe(0.2, scenario="s")
    summary = m.timeline_summary()
    assert summary["window_seconds"] == 64.0 and len(summary["windows"]) <= 120
    recent = summary["recent"]
    assert recent["window_seconds"] == 1.0 and len(recent["windows"]) == 60
    assert [w["start"] for w in recent["windows"]] == [clock.t - 59 + k for k in range(60)]
    assert all(w["connect_ready"]["count"] == 1 for w in recent["windows"])
    assert sum(w["connect_ready"]["count"] for w in summary["windows"]) == 7200  # nothing lost there

    worker, master = Metrics(source="1"), Metrics(source="master")
    worker.timeline.clock = master.timeline.clock = clock
    worker.timings[Timing.CONNECT_READY].observe(0.3, scenario="s")
    master.merge(worker.take_delta(), "1")
    (window,) = master.timeline_summary()["recent"]["windows"]
    assert window["start"] == clock.t and window["connect_ready"]["count"] == 1
    coarse = {"width": 4.0, "windows": [[int(clock.t // 4) + 1, window_with_one_call()]]}
    master.recent.merge(coarse, "1")
    assert max(i for i, _ in master.recent.windows.items()) == (int(clock.t // 4) + 1) * 4


def window_with_one_call() -> dict:
    window = Window()
    window.counters[("athos_sessions_started", ("s",))] += 1
    return window.to_dict()


def test_a_week_of_a_soak_holds_no_more_than_a_day():
    """A simulated week of a whole Metrics (every timing, counters, health levels) a sample every
    three minutes: the windows stay within their bound, coarsening keeps every sample, and the
    memory the process holds for it (traced allocations) is no bigger after seven days than after one."""
    clock = Clock()
    metrics = Metrics()
    metrics.timeline.clock = clock
    rng = np.random.default_rng(3)
    sizes = {}
    per_day = 24 * 20
    minutes = 7 * per_day  # samples, three minutes apart
    tracemalloc.start()
    for minute in range(minutes):
        clock.t += 180.0
        for timing in Timing:
            metrics.timings[timing].observe(float(rng.lognormal(-1, 0.5)), scenario="s")
        metrics.call_started("s")
        metrics.call_finished("s", Outcome.COMPLETED, 150.0)
        metrics.record_health({"cpu_ratio": 0.3, "memory_bytes": 2e8, "open_fds": 300.0})
        assert len(metrics.timeline.windows) <= 120
        if minute + 1 in (per_day, minutes):
            sizes[(minute + 1) // per_day] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    summary = metrics.timeline_summary()
    assert sum(w["connect_ready"]["count"] for w in summary["windows"]) == minutes
    assert sum(w["calls"]["started"] for w in summary["windows"]) == minutes
    assert sizes[7] <= 1.05 * sizes[1], sizes
    assert len(json.dumps(summary)) < 2_000_000  # and its summary stays small: sparse histograms
