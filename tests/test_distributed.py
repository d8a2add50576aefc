"""Locust master + two workers as real processes: the master's options reach the workers, and the
master's merged numbers add up."""

import csv
import json
import signal
import subprocess
import time

import yaml
from support.locust_run import LOCUST, ROOT, check_accounting, locust_env, samples, silent_scenario, total
from support.net import free_port

from athos_load.verdict import ExitCode


def test_master_merges_what_two_workers_recorded(tmp_path):
    port = free_port()
    gates = tmp_path / "gates.yaml"
    gates.write_text('connect_ready: ["p(90) < 10s", "count > 0"]\ncall_setup: ["rate > 0.5"]\n')
    # The options are the master's only (as in the README): workers run with them, not their defaults.
    master = subprocess.Popen(
        [
            *LOCUST,
            "--athos-scenario", "scenarios/smoke",
            "--master",
            "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(port),
            "--expect-workers", "2",
            "--headless", "-u", "12", "-r", "12", "-t", "14s",
            "--athos-sim-args", "--score-delay fixed:0.5",  # scores soon after each call: a short drain
            "--csv", str(tmp_path / "run"),
            "--athos-summary", str(tmp_path / "summary.json"),
            "--athos-metrics-file", str(tmp_path / "final.prom"),
            "--athos-drain-timeout", "15",
            "--athos-gates", str(gates), "--athos-junit", str(tmp_path / "junit.xml"),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=locust_env(),
    )  # fmt: skip
    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    workers = [
        subprocess.Popen(
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=locust_env(),
        )  # fmt: skip
        for log in logs
    ]
    try:
        out, _ = master.communicate(timeout=150)
        for worker in workers:
            worker.wait(timeout=30)
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()
    assert master.returncode == 0, out[-3000:]
    worker_logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for log in (out, *worker_logs):
        assert "generator saturated" not in log  # 12 users, then idle: never saturated
        assert "Traceback" not in log, log[-3000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    calls = summary["calls"]
    check_accounting(summary)
    assert calls["started"] > 0
    assert calls["scored"] > 0 and summary["webhooks"]["accepted"] >= calls["scored"]  # scores came via the master

    # the master judged the gates on the merged numbers: every worker's samples, no more
    assert summary["verdict"]["status"] == "passed", summary["verdict"]
    assert summary["gates"][0]["samples"] == summary["connect_ready"]["count"] > 0
    assert summary["gates"][1]["observed"] == summary["connect_ready"]["count"]

    prom = samples(tmp_path / "final.prom")
    # the workers ran the master's scenarios, not the three full drills of their own default
    smoke = {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "scenarios" / "smoke").glob("*.yaml")}
    started = {dict(labels)["scenario"]: v for (n, labels), v in prom.items() if n == "athos_sessions_started_total"}
    assert {name for name, n in started.items() if n} <= smoke and sum(started.values()) == calls["started"]
    assert total(prom, "athos_sessions_started_total") == calls["started"]
    for outcome in ("completed", "failed", "aborted"):
        assert total(prom, "athos_sessions_total", outcome=outcome) == calls[outcome]
    assert total(prom, "athos_scores_total") == calls["scored"]
    assert total(prom, "athos_webhooks_total", outcome="accepted") == summary["webhooks"]["accepted"]  # at the master
    # every worker's health is shown at the master, one series each, beside the master's own
    workers_seen = {dict(labels)["worker"] for (n, labels) in prom if n == "athos_loadgen_memory_bytes"}
    assert workers_seen == {"master", "w0", "w1"}

    with open(tmp_path / "run_stats.csv", newline="") as f:
        locust_counts = {row["Name"]: int(row["Request Count"]) for row in csv.DictReader(f)}
    for timing in ("connect_ready", "persona_response", "end_to_score", "token_mint"):
        count = summary[timing]["count"]
        assert count > 0, timing
        # the histogram holds one sample per Locust entry the workers reported, no more, no less
        assert total(prom, f"athos_{timing}_seconds_count") == count == locust_counts[timing], timing
        assert total(prom, f"athos_{timing}_seconds_bucket", le="+Inf") == count
        # the time windows hold every worker's samples too, however they were binned
        windows = summary["timeline"]["windows"]
        assert sum(w[timing]["count"] for w in windows if timing in w) == count, timing
    windows = summary["timeline"]["windows"]
    assert sum(w["calls"]["started"] for w in windows) == calls["started"]
    assert max(w["active_calls"] or 0 for w in windows) > 0  # the workers' calls, summed at the master


def test_a_worker_killed_mid_run_is_counted_lost_and_makes_the_run_invalid(tmp_path):
    """SIGKILL one of two workers while its calls are in progress: the master says which worker
    and when, counts its unfinished calls as lost so the totals add up, drops its gauges, and the
    verdict is invalid (a gate that passes on the numbers cannot be trusted with a worker gone)."""
    port = free_port()
    gates = tmp_path / "gates.yaml"
    gates.write_text('connect_ready: ["p(50) < 30s"]\n')
    scenario = silent_scenario(tmp_path, 30.0)  # calls that are still going when the worker dies
    master = subprocess.Popen(
        [
            *LOCUST, "--athos-scenario", str(scenario), "--master", "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(port), "--expect-workers", "2", "--headless", "-u", "8", "-r", "8",
            "-t", "14s", "--athos-summary", str(tmp_path / "summary.json"), "--athos-gates", str(gates),
            "--athos-metrics-file", str(tmp_path / "final.prom"), "--athos-drain-timeout", "5",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=locust_env(),
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=locust_env(),
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        # both workers spawned (within ~3 s on a quiet machine) and reported their calls in progress;
        # then the master has 7 s to miss the killed one's heartbeats before the run ends
        time.sleep(7)
        workers[1].send_signal(signal.SIGKILL)
        out, _ = master.communicate(timeout=120)
        workers[0].wait(timeout=30)
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert master.returncode == ExitCode.INVALID, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (lost,) = summary["lost_workers"]
    assert lost["worker"] in ("w0", "w1") and lost["calls_lost"] > 0, lost
    assert f"athos-load: worker {lost['worker']} ({lost['id']}) stopped sending heartbeats: lost" in out
    check_accounting(summary)
    assert summary["calls"]["lost"] == lost["calls_lost"]
    assert summary["verdict"]["status"] == "invalid"
    assert any(f"worker {lost['worker']} was lost" in reason for reason in summary["verdict"]["reasons"])
    prom = samples(tmp_path / "final.prom")
    assert total(prom, "athos_sessions_active") == 0  # nothing left in progress, the lost worker's included
    assert total(prom, "athos_sessions_total", outcome="lost") == lost["calls_lost"]
