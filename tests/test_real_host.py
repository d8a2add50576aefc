"""Against a real ``--host`` (a separately started simulator stands in for the platform): the tool
says where the platform must send webhooks, and a wrong key or realtime URL fails fast with one
clear line instead of running the whole duration."""

import json
import time

from support.locust_run import locust_env, run_locust


def test_a_wrong_api_key_stops_before_any_user(sim_factory, tmp_path):
    sim = sim_factory()
    result = run_locust(
        "--host", sim.http_url, "--athos-transport", "reference",
        "--headless", "-u", "2", "-t", "60s", "--athos-scenario", "scenarios/smoke",
        env=locust_env(ATHOS_API_KEY="not-the-key"), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"athos-load: --host {sim.http_url}: the platform refused the API key in $ATHOS_API_KEY" in result.stderr
    assert "Ramping to" not in result.stderr and "Traceback" not in result.stderr


def test_a_wrong_realtime_url_stops_the_run_after_the_first_failed_calls(sim_factory, tmp_path):
    sim = sim_factory()
    started = time.monotonic()
    result = run_locust(
        "--host", sim.http_url, "--athos-transport", "reference",
        "--headless", "-u", "3", "-r", "3", "-t", "120s",
        "--athos-scenario", "scenarios/smoke", "--athos-summary", str(tmp_path / "s.json"),
        "--athos-ws-url", sim.ws_url.replace("/v1/realtime", "/v1/nowhere"),
        env=locust_env(ATHOS_API_KEY=sim.api_key, ATHOS_WEBHOOK_SECRET=sim.webhook_secret), timeout=110,
    )  # fmt: skip
    assert time.monotonic() - started < 60  # not the 120 s the run asked for
    assert result.returncode == 2, result.stderr[-2000:]
    assert "calls all failed before ready (connect_failed" in result.stderr
    summary = json.loads((tmp_path / "s.json").read_text())  # what happened is still written
    assert summary["calls"]["failed"] >= 5 and summary["connect_ready"]["count"] == 0


def test_with_a_host_the_tool_says_the_platform_must_reach_its_receiver(sim_factory, tmp_path):
    sim = sim_factory()
    result = run_locust(
        "--host", sim.http_url, "--athos-transport", "reference",
        "--headless", "-u", "1", "-t", "3s", "--athos-scenario", "scenarios/smoke",
        "--athos-drain-timeout", "0", timeout=60,
        env=locust_env(ATHOS_API_KEY=sim.api_key, ATHOS_WEBHOOK_SECRET=sim.webhook_secret),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("athos-load: ")]
    url = next(line for line in lines if "webhooks are received at" in line).rsplit(" ", 1)[-1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/webhooks/athos")
    warning = [line for line in lines if "loopback only" in line]
    assert len(warning) == 1 and url in warning[0] and "--athos-webhook-listen off" in warning[0]
    assert "built-in simulator" not in result.stdout
