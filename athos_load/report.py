"""Human-readable views of a run's JSON summary."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .metrics import Timing
from .trends import Drift


def format_table(summary: dict[str, Any]) -> str:
    """The short table a headless run prints at the end: timings in ms, then call outcomes."""
    lines = [f"{'athos timing':<22}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for timing in Timing:
        stats = summary[timing.value]
        cells = [ms_text(stats[k]) for k in ("p50", "p95", "p99", "max")]
        line = f"{timing.value:<22}{stats['count']:>8}" + "".join(f"{c:>10}" for c in cells)
        if timing is Timing.RECONNECT:
            rate = summary.get("reconnects_per_session_minute")
            shown = "-" if rate is None else f"{rate:.3g}"
            line += f"   reconnects per session-minute: {shown}"
        lines.append(line)
    calls = summary["calls"]
    shown = {k: v for k, v in calls.items() if v or k != "lost"}  # lost: only when a worker was
    lines.append("calls: " + ", ".join(f"{k} {count_text(v)}" for k, v in shown.items()))
    lines += _score_failed_and_quota(summary)
    for worker in summary.get("lost_workers") or []:
        lines.append(f"worker {worker['worker']} lost at {worker['at']} ({worker['why']})")
    if summary.get("errors"):
        lines.append("errors: " + ", ".join(f"{k} {count_text(v)}" for k, v in summary["errors"].items()))
    heard = _heard_text(summary)
    if heard:
        lines.append(heard)
    saturated = summary.get("saturated_seconds") or 0
    if saturated:
        lines.append(
            f"generator saturated for {saturated:.0f} s: latencies recorded then include the generator's own delay"
        )
    return "\n".join(lines)


def _heard_text(summary: dict[str, Any]) -> str:
    """One line of what the rep heard beyond the timings: call setup, barge-ins talked through, the
    persona audio's underruns and dead air, the transcript check (each only when there is one)."""
    parts = []
    setup = summary.get("call_setup") or {}
    if setup.get("rate") is not None:
        parts.append(f"call setup {setup['rate']:.1%} of {count_text(setup['tried'])}")
    if summary.get("barge_ins_ignored"):
        parts.append(f"barge-ins ignored {count_text(summary['barge_ins_ignored'])}")
    audio = summary.get("persona_audio") or {}
    if audio.get("underruns_per_persona_minute") is not None:
        parts.append(
            f"persona audio {audio['minutes']:.1f} min: {audio['underruns_per_persona_minute']:.3g} underruns and "
            f"{audio['dead_air_per_persona_minute']:.3g} s dead air per minute"
            + (f" ({count_text(audio['generator_gaps'])} more gaps were the generator's own stalls)"
               if audio.get("generator_gaps") else "")
        )  # fmt: skip
    transcript = summary.get("transcript") or {}
    if transcript.get("turns"):
        wer = transcript.get("wer")
        parts.append(
            f"transcripts: {count_text(transcript['missing'])} of {count_text(transcript['turns'])} turns missing, "
            f"{count_text(transcript['misaligned'])} misaligned" + ("" if wer is None else f", WER {wer:.1%}")
        )
    return "heard: " + "; ".join(parts) if parts else ""


def trend_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What changed over the run, from a summary's ``drift`` and ``change_points``, as (what, value,
    state) text for the report and the live tab: every drift measured (``rising`` when its whole
    interval is above zero), then every change-point; nothing where too little was recorded."""
    rows = []
    for name, found in (summary.get("drift") or {}).items():
        for stat, data in [("", found)] if found is None or "per_hour" in found else found.items():
            if data is None:
                continue
            drift = Drift(**data)
            state = "rising" if drift.low > 0 else "falling" if drift.high < 0 else "steady"
            rows.append((f"drift {name} {stat}".strip(), f"{drift.shown()} over {drift.windows} windows", state))
    for name, changes in (summary.get("change_points") or {}).items():
        for change in changes:
            levels = f"p95 {ms_text(change['before'])} → {ms_text(change['after'])} ms"
            value = f"{change['change']:+.0%} from {clock_text(change['at'])}: {levels}"
            rows.append((f"change {name}", value, "shifted"))
    return rows


def clock_text(epoch: float) -> str:
    """A wall-clock time of the run, in UTC (windows and change-points are epoch-aligned)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%H:%M:%S UTC")


def ms_text(seconds: float | None, none: str = "-") -> str:
    """Seconds shown in milliseconds: 1,279 / 155 / 2.68 / 0.000394."""
    if seconds is None:
        return none
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def count_text(value: object) -> str:
    """A count: 12, 1,234, 12.5."""
    if isinstance(value, int | float) and float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def observed_text(gate: dict[str, Any]) -> str:
    """A gate's observed value as the summary shows it (its ``shown``), or ``no data``."""
    if gate.get("observed") is None:
        return "no data"
    return gate.get("shown") or f"{gate['observed']:.4g}"


# -- CI reports ------------------------------------------------------------------------------------


def junit_xml(summary: dict[str, Any]) -> str:
    """JUnit XML: one test case per gate (failure: observed versus threshold), one for run validity."""
    from xml.etree import ElementTree as ET

    gates = summary.get("gates", [])
    verdict = summary.get("verdict", {"status": "passed", "reasons": []})
    invalid = verdict["status"] == "invalid"
    suite = ET.Element("testsuite", name="athos-load", tests=str(len(gates) + 1))
    failures = errors = 0
    validity = ET.SubElement(suite, "testcase", classname="athos-load.run", name="run is valid")
    if invalid:
        errors += 1
        reasons = "; ".join(verdict["reasons"])
        ET.SubElement(validity, "error", message=f"invalid run: {reasons}", type="invalid").text = reasons
    for gate in gates:
        case = ET.SubElement(
            suite, "testcase", classname="athos-load.gates", name=f"{gate['metric']}: {gate['threshold']}"
        )
        observed = observed_text(gate)
        if gate["passed"] is False:
            failures += 1
            message = f"{gate['metric']} {gate['threshold']} failed: observed {observed} ({gate['samples']} samples)"
            ET.SubElement(case, "failure", message=message, type="gate").text = message
        elif gate["passed"] is None:
            ET.SubElement(case, "skipped", message=f"{gate['samples']} samples, {gate['min_samples']} needed")
        ET.SubElement(case, "system-out").text = f"observed {observed}"
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def markdown(summary: dict[str, Any]) -> str:
    """A CI job summary: the verdict first, then gates, timings and the calls' accounting."""
    verdict = summary.get("verdict", {"status": "passed", "reasons": []})
    icon = {"passed": "✅", "failed": "❌", "invalid": "⚠️"}[verdict["status"]]
    lines = [f"## athos-load: {icon} {verdict['status']}", ""]
    lines += [f"- {reason}" for reason in verdict["reasons"]]
    if verdict.get("aborted"):
        lines.append(f"- {verdict['aborted']}")
    if summary.get("gates"):
        lines += ["", "| gate | threshold | observed | samples | result |", "|---|---|---|---|---|"]
        for gate in summary["gates"]:
            result = {True: "✅ pass", False: "❌ fail", None: "⚠️ too few samples"}[gate["passed"]]
            lines.append(
                f"| `{gate['metric']}` | `{gate['threshold']}` | {observed_text(gate)} | {gate['samples']} | {result} |"
            )
    lines += ["", "| timing | count | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for timing in Timing:
        stats = summary[timing.value]
        cells = " | ".join(ms_text(stats[k]) for k in ("p50", "p95", "p99", "max"))
        lines.append(f"| {timing.value} | {stats['count']} | {cells} |")
    calls = summary["calls"]
    lines += ["", "calls: " + ", ".join(f"{k} {count_text(v)}" for k, v in calls.items())]
    lines += _score_failed_and_quota(summary)
    rate = summary.get("reconnects_per_session_minute")
    lines.append(f"reconnects per session-minute: {'-' if rate is None else f'{rate:.3g}'}")
    if summary.get("errors"):
        lines.append("errors: " + ", ".join(f"{k} {count_text(v)}" for k, v in summary["errors"].items()))
    heard = _heard_text(summary)
    if heard:
        lines.append(heard)
    return "\n".join(lines) + "\n"


def _score_failed_and_quota(summary: dict[str, Any]) -> list[str]:
    """Why scores failed (when some did), and what the run spent of the tenant's quota."""
    lines = []
    reasons = summary.get("score_failed_reasons") or {}
    if reasons:
        lines.append("score_failed: " + ", ".join(f"{k} {count_text(v)}" for k, v in reasons.items()))
    quota = summary.get("quota")
    if quota:
        lines.append(
            f"quota: {count_text(quota['calls'])} calls redeemed (each spends tenant quota), "
            f"{count_text(quota['tokens'])} session tokens minted"
        )
    return lines
