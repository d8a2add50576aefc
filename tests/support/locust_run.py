"""Running ``locust -f locustfile.py`` as a user does: real processes, on 127.0.0.1, bounded in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py")]


def locust_env(**extra: str) -> dict[str, str]:
    """The environment a run gets: this one without LOCUST_*/ATHOS_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ATHOS_"))}
    env.update(extra)
    return env


def run_locust(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``locust -f locustfile.py ARGS`` to its end; stdout and stderr captured as text."""
    return subprocess.run(
        [*LOCUST, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or locust_env()
    )


def gated_run(
    directory: Path, gates: str, *args: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess, dict]:
    """A headless smoke run judged by ``gates`` (YAML text): the summary, JUnit, Markdown and GitHub
    step summary written into ``directory``; the result and the summary."""
    path = directory / "gates.yaml"
    path.write_text(textwrap.dedent(gates))
    result = run_locust(
        "--headless", "--athos-scenario", "scenarios/smoke", "--athos-gates", str(path),
        "--athos-summary", str(directory / "s.json"), "--athos-junit", str(directory / "junit.xml"),
        "--athos-markdown", str(directory / "summary.md"), *args, timeout=timeout,
        env=locust_env(GITHUB_STEP_SUMMARY=str(directory / "step-summary.md")),
    )  # fmt: skip
    return result, json.loads((directory / "s.json").read_text())


def silent_scenario(directory: Path, seconds: float, name: str = "silent") -> Path:
    """A scenario file of one turn of ``seconds`` of silence, then a hang-up: calls whose length is
    known and short, for runs that test what a call's content does not change."""
    path = directory / f"{name}.yaml"
    path.write_text(f"name: {name}\ndrill: cold-call-discovery\nturns:\n  - silence: {seconds}\nhangup: immediately\n")
    return path


def samples(path: Path) -> dict[tuple[str, tuple], float]:
    """Every sample of a Prometheus exposition file, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in values.items() if n == name and match.items() <= dict(labels).items())


def check_accounting(summary: dict) -> None:
    """Every started call is accounted for once, and every completed call's score too."""
    calls = summary["calls"]
    assert calls["started"] == calls["completed"] + calls["failed"] + calls["aborted"] + calls.get("lost", 0)
    assert (
        calls["completed"] == calls["scored"] + calls["score_missing"] + calls["score_pending"] + calls["score_failed"]
    )
