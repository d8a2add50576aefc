"""Does the generator stay flat while the platform misbehaves? Memory and descriptors under faults.

Runs ``locust -f locustfile.py --headless`` for ``--minutes`` (default 10) at ``--users`` (200)
against the simulator, through the test suite's fault-injecting TCP proxy
(``tests/support/faultproxy.py``), and injects one fault a minute in turn: every connection reset
(RST), every connection cut (FIN), the platform stalled for 5 s (SIGSTOP), the network half-open
for 20 s (nothing forwarded, nothing closed). Every 10 s it samples the Locust process's RSS and
open file descriptors (``/proc``), and prints them after the first minute (warm-up) and at the
end, with the growth; then the run's calls, errors and whether the accounting holds::

    flock /tmp/athos-bench.lock python benchmarks/faults_soak.py                 # 10 min, 200 users
    flock /tmp/athos-bench.lock python benchmarks/faults_soak.py --minutes 3 --users 50

The figures are in docs/performance.md. Everything is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fault proxy is the test suite's: one proxy, not a copy

from support.faultproxy import FaultProxy, stalled  # noqa: E402

from athos_load.simproc import SimulatorProcess  # noqa: E402

FAULTS = ("rst", "fin", "stall", "half-open")
STALL_SECONDS = 5.0
HALF_OPEN_SECONDS = 20.0
SAMPLE_SECONDS = 10.0


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def open_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inject(fault: str, proxy: FaultProxy, sim: SimulatorProcess) -> str:
    if fault in ("rst", "fin"):
        return f"{fault}: {proxy.inject(fault)} connections"
    if fault == "stall":
        with stalled(sim.process.pid):
            time.sleep(STALL_SECONDS)
        return f"platform stalled {STALL_SECONDS:g} s"
    held = proxy.inject("blackhole")
    time.sleep(HALF_OPEN_SECONDS)
    proxy.inject("pass")
    return f"half-open {HALF_OPEN_SECONDS:g} s ({held} connections left hanging)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    listen = free_port()
    sim = SimulatorProcess(["--webhook-url", f"http://127.0.0.1:{listen}/webhooks/athos"])
    proxy = FaultProxy(int(sim.http_url.rsplit(":", 1)[1]), lifetime=args.minutes * 60 + 600)
    out = Path(tempfile.mkdtemp(prefix="athos-faults-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ATHOS_"))}
    env.update(ATHOS_API_KEY=sim.api_key, ATHOS_WEBHOOK_SECRET=sim.webhook_secret)
    seconds = round(args.minutes * 60)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--host", proxy.url,
        "--athos-transport", "reference",
        "--headless",
        "-u", str(args.users), "-r", str(args.rate), "-t", f"{seconds}s", "--athos-scenario", "scenarios/smoke",
        "--athos-webhook-listen", f"127.0.0.1:{listen}", "--athos-summary", str(out / "summary.json"),
        "--athos-drain-timeout", "10", "--only-summary",
    ]  # fmt: skip
    log = (out / "locust.log").open("w")
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"{args.users} users for {args.minutes:g} min through the fault proxy; output in {out}", flush=True)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    next_fault, next_sample, k = started + 60.0, started, 0
    try:
        while run.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                try:
                    samples.append((now - started, rss_bytes(run.pid), open_fds(run.pid)))
                except psutil.Error:  # it exited between poll() and the read
                    break
                t, rss, fds = samples[-1]
                print(f"  {t:6.0f} s  RSS {rss / 2**20:7.1f} MiB  fds {fds:5d}", flush=True)
                next_sample += SAMPLE_SECONDS
            if now >= next_fault and now - started < seconds - 30:
                what = inject(FAULTS[k % len(FAULTS)], proxy, sim)
                print(f"  {time.monotonic() - started:6.0f} s  fault: {what}", flush=True)
                k, next_fault = k + 1, next_fault + 60.0
            time.sleep(0.5)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait(30)
        proxy.stop()
        sim.stop()
        log.close()
    warm = next((s for s in samples if s[0] >= 60.0), samples[0])
    end = samples[-1]
    print()
    print(f"after warm-up ({warm[0]:.0f} s): RSS {warm[1] / 2**20:.1f} MiB, fds {warm[2]}")
    print(f"at the end ({end[0]:.0f} s):     RSS {end[1] / 2**20:.1f} MiB, fds {end[2]}")
    print(f"growth after warm-up: RSS {100 * (end[1] - warm[1]) / warm[1]:+.1f}%, fds {end[2] - warm[2]:+d}")
    summary = json.loads((out / "summary.json").read_text())
    calls = summary["calls"]
    adds_up = calls["started"] == calls["completed"] + calls["failed"] + calls["aborted"] + calls.get("lost", 0)
    scores_add_up = calls["completed"] == calls["scored"] + calls["score_missing"] + calls["score_pending"]
    print(f"exit code {run.returncode}; calls {calls}")
    print(f"errors {summary['errors']}; reconnects {summary['reconnects']}")
    print(f"accounting holds: {adds_up and scores_add_up}")
    return 0 if adds_up and scores_add_up else 1


if __name__ == "__main__":
    raise SystemExit(main())
