"""`locust -f locustfile.py` as a user runs it: a real subprocess, the built-in simulator, CSV out."""

import csv
import json
from pathlib import Path

import pytest
from support.locust_run import check_accounting
from support.locust_run import run_locust as run


def run_locust(tmp_path: Path, *args: str, timeout: float = 120, env: dict | None = None):
    return run(
        "--headless", "--csv", str(tmp_path / "run"), "--athos-summary", str(tmp_path / "summary.json"), *args,
        timeout=timeout, env=env,
    )  # fmt: skip


def stats(tmp_path: Path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "run_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def failures(tmp_path: Path) -> list[dict[str, str]]:
    with open(tmp_path / "run_failures.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_headless_run_against_the_built_in_simulator(smoke_run):
    tmp_path, result, summary = smoke_run  # with generous gates: test_gates reads their verdict
    assert result.returncode == 0, result.stderr[-3000:]
    assert "started the built-in simulator at http://127.0.0.1:" in result.stdout
    assert "call.scored webhooks are received at http://127.0.0.1:" in result.stdout  # path included:
    assert "/webhooks/athos" in result.stdout
    assert "generator saturated" not in result.stderr  # 20 users are nothing; the stop is not the run
    rows = stats(tmp_path)
    for name in ("connect_ready", "end_to_score", "persona_response", "token_mint", "call"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert failures(tmp_path) == []
    check_accounting(summary)
    # what the rep heard: every smoke call speaks and is answered; the greeting drill gives a first word
    # and a barge-in into the persona's reply
    for timing in ("time_to_first_word", "endpointing", "response", "speech_onset", "persona_audio_lead", "barge_in"):
        assert summary[timing]["count"] > 0 and int(rows[timing]["Request Count"]) > 0, timing
    assert summary["call_setup"]["rate"] == 1.0 and "heard: call setup 100.0% of" in result.stdout
    assert summary["persona_audio"]["minutes"] > 0  # (its underruns depend on the machine's load: not asserted)
    assert summary["calls"]["scored"] > 0 and summary["end_to_score"]["count"] == summary["calls"]["scored"]
    for timing in ("connect_ready", "persona_response", "end_to_score", "token_mint"):
        stats_ = summary[timing]
        assert stats_["count"] > 0 and 0 < stats_["min"] <= stats_["p50"] <= stats_["p95"] <= stats_["max"]
    # the headless table is printed from the same recordings
    assert "athos timing" in result.stdout and f"scored {summary['calls']['scored']}" in result.stdout
    assert "reconnects per session-minute" in result.stdout and "score_pending" in result.stdout
    assert summary["saturated_seconds"] == 0 and summary["session_minutes"] > 0
    # the simulator's default transient drops (0.3 a call-minute): each one resumed, none a failure
    assert summary["reconnect"]["count"] == summary["reconnects"]
    per_minute = summary["reconnects"] / summary["session_minutes"]
    assert summary["reconnects_per_session_minute"] == pytest.approx(per_minute, rel=0.01)


def test_faults_show_reconnects_and_errors_by_code(tmp_path):
    sim_args = "--drop-after 3 --max-calls 6 --score-delay fixed:0.5"
    result = run_locust(
        tmp_path,
        "-u",
        "12",
        "-r",
        "12",
        "-t",
        "10s",
        "--athos-scenario",
        "scenarios/smoke",
        "--athos-sim-args",
        sim_args,
    )
    assert result.returncode != 0  # failures make Locust's exit code 1: a CI job sees them
    rows = stats(tmp_path)
    assert int(rows["reconnect"]["Request Count"]) > 0
    by_error = {(row["Name"], row["Error"]) for row in failures(tmp_path)}
    assert ("connect_ready", "CallFailure('concurrency_limit')") in by_error
    summary = json.loads((tmp_path / "summary.json").read_text())
    check_accounting(summary)
    assert summary["reconnects"] > 0 and summary["reconnect"]["count"] > 0
    per_minute = summary["reconnects"] / summary["session_minutes"]
    assert summary["reconnects_per_session_minute"] == pytest.approx(per_minute, rel=0.01) and per_minute > 0
    assert summary["errors"]["concurrency_limit"] == summary["calls"]["failed"] > 0
    # a failed step is counted by Locust without a response time, as the tool's table leaves it out
    refused = rows["connect_ready"]
    assert int(refused["Failure Count"]) == summary["errors"]["concurrency_limit"]
    assert int(refused["Request Count"]) == summary["connect_ready"]["count"] + int(refused["Failure Count"])


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("name: bad\ndrill: d\nturns:\n  - audio: missing.wav\n", "turns[0].audio"),
        ("name: bad\ndrill: d\nweight: high\nturns:\n  - silence: 1\n", "weight"),
        ("name: bad\ndrill: d\ncolour: red\nturns:\n  - silence: 1\n", "colour"),
    ],
)
def test_malformed_scenario_stops_before_any_user(tmp_path, yaml_text, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    result = run_locust(tmp_path, "-u", "1", "-t", "5s", "--athos-scenario", str(bad), timeout=60)
    assert result.returncode == 2
    assert f"{bad}: {field}" in result.stderr
    assert "started the built-in simulator" not in result.stdout
    assert "Ramping to" not in result.stderr
