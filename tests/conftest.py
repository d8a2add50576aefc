"""Shared fixtures. The client side runs under gevent, as it does inside Locust: patch first."""

# ruff: noqa: E402  (every import below follows the monkey-patching, on purpose)
from gevent import monkey

monkey.patch_all()

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# -- sim: the simulator, started as a subprocess ---------------------------------------------------

SIM_START_TIMEOUT = 10.0
# Latencies short and fixed, so tests run quickly and their expectations are exact; a test that
# needs other knobs passes them to sim_factory (later options override these).
SIM_FAST_ARGS = (
    "--ready-latency", "fixed:0.05", "--response-latency", "fixed:0.2", "--score-delay", "fixed:0.2",
    "--persona-utterance", "fixed:0.5", "--seed", "7",
)  # fmt: skip


@dataclass
class SimProcess:
    """A running ``athos-sim``: where it listens, its credentials, and its ground truth."""

    proc: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT
    truth_path: Path
    api_key: str = "sim-key"
    webhook_secret: str = "whsec_athos_sim"

    @property
    def http_url(self) -> str:
        return self.url

    @property
    def ws_url(self) -> str:
        return "ws://" + self.url.removeprefix("http://") + "/v1/realtime"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def truth(self) -> list[dict[str, Any]]:
        """The ground-truth lines written so far (the simulator flushes every 0.5 s)."""
        if not self.truth_path.exists():
            return []
        with self.truth_path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def kill(self) -> None:
        """SIGKILL: the platform vanishes at once (no close frames, no truth-log flush)."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the simulator stops gracefully and exits 0."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)


def start_sim(truth_path: Path, *args: str, fast: bool = True) -> SimProcess:
    """Start ``python -m athos_load.sim`` on a free loopback port; wait for its listening line."""
    cmd = [sys.executable, "-m", "athos_load.sim", "--port", "0", "--truth-log", str(truth_path)]
    cmd += [*SIM_FAST_ARGS, *args] if fast else list(args)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(SIM_START_TIMEOUT)
    text = line[0].strip() if line else ""
    prefix = "athos-sim: listening on "
    if not text.startswith(prefix):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"athos-sim did not start within {SIM_START_TIMEOUT}s (first line: {text!r})")
    api_key = args[args.index("--api-key") + 1] if "--api-key" in args else "sim-key"
    secret = args[args.index("--webhook-secret") + 1] if "--webhook-secret" in args else "whsec_athos_sim"
    return SimProcess(proc, text.removeprefix(prefix), truth_path, api_key, secret)


@pytest.fixture(scope="module")
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimProcess]]:
    """``sim_factory(*extra_args, fast=True)`` starts a simulator (with ``SIM_FAST_ARGS`` unless
    ``fast=False``). Module-scoped so module fixtures can share one; every simulator it started
    is stopped when the module ends (call ``.stop()`` to stop one earlier)."""
    started: list[SimProcess] = []
    directory = tmp_path_factory.mktemp("sim")

    def factory(*args: str, fast: bool = True) -> SimProcess:
        sim = start_sim(directory / f"truth-{len(started)}.jsonl", *args, fast=fast)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(sim_factory: Callable[..., SimProcess]) -> SimProcess:
    """A simulator with short fixed latencies (``SIM_FAST_ARGS``) and every fault off."""
    return sim_factory()
