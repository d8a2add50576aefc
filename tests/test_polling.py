"""Scores by polling ``GET /v1/calls``: from "now", never the platform's history, and every page of a
pass, so a platform that caps its pages below the requested limit cannot make the poller fall behind."""

import time

import gevent
from test_session import FAST, clip, new_session

from athos_load.api import AthosApi, ScoreBoard, ScorePoller
from athos_load.wire import CURSOR_NOW, CallRecord, CallStatus


def make_scored_call(sim, api) -> str:
    session = new_session(sim, api)
    session.connect()
    session.say(clip(("speech", 0.3), ("silence", 0.3))).wait(timeout=10)
    session.hangup()
    return session.call_id


def test_poller_starts_from_now_and_skips_the_platforms_history(sim_factory):
    sim = sim_factory(*FAST, "--score-delay", "fixed:0.1")
    api = AthosApi(sim.http_url, sim.api_key)
    history = [make_scored_call(sim, api) for _ in range(2)]
    deadline = time.monotonic() + 10
    while {c.id for c in api.list_calls(status=CallStatus.SCORED)[0]} < set(history):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    board = ScoreBoard()
    seen = []
    board.listeners.append(lambda score: seen.append(score.call_id))
    poller = ScorePoller(api, board, interval=0.2).start()
    try:
        gevent.sleep(0.5)
        new = make_scored_call(sim, api)
        assert board.wait(new, timeout=10) is not None
        assert seen == [new]  # nothing from before the poller started
        assert poller.counts["errors"] == 0 and poller.counts["pages"] > poller.counts["polls"] > 0
    finally:
        poller.stop()


class CappedPlatform:
    """A fake platform API whose pages hold at most 2 calls whatever limit is asked for."""

    def __init__(self, scored: int) -> None:
        self.log = [CallRecord(f"athos_call_{i}", CallStatus.SCORED, "d", 1.0, 70.0 + i) for i in range(scored)]
        self.requests = 0

    def list_calls(self, *, status=None, after=None, limit=100):
        self.requests += 1
        if after == CURSOR_NOW:
            return [], "0"
        start = int(after)
        page = self.log[start : start + min(limit, 2)]
        return page, str(start + len(page))


def test_one_pass_follows_the_cursor_until_a_page_is_empty():
    platform = CappedPlatform(scored=7)
    board = ScoreBoard()
    poller = ScorePoller(platform, board, page_limit=500)
    assert poller.poll_once() == 7  # 4 pages of at most 2, then an empty one
    assert poller.counts["pages"] == 1 + 5 and poller.counts["delivered"] == 7
    assert board.wait("athos_call_6", timeout=0).score == 76.0
    assert poller.poll_once() == 0  # the cursor stayed at the end


def test_a_pass_is_bounded():
    poller = ScorePoller(CappedPlatform(scored=50), ScoreBoard(), max_pages=3)
    assert poller.poll_once() == 6 and poller.counts["pages"] == 1 + 3
