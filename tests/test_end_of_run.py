"""The end of a run means what it says: pending scores are not missing ones, calls cut off by the
stop add no errors and hang up, a failed step has no response time, a capacity search that finds
nothing fails the run, and the generator is judged saturated only while users run."""

import csv
import json
import time
from pathlib import Path

import gevent
import pytest
from support.locust_run import check_accounting, run_locust, samples, silent_scenario, total

from athos_load.health import HealthMonitor
from athos_load.metrics import Metrics
from athos_load.report import format_table
from athos_load.verdict import ExitCode


def headless(tmp_path: Path, *args: str, timeout: float = 120):
    result = run_locust(
        "--headless", "--csv", str(tmp_path / "run"), "--athos-summary", str(tmp_path / "summary.json"), *args,
        timeout=timeout,
    )  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text()) if (tmp_path / "summary.json").exists() else None
    return result, summary


def locust_rows(tmp_path: Path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "run_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def test_scores_unsettled_at_the_drain_timeout_are_pending_not_missing(tmp_path):
    result, summary = headless(
        tmp_path, "-u", "4", "-r", "4", "-t", "6s", "--athos-scenario", str(silent_scenario(tmp_path, 1.0)),
        "--athos-sim-args", "--score-delay fixed:60", "--athos-drain-timeout", "1",
        "--athos-metrics-file", str(tmp_path / "final.prom"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check_accounting(summary)
    calls = summary["calls"]
    assert calls["completed"] > 0 and calls["score_pending"] == calls["completed"]
    assert calls["score_missing"] == 0 and calls["scored"] == 0
    prom = samples(tmp_path / "final.prom")
    assert total(prom, "athos_scores_pending_total") == calls["score_pending"]
    assert total(prom, "athos_scores_missing_total") == 0
    assert f"score_pending {calls['score_pending']}" in result.stdout


def test_calls_still_connecting_at_the_stop_are_aborted_without_errors(tmp_path):
    result, summary = headless(
        tmp_path, "-u", "4", "-r", "4", "-t", "4s", "--athos-scenario", "scenarios/smoke",
        "--athos-sim-args", "--ready-latency fixed:8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    check_accounting(summary)
    assert summary["calls"]["aborted"] == summary["calls"]["started"] > 0
    assert summary["errors"] == {}
    with open(tmp_path / "run_failures.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []


def test_a_failed_step_has_no_response_time_in_locust(tmp_path):
    """A persona that never answers within the reply timeout: `no_reply`, counted by Locust without a
    time (it used to show as the timeout itself in Locust's percentiles)."""
    scenarios = Path(__file__).resolve().parents[1] / "scenarios"
    impatient = tmp_path / "impatient.yaml"
    impatient.write_text(
        "name: impatient\ndrill: cold-call-discovery\nthink_time: 0.1\nreply_timeout: 1\n"
        f"turns:\n  - audio: {scenarios}/audio/cold-call-discovery/03-discovery.wav\n"
        f"  - audio: {scenarios}/audio/cold-call-discovery/04-demo.wav\n"
    )
    result, summary = headless(
        tmp_path, "-u", "2", "-r", "2", "-t", "6s", "--athos-scenario", str(impatient),
        "--athos-sim-args", "--response-latency fixed:5",
    )  # fmt: skip
    check_accounting(summary)
    row = locust_rows(tmp_path)["persona_response"]
    assert summary["errors"]["no_reply"] == int(row["Failure Count"]) > 0
    assert summary["persona_response"]["count"] == 0  # the tool's table has no time for them either
    assert float(row["Max Response Time"]) == 0  # no sample carried the 1000 ms timeout


def test_a_capacity_search_where_no_step_holds_fails_the_run(tmp_path):
    result, summary = headless(
        tmp_path, "-t", "40s", "-r", "4", "--athos-scenario", "scenarios/smoke", "--athos-shape", "capacity",
        "--athos-shape-params", "start=2,step=2,step_seconds=5,steps=3,min_samples=1,gate=connect_ready.p95<0.001",
    )  # fmt: skip
    assert result.returncode == ExitCode.GATE_FAILED, result.stderr[-3000:]
    assert "no step held connect_ready.p95<0.001" in result.stdout
    capacity = summary["capacity"]
    assert capacity["last_good_users"] is None and capacity["broke_at"] == 2 and capacity["finished"]
    assert capacity["value"] >= 0.001 and capacity["samples"] >= 1


def test_saturation_is_judged_only_while_users_run(caplog):
    running = False
    metrics = Metrics()
    # a limit no process can stay under: saturated whenever it is judged at all
    monitor = HealthMonitor(metrics, running=lambda: running, tick=0.02, window=1.0, cpu_limit=-1.0).start()
    try:
        gevent.sleep(3.2)
        assert monitor.saturated_seconds == 0 and "saturated" not in caplog.text  # idle, or the run's end
        running = True
        deadline = time.monotonic() + 6
        while monitor.saturated_seconds == 0 and time.monotonic() < deadline:
            gevent.sleep(0.2)
        assert monitor.saturated_seconds > 0 and "generator saturated" in caplog.text
        assert metrics.health["local"]["saturated_seconds"] == monitor.saturated_seconds
    finally:
        monitor.stop()


def test_the_end_table_says_how_long_the_generator_was_saturated():
    summary = Metrics().summary() | {"saturated_seconds": 12.0}
    table = format_table(summary)
    assert "generator saturated for 12 s" in table and "reconnects per session-minute: -" in table
    assert "saturated" not in format_table(Metrics().summary() | {"saturated_seconds": 0})


@pytest.mark.parametrize("rate", [None, 0.25])
def test_the_table_shows_reconnects_per_session_minute(rate):
    summary = Metrics().summary() | {"reconnects_per_session_minute": rate}
    assert f"reconnects per session-minute: {'-' if rate is None else '0.25'}" in format_table(summary)
