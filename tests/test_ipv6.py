"""IPv6 loopback: every URL the tool builds or prints has the address in brackets, and a run whose
receiver, simulator and /metrics all listen on [::1] gets its scores."""

import json
import socket
import subprocess
import time
import urllib.request

import pytest
from support.locust_run import LOCUST, ROOT, check_accounting, locust_env, silent_scenario

from athos_load.options import OPTIONS, OptionError
from athos_load.wire import realtime_url


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("::1", 80, "[::1]:80"),
        ("[::1]", 80, "[::1]:80"),
        ("127.0.0.1", 0, "127.0.0.1:0"),
        ("example.com", 1, "example.com:1"),
    ],
)
def test_an_ipv6_address_is_bracketed_in_a_url_authority(host, port, expected):
    from athos_load.wire import authority  # the one helper every URL the tool builds goes through

    assert authority(host, port) == expected
    assert realtime_url(f"http://{authority(host, port)}") == f"ws://{expected}/v1/realtime"


def test_an_unbracketed_ipv6_listen_address_is_refused_with_a_hint():
    listen = next(o for o in OPTIONS if o.name == "webhook_listen")
    assert listen.check("[::1]:0") == "[::1]:0"
    with pytest.raises(OptionError, match=r"^--athos-webhook-listen: '::1:0': an IPv6 address goes in brackets"):
        listen.check("::1:0")


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_run_with_everything_on_ipv6_loopback_gets_its_scores(tmp_path):
    """The receiver on [::1] is handed to the simulator (itself on ::1) with brackets, its scores
    arrive, and /metrics on [::1] is printed with brackets and answers."""
    metrics_port = _free_ipv6_port()
    summary_path = tmp_path / "s.json"
    cmd = [
        *LOCUST, "--headless", "-u", "2", "-r", "2", "-t", "5s",
        "--athos-scenario", str(silent_scenario(tmp_path, 0.5)),
        "--athos-webhook-listen", "[::1]:0", "--athos-sim-args", "--host ::1 --score-delay fixed:0.2",
        "--athos-metrics-host", "[::1]", "--athos-metrics-port", str(metrics_port),
        "--athos-score-timeout", "8", "--athos-drain-timeout", "10", "--athos-summary", str(summary_path),
    ]  # fmt: skip
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=locust_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        lines: list[str] = []
        scraped = ""
        try:
            deadline = time.monotonic() + 60
            assert proc.stdout is not None
            while time.monotonic() < deadline and (line := proc.stdout.readline()):
                lines.append(line)
                if "Prometheus metrics are served at" in line:
                    with urllib.request.urlopen(line.split(" at ", 1)[1].strip(), timeout=10) as answer:
                        scraped = answer.read().decode()
                    break
            lines += proc.communicate(timeout=60)[0].splitlines(keepends=True)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    out = "".join(lines)
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert "call.scored webhooks are received at http://[::1]:" in out, out
    assert "started the built-in simulator at http://[::1]:" in out, out
    assert f"Prometheus metrics are served at http://[::1]:{metrics_port}/metrics" in out, out
    assert "athos_sessions_started_total" in scraped
    summary = json.loads(summary_path.read_text())
    check_accounting(summary)
    assert summary["settings"]["host"].startswith("http://[::1]:")
    assert summary["calls"]["completed"] > 0
    assert summary["calls"]["scored"] == summary["calls"]["completed"], summary["calls"]
    assert summary["webhooks"].get("accepted", 0) == summary["calls"]["scored"]
