"""Drift: a timing that creeps up over a run is flagged, a steady one with bursts is not, and the
drift gate fails only when the whole interval lies past its limit; change-points are located, and
the generator's own memory has a drift of its own. Runs are synthetic (a recorded timeline on a
virtual clock, in milliseconds), but for one accelerated soak against a degrading simulator."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from support.locust_run import run_locust, silent_scenario

from athos_load.gates import GatesError, load_gates
from athos_load.metrics import Metrics, Outcome, Timing
from athos_load.timeline import WindowHistogram
from athos_load.trends import changes, drift, drifts, timing_change_points, timing_drift
from athos_load.verdict import ExitCode

START = 1_767_225_600.0


class Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def soak(
    growth_per_hour: float, *, hours: float = 2.0, seed: int = 0, bursts: int = 0, step: tuple[float, float] = (0, 1)
) -> Metrics:
    """A run of ``hours``: every 20 s, 20 turn latencies (median 0.9 s) growing by
    ``growth_per_hour`` of their starting level an hour, ``bursts`` windows three times slower, and
    from ``step[0]`` seconds on everything ``step[1]`` times slower."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    metrics = Metrics()
    metrics.timeline.clock = clock
    steps = int(hours * 3600 / 20)
    slow = set(rng.choice(steps, size=bursts, replace=False).tolist()) if bursts else set()
    at, times = step
    for k in range(steps):
        clock.t = START + k * 20.0
        factor = (1 + growth_per_hour * k * 20.0 / 3600) * (3.0 if k in slow else 1.0)
        factor *= times if k * 20.0 >= at else 1.0
        metrics.timings[Timing.PERSONA_RESPONSE].observe_many(
            factor * rng.lognormal(np.log(0.9), 0.3, 20), scenario="s"
        )
    return metrics


def test_a_timing_that_creeps_up_is_measured_per_hour():
    found = timing_drift(soak(0.3).timeline_summary(), "persona_response", 95)
    assert found is not None and found.windows >= 100  # 2 h in at most 120 windows, less the warm-up
    assert found.per_hour == pytest.approx(0.3, abs=0.06)  # relative to the level after the warm-up
    assert found.low < found.per_hour < found.high and found.low > 0.15


def test_a_steady_run_with_bursts_shows_no_drift():
    """Theil-Sen: a few windows three times slower barely move the slope (least squares would)."""
    for seed in range(5):
        found = timing_drift(soak(0.0, seed=seed, bursts=6).timeline_summary(), "persona_response", 95)
        assert found is not None and found.low < 0 < found.high, found


def test_too_few_windows_give_no_drift():
    assert drift([0.0, 10.0, 20.0], [1.0, 1.1, 1.2]) is None
    assert drift([0.0] * 8, [1.0] * 8) is None  # no time passed
    empty = {"window_seconds": 1.0, "windows": []}
    assert drifts(empty, ["connect_ready"]) == {
        "connect_ready": {"p50": None, "p95": None},
        "loadgen_rss": None,
        "loadgen_open_fds": None,
        "reconnects_per_session_minute": None,
        "errors": None,
    }


def test_the_drift_gate_fails_only_when_the_interval_lies_past_the_limit(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text('persona_response: ["drift(p95) < 10%/h", "drift(med) < 50%/h"]\n')
    gates = load_gates(path)
    assert [(g.aggregate, g.quantile, g.limit) for g in gates] == [("drift", 95.0, 0.1), ("drift", 50.0, 0.5)]
    creeping = [g.evaluate(soak(0.3)) for g in gates]
    assert [r.passed for r in creeping] == [False, True]
    assert creeping[0].to_dict()["shown"].startswith("+") and "%/h (95% interval" in creeping[0].to_dict()["shown"]
    false_alarms = sum(gates[0].evaluate(soak(0.0, seed=seed, bursts=4)).passed is False for seed in range(20))
    assert false_alarms <= 2  # about one in forty is the interval's own error rate
    short = gates[0].evaluate(soak(0.3, hours=0.02))
    assert short.passed is None and "windows, at least 6 needed" in short.shortfall()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('audio_send_lag: ["drift(p95) < 10%/h"]\n', "drift is of a timing's percentile"),
        ('connect_ready{scenario:x}: ["drift(p95) < 10%/h"]\n', "drift is over the whole run: no filter"),
        ('connect_ready: ["drift(p95) < 10%"]\n', "expected AGGREGATE OP VALUE"),
        ('connect_ready: ["drift(p100) < 10%/h"]\n', "needs 0 < N < 100"),
        ('loadgen_rss: ["drift(p95) < 1%/h"]\n', "loadgen_rss takes drift < X%/h"),
        ('connect_ready: ["drift < 1%/h"]\n', "connect_ready takes drift(pN) < X%/h"),
        ('loadgen_rss: ["value < 1"]\n', "loadgen_rss takes drift"),
        ('errors: ["drift < 1%/h"]\n', "errors takes drift < X/h"),
        ('connect_ready: ["drift(p95) < 0.1/h"]\n', "connect_ready takes drift(pN) < X%/h"),
    ],
)
def test_a_mistaken_drift_gate_names_the_problem_and_the_right_form(tmp_path, text, message):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(GatesError, match=re.escape(message)):
        load_gates(path)


def test_window_histograms_round_trip_for_drift():
    h = WindowHistogram()
    h.record_many(np.array([0.5, 1.0, 2.0]))
    assert WindowHistogram.from_dict(h.to_dict()).percentile(50) == pytest.approx(1.0, rel=0.02)


def test_the_warm_up_the_run_names_is_left_out_of_the_drift():
    """Twice as slow for the first half hour (cold caches), steady after: with the soak's warm-up
    ended at 30 min there is no drift; judged by the default first tenth, the slow start reads as
    the platform getting faster."""
    metrics = soak(0.0, step=(1800.0, 0.5), bursts=2)
    by_share = timing_drift(metrics.timeline_summary(), "persona_response", 95)
    assert by_share is not None and by_share.high < 0
    metrics.warmup_until = START + 1800.0
    timeline = metrics.timeline_summary()
    after = timing_drift(timeline, "persona_response", 95)
    assert after is not None and after.low < 0 < after.high, after
    assert timing_change_points(timeline, "persona_response") == []  # nor a change: the step was the warm-up


def calls(reconnects_per_minute: float, growth_per_hour: float, *, hours: float = 2.0, seed: int = 0) -> Metrics:
    """Every 20 s, 10 calls of 60 s connected end; their reconnects are Poisson at a rate per
    session-minute growing by ``growth_per_hour`` (absolute) an hour; no errors."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    metrics = Metrics()
    metrics.timeline.clock = clock
    for k in range(int(hours * 180)):
        clock.t = START + k * 20.0
        rate = reconnects_per_minute + growth_per_hour * k * 20.0 / 3600
        for _ in range(10):
            metrics.call_started("s")
            for _ in range(rng.poisson(rate)):
                metrics.reconnect("s")
            metrics.call_finished("s", Outcome.COMPLETED, 60.0)
    return metrics


def test_reconnect_and_error_rates_drift_in_their_own_units(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text('reconnects_per_session_minute: ["drift < 0.1/h"]\nerrors: ["drift < 0.01/h"]\n')
    reconnects, errors = load_gates(path)
    growing = calls(0.5, 0.5)
    found = drifts(growing.timeline_summary(), [])
    assert found["reconnects_per_session_minute"]["per_hour"] == pytest.approx(0.5, abs=0.15)
    assert found["reconnects_per_session_minute"]["relative"] is False
    assert found["errors"]["per_hour"] == 0  # none at all: flat, not undefined
    result = reconnects.evaluate(growing)
    assert result.passed is False and "/h (95% interval" in result.to_dict()["shown"]
    assert errors.evaluate(growing).passed is True
    assert [reconnects.evaluate(calls(0.5, 0.0, seed=seed)).passed for seed in range(5)] == [True] * 5


# -- change-points ------------------------------------------------------------------------------------


def test_a_step_change_is_located_within_one_window():
    """+50% from minute 70 of a two-hour run: one change, in the window that holds minute 70."""
    metrics = soak(0.0, step=(70 * 60.0, 1.5), bursts=3)
    timeline = metrics.timeline_summary()
    (change,) = timing_change_points(timeline, "persona_response")
    assert abs(change.at - (START + 70 * 60.0)) <= timeline["window_seconds"], (change.at - START) / 60
    assert change.change == pytest.approx(0.5, abs=0.1)


def test_a_steady_run_with_bursts_has_no_change_points():
    for seed in range(10):
        timeline = soak(0.0, seed=seed, bursts=6).timeline_summary()
        assert timing_change_points(timeline, "persona_response") == [], seed


def test_change_points_reach_the_summary_and_the_report():
    timeline = soak(0.0, step=(3600.0, 2.0)).timeline_summary()
    found = changes(timeline, ["persona_response", "connect_ready"])
    assert [c["change"] for c in found["persona_response"]] == [pytest.approx(1.0, abs=0.15)]
    assert found["connect_ready"] == []  # no samples: nothing to find


# -- the generator's own health over the run ------------------------------------------------------------


def generator(rss_growth_per_hour: float, *, hours: float = 2.0, seed: int = 0) -> Metrics:
    """Health samples every 10 s: RSS from 200 MB (noise of 1 MB) growing by the given share an hour."""
    rng = np.random.default_rng(seed)
    clock = Clock()
    metrics = Metrics()
    metrics.timeline.clock = clock
    for k in range(int(hours * 360)):
        clock.t = START + k * 10.0
        rss = 200e6 * (1 + rss_growth_per_hour * k * 10.0 / 3600) + rng.normal(0, 1e6)
        metrics.record_health({"cpu_ratio": 0.4, "memory_bytes": rss, "open_fds": 300 + rng.integers(0, 20)})
    return metrics


def test_a_leak_in_the_generator_fails_its_rss_drift_gate_and_a_flat_one_passes(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text('loadgen_rss: ["drift < 1%/h"]\nloadgen_open_fds: ["drift < 5%/h"]\n')
    rss, fds = load_gates(path)
    leaking = generator(0.05)
    assert rss.evaluate(leaking).passed is False and fds.evaluate(leaking).passed is True
    found = drifts(leaking.timeline_summary(), [])["loadgen_rss"]
    assert found["per_hour"] == pytest.approx(0.05, abs=0.01) and found["low"] > 0.01
    assert [rss.evaluate(generator(0.0, seed=seed)).passed for seed in range(5)] == [True] * 5
    summary = generator(0.0).timeline_summary()["windows"][-1]
    assert summary["rss_bytes"] > 0 and summary["open_fds"] >= 300


@pytest.mark.long  # the bounded version: the synthetic drift tests above, and the simulator's step in test_sim
def test_an_accelerated_soak_against_a_degrading_platform_fails_its_drift_gate(tmp_path):
    """A real run: 12 s of short calls against a simulator whose latencies double every 10 s
    (--latency-growth 360, per hour); connect_ready's p95 drift gate fails on its interval."""
    gates = tmp_path / "gates.yaml"
    gates.write_text('connect_ready: ["drift(p95) < 100%/h"]\n')
    result = run_locust(
        "--headless", "-u", "30", "-r", "30", "-t", "12s", "--athos-scenario", str(silent_scenario(tmp_path, 0.5)),
        "--athos-gates", str(gates), "--athos-summary", str(tmp_path / "s.json"), "--athos-drain-timeout", "1",
        "--athos-sim-args", "--ready-latency fixed:0.1 --load-slowdown 0 --latency-growth 360",
        timeout=90,
    )  # fmt: skip
    summary = json.loads((tmp_path / "s.json").read_text())
    (gate,) = summary["gates"]
    assert result.returncode == ExitCode.GATE_FAILED, (result.stderr[-2000:], gate)
    low, high = gate["interval"]
    assert gate["passed"] is False and low > 1.0 and gate["observed"] > 10.0  # ~+36000%/h: x2 every 10 s
    assert summary["drift"]["connect_ready"]["p95"]["per_hour"] == pytest.approx(gate["observed"], rel=1e-5)
