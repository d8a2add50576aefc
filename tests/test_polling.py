"""Scores by polling ``GET /calls`` as the contract says: the list filters on when a call ended and
shows it only once it is scored (minutes later), so each pass re-scans an overlapping window,
follows ``nextCursor`` to the last page and de-duplicates on the call id. Only documented query
parameters are sent: the simulator refuses any other (``after=now`` included) with 400."""

import time

import gevent
import requests
from test_session import FAST, clip, new_session

from athos_load.api import AthosApi, ScoreBoard, ScorePoller
from athos_load.wire import PATH_CALLS, CallRecord, CallStatus


class Platform:
    """A fake External API over a virtual clock: ``GET /calls`` as documented (scored calls only,
    ``from`` on endedAt, newest first, an opaque keyset cursor) with pages of at most ``cap``."""

    def __init__(self, cap: int = 2) -> None:
        self.now = 1_000.0
        self.cap = cap
        self.calls: dict[str, tuple[float, float]] = {}  # id -> (endedAt, scoredAt)
        self.requests: list[dict] = []
        self.repeat_last = False  # a page also repeats the row before it (a platform's overlap)

    def clock(self) -> float:
        return self.now

    def call(self, call_id: str, ended: float, scored: float) -> None:
        self.calls[call_id] = (ended, scored)

    def list_calls(self, *, since, until=None, cursor=None, limit=100):
        self.requests.append({"since": since, "cursor": cursor})
        rows = sorted(
            ((ended, cid) for cid, (ended, scored) in self.calls.items() if scored <= self.now and ended >= since),
            reverse=True,
        )
        start = int(cursor) if cursor else 0
        if self.repeat_last and start:
            start -= 1
        page = rows[start : start + min(limit, self.cap)]
        end = int(cursor or 0) + min(limit, self.cap)
        records = [CallRecord(cid, CallStatus.SCORED, "d", ended_at=ended) for ended, cid in page]
        return records, (str(end) if end < len(rows) else None)


def test_a_late_score_inside_the_window_is_found_and_nothing_is_delivered_twice():
    platform = Platform(cap=2)
    board = ScoreBoard()
    seen: list[str] = []
    board.listeners.append(lambda score: seen.append(score.call_id))
    poller = ScorePoller(platform, board, window=300.0, skew=0.0, clock=platform.clock)
    platform.call("early", ended=1_001.0, scored=1_005.0)
    platform.call("late", ended=1_002.0, scored=1_200.0)  # ends before "next" but scores minutes after it
    platform.call("next", ended=1_003.0, scored=1_006.0)
    platform.now = 1_010.0
    assert poller.poll_once() == 2 and seen == ["next", "early"]
    platform.now = 1_100.0
    assert poller.poll_once() == 0 and poller.counts["duplicates"] == 2  # re-read in the overlap, not re-delivered
    platform.now = 1_210.0  # "late" is scored now, with an endedAt the poller has long paged past
    assert poller.poll_once() == 1 and seen == ["next", "early", "late"]
    # every pass started at the run's start (inside the window), never from a watermark
    assert {r["since"] for r in platform.requests} == {1_000.0}
    assert board.wait("late", timeout=0).via == "poll"


def test_the_window_slides_and_never_reaches_before_the_run():
    platform = Platform()
    poller = ScorePoller(platform, ScoreBoard(), window=60.0, skew=5.0, clock=platform.clock)
    platform.call("before-the-run", ended=990.0, scored=1_001.0)
    platform.now = 1_020.0
    assert poller.poll_once() == 0 and platform.requests[-1]["since"] == 995.0
    platform.now = 1_500.0
    poller.poll_once()
    assert platform.requests[-1]["since"] == 1_440.0


def test_duplicates_across_pages_are_delivered_once():
    platform = Platform(cap=3)
    platform.repeat_last = True
    board = ScoreBoard()
    seen: list[str] = []
    board.listeners.append(lambda score: seen.append(score.call_id))
    poller = ScorePoller(platform, board, skew=0.0, clock=platform.clock)
    for i in range(7):
        platform.call(f"c{i}", ended=1_001.0 + i, scored=1_001.5 + i)
    platform.now = 1_100.0
    assert poller.poll_once() == 7 and sorted(seen) == [f"c{i}" for i in range(7)]
    assert poller.counts["pages"] == 3 and poller.counts["duplicates"] == 1  # the row page 2 repeated


def test_a_pass_follows_the_cursor_and_is_bounded():
    platform = Platform(cap=2)
    poller = ScorePoller(platform, ScoreBoard(), max_pages=3, skew=0.0, clock=platform.clock)
    for i in range(50):
        platform.call(f"c{i}", ended=1_001.0, scored=1_001.0)
    platform.now = 1_010.0
    assert poller.poll_once() == 6 and poller.counts["pages"] == 3
    platform2 = Platform(cap=2)
    poller = ScorePoller(platform2, ScoreBoard(), page_limit=500, skew=0.0, clock=platform2.clock)
    for i in range(7):
        platform2.call(f"c{i}", ended=1_001.0 + i, scored=1_001.0)
    platform2.now = 1_010.0
    assert poller.poll_once() == 7 and poller.counts["pages"] == 4  # pages of 2 whatever was asked for


def make_call(sim, api) -> str:
    session = new_session(sim, api)
    session.connect()
    session.say(clip(("speech", 0.3), ("silence", 0.3))).wait(timeout=10)
    session.hangup()
    return session.call_id


def test_the_poller_scores_every_call_against_a_simulator_that_refuses_extensions(sim_factory):
    """No webhook, scores landing out of order and up to 3 s late, small pages: every call scored by
    polling alone, and not one refused request (the simulator answers 400 to any parameter outside
    the contract, so the poller uses none: issue 29's platform without after=now)."""
    sim = sim_factory(*FAST, "--score-delay", "uniform:0.1,3")
    refused = requests.get(sim.http_url + PATH_CALLS, headers=sim.headers, timeout=5,
                           params={"source": "roleplay", "from": "2026-01-01T00:00:00Z", "after": "now"})  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_REQUEST"
    api = AthosApi(sim.http_url, sim.api_key)
    board = ScoreBoard()
    poller = ScorePoller(api, board, interval=0.2, page_limit=2).start()
    try:
        calls = [make_call(sim, api) for _ in range(5)]
        deadline = time.monotonic() + 20
        for call_id in calls:
            score = board.wait(call_id, timeout=max(0.1, deadline - time.monotonic()))
            assert score is not None and score.via == "poll", call_id
        gevent.sleep(0.5)
        assert poller.counts["errors"] == 0 and poller.counts["delivered"] == 5
        assert poller.counts["pages"] > poller.counts["polls"] > 0 and poller.counts["duplicates"] > 0
    finally:
        poller.stop()
