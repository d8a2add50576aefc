"""Shared fixtures. The client side runs under gevent, as it does inside Locust: patch first."""

# ruff: noqa: E402  (every import below follows the monkey-patching, on purpose)
from gevent import monkey

monkey.patch_all()

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.hostile import HostilePeer
from support.locust_run import gated_run

from athos_load.simproc import SimulatorProcess

# -- sim: the simulator, started as a subprocess ---------------------------------------------------

SIM_START_TIMEOUT = 10.0
# Latencies short and fixed and no transient drops, so tests run quickly and their expectations are
# exact; a test that needs other knobs passes them to sim_factory (later options override these).
SIM_FAST_ARGS = (
    "--ready-latency", "fixed:0.05", "--response-latency", "fixed:0.2", "--score-delay", "fixed:0.2",
    "--persona-utterance", "fixed:0.5", "--seed", "7", "--drops-per-minute", "0",
)  # fmt: skip


@pytest.fixture(scope="module")
def sim_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimulatorProcess]]:
    """``sim_factory(*extra_args, fast=True)`` starts a simulator (with ``SIM_FAST_ARGS`` unless
    ``fast=False``). Module-scoped so module fixtures can share one; every simulator it started
    is stopped when the module ends (call ``.stop()`` to stop one earlier)."""
    started: list[SimulatorProcess] = []
    directory = tmp_path_factory.mktemp("sim")

    def factory(*args: str, fast: bool = True) -> SimulatorProcess:
        extra = [*SIM_FAST_ARGS, *args] if fast else list(args)
        sim = SimulatorProcess(extra, truth_log=directory / f"truth-{len(started)}.jsonl", timeout=SIM_START_TIMEOUT)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(sim_factory: Callable[..., SimulatorProcess]) -> SimulatorProcess:
    """A simulator with short fixed latencies (``SIM_FAST_ARGS``) and every fault off."""
    return sim_factory()


# -- hostile: a misbehaving platform (tests/support/hostile.py), as a subprocess ----------------------


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Callable[[str], HostilePeer]]:
    """``hostile(script)`` starts the hostile server playing ``script``; stopped by pid at the end."""
    peers: list[HostilePeer] = []

    def start(script: str) -> HostilePeer:
        peers.append(HostilePeer.start(script, tmp_path / f"{script}.jsonl", lifetime=60.0))
        return peers[-1]

    yield start
    for peer in peers:
        peer.stop()


# -- smoke_run: the README's run, judged by generous gates, shared by the tests that read it ---------

GENEROUS_GATES = """
connect_ready: ["p(90) < 5s", "count > 0"]
persona_response: ["med < 5s"]
call_setup: ["rate > 0.5"]
errors: ["rate < 0.5"]
"""


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """``locust -f locustfile.py --headless`` on the smoke scenarios against the built-in simulator,
    with CSV and every report written into its directory and ``GENEROUS_GATES`` deciding the exit
    code: ``(directory, completed process, summary)``. One run for the run's and the gates' tests."""
    out = tmp_path_factory.mktemp("smoke")
    result, summary = gated_run(out, GENEROUS_GATES, "-u", "20", "-r", "10", "-t", "16s", "--csv", str(out / "run"))
    return out, result, summary


# -- slowed_run: one real gated run against a slowed platform, shared by the tests that read it ------

SLOWED_GATES = 'persona_response: ["med < 1s"]\nconnect_ready: ["max < 5s"]\n'


@pytest.fixture(scope="session")
def slowed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, dict]:
    """A headless smoke run with turn latencies of 1.6 s judged by ``SLOWED_GATES`` (the first fails,
    the second holds), writing every report (summary, JUnit, Markdown, HTML) into its directory:
    ``(directory, completed process, summary)``. One run for the gates' and the report's tests."""
    out = tmp_path_factory.mktemp("slowed")
    result, summary = gated_run(
        out, SLOWED_GATES, "-u", "4", "-r", "4", "-t", "16s", "--athos-sim-args", "--response-latency fixed:1.6",
        "--athos-report", str(out / "report.html"),
    )  # fmt: skip
    return out, result, summary
