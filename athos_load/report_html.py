"""The run as one self-contained HTML page (``--athos-report PATH``), built from its JSON summary.

The page reads top to bottom as a person asks: did it pass (the verdict, then the gates), what
happened to the calls, how fast were they, how did that move over the run, could the generator be
trusted, and what was the run asked to do.

CI artifacts are opened without a network, so the page loads nothing: no script, no stylesheet,
font or image from elsewhere. Why matplotlib draws the plots rather than an interactive library such
as plotly or bokeh: those draw in the browser from a JavaScript bundle that an offline file must
embed whole (plotly's is ~3.5 MB per file), while matplotlib renders static SVG here, at the end of
the run, so a report is a few hundred KB of plain HTML that opens anywhere (a CI artifact viewer,
a browser with scripts off, a printout) and that a test can read. It is the longest-kept plotting
library in Python and needs only numpy, which the tool already uses.

Figures are :class:`matplotlib.figure.Figure` objects rendered straight to SVG, never ``pyplot``:
no GUI backend, no global figure registry to leak into a long-lived Locust process. Text stays text
in the SVG (``svg.fonttype: none``): searchable, a fraction of the size of glyph outlines, drawn by
the browser with a local sans-serif font. matplotlib is imported when a report is drawn, not when
this module is: a run that asks for no report does not pay for it.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .metrics import DOCS, Timing
from .report import count_text, ms_text, observed_text, trend_rows
from .timeline import WindowHistogram

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOT_BG = "#f3f5f9"  # every drawn plot area's background (the screenshot test finds plots by it)
SATURATED = "#f7c6a3"  # windows in which the generator was saturated
CHANGE = "#6a3d9a"  # a change-point: the first window at a new level
WARMUP = "#e6e6e6"  # the warm-up (a soak's ramp), left out of the timings, drift and change-points
PERCENTILES = (("p50", "#2f6db5"), ("p95", "#e08a1e"), ("p99", "#c8312f"))
SERIES = ("#2f6db5", "#e08a1e", "#3a9a5b", "#c8312f", "#7d5ba6", "#8c6d31", "#d45fa4", "#4f9fa8")
VERDICT_COLOURS = {"passed": "#1a7f37", "failed": "#cf222e", "invalid": "#9a6700"}
FIGURE_WIDTH = 11.0  # inches; the SVG scales to the page, so this sets the text's relative size
RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,  # an error code or label with '$' is text, not a formula to parse
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titlelocation": "left",
    "axes.titleweight": "bold",
    "axes.facecolor": PLOT_BG,
    "axes.edgecolor": "#c5cad3",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,  # grid lines behind bars
    "grid.color": "white",
    "grid.linewidth": 1.2,
    "xtick.color": "#555",
    "ytick.color": "#555",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}


def html_report(summary: dict[str, Any]) -> str:
    """The whole page: verdict, gates, calls, timings, plots over time, settings."""
    run = RunTimeline(summary.get("timeline") or {})
    body = [
        _header(summary, run),
        _verdict(summary),
        _gates(summary),
        _calls(summary),
        _timings(summary),
        _trends(summary),
        *_plots(summary, run),
        _capacity(summary),
        _settings(summary),
    ]
    return PAGE.format(style=STYLE, body="\n".join(part for part in body if part))


# -- the run over time ---------------------------------------------------------------------------


class RunTimeline:
    """The summary's windows on a dense grid: slot ``i`` covers ``[i, i+1) * width`` seconds since
    the first window; a window in which nothing happened is None, so lines break there."""

    def __init__(self, timeline: dict[str, Any]) -> None:
        self.width = float(timeline.get("window_seconds") or 1.0)
        windows = sorted(timeline.get("windows") or [], key=lambda w: w["start"])
        self.start = float(windows[0]["start"]) if windows else 0.0
        slots = round((windows[-1]["start"] - self.start) / self.width) + 1 if windows else 0
        self.slots: list[dict[str, Any] | None] = [None] * slots
        for window in windows:
            self.slots[round((window["start"] - self.start) / self.width)] = window
        self.seconds = slots * self.width
        until = timeline.get("warmup_until")
        self.warmup_seconds = max(0.0, until - self.start) if until is not None and windows else 0.0
        # long runs read better in minutes or hours than in thousands of seconds
        self.unit, self.scale = next((u, s) for u, s, upto in TIME_UNITS if self.seconds <= upto)

    def __bool__(self) -> bool:
        return bool(self.slots)

    @property
    def x(self) -> np.ndarray:
        """Each window's middle, in the display unit."""
        return (np.arange(len(self.slots)) + 0.5) * self.width / self.scale

    @property
    def left(self) -> np.ndarray:
        """Each window's start, in the display unit (for bars)."""
        return np.arange(len(self.slots)) * self.width / self.scale

    def values(self, read: Callable[[dict[str, Any]], float | None]) -> np.ndarray:
        """One value per slot; NaN for a gap or a missing value."""
        out = np.full(len(self.slots), np.nan)
        for i, window in enumerate(self.slots):
            value = None if window is None else read(window)
            if value is not None:
                out[i] = value
        return out

    def stat(self, name: str, key: str) -> np.ndarray:
        return self.values(lambda w: (w.get(name) or {}).get(key))

    def histogram(self, name: str) -> WindowHistogram | None:
        """Every window's histogram of a timing, merged: the run's distribution at 1% resolution."""
        merged: WindowHistogram | None = None
        for window in self.slots:
            data = (window or {}).get(name, {}).get("h")
            if not data:
                continue
            if merged is None:
                merged = WindowHistogram.from_dict(data)
            else:
                merged.merge(WindowHistogram.from_dict(data))
        return merged

    def saturated_spans(self) -> list[tuple[float, float]]:
        """Runs of adjacent saturated windows, as (start, end) in the display unit."""
        spans: list[tuple[float, float]] = []
        for i, window in enumerate(self.slots):
            if window and (window.get("saturated_seconds") or 0) > 0:
                a, b = i * self.width / self.scale, (i + 1) * self.width / self.scale
                if spans and math.isclose(spans[-1][1], a):
                    spans[-1] = (spans[-1][0], b)
                else:
                    spans.append((a, b))
        return spans


TIME_UNITS = (("s", 1.0, 1800.0), ("min", 60.0, 6 * 3600.0), ("h", 3600.0, math.inf))


# -- plots ---------------------------------------------------------------------------------------


def _plots(summary: dict[str, Any], run: RunTimeline) -> list[str]:
    from matplotlib import rc_context

    caption = (
        (
            f"x axis: {_TIME_WORDS[run.unit]} since the run's first window ({_e(_clock(run.start))}), "
            f"windows of {run.width:g} s; a gap is a window in which nothing was recorded. "
            f'<span class="swatch" style="background:{SATURATED}"></span> shaded: the generator was saturated '
            "(its own delay is in the latencies recorded then)."
            + (
                f' <span class="swatch" style="background:{WARMUP}"></span> shaded: the warm-up, left out of the '
                "timings, drift and change-points."
                if run.warmup_seconds
                else ""
            )
            + (
                f' <span class="swatch" style="background:{CHANGE}"></span> dotted: a change-point, where a '
                "timing's p95 moved to a new level (by the share shown)."
                if any((summary.get("change_points") or {}).values())
                else ""
            )
        )
        if run
        else "The summary holds no timeline: nothing to plot over time."
    )
    with rc_context(RC):  # drawing and saving both read the settings (text stays text when saved)
        latency = _figure_html(_latency_figure(summary, run))
        load = _figure_html(_load_figure(summary, run))
        health = _figure_html(_health_figure(summary, run))
    return [
        _section("Latency over the run", f'<p class="note">{caption}</p>{latency}'),
        _section("Sessions, reconnects and errors", load),
        _section("Load generator health", health),
    ]


def _latency_figure(summary: dict[str, Any], run: RunTimeline) -> Figure:
    """Per timing, a row: its percentiles per window (left) and the run's distribution (right)."""
    timings = [t.value for t in Timing]
    fig, axes = _rows(len(timings), width_ratios=(3.0, 1.0))
    drawn = []
    for (over_time, spread), name in zip(axes, timings, strict=True):
        stats = summary.get(name) or {}
        factor, unit = _latency_unit(stats.get("p99") or stats.get("max"))
        drawn.append(_percentiles_over_time(over_time, run, name, factor, unit))
        for change in (summary.get("change_points") or {}).get(name) or []:
            # where the platform changed behaviour: the first window at the new level
            over_time.axvline((change["at"] - run.start) / run.scale, color=CHANGE, lw=1.2, ls=":")
            over_time.annotate(
                f"{change['change']:+.0%}", ((change["at"] - run.start) / run.scale, 1.0),
                xycoords=("data", "axes fraction"), fontsize=7, color=CHANGE, ha="left", va="top",
            )  # fmt: skip
        drawn[-1] |= _distribution(spread, run, name, stats, factor, unit)
    return _fit(fig, drawn, 1.75)


def _percentiles_over_time(ax: Axes, run: RunTimeline, name: str, factor: float, unit: str) -> bool:
    lines = {key: run.stat(name, key) * factor for key, _ in PERCENTILES}
    if not np.isfinite(lines["p99"]).any():
        return _no_data(ax, f"{name}: no data")
    for key, colour in PERCENTILES:
        ax.plot(run.x, lines[key], color=colour, lw=1.4, marker="o", ms=2.6, label=key)
    ax.set_title(f"{name}, {unit}")
    _time_axis(ax, run)
    _legend_above(ax)
    return True


def _distribution(ax: Axes, run: RunTimeline, name: str, stats: dict[str, Any], factor: float, unit: str) -> bool:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    hist = run.histogram(name)
    if hist is None or hist.count == 0:
        return _no_data(ax, "no data")
    values, counts = hist.buckets()
    # the 1%-wide buckets are far finer than a plot can show: regroup them into a few bars
    # (fewer for few samples, so a dozen calls read as a shape rather than a comb), log-spaced
    # when the values span more than a decade (latencies have long right tails)
    bars = int(np.clip(2 * math.sqrt(hist.count), 8, 36))
    lo, hi = values[0] / 1.05, values[-1] * 1.05
    wide = hi / lo > 10
    edges = np.geomspace(lo, hi, bars + 1) if wide else np.linspace(lo, hi, bars + 1)
    heights, _ = np.histogram(values, bins=edges, weights=counts)
    ax.stairs(heights, edges * factor, fill=True, color="#9fb9dc")
    for key, colour in PERCENTILES:
        if stats.get(key) is not None:
            ax.axvline(stats[key] * factor, color=colour, lw=1.2, ls="--")
    if wide:
        ax.set_xscale("log")
        # label round values (1, 2, 5 per decade) as plain numbers: the default is a 10^n formula
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"distribution, {unit} (n = {hist.count:,})", fontweight="normal")
    ax.set_ylabel("samples")
    return True


def _load_figure(summary: dict[str, Any], run: RunTimeline) -> Figure:
    fig, axes = _rows(3)
    sessions, reconnects, errors = axes[:, 0]
    drawn = [_active_sessions(sessions, run), _reconnects(reconnects, run, summary), _errors(errors, run)]
    return _fit(fig, drawn, 1.7)


def _active_sessions(ax: Axes, run: RunTimeline) -> bool:
    calls, users = run.values(lambda w: w.get("active_calls")), run.values(lambda w: w.get("users"))
    if not (np.isfinite(calls).any() or np.isfinite(users).any()):
        return _no_data(ax, "active sessions: no data")
    ax.plot(run.x, users, color="#8a8f98", lw=1.2, ls="--", label="users")
    ax.plot(run.x, calls, color=SERIES[0], lw=1.6, marker="o", ms=2.4, label="calls in progress")
    ax.set_title("active sessions (peak per window)")
    _time_axis(ax, run)
    _legend_above(ax)
    return True


def _reconnects(ax: Axes, run: RunTimeline, summary: dict[str, Any]) -> bool:
    """Reconnects per session-minute: per window, and over the run so far.

    A call's session time is counted when the call ends, so a window's own rate swings with when
    calls happen to end; the running rate (everything so far) is the steady line to read, and it
    ends at the run's figure.
    """
    reconnects = run.values(lambda w: w.get("reconnects"))
    seconds = run.values(lambda w: w.get("session_seconds"))
    if not summary.get("reconnects") or not np.isfinite(seconds).any():
        minutes = summary.get("session_minutes")
        return _no_data(ax, "reconnects: none" + (f" in {count_text(minutes)} session-minutes" if minutes else ""))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_window = np.where(seconds > 0, 60.0 * reconnects / seconds, np.nan)
        so_far_seconds = np.cumsum(np.nan_to_num(seconds))
        so_far = np.where(so_far_seconds > 0, 60.0 * np.cumsum(np.nan_to_num(reconnects)) / so_far_seconds, np.nan)
    ax.plot(run.x, per_window, ls="none", marker="o", ms=3.2, color=SERIES[4], alpha=0.7, label="per window")
    ax.plot(run.x, so_far, color=SERIES[4], lw=1.8, label="run so far")
    total = summary.get("reconnects")
    rate = summary.get("reconnects_per_session_minute")
    shown = "" if rate is None else f" (run: {count_text(total or 0)} reconnects, {rate:.3g} per session-minute)"
    ax.set_title("reconnects per session-minute" + shown)
    _time_axis(ax, run)
    _legend_above(ax)
    return True


def _errors(ax: Axes, run: RunTimeline) -> bool:
    codes = sorted({code for w in run.slots if w for code, n in (w.get("errors") or {}).items() if n})
    if not codes:
        return _no_data(ax, "errors: none recorded")
    bottom = np.zeros(len(run.slots))
    for i, code in enumerate(codes):
        counts = np.nan_to_num(run.values(lambda w, c=code: (w.get("errors") or {}).get(c)))
        ax.bar(
            run.left, counts, width=run.width / run.scale, bottom=bottom, align="edge",
            color=SERIES[i % len(SERIES)], label=code, lw=0,
        )  # fmt: skip
        bottom += counts
    ax.set_title("errors by code (per window)")
    _time_axis(ax, run)
    _legend_above(ax)
    return True


def _health_figure(summary: dict[str, Any], run: RunTimeline) -> Figure:
    fig, axes = _rows(4)
    cpu, memory, loop, send = axes[:, 0]
    frame_ms = ((summary.get("settings") or {}).get("athos") or {}).get("frame_ms")
    drawn = [
        _cpu(cpu, run),
        _memory(memory, run),
        _lag(loop, run, "loadgen_loop_lag", "event-loop lag, ms (how late the generator woke up)"),
        _lag(send, run, "audio_send_lag", "audio send lag, ms (how late frames left versus real time)", frame_ms),
    ]
    return _fit(fig, drawn, 1.6)


def _memory(ax: Axes, run: RunTimeline) -> bool:
    """The generator's memory and open descriptors per window: a leak in the tool shows as a climb
    here, not as the platform slowing down."""
    rss = run.values(lambda w: w.get("rss_bytes")) / 2**20
    if not np.isfinite(rss).any():
        return _no_data(ax, "generator memory: no data")
    ax.plot(run.x, rss, color=SERIES[2], lw=1.6, marker="o", ms=2.4, label="RSS, MiB")
    ax.set_title("generator memory (MiB, every process) and open descriptors")
    _time_axis(ax, run)
    fds = run.values(lambda w: w.get("open_fds"))
    if np.isfinite(fds).any():
        twin = ax.twinx()
        twin.plot(run.x, fds, color=SERIES[1], lw=1.0, ls="--", label="open fds")
        twin.set_ylim(0, np.nanmax(fds) * 1.15 + 1)
        twin.grid(False)
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=lines, loc="lower right", bbox_to_anchor=(1, 1), ncols=2, borderaxespad=0)
    else:
        _legend_above(ax)
    return True


def _cpu(ax: Axes, run: RunTimeline) -> bool:
    from matplotlib.patches import Patch

    cpu = run.values(lambda w: w.get("cpu_ratio")) * 100
    if not np.isfinite(cpu).any():
        return _no_data(ax, "generator CPU: no data")
    ax.plot(run.x, cpu, color=SERIES[2], lw=1.6, marker="o", ms=2.4, label="CPU, peak")
    ax.set_title("generator CPU, % of one core")
    _time_axis(ax, run)
    handles = ax.get_legend_handles_labels()[0]
    if run.saturated_spans():  # the key to the shading, once, on the first health plot
        handles.append(Patch(color=SATURATED, label="saturated"))
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1, 1), ncols=len(handles), borderaxespad=0)
    return True


def _lag(ax: Axes, run: RunTimeline, name: str, title: str, frame_ms: float | None = None) -> bool:
    p99, peak = run.stat(name, "p99") * 1000, run.stat(name, "max") * 1000
    if not np.isfinite(p99).any():
        return _no_data(ax, f"{name}: no data")
    ax.plot(run.x, peak, color="#9aa0a8", lw=1.0, label="max")
    ax.plot(run.x, p99, color=SERIES[3], lw=1.6, marker="o", ms=2.4, label="p99")
    if frame_ms:  # a run whose send-lag p99 exceeds one frame is invalid (the verdict's limit)
        ax.axhline(frame_ms, color="#57606a", lw=1.0, ls=":", label=f"one frame ({frame_ms:g} ms)")
    ax.set_title(title)
    _time_axis(ax, run)
    _legend_above(ax)
    return True


# -- plot helpers ----------------------------------------------------------------------------------


def _rows(count: int, **gridspec: Any) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` rows of panels (its height is set by :func:`_fit` once they are drawn)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGURE_WIDTH, count), layout="constrained")
    columns = len(gridspec.get("width_ratios", (1,)))
    return fig, fig.subplots(count, columns, squeeze=False, gridspec_kw=gridspec)


def _fit(fig: Figure, drawn: list[bool], height: float) -> Figure:
    """Rows of ``height`` inches; a row that only holds a "no data" note is a thin line."""
    ratios = [1.0 if shown else NOTE_ROW for shown in drawn]
    fig.axes[0].get_subplotspec().get_gridspec().set_height_ratios(ratios)
    fig.set_size_inches(FIGURE_WIDTH, height * sum(ratios))
    return fig


NOTE_ROW = 0.3  # a "no data" row's height, relative to a plot's


def _time_axis(ax: Axes, run: RunTimeline) -> None:
    from matplotlib.ticker import FuncFormatter

    if run.warmup_seconds:
        ax.axvspan(0, run.warmup_seconds / run.scale, color=WARMUP, lw=0, zorder=0)
    for start, end in run.saturated_spans():
        ax.axvspan(start, end, color=SATURATED, lw=0, zorder=0)
    ax.set_xlim(0, max(run.seconds / run.scale, 1e-9))
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)  # headroom: a peak must not look cut off by the frame
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} {run.unit}"))


def _legend_above(ax: Axes) -> None:
    """The legend on the title's line, at the right: it never covers a line."""
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=len(ax.get_legend_handles_labels()[0]), borderaxespad=0)


def _no_data(ax: Axes, text: str) -> bool:
    """A short note in place of an empty axis; False: nothing was plotted."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#8a8f98", fontsize=10)
    return False


def _latency_unit(seconds: float | None) -> tuple[float, str]:
    """Milliseconds, or seconds once the values reach seconds (end_to_score)."""
    return (1.0, "s") if seconds is not None and seconds >= 5.0 else (1000.0, "ms")


def _figure_html(fig: Figure) -> str:
    """The figure as inline SVG that scales with the page and names no URL."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # the XML declaration and DOCTYPE do not belong inside HTML
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.S)  # RDF naming matplotlib's URLs
    root, rest = text.split(">", 1)
    # the HTML parser puts inline <svg> in the SVG namespace itself; the viewBox stays, so CSS sizes it
    root = re.sub(r'\s(?:xmlns(?::xlink)?|width|height)="[^"]*"', "", root)
    return f'<figure class="plot">{root} role="img">{rest}</figure>'


# -- page sections ---------------------------------------------------------------------------------


def _header(summary: dict[str, Any], run: RunTimeline) -> str:
    settings = summary.get("settings") or {}
    facts = []
    if run:
        facts.append(f"started {_clock(run.start)}")
        facts.append(f"{_duration(run.seconds)} recorded")
    if settings.get("users") is not None:
        facts.append(f"{count_text(settings['users'])} users")
    if settings.get("workers"):
        facts.append(f"{count_text(settings['workers'])} workers")
    if settings.get("host"):
        facts.append(f"host {settings['host']}")
    return f'<header><h1>athos-load report</h1><p class="facts">{_e(" · ".join(facts))}</p></header>'


def _verdict(summary: dict[str, Any]) -> str:
    verdict = summary.get("verdict") or {"status": "passed", "reasons": []}
    status = str(verdict.get("status", "passed"))
    colour = VERDICT_COLOURS.get(status, "#57606a")
    meaning = {
        "passed": "every gate held and the run can be trusted",
        "failed": "a gate failed",
        "invalid": "the run's numbers cannot be trusted",
    }.get(status, "")
    reasons = [*verdict.get("reasons", []), *([verdict["aborted"]] if verdict.get("aborted") else [])]
    items = "".join(f"<li>{_e(reason)}</li>" for reason in reasons)
    return (
        f'<section class="verdict" style="background:{colour}">'
        f"<h2>{_e(status.upper())}</h2><p>{_e(meaning)}</p>" + (f"<ul>{items}</ul>" if items else "") + "</section>"
    )


def _gates(summary: dict[str, Any]) -> str:
    gates = summary.get("gates") or []
    if not gates:
        return _section("Gates", '<p class="note">No gates were given (<code>--athos-gates</code>).</p>')
    rows = []
    for gate in gates:
        passed = gate.get("passed")
        result, css = {True: ("pass", "pass"), False: ("fail", "fail")}.get(passed, ("too few samples", "skip"))
        samples = f"{count_text(gate.get('samples', 0))}" + (
            f" (needs {count_text(gate['min_samples'])})" if passed is None and gate.get("min_samples") else ""
        )
        rows.append(
            f'<tr class="{css}"><td><code>{_e(gate.get("metric"))}</code></td><td><code>{_e(gate.get("threshold"))}'
            f'</code></td><td class="num">{_e(observed_text(gate))}</td><td class="num">{_e(samples)}</td>'
            f'<td><span class="pill {css}">{result}</span></td></tr>'
        )
    head = (
        '<tr><th>metric</th><th>threshold</th><th class="num">observed</th><th class="num">samples</th>'
        "<th>verdict</th></tr>"
    )
    return _section("Gates", f"<table>{head}{''.join(rows)}</table>")


def _calls(summary: dict[str, Any]) -> str:
    calls = summary.get("calls") or {}
    tiles = "".join(
        f'<div class="tile{" bad" if key in BAD_OUTCOMES and value else ""}">'
        f"<b>{_e(count_text(value))}</b>{_e(key)}</div>"
        for key, value in calls.items()
        if value or key != "lost"  # lost: only when a worker was
    )
    lines = [f"worker {w['worker']} lost at {w['at']} ({w['why']})" for w in summary.get("lost_workers") or []]
    rate = summary.get("reconnects_per_session_minute")
    lines.append(
        f"reconnects: {count_text(summary.get('reconnects', 0))}"
        + (f", {rate:.3g} per session-minute" if rate is not None else "")
        + (f" over {count_text(summary['session_minutes'])} session-minutes" if summary.get("session_minutes") else "")
    )
    errors = summary.get("errors") or {}
    lines.append("errors: " + (", ".join(f"{code} {count_text(n)}" for code, n in errors.items()) or "none"))
    loadgen = summary.get("loadgen") or {}
    if loadgen.get("max_cpu_ratio") is not None:
        saturated = summary.get("saturated_seconds") or 0
        lines.append(
            f"generator: CPU peaked at {loadgen['max_cpu_ratio']:.0%} of a core; "
            + (f"saturated for {saturated:.0f} s" if saturated else "never saturated")
        )
    text = "".join(f"<li>{_e(line)}</li>" for line in lines)
    legend = (
        '<p class="note">started = completed + failed + aborted (cut off by the end of the run) '
        "+ lost (unfinished on a worker that disappeared); "
        "completed = scored + score_missing (the platform lost it) + score_pending (the run ended first) "
        "+ score_failed (the platform said it could not score it).</p>"
    )
    return _section("Calls", f'<div class="tiles">{tiles}</div>{legend}<ul class="facts">{text}</ul>')


BAD_OUTCOMES = {"failed", "score_missing", "lost"}


def _timings(summary: dict[str, Any]) -> str:
    numbers = "".join(f'<th class="num">{key}</th>' for key in ("count", "min", "p50", "p95", "p99", "max"))
    head = f"<tr><th>timing</th><th>from → to</th>{numbers}</tr>"
    named = [(t.value, DOCS.get(t, "").replace("->", "→")) for t in Timing]
    named.append(("audio_send_lag", "how late each audio frame left versus its real-time due time"))
    rows = []
    for name, doc in named:
        stats = summary.get(name) or {}
        if not stats.get("count"):
            cells = '<td class="num">0</td><td colspan="5" class="empty">no data</td>'
        else:
            cells = f'<td class="num">{_e(count_text(stats["count"]))}</td>' + "".join(
                f'<td class="num">{_e(ms_text(stats.get(key), "–"))}</td>'
                for key in ("min", "p50", "p95", "p99", "max")
            )
        rows.append(f"<tr><td><code>{_e(name)}</code></td><td>{_e(doc)}</td>{cells}</tr>")
    note = '<p class="note">milliseconds, from the run-wide histograms (accurate to 0.1%)'
    if summary.get("warmup_until") is not None:
        note += f", after the warm-up (from {_e(_clock(summary['warmup_until']))})"
    note += ".</p>"
    return _section("Timings", f"<table>{head}{''.join(rows)}</table>{note}")


def _trends(summary: dict[str, Any]) -> str:
    """Drift and change-points as text: what got worse over the run, and when."""
    if "drift" not in summary:
        return ""
    rows = trend_rows(summary)
    note = (
        '<p class="note">Drift: the slope per hour of each percentile (relative to its level; rates in their '
        "own units) over the windows after the warm-up, Theil–Sen with its 95% interval: <b>rising</b> when the "
        "whole interval is above zero. Change: the window from which a timing's p95 held a new level.</p>"
    )
    if not rows:
        return _section("Over the run", '<p class="note">Too few windows to measure drift (6 are needed).</p>')
    body = "".join(
        f'<tr class="{"fail" if state in ("rising", "shifted") else ""}"><td>{_e(what)}</td>'
        f"<td>{_e(value)}</td><td>{_e(state)}</td></tr>"
        for what, value, state in rows
    )
    return _section("Over the run", f"<table><tr><th>what</th><th>measured</th><th>reads</th></tr>{body}</table>{note}")


def _capacity(summary: dict[str, Any]) -> str:
    capacity = summary.get("capacity")
    if not capacity:
        return ""
    return _section("Capacity search", _table(capacity))


def _settings(summary: dict[str, Any]) -> str:
    settings = dict(summary.get("settings") or {})
    if not settings:
        return ""
    options = settings.pop("athos", {}) or {}
    tool = {f"--athos-{key.replace('_', '-')}": value for key, value in options.items()}
    return _section("Settings", _table(settings) + "<h3>athos options</h3>" + _table(tool))


def _table(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(key)}</th><td>{_e(_text(value))}</td></tr>" for key, value in values.items())
    return f'<table class="kv">{rows}</table>'


def _section(title: str, inner: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{inner}</section>"


# -- text ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return "–" if value is None else str(value)


def _clock(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_TIME_WORDS = {"s": "seconds", "min": "minutes", "h": "hours"}

STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#fff;color:#1f2328;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 28px 48px}
header h1{font-size:20px;margin:0;color:#57606a;font-weight:600}
header .facts{margin:2px 0 0;color:#57606a}
h2{font-size:19px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #e5e7eb}
h3{font-size:15px;margin:16px 0 6px;color:#57606a}
.verdict{color:#fff;border-radius:10px;padding:18px 24px;margin:14px 0 8px}
.verdict h2{font-size:40px;letter-spacing:.04em;margin:0;padding:0;border:0}
.verdict p{margin:0;font-size:17px;opacity:.95}
.verdict ul{margin:10px 0 0;padding-left:22px;font-size:15px}
table{border-collapse:collapse;font-size:14px}
th,td{padding:5px 12px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{color:#57606a;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.empty{color:#8a8f98;font-style:italic}
table.kv th{white-space:nowrap}
tr.fail td{background:#fff0f0}
.pill{display:inline-block;border-radius:999px;padding:1px 10px;font-size:13px;font-weight:600;color:#fff}
.pill.pass{background:#1a7f37}.pill.fail{background:#cf222e}.pill.skip{background:#9a6700}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{border:1px solid #e5e7eb;border-radius:8px;padding:6px 14px;min-width:104px;color:#57606a;font-size:13px}
.tile b{display:block;font-size:24px;color:#1f2328;font-variant-numeric:tabular-nums}
.tile.bad{border-color:#cf222e}.tile.bad b{color:#cf222e}
ul.facts{margin:10px 0 0;padding-left:20px}
.note{color:#57606a;font-size:13px;margin:6px 0}
.swatch{display:inline-block;width:12px;height:12px;vertical-align:-1px;border-radius:2px}
figure.plot{margin:8px 0 0}
figure.plot svg{display:block;width:100%;height:auto}
code{font-size:13px}
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>athos-load report</title>
<style>{style}</style>
</head>
<body><main>
{body}
</main></body>
</html>
"""
