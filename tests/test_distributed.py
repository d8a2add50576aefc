"""Locust master + two workers as real processes: the master's merged numbers add up."""

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--athos-scenario", "scenarios/smoke"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(path: Path) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition file, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in values.items() if n == name and match.items() <= dict(labels).items())


def test_master_merges_what_two_workers_recorded(tmp_path):
    port = free_port()
    master = subprocess.Popen(
        [
            *LOCUST,
            "--master",
            "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(port),
            "--expect-workers", "2",
            "--headless", "-u", "12", "-r", "12", "-t", "18s",
            "--csv", str(tmp_path / "run"),
            "--athos-summary", str(tmp_path / "summary.json"),
            "--athos-metrics-file", str(tmp_path / "final.prom"),
            "--athos-drain-timeout", "15",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    workers = [
        subprocess.Popen(
            [*LOCUST, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        out, _ = master.communicate(timeout=150)
        for worker in workers:
            worker.wait(timeout=30)
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
    assert master.returncode == 0, out[-3000:]

    summary = json.loads((tmp_path / "summary.json").read_text())
    calls = summary["calls"]
    assert calls["started"] == calls["completed"] + calls["failed"] + calls["aborted"] > 0
    assert calls["completed"] == calls["scored"] + calls["score_missing"]
    assert calls["scored"] > 0 and summary["webhooks"]["accepted"] >= calls["scored"]  # scores came via the master

    prom = samples(tmp_path / "final.prom")
    assert total(prom, "athos_sessions_started_total") == calls["started"]
    for outcome in ("completed", "failed", "aborted"):
        assert total(prom, "athos_sessions_total", outcome=outcome) == calls[outcome]
    assert total(prom, "athos_scores_total") == calls["scored"]
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
