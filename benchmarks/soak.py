"""A soak against the simulator: does the generator stay flat, and what do drift and change-points say?

Runs ``locust -f locustfile.py --headless --athos-shape soak`` for ``--minutes`` (default 30) at
``--users`` (300) against the built-in simulator, with a warm-up of ``--warmup`` seconds (300: the
ramp, then the time windows and the allocator settling), optionally a daily-traffic wave
(``--wave LOW:PERIOD``), and drift gates on the platform's timings and rates and on the
generator's memory. Every 10 s it samples the Locust process's RSS and open file descriptors
(``/proc``); at the end it prints them after the warm-up and at the end with the growth, Locust's
own bookkeeping (the summary's ``loadgen.locust_stats``), every drift and change-point the summary
holds, and the verdict. It exits 1 when RSS grew by :data:`RSS_LIMIT` or more after the warm-up::

    flock /tmp/athos-bench.lock python benchmarks/soak.py                       # 30 min, 300 users
    flock /tmp/athos-bench.lock python benchmarks/soak.py --minutes 5 --users 50 --warmup 60

The figures are in docs/performance.md. Everything is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from athos_load.report import trend_rows  # noqa: E402

SAMPLE_SECONDS = 10.0
RSS_LIMIT = 0.05  # growth after the warm-up, as a share of the RSS then
GATES = """\
connect_ready: ["drift(p95) < 10%/h"]
persona_response: ["drift(p95) < 10%/h"]
end_to_score: ["drift(p95) < 10%/h"]
reconnects_per_session_minute: ["drift < 0.1/h"]
errors: ["drift < 0.01/h"]
loadgen_rss: ["drift < 5%/h"]
loadgen_open_fds: ["drift < 5%/h"]
"""


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def open_fds(pid: int) -> int:
    return psutil.Process(pid).num_fds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--ramp", type=float, default=120.0, help="seconds to reach --users")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds left out of the statistics")
    parser.add_argument("--wave", default="", help="LOW:PERIOD: users between LOW and --users over PERIOD s")
    parser.add_argument("--scenario", default="scenarios/smoke")
    args = parser.parse_args()
    params = f"ramp_seconds={args.ramp:g},warmup_seconds={args.warmup:g}"
    if args.wave:
        low, _, period = args.wave.partition(":")
        params += f",low={low},period={period}"
    out = Path(tempfile.mkdtemp(prefix="athos-soak-"))
    (out / "gates.yaml").write_text(GATES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "ATHOS_"))}
    seconds = round(args.minutes * 60)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless",
        "-u", str(args.users), "-t", f"{seconds}s", "--athos-shape", "soak", "--athos-shape-params", params,
        "--athos-scenario", args.scenario, "--athos-gates", str(out / "gates.yaml"),
        "--athos-summary", str(out / "summary.json"), "--athos-report", str(out / "report.html"),
        "--athos-drain-timeout", "10", "--only-summary",
    ]  # fmt: skip
    log = (out / "locust.log").open("w")
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"{args.users} users for {args.minutes:g} min ({params}); output in {out}", flush=True)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    try:
        while run.poll() is None:
            try:
                samples.append((time.monotonic() - started, rss_bytes(run.pid), open_fds(run.pid)))
            except psutil.Error:  # it exited between poll() and the read
                break
            t, rss, fds = samples[-1]
            if len(samples) % 6 == 1:  # a line a minute
                print(f"  {t:6.0f} s  RSS {rss / 2**20:7.1f} MiB  fds {fds:5d}", flush=True)
            time.sleep(SAMPLE_SECONDS)
    finally:
        if run.poll() is None:
            run.kill()
        run.wait(60)
        log.close()
    # the last sample taken while the run was still at its level (not in the drain at the end)
    held = [s for s in samples if s[0] <= seconds]
    warm = next((s for s in held if s[0] >= args.warmup), held[0])
    end = held[-1]
    growth = (end[1] - warm[1]) / warm[1]
    print()
    print(f"after warm-up ({warm[0]:.0f} s): RSS {warm[1] / 2**20:.1f} MiB, fds {warm[2]}")
    print(f"at the end ({end[0]:.0f} s):     RSS {end[1] / 2**20:.1f} MiB, fds {end[2]}")
    print(f"growth after warm-up: RSS {growth:+.1%} (limit {RSS_LIMIT:.0%}), fds {end[2] - warm[2]:+d}")
    summary = json.loads((out / "summary.json").read_text())
    locust = summary["loadgen"].get("locust_stats") or {}
    print(
        f"Locust's own bookkeeping at the end: {locust.get('history_rows')} history rows, "
        f"{locust.get('per_second_keys')} per-second keys, {locust.get('bytes', 0) / 1024:.0f} KiB"
    )
    calls = summary["calls"]
    print(f"calls {calls}; errors {summary['errors']}; reconnects {summary['reconnects']}")
    print(f"windows: {len(summary['timeline']['windows'])} of {summary['timeline']['window_seconds']:g} s")
    for what, value, state in trend_rows(summary):
        print(f"  {what:<40} {value}  [{state}]")
    print(f"verdict: {summary['verdict']['status']} {summary['verdict']['reasons']}; exit code {run.returncode}")
    return 0 if growth < RSS_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
