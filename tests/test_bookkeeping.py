"""Locust's own bookkeeping stays bounded in a soak (plugin/bookkeeping.py), and what Locust shows
from it does not change: a simulated week of per-second counts and stats history, trimmed."""

from __future__ import annotations

import sys

from locust.stats import RequestStats

from athos_load.plugin.bookkeeping import KEEP_SECONDS, MAX_HISTORY, footprint, trim

WEEK = 7 * 24 * 3600
START = 1_767_225_600


def week_of_stats() -> RequestStats:
    """Three entries that had a request every second of a week, and a history row every 5 s."""
    stats = RequestStats()
    stats.total.start_time = START
    for name in ("token_mint", "connect_ready", "call"):
        entry = stats.get(name, "WS")
        entry.num_reqs_per_sec.update({START + t: 2 for t in range(WEEK)})
        entry.num_fail_per_sec.update({START + t: 1 for t in range(0, WEEK, 7)})
    stats.total.num_reqs_per_sec.update({START + t: 6 for t in range(WEEK)})
    stats.total.last_request_timestamp = START + WEEK - 0.5
    stats.history = [{"time": START + t, "user_count": 10} for t in range(0, WEEK, 5)]
    return stats


def test_a_week_of_locust_bookkeeping_is_trimmed_to_what_locust_shows():
    stats = week_of_stats()
    before_rps = {name: stats.get(name, "WS").current_rps for name in ("token_mint", "call")}
    total_rps = stats.total.current_rps
    sized_before = sum(sys.getsizeof(e.num_reqs_per_sec) for e in stats.entries.values())
    held_before = footprint(stats)
    for _ in range(20):  # a trim every half minute for ten minutes: the history settles under its bound
        trim(stats, START + WEEK)
    for entry in (stats.total, *stats.entries.values()):
        assert len(entry.num_reqs_per_sec) <= KEEP_SECONDS + 1 and len(entry.num_fail_per_sec) <= KEEP_SECONDS + 1
    assert {name: stats.get(name, "WS").current_rps for name in ("token_mint", "call")} == before_rps
    assert stats.total.current_rps == total_rps
    assert sum(sys.getsizeof(e.num_reqs_per_sec) for e in stats.entries.values()) < sized_before / 1000
    history = stats.history
    assert len(history) <= MAX_HISTORY
    times = [row["time"] for row in history]
    assert times == sorted(times) and times[0] == START and times[-1] == START + WEEK - 5  # the whole run
    recent = [t for t in times if t >= START + WEEK - 3600]
    assert len(recent) == 720  # the last hour at full resolution (5 s)
    held = footprint(stats)  # what the summary reports of Locust's own memory
    assert held["history_rows"] == len(history) and held["per_second_keys"] <= 8 * (KEEP_SECONDS + 1)
    assert held_before["per_second_keys"] > 2_000_000 and held["bytes"] < held_before["bytes"] / 100


def test_a_short_run_is_left_as_it_is():
    stats = RequestStats()
    entry = stats.get("call", "CALL")
    entry.num_reqs_per_sec.update({START + t: 1 for t in range(30)})
    stats.history = [{"time": START + t} for t in range(0, 30, 5)]
    trim(stats, START + 30)
    assert len(entry.num_reqs_per_sec) == 30 and len(stats.history) == 6


def test_locusts_own_html_report_renders_from_trimmed_stats(monkeypatch):
    """What Locust builds from its bookkeeping still works after a trim: its HTML report's charts."""
    from locust import User, constant, task
    from locust.env import Environment
    from locust.html import get_html_report
    from locust.stats import update_stats_history

    class Idle(User):
        wait_time = constant(1)

        @task
        def nothing(self):
            pass

    monkeypatch.setattr(sys, "argv", ["locust"])
    environment = Environment(user_classes=[Idle])
    runner = environment.create_local_runner()
    try:
        for i in range(MAX_HISTORY + 500):
            runner.stats.log_request("WS", "connect_ready", 100 + i % 50, 0)
            update_stats_history(runner, timestamp=f"2026-12-06T00:{i // 60 % 60:02d}:{i % 60:02d}Z")
        trim(runner.stats, START + WEEK)
        assert len(runner.stats.history) <= MAX_HISTORY
        page = get_html_report(environment, show_download_link=False)
        assert "connect_ready" in page and runner.stats.history[-1]["time"] in page
    finally:
        runner.quit()
