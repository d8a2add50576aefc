"""Locust's web UI, as a real process on 127.0.0.1: the start form offers the tool's per-run options,
and a run started from it runs with the values posted."""

import json
import re
import subprocess
import time

import requests
from support.locust_run import LOCUST, ROOT, locust_env, samples, total
from support.net import free_port


def test_a_run_started_from_the_form_takes_its_athos_options(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            *LOCUST, "--web-host", "127.0.0.1", "--web-port", str(port),
            "--athos-metrics-file", str(tmp_path / "final.prom"), "--athos-summary", str(tmp_path / "s.json"),
        ],
        cwd=ROOT, env=locust_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                page = requests.get(base + "/", timeout=2).text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "the web UI did not come up"
                time.sleep(0.3)
        # the form's extra options, as the page hands them to its script
        args = json.loads(re.search(r"window\.templateArgs = (\{.*?\})\s*</script>", page, re.S).group(1))
        extra = args["extra_options"]
        assert {"athos_scenario", "athos_score_timeout", "athos_drain_timeout"} <= set(extra)
        assert "athos_sim_args" not in extra

        form = {"user_count": "2", "spawn_rate": "2", "host": "", "run_time": "8s"}
        form |= {"athos_scenario": "scenarios/smoke", "athos_drain_timeout": "2"}
        assert requests.post(base + "/swarm", data=form, timeout=10).json()["success"]
        deadline = time.monotonic() + 60  # the run ends by itself after run_time; its summary follows
        while not (tmp_path / "s.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not end"
            time.sleep(0.3)
        proc.terminate()  # as a user closes the web UI's process
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in out, out[-3000:]
    prom = samples(tmp_path / "final.prom")
    started = total(prom, "athos_sessions_started_total")
    assert started > 0
    assert total(prom, "athos_sessions_started_total", scenario="ma-full-sale") == 0  # not the default drills
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["calls"]["started"] == started and summary["errors"] == {}
    assert summary["connect_ready"]["count"] > 0  # against the built-in simulator, though the form's host was empty
