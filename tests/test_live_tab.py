"""The Athos tabs of Locust's web UI: a real Locust process on 127.0.0.1 running the smoke drills,
its ``/stats/requests`` JSON, and the page as headless Chromium renders it."""

import logging
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import numpy as np
import pytest
import requests
from support.locust_run import LOCUST, ROOT, locust_env
from support.net import free_port

from athos_load.metrics import Metrics, Timing
from athos_load.plugin.webui import RUN_TAB, TIMINGS_TAB, WINDOWS_TAB, OverTime, extended_stats, install_tab

FAST_SIM = "--ready-latency fixed:0.05 --response-latency fixed:0.2 --score-delay fixed:0.2"
PASSING = "gate connect_ready: p(50) < 10s"
FAILING = "gate persona_response: max < 1ms"


def test_the_tabs_show_the_run_in_progress(tmp_path):
    gates = tmp_path / "gates.yaml"
    gates.write_text('connect_ready: ["p(50) < 10s"]\npersona_response: ["max < 1ms"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "locust.log").open("w")
    proc = subprocess.Popen(
        [
            *LOCUST, "--web-host", "127.0.0.1", "--web-port", str(port), "--autostart",
            "-u", "4", "-r", "4", "-t", "30s", "--athos-scenario", "scenarios/smoke",
            "--athos-gates", str(gates), "--athos-drain-timeout", "2", "--athos-sim-args", FAST_SIM,
        ],
        cwd=ROOT, env=locust_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        report = _wait_for_completed_calls(base, proc)
        timings, run = _tab(report, TIMINGS_TAB), _tab(report, RUN_TAB)
        _check_timings(timings, report)
        _check_run(run)
        windows = _tab(report, WINDOWS_TAB)  # newest first, one per second in so short a run
        assert windows and [w["start"] for w in windows] == sorted((w["start"] for w in windows), reverse=True)
        assert any(int(w["active"]) > 0 for w in windows) and any(w["ready"] != "-" for w in windows)

        if shutil.which("chromium") is None:
            pytest.skip("no chromium on this machine: the JSON was checked, the rendered page is not")
        timings_page = _rows(_chromium(tmp_path, f"{base}/?tab={TIMINGS_TAB}", "--dump-dom"))
        assert timings_page[0] == ["Timing", "Count", "p50 ms", "p95 ms", "p99 ms", "Max ms"]
        shown = {row[0]: row for row in timings_page[1:]}
        assert set(shown) == {t.value for t in Timing}
        assert int(shown["connect_ready"][1]) > 0 and float(shown["connect_ready"][2].replace(",", "")) > 0
        dom = _chromium(tmp_path, f"{base}/?tab={RUN_TAB}", "--dump-dom")
        assert _tab_titles(dom) >= {"Athos timings", "Athos run", "Athos over time"}
        states = {row[0]: row[-1] for row in _rows(dom)}
        assert states[PASSING] == "passing" and states[FAILING] == "failing"
        # (healthy in the JSON before Chromium started; with three Chromiums on two cores it may not be now)
        assert states["generator"] in ("healthy", "saturated: its timings include its own delay")

        png = tmp_path / "athos-run.png"
        _chromium(tmp_path, f"{base}/?tab={RUN_TAB}", f"--screenshot={png}", "--window-size=1400,1000")
        _check_not_blank(png)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    out = (tmp_path / "locust.log").read_text()
    assert "Traceback" not in out and "Athos tabs cannot be filled" not in out, out[-3000:]


def test_a_failure_in_the_tabs_leaves_locusts_own_stats_as_they_were(caplog, monkeypatch):
    from locust import User, constant, task
    from locust.env import Environment

    class Idle(User):
        wait_time = constant(1)

        @task
        def nothing(self):
            pass

    monkeypatch.setattr(sys, "argv", ["locust"])  # Locust's page reads its form's options from the command line
    environment = Environment(user_classes=[Idle])
    environment.create_local_runner()
    environment.create_web_ui("127.0.0.1", 0, delayed_start=True)

    def broken() -> list:
        return extended_stats(None, [], 0.02)  # every read of the metrics raises

    install_tab(environment, broken)
    assert [t["key"] for t in environment.web_ui.template_args["extended_tabs"]] == [TIMINGS_TAB, RUN_TAB, WINDOWS_TAB]
    client = environment.web_ui.app.test_client()
    with caplog.at_level(logging.ERROR, logger="athos_load.plugin.webui"):
        answers = [client.get("/stats/requests") for _ in range(3)]
    for answer in answers:
        assert answer.status_code == 200
        body = answer.get_json()
        assert "stats" in body and body["state"] == "ready" and "extended_stats" not in body
    assert len([r for r in caplog.records if "Athos tabs" in r.getMessage()]) == 1  # said once, not per poll
    environment.runner.quit()


def test_drift_and_change_points_close_the_run_tab():
    """Two hours of a turn latency that steps up by half at 70 min, read as the tab reads it: a
    change-point row, and the drift rows; recomputed only every few seconds."""
    clock = [1_767_225_600.0]
    metrics = Metrics()
    metrics.timeline.clock = lambda: clock[0]
    rng = np.random.default_rng(1)
    for k in range(360):
        clock[0] = 1_767_225_600.0 + k * 20.0
        factor = 1.5 if k * 20.0 >= 70 * 60 else 1.0
        metrics.timings[Timing.PERSONA_RESPONSE].observe_many(factor * rng.lognormal(-0.1, 0.3, 20), scenario="s")
    now = [0.0]
    over_time = OverTime(metrics, every=5.0, clock=lambda: now[0])
    run = {row["what"]: row for row in _tab({"extended_stats": extended_stats(metrics, [], 0.02, over_time)}, RUN_TAB)}
    change = run["change persona_response"]
    assert change["state"] == "shifted" and re.match(r"\+(4[0-9]|5[0-9])% ", change["value"]), change
    assert re.search(r"from 01:(09|10):\d\d UTC", change["value"]), change  # 70 min in, within a window
    assert run["drift persona_response p95"]["state"] == "rising"  # a step reads as a rise too
    assert "/h (95% interval" in run["drift persona_response p50"]["value"]
    # the tab's windows are the newest at full resolution: the last minute's, one second each
    assert [w["start"].split(" (")[1] for w in over_time.windows] == ["1 s)"] * 3  # a sample every 20 s
    assert over_time.windows[0]["start"].startswith("01:59:40") and over_time.windows[0]["response"] != "-"
    before = over_time.windows[0]["response"]
    metrics.timings[Timing.PERSONA_RESPONSE].observe_many(np.full(5, 100.0), scenario="s")
    now[0] = 4.0
    over_time.refresh()
    assert over_time.windows[0]["response"] == before  # not recomputed yet: a poll stays cheap
    now[0] = 5.0
    over_time.refresh()
    assert over_time.windows[0]["response"] == "100,000"


# -- helpers ---------------------------------------------------------------------------------------


def _wait_for_completed_calls(base: str, proc: subprocess.Popen) -> dict:
    """``/stats/requests`` once a call has completed and both gates can be judged."""
    deadline = time.monotonic() + 45
    report: dict = {}
    while True:
        assert proc.poll() is None, "locust exited early"
        assert time.monotonic() < deadline, f"no completed call in the tabs in time: {report.get('extended_stats')}"
        try:
            report = requests.get(base + "/stats/requests", timeout=5).json()
        except requests.ConnectionError:
            report = {}
        if report.get("extended_stats"):
            timings = {row["timing"]: row for row in _tab(report, TIMINGS_TAB)}
            run = {row["what"]: row for row in _tab(report, RUN_TAB)}
            ready = timings["connect_ready"]["count"] >= 2 and timings["persona_response"]["count"] >= 1
            if ready and int(run["calls completed"]["value"]) > 0:
                return report
        time.sleep(0.5)


def _tab(report: dict, key: str) -> list[dict]:
    (tab,) = [s for s in report["extended_stats"] if s["key"] == key]
    return tab["data"]


def _check_timings(rows: list[dict], report: dict) -> None:
    assert [row["timing"] for row in rows] == [t.value for t in Timing]
    for row in rows:
        if row["count"]:
            p50, p95, p99, top = (float(row[k].replace(",", "")) for k in ("p50", "p95", "p99", "max"))
            assert 0 <= p50 <= p95 <= p99 <= top < 30_000, row
        else:
            assert [row[k] for k in ("p50", "p95", "p99", "max")] == ["-"] * 4
    by_name = {row["timing"]: row for row in rows}
    assert by_name["token_mint"]["count"] >= by_name["connect_ready"]["count"]  # a call mints, then connects
    # the tab is filled after Locust's own numbers are taken: it has seen at least as many
    locust = {entry["name"]: entry["num_requests"] for entry in report["stats"]}
    assert by_name["connect_ready"]["count"] >= locust["connect_ready"] > 0


def _check_run(rows: list[dict]) -> None:
    run = {row["what"]: row for row in rows}
    number = {what: float(row["value"]) for what, row in run.items() if row["value"].replace(".", "").isdigit()}
    ended = sum(n for what, n in number.items() if what.startswith("calls ") and what != "calls started")
    assert number["calls started"] == ended > 0  # in progress + completed + failed + aborted
    scores = number["scores arrived"] + number["scores pending"] + number["scores missing"]
    assert scores == number["calls completed"] and number["scores missing"] == 0
    assert run["errors"]["value"] == "none"
    assert run["generator"]["value"].startswith("CPU ") and run["generator"]["state"] == "healthy"
    assert run[PASSING]["state"] == "passing" and run[PASSING]["value"].endswith("samples")
    assert run[FAILING]["state"] == "failing" and run[FAILING]["value"].endswith("samples")


def _chromium(tmp_path, url: str, *args: str) -> str:
    result = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=8000", *args, url,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Cells(HTMLParser):
    """The text of every table row, and of every tab, as the browser rendered them."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tabs: list[str] = []
        self._cell: list[str] | None = None
        self._tab: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "button" and ("role", "tab") in attrs:
            self._tab = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())  # entities already decoded
            self._cell = None
        elif tag == "button" and self._tab is not None:
            self.tabs.append("".join(self._tab).strip())
            self._tab = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._tab):
            if part is not None:
                part.append(data)


def _rows(dom: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(dom)
    return [row for row in parser.rows if row]


def _tab_titles(dom: str) -> set[str]:
    parser = _Cells()
    parser.feed(dom)
    return set(parser.tabs)


def _check_not_blank(png) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape[:2] == (1000, 1400)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    inked = np.any(pixels < 200, axis=2).mean()  # text, rules, the header: not page background
    assert len(colours) > 50 and inked > 0.02, (len(colours), inked)
