"""The end of a run means what it says: pending scores are not missing ones, calls cut off by the
stop add no errors and hang up, a failed step has no response time, a capacity search that finds
nothing fails the run, and the generator is judged saturated only while users run."""

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import gevent
import pytest
from support.locust_run import LOCUST, ROOT, check_accounting, locust_env, run_locust, samples, silent_scenario, total

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


def test_a_report_that_fails_at_the_end_costs_none_of_the_others(tmp_path):
    """Paths on Linux are bytes: a scenario and a report whose names are not UTF-8 are written (the
    bytes shown escaped); and the markdown report's directory replaced by a file mid-run (a CI
    cleanup) is one line and exit code 4 (the run's results are incomplete), while every other
    report is still written. Before, the HTML report was 0 bytes, with a traceback and exit 2."""
    raw = os.fsencode(tmp_path)
    scenario = os.fsdecode(raw + b"/sil\xffent.yaml")
    shutil.copy(silent_scenario(tmp_path, 0.5), scenario)
    report = os.fsdecode(raw + b"/r\xe9port.html")
    outputs = tmp_path / "out"
    outputs.mkdir()
    cmd = [
        *LOCUST, "--headless", "-u", "2", "-r", "2", "-t", "4s", "--athos-scenario", scenario,
        "--athos-summary", str(tmp_path / "s.json"), "--athos-junit", str(tmp_path / "j.xml"),
        "--athos-report", report, "--athos-markdown", str(outputs / "m.md"), "--athos-drain-timeout", "5",
    ]  # fmt: skip
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=locust_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # the checks of the outputs at start are done once the target is up
                if "started the built-in simulator" in line:
                    break
            shutil.rmtree(outputs)
            outputs.write_text("a file where the directory was")
            out = proc.communicate(timeout=90)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    err = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == ExitCode.INVALID, err[-3000:]
    failed = [line for line in err.splitlines() if line.startswith("athos-load: ") and "not written" in line]
    assert failed == [f"athos-load: --athos-markdown {outputs / 'm.md'}: not written ({failed[0].split('(', 1)[1]}"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["settings"]["athos"]["scenario"] == f"{tmp_path}/sil\\xffent.yaml"
    assert summary["settings"]["athos"]["report"] == f"{tmp_path}/r\\xe9port.html"
    html = Path(report).read_text(encoding="utf-8")
    assert html.rstrip().endswith("</html>") and "sil\\xffent.yaml" in html
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")
    assert "athos timing" in out  # the table too
