"""Baselines: the bootstrap over time windows passes a run like its baseline, fails one clearly
slower, and the gates file's regression limits are checked like any other gate."""

import dataclasses
import json
import time

import numpy as np
import pytest
from support.locust_run import ROOT, run_locust

from athos_load.baseline import Baseline, BaselineError, compare
from athos_load.gates import GatesError, default_regressions, load_gates
from athos_load.metrics import Metrics, Timing
from athos_load.timeline import WindowHistogram
from athos_load.verdict import ExitCode


def run(rng: np.random.Generator, *, scale: float = 1.0, windows: int = 60, per_window: int = 4, burst: float = 0.0):
    """A run's windows of turn latencies (lognormal, median 0.9 s), each window maybe slowed by a burst."""
    hists = []
    for _ in range(windows):
        factor = scale * np.exp(rng.normal(0, burst)) if burst else scale
        h = WindowHistogram()
        h.record_many(factor * rng.lognormal(np.log(0.9), 0.42, size=per_window))
        hists.append(h)
    return hists


@pytest.mark.parametrize("quantile", [50.0, 95.0, None])
def test_runs_alike_pass_and_a_run_30_percent_slower_fails(quantile):
    rng = np.random.default_rng(7)
    alike = slower = 0
    for seed in range(30):
        baseline = run(rng)
        same = compare(baseline, run(rng), quantile, seed=seed)
        slow = compare(baseline, run(rng, scale=1.3), quantile, seed=seed)
        alike += same.lower > 1.10  # would fail a 10% limit
        slower += slow.lower > 1.10
        assert same.samples == 240 and same.windows == 60
    assert alike <= 1  # noise alone rarely fails a run (none expected: the limit is 10%, not 0)
    assert slower >= (27 if quantile != 95.0 else 20)  # a 30% slowdown shows (p95 from 240 samples is noisier)


def test_bursts_widen_the_bound_rather_than_fail_the_run():
    # whole windows slowed or sped up together: the resampled unit is a window, so bursts widen
    # the bound instead of failing a run whose every window comes from the same platform
    rng = np.random.default_rng(3)
    failed = sum(compare(run(rng, burst=0.25), run(rng, burst=0.25), 50.0, seed=s).lower > 1.10 for s in range(30))
    assert failed <= 2


def test_the_bootstrap_reads_a_percentile_as_the_run_summary_does():
    """One percentile definition: the statistic the baseline compares is the run's own p(q)."""
    windows = run(np.random.default_rng(3), windows=6, per_window=7)  # 42 samples: ranks fall between them
    merged = WindowHistogram()
    for h in windows:
        merged.merge(h)
    for q in (50.0, 90.0, 95.0):
        assert compare(windows, windows, q).baseline == pytest.approx(merged.percentile(q), rel=1e-12), q


def test_an_empty_side_gives_no_verdict():
    rng = np.random.default_rng(1)
    comparison = compare(run(rng), [], 95.0)
    assert comparison.lower is None and comparison.ratio is None


def test_regression_limits_in_a_gates_file(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text(
        'connect_ready: ["p(95) < 2s"]\nregression:\n  connect_ready.p95: 10%\n  persona_response.med: 5%\n'
    )
    gates = load_gates(path)
    regressions = [g for g in gates if g.metric.endswith((".p95", ".med"))]
    assert [(r.name, r.quantile, r.limit) for r in regressions] == [
        ("connect_ready", 95.0, 0.10),
        ("persona_response", 50.0, 0.05),
    ]
    assert regressions[0].min_samples == 20
    assert {r.metric for r in default_regressions()} >= {"connect_ready.p95", "persona_response.p50"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("regression:\n  conect_ready.p95: 10%\n", 2, "expected TIMING.STAT"),
        ("regression:\n  connect_ready.p95: 10%\n  connect_ready.p99: ten\n", 3, "expected a percentage like 10%"),
        ("regression: 10%\n", 1, "expected a mapping"),
    ],
)
def test_a_mistaken_regression_names_the_line(tmp_path, text, line, message):
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(GatesError) as caught:
        load_gates(path)
    assert str(caught.value).startswith(f"{path}:{line}: ") and message in str(caught.value)


def test_a_baseline_that_is_not_a_summary_is_refused(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(BaselineError, match="not JSON"):
        Baseline.load(bad)
    bad.write_text(json.dumps({"calls": {}}))
    with pytest.raises(BaselineError, match="no 'timeline'"):
        Baseline.load(bad)
    with pytest.raises(BaselineError, match="missing.json: file not found"):
        Baseline.load(tmp_path / "missing.json")


def test_a_run_slower_than_its_baseline_fails_its_regression_limits(tmp_path):
    """The whole chain, end to end: a baseline summary (here a release 40% faster than the simulator,
    written as a JSON summary with time windows), a real run against the simulator compared with it
    by a gates file of limits, and the exit code. Whether the bootstrap tells a 30% slowdown from
    noise is shown on synthetic runs above, 30 at a time."""
    rng = np.random.default_rng(5)
    faster = Metrics()
    now = [time.time() - 600]
    faster.timeline.clock = lambda: now[0]
    for _ in range(60):  # a minute of a faster release: the simulator's latencies x 0.6
        now[0] += 1.0
        for timing, median in ((Timing.CONNECT_READY, 0.3), (Timing.PERSONA_RESPONSE, 0.6)):
            faster.timings[timing].observe_many(0.6 * rng.lognormal(np.log(median), 0.18, 5), scenario="s")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"timeline": faster.timeline_summary(), "settings": {}}))
    gates = tmp_path / "gates.yaml"
    gates.write_text("regression:\n  connect_ready.p50: 10%\n")
    one_turn = tmp_path / "one-turn.yaml"  # one spoken turn and its reply: calls that complete in seconds
    audio = ROOT / "scenarios" / "audio" / "cold-call-discovery" / "03-discovery.wav"
    one_turn.write_text(f"name: one-turn\ndrill: cold-call-discovery\nturns:\n  - audio: {audio}\n")
    result = run_locust(
        # 20 users at 4/s: connects over 5 s, so 5 one-second windows of them whether or not a user's
        # second call starts before the end (at 5/s they spanned 4 or 5 windows: a flake)
        "--headless", "-u", "20", "-r", "4", "-t", "9s", "--athos-scenario", str(one_turn),
        "--athos-drain-timeout", "1", "--athos-summary", str(tmp_path / "s.json"),
        "--athos-gates", str(gates), "--athos-baseline", str(baseline),
        "--athos-sim-args", "--ready-latency lognormal:0.3,0.4 --response-latency lognormal:0.6,0.8",
        timeout=90,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [g["metric"] for g in summary["gates"]] == ["connect_ready.p50"]
    assert summary["baseline"] == {"path": str(baseline), "differences": []}
    assert result.returncode == ExitCode.GATE_FAILED, summary["gates"]
    failed = [g for g in summary["gates"] if g["passed"] is False]
    assert failed and all(g["lower_bound"] > 0.10 and g["observed"] > g["lower_bound"] for g in failed)
    assert summary["verdict"]["reasons"][0].startswith(f"{failed[0]['metric']}: at most 10% worse")
    assert "with 95% confidence" in failed[0]["shown"]


def test_a_regression_is_judged_on_the_run_so_far_and_shown_in_the_live_tab():
    from athos_load.gates import _regression
    from athos_load.metrics import Metrics, Timing
    from athos_load.plugin.webui import gate_row

    rng = np.random.default_rng(5)

    def recorded(scale: float) -> Metrics:
        m = Metrics()
        t = [1_800_000_000.0]
        m.timeline.clock = lambda: t[0]
        for _ in range(40):
            t[0] += 1.0
            for value in scale * rng.lognormal(np.log(0.3), 0.2, size=5):
                m.timings[Timing.CONNECT_READY].observe(float(value), scenario="s")
        return m

    baseline = Baseline("base.json", recorded(1.0).timeline_summary()["windows"], {})
    regression = dataclasses.replace(_regression("connect_ready.p95", "10%", "test"), baseline=baseline)
    slower = regression.evaluate(recorded(1.3))
    assert slower.passed is False and slower.comparison.lower > 1.1
    row = gate_row(regression.evaluate(recorded(1.3), resamples=200))
    assert row["state"] == "failing" and row["value"].startswith("+") and "95% confidence" in row["value"]
    assert regression.evaluate(recorded(1.0)).passed is True
    early = Metrics()  # nothing yet: no verdict, and the reason says what is missing
    assert gate_row(regression.evaluate(early))["state"].startswith("not enough data: 0 samples in 0 windows")
