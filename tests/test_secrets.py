"""Secrets: never on a command line or in a report, and no public default anyone could sign with.

The built-in simulator gets a webhook secret of the run's own through its environment, so a score
signed with the simulator's published default is refused; with ``--host`` and no secret the
receiver does not start at all."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import requests
from support.locust_run import LOCUST, ROOT, locust_env, run_locust, silent_scenario
from support.net import free_port

from athos_load.sim.config import SIM_WEBHOOK_SECRET, WEBHOOK_SECRET_ENV
from athos_load.simproc import redact
from athos_load.wire import SIGNATURE_HEADER, ScoredEvent, sign_webhook


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def test_the_built_in_simulator_signs_with_a_secret_of_the_run_nobody_else_knows(tmp_path):
    port = free_port()
    summary_path = tmp_path / "s.json"
    scenario = silent_scenario(tmp_path, 1.0)  # calls that end, and score, quickly
    run = subprocess.Popen(
        [
            *LOCUST, "--headless", "-u", "4", "-r", "4", "-t", "6s", "--athos-scenario", str(scenario),
            "--athos-webhook-listen", f"127.0.0.1:{port}", "--athos-summary", str(summary_path),
            "--athos-drain-timeout", "5",
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=locust_env(),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/webhooks/athos"
        deadline = time.monotonic() + 30
        while not (sims := [c for c in children(run.pid) if b"athos_load.sim" in cmdline_of(c)]):
            assert time.monotonic() < deadline, "no simulator started"
            time.sleep(0.1)
        (sim,) = sims
        cmdline = cmdline_of(sim).split(b"\0")
        environ = dict(
            line.split(b"=", 1) for line in Path(f"/proc/{sim}/environ").read_bytes().split(b"\0") if b"=" in line
        )
        secret = environ[WEBHOOK_SECRET_ENV.encode()].decode()
        assert b"--webhook-secret" not in cmdline and secret.encode() not in b" ".join(cmdline)
        assert secret != SIM_WEBHOOK_SECRET and len(secret) >= 32
        # a score forged with the simulator's published default secret
        body = ScoredEvent("athos_call_forged", True, time.time()).serialize().encode()
        headers = {SIGNATURE_HEADER: sign_webhook(SIM_WEBHOOK_SECRET, int(time.time()), body)}
        while True:
            try:
                forged = requests.post(url, data=body, headers=headers, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the receiver never listened"
                time.sleep(0.1)
        assert forged.status_code == 401
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(5)
    assert run.returncode == 0, err[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["webhooks"]["bad_signature"] == 1
    assert summary["calls"]["scored"] > 0 and summary["webhooks"]["accepted"] >= summary["calls"]["scored"]
    for text in (out, err, summary_path.read_text()):
        assert secret not in text


def test_with_a_host_and_no_webhook_secret_the_run_refuses_to_start(sim_factory):
    sim = sim_factory()
    result = run_locust(
        "--host", sim.http_url, "--athos-transport", "reference",
        "--headless", "-u", "1", "-t", "5s", "--athos-scenario", "scenarios/smoke",
        env=locust_env(ATHOS_API_KEY=sim.api_key), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("athos-load: ")]
    assert message == [
        f"athos-load: --host {sim.http_url}: set the secret the platform signs call.scored with in "
        "$ATHOS_WEBHOOK_SECRET, or use --athos-webhook-listen off to poll for scores"
    ]
    assert "Traceback" not in result.stderr and "Ramping to" not in result.stderr


def test_secret_options_are_hidden_wherever_arguments_are_shown():
    args = ["--seed", "7", "--api-key", "key1", "--webhook-secret=hunter2", "--drops-per-minute", "1"]
    assert redact(args) == ["--seed", "7", "--api-key", "***", "--webhook-secret=***", "--drops-per-minute", "1"]
