"""``--athos-report``: one HTML page that opens offline, drawn from the run's JSON summary; a real run
writes it, and headless Chromium shows its plots drawn."""

import html
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from athos_load.metrics import Metrics, Outcome, ScoreOutcome, Timing
from athos_load.report_html import CHANGE, PLOT_BG, SATURATED, WARMUP, RunTimeline, html_report
from athos_load.timeline import Timeline
from athos_load.trends import changes, drifts
from athos_load.verdict import ExitCode

FIGURES = 3  # latency per timing; sessions, reconnects and errors; the generator's health
START = 1_700_000_000.0


def synthetic_summary(*, gap: range, saturated: list[range], seconds: int = 120) -> dict:
    """A run recorded through the real Metrics on a fake clock: a window per second, none in ``gap``,
    the generator saturated in ``saturated``; no reconnects, so that timing is empty."""
    rng = np.random.default_rng(7)
    now = [START]
    m = Metrics()
    m.timeline = Timeline(clock=lambda: now[0])
    hot = {t for span in saturated for t in span}
    for t in range(seconds):
        if t in gap:
            continue
        now[0] = START + t + 0.5
        m.users = 10
        m.call_started("drill")
        m.timings[Timing.TOKEN_MINT].observe(rng.lognormal(-5, 0.3), scenario="drill")
        m.timings[Timing.CONNECT_READY].observe(rng.lognormal(-1.6, 0.4), scenario="drill")
        for _ in range(3):
            m.timings[Timing.PERSONA_RESPONSE].observe(rng.lognormal(-0.2, 0.25), scenario="drill")
        if t % 4 == 0:
            m.timings[Timing.END_TO_SCORE].observe(rng.lognormal(1.2, 0.3), scenario="drill")
        if t % 9 == 0:
            m.error("no_reply")
        m.call_finished("drill", Outcome.COMPLETED, 0.4)  # connected within its window: gaps stay empty
        m.score_settled("drill", ScoreOutcome.SCORED)
        m.audio_send_lags(rng.exponential(0.001, 50))
        health = {"cpu_ratio": 0.97 if t in hot else 0.3, "memory_bytes": 150e6 + t * 1e4, "open_fds": 40 + t % 3}
        m.record_health(health, saturated_for=1.0 if t in hot else 0.0)
        m.loop_lag.observe(rng.exponential(0.03 if t in hot else 0.001), worker=m.source)
    summary = m.summary()
    summary["saturated_seconds"] = float(len(hot))
    summary["loadgen"] = {"max_cpu_ratio": 0.97, "saturated_seconds": float(len(hot))}
    summary["settings"] = {"host": "http://127.0.0.1:1", "users": 10, "athos": {"scenario": "<x>&y", "frame_ms": 20}}
    summary["verdict"] = {"status": "invalid", "reasons": ["the generator was saturated <for> 14 s"]}
    summary["gates"] = []
    summary["timeline"] = m.timeline_summary()
    return summary


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, flags=re.S)


def drawn_text(page: str, text: str) -> bool:
    """The text is drawn in a plot as text (not only named in the SVG's comments)."""
    return re.search(rf"<text[^>]*>{re.escape(html.escape(text))}</text>", page) is not None


def test_saturated_windows_are_shaded_gaps_break_lines_and_empty_timings_say_so():
    summary = synthetic_summary(gap=range(50, 58), saturated=[range(30, 34), range(80, 90)])
    started = time.perf_counter()
    page = html_report(summary)
    elapsed = time.perf_counter() - started
    assert elapsed < 6, f"a 120-window report took {elapsed:.1f} s to draw"

    run = RunTimeline(summary["timeline"])
    assert [i for i, w in enumerate(run.slots) if w is None] == list(range(50, 58))
    assert run.saturated_spans() == [(30.0, 34.0), (80.0, 90.0)]
    assert (
        np.isnan(run.stat("connect_ready", "p99")[50:58]).all()
        and np.isfinite(run.stat("connect_ready", "p99")[:50]).all()
    )

    figures = svgs(page)
    assert len(figures) == FIGURES
    # every time panel is shaded in both saturated periods: 4 timings with samples; active sessions and
    # errors (no reconnects); CPU, memory, loop lag and send lag, plus the "saturated" legend key
    assert [figure.count(f"fill: {SATURATED}") for figure in figures] == [4 * 2, 2 * 2, 4 * 2 + 1]
    assert drawn_text(page, "generator memory (MiB, every process) and open descriptors")
    # a line over the gap is two pieces: its path starts again (M) after the gap
    connect = figures[0].split("connect_ready, ms", 1)[0]
    assert any(path.count("M ") >= 2 for path in re.findall(r'<path d="([^"]*)"[^>]*stroke: #c8312f', connect))

    assert drawn_text(page, "reconnect: no data")  # the empty timing's plot is a note, not an empty axis
    assert re.search(r"<code>reconnect</code>.*?no data</td>", page)
    assert "errors by code" in page and "no_reply" in page
    assert "&lt;x&gt;&amp;y" in page and "<x>" not in page and "&lt;for&gt;" in page  # summary text is escaped


def test_a_summary_with_no_timeline_draws_notes():
    page = html_report(Metrics().summary())
    assert len(svgs(page)) == FIGURES
    assert drawn_text(page, "connect_ready: no data") and drawn_text(page, "generator CPU: no data")
    assert "<script" not in page


# -- a real run, opened in a browser ---------------------------------------------------------------


def test_a_run_writes_a_self_contained_report_naming_the_failed_gate(slowed_run):
    out, result, summary = slowed_run  # a real run whose first gate fails (conftest.SLOWED_GATES)
    assert result.returncode == ExitCode.GATE_FAILED, result.stderr[-3000:]
    page = (out / "report.html").read_text()

    assert "<script" not in page.lower() and "@import" not in page
    # nothing is fetched: every reference is to something inside the page
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"|url\(([^)]*)\)', page)
    assert references and all(ref.startswith("#") for pair in references for ref in pair if ref)
    # the only address on the page is the run's host, shown as text
    assert set(re.findall(r"https?://[^\s\"<]+", page)) == {summary["settings"]["host"]}

    assert ">FAILED<" in page
    failed, passed = summary["gates"]
    assert passed["passed"] is True and failed["passed"] is False
    row = re.search(r'<tr class="fail">(.*?)</tr>', page, flags=re.S).group(1)
    assert "persona_response" in row and html.escape("med < 1s") in row and html.escape(failed["shown"]) in row
    assert len(svgs(page)) == FIGURES
    assert summary["connect_ready"]["count"] > 0 and f">{summary['connect_ready']['count']}<" in page


def plot_areas(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Rectangles (top, bottom, left, right) painted with the plots' background: the drawn axes."""
    background = np.abs(pixels - np.array(_rgb(PLOT_BG))).max(axis=-1) <= 2
    rows = _runs(np.flatnonzero(background.sum(axis=1) > 150))
    areas = []
    for top, bottom in rows:
        columns = _runs(np.flatnonzero(background[top:bottom].sum(axis=0) > 2))  # bars may fill most of a column
        areas += [(top, bottom, left, right) for left, right in columns if right - left > 100 and bottom - top > 40]
    return areas


def _runs(indices: np.ndarray, gap: int = 8) -> list[tuple[int, int]]:
    """Contiguous runs of indices, bridging gaps (grid lines) up to ``gap``."""
    runs: list[tuple[int, int]] = []
    for i in indices.tolist():
        if runs and i - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_headless_chromium_shows_the_plots_drawn(slowed_run, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    out, _, summary = slowed_run
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,5000",
            (out / "report.html").as_uri(),
        ],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (pixels.min(axis=-1) < 245).mean() > 0.03  # a page, not a blank sheet
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000  # lines, bars and text in many colours

    timed = [t.value for t in Timing if summary[t.value]["count"]]
    areas = plot_areas(pixels)
    # each timing with samples has two plots (over time, distribution); active sessions; CPU, loop lag, send lag
    assert len(areas) >= 2 * len(timed) + 4, areas
    plain = [_rgb(c) for c in ("#ffffff", PLOT_BG, SATURATED)]
    for top, bottom, left, right in areas:
        area = pixels[top:bottom, left:right]
        ink = (area.max(axis=-1) - area.min(axis=-1) > 40) & np.all(
            [np.abs(area - np.array(c)).max(axis=-1) > 6 for c in plain], axis=0
        )
        assert ink.sum() > 15, f"the plot at {(top, left)} is blank"


def test_a_change_point_is_marked_on_its_timing_plot():
    summary = synthetic_summary(gap=range(0), saturated=[])
    windows = summary["timeline"]["windows"]
    at = windows[60]["start"]
    summary["change_points"] = {"persona_response": [{"at": at, "before": 0.8, "after": 1.2, "change": 0.5}]}
    page = html_report(summary)
    latency = svgs(page)[0]
    assert latency.count(f"stroke: {CHANGE}") == 1  # one dotted line, on persona_response's panel only
    assert drawn_text(page, "+50%")
    assert f"stroke: {CHANGE}" not in html_report(synthetic_summary(gap=range(0), saturated=[]))


def test_drift_change_points_and_the_warm_up_are_written_out():
    """The report says in words what changed over the run (the same rows as the live tab), and
    shades the warm-up its timings leave out."""
    summary = synthetic_summary(gap=range(0), saturated=[], seconds=240)  # 2 s windows: 6 turns in each
    timeline = summary["timeline"]
    timeline["warmup_until"] = summary["warmup_until"] = START + 20
    names = [t.value for t in Timing]
    summary["drift"] = drifts(timeline, names)
    summary["change_points"] = changes(timeline, names)
    summary["change_points"]["persona_response"] = [{"at": START + 60, "before": 0.8, "after": 1.2, "change": 0.5}]
    page = html_report(summary)
    section = page[page.index("<h2>Over the run</h2>") :].split("</section>")[0]
    rows = re.findall(r"<tr[^>]*><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", section)
    by_what = {what: (value, state) for what, value, state in rows}
    value, state = by_what["drift persona_response p95"]
    assert state in ("steady", "rising", "falling") and "/h (95% interval" in value
    assert "over" in value and "windows" in value
    assert by_what["change persona_response"] == ("+50% from 22:14:20 UTC: p95 800 → 1,200 ms", "shifted")
    # under a session-minute in each window: no reconnect rate to measure, and no row for it
    assert "drift reconnects_per_session_minute" not in by_what
    assert "after the warm-up (from" in page and f"fill: {WARMUP}" in svgs(page)[0]
    plain = synthetic_summary(gap=range(0), saturated=[])
    assert f"fill: {WARMUP}" not in html_report(plain) and "<h2>Over the run</h2>" not in html_report(plain)
